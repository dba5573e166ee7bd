//! Small static programs the tests run in a guest (the tiny image has no C
//! library, and its busybox no inotify watcher), built once per machine
//! from `tests/fixtures/guest-tools/` with the host's C compiler, into a
//! directory every user may read: a test shares it read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of `inotify-watch`: when the guest read the event (its wall
/// clock, which the host agent keeps on the host's), and what it was
/// (`c\t/mnt/rw\tname`).
pub fn watched_event(line: &str) -> Option<(std::time::SystemTime, &str)> {
    let (when, what) = line.split_once(' ')?;
    let secs: f64 = when.parse().ok()?;
    Some((
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs),
        what,
    ))
}

/// The directory holding the built programs (`inotify-watch`).
pub fn dir() -> PathBuf {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guest-tools");
    let source = sources.join("inotify-watch.c");
    let text = std::fs::read(&source).expect("the watcher's source");
    let key = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(&text)[..8])
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("guest-tools-{key}"));
    let lock = std::fs::File::create(out.with_extension("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let program = out.join("inotify-watch");
    if !program.exists() {
        std::fs::create_dir_all(&out).unwrap();
        let built = out.join(".inotify-watch.new");
        let status = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&built)
            .arg(&source)
            .status()
            .expect("run cc (the C compiler and libc6-dev)");
        assert!(status.success(), "building {} failed", source.display());
        std::fs::rename(&built, &program).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for path in [&out, &program] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    out
}
