//! What a rotation of the journal carries into the new file: the records
//! that status derivation reads, so that a rotation never changes what it
//! concludes however small the cap (the decision; `journal::rotate` does it).
//!
//! Status derivation reads, from the journal's end: its last record
//! (`instance::observe`: the phase of a live agent, a data-disk or pause
//! reason); how the last run ended ([`last_run`]: the newest record that
//! is not a mere note, and for a failed start its `start-failed` error),
//! which the host agent (unclean ends), `stop` and the daemon's policy (the
//! start limit, restarts) read too, and for a failed start still under way
//! its error and its `starting`; and the deadline each recent host agent
//! journaled for its stop ([`stop_deadline`], for the force limit of `stop`
//! and of the daemon). [`carry`] keeps exactly those records, in their
//! order; [`expand`] puts them back where the rotation left its record, so
//! that each of those readers answers over the new file what it answered
//! over the old one (the tests below check it on random histories). The
//! desired state is a file of its own (`instance::desired`), not journaled.
//!
//! [`last_run`]: super::last_run
//! [`stop_deadline`]: super::stop_deadline

use std::collections::BTreeSet;

use super::event::{Event, Record, StoppedReason};
use super::last_run;

/// How many host agents' newest stop deadlines are carried: only the
/// current agent's is ever asked for; a few more cover an agent replaced
/// while the rotation ran.
pub const STOPPING_PIDS: usize = 8;

/// The records of `records` (oldest first, rotated records already
/// [`expand`]ed) that status derivation reads, oldest first.
pub fn carry(records: &[Record]) -> Vec<Record> {
    let mut keep = BTreeSet::new();
    if let Some(newest) = records.len().checked_sub(1) {
        keep.insert(newest);
    }
    if let (_, Some(decided)) = last_run::last_run(records)
        && let Some(at) = records.iter().position(|r| std::ptr::eq(r, decided))
    {
        keep.insert(at);
        if let Event::Stopped {
            reason: StoppedReason::StartFailed,
            ..
        } = decided.event
            && let Some(failed) = last_run::start_failed_at(&records[..at])
        {
            keep.insert(failed);
        }
    }
    // A failed start's `stopped` may come after the rotation: its error,
    // and the start that bounds the search for it.
    keep.extend(last_run::start_failed_at(records));
    keep.extend(
        records
            .iter()
            .rposition(|r| matches!(r.event, Event::Starting { .. })),
    );
    let mut pids = Vec::new();
    for (at, record) in records.iter().enumerate().rev() {
        if pids.len() == STOPPING_PIDS {
            break;
        }
        if matches!(record.event, Event::Stopping { .. }) && !pids.contains(&record.pid) {
            pids.push(record.pid);
            keep.insert(at);
        }
    }
    keep.into_iter()
        .map(|at| records[at].clone())
        .filter(|r| !matches!(r.event, Event::Rotated { .. }))
        .collect()
}

/// `records` with each rotated record replaced by the records it carried
/// (a rotated record inside those is dropped: [`carry`] makes none).
pub fn expand(records: Vec<Record>) -> Vec<Record> {
    let mut expanded = Vec::with_capacity(records.len());
    for record in records {
        match record.event {
            Event::Rotated { carried, .. } => expanded.extend(
                carried
                    .into_iter()
                    .filter(|r| !matches!(r.event, Event::Rotated { .. })),
            ),
            _ => expanded.push(record),
        }
    }
    expanded
}

/// What the journal's readers conclude from `records`, as text: the last
/// record, how the last run ended and by which record, and the stop
/// deadline of each of the newest [`STOPPING_PIDS`] agents that journaled
/// one. A rotation must leave it unchanged (the tests, and the fuzz target).
pub fn conclusions(records: &[Record]) -> String {
    let (ended, by) = last_run::last_run(records);
    let mut pids = Vec::new();
    for record in records.iter().rev() {
        if matches!(record.event, Event::Stopping { .. }) && !pids.contains(&record.pid) {
            pids.push(record.pid);
        }
    }
    let deadlines: Vec<_> = pids
        .iter()
        .take(STOPPING_PIDS)
        .map(|pid| (pid, last_run::stop_deadline(records, *pid)))
        .collect();
    format!(
        "last {:?}; ended {ended:?} by {by:?}; deadlines {deadlines:?}",
        records.last()
    )
}

