//! The journal's rotation: what [`carry`](super::carry) decides, done on
//! disk, crash-safe at every step.
//!
//! Under the writers' lock (appenders wait meanwhile):
//!
//! 1. [`Step::WroteNew`]: the new file is written beside the journal (a
//!    temporary `.events.jsonl.tmp-PID-N`): one `rotated` record with the
//!    carried records, synced, with its [`RESERVE`](super::RESERVE) taken.
//!    No room for it: the temporary goes, nothing else changed (the full
//!    journal goes on, with its own reserve).
//! 2. [`Step::MovedOld`]: the journal is renamed to `events.jsonl.1`,
//!    replacing the older part.
//! 3. [`Step::PlacedNew`]: the new file is renamed to `events.jsonl`, and
//!    the directory synced.
//! 4. [`Step::Done`]: the old file's reserve is given back.
//!
//! Killed after 1, the journal is as before (the temporary is swept as any
//! dead writer's, `instance::runtime`) and the next record rotates again.
//! Killed after 2, there is no `events.jsonl`: readers read
//! `events.jsonl.1` alone, which holds everything, and the next writer
//! starts a new file without a `rotated` record, which readers do not need
//! while `events.jsonl.1` is beside it; the next rotation carries from both
//! files. Killed after 3, only the reserve of `events.jsonl.1` stays taken
//! until the next rotation replaces it. At no step is a record lost: each
//! was durable in a file before the rotation began, and no append happens
//! while it runs. (Readers take no lock: see `journal::open_pair`.)

use std::io::{self, Write};

use super::event::{Event, Record};
use super::{Files, RESERVE, both_files, carry};
use crate::os;
use crate::os::lock::FileLock;

/// The steps of a rotation, in order; a rotation runs up to the one asked
/// (always [`Step::Done`], except in tests that stop it where a kill would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    WroteNew,
    MovedOld,
    PlacedNew,
    Done,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::WroteNew, Step::MovedOld, Step::PlacedNew, Step::Done];
}

/// Whether a rotation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotated {
    Yes,
    /// Not needed: within the cap (or no journal).
    No,
}

/// Rotate the journal of `files` if it holds more than `max_bytes`, up to
/// step `until`; `_held` is the writers' lock, which the caller holds.
pub fn rotate(files: &Files, _held: &FileLock, max_bytes: u64, until: Step) -> io::Result<Rotated> {
    let len = match std::fs::metadata(&files.current) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Rotated::No),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(Rotated::No);
    }
    let record = Record {
        ts: super::now(),
        pid: std::process::id(),
        event: Event::Rotated {
            previous_bytes: len,
            carried: carry::carry(&carry::expand(both_files(&files.current)?)),
        },
    };
    let line = super::encode(&record)?;

    let temp = os::fs::temp_sibling(&files.current);
    let written = (|| {
        let mut file = os::fs::create_private(&temp)?;
        file.write_all(&line)?;
        os::fs::try_reserve_after_end(&file, RESERVE)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = os::fs::remove_file_if_exists(&temp);
        return Err(e);
    }
    if until == Step::WroteNew {
        return Ok(Rotated::Yes);
    }
    os::fs::rename(&files.current, &files.previous)?;
    if until == Step::MovedOld {
        return Ok(Rotated::Yes);
    }
    os::fs::rename(&temp, &files.current)?;
    if let Some(dir) = files.current.parent() {
        os::fs::sync_dir(dir)?;
    }
    if until == Step::PlacedNew {
        return Ok(Rotated::Yes);
    }
    os::fs::release_after_end(&files.previous, RESERVE);
    Ok(Rotated::Yes)
}

#[cfg(test)]
mod tests {
    use super::super::follow::Follower;
    use super::super::{Journal, LAST_RUN_BYTES, last, last_run, read_all, stop_deadline, tail};
    use super::*;
    use crate::instance::journal::{StopCause, StoppedReason};
    use crate::stop_ladder::Step as Rung;

    const CAP: u64 = 4096;

    fn stopping(deadline_secs: f64) -> Event {
        Event::Stopping {
            cause: StopCause::Request,
            deadline_secs,
            force: false,
        }
    }

    fn step_event(n: usize) -> Event {
        Event::StopStep {
            step: Rung::PowerButton,
            at_secs: n as f64,
        }
    }

    /// A run that ends, then a stop whose steps fill the file past the cap.
    fn fill(journal: &mut Journal) {
        journal
            .record(Event::Starting { foreground: true })
            .unwrap();
        journal
            .record(Event::Stopped {
                reason: StoppedReason::Crashed,
                by: None,
                after_secs: None,
                qemu_exit: "signal 9".into(),
            })
            .unwrap();
        journal.record(stopping(42.0)).unwrap();
    }

