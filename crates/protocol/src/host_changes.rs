//! Lima's `mountInotify`: the host agent watches a writable share on the
//! host and tells the guest agent what changed ([`crate::Op::HostChanges`]);
//! the guest agent then touches the same path through its own mount, so
//! that the guest's inotify watchers (vite, webpack, cargo watch) see the
//! change (a change made on the host raises nothing in the guest by
//! itself: virtio-fs has no notifications).
//!
//! Paths are relative to the share's root, `/`-separated, checked by both
//! sides ([`valid_path`]); the guest also resolves each one beneath its
//! mount point, never through a symlink or into another mount.

use serde::{Deserialize, Serialize};

/// Most changes in one message; more are sent as `overflowed`.
pub const MAX_HOST_CHANGES: usize = 256;
/// Longest path of one change, in bytes (Linux's `PATH_MAX`).
pub const MAX_CHANGE_PATH_BYTES: usize = 4096;

/// What changed under one share, on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChanges {
    /// The share's virtio-fs tag.
    pub tag: String,
    /// At most [`MAX_HOST_CHANGES`].
    pub changes: Vec<HostChange>,
    /// More changed than were listed, or the host's watch lost events: the
    /// guest touches the share's root as well.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overflowed: bool,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostChange {
    /// Relative to the share's root (`src/main.rs`); empty for the root.
    pub path: String,
    pub kind: ChangeKind,
}

/// What happened to the path on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// Written and closed, or its attributes changed (`touch`, `chmod`).
    Modified,
    /// Made, or moved in.
    Created,
    /// Removed, or moved out.
    Removed,
    /// A kind this version does not know (from a newer host agent).
    #[serde(other)]
    Unknown,
}

/// What the guest could raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Raised {
    /// Paths touched.
    pub touched: u32,
    /// Paths that could not be (gone meanwhile, not the owner's, refused).
    pub failed: u32,
}

/// Whether `path` may name something below a share's root: relative, at
/// most [`MAX_CHANGE_PATH_BYTES`], no empty, `.` or `..` component, no NUL.
/// The empty path is the root itself.
pub fn valid_path(path: &str) -> bool {
    path.is_empty()
        || (path.len() <= MAX_CHANGE_PATH_BYTES
            && !path.contains('\0')
            && path
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_below_the_root_are_valid() {
        for good in ["", "a", "src/main.rs", "a b/c-d.txt", "..a/b..", ".hidden"] {
            assert!(valid_path(good), "{good:?}");
        }
        let long = "a/".repeat(MAX_CHANGE_PATH_BYTES);
        for bad in [
            "/etc/passwd",
            "..",
            "a/../../b",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "a\0b",
            &long,
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn changes_round_trip_and_unknown_kinds_are_kept_apart() {
        let changes = HostChanges {
            tag: "fs0".into(),
            changes: vec![HostChange {
                path: "a/b".into(),
                kind: ChangeKind::Created,
            }],
            overflowed: false,
        };
        let text = serde_json::to_string(&changes).unwrap();
        assert_eq!(serde_json::from_str::<HostChanges>(&text).unwrap(), changes);
        let newer: HostChange = serde_json::from_str(r#"{"path":"x","kind":"renamed"}"#).unwrap();
        assert_eq!(newer.kind, ChangeKind::Unknown);
    }
}
