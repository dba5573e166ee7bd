//! Every file a VM writes on the host stays bounded (issue 29), with small
//! caps set through the environment: a guest that flaps a port and reboots
//! again and again, stop/start cycles and a power loss; and a reboot loop
//! under `vmkeep daemon` with `runStrategy: always`. Each checks what a
//! user sees: every file under its cap, `events` showing the last runs,
//! the status, and `start` finding the unclean end.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{TestEnv, free_port, wait_until};

const BOOT: Duration = Duration::from_secs(150);
const SHORT: Duration = Duration::from_secs(60);
/// Every cap, in bytes (the smallest the variables accept).
const CAP: u64 = 4096;

/// The caps, for every vmkeep process the test starts (nextest runs each
/// test in a process of its own).
fn small_caps() {
    for var in [
        "VMKEEP_JOURNAL_MAX",
        "VMKEEP_LOG_MAX",
        "VMKEEP_SERIAL_LOG_MAX",
    ] {
        // SAFETY: set before any thread of this test's process starts.
        unsafe { std::env::set_var(var, CAP.to_string()) };
    }
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Files of `dir` over their bound: each log under its cap (a quarter of
/// it kept in FILE.1), the journal and its rotated part under the cap plus
/// a record each. Disks, RAM and saved state are not bounded here.
fn over_bounds(dir: &Path) -> Vec<(String, u64)> {
    let mut over = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = size(&entry.path());
        let bound = match name.as_str() {
            "disk.qcow2" | "guest-ram" | "saved-state.bin" | "cidata.img" => continue,
            "events.jsonl" | "events.jsonl.1" => CAP + 1024,
            n if n.ends_with(".log.1") => CAP / 4 + 1024,
            n if n.ends_with(".log") => CAP,
            _ => 64 * 1024,
        };
        if bytes > bound {
            over.push((name, bytes));
        }
    }
    over
}

/// Wait until every file is within its bound (the host agent cuts logs
/// every second, so a burst may stand over for up to a second).
fn assert_within_bounds(dir: &Path) {
    let mut last = Vec::new();
    let within = wait_until(Duration::from_secs(10), || {
        last = over_bounds(dir);
        last.is_empty().then_some(())
    });
    assert!(within.is_some(), "over their bounds: {last:?}");
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn lines_with(dir: &Path, files: &[&str], needle: &str) -> usize {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .sum()
}

/// When the newest event of this kind was journaled (RFC 3339 text, which
/// sorts by time; `None` before the first): unlike a count, it only grows
/// while older events are rotated out.
fn newest(env: &TestEnv, name: &str, kind: &str) -> Option<String> {
    env.events(name)
        .iter()
        .rev()
        .find(|e| e["event"] == kind)
        .map(|e| e["ts"].as_str().unwrap().to_owned())
}

/// What `vmkeep events NAME --json` shows.
fn shown_events(env: &TestEnv, name: &str) -> Vec<serde_json::Value> {
    env.ok(&["events", name, "--json"])
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn vm_a_flapping_rebooting_guest_keeps_every_file_under_its_cap() {
    small_caps();
    let env = TestEnv::new();
    env.create("flap", "stopTimeout: 20s\n");
    let dir = env.instance_dir("flap");
    env.run_within(&["start", "flap"], BOOT);

    // A guest service that flaps its port: seen forwarded once, then 40
    // times opened and closed.
    let port = free_port();
    let serve = format!("mkdir -p /www && httpd -f -p {port} -h /www </dev/null >/dev/null 2>&1");
    let server = env.shell("flap", &format!("{serve} & echo $!"));
    assert!(wait_until(SHORT, || answers(port).then_some(())).is_some());
    env.shell("flap", &format!("kill {server}"));
    env.shell(
        "flap",
        &format!(
            "i=0; while [ $i -lt 40 ]; do {serve} & p=$!; \
             sleep 0.4; kill $p; wait $p; sleep 0.3; i=$((i+1)); done; true"
        ),
    );
    // It was forwarded, and logged a few times, not 80.
    let logs = ["ha.log", "ha.log.1"];
    let lines = wait_until(SHORT, || {
        let lines = lines_with(&dir, &logs, &format!(":{port} "));
        (lines > 0).then_some(lines)
    })
    .expect("the forward is logged");
    eprintln!("{lines} log lines about port {port}");
    assert!(lines <= 6, "{lines} lines about the flapping port");

    // Rebooting in a loop, each boot's console output over the cap.
    for round in 0..4 {
        let before = newest(&env, "flap", "guest-rebooted");
        let _ = env.run(&["shell", "flap", "--", "reboot"]);
        wait_until(BOOT, || {
            (newest(&env, "flap", "guest-rebooted") > before).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: no reboot: {:?}", env.events("flap")));
        // Never far over, even between two checks.
        let over = over_bounds(&dir);
        assert!(
            over.iter().all(|(_, b)| *b < 16 * CAP),
            "round {round}: {over:?}"
        );
    }
    // Runs that fill the journal past its cap, several times over.
    for _ in 0..4 {
        env.run_within(&["stop", "flap"], SHORT);
        env.run_within(&["start", "flap"], BOOT);
    }
    assert_within_bounds(&dir);
    assert!(
        dir.join("events.jsonl.1").exists(),
        "the journal was rotated"
    );

    // A power loss: agent and QEMU killed. `list` says so truthfully, and
    // the next start finds the unclean end across the rotations.
    let agent = env.agent("flap").unwrap();
    let qemu = env.qemu("flap").unwrap();
    agent.kill().unwrap();
    assert!(agent.wait_timeout(SHORT));
    qemu.kill().unwrap();
    assert!(qemu.wait_timeout(SHORT));
    assert!(
        matches!(env.status("flap").as_str(), "Stopped" | "Broken"),
        "{}",
        env.status("flap")
    );
    env.run_within(&["start", "flap"], BOOT);
    let events = shown_events(&env, "flap");
    let unclean = events
        .iter()
        .rev()
        .find(|e| e["event"] == "unclean-end")
        .expect("the unclean end is journaled");
    assert_eq!(unclean["previous_pid"], agent.pid(), "{unclean}");
    assert_eq!(unclean["qemu_survived"], false, "{unclean}");
    // `events` shows the last runs, in order, without the bookkeeping.
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"rotated"), "{kinds:?}");
    let since_unclean = kinds.iter().rposition(|k| *k == "unclean-end").unwrap();
    assert!(kinds[since_unclean..].contains(&"running"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| **k == "stopped").count() >= 2,
        "{kinds:?}"
    );
    assert_eq!(env.status("flap"), "Running");

    // The port still follows the guest after all this.
    let server = env.shell("flap", &format!("{serve} & echo $!"));
    assert!(wait_until(SHORT, || answers(port).then_some(())).is_some());
    env.shell("flap", &format!("kill {server}"));
    env.run_within(&["stop", "flap"], SHORT);
    assert_eq!(env.status("flap"), "Stopped");
    assert_within_bounds(&dir);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

#[test]
fn vm_a_reboot_loop_under_the_daemon_keeps_its_journal_and_logs_bounded() {
    small_caps();
    let env = TestEnv::new();
    // A guest that powers itself off at every boot, restarted by the daemon
    // each time (`runStrategy: always`) until its start limit.
    env.create(
        "loop",
        "runStrategy: always\nkernel:\n  cmdline: vmkeep.poweroff_at_boot=1\n",
    );
    let dir = env.instance_dir("loop");
    // As its unit runs it: output appended to daemon.log.
    let log = vmkeep::os::fs::open_append(&env.home().join("daemon.log")).unwrap();
    let mut daemon = env
        .command(&[
            "daemon",
            "--start-limit-burst",
            "8",
            "--restart-delay",
            "200ms",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Kill(&mut daemon);
    // The daemon's decisions read the journal's end, rotated several times
    // meanwhile: it still counts to its start limit and gives up, and
    // `list` says so.
    env.wait_status("loop", "Broken", Duration::from_secs(600));
    let row = env.row("loop");
    assert_eq!(row["reason"]["code"], "gave-up", "{row}");
    assert!(
        dir.join("events.jsonl.1").exists(),
        "the journal was rotated"
    );
    assert_within_bounds(&dir);
    let daemon_log = env.home().join("daemon.log");
    assert!(
        wait_until(SHORT, || (size(&daemon_log) <= CAP).then_some(())).is_some(),
        "daemon.log: {} bytes",
        size(&daemon_log)
    );
    let kinds: Vec<String> = shown_events(&env, "loop")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert!(!kinds.iter().any(|k| k == "rotated"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "restarting"), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("gave-up"),
        "{kinds:?}"
    );
    let starts = kinds.iter().filter(|k| *k == "starting").count();
    assert!((1..=8).contains(&starts), "{starts} starts: {kinds:?}");

    // SIGTERM: exit 0, nothing left running.
    // SAFETY: kill(2) of the daemon this test spawned and has not reaped.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let exited = wait_until(SHORT, || daemon.0.try_wait().unwrap());
    assert_eq!(exited.and_then(|s| s.code()), Some(0));
    assert_within_bounds(&dir);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}
