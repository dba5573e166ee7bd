//! Guest data is sacred: the data disk (`disk.qcow2`, `/data` in the tiny
//! image) is formatted only when vmkeep knows it is new, a damaged or
//! unmountable one makes `start` fail (naming the cause and the ways out)
//! and `list` show why, and `start --repair-data` repairs it. Real VMs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestEnv, wait_until};
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// `qemu-io -c "write -P 0xff OFFSET LEN"` on a stopped instance's disk.
fn overwrite_with_ff(disk: &Path, offset: u64, len: u64) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0xff {offset} {len}"))
        .arg(disk)
        .output()
        .expect("run qemu-io");
    assert!(out.status.success(), "qemu-io: {out:?}");
}

/// The `disk` of every `data-disk` event so far.
fn data_disk_events(env: &TestEnv, name: &str) -> Vec<serde_json::Value> {
    env.events(name)
        .into_iter()
        .filter(|e| e["event"] == "data-disk")
        .map(|e| e["disk"].clone())
        .collect()
}

fn last_data_disk(env: &TestEnv, name: &str) -> serde_json::Value {
    data_disk_events(env, name)
        .pop()
        .expect("a data-disk event")
}

/// Boot a new instance, leave a synced marker in /data, stop it.
fn formatted_with_marker(env: &TestEnv, name: &str) {
    env.create(name, "");
    assert!(env.instance_dir(name).join("data-disk.new").exists());
    env.run_within(&["start", name], BOOT);
    assert_eq!(env.status(name), "Running");
    let disk = last_data_disk(env, name);
    assert_eq!(disk["state"], "mounted");
    assert_eq!(disk["formatted"], true, "a new disk is formatted");
    assert!(
        !env.instance_dir(name).join("data-disk.new").exists(),
        "new no more once mounted"
    );
    env.ok(&[
        "shell",
        name,
        "--",
        "sh",
        "-c",
        "echo precious > /data/marker && sync",
    ]);
    let stop = env.run_within(&["stop", name], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
}

/// A refused start: exit 6 (the start failed), the message, nothing running, the disk untouched,
/// `list` Broken with the data-disk reason. Returns the list row's reason.
fn refused(env: &TestEnv, name: &str, disk_sum: &str, says: &str) -> serde_json::Value {
    let start = env.run_within(&["start", name], BOOT);
    assert_eq!(
        start.code(),
        Some(6),
        "the start failed: {}",
        start.describe()
    );
    let stderr = start.stderr();
    for expected in [
        says,
        &format!("vmkeep start {name} --repair-data"),
        "e2fsck -f -y",
        &format!("vmkeep delete {name} && vmkeep create {name}"),
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} in {}",
            start.describe()
        );
    }
    assert!(!stderr.contains("is running"), "{}", start.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files(name), Vec::<String>::new());
    let row = env.row(name);
    assert_eq!(row["status"], "Broken", "{row}");
    assert_eq!(row["reason"]["code"], "data-disk", "{row}");
    let message = row["reason"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{row}");
    let hint = row["reason"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!("vmkeep start {name} --repair-data")),
        "{row}"
    );
    // Stopped cleanly, by the guest (ACPI), and nothing written to the disk.
    let stopped = env.last_stopped(name);
    assert_eq!(stopped["reason"], "start-failed", "{stopped}");
    assert_eq!(stopped["by"], "power-button", "{stopped}");
    assert_eq!(
        sha256(&env.instance_dir(name).join("disk.qcow2")),
        disk_sum,
        "a refused start changes nothing on the disk"
    );
    assert!(
        !env.instance_dir(name).join("data-disk.new").exists(),
        "a disk that held data is never marked new"
    );
    row["reason"].clone()
}

