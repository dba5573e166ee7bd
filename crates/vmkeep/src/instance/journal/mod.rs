//! The per-instance event journal: `events.jsonl`, one JSON object per line,
//! appended by whoever changes the instance (the host agent; the CLI when it
//! repairs, stops or suspends an instance without one; the daemon).
//!
//! Readers tolerate what they do not understand: a torn or garbage line is
//! skipped, an unknown event kind reads as [`Event::Unknown`].
//!
//! The journal is bounded ([`max_bytes`], `VMKEEP_JOURNAL_MAX`, 1 MiB): the
//! writer whose record takes it past the cap rotates it ([`rotate`]): the
//! file becomes `events.jsonl.1` (replacing the older part) and a new one
//! starts with a `rotated` record carrying what status derivation reads
//! ([`carry`]), so that no rotation changes what `list`, `start`, `stop`
//! or the daemon conclude. Readers read across both files: [`tail`] (and
//! [`last`]) for status, with the carried records put back in place;
//! [`read_all`] and [`follow::Follower`] (`vmkeep events`, `--follow`) for
//! the events themselves, without the bookkeeping. On disk: at most two
//! files of the cap and a record each, plus [`RESERVE`].
//!
//! Writers take a lock (`events.jsonl.lock`, `os::lock::FileLock`) for
//! each append, and the one whose append crossed the cap rotates before
//! letting it go, so no record is appended to a file being moved aside;
//! each writer follows a rotation to the new file before its next append.
//!
//! [`event`] says what a line holds; [`last_run`] reads how the last run
//! ended; [`carry`] what a rotation keeps; [`rotate`] does it; this file
//! writes and reads the lines.

pub mod carry;
pub mod event;
pub mod follow;
pub mod last_run;
pub mod rotate;

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use self::event::{
    ContinueCause, Event, Record, Repair, StopCause, StoppedReason, SuspendCause, SuspendFallback,
    UpgradeSteps,
};
pub use self::last_run::{LastRun, last_run, stop_deadline};
use crate::formats;
use crate::os;
use crate::os::lock::FileLock;

/// Space kept allocated past the journal's end, so that events can still be
/// written when the host filesystem is full (hundreds of events). A rotation
/// happens only once the new file has its own (else the full file, with its
/// room, goes on), so a full disk never keeps a VM from journaling its stop.
pub const RESERVE: u64 = 64 * 1024;

/// The journal's cap: thousands of events (a reboot loop under the daemon
/// journals about 700 bytes a cycle).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The environment variable that sets the cap (bytes).
pub const MAX_ENV: &str = "VMKEEP_JOURNAL_MAX";

/// The cap, from [`MAX_ENV`].
pub fn max_bytes() -> u64 {
    os::capped::max_from_env(MAX_ENV, DEFAULT_MAX_BYTES)
}

/// How long an append waits for another writer's append or rotation (a few
/// milliseconds, unless that process was frozen mid-way); then the record
/// is appended regardless, and no rotation made: better in the old file
/// than not at all, and a `stop` of a frozen agent must not hang on it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The files of one journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub current: PathBuf,
    /// Its part before the last rotation.
    pub previous: PathBuf,
    pub lock: PathBuf,
}

impl Files {
    pub fn of(path: &Path) -> Files {
        let mut lock = path.file_name().unwrap_or_default().to_os_string();
        lock.push(".lock");
        Files {
            current: path.to_path_buf(),
            previous: os::capped::previous_of(path),
            lock: path.with_file_name(lock),
        }
    }
}

/// Append-only writer for one instance's journal.
#[derive(Debug)]
pub struct Journal {
    files: Files,
    file: File,
    max_bytes: u64,
    /// Lines appended by [`Journal::record_deferred`] not synced yet.
    unsynced: bool,
}

impl Journal {
    /// The journal at `path`, capped at [`max_bytes`].
    pub fn open(path: &Path) -> io::Result<Journal> {
        Self::open_capped(path, max_bytes())
    }

