//! A QEMU binary replaced on disk under a running VM (what a package
//! upgrade of QEMU does: a new file renamed over the old name): `list`
//! shows it, from `/proc/PID/exe`, without asking any socket; `vmkeep
//! upgrade --qemu NAME` moves the VM onto the QEMU installed now through
//! the suspend path, same guest boot.
//!
//! Each VM runs on a copy of a QEMU in a temporary directory of the test
//! (`VMKEEP_QEMU`), so the test can replace it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestEnv;
use common::second_qemu::{self, executable_of};

/// The host's QEMU (the one in PATH), resolved.
fn host_qemu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
        .expect("qemu-system-x86_64 in PATH")
}

/// A copy of the host's QEMU in `root/bin`, beside links to the host's
/// modules and firmware where a relocated Debian QEMU looks for them
/// (`../lib/x86_64-linux-gnu/qemu`, `../share/qemu`, `../share/seabios`,
/// relative to its binary). Returns the binary's path.
fn copied_host_qemu(root: &Path) -> PathBuf {
    let links = [
        (
            "lib/x86_64-linux-gnu/qemu",
            "/usr/lib/x86_64-linux-gnu/qemu",
        ),
        ("share/qemu", "/usr/share/qemu"),
        ("share/seabios", "/usr/share/seabios"),
    ];
    for (at, to) in links {
        let at = root.join(at);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, at).unwrap();
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let qemu = root.join("bin/qemu-system-x86_64");
    std::fs::copy(host_qemu(), &qemu).unwrap();
    qemu
}

/// A new VM `name` started on a copy of the host's QEMU (in a temporary
/// directory, kept as long as the first value lives); the copy's path.
fn started_on_a_copy(env: &TestEnv, name: &str) -> (tempfile::TempDir, PathBuf) {
    let bin = tempfile::tempdir().unwrap();
    let qemu = copied_host_qemu(bin.path());
    env.use_qemu(Some(&qemu));
    env.create(name, "");
    env.ok(&["start", name]);
    (bin, qemu)
}

/// Put a copy of `from` at `to` the way a package manager does: written
/// beside it, then renamed over it (a running QEMU keeps its old file).
fn install_over(from: &Path, to: &Path) {
    let new = to.with_extension("new");
    std::fs::copy(from, &new).unwrap();
    std::fs::rename(&new, to).unwrap();
}

#[test]
fn vm_list_shows_a_vm_whose_qemu_was_replaced_on_disk() {
    let env = TestEnv::new();
    let (_bin, qemu) = started_on_a_copy(&env, "q");
    let row = env.row("q");
    assert_eq!(row["status"], "Running", "{row}");
    assert_eq!(row["qemu_replaced"], serde_json::Value::Null, "{row}");
    let table = env.ok(&["list"]).stdout();
    assert!(!table.contains("replaced"), "{table}");

    install_over(&host_qemu(), &qemu);
    let row = env.row("q");
    assert_eq!(row["status"], "Running", "still running: {row}");
    assert_eq!(
        row["qemu_replaced"].as_str(),
        Some(qemu.to_str().unwrap()),
        "{row}"
    );
    let table = env.ok(&["list"]).stdout();
    assert!(
        table.contains("was replaced on disk since this QEMU started")
            && table.contains("vmkeep upgrade --qemu q"),
        "{table}"
    );
    env.ok(&["stop", "q"]);
}

