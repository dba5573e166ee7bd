//! Directories built next to their place in the cache and renamed into it
//! when complete, and the sweep of those whose builder is gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{TinyImageError, cache_err};
use crate::os::fs::{age, entry_names};
use crate::os::lock::{HeldLock, lock_temp_sibling, remove_abandoned_temporaries};

/// A directory without its builder's lock was left by an older vmkeep,
/// whose builder may still run: it is removed only once nothing in it has
/// changed for this long (an unpack takes seconds, a kernel download
/// minutes on a slow link, and a download grows a file in it).
const UNLOCKED_ABANDONED_AFTER: Duration = Duration::from_secs(10 * 60);

/// A directory being built, with its builder's lock; removed on drop
/// unless renamed into place, and its lock removed after it.
pub(super) struct TempDir {
    path: Option<PathBuf>,
    lock: Option<HeldLock>,
}

impl TempDir {
    /// Create a temporary sibling of `target`, its lock taken first
    /// (see [`sweep_abandoned_temporaries`]).
    pub(super) fn create(target: &Path) -> Result<TempDir, TinyImageError> {
        let (path, lock) =
            lock_temp_sibling(target).map_err(cache_err("lock a temporary for", target))?;
        let temp = TempDir {
            path: Some(path),
            lock: Some(lock),
        };
        fs::create_dir_all(temp.path()).map_err(cache_err("create", temp.path()))?;
        Ok(temp)
    }

