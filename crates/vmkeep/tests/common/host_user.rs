//! A normal (unprivileged) host user for the tests that claim "works for a
//! normal user": created once per machine when missing (the tests run as
//! root), and used by `TestEnv::as_user` to run `vmkeep` as that user.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// The test user's name.
pub const NAME: &str = "vmkeep-tester";

/// A host user: its name and ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Whether the tests run as root (they can then make and become a user).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The test user, made if missing. Panics when not root: a test that needs
/// it says so first (`skip_unless_root`).
pub fn test_user() -> HostUser {
    assert!(running_as_root(), "making a test user needs root");
    // Tests run in parallel processes: one makes the user, under a lock.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/vmkeep-tester.lock")
        .expect("open the test user's lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    if let Some(user) = lookup() {
        return user;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            NAME,
        ])
        .status()
        .expect("run useradd");
    assert!(status.success(), "useradd {NAME} failed: {status}");
    lookup().expect("the user just made")
}

fn lookup() -> Option<HostUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(NAME))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some(HostUser {
        name: NAME.into(),
        uid: fields.get(2)?.parse().ok()?,
        gid: fields.get(3)?.parse().ok()?,
    })
}

/// Skip the calling test, loudly, when it cannot make a user.
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        if !common::host_user::running_as_root() {
            eprintln!(
                "SKIPPED: this test makes a host user and runs vmkeep as it; run the suite as root"
            );
            return;
        }
    };
}

/// Give `path` (not following symlinks) to `user`.
pub fn give(path: &Path, user: &HostUser) {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).unwrap();
}

/// The uid that owns `path`.
pub fn owner(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().uid()
}