#[test]
fn vm_upgrade_qemu_moves_a_vm_from_72_onto_qemu10_same_boot() {
    let env = TestEnv::new();
    let qemu10 = second_qemu::qemu10();
    assert_eq!(second_qemu::host_qemu_major(), 7, "the host's QEMU is 7.2");
    let (_bin, qemu) = started_on_a_copy(&env, "u");
    let boot = env.boot_id("u");
    // A process lives only in the guest's memory.
    let sleeper = env.shell("u", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!");
    let old_pid = env.qemu("u").expect("QEMU runs").pid();

    // Nothing to move while its QEMU is the one installed.
    let same = env.run(&["upgrade", "--qemu", "u"]);
    assert_eq!(same.code(), Some(0), "{}", same.describe());
    assert!(
        same.stdout().contains("already runs"),
        "{}",
        same.describe()
    );
    assert_eq!(env.qemu("u").expect("QEMU runs").pid(), old_pid);

    // The package upgrade: QEMU 10 (its wrapper, which execs the real
    // binary with its data directories) renamed over the copy.
    install_over(&qemu10, &qemu);
    assert!(env.row("u")["qemu_replaced"].is_string());

    let moved = env.ok(&["upgrade", "--qemu", "u"]);
    eprintln!("{}", moved.describe());
    assert!(
        moved.stdout().contains("onto QEMU 10.") && moved.stdout().contains("paused for "),
        "says what it did and how long the guest was paused: {}",
        moved.describe()
    );
    let row = env.row("u");
    assert_eq!(row["status"], "Running", "{row}");
    assert_eq!(row["qemu_replaced"], serde_json::Value::Null, "{row}");
    let new_pid = env.qemu("u").expect("QEMU runs").pid();
    assert_ne!(new_pid, old_pid, "a new QEMU process");
    let exe = executable_of(new_pid);
    assert!(
        exe.to_string_lossy().contains("qemu-10/root/"),
        "runs {} instead of QEMU 10",
        exe.display()
    );
    assert_eq!(env.boot_id("u"), boot, "the same guest boot");
    assert_eq!(
        env.shell("u", &format!("kill -0 {sleeper} && echo alive")),
        "alive",
        "the guest's processes live on"
    );
    let events = env.events("u");
    assert!(
        events.iter().any(|e| e["event"] == "qemu-upgrade"),
        "journaled: {events:#?}"
    );

    // Back onto 7.2 is refused before anything is touched: a state saved by
    // QEMU 10 does not load into 7.2. The VM runs on.
    install_over(&host_qemu(), &qemu);
    let refused = env.run(&["upgrade", "--qemu", "u"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused.stderr().contains("older"),
        "says why: {}",
        refused.describe()
    );
    assert_eq!(env.status("u"), "Running");
    assert_eq!(env.qemu("u").expect("QEMU runs").pid(), new_pid);
    assert_eq!(env.boot_id("u"), boot);
    env.ok(&["stop", "u"]);
}

#[test]
fn vm_upgrade_qemu_without_room_for_the_state_is_refused_and_the_vm_runs_on() {
    // RAM file (256 MiB, reserved at boot) + disk + logs, and a little more.
    let env = TestEnv::on_small_tmpfs(330);
    let (_bin, qemu) = started_on_a_copy(&env, "f");
    let boot = env.boot_id("f");
    let old_pid = env.qemu("f").expect("QEMU runs").pid();
    // The same QEMU reinstalled (a rebuild of the package): a new file.
    install_over(&host_qemu(), &qemu);
    assert!(env.row("f")["qemu_replaced"].is_string());
    // Fill the file system but for 8 MiB.
    let filler = env.fill_leaving(8 << 20);

    let refused = env.run(&["upgrade", "--qemu", "f"]);
    assert_eq!(refused.code(), Some(7), "{}", refused.describe());
    let said = refused.stderr();
    assert!(
        said.contains("free some space there") && said.contains("the VM runs on"),
        "{said}"
    );
    assert_eq!(env.status("f"), "Running");
    assert_eq!(env.qemu("f").expect("QEMU runs").pid(), old_pid);
    assert_eq!(env.boot_id("f"), boot);
    assert!(env.row("f")["qemu_replaced"].is_string(), "still flagged");

    // With the space back it moves onto the new file.
    std::fs::remove_file(&filler).unwrap();
    env.ok(&["upgrade", "--qemu", "f"]);
    let row = env.row("f");
    assert_eq!(row["status"], "Running", "{row}");
    assert_eq!(row["qemu_replaced"], serde_json::Value::Null, "{row}");
    assert_ne!(env.qemu("f").expect("QEMU runs").pid(), old_pid);
    assert_eq!(env.boot_id("f"), boot, "the same guest boot");
    env.ok(&["stop", "f"]);
}

#[test]
fn vm_upgrade_qemu_of_a_daemon_vm_keeps_its_boot_and_the_daemon_supervises_it() {
    let env = TestEnv::new();
    let bin = tempfile::tempdir().unwrap();
    let qemu = copied_host_qemu(bin.path());
    env.use_qemu(Some(&qemu));
    env.create("d", "runStrategy: always\n");
    let mut daemon = env.spawn(&["daemon", "--restart-delay", "200ms"]);
    env.wait_status("d", "Running", Duration::from_secs(150));
    let boot = env.boot_id("d");
    install_over(&host_qemu(), &qemu);

    env.ok(&["upgrade", "--qemu", "d"]);
    let row = env.row("d");
    assert_eq!(row["status"], "Running", "{row}");
    assert_eq!(row["qemu_replaced"], serde_json::Value::Null, "{row}");
    assert_eq!(env.boot_id("d"), boot, "the same guest boot");
    let events = env.events("d");
    let moved = events
        .iter()
        .rposition(|e| e["event"] == "qemu-upgrade")
        .expect("journaled");
    let after: Vec<_> = events[moved..].iter().map(|e| &e["event"]).collect();
    assert!(
        after.iter().any(|e| *e == "resumed") && !after.iter().any(|e| *e == "booting"),
        "resumed, not booted, and only once: {after:?}"
    );

    // The daemon supervises the resumed VM: a QEMU crash is restarted.
    let restarts = env.count_events("d", "restarting");
    env.qemu("d").unwrap().kill().unwrap();
    env.wait_event("d", "restarting", restarts, Duration::from_secs(150));
    env.wait_status("d", "Running", Duration::from_secs(150));
    assert_ne!(env.boot_id("d"), boot, "a fresh boot after the crash");

    // SAFETY: kill(2) of the daemon this test spawned and has not reaped.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let run = std::mem::replace(&mut daemon, env.spawn(&["--version"]))
        .wait_within(Duration::from_secs(150));
    daemon.wait_within(Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "daemon exit: {}", run.describe());
    assert_eq!(env.status("d"), "Stopped");
}