    pub(super) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Rename into `target`. If another builder got there first (the
    /// target exists and is not empty), theirs is kept and ours dropped.
    pub(super) fn rename_into_place(mut self, target: &Path) -> Result<(), TinyImageError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        match fs::rename(&path, target) {
            Ok(()) => Ok(()),
            Err(e)
                if target.is_dir()
                    && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
            {
                let _ = fs::remove_dir_all(&path);
                Ok(())
            }
            Err(source) => {
                let _ = fs::remove_dir_all(&path);
                Err(TinyImageError::Cache {
                    action: "move into place",
                    path: target.to_path_buf(),
                    source,
                })
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_dir_all(path);
        }
        // Last, once the directory is gone: while it exists, its lock is
        // what tells a sweep that its builder lives.
        if let Some(lock) = self.lock.take() {
            let _ = lock.remove();
        }
    }
}

/// Remove the temporaries in `dir` whose builder is gone: those whose lock
/// this sweep can take itself (then the builder provably died), and those
/// without a lock (left by an older vmkeep) in which nothing has changed
/// for [`UNLOCKED_ABANDONED_AFTER`]. A live builder's, in this process or
/// another, is kept.
pub(super) fn sweep_abandoned_temporaries(dir: &Path) {
    remove_abandoned_temporaries(dir, &|temp| unchanged_for(temp, UNLOCKED_ABANDONED_AFTER));
}

/// Whether neither directory `dir` nor any of its entries was modified in
/// the last `period`.
fn unchanged_for(dir: &Path, period: Duration) -> bool {
    let entries = entry_names(dir).unwrap_or_default();
    std::iter::once(dir.to_path_buf())
        .chain(entries.iter().map(|name| dir.join(name)))
        .all(|path| age(&path).is_some_and(|age| age >= period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::lock::temp_lock;
    use crate::os::lock::testing::{hold_in_another_process, locked_for_others};

    /// Set the modification time of `path` to `ago` in the past.
    fn age_by(path: &Path, ago: Duration) {
        fs::File::open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - ago)
            .unwrap();
    }

    fn left(dir: &Path) -> Vec<String> {
        let mut names = entry_names(dir).unwrap();
        names.sort();
        names
    }

    #[test]
    fn the_sweep_keeps_what_live_builders_hold_and_removes_what_dead_ones_left() {
        let cache = tempfile::tempdir().unwrap();
        let at = |name: &str| cache.path().join(name);
        // A live builder (this test holds its lock).
        fs::create_dir(at(".live.tmp-1-0")).unwrap();
        let _live = HeldLock::try_acquire(&at(".live.tmp-1-0.lock"))
            .unwrap()
            .unwrap();
        // A dead builder's: its lock is free.
        fs::create_dir(at(".dead.tmp-1-1")).unwrap();
        fs::write(at(".dead.tmp-1-1").join("vmlinuz"), "half").unwrap();
        fs::write(at(".dead.tmp-1-1.lock"), "").unwrap();
        // Killed between taking its lock and making its directory.
        fs::write(at(".early.tmp-1-2.lock"), "").unwrap();
        // Left by an older vmkeep (no lock): a young one may still be built.
        fs::create_dir(at(".young.tmp-1-3")).unwrap();
        fs::create_dir(at(".old.tmp-1-4")).unwrap();
        fs::write(at(".old.tmp-1-4").join("partial.deb"), "x").unwrap();
        age_by(
            &at(".old.tmp-1-4").join("partial.deb"),
            2 * UNLOCKED_ABANDONED_AFTER,
        );
        age_by(&at(".old.tmp-1-4"), 2 * UNLOCKED_ABANDONED_AFTER);
        // Old, but something in it just changed (a download growing).
        fs::create_dir(at(".growing.tmp-1-5")).unwrap();
        fs::write(at(".growing.tmp-1-5").join("partial.deb"), "x").unwrap();
        age_by(&at(".growing.tmp-1-5"), 2 * UNLOCKED_ABANDONED_AFTER);
        // Not temporaries: a finished image, an old one.
        fs::create_dir(at("0123abcd")).unwrap();
        fs::create_dir(at("linux-image-6.1.0-9-cloud-amd64_6.1.90-1")).unwrap();
        age_by(
            &at("linux-image-6.1.0-9-cloud-amd64_6.1.90-1"),
            2 * UNLOCKED_ABANDONED_AFTER,
        );

        sweep_abandoned_temporaries(cache.path());
        assert_eq!(
            left(cache.path()),
            [
                ".growing.tmp-1-5",
                ".live.tmp-1-0",
                ".live.tmp-1-0.lock",
                ".young.tmp-1-3",
                "0123abcd",
                "linux-image-6.1.0-9-cloud-amd64_6.1.90-1",
            ]
        );
        assert!(
            locked_for_others(&at(".live.tmp-1-0.lock")),
            "the sweep left the live builder's lock held"
        );
    }

    #[test]
    fn a_builder_in_another_process_keeps_its_temporary_until_it_dies() {
        let cache = tempfile::tempdir().unwrap();
        let temp = cache.path().join(".abc.tmp-1-0");
        let lock = temp_lock(&temp);
        fs::create_dir(&temp).unwrap();
        let mut builder = hold_in_another_process(&lock);

        sweep_abandoned_temporaries(cache.path());
        assert!(temp.is_dir() && lock.exists(), "a live builder's is kept");

        builder.kill().unwrap();
        builder.wait().unwrap();
        sweep_abandoned_temporaries(cache.path());
        assert_eq!(
            left(cache.path()),
            Vec::<String>::new(),
            "a dead one's is removed"
        );
    }

    #[test]
    fn a_temporary_has_its_lock_for_its_whole_life() {
        let cache = tempfile::tempdir().unwrap();
        let target = cache.path().join("image");

        let dropped = TempDir::create(&target).unwrap();
        let path = dropped.path().to_path_buf();
        assert!(path.is_dir());
        assert!(
            locked_for_others(&temp_lock(&path)),
            "locked while it exists"
        );
        sweep_abandoned_temporaries(cache.path());
        assert!(path.is_dir(), "the sweep leaves a live builder's alone");
        drop(dropped);
        assert_eq!(
            left(cache.path()),
            Vec::<String>::new(),
            "dropped: both gone"
        );

        let built = TempDir::create(&target).unwrap();
        fs::write(built.path().join("release"), "6.1\n").unwrap();
        built.rename_into_place(&target).unwrap();
        assert_eq!(
            left(cache.path()),
            ["image"],
            "renamed: no temporary, no lock"
        );
        assert!(target.join("release").is_file());
    }
}
