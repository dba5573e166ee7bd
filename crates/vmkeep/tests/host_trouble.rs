//! The host in trouble, with real VMs: a full host disk (a small tmpfs as
//! VMKEEP_HOME), a frozen host agent, a power loss, many starts at once, a
//! symlinked instance directory, several instances at once. Each case checks
//! what a user sees: exit codes, messages, `list`, the journal, the data.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "\n*** SKIPPED: mounting a small tmpfs as VMKEEP_HOME needs root; CI runs as root ***\n"
        );
    }
    root
}

/// A home on a small tmpfs (root only; says so when skipped).
fn small_home(size_mib: u64) -> Option<TestEnv> {
    is_root().then(|| TestEnv::on_small_tmpfs(size_mib))
}

/// Fill the home's filesystem to the last byte; returns the filler's path.
fn fill(env: &TestEnv) -> PathBuf {
    let filler = env.home().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    // The last partial block too.
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=4k",
            "status=none",
            "oflag=append",
            "conv=notrunc",
        ])
        .arg(format!("of={}", filler.display()))
        .status();
    filler
}

fn free_bytes(env: &TestEnv) -> u64 {
    vmkeep::os::fs::free_space(env.home())
        .unwrap()
        .available_bytes
}

fn last_of<'a>(events: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    events.iter().rev().find(|e| e["event"] == kind)
}

