//! End-to-end: the real `vmkeep` binary booting real VMs under QEMU.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestEnv, wait_until};

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn vm_start_shell_stop_restart_keeps_data_and_delete_removes_everything() {
    let env = TestEnv::new();

    let (start, pipe_ended) = start_with_a_callers_pipe(&env, &["start"]);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    assert!(
        start.stdout().contains("default is running"),
        "{}",
        start.describe()
    );
    assert!(
        pipe_ended,
        "a pipe its caller left open is held by the VM's processes: {:?}",
        env.processes()
    );
    assert_eq!(env.status("default"), "Running");
    let row = env
        .list()
        .into_iter()
        .find(|r| r["name"] == "default")
        .unwrap();
    assert!(
        row["qemu_pid"].as_u64().is_some() && row["agent_pid"].as_u64().is_some(),
        "{row}"
    );

    let uname = env.ok(&["shell", "default", "--", "uname", "-a"]);
    assert!(uname.stdout().starts_with("Linux "), "{}", uname.describe());
    let exit = env.run(&[
        "shell",
        "default",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(exit.code(), Some(7), "{}", exit.describe());
    assert_eq!(exit.stdout(), "out\n");
    assert_eq!(exit.stderr(), "err\n");
    env.ok(&[
        "shell",
        "default",
        "--",
        "sh",
        "-c",
        "echo kept-across-reboots > /data/proof",
    ]);

    // A second start changes nothing.
    let qemus_before = qemu_count(&env);
    let again = env.ok(&["start", "default"]);
    assert!(
        again.stderr().contains("already running"),
        "{}",
        again.describe()
    );
    assert_eq!(qemu_count(&env), qemus_before);
    assert_eq!(qemus_before, 1);

    let stop = env.ok(&["stop", "default"]);
    assert!(
        stop.stdout().contains("ACPI power button"),
        "{}",
        stop.describe()
    );
    let stopped = env.last_stopped("default");
    assert_eq!(stopped["reason"], "requested");
    assert_eq!(
        stopped["by"], "power-button",
        "the ACPI step ended it: {stopped}"
    );
    assert_eq!(env.status("default"), "Stopped");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files("default"), Vec::<String>::new());

    let stop_again = env.ok(&["stop", "default"]);
    assert!(
        stop_again.stdout().contains("not running"),
        "{}",
        stop_again.describe()
    );

    env.ok(&["start", "default"]);
    let proof = env.ok(&["shell", "default", "--", "cat", "/data/proof"]);
    assert_eq!(proof.stdout(), "kept-across-reboots\n");
    env.ok(&["stop", "default"]);

    env.ok(&["delete", "default"]);
    assert!(!env.instance_dir("default").exists());
    assert_eq!(env.status("default"), "Absent");
}

/// `vmkeep ARGS` run as a shell leaves its commands: a pipe of its
/// caller's open beyond its standard streams (descriptor 9, not
/// close-on-exec). Returns the run, and whether that pipe reached its end
/// within 5 s of the run's (no process `vmkeep` started keeps it, so a
/// caller waiting for its end is not kept waiting as long as the VM runs).
fn start_with_a_callers_pipe(env: &TestEnv, args: &[&str]) -> (common::Run, bool) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let caller_end = write.as_raw_fd();
    let mut command = env.command(args);
    // SAFETY: dup2 is async-signal-safe; the descriptor is open until the
    // spawn returned.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(caller_end, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("run vmkeep");
    drop(write);
    let mut poll = libc::pollfd {
        fd: read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of ours.
    let ready = unsafe { libc::poll(&mut poll, 1, 5000) };
    let mut byte = [0u8; 1];
    let ended = ready == 1 && rustix::io::read(&read, &mut byte) == Ok(0);
    let run = common::Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        output,
    };
    (run, ended)
}

fn qemu_count(env: &TestEnv) -> usize {
    env.processes()
        .iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system"))
        .count()
}

/// `start --foreground`, then a signal as a service manager or a terminal
/// sends it: the guest powers off cleanly and the process exits 0.
fn foreground_then_signal(signal: i32, name: &str) {
    let env = TestEnv::new();
    env.create(name, "cpus: 1\n");
    let mut agent = env
        .command(&["start", name, "--foreground"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = wait_until(BOOT, || (env.status(name) == "Running").then_some(()));
    assert!(running.is_some(), "never ran; status {}", env.status(name));

    // SAFETY: kill(2) of the child this test spawned and has not reaped.
    unsafe { libc::kill(agent.id() as i32, signal) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(agent.stderr.take().unwrap()).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{stderr}"
    );
    let stopped = env.last_stopped(name);
    assert_eq!(stopped["by"], "power-button", "{stopped}");
    assert_eq!(stopped["qemu_exit"], "exit code 0", "{stopped}");
    let stopping = env
        .events(name)
        .into_iter()
        .rev()
        .find(|e| e["event"] == "stopping")
        .unwrap();
    assert_eq!(stopping["cause"], "signal");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status(name), "Stopped");
}

#[test]
fn vm_foreground_sigterm_powers_the_guest_off_and_exits_0() {
    foreground_then_signal(libc::SIGTERM, "fgterm");
}

#[test]
fn vm_foreground_sigint_powers_the_guest_off_and_exits_0() {
    foreground_then_signal(libc::SIGINT, "fgint");
}

#[test]
fn vm_force_stop_leaves_no_process_and_no_runtime_file() {
    let env = TestEnv::new();
    env.create("forced", "");
    env.ok(&["start", "forced"]);
    let stop = env.ok(&["stop", "--force", "forced"]);
    assert!(stop.stdout().contains("hard stop"), "{}", stop.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(2)), vec![]);
    assert_eq!(env.runtime_files("forced"), Vec::<String>::new());
    assert_eq!(env.status("forced"), "Stopped");
    assert_eq!(env.last_stopped("forced")["by"], "quit");
}