    fn sizes(files: &Files) -> u64 {
        [&files.current, &files.previous]
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    #[test]
    fn the_journal_stays_under_two_caps_and_readers_see_across_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let files = Files::of(&path);
        let mut journal = Journal::open_capped(&path, CAP).unwrap();
        fill(&mut journal);
        let mut follower = Follower::of(&path);
        let mut followed = follower.read_new().unwrap();
        for n in 0..2000 {
            journal.record(step_event(n)).unwrap();
            let held = sizes(&files);
            assert!(held <= 2 * (CAP + 200), "{held} bytes after {n}");
            if n % 7 == 0 {
                followed.extend(follower.read_new().unwrap());
            }
        }
        followed.extend(follower.read_new().unwrap());
        // The status view still has the crash and the stop's deadline, rotated
        // out long ago.
        let view = tail(&path, LAST_RUN_BYTES).unwrap();
        let pid = std::process::id();
        assert_eq!(stop_deadline(&view, pid), Some(Duration::from_secs(42)));
        assert_eq!(last_run(&view).0, LastRun::Unclean, "a stop is under way");
        assert_eq!(last(&path).unwrap().unwrap().event, step_event(1999));
        // `events` reads both files, in order, without bookkeeping; the
        // follower saw every record once, in order.
        let all = read_all(&path).unwrap();
        let steps: Vec<&Record> = all
            .iter()
            .filter(|r| matches!(r.event, Event::StopStep { .. }))
            .collect();
        assert!(steps.len() > 20, "{}", steps.len());
        assert_eq!(steps.last().unwrap().event, step_event(1999));
        let numbers: Vec<f64> = followed
            .iter()
            .filter_map(|r| match r.event {
                Event::StopStep { at_secs, .. } => Some(at_secs),
                _ => None,
            })
            .collect();
        assert_eq!(numbers, (0..2000).map(|n| n as f64).collect::<Vec<_>>());
        assert!(
            followed
                .iter()
                .all(|r| !matches!(r.event, Event::Rotated { .. }))
        );
    }

    use super::super::LastRun;
    use std::time::Duration;

    #[test]
    fn a_rotation_stopped_after_any_step_leaves_a_journal_that_reads_the_same() {
        for until in Step::ALL {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let files = Files::of(&path);
            // Never rotating by itself: the test rotates, up to `until`.
            let mut journal = Journal::open_capped(&path, u64::MAX).unwrap();
            fill(&mut journal);
            for n in 0..60 {
                journal.record(step_event(n)).unwrap();
            }
            let before = (
                tail(&path, LAST_RUN_BYTES).unwrap(),
                read_all(&path).unwrap(),
            );
            let pid = std::process::id();
            let held = FileLock::exclusive(&files.lock, Duration::ZERO)
                .unwrap()
                .unwrap();
            assert_eq!(rotate(&files, &held, CAP, until).unwrap(), Rotated::Yes);
            drop(held);
            // "Killed" here: what readers find.
            let view = tail(&path, LAST_RUN_BYTES).unwrap();
            assert_eq!(last_run(&view).0, last_run(&before.0).0, "{until:?}");
            assert_eq!(stop_deadline(&view, pid), Some(Duration::from_secs(42)));
            assert_eq!(view.last(), before.0.last(), "{until:?}");
            assert_eq!(
                read_all(&path).unwrap(),
                before.1,
                "{until:?}: no event lost"
            );
            // The next writer carries on; a later rotation completes.
            let mut next = Journal::open_capped(&path, CAP).unwrap();
            next.record(step_event(60)).unwrap();
            for n in 61..200 {
                next.record(step_event(n)).unwrap();
            }
            let view = tail(&path, LAST_RUN_BYTES).unwrap();
            assert_eq!(
                stop_deadline(&view, pid),
                Some(Duration::from_secs(42)),
                "{until:?}"
            );
            assert_eq!(view.last().unwrap().event, step_event(199));
            let leftovers: Vec<String> = os::fs::entry_names(dir.path())
                .unwrap()
                .into_iter()
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(leftovers.len() <= 1, "{until:?}: {leftovers:?}");
        }
    }

    #[test]
    fn carried_records_are_read_from_the_head_when_the_window_does_not_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open_capped(&path, CAP).unwrap();
        fill(&mut journal);
        while !Files::of(&path).previous.exists() {
            journal.record(step_event(0)).unwrap();
        }
        // A larger cap from now on: the file grows past the status window.
        let mut journal = Journal::open_capped(&path, u64::MAX).unwrap();
        for n in 0..1200 {
            journal.record(step_event(n)).unwrap();
        }
        std::fs::remove_file(Files::of(&path).previous).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > LAST_RUN_BYTES);
        let view = tail(&path, LAST_RUN_BYTES).unwrap();
        let pid = std::process::id();
        assert_eq!(stop_deadline(&view, pid), Some(Duration::from_secs(42)));
        assert_eq!(view.last().unwrap().event, step_event(1199));
    }

    #[test]
    fn writers_in_threads_and_a_rotation_lose_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::thread::scope(|scope| {
            for t in 0..4 {
                let path = &path;
                scope.spawn(move || {
                    let mut journal = Journal::open_capped(path, CAP).unwrap();
                    for n in 0..300 {
                        journal.record(step_event(t * 1000 + n)).unwrap();
                    }
                });
            }
        });
        // Every record is in one of the two files or was rotated out, and
        // the files never hold a record twice.
        let all = read_all(&path).unwrap();
        let mut seen: Vec<u64> = all
            .iter()
            .filter_map(|r| match r.event {
                Event::StopStep { at_secs, .. } => Some(at_secs as u64),
                _ => None,
            })
            .collect();
        let count = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), count, "no record twice");
        // The files hold a whole stretch of the appends, up to the last:
        // of each writer, none or its newest records without a gap.
        for t in 0..4u64 {
            let mine: Vec<u64> = seen.iter().copied().filter(|n| n / 1000 == t).collect();
            if let (Some(first), Some(newest)) = (mine.first(), mine.last()) {
                assert_eq!(*newest, t * 1000 + 299, "writer {t}");
                assert_eq!(
                    mine.len() as u64,
                    newest - first + 1,
                    "writer {t}: {mine:?}"
                );
            }
        }
        assert!(seen.iter().any(|n| n % 1000 == 299));
        let held = sizes(&Files::of(&path));
        assert!(held <= 2 * (CAP + 4 * 200), "{held}");
    }
}