    /// The journal at `path`, rotated past `max_bytes`.
    pub fn open_capped(path: &Path, max_bytes: u64) -> io::Result<Journal> {
        let file = os::fs::open_append(path)?;
        // Room for the events of a host disk that fills up meanwhile: a VM
        // paused because the disk is full, its stop. Best effort.
        os::fs::reserve_after_end(&file, RESERVE);
        Ok(Journal {
            files: Files::of(path),
            file,
            max_bytes,
            unsynced: false,
        })
    }

    /// Append one event as a single line and make it durable (with every
    /// line appended before it); rotate the journal if that took it past
    /// its cap.
    pub fn record(&mut self, event: Event) -> io::Result<Record> {
        self.append(event, true)
    }

    /// Append one event as a single line, at once visible to every reader,
    /// but durable only at the next [`Journal::record`] or
    /// [`Journal::sync`] (a host crash before it may lose the line; a
    /// killed process does not). For the progress events of a start, which
    /// no crash safety depends on, so that a start pays one fsync at its
    /// end instead of one per event (see docs/suspend.md).
    pub fn record_deferred(&mut self, event: Event) -> io::Result<Record> {
        self.append(event, false)
    }

    /// Make every line appended so far durable (nothing to do if it is).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn append(&mut self, event: Event, durable: bool) -> io::Result<Record> {
        let record = Record {
            ts: now(),
            pid: std::process::id(),
            event,
        };
        let line = encode(&record)?;
        // Without the lock (it cannot be made, or its holder hangs) the
        // record still goes in, as before rotations existed.
        let held = FileLock::exclusive(&self.files.lock, LOCK_WAIT)
            .ok()
            .flatten();
        self.follow_rotation()?;
        self.file.write_all(&line)?;
        self.unsynced = true;
        if durable {
            self.sync()?;
        }
        os::fs::reserve_after_end(&self.file, RESERVE);
        if let Some(held) = &held
            && self.file.metadata()?.len() > self.max_bytes
        {
            // A rotation moves the file aside: its lines are made durable
            // first.
            self.sync()?;
            // The record is durable already; a rotation that cannot be made
            // now (no room for the new file) is tried at the next record.
            if let Ok(rotate::Rotated::Yes) =
                rotate::rotate(&self.files, held, self.max_bytes, rotate::Step::Done)
            {
                let _ = self.follow_rotation();
            }
        }
        Ok(record)
    }

    /// Point the writer at the file now at the journal's path, if a
    /// rotation replaced the one it had (or it is gone).
    fn follow_rotation(&mut self) -> io::Result<()> {
        let ours = self.file.metadata()?;
        let same = std::fs::metadata(&self.files.current)
            .is_ok_and(|now| (now.dev(), now.ino()) == (ours.dev(), ours.ino()));
        if !same {
            // What this writer appended before goes durable with its file.
            self.sync()?;
            self.file = os::fs::open_append(&self.files.current)?;
            os::fs::reserve_after_end(&self.file, RESERVE);
        }
        Ok(())
    }
}

impl Drop for Journal {
    /// Deferred lines go durable at the latest when their writer goes.
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!("cannot sync the journal: {e}");
        }
    }
}

/// Now, as a record's timestamp: RFC 3339 UTC with milliseconds.
fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn id_of(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

fn id_at(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The journal's two files, opened as one consistent pair: the current
/// file, and the part rotated out before it (not the one before that).
/// Without locks: the current file is opened first, and the pair is taken
/// only if the path still names that file once the older part is open (a
/// rotation in between would have moved it).
pub(crate) fn open_pair(path: &Path) -> io::Result<(Option<File>, Option<File>)> {
    let files = Files::of(path);
    let mut tries = 0;
    loop {
        let current = open_if_exists(&files.current)?;
        let id = current.as_ref().map(id_of).transpose()?;
        let previous = open_if_exists(&files.previous)?;
        tries += 1;
        if id_at(&files.current)? == id || tries == 16 {
            return Ok((previous, current));
        }
    }
}

/// Every readable record of the journal, across its rotated part, oldest
/// first, without the rotations' own records. A missing journal is empty.
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    let mut records = both_files(path)?;
    records.retain(|r| !matches!(r.event, Event::Rotated { .. }));
    Ok(records)
}

/// Every readable record of both files, oldest first, as written.
pub(crate) fn both_files(path: &Path) -> io::Result<Vec<Record>> {
    let (previous, current) = open_pair(path)?;
    let mut records = Vec::new();
    for file in [previous, current].into_iter().flatten() {
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes)?;
        records.extend(parse_lines(&bytes));
    }
    Ok(records)
}

