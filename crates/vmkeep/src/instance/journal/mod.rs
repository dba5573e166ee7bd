//! The per-instance event journal: `events.jsonl`, one JSON object per line,
//! appended by whoever changes the instance (the host agent, or the CLI when
//! it repairs an instance without one).
//!
//! Readers tolerate what they do not understand: a torn or garbage line is
//! skipped, an unknown event kind reads as [`Event::Unknown`].
//!
//! [`event`] says what a line holds; [`last_run`] reads how the last run
//! ended; this file writes and reads the lines.

pub mod event;
pub mod last_run;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

pub use self::event::{
    ContinueCause, Event, Record, Repair, StopCause, StoppedReason, SuspendCause, SuspendFallback,
};
pub use self::last_run::{LastRun, last_run, stop_deadline};
use crate::os;

/// Space kept allocated past the journal's end, so that events can still be
/// written when the host filesystem is full (hundreds of events).
const RESERVE: u64 = 64 * 1024;

/// Append-only writer for one instance's journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
}

impl Journal {
    pub fn open(path: &Path) -> io::Result<Journal> {
        let file = os::fs::open_append(path)?;
        // Room for the events of a host disk that fills up meanwhile: a VM
        // paused because the disk is full, its stop. Best effort.
        os::fs::reserve_after_end(&file, RESERVE);
        Ok(Journal { file })
    }

    /// Append one event as a single line and make it durable.
    pub fn record(&mut self, event: Event) -> io::Result<Record> {
        let record = Record {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            pid: std::process::id(),
            event,
        };
        let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        os::fs::reserve_after_end(&self.file, RESERVE);
        Ok(record)
    }
}

/// Every readable record, oldest first. A missing journal is empty.
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse_lines(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The last readable record, reading only the end of the file.
pub fn last(path: &Path) -> io::Result<Option<Record>> {
    Ok(tail(path, 16 * 1024)?.pop())
}

/// How much of a journal's end tells how its last run ended.
pub const LAST_RUN_BYTES: u64 = 64 * 1024;

/// The readable records in the last `max_bytes` of the file, oldest first.
pub fn tail(path: &Path, max_bytes: u64) -> io::Result<Vec<Record>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut bytes)?;
    // Drop a partial first line when we started mid-file.
    let body = if start > 0 {
        bytes.splitn(2, |b| *b == b'\n').nth(1).unwrap_or(&[])
    } else {
        &bytes[..]
    };
    Ok(parse_lines(body))
}

/// The readable records in `bytes` (whole lines of a journal), oldest first.
pub(crate) fn parse_lines(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
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

    #[test]
    fn records_round_trip_and_the_last_one_is_found_from_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        journal
            .record(Event::Starting { foreground: false })
            .unwrap();
        for _ in 0..500 {
            journal
                .record(Event::StopStep {
                    step: Step::PowerButton,
                    at_secs: 0.5,
                })
                .unwrap();
        }
        let stopped = Event::Stopped {
            reason: StoppedReason::Requested,
            by: Some(Step::PowerButton),
            after_secs: Some(0.2),
            qemu_exit: "exit code 0".into(),
        };
        journal.record(stopped.clone()).unwrap();
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
}