/// `start --repair-data` brings the marker back; a plain start then works.
fn repaired(env: &TestEnv, name: &str) {
    let start = env.run_within(&["start", name, "--repair-data"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    assert!(start.stderr().contains("e2fsck"), "{}", start.describe());
    let disk = last_data_disk(env, name);
    assert_eq!(disk["state"], "mounted", "{disk}");
    assert_eq!(disk["formatted"], false, "{disk}");
    assert_eq!(disk["repaired"]["exit_code"], 1, "e2fsck fixed it: {disk}");
    let marker = env.ok(&["shell", name, "--", "cat", "/data/marker"]);
    assert_eq!(marker.stdout(), "precious\n");
    env.run_within(&["stop", name], SHORT);

    let start = env.run_within(&["start", name], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    let disk = last_data_disk(env, name);
    assert!(disk["repaired"].is_null(), "no repair unless asked: {disk}");
    let marker = env.ok(&["shell", name, "--", "cat", "/data/marker"]);
    assert_eq!(marker.stdout(), "precious\n");
    env.run_within(&["stop", name], SHORT);
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_data_damaged_superblock_refuses_start_and_repair_brings_the_files_back() {
    let env = TestEnv::new();
    formatted_with_marker(&env, "d");
    let disk = env.instance_dir("d").join("disk.qcow2");
    // As reported: 1 KiB of 0xff over the ext superblock.
    overwrite_with_ff(&disk, 1024, 1024);
    let damaged = sha256(&disk);
    refused(
        &env,
        "d",
        &damaged,
        "holds no file system vmkeep recognises",
    );
    assert_eq!(
        last_data_disk(&env, "d")["state"],
        "no-file-system",
        "{:?}",
        data_disk_events(&env, "d")
    );
    // Still refused, still untouched: the guest looked again and changed nothing.
    refused(
        &env,
        "d",
        &damaged,
        "holds no file system vmkeep recognises",
    );
    repaired(&env, "d");
}

#[test]
fn vm_data_unmountable_data_refuses_start_and_list_shows_why() {
    let env = TestEnv::new();
    formatted_with_marker(&env, "u");
    let disk = env.instance_dir("u").join("disk.qcow2");
    // The block group descriptors (block 1 of busybox's 4 KiB-block ext2):
    // the superblock is fine, but the kernel refuses to mount.
    overwrite_with_ff(&disk, 4096, 4096);
    let damaged = sha256(&disk);
    let reason = refused(&env, "u", &damaged, "Structure needs cleaning");
    assert!(
        reason["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot mount the data disk"),
        "{reason}"
    );
    let text = env.ok(&["list"]).stdout();
    assert!(
        text.contains("Broken") && text.contains("Structure needs cleaning"),
        "{text}"
    );
    repaired(&env, "u");
}

#[test]
fn vm_data_repair_is_refused_while_running_and_for_a_running_disk_nothing_changes() {
    let env = TestEnv::new();
    env.create("r", "");
    env.run_within(&["start", "r"], BOOT);
    let boot = env.boot_id("r");
    let repair = env.run(&["start", "r", "--repair-data"]);
    assert_eq!(repair.code(), Some(5), "wrong state: {}", repair.describe());
    assert!(
        repair.stderr().contains("vmkeep stop r"),
        "{}",
        repair.describe()
    );
    assert_eq!(env.status("r"), "Running");
    assert_eq!(env.boot_id("r"), boot, "untouched");
    env.run_within(&["stop", "r"], SHORT);
}

#[test]
fn vm_data_interrupted_first_format_formats_again_and_a_reboot_never_does() {
    let env = TestEnv::new();
    env.create("f", "");
    let marker_file = env.instance_dir("f").join("data-disk.new");
    let serial = env.instance_dir("f").join("serial.log");
    let start = env.spawn(&["start", "f"]);
    // Polled tightly: the format takes a fraction of a second.
    let until = std::time::Instant::now() + BOOT;
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("formatting it")
    {
        assert!(
            std::time::Instant::now() < until,
            "the guest never formatted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // A power cut in the middle of the format.
    env.qemu("f").expect("QEMU runs").kill().unwrap();
    let failed = start.wait_within(SHORT);
    assert_eq!(
        failed.code(),
        Some(6),
        "the start failed: {}",
        failed.describe()
    );
    assert!(marker_file.exists(), "no format completed: still new");
    // Whatever the cut format left (here: a garbled superblock, so the
    // case does not depend on how far mke2fs got), the disk is new.
    overwrite_with_ff(&env.instance_dir("f").join("disk.qcow2"), 1024, 1024);

    let start = env.run_within(&["start", "f"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    let disk = last_data_disk(&env, "f");
    assert_eq!(disk["state"], "mounted", "{disk}");
    assert_eq!(disk["formatted"], true, "formatted again: {disk}");
    assert!(!marker_file.exists(), "new no more");
    env.ok(&[
        "shell",
        "f",
        "--",
        "sh",
        "-c",
        "echo kept > /data/proof && sync",
    ]);

    // The format flag stays on this QEMU's kernel command line: a reboot
    // inside the guest finds the completed format and mounts it.
    let first_boot = env.boot_id("f");
    let _ = env.run(&["shell", "f", "--", "reboot"]);
    wait_until(BOOT, || {
        let run = env.run(&["shell", "f", "--", "cat", "/proc/sys/kernel/random/boot_id"]);
        let id = run.stdout().trim().to_string();
        (run.code() == Some(0) && !id.is_empty() && id != first_boot).then_some(())
    })
    .expect("the guest booted again");
    let proof = env.ok(&["shell", "f", "--", "cat", "/data/proof"]);
    assert_eq!(proof.stdout(), "kept\n", "a reboot never formats");
    let serial_text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        serial_text.contains("was formatted for this instance in an earlier boot"),
        "the second boot of this QEMU saw the completed format"
    );
    env.run_within(&["stop", "f"], SHORT);
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_data_older_instance_without_marker_formats_only_while_never_written() {
    let env = TestEnv::new();
    env.create("o", "");
    // As an older vmkeep left it: no marker, an image nothing was written to.
    let marker_file = env.instance_dir("o").join("data-disk.new");
    std::fs::remove_file(&marker_file).unwrap();
    let start = env.run_within(&["start", "o"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    assert_eq!(last_data_disk(&env, "o")["formatted"], true);
    assert!(!marker_file.exists());
    env.ok(&[
        "shell",
        "o",
        "--",
        "sh",
        "-c",
        "echo precious > /data/marker && sync",
    ]);
    env.run_within(&["stop", "o"], SHORT);

    // Data and no marker: mounted, never formatted.
    let start = env.run_within(&["start", "o"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    let disk = last_data_disk(&env, "o");
    assert_eq!(disk["state"], "mounted", "{disk}");
    assert_eq!(disk["formatted"], false, "{disk}");
    let marker = env.ok(&["shell", "o", "--", "cat", "/data/marker"]);
    assert_eq!(marker.stdout(), "precious\n");
    let formats = std::fs::read_to_string(env.instance_dir("o").join("serial.log"))
        .unwrap_or_default()
        .matches("formatting it")
        .count();
    assert_eq!(formats, 1, "formatted at the first boot only");
    env.run_within(&["stop", "o"], SHORT);
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}
