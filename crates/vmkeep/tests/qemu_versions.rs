//! The second QEMU tier: vmkeep's real-VM lifecycle core on QEMU 10
//! (Debian 13's, from bookworm-backports, unpacked by `scripts/fetch-qemu`
//! and chosen with `VMKEEP_QEMU`), beside the suite's QEMU 7.2 (the host's,
//! in PATH), and states carried from one to the other.
//!
//! Few VMs, many checks each (the tier must stay a small part of the
//! suite's time): one VM on QEMU 10 goes through start, shell, a mount, a
//! port forward, adoption after `kill -9` of its host agent, a suspend with
//! the mount and its resume, and a stop by the power button; one VM saved on
//! 7.2 is resumed on 10 and, saved again on 10, refused by 7.2 with the
//! choices; one on 7.2 with a mount shows the suspend refusal. Without QEMU
//! 10 (no network on a fresh machine) these tests fail, saying why.

mod common;

use std::time::{Duration, Instant};

use common::second_qemu::{self, command_line_of, executable_of};
use common::{TestEnv, free_port, http_get, wait_until};

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

/// The QEMU that runs `name` is QEMU 10's binary (the wrapper execs it).
fn runs_on_qemu10(env: &TestEnv, name: &str) -> u32 {
    let pid = env.qemu(name).expect("QEMU runs").pid();
    let exe = executable_of(pid);
    assert!(
        exe.to_string_lossy().contains("qemu-10/root/"),
        "{name} runs {} instead of QEMU 10",
        exe.display()
    );
    pid
}

/// The machine type on a QEMU's command line (`-machine TYPE,...`).
fn machine_of(pid: u32) -> String {
    let args = command_line_of(pid);
    let value = args
        .windows(2)
        .find(|w| w[0] == "-machine")
        .map(|w| w[1].clone())
        .expect("a -machine argument");
    value.split(',').next().unwrap().to_owned()
}

/// The saved state's record.
fn record(env: &TestEnv, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(env.instance_dir(name).join("saved-state.json"))
        .expect("a saved state");
    serde_json::from_str(&text).unwrap()
}

/// The guest's busybox httpd answers on the host's forwarded `port`.
fn forward_answers(port: u16) {
    wait_until(SHORT, || {
        (http_get(port).as_deref() == Some("served")).then_some(())
    })
    .unwrap_or_else(|| panic!("host port {port} did not answer within {SHORT:?}"));
}

/// Through the share at /mnt/rw of VM `c`: the guest reads the host's
/// `host_file` (holding `text`), and a file it writes, `guest_file`, is on
/// the host.
fn share_works_both_ways(
    env: &TestEnv,
    src: &std::path::Path,
    host_file: &str,
    text: &str,
    guest_file: &str,
) {
    assert_eq!(env.shell("c", &format!("cat /mnt/rw/{host_file}")), text);
    env.shell(
        "c",
        &format!("echo from the guest > /mnt/rw/{guest_file} && sync"),
    );
    assert_eq!(
        std::fs::read_to_string(src.join(guest_file)).unwrap(),
        "from the guest\n"
    );
}

/// `args` fail with exit `code`, saying each of `says` (on stderr, returned).
fn refused(env: &TestEnv, args: &[&str], code: i32, says: &[&str]) -> String {
    let run = env.run_within(args, SHORT);
    assert_eq!(run.code(), Some(code), "{}", run.describe());
    let said = run.stderr();
    for words in says {
        assert!(said.contains(words), "{words:?} is not in: {said}");
    }
    said
}

/// Suspend `name`; the state is saved and nothing runs.
fn suspend(env: &TestEnv, name: &str) {
    let run = env.run_within(&["suspend", name], SHORT);
    assert_eq!(run.code(), Some(0), "suspend: {}", run.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status(name), "Suspended");
}

