//! `vmkeep daemon` with real VMs: restart policies against each kind of
//! exit, the start limit, a daemon killed and restarted, and the parallel
//! stop of every VM when the daemon gets SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{Spawned, TestEnv, wait_until};

const BOOT: Duration = Duration::from_secs(150);
const SETTLE: Duration = Duration::from_secs(150);

const POLICIES: [&str; 3] = ["always", "on-failure", "manual"];

/// One instance per policy, named after it; `manual` started by hand (the
/// daemon never starts it), the others by the daemon.
fn policy_instances(env: &TestEnv) -> Spawned {
    for policy in POLICIES {
        env.create(
            policy,
            &format!("runStrategy: {policy}\nstopTimeout: 20s\n"),
        );
    }
    env.ok(&["start", "manual"]);
    let daemon = env.spawn(&["daemon", "--restart-delay", "200ms"]);
    for policy in POLICIES {
        env.wait_status(policy, "Running", BOOT);
    }
    daemon
}

fn boot_ids(env: &TestEnv) -> Vec<String> {
    POLICIES.iter().map(|p| env.boot_id(p)).collect()
}

/// Wait until every instance shows its expected status, and stays so for a
/// moment (a restart would show as Starting).
fn settle(env: &TestEnv, expected: &[(&str, &str)]) {
    let mut last = Vec::new();
    let ok = wait_until(SETTLE, || {
        last = expected
            .iter()
            .map(|(name, _)| env.status(name))
            .collect::<Vec<_>>();
        let all = expected
            .iter()
            .zip(&last)
            .all(|((_, want), seen)| want == seen);
        all.then_some(())
    });
    assert!(ok.is_some(), "expected {expected:?}, saw {last:?}");
    std::thread::sleep(Duration::from_secs(2));
    for (name, want) in expected {
        assert_eq!(env.status(name), *want, "{name} did not stay {want}");
    }
}

