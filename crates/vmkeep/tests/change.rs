//! Changing a VM after it exists (tiny image, real QEMU): Lima's edit
//! flags on `create`, `start` and `edit`, `$EDITOR` edits checked before
//! they replace the config, `restart`, disk growth with /data's file system
//! grown online, a smaller disk refused, and `clone` independent of its
//! source both ways. Run as a normal user (the tests run as root).

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestEnv;
use common::host_user;

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `df -k /data`'s size, in KiB.
fn data_size_kib(env: &TestEnv, name: &str) -> u64 {
    env.shell(name, "df -k /data | tail -1")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("df's size column")
}

fn mem_total_kib(env: &TestEnv, name: &str) -> u64 {
    env.shell(name, "grep MemTotal /proc/meminfo")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("MemTotal")
}

/// An `$EDITOR` that runs `script` on the file it is given.
fn editor(env: &TestEnv, name: &str, script: &str) -> String {
    let path = env.home().join(format!("{name}.sh"));
    std::fs::write(&path, format!("#!/bin/sh\nset -e\nf=\"$1\"\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn run_with_editor(env: &TestEnv, editor: &str, args: &[&str]) -> common::Run {
    // `$EDITOR` first, as vmkeep reads it (an empty `$VISUAL` is no editor).
    env.run_env(
        args,
        &[("EDITOR", editor.as_ref()), ("VISUAL", "".as_ref())],
    )
}

/// create with flags (seen in the guest), edit of a running VM refused and
/// then applied by --restart with the disk grown and /data kept, a smaller
/// disk refused, restart with a new boot, an editor's bad edit refused with
/// the config byte for byte as it was, and a good one applied at start.
#[test]
fn vm_change_flags_edit_restart_and_disk_growth() {
    skip_unless_root!();
    let user = host_user::test_user();
    let env = TestEnv::as_user(&user);
    let config = env.instance_dir("vm").join("vmkeep.yaml");

    // Lima's flags on create: 0.375 GiB of memory, 2 CPUs, a 1 GiB disk.
    env.ok(&[
        "create", "vm", "--memory", "0.375", "--cpus", "2", "--disk", "1",
    ]);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("\ncpus: 2\n") && text.contains("# Number of virtual CPUs."),
        "set in place, comments kept:\n{text}"
    );
    env.ok(&["start", "vm"]);
    let mem = mem_total_kib(&env, "vm");
    assert!(
        (300 << 10) < mem && mem <= (384 << 10),
        "MemTotal {mem} KiB for 384 MiB"
    );
    assert_eq!(env.shell("vm", "nproc"), "2");
    env.shell("vm", "echo kept > /data/marker && sync");
    let small = data_size_kib(&env, "vm");
    assert!(small < (1 << 20), "/data of a 1 GiB disk: {small} KiB");
    let boot = env.boot_id("vm");

    // A running VM: refused with the way out, the config unchanged.
    let before = sha256(&config);
    let refused = env.run(&["edit", "vm", "--cpus", "3", "--disk", "2"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused.stderr().contains("--restart"),
        "{}",
        refused.describe()
    );
    assert_eq!(sha256(&config), before);
    let refused = env.run(&["start", "vm", "--cpus", "3"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert_eq!(sha256(&config), before);

    // --restart: saved, then a stop by the ladder and a fresh boot with it;
    // the disk grows and the guest grows /data, the marker kept.
    let restarted = env.ok(&["edit", "vm", "--cpus", "3", "--disk", "2", "--restart"]);
    let said = format!("{}{}", restarted.stdout(), restarted.stderr());
    assert!(
        said.contains("cpus: 2 -> 3")
            && said.contains("ACPI power button")
            && said.contains("grew the disk from 1GiB to 2GiB")
            && said.contains("the guest grew /data"),
        "{said}"
    );
    assert_ne!(env.boot_id("vm"), boot, "a fresh boot");
    assert_eq!(env.shell("vm", "nproc"), "3");
    assert_eq!(env.shell("vm", "cat /data/marker"), "kept");
    let grown = data_size_kib(&env, "vm");
    assert!(
        grown > small + (900 << 10),
        "/data grew from {small} to {grown} KiB"
    );
    let events = env.events("vm");
    let disk_grown = events
        .iter()
        .find(|e| e["event"] == "disk-grown")
        .expect("disk-grown journaled");
    assert_eq!(disk_grown["to_bytes"], 2u64 << 30, "{disk_grown}");
    assert!(
        events.iter().any(|e| e["event"] == "data-disk"
            && e["disk"]["grown"]["to_bytes"].as_u64() > Some(1 << 30)),
        "the guest's growth journaled: {events:?}"
    );

    // No shrinking: refused before anything is touched.
    let before = sha256(&config);
    let refused = env.run(&["edit", "vm", "--disk", "1", "--restart"]);
    assert_eq!(refused.code(), Some(4), "{}", refused.describe());
    assert!(
        refused.stderr().contains("never shrinks"),
        "{}",
        refused.describe()
    );
    assert_eq!(sha256(&config), before);
    assert_eq!(env.status("vm"), "Running");

    // restart: a new boot, the same data.
    let boot = env.boot_id("vm");
    let restarted = env.ok(&["restart", "vm"]);
    assert!(
        restarted.stdout().contains("stopped vm") && restarted.stdout().contains("vm is running"),
        "{}",
        restarted.describe()
    );
    assert_ne!(env.boot_id("vm"), boot);
    assert_eq!(env.shell("vm", "cat /data/marker"), "kept");
    env.ok(&["stop", "vm"]);

    // A hand-edited smaller disk refuses the start (exit 4), nothing touched.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("disk: 2GiB", "disk: 1GiB")).unwrap();
    let refused = env.run(&["start", "vm"]);
    assert_eq!(refused.code(), Some(4), "{}", refused.describe());
    assert_eq!(env.status("vm"), "Stopped");
    std::fs::write(&config, &text).unwrap();

    // $EDITOR: a bad edit is refused, the config byte for byte as it was and
    // the text kept; the next edit opens it again, and a good one applies.
    let before = sha256(&config);
    let bad = editor(&env, "bad", "sed -i 's/^memory: .*/memory: 1MiB/' \"$f\"");
    let refused = run_with_editor(&env, &bad, &["edit", "vm"]);
    assert_eq!(refused.code(), Some(4), "{}", refused.describe());
    assert!(
        refused.stderr().contains("memory") && refused.stderr().contains("vmkeep.yaml.rejected"),
        "{}",
        refused.describe()
    );
    assert_eq!(sha256(&config), before, "byte-identical");
    let rejected = env.instance_dir("vm").join("vmkeep.yaml.rejected");
    assert!(
        std::fs::read_to_string(&rejected)
            .unwrap()
            .contains("memory: 1MiB")
    );
    let good = editor(
        &env,
        "good",
        "sed -i 's/^memory: .*/memory: 640MiB/' \"$f\"",
    );
    let edited = run_with_editor(&env, &good, &["edit", "vm"]);
    assert!(edited.output.status.success(), "{}", edited.describe());
    assert!(
        edited.stderr().contains("your last edit"),
        "{}",
        edited.describe()
    );
    assert!(!rejected.exists(), "the kept text is gone once applied");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("memory: 640MiB")
    );
    let unchanged = run_with_editor(&env, "true", &["edit", "vm"]);
    assert!(
        unchanged.stdout().contains("no change"),
        "{}",
        unchanged.describe()
    );

    // The edit applies at the start (and start's own flags too).
    env.ok(&["start", "vm", "--cpus", "1"]);
    let mem = mem_total_kib(&env, "vm");
    assert!(mem > (520 << 10), "MemTotal {mem} KiB for 640 MiB");
    assert_eq!(env.shell("vm", "nproc"), "1");
    assert_eq!(env.shell("vm", "cat /data/marker"), "kept");
    env.ok(&["stop", "vm"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

/// A clone has its own disk: what one writes the other never sees, both
/// ways; a running or suspended source is refused.
#[test]
fn vm_change_clone_is_independent_of_its_source_both_ways() {
    skip_unless_root!();
    let user = host_user::test_user();
    let env = TestEnv::as_user(&user);
    env.ok(&["create", "src", "--disk", "1"]);
    env.ok(&["start", "src"]);
    env.shell("src", "echo before > /data/a && sync");

    let running = env.run(&["clone", "src", "dst"]);
    assert_eq!(running.code(), Some(5), "{}", running.describe());
    assert!(!env.instance_dir("dst").exists());
    env.ok(&["suspend", "src"]);
    let suspended = env.run(&["clone", "src", "dst"]);
    assert_eq!(suspended.code(), Some(5), "{}", suspended.describe());
    assert!(
        suspended.stderr().contains("suspended") && suspended.stderr().contains("vmkeep stop src"),
        "{}",
        suspended.describe()
    );
    assert!(!env.instance_dir("dst").exists());
    // A suspended instance takes only a config its saved state resumes with.
    let config = env.instance_dir("src").join("vmkeep.yaml");
    let before = sha256(&config);
    let refused = env.run(&["edit", "src", "--memory", "0.5"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused.stderr().contains("saved state") && refused.stderr().contains("--discard-state"),
        "{}",
        refused.describe()
    );
    assert_eq!(sha256(&config), before, "unchanged");
    let taken = env.ok(&["edit", "src", "--set", ".stopTimeout = \"45s\""]);
    assert!(
        taken.stdout().contains("is suspended"),
        "{}",
        taken.describe()
    );
    assert_eq!(env.status("src"), "Suspended");
    env.ok(&["stop", "src"]);

    let source_disk = env.instance_dir("src").join("disk.qcow2");
    let before = sha256(&source_disk);
    let cloned = env.ok(&["clone", "src", "dst"]);
    assert!(
        cloned.stdout().contains("cloned src as dst"),
        "{}",
        cloned.describe()
    );
    assert_eq!(sha256(&source_disk), before, "the source is only read");
    assert_eq!(
        sha256(&env.instance_dir("dst").join("disk.qcow2")),
        before,
        "a byte-for-byte copy"
    );
    env.ok(&["start", "src", "dst"]);
    assert_eq!(env.shell("dst", "cat /data/a"), "before");
    env.shell("dst", "echo dst > /data/b && sync");
    env.shell("src", "echo src > /data/c && sync");
    assert_eq!(
        env.shell("src", "ls /data | grep -v lost+found | tr '\\n' ' '"),
        "a c"
    );
    assert_eq!(
        env.shell("dst", "ls /data | grep -v lost+found | tr '\\n' ' '"),
        "a b"
    );
    env.ok(&["stop", "src", "dst"]);
    // And after a restart of each, still apart.
    env.ok(&["delete", "src"]);
    env.ok(&["start", "dst"]);
    assert_eq!(env.shell("dst", "cat /data/a /data/b"), "before\ndst");
    env.ok(&["stop", "dst"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}
