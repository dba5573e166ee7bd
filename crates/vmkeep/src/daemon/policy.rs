//! The daemon's decisions, pure: whether an instance should run after its
//! last run ended, and when (or whether) to restart it after failures.

use std::collections::VecDeque;
use std::time::Duration;

use crate::instance::config::RunStrategy;
use crate::instance::desired::Desired;
use crate::journal::{Event, Record, StoppedReason};

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
pub fn last_run(records: &[Record]) -> (LastRun, Option<String>) {
    for (at, record) in records.iter().enumerate().rev() {
        let ended = match &record.event {
            Event::GaveUp { .. } => LastRun::GaveUp,
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
            | Event::StopStep { .. } => LastRun::Unclean,
            Event::StartFailed { .. }
            | Event::DataDisk { .. }
            | Event::Repaired { .. }
            | Event::Restarting { .. }
            | Event::Unknown => continue,
        };
        return (ended, Some(record.ts.clone()));
    }
    (LastRun::Never, None)
}

/// The error of the failed start that `records` end with.
fn start_error(records: &[Record]) -> String {
    for record in records.iter().rev() {
        match &record.event {
            Event::StartFailed { error } => return error.clone(),
            Event::Starting { .. } => break,
            _ => {}
        }
    }
    "unknown".into()
}

/// Whether the instance should be running now that its last run ended so.
/// `witnessed`: the daemon saw the run end (else it is looking at an ending
/// from before it started, as after a host reboot).
pub fn should_run(
    strategy: RunStrategy,
    desired: Option<Desired>,
    last: &LastRun,
    witnessed: bool,
) -> bool {
    if desired == Some(Desired::Stopped) || *last == LastRun::GaveUp {
        return false;
    }
    match strategy {
        RunStrategy::Halted | RunStrategy::Manual => false,
        RunStrategy::Always => true,
        RunStrategy::OnFailure => match last {
            _ if last.is_failure() => true,
            // KubeVirt's RerunOnFailure: started at first, rerun on failure.
            LastRun::Never => true,
            // A stop nobody asked for through vmkeep (a host shutdown, or the
            // daemon's own stop at its exit) while the user wanted it running:
            // bring it back when the daemon comes up again, as a service
            // manager starts enabled units at boot.
            LastRun::Requested => !witnessed && desired == Some(Desired::Running),
            _ => false,
        },
    }
}

/// Restart pacing: exponential backoff, and a start limit after which the
/// daemon gives up (like systemd's StartLimitBurst within StartLimitIntervalSec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Starts allowed within `interval` before giving up.
    pub burst: u32,
    pub interval: Duration,
    /// Delay before the first restart; doubles with each further one.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            burst: 5,
            interval: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The daemon's starts of one instance (times since the daemon began).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    starts: VecDeque<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it at this time.
    StartAt(Duration),
    /// Too many starts within the interval.
    GiveUp { starts: u32 },
}

impl Restarts {
    pub fn record_start(&mut self, at: Duration) {
        self.starts.push_back(at);
    }

    /// Starts within the current history.
    pub fn attempts(&self) -> u32 {
        self.starts.len() as u32
    }

    /// Forget the history (the user started it by hand).
    pub fn reset(&mut self) {
        self.starts.clear();
    }