fn stop_daemon(env: &TestEnv, mut daemon: Spawned) {
    // SAFETY: kill(2) of the daemon this test spawned and has not reaped.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let run = std::mem::replace(&mut daemon, env.spawn(&["--version"])).wait_within(SETTLE);
    daemon.wait_within(Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "daemon exit: {}", run.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

#[test]
fn vm_daemon_policies_after_qemu_is_killed() {
    let env = TestEnv::new();
    let daemon = policy_instances(&env);
    let before = boot_ids(&env);
    for policy in POLICIES {
        env.qemu(policy).unwrap().kill().unwrap();
    }
    for policy in POLICIES {
        env.wait_event(policy, "stopped", 0, SETTLE);
    }
    settle(
        &env,
        &[
            ("always", "Running"),
            ("on-failure", "Running"),
            ("manual", "Stopped"),
        ],
    );
    assert_ne!(env.boot_id("always"), before[0], "restarted: a new boot");
    assert_ne!(env.boot_id("on-failure"), before[1]);
    assert_eq!(env.last_stopped("manual")["reason"], "crashed");
    assert!(env.count_events("always", "restarting") >= 1);
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_policies_after_the_host_agent_is_killed() {
    let env = TestEnv::new();
    let daemon = policy_instances(&env);
    let before = boot_ids(&env);
    for policy in POLICIES {
        env.agent(policy).unwrap().kill().unwrap();
    }
    for policy in POLICIES {
        env.wait_event(policy, "adopted", 0, SETTLE);
    }
    // Every policy keeps a VM that is still running: adopted, not rebooted.
    settle(
        &env,
        &[
            ("always", "Running"),
            ("on-failure", "Running"),
            ("manual", "Running"),
        ],
    );
    assert_eq!(boot_ids(&env), before, "adopted without a reboot");
    for policy in POLICIES {
        assert!(env.count_events(policy, "adopted") >= 1, "{policy}");
    }
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_policies_after_the_guest_powers_off() {
    let env = TestEnv::new();
    let daemon = policy_instances(&env);
    let before = boot_ids(&env);
    for policy in POLICIES {
        let _ = env.run_within(
            &["shell", policy, "--", "poweroff", "-f"],
            Duration::from_secs(30),
        );
    }
    for policy in POLICIES {
        env.wait_event(policy, "stopped", 0, SETTLE);
    }
    settle(
        &env,
        &[
            ("always", "Running"),
            ("on-failure", "Stopped"),
            ("manual", "Stopped"),
        ],
    );
    assert_ne!(env.boot_id("always"), before[0]);
    assert_eq!(env.last_stopped("on-failure")["reason"], "guest-poweroff");
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_policies_after_vmkeep_stop() {
    let env = TestEnv::new();
    let daemon = policy_instances(&env);
    for policy in POLICIES {
        env.ok(&["stop", policy]);
    }
    settle(
        &env,
        &[
            ("always", "Stopped"),
            ("on-failure", "Stopped"),
            ("manual", "Stopped"),
        ],
    );
    for policy in POLICIES {
        assert_eq!(env.count_events(policy, "restarting"), 0, "{policy}");
        assert_eq!(env.last_stopped(policy)["by"], "power-button");
    }
    // `start` is the other half of the desired state: the daemon keeps it up.
    env.ok(&["start", "always"]);
    let restarts = env.count_events("always", "restarting");
    env.qemu("always").unwrap().kill().unwrap();
    env.wait_event("always", "restarting", restarts, SETTLE);
    settle(&env, &[("always", "Running")]);
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_stops_a_halted_instance_gracefully_and_start_refuses_it() {
    let env = TestEnv::new();
    env.create("h", "stopTimeout: 20s\n");
    env.ok(&["start", "h"]);
    let config = env.instance_dir("h").join("vmkeep.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}runStrategy: halted\n")).unwrap();
    let daemon = env.spawn(&["daemon"]);
    env.wait_status("h", "Stopped", SETTLE);
    assert_eq!(
        env.last_stopped("h")["by"],
        "power-button",
        "stopped gracefully"
    );
    let start = env.run(&["start", "h"]);
    assert_eq!(start.code(), Some(5), "wrong state: {}", start.describe());
    assert!(
        start.stderr().contains("runStrategy: halted"),
        "{}",
        start.describe()
    );
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_gives_up_on_a_crash_loop_and_stays_healthy() {
    let env = TestEnv::new();
    env.create(
        "loop",
        "runStrategy: always\nkernel:\n  cmdline: vmkeep.poweroff_at_boot=1\n",
    );
    env.create("fine", "runStrategy: always\n");
    let daemon = env.spawn(&[
        "daemon",
        "--start-limit-burst",
        "3",
        "--restart-delay",
        "200ms",
    ]);
    env.wait_status("loop", "Broken", SETTLE);
    let row = env
        .list()
        .into_iter()
        .find(|r| r["name"] == "loop")
        .unwrap();
    assert_eq!(row["reason"]["code"], "gave-up", "{row}");
    assert_eq!(
        env.count_events("loop", "starting"),
        3,
        "exactly the start limit"
    );
    // The daemon is still supervising the healthy one.
    env.wait_status("fine", "Running", BOOT);
    env.qemu("fine").unwrap().kill().unwrap();
    env.wait_event("fine", "restarting", 0, SETTLE);
    env.wait_status("fine", "Running", BOOT);
    assert_eq!(
        env.count_events("loop", "starting"),
        3,
        "no start after giving up"
    );
    stop_daemon(&env, daemon);
}

#[test]
fn vm_daemon_killed_and_restarted_supervises_again_without_reboots() {
    let env = TestEnv::new();
    for name in ["one", "two"] {
        env.create(name, "runStrategy: always\n");
    }
    let mut first = env.spawn(&["daemon"]);
    env.wait_status("one", "Running", BOOT);
    env.wait_status("two", "Running", BOOT);
    let ids = (env.boot_id("one"), env.boot_id("two"));
    first.kill9();
    assert_eq!(env.status("one"), "Running", "VMs outlive a killed daemon");
    let second = env.spawn(&["daemon", "--restart-delay", "200ms"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (env.boot_id("one"), env.boot_id("two")),
        ids,
        "nothing rebooted"
    );
    // Supervised again: a crash is restarted.
    env.qemu("one").unwrap().kill().unwrap();
    env.wait_event("one", "restarting", 0, SETTLE);
    settle(&env, &[("one", "Running"), ("two", "Running")]);
    assert_ne!(env.boot_id("one"), ids.0);
    assert_eq!(env.boot_id("two"), ids.1);
    stop_daemon(&env, second);
}

#[test]
fn vm_daemon_sigterm_stops_all_vms_in_parallel() {
    let env = TestEnv::new();
    let names = ["p1", "p2", "p3", "p4"];
    for name in names {
        env.create(name, "runStrategy: always\nstopTimeout: 20s\n");
    }
    let daemon = env.spawn(&["daemon"]);
    for name in names {
        env.wait_status(name, "Running", BOOT);
    }
    let started = Instant::now();
    stop_daemon(&env, daemon);
    let took = started.elapsed();
    for name in names {
        assert_eq!(env.status(name), "Stopped");
        assert_eq!(env.last_stopped(name)["by"], "power-button", "{name}");
        assert_eq!(env.last_stopped(name)["reason"], "requested", "{name}");
    }
    eprintln!("4 VMs stopped in {took:?}");
}

#[test]
fn daemon_install_dry_run_prints_a_unit_that_systemd_accepts() {
    let env = TestEnv::new();
    env.create("slow", "runStrategy: always\nstopTimeout: 100s\n");
    env.create("other", "stopTimeout: 500s\n"); // not supervised: not counted
    let before: Vec<_> = std::fs::read_dir(env.home())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let run = env.run_env(
        &["daemon", "install", "--dry-run"],
        &[("HOME", env.home().as_os_str())],
    );
    assert!(run.output.status.success(), "{}", run.describe());
    let text = run.stdout();
    assert!(
        text.contains(".config/systemd/user/vmkeep-daemon.service"),
        "{text}"
    );
    // 100 s deadline + 2 s quit grace + 15 s margin.
    assert!(text.contains("TimeoutStopSec=117s\n"), "{text}");
    let exe = std::path::Path::new(common::VMKEEP).canonicalize().unwrap();
    assert!(
        text.contains(&format!("ExecStart={} daemon\n", exe.display())),
        "{text}"
    );
    let after: Vec<_> = std::fs::read_dir(env.home())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after, "--dry-run changes nothing");

    let units = tempfile::tempdir().unwrap();
    let unit: String = text
        .lines()
        .filter(|l| !l.starts_with("# would write") && !l.starts_with("# then"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = units.path().join("vmkeep-daemon.service");
    std::fs::write(&path, unit).unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .arg(&path)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("systemd-analyze (scripts/setup-host installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
}
