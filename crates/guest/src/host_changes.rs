//! Lima's `mountInotify`, the guest's part: the host says what changed on
//! its side of a writable share; the agent touches the same path through
//! the share's mount here, so that the guest's own inotify watchers see it.
//!
//! Each touch sets a file's modification time to what it is on the host
//! (read afresh): the kernel raises `IN_MODIFY` for it. A change on the host
//! becomes, in the guest:
//! - a file written (and closed) or its attributes changed: `IN_MODIFY` on
//!   the file (a watch on its directory gets it with the file's name);
//! - a file or directory made or moved in: `IN_MODIFY` on it (with its
//!   name, to a watch on its directory), not `IN_CREATE`;
//! - one removed or moved out: `IN_MODIFY` on its directory, not
//!   `IN_DELETE` (the name is gone: nothing is left to touch).
//!
//! It is the host talking, but every path is checked all the same: it
//! must be relative and plain ([`vmkeep_protocol::host_changes::valid_path`]),
//! and it is opened by the kernel beneath the share's own mount point only
//! (no `..`, no symlink, no other mount on the way; the last component is
//! touched itself, never followed). Nothing is written but times.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use vmkeep_protocol::host_changes::{ChangeKind, HostChanges, Raised, valid_path};

use crate::shares::{FSTYPE, MountEntry};
use crate::sys;

/// What to touch for one change: a directory (relative to the mount point,
/// empty for the mount point itself) and a name in it (empty: the
/// directory itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Touch {
    pub dir: String,
    pub name: String,
}

/// The touches for a message, each once (pure). Invalid paths and unknown
/// kinds are left out and counted.
pub fn plan(changes: &HostChanges) -> (BTreeSet<Touch>, u32) {
    let mut touches = BTreeSet::new();
    let mut refused = 0;
    let split = |path: &str| match path.rsplit_once('/') {
        Some((dir, name)) => (dir.to_string(), name.to_string()),
        None => (String::new(), path.to_string()),
    };
    for change in &changes.changes {
        if !valid_path(&change.path) || change.path.is_empty() {
            refused += 1;
            continue;
        }
        let (dir, name) = split(&change.path);
        match change.kind {
            ChangeKind::Modified | ChangeKind::Created => {
                touches.insert(Touch { dir, name });
            }
            ChangeKind::Removed => {
                touches.insert(Touch {
                    dir,
                    name: String::new(),
                });
            }
            ChangeKind::Unknown => refused += 1,
        }
    }
    if changes.overflowed {
        touches.insert(Touch {
            dir: String::new(),
            name: String::new(),
        });
    }
    (touches, refused)
}

/// Where share `tag` is mounted writable in `mounts`, if it is.
pub fn writable_mount_point(tag: &str, mounts: &[MountEntry]) -> Option<String> {
    mounts
        .iter()
        .find(|m| m.fstype == FSTYPE && m.source == tag && !m.read_only)
        .map(|m| m.mount_point.clone())
}

/// Raise the changes of one message in the guest.
pub fn raise(changes: &HostChanges) -> Result<Raised, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| crate::shares::parse_mountinfo(&text))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let Some(mount_point) = writable_mount_point(&changes.tag, &mounts) else {
        return Err(format!(
            "the share {} is not mounted writable here: no change can be raised on it",
            changes.tag
        ));
    };
    let root: OwnedFd = std::fs::File::open(&mount_point)
        .map_err(|e| format!("cannot open {mount_point}: {e}"))?
        .into();
    let (touches, refused) = plan(changes);
    let mut raised = Raised {
        touched: 0,
        failed: refused,
    };
    for touch in touches {
        let dir = if touch.dir.is_empty() {
            "."
        } else {
            &touch.dir
        };
        let done =
            sys::open_dir_beneath(&root, dir).and_then(|dir| sys::touch_mtime(&dir, &touch.name));
        match done {
            Ok(()) => raised.touched += 1,
            Err(_) => raised.failed += 1,
        }
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkeep_protocol::host_changes::HostChange;

    fn change(path: &str, kind: ChangeKind) -> HostChange {
        HostChange {
            path: path.into(),
            kind,
        }
    }

    fn touch(dir: &str, name: &str) -> Touch {
        Touch {
            dir: dir.into(),
            name: name.into(),
        }
    }

    #[test]
    fn each_kind_touches_the_path_or_its_directory_once() {
        let changes = HostChanges {
            tag: "fs0".into(),
            changes: vec![
                change("src/main.rs", ChangeKind::Modified),
                change("new.txt", ChangeKind::Created),
                change("src/old.rs", ChangeKind::Removed),
                change("src/gone.rs", ChangeKind::Removed),
                change("../etc/passwd", ChangeKind::Modified),
                change("/etc/passwd", ChangeKind::Modified),
                change("", ChangeKind::Modified),
                change("a", ChangeKind::Unknown),
            ],
            overflowed: false,
        };
        let (touches, refused) = plan(&changes);
        assert_eq!(
            touches.into_iter().collect::<Vec<_>>(),
            [
                touch("", "new.txt"),
                touch("src", ""),
                touch("src", "main.rs")
            ]
        );
        assert_eq!(refused, 4);
        let overflowed = HostChanges {
            changes: vec![],
            overflowed: true,
            ..changes
        };
        assert_eq!(
            plan(&overflowed).0.into_iter().collect::<Vec<_>>(),
            [touch("", "")]
        );
    }

    #[test]
    fn only_a_writable_mount_of_the_tag_is_used() {
        let mounts = crate::shares::parse_mountinfo(
            "31 22 0:40 / /mnt/ro ro,relatime - virtiofs fs0 rw\n\
             32 22 0:41 / /mnt/rw rw,relatime - virtiofs fs1 rw\n\
             33 22 0:42 / /srv rw,relatime - ext4 fs2 rw\n",
        );
        assert_eq!(writable_mount_point("fs0", &mounts), None);
        assert_eq!(
            writable_mount_point("fs1", &mounts).as_deref(),
            Some("/mnt/rw")
        );
        assert_eq!(writable_mount_point("fs2", &mounts), None);
    }

    #[test]
    fn a_touch_stays_beneath_the_root_and_changes_only_the_time() {
        let root = tempfile_dir();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        let outside = root.parent().unwrap().join(format!(
            "{}-outside",
            root.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let fd: OwnedFd = std::fs::File::open(&root).unwrap().into();
        let before = std::fs::metadata(root.join("sub/f")).unwrap();
        let dir = sys::open_dir_beneath(&fd, "sub").unwrap();
        sys::touch_mtime(&dir, "f").unwrap();
        let after = std::fs::metadata(root.join("sub/f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (before.mtime(), before.mtime_nsec(), before.len()),
            (after.mtime(), after.mtime_nsec(), after.len())
        );
        sys::touch_mtime(&sys::open_dir_beneath(&fd, ".").unwrap(), "").unwrap();
        for escape in ["link", "..", "sub/../..", "/tmp"] {
            assert!(sys::open_dir_beneath(&fd, escape).is_err(), "{escape}");
        }
        std::fs::remove_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vmkeep-guest-touch-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