/// The records of a journal that was rotated after `before` and then got
/// `after`, as its readers find them.
pub fn rotated_view(before: &[Record], after: &[Record]) -> Vec<Record> {
    let rotation = Record {
        ts: String::new(),
        pid: 0,
        event: Event::Rotated {
            previous_bytes: 0,
            carried: carry(&expand(before.to_vec())),
        },
    };
    expand(
        std::iter::once(rotation)
            .chain(after.iter().cloned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::event::{Repair, StopCause};
    use super::super::{last_run, stop_deadline};
    use super::*;
    use crate::stop_ladder::Step;

    /// A small deterministic generator (xorshift), so that failures repeat.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// One random record of a plausible kind, by one of a few processes.
    fn random_record(random: &mut Random, n: usize) -> Record {
        let stopped = |reason| Event::Stopped {
            reason,
            by: Some(Step::PowerButton),
            after_secs: None,
            qemu_exit: "exit code 0".into(),
        };
        let event = match random.below(14) {
            0 => Event::Starting { foreground: false },
            1 => Event::Booting {
                qemu_pid: 7,
                accel: "tcg".into(),
            },
            2 => Event::Running {
                qemu_pid: 7,
                guest_boot_id: format!("b{n}"),
                boot_secs: 1.0,
            },
            3 => Event::GuestRebooted {
                guest_boot_id: format!("b{n}"),
            },
            4 => Event::Stopping {
                cause: StopCause::Request,
                deadline_secs: n as f64,
                force: false,
            },
            5 => Event::StopStep {
                step: Step::PowerButton,
                at_secs: 0.5,
            },
            6 => stopped(StoppedReason::Requested),
            7 => stopped(StoppedReason::Crashed),
            8 => stopped(StoppedReason::StartFailed),
            9 => Event::StartFailed {
                error: format!("boom {n}"),
            },
            10 => Event::Restarting {
                attempt: 1,
                after: "crashed".into(),
                backoff_secs: 1.0,
            },
            11 => Event::Repaired {
                action: Repair::RemovedStaleFiles,
                detail: String::new(),
            },
            12 => Event::GaveUp {
                failures: 5,
                within_secs: 600.0,
                last_error: "x".into(),
            },
            _ => Event::Unknown,
        };
        Record {
            ts: format!("{n:08}"),
            pid: 100 + random.below(12) as u32,
            event,
        }
    }

    /// What the readers of the journal conclude from `records`.
    fn conclusions(records: &[Record]) -> (Option<Record>, String, Vec<Option<f64>>) {
        let (ended, by) = last_run(records);
        let deadlines = (100..112)
            .map(|pid| stop_deadline(records, pid).map(|d| d.as_secs_f64()))
            .collect();
        (
            records.last().cloned(),
            format!("{ended:?} by {:?}", by.map(|r| &r.ts)),
            deadlines,
        )
    }

    fn rotated(carried: Vec<Record>) -> Record {
        Record {
            ts: "rotation".into(),
            pid: 1,
            event: Event::Rotated {
                previous_bytes: 0,
                carried,
            },
        }
    }

    #[test]
    fn carried_records_let_every_reader_conclude_what_it_did_before_the_rotation() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut n = 0;
        for _ in 0..2000 {
            let mut history: Vec<Record> = Vec::new();
            // The file as a reader finds it: a rotated record, then what
            // came after, rotated again and again.
            let mut file: Vec<Record> = Vec::new();
            for _ in 0..1 + random.below(4) {
                for _ in 0..random.below(30) {
                    n += 1;
                    let record = random_record(&mut random, n);
                    history.push(record.clone());
                    file.push(record);
                }
                let carried = carry(&expand(std::mem::take(&mut file)));
                file.push(rotated(carried));
            }
            for _ in 0..random.below(5) {
                n += 1;
                let record = random_record(&mut random, n);
                history.push(record.clone());
                file.push(record);
            }
            let (last, ended, deadlines) = conclusions(&history);
            let (last_view, ended_view, deadlines_view) = conclusions(&expand(file.clone()));
            assert_eq!(last_view, last, "{file:#?}");
            assert_eq!(ended_view, ended, "{history:#?}\n{file:#?}");
            // Every pid's deadline among the newest agents that stopped.
            let mut recent = Vec::new();
            for record in history.iter().rev() {
                if matches!(record.event, Event::Stopping { .. }) && !recent.contains(&record.pid) {
                    recent.push(record.pid);
                }
            }
            for pid in recent.iter().take(STOPPING_PIDS) {
                let at = (*pid - 100) as usize;
                assert_eq!(deadlines_view[at], deadlines[at], "pid {pid}: {file:#?}");
            }
        }
    }

    #[test]
    fn a_rotation_carries_few_records_and_no_rotated_one() {
        let mut random = Random(7);
        let records: Vec<Record> = (0..5000).map(|n| random_record(&mut random, n)).collect();
        let carried = carry(&records);
        assert!(carried.len() <= 5 + STOPPING_PIDS, "{}", carried.len());
        assert_eq!(carried.last(), records.last());
        let again = carry(&expand(vec![rotated(carried.clone())]));
        assert_eq!(again, carried, "carrying is idempotent");
        assert!(carry(&[]).is_empty());
        let nested = vec![rotated(vec![rotated(records[..3].to_vec())])];
        assert!(expand(nested).is_empty());
    }
}
