//! Suspend to disk and resume: a running VM's whole state saved into its
//! instance directory, QEMU ended, and later a new QEMU carrying on from it
//! (same boot, same processes, same RAM).
//!
//! The guest's RAM is a memfd shared with QEMU (see
//! [`super::args::MEMORY_BACKEND`]), so QEMU's migration stream, with the
//! `x-ignore-shared` capability, is only the device state; the RAM is
//! copied by its data extents into a sparse file, `guest-ram`. A resume
//! fills a new memfd from that file while QEMU starts, and loads the device
//! state into a QEMU started with `-incoming defer`.
//!
//! A saved state is three files: `guest-ram`, `saved-state.bin` (the device
//! state) and `saved-state.json` (the [`record::StateRecord`]). The record
//! is written last, atomically, once the other two and the disk image are
//! durable, so a state exists completely or not at all:
//!
//! | interrupted (agent or QEMU killed, disk full, power lost) | left behind |
//! |---|---|
//! | before the record is in place | no state: a temporary device-state file (a runtime file, swept at the next start) and a guest that runs on if QEMU lives, else boots afresh from a flushed disk |
//! | after | the complete state (QEMU, if still there, is paused and is let run again by the next agent, which discards the state first) |
//!
//! While a state exists nothing may write the disk or the RAM file: the host
//! agent resumes instead of booting, and the resume checks both files'
//! identity against the record. On resume the record goes *before* the
//! guest runs again (from then on its RAM and disk change), so a crash then
//! leaves no state rather than a stale one.

pub mod record;
mod resume;
mod save;
mod steps;

use std::io;
use std::path::PathBuf;

use self::record::RecordParseError;
pub use self::record::{Mismatch, StateRecord};
pub use self::resume::{ResumeError, Resumed, check_resumable, load_into, remove_saved_ram};
pub use self::save::{SaveError, SaveFailure, SaveOptions, Saved, StateAfterFailure, save};
pub use self::steps::Steps;
use crate::instance::InstanceDir;
use crate::os;

/// The hint every refused resume ends with.
pub const CHOICES: &str = "either set back what changed (the config, or the QEMU it was saved with) \
     and start again, or discard the saved state and boot afresh with `vmkeep start --discard-state` \
     (the guest loses what was in its memory; its disk keeps what was written to it)";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the saved state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The record is there but cannot be used; the state is kept.
    #[error("the saved state {} cannot be resumed: {problem}; {CHOICES}", path.display())]
    Unusable {
        path: PathBuf,
        problem: RecordParseError,
    },
    #[error("cannot remove the saved state {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether a saved state exists (its record is there).
pub fn exists(dir: &InstanceDir) -> bool {
    dir.has_saved_state()
}

/// The saved state's record, if there is one.
pub fn load(dir: &InstanceDir) -> Result<Option<StateRecord>, StateError> {
    let path = dir.saved_state_record();
    let Some(bytes) = os::fs::read_if_exists(&path).map_err(|source| StateError::Read {
        path: path.clone(),
        source,
    })?
    else {
        return Ok(None);
    };
    record::parse(&bytes)
        .map(Some)
        .map_err(|problem| StateError::Unusable { path, problem })
}

/// Delete the saved state: the record first (from then on there is none),
/// then the device state. The RAM file stays when `keep_ram` (a running QEMU
/// maps it), else it goes too. Returns whether there was a state.
pub fn discard(dir: &InstanceDir, keep_ram: bool) -> Result<bool, StateError> {
    let remove = |path: PathBuf| {
        os::fs::remove_file_if_exists(&path).map_err(|source| StateError::Remove { path, source })
    };
    let had = remove(dir.saved_state_record())?;
    os::fs::sync_dir(dir.dir()).map_err(|source| StateError::Remove {
        path: dir.saved_state_record(),
        source,
    })?;
    remove(dir.saved_device_state())?;
    if !keep_ram {
        remove(dir.guest_ram())?;
    }
    Ok(had)
}

