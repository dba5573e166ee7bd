//! `vmkeep upgrade`: a running host agent moves onto the binary installed
//! now, in place. The real binaries are installed in a directory of the
//! test's own (as a package would put them), a VM is started from there,
//! and the host agent binary is then replaced on disk the way a package
//! manager does (a new file renamed over the old: the running agent's
//! `/proc/PID/exe` says "(deleted)").

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::TestEnv;
use common::installed::{Installed, built, text, vmkeep_in};

/// What `/proc/PID/exe` names.
fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .expect("read /proc/PID/exe")
        .display()
        .to_string()
}

/// The (device, inode) of the running executable of `pid`.
fn exe_inode(pid: u32) -> (u64, u64) {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).expect("stat /proc/PID/exe");
    (meta.dev(), meta.ino())
}

fn pids(env: &TestEnv, name: &str) -> (u32, u32) {
    let agent = env.agent(name).expect("an agent runs").pid();
    let qemu = env.qemu(name).expect("QEMU runs").pid();
    (agent, qemu)
}

#[test]
fn vm_upgrade_keeps_the_vm_and_moves_the_agent_onto_the_installed_binary() {
    let env = TestEnv::new();
    let installed = Installed::new();
    env.create("up", "");
    let started = installed.vmkeep(&env, &["start", "up"]);
    assert!(started.status.success(), "{}", text(&started));
    let (agent, qemu) = pids(&env, "up");
    let boot = env.boot_id("up");
    let agent_binary = installed.path("vmkeep-hostagent");
    assert_eq!(exe_of(agent), agent_binary.display().to_string());

    // A new build is installed: the running agent's binary is gone from disk.
    installed.put(&built("vmkeep-hostagent"), "vmkeep-hostagent");
    assert!(exe_of(agent).ends_with(" (deleted)"), "{}", exe_of(agent));

    let upgrade = installed.vmkeep(&env, &["upgrade", "--json"]);
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    let rows: serde_json::Value = serde_json::from_slice(&upgrade.stdout).expect("JSON");
    let row = &rows[0];
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(row["name"], "up", "{row}");
    assert_eq!(row["upgraded"], true, "{row}");
    assert_eq!(row["exit_code"], 0, "{row}");
    assert_eq!(row["agent_pid"], agent, "{row}");
    assert_eq!(row["qemu_pid"], qemu, "{row}");
    assert_eq!(row["guest_boot_id"], boot.as_str(), "{row}");

    // Same agent process, now running the installed binary; same QEMU, same boot.
    assert_eq!(pids(&env, "up"), (agent, qemu));
    assert_eq!(exe_of(agent), agent_binary.display().to_string());
    let installed_meta = std::fs::metadata(&agent_binary).unwrap();
    assert_eq!(
        exe_inode(agent),
        (installed_meta.dev(), installed_meta.ino())
    );
    assert_eq!(env.status("up"), "Running");
    assert_eq!(env.boot_id("up"), boot);
    let upgraded: Vec<_> = env
        .events("up")
        .into_iter()
        .filter(|e| e["event"] == "upgraded")
        .collect();
    assert_eq!(upgraded.len(), 1, "{upgraded:?}");
    let event = &upgraded[0];
    assert_eq!(event["pid"], agent, "{event}");
    assert_eq!(event["qemu_pid"], qemu, "{event}");
    assert!(
        event["from"].as_str().is_some_and(|f| !f.is_empty()),
        "{event}"
    );
    assert!(
        event["to"].as_str().is_some_and(|t| !t.is_empty()),
        "{event}"
    );
    for step in ["checked_secs", "exec_secs", "adopted_secs", "ready_secs"] {
        assert!(event["steps"][step].as_f64().is_some(), "{step}: {event}");
    }
    assert_eq!(env.count_events("up", "unclean-end"), 0);
    assert_eq!(
        env.count_events("up", "booting"),
        1,
        "QEMU was launched once"
    );

    // A failed upgrade stops nothing: no binary installed ...
    std::fs::remove_file(&agent_binary).unwrap();
    let missing = installed.vmkeep(&env, &["upgrade", "up"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let said = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(
        said.contains("missing") && said.contains("runs on unchanged"),
        "{said}"
    );
    assert_eq!(pids(&env, "up"), (agent, qemu));
    assert_eq!(env.status("up"), "Running");

    // ... or one that fails its self-check.
    std::fs::write(&agent_binary, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(
        &agent_binary,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let broken = installed.vmkeep(&env, &["upgrade", "up", "--json"]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    let rows: serde_json::Value = serde_json::from_slice(&broken.stdout).expect("JSON");
    let error = rows[0]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(rows[0]["upgraded"], false, "{rows}");
    assert_eq!(rows[0]["exit_code"], 1, "{rows}");
    assert!(error.contains("fails its self-check"), "{error}");
    assert_eq!(pids(&env, "up"), (agent, qemu));
    assert_eq!(env.status("up"), "Running");
    assert_eq!(env.boot_id("up"), boot);

    // The moved agent serves as ever: a shell, a suspend and resume, a stop.
    assert_eq!(env.shell("up", "echo still-here"), "still-here");
    env.ok(&["suspend", "up"]);
    assert_eq!(env.status("up"), "Suspended");
    env.ok(&["start", "up"]);
    assert_eq!(env.boot_id("up"), boot, "the resume kept the boot");
    env.ok(&["stop", "up"]);
    assert_eq!(env.last_stopped("up")["reason"], "requested");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn upgrade_of_a_stopped_instance_is_refused_and_the_agent_binary_checks_its_formats() {
    let env = TestEnv::new();
    env.create("idle", "");
    let refused = env.run(&["upgrade", "idle"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused
            .stderr()
            .contains("only the host agent of a running VM can be upgraded"),
        "{}",
        refused.describe()
    );
    let nothing = env.ok(&["upgrade"]);
    assert!(
        nothing.stdout().contains("nothing to upgrade"),
        "{}",
        nothing.describe()
    );
    let check = Command::new(built("vmkeep-hostagent"))
        .arg("--check-formats")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let spoken: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(spoken["formats"]["events.jsonl"], 1, "{spoken}");
    assert_eq!(spoken["formats"]["the host agent's API"], 2, "{spoken}");
    let version = env.ok(&["--version"]);
    assert!(
        version.stdout().starts_with("vmkeep ") && version.stdout().contains('('),
        "{}",
        version.describe()
    );
}

#[test]
fn an_instance_file_of_a_newer_format_lists_as_broken_and_is_never_misread() {
    let env = TestEnv::new();
    env.create("newer", "");
    env.create("plain", "");
    let journal = env.instance_dir("newer").join("events.jsonl");
    std::fs::write(
        &journal,
        "{\"v\":99,\"ts\":\"2030-01-01T00:00:00.000Z\",\"pid\":1,\"event\":\"stopped\",\"reason\":\"crashed\"}\n",
    )
    .unwrap();
    let rows = env.list();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {rows:?}"))
            .clone()
    };
    assert_eq!(row("plain")["status"], "Stopped", "{rows:?}");
    let newer = row("newer");
    assert_eq!(newer["status"], "Broken", "{newer}");
    let said = newer.to_string();
    for part in [
        "events.jsonl version 99",
        "this vmkeep is older than the one that wrote it",
        "install",
    ] {
        assert!(said.contains(part), "{part:?} not in {said}");
    }
    let start = env.run(&["start", "newer"]);
    assert_eq!(start.code(), Some(5), "{}", start.describe());
    assert!(
        start.stderr().contains("version 99"),
        "{}",
        start.describe()
    );
    // The line it does not read is left as it was.
    assert!(
        std::fs::read_to_string(&journal)
            .unwrap()
            .starts_with("{\"v\":99")
    );
}

/// HEAD's `vmkeep upgrade NAME --json`: its one row, required to say
/// upgraded.
fn upgrade_with_head(env: &TestEnv, name: &str) -> serde_json::Value {
    let run = env.run(&["upgrade", name, "--json"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let rows: serde_json::Value = serde_json::from_str(&run.stdout()).expect("JSON");
    assert_eq!(rows[0]["upgraded"], true, "{rows}");
    rows[0].clone()
}

/// After HEAD's upgrade, the agent of `name` is the same process, running
/// HEAD's binary, with the same QEMU and the same boot; list and shell work.
fn moved_onto_head(env: &TestEnv, name: &str, before: (u32, u32), boot: &str) {
    assert_eq!(pids(env, name), before);
    assert_eq!(
        exe_of(before.0),
        built("vmkeep-hostagent").display().to_string()
    );
    assert_eq!(env.status(name), "Running");
    assert_eq!(env.boot_id(name), boot);
    assert_eq!(env.shell(name, "echo across-builds"), "across-builds");
}

#[test]
fn vm_upgrade_from_the_base_build_keeps_a_vm_it_started() {
    let base = common::upgrade_base::binaries();
    let env = TestEnv::new();
    env.create("old", "");
    let started = vmkeep_in(&base, &env, &["start", "old"]).output().unwrap();
    assert!(started.status.success(), "{}", text(&started));
    let before = pids(&env, "old");
    assert_eq!(
        exe_of(before.0),
        base.join("vmkeep-hostagent").display().to_string()
    );
    // HEAD reads what the base wrote.
    assert_eq!(env.status("old"), "Running");
    let boot = env.boot_id("old");
    let row = upgrade_with_head(&env, "old");
    assert_eq!(row["agent_pid"], before.0, "{row}");
    assert_eq!(row["qemu_pid"], before.1, "{row}");
    moved_onto_head(&env, "old", before, &boot);
    // And the base's vmkeep still reads what HEAD wrote meanwhile.
    let listed = vmkeep_in(&base, &env, &["list", "--json"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("\"Running\""),
        "{}",
        text(&listed)
    );
    env.ok(&["suspend", "old"]);
    env.ok(&["start", "old"]);
    assert_eq!(env.boot_id("old"), boot, "the resume kept the boot");
    env.ok(&["stop", "old"]);
    assert_eq!(env.last_stopped("old")["reason"], "requested");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_upgrade_from_the_base_build_keeps_a_vm_its_daemon_runs() {
    let base = common::upgrade_base::binaries();
    let env = TestEnv::new();
    env.create("kept", "runStrategy: always\n");
    let mut daemon = vmkeep_in(&base, &env, &["daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the base daemon");
    env.wait_status("kept", "Running", Duration::from_secs(150));
    let before = pids(&env, "kept");
    let boot = env.boot_id("kept");
    upgrade_with_head(&env, "kept");
    moved_onto_head(&env, "kept", before, &boot);
    // The daemon saw no end of the run: it started nothing.
    assert_eq!(env.count_events("kept", "booting"), 1);
    assert_eq!(env.count_events("kept", "unclean-end"), 0);
    // SAFETY: kill(2) of the daemon this test spawned and has not reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert_eq!(env.wait_no_processes(Duration::from_secs(60)), vec![]);
}

#[test]
fn vm_upgrade_of_an_agent_from_before_upgrades_is_refused_and_it_runs_on() {
    let old = common::upgrade_base::binaries_of(&common::upgrade_base::before_upgrades());
    let env = TestEnv::new();
    env.create("older", "");
    let started = vmkeep_in(&old, &env, &["start", "older"]).output().unwrap();
    assert!(started.status.success(), "{}", text(&started));
    let before = pids(&env, "older");
    let boot = env.boot_id("older");
    // HEAD reads what that build wrote, and talks to its agent.
    assert_eq!(env.status("older"), "Running");
    assert!(env.count_events("older", "running") >= 1);
    let refused = env.run(&["upgrade", "older"]);
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(
        refused
            .stderr()
            .contains("too old to move in place; stop and start it"),
        "{}",
        refused.describe()
    );
    assert_eq!(pids(&env, "older"), before, "left alone");
    assert_eq!(
        exe_of(before.0),
        old.join("vmkeep-hostagent").display().to_string()
    );
    assert_eq!(env.shell("older", "echo older-agent"), "older-agent");
    env.ok(&["suspend", "older"]);
    assert_eq!(env.status("older"), "Suspended");
    env.ok(&["start", "older"]);
    assert_eq!(
        env.boot_id("older"),
        boot,
        "HEAD resumed the older build's state"
    );
    env.ok(&["stop", "older"]);
    assert_eq!(env.last_stopped("older")["reason"], "requested");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

/// A daemon this test spawned, killed by its pid if the test ends early.
struct DaemonGuard(std::process::Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn vm_upgrade_moves_the_daemon_in_place_and_it_supervises_on() {
    let installed = Installed::new();
    let env = TestEnv::new();
    env.create("sup", "runStrategy: always\n");
    let log = std::fs::File::create(env.home().join("test-daemon.log")).unwrap();
    let mut daemon = DaemonGuard(
        vmkeep_in(installed.dir.path(), &env, &["daemon"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the installed daemon"),
    );
    let daemon_pid = daemon.0.id();
    env.wait_status("sup", "Running", Duration::from_secs(150));
    let before = pids(&env, "sup");
    let boot = env.boot_id("sup");
    let daemon_log = || std::fs::read_to_string(env.home().join("test-daemon.log")).unwrap();

    // A broken vmkeep installed where the daemon was started from: refused
    // at once, the daemon runs on, on its old code.
    let broken = env.home().join("broken-vmkeep");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    installed.put(&broken, "vmkeep");
    let refused = env.run(&["upgrade"]);
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(
        refused
            .stderr()
            .contains(&format!("the daemon (pid {daemon_pid}) was not upgraded"))
            && refused.stderr().contains("--version failed"),
        "{}",
        refused.describe()
    );
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon runs on");
    assert!(
        exe_of(daemon_pid).ends_with(" (deleted)"),
        "still the old code: {}",
        exe_of(daemon_pid)
    );
    // The agent moved all the same (no name: every running instance).
    assert_eq!(pids(&env, "sup"), before);

    // The real one installed: the daemon becomes it, same pid.
    installed.put(&built("vmkeep"), "vmkeep");
    let moved = env.ok(&["upgrade"]);
    assert!(
        moved.stdout().contains(&format!(
            "upgraded the daemon in place (pid {daemon_pid} kept"
        )),
        "{}",
        moved.describe()
    );
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon lives");
    assert_eq!(
        exe_of(daemon_pid),
        installed.path("vmkeep").display().to_string(),
        "the daemon runs the installed binary now"
    );
    assert_eq!(pids(&env, "sup"), before, "the VM ran on untouched");
    assert_eq!(env.boot_id("sup"), boot);
    assert!(
        daemon_log().contains("daemon upgraded in place"),
        "{}",
        daemon_log()
    );
    // Nothing was stopped or started meanwhile.
    assert_eq!(env.count_events("sup", "booting"), 1);
    assert_eq!(env.count_events("sup", "unclean-end"), 0);

    // It supervises on: a QEMU crash is restarted by the upgraded daemon.
    let restarts = env.count_events("sup", "restarting");
    env.qemu("sup").unwrap().kill().unwrap();
    env.wait_event("sup", "restarting", restarts, Duration::from_secs(150));
    env.wait_status("sup", "Running", Duration::from_secs(150));

    // Its SIGTERM (no systemd here) still stops every VM.
    // SAFETY: kill(2) of the daemon this test spawned and has not reaped.
    unsafe { libc::kill(daemon_pid as i32, libc::SIGTERM) };
    let _ = daemon.0.wait();
    assert_eq!(env.status("sup"), "Stopped");
    assert_eq!(env.wait_no_processes(Duration::from_secs(60)), vec![]);
}
