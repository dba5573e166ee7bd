//! Lima's `mountInotify`, decided: which host changes of a writable share
//! the guest is told of, coalesced and bounded. Pure; the host agent
//! watches and sends (`hostagent::mount_inotify`), the guest agent touches
//! (`crates/guest/src/host_changes.rs`, where docs/mounts.md's table of
//! guest events comes from).
//!
//! The host watches each directory of a share (inotify is per directory)
//! for files written and closed (`IN_CLOSE_WRITE`), attributes changed
//! (`IN_ATTRIB`: `touch`, `chmod`), entries made, removed and moved. Not
//! for `IN_MODIFY`: every `write(2)` raises one (a flood for a large copy),
//! and the guest's own touch, a change of the modification time alone,
//! raises exactly that on the host: watching it would echo every touch back.
//!
//! Bounds: at most [`MAX_WATCHES`] directories per VM; at most
//! `MAX_HOST_CHANGES` paths per share wait to be sent (more become one
//! "overflowed", and the guest touches the share's root); the pending
//! changes are sent at most every [`SEND_EVERY`], however fast the host
//! changes; nothing is journaled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vmkeep_protocol::host_changes::{
    ChangeKind, HostChange, HostChanges, MAX_HOST_CHANGES, valid_path,
};

/// Most directories watched for one VM.
pub const MAX_WATCHES: usize = 8192;
/// The pending changes are sent at most this often (they coalesce meanwhile).
pub const SEND_EVERY: Duration = Duration::from_millis(100);

/// One thing the host's inotify saw in a watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A file written and closed, or an entry's attributes changed.
    Modified,
    /// An entry made, or moved in from elsewhere.
    Created,
    /// An entry removed, or moved out.
    Removed,
}

/// The directories watched: inotify's watch descriptors, each with the
/// share (its tag) and the directory relative to the share's root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watches {
    by_wd: BTreeMap<i32, (String, String)>,
}

/// The watch could not be added: [`MAX_WATCHES`] are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached;

impl Watches {
    pub fn len(&self) -> usize {
        self.by_wd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_wd.is_empty()
    }

    /// Whether another directory may be watched.
    pub fn has_room(&self) -> bool {
        self.by_wd.len() < MAX_WATCHES
    }

    /// Remember watch `wd` (inotify gives the same one for a directory
    /// watched again: its path is updated).
    pub fn insert(&mut self, wd: i32, tag: &str, dir: &str) -> Result<(), CapReached> {
        if !self.by_wd.contains_key(&wd) && !self.has_room() {
            return Err(CapReached);
        }
        self.by_wd.insert(wd, (tag.to_string(), dir.to_string()));
        Ok(())
    }

    /// The share and directory of watch `wd`.
    pub fn get(&self, wd: i32) -> Option<(&str, &str)> {
        self.by_wd
            .get(&wd)
            .map(|(tag, dir)| (tag.as_str(), dir.as_str()))
    }

    /// Forget watch `wd` (its directory went).
    pub fn forget(&mut self, wd: i32) {
        self.by_wd.remove(&wd);
    }

    /// A directory of share `tag` moved from `from` to `to` within it: its
    /// watches, and those below it, follow.
    pub fn moved(&mut self, tag: &str, from: &str, to: &str) {
        for (t, dir) in self.by_wd.values_mut() {
            if t == tag
                && let Some(rest) = below(dir, from)
            {
                *dir = join(to, rest);
            }
        }
    }

    /// The watches of directory `dir` of share `tag` and below it (moved
    /// out of the share: to be removed).
    pub fn under(&self, tag: &str, dir: &str) -> Vec<i32> {
        self.by_wd
            .iter()
            .filter(|(_, (t, d))| t == tag && below(d, dir).is_some())
            .map(|(wd, _)| *wd)
            .collect()
    }
}

/// `path` relative to `dir` when it is `dir` or below it (`Some("")` for
/// `dir` itself).
fn below<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    if path == dir {
        return Some("");
    }
    if dir.is_empty() {
        return Some(path);
    }
    path.strip_prefix(dir)?.strip_prefix('/')
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => dir.to_string(),
        (false, false) => format!("{dir}/{name}"),
    }
}

