//! The fault matrix: each vmkeep process (CLI, host agent, QEMU) is killed
//! with SIGKILL in each phase (creating, booting, running, stopping), then
//! `vmkeep start` and `vmkeep stop` must recover by themselves. Every case
//! checks what a user would see: no command hangs (each runs under a
//! deadline), the final status, no QEMU or agent left, no stale runtime file,
//! and /data intact.
//!
//! The matrix is a table (`matrix!`): one test per cell, each bringing its
//! instance into the phase, killing the process, checking what that cell
//! must show, and then the common recovery. The host agent and QEMU do not
//! exist while an instance is being created, so those two cells have no
//! case. Nextest prints a line per case and the total.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, staging};

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);
/// A guest that ignores the ACPI button: its graceful stop takes until the
/// guest-agent fallback at half of this deadline, a window to kill in.
const SLOW_STOPPER: &str = "stopTimeout: 6s\nkernel:\n  cmdline: vmkeep.ignore_power_button=1\n";
const PLAIN: &str = "stopTimeout: 20s\n";

/// Boot `name`, leave a synced marker in /data, return the guest's boot id.
fn boot_with_marker(env: &TestEnv, name: &str) -> String {
    env.run_within(&["start", name], BOOT);
    assert_eq!(env.status(name), "Running");
    env.ok(&[
        "shell",
        name,
        "--",
        "sh",
        "-c",
        "echo intact > /data/marker && sync",
    ]);
    env.boot_id(name)
}

/// The second half of every case: `start` brings the instance up (with
/// /data intact), `stop` stops it gracefully, and nothing is left behind.
fn recovers(env: &TestEnv, name: &str, graceful_by: &str) {
    let start = env.run_within(&["start", name], BOOT);
    assert_eq!(
        start.code(),
        Some(0),
        "start after the fault: {}",
        start.describe()
    );
    assert_eq!(env.status(name), "Running");
    let marker = env.ok(&["shell", name, "--", "cat", "/data/marker"]);
    assert_eq!(marker.stdout(), "intact\n", "/data after the fault");

    let stop = env.run_within(&["stop", name], SHORT);
    assert_eq!(
        stop.code(),
        Some(0),
        "stop after the fault: {}",
        stop.describe()
    );
    assert_eq!(env.last_stopped(name)["by"], graceful_by);
    settled_stopped(env, name);
}

/// Stopped, with no process and no runtime file left.
fn settled_stopped(env: &TestEnv, name: &str) {
    assert_eq!(env.status(name), "Stopped");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files(name), Vec::<String>::new());
}

/// Boot `name` with a guest that ignores the power button and the guest
/// agent's power-off, so that only the hard stop ends it; returns how many
/// stop steps its journal had.
fn boot_numb(env: &TestEnv, name: &str, stop_timeout: &str) -> usize {
    env.create(
        name,
        &format!(
            "stopTimeout: {stop_timeout}\nkernel:\n  cmdline: vmkeep.ignore_power_button=1 vmkeep.ignore_poweroff_request=1\n"
        ),
    );
    env.run_within(&["start", name], BOOT);
    env.count_events(name, "stop-step")
}

/// When the stop ladder took its hard stop (seconds into the ladder).
fn quit_at(events: &[serde_json::Value]) -> Option<f64> {
    events
        .iter()
        .filter(|e| e["event"] == "stop-step" && e["step"] == "quit")
        .find_map(|e| e["at_secs"].as_f64())
}

// ---- the matrix: each process killed in each phase ----------------------

/// The process a cell kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Cli,
    Agent,
    Qemu,
}

/// The phase it is killed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Creating,
    Booting,
    Running,
    Stopping,
}

impl Phase {
    /// The instance of a cell of this phase.
    fn instance(self) -> &'static str {
        match self {
            Phase::Creating => "c",
            Phase::Booting => "b",
            Phase::Running => "r",
            Phase::Stopping => "s",
        }
    }

    /// How its recovery's stop ends: a guest that ignores the power button
    /// (the stopping phase's, whose stop takes a window to kill in) powers
    /// off at the guest agent's request.
    fn graceful_by(self) -> &'static str {
        match self {
            Phase::Stopping => "guest-agent-poweroff",
            Phase::Creating | Phase::Booting | Phase::Running => "power-button",
        }
    }
}

