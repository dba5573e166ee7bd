//! Directories built next to their place in the cache and renamed into it
//! when complete, and the sweep of those whose builder is gone.

use std::fs;
use std::path::{Path, PathBuf};

use super::{TinyImageError, cache_err};

/// A directory being built; removed on drop unless renamed into place.
pub(super) struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    pub(super) fn create(path: PathBuf) -> Result<TempDir, TinyImageError> {
        fs::create_dir_all(&path).map_err(cache_err("create", &path))?;
        Ok(TempDir { path: Some(path) })
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
    }
}

/// The pid in a temporary name made by `temp_sibling` (`.NAME.tmp-PID-N`).
fn temp_owner_pid(name: &str) -> Option<i32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, tail) = name.rsplit_once(".tmp-")?;
    let (pid, counter) = tail.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Remove temporaries left by builders that crashed (their pid is gone).
pub(super) fn sweep_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner_pid(&name) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
            match rustix::process::test_kill_process(pid) {
                Ok(()) => true,
                Err(e) => e != rustix::io::Errno::SRCH,
            }
        });
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::fs::temp_sibling;

    #[test]
    fn temporaries_name_their_owner() {
        let tmp = temp_sibling(Path::new("/cache/tiny/abc"));
        assert_eq!(
            temp_owner_pid(&tmp.file_name().unwrap().to_string_lossy()),
            Some(std::process::id() as i32)
        );
        assert_eq!(temp_owner_pid("abc"), None);
        assert_eq!(
            temp_owner_pid("linux-image-6.1.0-56-cloud-amd64_6.1.192-2"),
            None
        );
    }
}
