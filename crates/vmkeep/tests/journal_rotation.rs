//! The journal's rotation against real `kill -9`s: a writer process (this
//! test binary, re-run as a helper) journals as fast as it can under a tiny
//! cap, so that it rotates every few dozen records, and is killed at random
//! moments, again and again. After each kill the journal reads, holds every
//! record of the writer's in order without a repeat, stays within its
//! bound, and still tells the deadline the writer journaled first (rotated
//! out long before): what `stop` and the daemon read.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmkeep::instance::journal::{self, Event, Journal, StopCause};
use vmkeep::stop_ladder::Step;

mod common;

const CAP: u64 = 4096;
const WRITER_ENV: &str = "VMKEEP_TEST_JOURNAL_WRITER";

/// The helper: journal a stop's deadline, then numbered steps, forever.
#[test]
#[ignore = "run by journal_survives_kill_9_at_any_moment_of_its_rotations"]
fn journal_writer_helper() {
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let deadline: f64 = std::env::var("VMKEEP_TEST_DEADLINE")
        .unwrap()
        .parse()
        .unwrap();
    let mut journal = Journal::open_capped(path.as_ref(), CAP).unwrap();
    journal
        .record(Event::Stopping {
            cause: StopCause::Request,
            deadline_secs: deadline,
            force: false,
        })
        .unwrap();
    for n in 0.. {
        journal
            .record(Event::StopStep {
                step: Step::PowerButton,
                at_secs: f64::from(n),
            })
            .unwrap();
    }
}

struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn steps_of(records: &[journal::Record], pid: u32) -> Vec<u32> {
    records
        .iter()
        .filter(|r| r.pid == pid)
        .filter_map(|r| match r.event {
            Event::StopStep { at_secs, .. } => Some(at_secs as u32),
            _ => None,
        })
        .collect()
}

#[test]
fn journal_survives_kill_9_at_any_moment_of_its_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let previous = dir.path().join("events.jsonl.1");
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut caught_mid_rotation = 0;
    for round in 1..=40u32 {
        let mut writer = Writer(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "journal_writer_helper",
                    "--ignored",
                    "--nocapture",
                ])
                .env(WRITER_ENV, &path)
                .env("VMKEEP_TEST_DEADLINE", round.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = writer.0.id();
        // Kill it after a random number of its records (up to a few
        // rotations' worth), wherever it is then.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let records = 5 + (seed % 150) as u32;
        let grown = common::wait_until(Duration::from_secs(60), || {
            let all = journal::read_all(&path).ok()?;
            (steps_of(&all, pid).last()? >= &records).then_some(())
        });
        assert!(grown.is_some(), "round {round}: the writer wrote nothing");
        writer.0.kill().unwrap();
        writer.0.wait().unwrap();

        // A rotation cut short leaves no journal, or its new file beside
        // it (which `start` sweeps as a dead writer's temporary; so here).
        let temporaries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        if !path.exists() || !temporaries.is_empty() {
            caught_mid_rotation += 1;
        }
        for temporary in temporaries {
            std::fs::remove_file(temporary.path()).unwrap();
        }
        // Readable; the writer's records in order, none twice, up to its last.
        let all = journal::read_all(&path).unwrap();
        let steps = steps_of(&all, pid);
        assert!(!steps.is_empty(), "round {round}");
        assert!(
            steps.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: {steps:?}"
        );
        // What status derivation reads: the deadline of its stop, journaled
        // before everything else it wrote.
        let view = journal::tail(&path, journal::LAST_RUN_BYTES).unwrap();
        assert_eq!(
            journal::stop_deadline(&view, pid),
            Some(Duration::from_secs(u64::from(round))),
            "round {round}"
        );
        assert_eq!(view.last().map(|r| r.pid), Some(pid), "round {round}");
        let held: u64 = [&path, &previous]
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(held <= 2 * (CAP + 1024), "round {round}: {held} bytes");
    }
    eprintln!("{caught_mid_rotation} of 40 kills left a rotation unfinished");
}