/// One test per cell (the host agent and QEMU do not exist while an
/// instance is being created: those two cells have none).
macro_rules! matrix {
    ($($test:ident: $who:ident killed while $phase:ident,)*) => {
        $(
            #[test]
            fn $test() {
                cell(Who::$who, Phase::$phase);
            }
        )*
    };
}

matrix! {
    vm_fault_cli_killed_while_creating: Cli killed while Creating,
    vm_fault_cli_killed_while_booting: Cli killed while Booting,
    vm_fault_cli_killed_while_running: Cli killed while Running,
    vm_fault_cli_killed_while_stopping: Cli killed while Stopping,
    vm_fault_agent_killed_while_booting: Agent killed while Booting,
    vm_fault_agent_killed_while_running_is_adopted_without_reboot: Agent killed while Running,
    vm_fault_agent_killed_while_stopping: Agent killed while Stopping,
    vm_fault_qemu_killed_while_booting: Qemu killed while Booting,
    vm_fault_qemu_killed_while_running_is_recorded_as_a_crash: Qemu killed while Running,
    vm_fault_qemu_killed_while_stopping: Qemu killed while Stopping,
}

/// What runs when the fault strikes: the command that was under way (the
/// `start` following a boot, the `stop` running a ladder, a `shell`), and
/// the guest's boot id when it ran.
struct InFlight {
    command: Option<common::Spawned>,
    boot_id: Option<String>,
}

/// A cell: bring the instance into `phase`, SIGKILL `who` there, check what
/// a user sees right after, then that `start` and `stop` recover.
fn cell(who: Who, phase: Phase) {
    let env = TestEnv::new();
    let name = phase.instance();
    if phase == Phase::Creating {
        return cli_killed_while_creating(&env, name);
    }
    let mut flight = into_phase(&env, name, who, phase);
    let qemu_before = env.qemu(name).map(|q| q.pid());
    match who {
        Who::Cli => flight
            .command
            .as_mut()
            .expect("a command under way")
            .kill9(),
        Who::Agent => env.agent(name).expect("a host agent").kill().unwrap(),
        Who::Qemu => env.qemu(name).expect("QEMU").kill().unwrap(),
    }
    after_the_fault(&env, name, who, phase, flight, qemu_before);
    recovers(&env, name, phase.graceful_by());
}

/// Bring `name` into `phase`, with the command a cell of `who` needs
/// under way.
fn into_phase(env: &TestEnv, name: &str, who: Who, phase: Phase) -> InFlight {
    match phase {
        Phase::Creating => unreachable!("a creating cell has its own course"),
        Phase::Booting => {
            env.create(name, PLAIN);
            let start = env.spawn(&["start", name]);
            env.wait_event(name, "booting", 0, BOOT);
            InFlight {
                command: Some(start),
                boot_id: None,
            }
        }
        Phase::Running => {
            env.create(name, PLAIN);
            let boot_id = boot_with_marker(env, name);
            // What a CLI does while the VM runs: a command in the guest.
            let shell = (who == Who::Cli).then(|| {
                let shell = env.spawn(&["shell", name, "--", "sleep", "30"]);
                std::thread::sleep(Duration::from_millis(500));
                shell
            });
            InFlight {
                command: shell,
                boot_id: Some(boot_id),
            }
        }
        Phase::Stopping => {
            env.create(name, SLOW_STOPPER);
            boot_with_marker(env, name);
            let before = env.count_events(name, "stop-step");
            let stop = env.spawn(&["stop", name]);
            env.wait_event(name, "stop-step", before, SHORT);
            InFlight {
                command: Some(stop),
                boot_id: None,
            }
        }
    }
}