/// Remove what a save or a run left that no state record claims: a device
/// state whose record never came, and (unless `ram_in_use`) the RAM file of
/// a VM that is gone. Returns the names removed.
pub fn remove_unclaimed(dir: &InstanceDir, ram_in_use: bool) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if exists(dir) {
        return Ok(removed);
    }
    let mut candidates = vec![dir.saved_device_state()];
    if !ram_in_use {
        candidates.push(dir.guest_ram());
    }
    for path in candidates {
        if os::fs::remove_file_if_exists(&path)? {
            removed.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    Ok(removed)
}

/// What [`settle_adopted`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The guest was running; `discarded_state` if a (stale) state record
    /// was there and went.
    Running { discarded_state: bool },
    /// The guest was paused mid-save or just after a resume's load: it runs
    /// again, and the saved state (if any) is gone.
    Continued { discarded_state: bool },
    /// The QEMU had not loaded the state yet (mid-resume): it was ended,
    /// and the state is kept for the next resume.
    Ended { run_state: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("QMP {step} failed on the adopted QEMU")]
    Qmp {
        step: &'static str,
        #[source]
        source: super::qmp::QmpError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// A QEMU adopted from a dead host agent may have been left mid-save or
/// mid-resume. Put it right: a guest that ran or is paused after loading
/// carries on (a saved state, which no longer matches a guest that runs, is
/// discarded first); a QEMU still waiting for its state is ended, keeping
/// the state for the next resume.
pub async fn settle_adopted(vm: &super::QemuVm, dir: &InstanceDir) -> Result<Settled, SettleError> {
    use super::qmp::RunState;
    const T: std::time::Duration = std::time::Duration::from_secs(5);
    let qmp_error = |step| move |source| SettleError::Qmp { step, source };
    let state = vm
        .qmp
        .query_status(T)
        .await
        .map_err(qmp_error("query-status"))?
        .status;
    // `guest-ram` is this QEMU's RAM only for a QEMU of an older vmkeep;
    // else it is a saved copy, which goes with its state.
    let keep_ram = crate::os::process::command_line_of_live(&vm.process)
        .map(|args| record::ram_of_args(&args, &dir.guest_ram()) == Some(record::RamOfQemu::File))
        .unwrap_or(true);
    // A device state (or RAM copy) the dead agent was writing: never committed.
    remove_unfinished(dir).map_err(|source| StateError::Remove {
        path: dir.saved_device_state(),
        source,
    })?;
    match state {
        RunState::InMigrate | RunState::Prelaunch => {
            let _ = vm.qmp.quit(T).await;
            if tokio::time::timeout(T, vm.process.exited()).await.is_err() {
                let _ = vm.process.kill();
                let _ = tokio::time::timeout(T, vm.process.exited()).await;
            }
            Ok(Settled::Ended {
                run_state: state.as_qapi().to_owned(),
            })
        }
        RunState::Paused | RunState::PostMigrate | RunState::FinishMigrate => {
            let _ = vm.qmp.migrate_cancel(T).await;
            let until = tokio::time::Instant::now() + T;
            while tokio::time::Instant::now() < until {
                match vm.qmp.query_migrate(T).await {
                    Ok(info)
                        if !info.status.is_over()
                            && info.status != super::qmp::MigrationStatus::None =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await
                    }
                    _ => break,
                }
            }
            let discarded_state = discard(dir, keep_ram)?;
            vm.qmp.cont(T).await.map_err(qmp_error("cont"))?;
            Ok(Settled::Continued { discarded_state })
        }
        _ => Ok(Settled::Running {
            discarded_state: discard(dir, keep_ram)?,
        }),
    }
}

/// Remove device-state files a save was writing when its agent died (the
/// temporary names of `os::fs::temp_sibling`).
fn remove_unfinished(dir: &InstanceDir) -> io::Result<()> {
    let prefixes = [dir.saved_device_state(), dir.guest_ram()].map(|path| {
        format!(
            ".{}.tmp-",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    });
    for name in os::fs::entry_names(dir.dir())? {
        if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            os::fs::remove_file_if_exists(&dir.dir().join(name))?;
        }
    }
    Ok(())
}

/// Hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, InstanceDir) {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "vm".parse().unwrap()).unwrap();
        std::fs::create_dir(dir.dir()).unwrap();
        (root, dir)
    }

    #[test]
    fn a_state_exists_exactly_when_its_record_does() {
        let (_root, dir) = dir();
        std::fs::write(dir.saved_device_state(), b"stream").unwrap();
        std::fs::write(dir.guest_ram(), b"ram").unwrap();
        assert!(!exists(&dir));
        assert_eq!(load(&dir).unwrap(), None);
        // Without a record both are garbage; a RAM file in use stays.
        assert_eq!(remove_unclaimed(&dir, true).unwrap(), ["saved-state.bin"]);
        assert!(dir.guest_ram().exists());
        assert_eq!(remove_unclaimed(&dir, false).unwrap(), ["guest-ram"]);
    }

    #[test]
    fn an_unreadable_record_is_reported_and_kept() {
        let (_root, dir) = dir();
        std::fs::write(dir.saved_state_record(), b"{\"format\": 1, \"torn").unwrap();
        std::fs::write(dir.saved_device_state(), b"stream").unwrap();
        let error = load(&dir).unwrap_err();
        assert!(matches!(error, StateError::Unusable { .. }), "{error}");
        assert!(
            error.to_string().contains("discard the saved state"),
            "{error}"
        );
        assert!(remove_unclaimed(&dir, false).unwrap().is_empty());
        assert!(dir.saved_device_state().exists());
    }

    #[test]
    fn discarding_removes_the_record_first_and_the_ram_unless_in_use() {
        let (_root, dir) = dir();
        for path in [
            dir.saved_state_record(),
            dir.saved_device_state(),
            dir.guest_ram(),
        ] {
            std::fs::write(path, b"x").unwrap();
        }
        assert!(discard(&dir, true).unwrap());
        assert!(!exists(&dir) && !dir.saved_device_state().exists());
        assert!(dir.guest_ram().exists());
        assert!(!discard(&dir, false).unwrap());
        assert!(!dir.guest_ram().exists());
    }
}
