//! What a journal's end says about the last run: how it ended
//! ([`last_run`], for the daemon's policy and the status), and the deadline
//! of the stop an agent runs ([`stop_deadline`]).

use std::time::Duration;

use super::event::{Event, Record, StoppedReason};

/// The deadline of the stop that the process `pid` journaled last (a host
/// agent's ladder), if any; a damaged figure counts as none.
pub fn stop_deadline(records: &[Record], pid: u32) -> Option<Duration> {
    records.iter().rev().find_map(|record| match record.event {
        Event::Stopping { deadline_secs, .. } if record.pid == pid => {
            Duration::try_from_secs_f64(deadline_secs).ok()
        }
        _ => None,
    })
}

/// How an instance's last run ended, read from its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastRun {
    /// It has never run.
    Never,
    /// Stopped because someone asked (a command, a signal, a shutdown).
    Requested,
    /// The guest powered itself off.
    GuestPoweroff,
    /// QEMU died unasked.
    Crashed,
    /// The start failed.
    StartFailed { error: String },
    /// The run left no `stopped` record: its host agent died with it.
    Unclean,
    /// The daemon gave up restarting it.
    GaveUp,
}

impl LastRun {
    /// Whether this ending counts as a failure (for `on-failure` and the
    /// start limit).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            LastRun::Crashed | LastRun::StartFailed { .. } | LastRun::Unclean
        )
    }

    pub fn describe(&self) -> String {
        match self {
            LastRun::Never => "never ran".into(),
            LastRun::Requested => "stopped on request".into(),
            LastRun::GuestPoweroff => "guest powered off".into(),
            LastRun::Crashed => "QEMU crashed".into(),
            LastRun::StartFailed { error } => format!("start failed: {error}"),
            LastRun::Unclean => "host agent and QEMU died".into(),
            LastRun::GaveUp => "daemon gave up".into(),
        }
    }
}

/// How the last run ended, and the timestamp of the record that says so
/// (the key under which the daemon remembers it has decided on that ending).
pub fn last_run(records: &[Record]) -> (LastRun, Option<&Record>) {
    for (at, record) in records.iter().enumerate().rev() {
        let ended = match &record.event {
            Event::GaveUp { .. } => LastRun::GaveUp,
            // The user (or a host shutdown) asked for it: like a requested
            // stop for the daemon's policy, and not a failure.
            Event::Suspended { .. } => LastRun::Requested,
            Event::Stopped { reason, .. } => match reason {
                StoppedReason::Requested => LastRun::Requested,
                StoppedReason::GuestPoweroff => LastRun::GuestPoweroff,
                StoppedReason::Crashed => LastRun::Crashed,
                StoppedReason::StartFailed => LastRun::StartFailed {
                    error: start_error(&records[..at]),
                },
            },
            Event::Starting { .. }
            | Event::Booting { .. }
            | Event::Running { .. }
            | Event::GuestRebooted { .. }
            | Event::Adopted { .. }
            | Event::Stopping { .. }
            | Event::StopStep { .. }
            | Event::Suspending { .. }
            | Event::SuspendFailed { .. }
            | Event::Resuming { .. }
            | Event::Resumed { .. }
            | Event::Paused { .. }
            | Event::Continued { .. }
            | Event::GuestClockSet { .. }
            | Event::SharedDirLost { .. }
            | Event::Upgraded { .. }
            | Event::UpgradeFailed { .. } => LastRun::Unclean,
            Event::StateDiscarded { .. }
            | Event::StartFailed { .. }
            | Event::UncleanEnd { .. }
            | Event::DataDisk { .. }
            | Event::Repaired { .. }
            | Event::Restarting { .. }
            | Event::QemuUpgrade { .. }
            | Event::Rotated { .. }
            | Event::DiskGrown { .. }
            | Event::Unknown => continue,
        };
        return (ended, Some(record));
    }
    (LastRun::Never, None)
}

/// The error of the failed start that `records` end with.
fn start_error(records: &[Record]) -> String {
    match start_failed_at(records).map(|at| &records[at].event) {
        Some(Event::StartFailed { error }) => error.clone(),
        _ => "unknown".into(),
    }
}

/// Where the `start-failed` record of the start that `records` end with is.
pub(super) fn start_failed_at(records: &[Record]) -> Option<usize> {
    for (at, record) in records.iter().enumerate().rev() {
        match &record.event {
            Event::StartFailed { .. } => return Some(at),
            Event::Starting { .. } => break,
            _ => {}
        }
    }
    None
}