    /// When to restart after a run that ended at `now`.
    pub fn next(&mut self, limits: &RestartLimits, now: Duration) -> Verdict {
        while self
            .starts
            .front()
            .is_some_and(|at| now.saturating_sub(*at) > limits.interval)
        {
            self.starts.pop_front();
        }
        let recent = self.starts.len() as u32;
        if recent >= limits.burst {
            return Verdict::GiveUp { starts: recent };
        }
        let delay = match recent {
            0 => Duration::ZERO,
            n => limits
                .backoff
                .saturating_mul(1 << (n - 1).min(20))
                .min(limits.backoff_max),
        };
        Verdict::StartAt(now + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop_ladder::Step;

    const S: Duration = Duration::from_secs(1);

    fn rec(ts: &str, event: Event) -> Record {
        Record {
            ts: ts.into(),
            pid: 1,
            event,
        }
    }

    fn stopped(reason: StoppedReason) -> Event {
        Event::Stopped {
            reason,
            by: Some(Step::PowerButton),
            after_secs: None,
            qemu_exit: "exit code 0".into(),
        }
    }

    #[test]
    fn the_last_ending_is_read_from_the_journal() {
        assert_eq!(last_run(&[]), (LastRun::Never, None));
        let running = rec(
            "1",
            Event::Running {
                qemu_pid: 2,
                guest_boot_id: "b".into(),
                boot_secs: 1.0,
            },
        );
        assert_eq!(
            last_run(std::slice::from_ref(&running)),
            (LastRun::Unclean, Some("1".into()))
        );
        let crash = rec("2", stopped(StoppedReason::Crashed));
        assert_eq!(
            last_run(&[running.clone(), crash]),
            (LastRun::Crashed, Some("2".into()))
        );
        let failed = [
            rec(
                "3",
                Event::StartFailed {
                    error: "boom".into(),
                },
            ),
            rec("4", stopped(StoppedReason::StartFailed)),
            rec(
                "5",
                Event::Repaired {
                    action: crate::journal::Repair::RemovedStaleFiles,
                    detail: String::new(),
                },
            ),
        ];
        assert_eq!(
            last_run(&failed),
            (
                LastRun::StartFailed {
                    error: "boom".into()
                },
                Some("4".into())
            )
        );
    }

    #[test]
    fn policy_table() {
        use LastRun::*;
        use RunStrategy::*;
        let running = Some(Desired::Running);
        // (strategy, last run, witnessed) -> should run
        let cases = [
            (Always, Crashed, true, true),
            (Always, GuestPoweroff, true, true),
            (Always, Requested, true, true),
            (Always, Unclean, true, true),
            (OnFailure, Crashed, true, true),
            (OnFailure, Unclean, true, true),
            (OnFailure, StartFailed { error: "x".into() }, true, true),
            (OnFailure, GuestPoweroff, true, false),
            (OnFailure, Requested, true, false),
            (OnFailure, Requested, false, true),
            (OnFailure, Never, false, true),
            (Manual, Never, false, false),
            (Manual, Crashed, true, false),
            (Manual, Unclean, false, false),
            (Halted, Crashed, true, false),
            (Always, GaveUp, false, false),
        ];
        for (strategy, last, witnessed, expected) in cases {
            assert_eq!(
                should_run(strategy, running, &last, witnessed),
                expected,
                "{strategy:?} after {last:?} (witnessed: {witnessed})"
            );
        }
        for strategy in [Always, OnFailure, Manual, Halted] {
            assert!(
                !should_run(strategy, Some(Desired::Stopped), &Crashed, true),
                "`vmkeep stop` wins over {strategy:?}"
            );
        }
    }

    #[test]
    fn restarts_back_off_exponentially_then_give_up() {
        let limits = RestartLimits {
            burst: 4,
            interval: 100 * S,
            backoff: S,
            backoff_max: 3 * S,
        };
        let mut restarts = Restarts::default();
        let mut now = Duration::ZERO;
        let mut delays = Vec::new();
        loop {
            match restarts.next(&limits, now) {
                Verdict::StartAt(at) => {
                    delays.push((at - now).as_secs());
                    restarts.record_start(at);
                    now = at + S; // it fails a second later
                }
                Verdict::GiveUp { starts } => {
                    assert_eq!(starts, 4);
                    break;
                }
            }
        }
        assert_eq!(delays, vec![0, 1, 2, 3], "doubling, capped at 3 s");
    }

    #[test]
    fn old_starts_fall_out_of_the_interval() {
        let limits = RestartLimits {
            burst: 2,
            interval: 10 * S,
            backoff: S,
            backoff_max: 60 * S,
        };
        let mut restarts = Restarts::default();
        restarts.record_start(Duration::ZERO);
        restarts.record_start(S);
        assert!(matches!(
            restarts.next(&limits, 2 * S),
            Verdict::GiveUp { .. }
        ));
        assert_eq!(
            restarts.next(&limits, 100 * S),
            Verdict::StartAt(100 * S),
            "a failure long after the last ones starts afresh"
        );
    }
}