/// What each cell must show right after its fault (before `recovers`).
fn after_the_fault(
    env: &TestEnv,
    name: &str,
    who: Who,
    phase: Phase,
    flight: InFlight,
    qemu_before: Option<u32>,
) {
    match (who, phase) {
        (_, Phase::Creating) => unreachable!("a creating cell has its own course"),
        (Who::Cli, Phase::Booting) => {
            // The detached host agent carries on without its CLI.
            env.wait_status(name, "Running", BOOT);
            env.shell(name, "echo intact > /data/marker && sync");
            let again = env.run_within(&["start", name], SHORT);
            assert!(
                again.stderr().contains("already running"),
                "{}",
                again.describe()
            );
            env.run_within(&["stop", name], SHORT);
        }
        (Who::Cli, Phase::Running) => {
            assert_eq!(env.status(name), "Running");
            env.ok(&["shell", name, "--", "true"]);
            env.run_within(&["stop", name], SHORT);
            assert_eq!(env.last_stopped(name)["by"], "power-button");
        }
        (Who::Cli, Phase::Stopping) => {
            // The host agent finishes the ladder on its own.
            env.wait_status(name, "Stopped", SHORT);
            assert_eq!(env.last_stopped(name)["by"], "guest-agent-poweroff");
            settled_stopped(env, name);
        }
        (Who::Agent, Phase::Booting) => {
            // The CLI that was following it reports the failure instead of hanging.
            start_failed(flight, "host agent");
            // QEMU was left booting without an agent: `start` adopts it.
            let qemu = env.qemu(name).expect("QEMU kept running").pid();
            env.run_within(&["start", name], BOOT);
            assert_eq!(
                env.qemu(name).map(|q| q.pid()),
                Some(qemu),
                "adopted, not rebooted"
            );
            assert!(env.count_events(name, "adopted") >= 1);
            env.shell(name, "echo intact > /data/marker && sync");
            env.run_within(&["stop", name], SHORT);
        }
        (Who::Agent, Phase::Running) => {
            let qemu = qemu_before.expect("QEMU ran");
            let boot_id = flight.boot_id.expect("the guest's boot id");
            env.wait_status(name, "Broken", SHORT);
            let row = env.row(name);
            assert_eq!(row["reason"]["code"], "orphaned-qemu", "{row}");

            let start = env.run_within(&["start", name], SHORT);
            assert!(
                start.stderr().contains("adopting QEMU"),
                "{}",
                start.describe()
            );
            assert_eq!(env.status(name), "Running");
            assert_eq!(env.qemu(name).unwrap().pid(), qemu);
            assert_eq!(env.boot_id(name), boot_id, "the guest did not reboot");
            // The adopted QEMU is not the new agent's child: exit detection by pidfd.
            env.run_within(&["stop", name], SHORT);
            assert_eq!(env.last_stopped(name)["by"], "power-button");
            settled_stopped(env, name);
        }
        (Who::Agent | Who::Qemu, Phase::Stopping) => {
            // `stop` notices and ends the stop itself (an orphaned QEMU, or
            // one already gone).
            let stopped = flight.command.expect("the stop").wait_within(SHORT);
            assert_eq!(stopped.code(), Some(0), "{}", stopped.describe());
            settled_stopped(env, name);
        }
        (Who::Qemu, Phase::Booting) => {
            start_failed(flight, "QEMU exited during boot");
            assert_eq!(env.last_stopped(name)["reason"], "start-failed");
            settled_stopped(env, name);
            boot_with_marker(env, name);
            env.run_within(&["stop", name], SHORT);
        }
        (Who::Qemu, Phase::Running) => {
            env.wait_status(name, "Stopped", SHORT);
            assert_eq!(env.last_stopped(name)["reason"], "crashed");
            settled_stopped(env, name);
        }
    }
}

/// The `start` under way ends, saying the start failed and `says` why.
fn start_failed(flight: InFlight, says: &str) {
    let failed = flight.command.expect("the start").wait_within(SHORT);
    assert_eq!(
        failed.code(),
        Some(6),
        "the start failed: {}",
        failed.describe()
    );
    assert!(failed.stderr().contains(says), "{}", failed.describe());
}

