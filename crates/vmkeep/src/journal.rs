//! The per-instance event journal: `events.jsonl`, one JSON object per line,
//! appended by whoever changes the instance (the host agent, or the CLI when
//! it repairs an instance without one).
//!
//! Readers tolerate what they do not understand: a torn or garbage line is
//! skipped, an unknown event kind reads as [`Event::Unknown`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::os;
use crate::stop_ladder::Step;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC timestamp with milliseconds.
    pub ts: String,
    /// The process that wrote it.
    pub pid: u32,
    #[serde(flatten)]
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A host agent took the instance's lock.
    Starting {
        foreground: bool,
    },
    /// Something left by an earlier crash was put right.
    Repaired {
        action: Repair,
        detail: String,
    },
    /// A QEMU left running by a dead host agent is supervised again.
    Adopted {
        qemu_pid: u32,
    },
    /// QEMU was launched.
    Booting {
        qemu_pid: u32,
        accel: String,
    },
    /// The guest agent reported ready.
    Running {
        qemu_pid: u32,
        guest_boot_id: String,
        boot_secs: f64,
    },
    /// The guest restarted inside the same QEMU (a `reboot` inside it) and
    /// its agent is ready again.
    GuestRebooted {
        guest_boot_id: String,
    },
    StartFailed {
        error: String,
    },
    Stopping {
        cause: StopCause,
        deadline_secs: f64,
        force: bool,
    },
    /// One rung of the stop ladder was taken.
    StopStep {
        step: Step,
        at_secs: f64,
    },
    /// QEMU is gone and the instance's runtime files are cleaned up.
    Stopped {
        reason: StoppedReason,
        /// The last ladder step taken before QEMU exited, if a stop was asked.
        #[serde(default)]
        by: Option<Step>,
        #[serde(default)]
        after_secs: Option<f64>,
        qemu_exit: String,
    },
    /// `vmkeep daemon` is about to start the instance again (its policy says so).
    Restarting {
        attempt: u32,
        /// What ended the previous run.
        after: String,
        backoff_secs: f64,
    },
    /// `vmkeep daemon` stopped restarting: too many failed starts in a row.
    GaveUp {
        failures: u32,
        within_secs: f64,
        last_error: String,
    },
    #[serde(other)]
    Unknown,
}

/// Repairs that `start` (or `stop`) makes by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repair {
    /// Runtime files of a dead agent or QEMU were removed.
    RemovedStaleFiles,
    /// A QEMU that did not answer QMP was killed before starting afresh.
    KilledUnresponsiveQemu,
    /// A host agent that did not answer its API was killed.
    KilledUnresponsiveAgent,
}

/// Why a stop began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopCause {
    /// `vmkeep stop` (through the API).
    Request,
    /// SIGTERM, SIGINT or SIGHUP to the host agent (service manager, Ctrl-C, host shutdown).
    Signal,
    /// The guest did not become ready in time.
    BootTimeout,
}

/// Why the VM is no longer running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoppedReason {
    /// Stopped because it was asked to (command, signal).
    Requested,
    /// The guest powered itself off.
    GuestPoweroff,
    /// QEMU died without being asked (killed, crashed).
    Crashed,
    /// The start failed and the VM was stopped.
    StartFailed,
}

/// Append-only writer for one instance's journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
}

impl Journal {
    pub fn open(path: &Path) -> io::Result<Journal> {
        Ok(Journal {
            file: os::fs::open_append(path)?,
        })
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
}
