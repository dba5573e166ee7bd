//! Gathering [`Observations`] of an instance: locks, files and the journal's
//! tail. No socket round trip, so it is fast for any number of instances.

use std::io;

use super::config::Config;
use super::layout::{InstanceDir, share_lock_index};
use super::runtime::runtime_files;
use super::status::{ConfigState, Observations, UnitFailure};
use crate::instance::journal;
use crate::os;

/// What the model asks of the service manager that may run an instance:
/// whether it gave up on the instance's unit. The engine answers (the model
/// knows no service manager); asked only when nothing runs and the last run
/// failed.
pub type ServiceFailure<'a> = &'a dyn Fn(&InstanceDir) -> Option<UnitFailure>;

/// Look at an instance without talking to its host agent; also its config
/// when it is valid (parsed once).
pub fn observe_with_config(
    dir: &InstanceDir,
    service_failure: ServiceFailure<'_>,
) -> io::Result<(Observations, Option<Config>)> {
    let pid_of = |path: &std::path::Path| -> io::Result<Option<u32>> {
        Ok(os::lock::holder(path)?.map(|pid| pid.as_raw_nonzero().get() as u32))
    };
    let mut loaded = None;
    let config = match Config::load(&dir.config()) {
        Ok(config) => {
            loaded = Some(config);
            ConfigState::Valid
        }
        Err(crate::instance::config::ConfigError::Read { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            ConfigState::Missing
        }
        Err(e) => ConfigState::Invalid {
            message: e.to_string(),
        },
    };
    let disk_present = dir.disk().exists();
    let seen = consistent_snapshot(
        || pid_of(&dir.agent_lock()),
        |agent_pid| {
            let qemu_pid = pid_of(&dir.qemu_pid())?;
            let runtime_files = runtime_files(dir)?;
            Ok(Observations {
                config: config.clone(),
                disk_present,
                agent_pid,
                agent_frozen: agent_pid.is_some_and(os::process::is_stopped),
                qemu_pid,
                shares_lost: match qemu_pid {
                    Some(_) => shares_lost(dir, &runtime_files)?,
                    None => Vec::new(),
                },
                qemu_replaced: qemu_pid.and_then(os::process::program_replaced),
                runtime_files,
                last_event: journal::last(&dir.journal()).unwrap_or(None),
                service_failure: None,
                saved_state: dir.has_saved_state(),
                too_new: too_new(dir),
            })
        },
        // No agent and no trace of one: a stopped instance as of the first
        // read, whatever started since. Most instances in a long list.
        |seen| seen.agent_pid.is_none() && seen.qemu_pid.is_none() && seen.runtime_files.is_empty(),
    )?;
    let seen = Observations {
        service_failure: ask_service_manager(&seen)
            .then(|| service_failure(dir))
            .flatten(),
        ..seen
    };
    Ok((seen, loaded))
}

/// A file of the instance (its journal, its desired state) written in a
/// format newer than this build reads: why, with the fix.
fn too_new(dir: &InstanceDir) -> Option<String> {
    journal::too_new(&dir.journal())
        .or_else(|| super::desired::too_new(dir))
        .map(|e| e.to_string())
}

/// The shared directories whose virtiofsd no longer holds its lock, as
/// their lock files describe them (`LOCATION on MOUNT_POINT (...)`), among
/// the runtime files already read.
fn shares_lost(dir: &InstanceDir, runtime_files: &[String]) -> io::Result<Vec<String>> {
    let mut lost = Vec::new();
    let locks = runtime_files
        .iter()
        .filter_map(|name| Some((share_lock_index(name)?, dir.dir().join(name))));
    for (index, lock) in locks {
        let free = match os::lock::holder(&lock) {
            Ok(holder) => holder.is_none(),
            // Removed meanwhile: its agent cleaned up.
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if free {
            let said = std::fs::read_to_string(&lock).unwrap_or_default();
            let said = said.lines().next().unwrap_or("").trim();
            lost.push(if said.is_empty() {
                format!("mounts[{index}]")
            } else {
                said.to_string()
            });
        }
    }
    Ok(lost)
}

/// Whether the service manager is worth asking (a subprocess): nothing runs
/// and the last run failed, so a registered unit may have been given up on.
fn ask_service_manager(seen: &Observations) -> bool {
    use crate::instance::journal::{Event, StoppedReason};
    let failed = matches!(
        seen.last_event.as_ref().map(|r| &r.event),
        Some(
            Event::StartFailed { .. }
                | Event::Stopped {
                    reason: StoppedReason::Crashed | StoppedReason::StartFailed,
                    ..
                }
        )
    );
    failed && seen.agent_pid.is_none() && seen.qemu_pid.is_none()
}

/// How many times a snapshot is retaken when a host agent came or went
/// while it was being taken.
const SNAPSHOT_ATTEMPTS: usize = 20;

/// Read the agent's lock holder, then the rest, then the holder again, and
/// retake the snapshot when the holder changed in between. Without this a
/// host agent starting mid-read looks like "no agent, but a QEMU pid and
/// runtime files": an orphaned QEMU or stale files, i.e. a Broken instance
/// that never was. (An agent takes its lock before making any runtime file
/// and removes them all before letting the lock go.) A snapshot that
/// `needs_no_recheck` is returned without the second read.
fn consistent_snapshot<T>(
    mut agent_pid: impl FnMut() -> io::Result<Option<u32>>,
    mut rest: impl FnMut(Option<u32>) -> io::Result<T>,
    needs_no_recheck: impl Fn(&T) -> bool,
) -> io::Result<T> {
    let mut before = agent_pid()?;
    for _ in 1..SNAPSHOT_ATTEMPTS {
        let seen = rest(before)?;
        if needs_no_recheck(&seen) {
            return Ok(seen);
        }
        let after = agent_pid()?;
        if after == before {
            return Ok(seen);
        }
        before = after;
        std::thread::yield_now();
    }
    rest(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Replays a sequence of lock holders, one per read.
    fn holders(seq: &[Option<u32>]) -> impl FnMut() -> io::Result<Option<u32>> + '_ {
        let mut next = seq.iter();
        move || Ok(*next.next().expect("read more often than expected"))
    }

    #[test]
    fn a_steady_holder_is_read_once_around_the_rest() {
        let reads = RefCell::new(Vec::new());
        let seen = consistent_snapshot(
            holders(&[Some(7), Some(7)]),
            |pid| {
                reads.borrow_mut().push(pid);
                Ok(pid)
            },
            |_| false,
        )
        .unwrap();
        assert_eq!(seen, Some(7));
        assert_eq!(*reads.borrow(), vec![Some(7)]);
    }

    #[test]
    fn an_agent_arriving_mid_read_makes_the_snapshot_retaken() {
        let reads = RefCell::new(Vec::new());
        let seen = consistent_snapshot(
            holders(&[None, Some(42), Some(42)]),
            |pid| {
                reads.borrow_mut().push(pid);
                Ok(pid)
            },
            |_| false,
        )
        .unwrap();
        assert_eq!(seen, Some(42), "the snapshot names the agent that came");
        assert_eq!(*reads.borrow(), vec![None, Some(42)]);
    }

    #[test]
    fn a_snapshot_that_needs_no_recheck_reads_the_holder_once() {
        // `holders` panics on a second read.
        let seen = consistent_snapshot(holders(&[None]), Ok, Option::is_none).unwrap();
        assert_eq!(seen, None);
    }

    #[test]
    fn a_holder_that_never_settles_still_gives_an_answer() {
        let flapping: Vec<Option<u32>> = (0..SNAPSHOT_ATTEMPTS as u32 + 1).map(Some).collect();
        let seen = consistent_snapshot(holders(&flapping), Ok, |_| false).unwrap();
        assert_eq!(seen, Some(SNAPSHOT_ATTEMPTS as u32 - 1));
    }

    #[test]
    fn a_read_error_is_passed_on() {
        let err = consistent_snapshot(
            holders(&[None]),
            |_| -> io::Result<()> { Err(io::Error::other("unreadable")) },
            |_| false,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "unreadable");
    }
}
