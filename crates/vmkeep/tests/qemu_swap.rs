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

use common::TestEnv;

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
    let bin = tempfile::tempdir().unwrap();
    let qemu = copied_host_qemu(bin.path());
    env.use_qemu(Some(&qemu));
    env.create("q", "");
    env.ok(&["start", "q"]);
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
