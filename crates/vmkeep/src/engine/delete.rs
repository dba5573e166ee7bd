//! `delete`: remove an instance (config, disk, journal, everything in its
//! directory). A running instance is refused unless forced; autostart is
//! unregistered first so no service manager starts it meanwhile. An
//! instance directory that is a symlink (to another disk, say) is deleted
//! where it really is, and the link with it.

use std::path::{Path, PathBuf};

use super::stop::{ForceCause, force_stop};
use super::{EngineError, Notice, status_of};
use crate::autostart::registration;
use crate::instance::InstanceName;
use crate::instance::home::{Home, LookupError};
use crate::os;
use crate::os::lock::HeldLock;

/// What was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The instance's directory is gone.
    Removed {
        /// The directory the instance really was in, when its entry in the
        /// home was a symlink to it.
        through_link: Option<PathBuf>,
    },
    /// `--force` of an instance that does not exist: nothing to do.
    WasMissing,
    /// `--force` of a directory vmkeep did not make: it is gone.
    Foreign { dir: PathBuf, what: String },
}

pub fn delete(
    home: &Home,
    name: &InstanceName,
    force: bool,
    notice: &dyn Notice,
) -> Result<Deleted, EngineError> {
    let dir = home.layout_any(name)?;
    if !dir.dir().is_dir() {
        return match force {
            true => Ok(Deleted::WasMissing),
            false => Err(LookupError::NotFound { name: name.clone() }.into()),
        };
    }
    if let Some(foreign) = crate::instance::home::foreign(&dir)? {
        if !force {
            return Err(LookupError::Foreign {
                name: name.clone(),
                dir: dir.dir().to_path_buf(),
                what: foreign.describe(),
            }
            .into());
        }
        // Never while a process holds one of its pid files: its VM runs.
        if let Some((file, pid)) = foreign.live.first() {
            return Err(EngineError::ForeignInUse {
                dir: dir.dir().to_path_buf(),
                file: file.clone(),
                pid: *pid,
            });
        }
        remove_directory(dir.dir())?;
        return Ok(Deleted::Foreign {
            dir: dir.dir().to_path_buf(),
            what: foreign.describe(),
        });
    }
    let status = status_of(&dir)?;
    let runs = status.has_live_processes();
    if runs && !force {
        return Err(EngineError::WrongState {
            name: name.clone(),
            message: format!(
                "{name} is {}; stop it first (`vmkeep stop {name}`) or use `vmkeep delete --force {name}`",
                status.word()
            ),
        });
    }
    let unregistered = registration::unregister_for_delete(&dir, notice)?;
    if runs {
        force_stop(&dir, ForceCause::Delete, notice)?;
    }
    unregistered.settle();
    // Hold the agent lock so no start can begin while the files go.
    let lock = HeldLock::try_acquire(&dir.agent_lock())
        .map_err(EngineError::io("lock", dir.agent_lock()))?
        .ok_or_else(|| EngineError::WrongState {
            name: name.clone(),
            message: format!("{name} was started meanwhile; stop it and delete again"),
        })?;
    let link = dir.dir();
    let target = real_directory(link)?;
    // Renamed first (one atomic step: the instance is gone for everyone),
    // then removed at leisure.
    let doomed = os::fs::temp_sibling(&target);
    std::fs::rename(&target, &doomed).map_err(EngineError::io("remove", &target))?;
    drop(lock);
    let through_link = (target != link).then(|| target.clone());
    if through_link.is_some() {
        os::fs::remove_file_if_exists(link).map_err(EngineError::io("remove the link", link))?;
    }
    os::fs::remove_dir_all_if_exists(&doomed).map_err(EngineError::io("remove", &doomed))?;
    Ok(Deleted::Removed { through_link })
}

/// Remove a directory: renamed first (atomic: gone for everyone at once),
/// then removed at leisure.
fn remove_directory(path: &Path) -> Result<(), EngineError> {
    let doomed = os::fs::temp_sibling(path);
    std::fs::rename(path, &doomed).map_err(EngineError::io("remove", path))?;
    os::fs::remove_dir_all_if_exists(&doomed).map_err(EngineError::io("remove", &doomed))
}

/// The directory an instance entry really is: itself, or the directory a
/// symlink points to (resolved, so the files that go are the ones the
/// instance uses).
fn real_directory(entry: &Path) -> Result<PathBuf, EngineError> {
    let meta = std::fs::symlink_metadata(entry).map_err(EngineError::io("inspect", entry))?;
    if !meta.file_type().is_symlink() {
        return Ok(entry.to_path_buf());
    }
    std::fs::canonicalize(entry).map_err(EngineError::io("resolve the link", entry))
}