/// `start` resumes `name` (not a boot).
fn resume(env: &TestEnv, name: &str) {
    let run = env.run_within(&["start", name], SHORT);
    assert_eq!(run.code(), Some(0), "resume: {}", run.describe());
    assert!(
        run.stderr().contains("resuming the state saved at"),
        "{}",
        run.describe()
    );
    assert!(!run.stderr().contains("warning"), "{}", run.describe());
    assert_eq!(env.status(name), "Running");
}

#[test]
fn vm_qemu10_lifecycle_core_start_shell_mount_forward_adoption_suspend_with_a_mount_stop() {
    let qemu10 = second_qemu::qemu10();
    let env = TestEnv::new();
    env.use_qemu(Some(&qemu10));
    let (_src_guard, src) = common::shared_dir(&env);
    std::fs::write(src.join("from-host"), "hello from the host\n").unwrap();
    let port = free_port();
    env.create(
        "c",
        &format!(
            "stopTimeout: 20s\nmounts:\n  - location: {}\n    mountPoint: /mnt/rw\n    writable: true\nportForwards:\n  - guestPort: 8080\n    hostPort: {port}\n",
            src.display()
        ),
    );

    // Start, on QEMU 10, said without a warning.
    let started = Instant::now();
    let run = env.run_within(&["start", "c"], BOOT);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(!run.stderr().contains("warning"), "{}", run.describe());
    eprintln!("QEMU 10: start -> ready {:?}", started.elapsed());
    assert_eq!(env.status("c"), "Running");
    let qemu = runs_on_qemu10(&env, "c");
    assert_eq!(machine_of(qemu), "q35");

    // Shell, its exit code passed through.
    assert_eq!(env.shell("c", "echo hi"), "hi");
    assert_eq!(env.shell_status("c", "exit 3").0, Some(3));

    // The mount, both ways (the Rust virtiofsd: QEMU 10 has no other).
    share_works_both_ways(&env, &src, "from-host", "hello from the host", "from-guest");

    // The port forward.
    env.shell(
        "c",
        "mkdir -p /www && echo served > /www/index.html && \
         httpd -f -p 8080 -h /www </dev/null >/dev/null 2>&1 &",
    );
    forward_answers(port);

    // Adoption after kill -9 of the host agent: same QEMU, same guest.
    let boot_id = env.boot_id("c");
    env.agent("c").unwrap().kill().unwrap();
    env.wait_status("c", "Broken", SHORT);
    env.run_within(&["start", "c"], SHORT);
    assert_eq!(env.status("c"), "Running");
    assert_eq!(env.qemu("c").unwrap().pid(), qemu, "adopted, not rebooted");
    assert_eq!(env.boot_id("c"), boot_id);
    forward_answers(port);

    // Suspend with the mount (QEMU 8.2 and later migrate virtio-fs), files
    // held open in the share meanwhile, one of them removed by the host
    // while the VM is saved; resume: the same guest, the share working, the
    // kept file still open, the forward back.
    std::fs::write(src.join("doomed"), "removed while saved\n").unwrap();
    let hold = |file: &str| {
        env.shell(
            "c",
            &format!(
                "cd /mnt/rw && (exec 3</mnt/rw/{file}; exec sleep 100000) </dev/null >/dev/null 2>&1 & echo $!"
            ),
        )
    };
    let holder = hold("from-host");
    let doomed = hold("doomed");
    suspend(&env, "c");
    assert_eq!(record(&env, "c")["machine"]["shared_dirs"], 1);
    std::fs::write(src.join("while-saved"), "written while saved\n").unwrap();
    std::fs::remove_file(src.join("doomed")).unwrap();
    resume(&env, "c");
    // The removed one fails in the guest alone (virtiofsd's
    // --migration-on-error=guest-error), not the resume.
    let (code, stderr) = env.shell_status("c", &format!("cat /proc/{doomed}/fd/3"));
    assert!(
        code != Some(0) && stderr.contains("Input/output error"),
        "{code:?} {stderr}"
    );
    let qemu = runs_on_qemu10(&env, "c");
    assert_eq!(env.boot_id("c"), boot_id, "resumed, not rebooted");
    assert_eq!(
        env.shell("c", &format!("cat /proc/{holder}/fd/3")),
        "hello from the host",
        "the file the guest held open in the share reads on"
    );
    share_works_both_ways(&env, &src, "while-saved", "written while saved", "after");
    forward_answers(port);
    assert_eq!(env.qemu("c").unwrap().pid(), qemu);

    // Stop: the ladder's first step (the power button) ends it.
    let stop = env.run_within(&["stop", "c"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert_eq!(env.last_stopped("c")["by"], "power-button");
    assert_eq!(env.wait_no_processes(SHORT), vec![]);
    assert_eq!(env.runtime_files("c"), Vec::<String>::new());
}

#[test]
fn vm_qemu10_resumes_a_state_saved_on_7_2_and_7_2_refuses_one_saved_on_10() {
    let qemu10 = second_qemu::qemu10();
    assert_eq!(
        second_qemu::host_qemu_major(),
        7,
        "this test carries a state from the host's QEMU 7.2 (PATH) to QEMU 10"
    );
    let env = TestEnv::new();
    let (_src_guard, src) = common::shared_dir(&env);
    env.create("x", "stopTimeout: 20s\n");
    env.create(
        "m",
        &format!(
            "stopTimeout: 20s\nmounts:\n  - location: {}\n    mountPoint: /mnt/rw\n    writable: true\n",
            src.display()
        ),
    );

    // Both boot on 7.2 (PATH).
    let run = env.run_within(&["start", "x", "m"], BOOT);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(machine_of(env.qemu("x").unwrap().pid()), "q35");

    // 7.2 cannot save a VM with a mount: refused, saying which QEMU can,
    // and the VM runs on.
    let said = refused(
        &env,
        &["suspend", "m"],
        7,
        &[
            "its QEMU 7.2.",
            "cannot save a virtio-fs device (QEMU 8.2 and later can)",
            "VMKEEP_QEMU",
            "the VM runs on",
        ],
    );
    assert!(!said.contains("QEMU 10"), "{said}");
    assert_eq!(env.status("m"), "Running");
    env.ok(&["stop", "--force", "m"]);

    // Saved on 7.2: its record says so.
    env.shell("x", "echo intact > /data/marker && sync");
    let sleeper = env.shell("x", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!");
    let boot_id = env.boot_id("x");
    suspend(&env, "x");
    let saved = record(&env, "x");
    assert_eq!(saved["qemu"]["version"]["major"], 7);
    assert_eq!(saved["machine_type"], "pc-q35-7.2");

    // Resumed on 10, as the machine it was saved under.
    env.use_qemu(Some(&qemu10));
    resume(&env, "x");
    let qemu = runs_on_qemu10(&env, "x");
    assert_eq!(machine_of(qemu), "pc-q35-7.2");
    assert_eq!(env.boot_id("x"), boot_id, "resumed, not rebooted");
    assert_eq!(
        env.shell("x", &format!("cat /proc/{sleeper}/cmdline | tr '\\0' ' '")),
        "sleep 1000"
    );
    assert_eq!(env.shell("x", "cat /data/marker"), "intact");

    // Saved again, on 10: 7.2 is older, so it refuses at once with the
    // choices and keeps the state.
    suspend(&env, "x");
    let saved = record(&env, "x");
    assert_eq!(saved["qemu"]["version"]["major"], 10);
    assert_eq!(saved["machine_type"], "pc-q35-7.2");
    env.use_qemu(None);
    refused(
        &env,
        &["start", "x"],
        6,
        &[
            "it was saved by QEMU 10.",
            "QEMU 7.2.",
            "is older",
            "vmkeep start --discard-state",
        ],
    );
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status("x"), "Suspended");

    // Back on 10 it resumes, and stops by its power button.
    env.use_qemu(Some(&qemu10));
    resume(&env, "x");
    assert_eq!(env.boot_id("x"), boot_id);
    let stop = env.run_within(&["stop", "x"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert_eq!(env.last_stopped("x")["by"], "power-button");
    assert_eq!(env.wait_no_processes(SHORT), vec![]);
}