#[test]
fn vm_a_guest_that_ignores_the_power_button_is_powered_off_by_its_agent() {
    let env = TestEnv::new();
    env.create(
        "deaf",
        "stopTimeout: 6s\nkernel:\n  cmdline: vmkeep.ignore_power_button=1\n",
    );
    env.ok(&["start", "deaf"]);
    let started = Instant::now();
    env.ok(&["stop", "deaf"]);
    let took = started.elapsed();
    let stopped = env.last_stopped("deaf");
    assert_eq!(stopped["by"], "guest-agent-poweroff", "{stopped}");
    assert!(
        took >= Duration::from_secs(3),
        "the guest agent is asked at half the deadline, took {took:?}"
    );
    let steps: Vec<_> = env
        .events("deaf")
        .into_iter()
        .filter(|e| e["event"] == "stop-step")
        .map(|e| e["step"].clone())
        .collect();
    assert!(
        steps.iter().filter(|s| *s == "power-button").count() >= 2,
        "the button is pressed again: {steps:?}"
    );
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_a_guest_that_ignores_everything_is_hard_stopped_at_the_deadline() {
    let env = TestEnv::new();
    env.create(
        "stubborn",
        "stopTimeout: 30s\nkernel:\n  cmdline: vmkeep.ignore_power_button=1 vmkeep.ignore_poweroff_request=1\n",
    );
    env.ok(&["start", "stubborn"]);
    let started = Instant::now();
    // The per-command deadline overrides the instance's.
    env.ok(&["stop", "stubborn", "--timeout", "4s"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "not before the deadline: {took:?}"
    );
    let stopped = env.last_stopped("stubborn");
    assert_eq!(stopped["by"], "quit", "{stopped}");
    let steps: Vec<String> = env
        .events("stubborn")
        .into_iter()
        .filter(|e| e["event"] == "stop-step")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps.first().map(String::as_str), Some("power-button"));
    assert!(
        steps.contains(&"guest-agent-poweroff".to_string()),
        "{steps:?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("quit"));
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status("stubborn"), "Stopped");
}

#[test]
fn vm_reboot_inside_the_guest_reboots_in_place_and_halt_stops_it() {
    let env = TestEnv::new();
    env.create("rb", "");
    env.ok(&["start", "rb"]);
    env.ok(&["shell", "rb", "--", "sh", "-c", "echo kept > /data/proof"]);
    let first_boot = env.boot_id("rb");
    let qemu_pid = |env: &TestEnv| {
        env.list()
            .into_iter()
            .find(|r| r["name"] == "rb")
            .and_then(|r| r["qemu_pid"].as_u64())
    };
    let qemu_before = qemu_pid(&env);
    assert!(qemu_before.is_some());

    // Plain `reboot`, as a user types it: busybox signals init (the agent).
    let _ = env.run(&["shell", "rb", "--", "reboot"]);
    let second_boot = wait_until(BOOT, || {
        let run = env.run(&[
            "shell",
            "rb",
            "--",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        let id = run.stdout().trim().to_string();
        (run.code() == Some(0) && !id.is_empty() && id != first_boot).then_some(id)
    })
    .expect("the guest booted again and answers");
    assert_ne!(second_boot, first_boot);
    assert_eq!(qemu_pid(&env), qemu_before, "same QEMU: rebooted in place");
    assert_eq!(env.status("rb"), "Running");
    assert_eq!(env.count_events("rb", "stopped"), 0, "a reboot is no stop");
    let rebooted: Vec<_> = env
        .events("rb")
        .into_iter()
        .filter(|e| e["event"] == "guest-rebooted")
        .collect();
    assert_eq!(rebooted.len(), 1, "{rebooted:?}");
    assert_eq!(rebooted[0]["guest_boot_id"], second_boot.as_str());
    let proof = env.ok(&["shell", "rb", "--", "cat", "/data/proof"]);
    assert_eq!(proof.stdout(), "kept\n");

    // Plain `halt` ends the machine: nobody can see a halted VM.
    let _ = env.run(&["shell", "rb", "--", "halt"]);
    env.wait_status("rb", "Stopped", Duration::from_secs(30));
    assert_eq!(env.last_stopped("rb")["reason"], "guest-poweroff");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files("rb"), Vec::<String>::new());
}

#[test]
fn vm_forcing_kvm_where_guests_would_hang_is_refused_before_anything_boots() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virtualization = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_virtualization || !std::path::Path::new("/dev/kvm").exists() {
        eprintln!(
            "skipped: this host's CPU has vmx/svm (or no /dev/kvm), so KVM is not a trap here"
        );
        return;
    }
    let env = TestEnv::new();
    env.create("k", "");
    let run = env
        .command(&["start", "k"])
        .env("VMKEEP_ACCEL", "kvm")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(6), "the start failed: {stderr}");
    assert!(
        stderr.contains("VMKEEP_ACCEL") && stderr.contains("vmx/svm") && stderr.contains("tcg"),
        "{stderr}"
    );
    assert_eq!(env.count_events("k", "booting"), 0, "nothing booted");
    assert!(env.wait_no_processes(Duration::from_secs(10)).is_empty());
}