#[test]
fn vm_trouble_a_full_host_disk_never_keeps_a_vm_from_stopping_and_start_says_why() {
    // Room for the disk and logs (the guest RAM is a memfd: no space).
    let Some(env) = small_home(512) else {
        return;
    };
    let env = &env;
    env.create("a", "");
    env.run_within(&["start", "a"], BOOT);
    assert_eq!(env.status("a"), "Running");
    let filler = fill(env);
    assert!(free_bytes(env) < 64 * 1024, "the disk is full");

    // list, stop: as on any day.
    assert_eq!(env.status("a"), "Running");
    let stop = env.run_within(&["stop", "a"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert!(
        stop.stdout().contains("ACPI power button"),
        "{}",
        stop.describe()
    );
    assert_eq!(env.status("a"), "Stopped");
    let events = env.events("a");
    let stopped = last_of(&events, "stopped").expect("the stop is journaled even so");
    assert_eq!(stopped["by"], "power-button", "{stopped}");

    // start refuses, naming the filesystem and the space it needs.
    let start = env.run_within(&["start", "a"], SHORT);
    assert_eq!(start.code(), Some(1), "{}", start.describe());
    let says = start.stderr();
    assert!(
        says.contains(&env.home().display().to_string()) && says.contains("needs at least"),
        "{says}"
    );
    assert!(env.processes().is_empty(), "nothing was started");

    // Room again: it starts; full again: a forced stop and a delete work.
    std::fs::remove_file(&filler).unwrap();
    env.run_within(&["start", "a"], BOOT);
    assert_eq!(env.status("a"), "Running");
    fill(env);
    let force = env.run_within(&["stop", "--force", "a"], SHORT);
    assert_eq!(force.code(), Some(0), "{}", force.describe());
    assert!(env.wait_no_processes(SHORT).is_empty());
    let delete = env.run_within(&["delete", "a"], SHORT);
    assert_eq!(delete.code(), Some(0), "{}", delete.describe());
    assert!(!env.instance_dir("a").exists());
}

#[test]
fn vm_trouble_a_frozen_host_agent_is_listed_and_its_vm_still_gets_the_power_button() {
    let env = TestEnv::new();
    env.create("f", "stopTimeout: 20s\n");
    env.run_within(&["start", "f"], BOOT);
    env.ok(&[
        "shell",
        "f",
        "--",
        "sh",
        "-c",
        "echo kept > /data/marker && sync",
    ]);
    let agent = env.agent("f").expect("a host agent");
    agent.signal(rustix::process::Signal::STOP).unwrap();
    let rows = env.list();
    let row = rows.iter().find(|r| r["name"] == "f").unwrap();
    assert_eq!(row["status"], "Broken", "{row}");
    assert_eq!(row["reason"]["code"], "agent-unresponsive", "{row}");

    let began = Instant::now();
    let stop = env.run_within(&["stop", "f"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert!(
        began.elapsed() < Duration::from_secs(20 + 15),
        "within its deadline and margin: {:?}",
        began.elapsed()
    );
    assert!(
        agent.wait_timeout(Duration::from_secs(10)),
        "the frozen agent is gone"
    );
    let events = env.events("f");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "repaired" && e["action"] == "killed-unresponsive-agent"),
        "{events:#?}"
    );
    let stopped = last_of(&events, "stopped").unwrap();
    assert_eq!(
        stopped["by"], "power-button",
        "the guest got its power button: {stopped}"
    );
    assert!(
        !stopped["qemu_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("--force"),
        "no forced stop was asked: {stopped}"
    );
    // The data survived a clean power-off.
    env.run_within(&["start", "f"], BOOT);
    assert_eq!(
        env.ok(&["shell", "f", "--", "cat", "/data/marker"])
            .stdout(),
        "kept\n"
    );
}

#[test]
fn vm_trouble_a_power_loss_is_journaled_when_the_next_start_notices_it() {
    let env = TestEnv::new();
    env.create("p", "");
    env.run_within(&["start", "p"], BOOT);
    let agent = env.agent("p").unwrap();
    let qemu = env.qemu("p").unwrap();
    // As at a power loss: both gone, nothing written. The agent goes first:
    // an agent that outlived its QEMU even briefly would journal that
    // QEMU's end, which is no longer a power loss.
    agent.kill().unwrap();
    assert!(agent.wait_timeout(SHORT));
    qemu.kill().unwrap();
    assert!(qemu.wait_timeout(SHORT));
    env.run_within(&["start", "p"], BOOT);
    let events = env.events("p");
    let unclean = last_of(&events, "unclean-end").expect("the unclean end is journaled");
    assert_eq!(unclean["previous_pid"], agent.pid(), "{unclean}");
    assert_eq!(unclean["qemu_survived"], false, "{unclean}");
    assert_eq!(env.status("p"), "Running");
}

#[test]
fn vm_trouble_many_starts_at_once_end_in_one_vm_each_with_a_truthful_exit() {
    for round in 0..2 {
        // `default`, created by whichever start comes first, and a named one.
        let env = TestEnv::new();
        env.create("n", "");
        let starts: Vec<_> = (0..6)
            .flat_map(|_| [env.spawn(&["start"]), env.spawn(&["start", "n"])])
            .collect();
        for start in starts {
            let run = start.wait_within(BOOT);
            assert_eq!(run.code(), Some(0), "round {round}: {}", run.describe());
        }
        for name in ["default", "n"] {
            assert_eq!(env.status(name), "Running", "round {round}");
            assert_eq!(env.count_events(name, "booting"), 1, "one boot of {name}");
            assert!(
                !env.events(name).iter().any(|e| e["event"] == "repaired"),
                "nothing of a live start was swept as stale: {:#?}",
                env.events(name)
            );
        }
        let qemus = env
            .processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .count();
        assert_eq!(qemus, 2, "round {round}");
        let stops: Vec<_> = (0..4)
            .flat_map(|_| [env.spawn(&["stop"]), env.spawn(&["stop", "n"])])
            .collect();
        for stop in stops {
            let run = stop.wait_within(SHORT);
            assert_eq!(run.code(), Some(0), "round {round}: {}", run.describe());
        }
        assert_eq!(env.status("default"), "Stopped");
        assert_eq!(env.status("n"), "Stopped");
    }
}

#[test]
fn vm_trouble_several_names_start_and_stop_together() {
    let env = TestEnv::new();
    for name in ["a", "b", "c"] {
        env.create(name, "");
    }
    let start = env.run_within(&["start", "a", "b", "c"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    for name in ["a", "b", "c"] {
        assert_eq!(env.status(name), "Running", "{name}");
    }
    let stop = env.run_within(&["stop", "a", "b", "c"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    for name in ["a", "b", "c"] {
        assert!(
            stop.stdout().contains(&format!("stopped {name} in")),
            "{}",
            stop.describe()
        );
        assert_eq!(env.status(name), "Stopped", "{name}");
    }
    // One missing name fails the whole with its code, the others still act.
    let mixed = env.run_within(&["start", "a", "ghost"], BOOT);
    assert_eq!(mixed.code(), Some(3), "{}", mixed.describe());
    assert_eq!(env.status("a"), "Running");
}

#[test]
fn a_symlinked_instance_is_deleted_where_it_really_is() {
    let env = TestEnv::new();
    env.create("s", "");
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("s");
    std::fs::rename(env.instance_dir("s"), &real).unwrap();
    std::os::unix::fs::symlink(&real, env.instance_dir("s")).unwrap();
    assert_eq!(env.status("s"), "Stopped");
    let delete = env.ok(&["delete", "s"]);
    assert!(
        delete.stdout().contains(&real.display().to_string()),
        "it says where the files were: {}",
        delete.describe()
    );
    assert!(!real.exists(), "the disk, config and journal are gone");
    assert!(
        std::fs::symlink_metadata(env.instance_dir("s")).is_err(),
        "and so is the link"
    );
    assert!(env.list().is_empty());
}

fn sha256_in_guest(env: &TestEnv, name: &str, path: &str) -> String {
    let run = env.ok(&["shell", name, "--", "sha256sum", path]);
    run.stdout()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A guest whose disk write does not fit the host's disk is paused by QEMU:
/// `list` says `Paused` with the reason, a command is refused at once (not
/// left hanging), `start` says the disk is still full; once space is
/// freed the VM runs on by itself, and what the guest wrote is whole.
#[test]
fn vm_trouble_a_guest_paused_by_a_full_host_disk_is_listed_refuses_commands_and_runs_on_when_space_is_freed()
 {
    let Some(env) = small_home(512) else {
        return;
    };
    let env = &env;
    env.create("p", "stopTimeout: 20s\n");
    env.run_within(&["start", "p"], BOOT);
    let filler = fill(env);
    // 24 MiB of random data, then its checksum: the write-back of the
    // first does not fit, so QEMU pauses the guest.
    env.ok(&[
        "shell",
        "p",
        "--",
        "sh",
        "-c",
        "(dd if=/dev/urandom of=/data/big bs=1M count=24 && sync && \
          sha256sum /data/big > /data/big.sum && sync) </dev/null >/dev/null 2>&1 &",
    ]);
    env.wait_status("p", "Paused", SHORT);
    let row = env.list().into_iter().find(|r| r["name"] == "p").unwrap();
    let reason = &row["reason"];
    assert_eq!(reason["code"], "host-disk-full", "{row}");
    let mount = vmkeep::os::fs::mount_point_of(env.home()).unwrap();
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .contains(&format!("host disk full on {}", mount.display())),
        "{row}"
    );
    let paused = last_of(&env.events("p"), "paused").cloned().unwrap();
    assert_eq!(paused["reason"]["kind"], "host-disk-full", "{paused}");

    // A command is refused at once, naming why and the way out.
    let shell = env.run_within(&["shell", "p", "--", "true"], SHORT);
    assert_eq!(shell.code(), Some(5), "{}", shell.describe());
    assert!(
        shell.stderr().contains("p is Paused: host disk full on")
            && shell.stderr().contains("free at least 32.0 MiB"),
        "{}",
        shell.describe()
    );
    // `start` cannot make it run while the disk is full, and says so.
    let start = env.run_within(&["start", "p"], SHORT);
    assert_eq!(start.code(), Some(6), "{}", start.describe());
    assert!(
        start.stderr().contains("the host disk is still full"),
        "{}",
        start.describe()
    );
    assert_eq!(env.status("p"), "Paused", "the refusals changed nothing");

    // Space freed: it runs on by itself and finishes what it was writing.
    std::fs::remove_file(&filler).unwrap();
    env.wait_status("p", "Running", SHORT);
    let continued = last_of(&env.events("p"), "continued").cloned().unwrap();
    assert_eq!(continued["by"], "space-freed", "{continued}");
    common::wait_until(BOOT, || {
        let run = env.run(&["shell", "p", "--", "cat", "/data/big.sum"]);
        (run.code() == Some(0) && !run.stdout().is_empty()).then_some(())
    })
    .expect("the guest finished its write");
    let sum = env
        .ok(&["shell", "p", "--", "cat", "/data/big.sum"])
        .stdout();
    let written = sum.split_whitespace().next().unwrap().to_string();
    assert_eq!(sha256_in_guest(env, "p", "/data/big"), written);

    // And it is on the disk: the same bytes after a stop and a start.
    env.run_within(&["stop", "p"], SHORT);
    env.run_within(&["start", "p"], BOOT);
    assert_eq!(sha256_in_guest(env, "p", "/data/big"), written);
    env.run_within(&["stop", "p"], SHORT);
    assert!(env.wait_no_processes(SHORT).is_empty());
}

/// A start whose boot meets a full host disk (the guest formats its new
/// data disk) fails at once, naming the disk space, rather than waiting
/// for the boot timeout; with room again the next start formats and runs.
#[test]
fn vm_trouble_a_boot_paused_by_a_full_host_disk_fails_at_once_naming_the_disk_space() {
    let Some(env) = small_home(512) else {
        return;
    };
    let env = &env;
    env.create("b", "stopTimeout: 20s\nbootTimeout: 600s\n");
    let start = env.spawn(&["start", "b"]);
    // Hold QEMU still as soon as it is launched (its RAM is reserved by
    // then), fill the disk, let it go: the guest's format of the new data
    // disk then cannot fit.
    let qemu = common::wait_until(BOOT, || {
        (env.count_events("b", "booting") > 0)
            .then(|| env.qemu("b"))
            .flatten()
    })
    .expect("QEMU was launched");
    qemu.signal(rustix::process::Signal::STOP).unwrap();
    let filler = fill(env);
    qemu.signal(rustix::process::Signal::CONT).unwrap();
    let run = start.wait_within(BOOT);
    assert_eq!(run.code(), Some(6), "{}", run.describe());
    assert!(
        run.stderr()
            .contains("QEMU paused the guest during boot: host disk full on")
            && run.stderr().contains("then start it again"),
        "{}",
        run.describe()
    );
    assert!(env.wait_no_processes(SHORT).is_empty());
    let failed = last_of(&env.events("b"), "start-failed").cloned().unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("host disk full"),
        "{failed}"
    );
    drop(qemu);

    std::fs::remove_file(&filler).unwrap();
    env.run_within(&["start", "b"], BOOT);
    assert_eq!(env.status("b"), "Running");
    env.ok(&["shell", "b", "--", "sh", "-c", "echo ok > /data/f && sync"]);
    env.run_within(&["stop", "b"], SHORT);
    assert!(env.wait_no_processes(SHORT).is_empty());
}