/// The changes waiting to be sent, per share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    shares: BTreeMap<String, Share>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Share {
    changes: BTreeMap<String, ChangeKind>,
    overflowed: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Record what was seen at `path` of share `tag`. A path that was
    /// created and then written stays created; the last removal or creation
    /// wins. A path the guest could not be sent (too long, not plain) is
    /// left out, and so is anything beyond the bound: the share then counts
    /// as overflowed.
    pub fn record(&mut self, tag: &str, path: &str, seen: Seen) {
        let share = self.shares.entry(tag.to_string()).or_default();
        if path.is_empty() || !valid_path(path) {
            share.overflowed |= !path.is_empty();
            return;
        }
        let kind = match seen {
            Seen::Modified => ChangeKind::Modified,
            Seen::Created => ChangeKind::Created,
            Seen::Removed => ChangeKind::Removed,
        };
        let full = share.changes.len() >= MAX_HOST_CHANGES;
        match share.changes.get_mut(path) {
            Some(ChangeKind::Created) if kind == ChangeKind::Modified => {}
            Some(existing) => *existing = kind,
            None if full => share.overflowed = true,
            None => {
                share.changes.insert(path.to_string(), kind);
            }
        }
    }

    /// Every share lost events (the host's inotify queue overflowed).
    pub fn overflow(&mut self, tags: &BTreeSet<String>) {
        for tag in tags {
            self.shares.entry(tag.clone()).or_default().overflowed = true;
        }
    }

    /// The messages for the guest, one per share, and nothing left pending.
    pub fn take(&mut self) -> Vec<HostChanges> {
        std::mem::take(&mut self.shares)
            .into_iter()
            .filter(|(_, share)| share.overflowed || !share.changes.is_empty())
            .map(|(tag, share)| HostChanges {
                tag,
                changes: share
                    .changes
                    .into_iter()
                    .map(|(path, kind)| HostChange { path, kind })
                    .collect(),
                overflowed: share.overflowed,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_per_path_and_are_bounded_per_share() {
        let mut pending = Pending::default();
        pending.record("fs0", "a", Seen::Created);
        pending.record("fs0", "a", Seen::Modified);
        pending.record("fs0", "b", Seen::Modified);
        pending.record("fs0", "b", Seen::Removed);
        pending.record("fs0", "c", Seen::Removed);
        pending.record("fs0", "c", Seen::Created);
        pending.record("fs1", "../x", Seen::Modified);
        let sent = pending.take();
        assert!(pending.is_empty());
        let kinds = |m: &HostChanges| -> Vec<(String, ChangeKind)> {
            m.changes.iter().map(|c| (c.path.clone(), c.kind)).collect()
        };
        assert_eq!(
            kinds(&sent[0]),
            [
                ("a".into(), ChangeKind::Created),
                ("b".into(), ChangeKind::Removed),
                ("c".into(), ChangeKind::Created),
            ]
        );
        assert!(!sent[0].overflowed);
        assert!(sent[1].changes.is_empty() && sent[1].overflowed, "{sent:?}");

        for i in 0..MAX_HOST_CHANGES + 10 {
            pending.record("fs0", &format!("f{i}"), Seen::Modified);
        }
        let sent = pending.take();
        assert_eq!(sent[0].changes.len(), MAX_HOST_CHANGES);
        assert!(sent[0].overflowed);
        pending.overflow(&BTreeSet::from(["fs2".to_string()]));
        assert_eq!(pending.take()[0].tag, "fs2");
    }

    #[test]
    fn watches_follow_moves_and_stop_at_the_cap() {
        let mut watches = Watches::default();
        watches.insert(1, "fs0", "").unwrap();
        watches.insert(2, "fs0", "src").unwrap();
        watches.insert(3, "fs0", "src/deep").unwrap();
        watches.insert(4, "fs0", "srcx").unwrap();
        watches.insert(5, "fs1", "src").unwrap();
        watches.moved("fs0", "src", "lib/src");
        assert_eq!(watches.get(2), Some(("fs0", "lib/src")));
        assert_eq!(watches.get(3), Some(("fs0", "lib/src/deep")));
        assert_eq!(
            watches.get(4),
            Some(("fs0", "srcx")),
            "a sibling with the same start"
        );
        assert_eq!(watches.get(5), Some(("fs1", "src")), "another share");
        assert_eq!(watches.under("fs0", "lib"), [2, 3]);
        watches.forget(3);
        assert_eq!(watches.get(3), None);

        let mut full = Watches::default();
        for wd in 0..MAX_WATCHES as i32 {
            full.insert(wd, "fs0", &wd.to_string()).unwrap();
        }
        assert_eq!(full.insert(-1, "fs0", "more"), Err(CapReached));
        assert_eq!(
            full.insert(7, "fs0", "again"),
            Ok(()),
            "a known watch is updated"
        );
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", ""), "a");
        assert_eq!(join("a", "b"), "a/b");
    }
}