/// The creating cell: the CLI killed the moment its staging directory
/// appears (retried if the CLI was faster), leaving a half-made instance
/// that is none.
fn cli_killed_while_creating(env: &TestEnv, name: &str) {
    let mut caught = false;
    for _ in 0..40 {
        caught = env.kill_create_while_staging(name);
        if caught && !env.instance_dir(name).exists() {
            break;
        }
        caught = false;
        env.ok(&["delete", name]);
    }
    assert!(caught, "never caught the CLI while it was creating");
    // Half-made: invisible to list, not an instance.
    assert!(
        env.list().iter().all(|row| row["name"] != name),
        "{:?}",
        env.list()
    );
    let absent = env.run(&["start", name]);
    assert_eq!(
        absent.code(),
        Some(3),
        "no such instance: {}",
        absent.describe()
    );
    assert!(
        absent.stderr().contains(&format!("vmkeep create {name}")),
        "{}",
        absent.describe()
    );
    // Creating again works and sweeps the abandoned staging directory.
    env.ok(&["create", name]);
    assert_eq!(staging(env.home()), Vec::<String>::new());
    boot_with_marker(env, name);
    env.run_within(&["stop", name], SHORT);
    recovers(env, name, Phase::Creating.graceful_by());
}

// ---- more faults of the stop ---------------------------------------------

/// `vmkeep stop` asks over the API; a SIGTERM that reaches the agent
/// meanwhile (the daemon seeing the instance should stay stopped, `stop`'s
/// own fallback when the API is slow, a host shutdown) asks for the same
/// thing again and must not turn the graceful stop into a power cut.
#[test]
fn vm_a_sigterm_to_an_agent_already_stopping_keeps_the_stop_graceful() {
    let env = TestEnv::new();
    env.create("s", SLOW_STOPPER);
    boot_with_marker(&env, "s");
    let agent = env.agent("s").expect("a host agent");
    let before = env.count_events("s", "stop-step");
    let stop = env.spawn(&["stop", "s"]);
    env.wait_event("s", "stop-step", before, SHORT);
    agent.terminate().unwrap();
    let stopped = stop.wait_within(SHORT);
    assert_eq!(stopped.code(), Some(0), "{}", stopped.describe());
    let steps: Vec<String> = env
        .events("s")
        .into_iter()
        .filter(|e| e["event"] == "stop-step")
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect();
    assert!(
        !steps.iter().any(|s| s == "quit" || s == "kill"),
        "{steps:?}"
    );
    assert_eq!(env.last_stopped("s")["by"], "guest-agent-poweroff");
    settled_stopped(&env, "s");
}