/// The last readable record (what status derivation reads of a live agent),
/// reading only the journal's end.
pub fn last(path: &Path) -> io::Result<Option<Record>> {
    Ok(tail(path, 16 * 1024)?.pop())
}

/// How much of a journal's end tells how its last run ended.
pub const LAST_RUN_BYTES: u64 = 64 * 1024;

/// The most a rotation's record is read for, at the head of the file.
const HEAD_BYTES: u64 = 256 * 1024;

/// The readable records in the last `max_bytes` of the journal (across its
/// rotated part), oldest first, with the records a rotation carried in
/// place of its record; when the window does not reach the current file's
/// head, that head's carried records come first all the same.
pub fn tail(path: &Path, max_bytes: u64) -> io::Result<Vec<Record>> {
    let (previous, current) = open_pair(path)?;
    let mut records = Vec::new();
    let mut wanted = max_bytes;
    let mut current_records = Vec::new();
    if let Some(mut file) = current {
        let len = file.metadata()?.len();
        current_records = tail_of(&mut file, len, wanted)?;
        if len > wanted {
            // The window starts inside the current file: its head's
            // rotated record, if any, still says what came before.
            file.seek(SeekFrom::Start(0))?;
            let mut head = Vec::new();
            io::BufReader::new((&mut file).take(HEAD_BYTES)).read_until(b'\n', &mut head)?;
            if let Ok(first) = serde_json::from_slice::<Record>(&head)
                && matches!(first.event, Event::Rotated { .. })
            {
                records.push(first);
            }
            wanted = 0;
        } else {
            wanted -= len;
        }
    }
    if wanted > 0
        && let Some(mut file) = previous
    {
        let len = file.metadata()?.len();
        records.extend(tail_of(&mut file, len, wanted)?);
    }
    records.append(&mut current_records);
    Ok(carry::expand(records))
}

/// The readable records in the last `max_bytes` of `file` (`len` long).
fn tail_of(file: &mut File, len: u64, max_bytes: u64) -> io::Result<Vec<Record>> {
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(len - start).read_to_end(&mut bytes)?;
    // Drop a partial first line when we started mid-file.
    let body = if start > 0 {
        bytes.splitn(2, |b| *b == b'\n').nth(1).unwrap_or(&[])
    } else {
        &bytes[..]
    };
    Ok(parse_lines(body))
}

/// The readable records in `bytes` (whole lines of a journal), oldest
/// first. A line in a format version newer than this build's is skipped,
/// never misread ([`too_new`] tells it).
pub(crate) fn parse_lines(bytes: &[u8]) -> Vec<Record> {
    lines(bytes)
        .filter(|line| line_version(line) <= formats::JOURNAL.current)
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

/// A line's format version (`v`; none is version 1).
fn line_version(line: &[u8]) -> u32 {
    #[derive(serde::Deserialize)]
    struct Versioned {
        #[serde(default = "formats::unversioned")]
        v: u32,
    }
    serde_json::from_slice::<Versioned>(line)
        .map(|versioned| versioned.v)
        .unwrap_or(formats::UNVERSIONED)
}

/// One record as a journal line: its format version `v`, the record, a
/// newline.
pub(crate) fn encode(record: &Record) -> io::Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        v: u32,
        #[serde(flatten)]
        record: &'a Record,
    }
    let mut line = serde_json::to_vec(&Line {
        v: formats::JOURNAL.current,
        record,
    })
    .map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// The journal's end holds a line of a newer format version than this