/// A SIGTERM (the daemon, a host shutdown) began the ladder with the
/// instance's stopTimeout; a `vmkeep stop --timeout` that comes after it
/// grants the guest its longer deadline instead of being ignored.
#[test]
fn vm_a_longer_timeout_asked_during_a_stop_is_granted() {
    let env = TestEnv::new();
    let before = boot_numb(&env, "n", "4s");
    env.agent("n").expect("a host agent").terminate().unwrap();
    env.wait_event("n", "stop-step", before, SHORT);
    let stop = env.run_within(&["stop", "n", "--timeout", "12s"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    let quit_at = quit_at(&env.events("n"));
    assert!(
        quit_at.is_some_and(|at| at >= 12.0),
        "the hard stop waits for the longer deadline: quit at {quit_at:?}"
    );
    settled_stopped(&env, "n");
}

/// One `stop --timeout 25s` runs; a plain `stop` (stopTimeout 2s) that
/// joins it waits for the agent's own deadline instead of forcing the stop
/// at its own deadline plus margin.
#[test]
fn vm_a_second_stop_waits_for_the_deadline_the_first_granted() {
    let env = TestEnv::new();
    let before = boot_numb(&env, "n", "2s");
    let patient = env.spawn(&["stop", "n", "--timeout", "25s"]);
    env.wait_event("n", "stop-step", before, SHORT);
    let second = env.run_within(&["stop", "n"], Duration::from_secs(60));
    assert_eq!(second.code(), Some(0), "{}", second.describe());
    let first = patient.wait_within(SHORT);
    assert_eq!(first.code(), Some(0), "{}", first.describe());
    let events = env.events("n");
    let quit_at = quit_at(&events);
    assert!(
        quit_at.is_some_and(|at| at >= 25.0),
        "the hard stop comes at the granted deadline: quit at {quit_at:?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "repaired"),
        "nothing forced: {events:#?}"
    );
    settled_stopped(&env, "n");
}

// ---- stale and garbage state --------------------------------------------

/// A `sleep` this test owns, killed on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Bystander {
        Bystander(
            std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap(),
        )
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn vm_pid_files_naming_an_unrelated_live_process_never_touch_it() {
    let env = TestEnv::new();
    env.create("p", PLAIN);
    let mut bystander = Bystander::start();
    let pid = bystander.0.id().to_string();
    let dir = env.instance_dir("p");
    // As after PID reuse: the files name a live process that is not ours.
    std::fs::write(dir.join("ha.pid"), &pid).unwrap();
    std::fs::write(dir.join("qemu.pid"), &pid).unwrap();
    assert_eq!(env.status("p"), "Broken");
    env.run_within(&["stop", "p"], SHORT);
    env.run_within(&["stop", "--force", "p"], SHORT);
    assert!(bystander.alive(), "stop signalled a stranger");
    boot_with_marker(&env, "p");
    assert!(bystander.alive(), "start signalled a stranger");
    env.run_within(&["stop", "p"], SHORT);
    settled_stopped(&env, "p");
    assert!(bystander.alive());
}

#[test]
fn vm_stale_socket_and_garbage_pid_files_and_journal_are_repaired_by_start() {
    let env = TestEnv::new();
    env.create("g", PLAIN);
    let dir = env.instance_dir("g");
    // A socket file nobody listens on, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(dir.join("ha.sock")).unwrap());
    std::fs::write(dir.join("qemu.pid"), "\0\0garbage").unwrap();
    std::fs::write(dir.join("ha.pid"), "").unwrap();
    std::fs::write(
        dir.join("events.jsonl"),
        "not json at all\n{\"ts\":\"2026-01-01T00:00:00Z\",\"pid\":1,\"event\":\"runn",
    )
    .unwrap();
    let row = env.list().into_iter().find(|r| r["name"] == "g").unwrap();
    assert_eq!(row["status"], "Broken", "{row}");
    assert_eq!(row["reason"]["code"], "stale-runtime-files", "{row}");

    let start = env.run_within(&["start", "g"], BOOT);
    assert!(
        start.stderr().contains("removed stale runtime files"),
        "{}",
        start.describe()
    );
    assert!(env.count_events("g", "repaired") >= 1);
    env.ok(&[
        "shell",
        "g",
        "--",
        "sh",
        "-c",
        "echo intact > /data/marker && sync",
    ]);
    env.run_within(&["stop", "g"], SHORT);
    recovers(&env, "g", "power-button");
}

#[test]
fn vm_guest_powering_itself_off_is_stopped_not_broken() {
    let env = TestEnv::new();
    env.create("o", PLAIN);
    // In the foreground, as a service manager runs it: its exit code counts.
    let agent = env.spawn(&["start", "o", "--foreground"]);
    env.wait_status("o", "Running", BOOT);
    env.ok(&[
        "shell",
        "o",
        "--",
        "sh",
        "-c",
        "echo intact > /data/marker && sync",
    ]);
    // Plain `poweroff`, as a user types it: busybox asks init (the guest
    // agent) with a signal. The shell's connection may die with the guest:
    // its exit code is not the point.
    let _ = env.run_within(&["shell", "o", "--", "poweroff"], SHORT);
    let exited = agent.wait_within(SHORT);
    assert_eq!(exited.code(), Some(0), "{}", exited.describe());
    assert_eq!(env.last_stopped("o")["reason"], "guest-poweroff");
    settled_stopped(&env, "o");
    recovers(&env, "o", "power-button");
}

// ---- concurrency and locks ----------------------------------------------

#[test]
fn vm_two_starts_at_once_boot_one_vm() {
    let env = TestEnv::new();
    env.create("t", PLAIN);
    let first = env.spawn(&["start", "t"]);
    let second = env.spawn(&["start", "t"]);
    let (a, b) = (first.wait_within(BOOT), second.wait_within(BOOT));
    assert_eq!(a.code(), Some(0), "{}", a.describe());
    assert_eq!(b.code(), Some(0), "{}", b.describe());
    assert_eq!(env.count_events("t", "booting"), 1, "exactly one boot");
    let qemus = env
        .processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 1);
    env.ok(&[
        "shell",
        "t",
        "--",
        "sh",
        "-c",
        "echo intact > /data/marker && sync",
    ]);
    env.run_within(&["stop", "t"], SHORT);
    recovers(&env, "t", "power-button");
}

#[test]
fn vm_stop_during_start_stops_it() {
    let env = TestEnv::new();
    env.create("d", PLAIN);
    let start = env.spawn(&["start", "d"]);
    env.wait_event("d", "booting", 0, BOOT);
    let stop = env.run_within(&["stop", "d"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    let start = start.wait_within(SHORT);
    assert_ne!(
        start.code(),
        Some(0),
        "start reports it did not come up: {}",
        start.describe()
    );
    settled_stopped(&env, "d");
}

#[test]
fn vm_a_running_disk_is_locked_and_the_lock_dies_with_qemu() {
    let env = TestEnv::new();
    env.create("l", PLAIN);
    boot_with_marker(&env, "l");
    let disk = env.instance_dir("l").join("disk.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", disk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !info.status.success(),
        "a second user could open the running disk"
    );
    assert!(
        String::from_utf8_lossy(&info.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let delete = env.run(&["delete", "l"]);
    assert_ne!(
        delete.code(),
        Some(0),
        "delete of a running instance refuses"
    );
    assert!(delete.stderr().contains("--force"), "{}", delete.describe());
    // A lock is tied to its process: after a hard kill nothing blocks a start.
    env.qemu("l").unwrap().kill().unwrap();
    env.wait_status("l", "Stopped", SHORT);
    recovers(&env, "l", "power-button");
}

// ---- endurance -----------------------------------------------------------

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Unix sockets bound anywhere under this test's home.
fn bound_sockets(env: &TestEnv) -> usize {
    let home = env.home().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&home))
        .count()
}

#[test]
fn vm_fifty_start_stop_cycles_leave_nothing_behind() {
    let env = TestEnv::new();
    env.create("cycle", PLAIN);
    let fds_before = open_fds();
    let started = Instant::now();
    for round in 0..50 {
        let start = env.run_within(&["start", "cycle"], BOOT);
        assert_eq!(start.code(), Some(0), "round {round}: {}", start.describe());
        let stop = env.run_within(&["stop", "cycle"], SHORT);
        assert_eq!(stop.code(), Some(0), "round {round}: {}", stop.describe());
        assert_eq!(
            env.wait_no_processes(Duration::from_secs(5)),
            vec![],
            "round {round}"
        );
    }
    eprintln!("50 cycles in {:.0?}", started.elapsed());
    assert_eq!(env.status("cycle"), "Stopped");
    assert_eq!(env.runtime_files("cycle"), Vec::<String>::new());
    assert_eq!(bound_sockets(&env), 0, "sockets left bound");
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
    let graceful = env
        .events("cycle")
        .iter()
        .filter(|e| e["event"] == "stopped" && e["by"] == "power-button")
        .count();
    assert_eq!(graceful, 50);
}

#[test]
fn vm_an_orphaned_qemu_that_does_not_answer_is_hard_stopped_then_started_afresh() {
    let env = TestEnv::new();
    env.create("h", PLAIN);
    let boot_id = boot_with_marker(&env, "h");
    let qemu = env.qemu("h").unwrap();
    env.agent("h").unwrap().kill().unwrap();
    env.wait_status("h", "Broken", SHORT);
    // Frozen: QMP accepts nothing.
    qemu.signal(rustix::process::Signal::STOP).unwrap();
    let start = env.run_within(&["start", "h"], BOOT);
    assert!(
        start.stderr().contains("does not answer QMP"),
        "{}",
        start.describe()
    );
    assert!(qemu.has_exited(), "the frozen QEMU was hard-stopped");
    assert!(env.count_events("h", "repaired") >= 1);
    assert_ne!(env.boot_id("h"), boot_id, "a fresh boot");
    env.run_within(&["stop", "h"], SHORT);
    recovers(&env, "h", "power-button");
}