/// build reads (a newer vmkeep wrote it): the error that says so.
pub fn too_new(path: &Path) -> Option<formats::TooNew> {
    let (_, current) = open_pair(path).ok()?;
    let mut file = current?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(16 * 1024);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let newest = lines(&bytes).map(line_version).max()?;
    formats::JOURNAL.check(path, Some(newest)).err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::data_disk::DataDisk;
    use crate::instance::pause::PauseReason;
    use crate::stop_ladder::Step;

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
            (LastRun::Unclean, Some(&running))
        );
        let crash = rec("2", stopped(StoppedReason::Crashed));
        assert_eq!(
            last_run(&[running.clone(), crash.clone()]),
            (LastRun::Crashed, Some(&crash))
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
                    action: Repair::RemovedStaleFiles,
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
                Some(&failed[1])
            )
        );
    }

    /// `steps` stop steps appended by `append`, then a durable `stopped`
    /// (returned).
    fn steps_then_stopped(
        journal: &mut Journal,
        steps: usize,
        append: fn(&mut Journal, Event) -> io::Result<Record>,
    ) -> Event {
        for _ in 0..steps {
            append(
                journal,
                Event::StopStep {
                    step: Step::PowerButton,
                    at_secs: 0.5,
                },
            )
            .unwrap();
        }
        let stopped = Event::Stopped {
            reason: StoppedReason::Requested,
            by: Some(Step::PowerButton),
            after_secs: Some(0.2),
            qemu_exit: "exit code 0".into(),
        };
        journal.record(stopped.clone()).unwrap();
        stopped
    }

    #[test]
    fn deferred_records_are_read_at_once_and_kept_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open_capped(&path, 4096).unwrap();
        journal
            .record_deferred(Event::Starting { foreground: false })
            .unwrap();
        assert_eq!(
            last(&path).unwrap().unwrap().event,
            Event::Starting { foreground: false },
            "visible before it is synced"
        );
        journal.sync().unwrap();
        journal.sync().unwrap();
        let stopped = steps_then_stopped(&mut journal, 100, Journal::record_deferred);
        assert!(dir.path().join("events.jsonl.1").exists(), "rotated");
        assert_eq!(last(&path).unwrap().unwrap().event, stopped);
        assert!(!journal.unsynced);
    }

    #[test]
    fn records_round_trip_and_the_last_one_is_found_from_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        journal
            .record(Event::Starting { foreground: false })
            .unwrap();
        let stopped = steps_then_stopped(&mut journal, 500, Journal::record);
        let all = read_all(&path).unwrap();
        assert_eq!(all.len(), 502);
        assert_eq!(all[0].event, Event::Starting { foreground: false });
        assert_eq!(last(&path).unwrap().unwrap().event, stopped);
        assert_eq!(all[0].pid, std::process::id());
    }

    #[test]
    fn garbage_torn_lines_and_unknown_events_do_not_break_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "not json\n{\"ts\":\"t\",\"pid\":1,\"event\":\"from-the-future\",\"x\":1}\n\0\0\0\n{\"ts\":\"t\",\"pid\":2,\"event\":\"starting\",\"foreground\":true}\n{\"ts\":\"t\",\"pid\":3,\"ev",
        )
        .unwrap();
        let all = read_all(&path).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].event, Event::Unknown);
        assert_eq!(last(&path).unwrap().unwrap().pid, 2);
        assert!(last(&dir.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn kind_is_the_wire_name() {
        let events = [
            Event::Starting { foreground: true },
            Event::UncleanEnd {
                previous_pid: 1,
                last_event: "running".into(),
                last_at: "t".into(),
                qemu_survived: true,
            },
            Event::GuestRebooted {
                guest_boot_id: "b".into(),
            },
            stopped(StoppedReason::Crashed),
        ];
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.kind(), "{event:?}");
        }
    }

    #[test]
    fn wire_form_is_flat_and_kebab_case() {
        let record = Record {
            ts: "t".into(),
            pid: 1,
            event: Event::Adopted { qemu_pid: 9 },
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"ts":"t","pid":1,"event":"adopted","qemu_pid":9}"#
        );
    }

    #[test]
    fn pause_events_have_a_tagged_wire_form_and_do_not_end_the_run() {
        let paused = Event::Paused {
            reason: PauseReason::HostDiskFull {
                mount_point: "/home".into(),
                available_bytes: 4096,
            },
        };
        assert_eq!(
            serde_json::to_string(&paused).unwrap(),
            r#"{"event":"paused","reason":{"kind":"host-disk-full","mount_point":"/home","available_bytes":4096}}"#
        );
        let continued = Event::Continued {
            by: ContinueCause::SpaceFreed,
            after_secs: 2.5,
        };
        assert_eq!(
            serde_json::to_string(&continued).unwrap(),
            r#"{"event":"continued","by":"space-freed","after_secs":2.5}"#
        );
        for event in [paused, continued] {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.kind());
            assert_eq!(
                serde_json::from_value::<Event>(json).unwrap(),
                event.clone()
            );
            // A pause is part of a run, not its end.
            assert_eq!(last_run(&[rec("1", event)]).0, LastRun::Unclean);
        }
    }

    #[test]
    fn suspend_events_have_a_kebab_case_wire_form_and_a_suspend_ends_the_run() {
        let suspended = Event::Suspended {
            state_bytes: 380_948,
            ram_bytes: 268_435_456,
            secs: 0.05,
        };
        assert_eq!(
            serde_json::to_string(&suspended).unwrap(),
            r#"{"event":"suspended","state_bytes":380948,"ram_bytes":268435456,"secs":0.05}"#
        );
        let failed = Event::SuspendFailed {
            error: "no space".into(),
            fallback: SuspendFallback::KeepRunning,
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"event":"suspend-failed","error":"no space","fallback":"keep-running"}"#
        );
        for event in [
            suspended.clone(),
            failed,
            Event::Suspending {
                deadline_secs: 1.0,
                cause: SuspendCause::HostShutdown,
            },
            Event::Resuming {
                qemu_pid: 1,
                accel: "tcg".into(),
                saved_at: "t".into(),
            },
            Event::Resumed {
                qemu_pid: 1,
                secs: 0.1,
            },
            Event::GuestClockSet {
                offset_ms: -3000.0,
                uncertainty_ms: 2.0,
            },
            Event::StateDiscarded {
                reason: "asked".into(),
            },
        ] {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.kind(), "{event:?}");
            assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        }
        let run = [
            rec(
                "1",
                Event::Suspending {
                    deadline_secs: 1.0,
                    cause: SuspendCause::HostShutdown,
                },
            ),
            rec("2", suspended),
        ];
        assert_eq!(last_run(&run), (LastRun::Requested, Some(&run[1])));
        assert!(!last_run(&run).0.is_failure());
        // An agent that died mid-suspend left an unfinished run.
        assert_eq!(last_run(&run[..1]).0, LastRun::Unclean);
    }

    #[test]
    fn data_disk_events_nest_the_guest_report() {
        let record = Record {
            ts: "t".into(),
            pid: 1,
            event: Event::DataDisk {
                disk: Some(DataDisk::NoFileSystem {
                    device: "/dev/vda".into(),
                }),
            },
        };
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            text,
            r#"{"ts":"t","pid":1,"event":"data-disk","disk":{"state":"no-file-system","device":"/dev/vda"}}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
        let silent: Record =
            serde_json::from_str(r#"{"ts":"t","pid":1,"event":"data-disk"}"#).unwrap();
        assert_eq!(silent.event, Event::DataDisk { disk: None });
    }

    #[test]
    fn lines_state_their_version_and_a_newer_line_is_skipped_and_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        journal.record(Event::Adopted { qemu_pid: 9 }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"v":1,"ts":"#), "{text}");
        assert_eq!(too_new(&path), None);
        // A line without `v` (vmkeep before versions) is version 1.
        let old = r#"{"ts":"t","pid":1,"event":"adopted","qemu_pid":3}"#;
        let newer = r#"{"v":2,"ts":"t","pid":1,"event":"adopted","qemu_pid":4}"#;
        std::fs::write(&path, format!("{old}\n")).unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
        assert_eq!(too_new(&path), None);
        std::fs::write(&path, format!("{old}\n{newer}\n")).unwrap();
        let read = read_all(&path).unwrap();
        assert_eq!(read.len(), 1, "the newer line is not misread");
        assert_eq!(read[0].event, Event::Adopted { qemu_pid: 3 });
        let refused = too_new(&path).unwrap().to_string();
        assert!(refused.contains("events.jsonl version 2"), "{refused}");
        assert!(refused.contains(&path.display().to_string()), "{refused}");
    }
}
