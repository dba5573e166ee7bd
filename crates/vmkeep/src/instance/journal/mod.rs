//! The per-instance event journal: `events.jsonl`, one JSON object per line,
//! appended by whoever changes the instance (the host agent, or the CLI when
//! it repairs an instance without one).
//!
//! Readers tolerate what they do not understand: a torn or garbage line is
//! skipped, an unknown event kind reads as [`Event::Unknown`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::instance::data_disk::DataDisk;
use crate::instance::pause::PauseReason;
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
    /// The previous run ended without a `stopped` record: its host agent
    /// died (killed, or the host lost power). Written by the next host agent
    /// when it notices.
    UncleanEnd {
        /// The host agent of that run.
        previous_pid: u32,
        /// The last thing that run journaled, and when.
        last_event: String,
        last_at: String,
        /// Its QEMU was still running (and is adopted); else it died too.
        qemu_survived: bool,
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
    /// The guest agent reported ready. `boot_secs` counts from QEMU's
    /// launch (for a resume: to the resumed guest's agent answering).
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
    /// What the guest made of the data disk at a boot (tiny image): mounted
    /// (formatted or repaired first, if so), or why not. A start refused
    /// for its data disk ends with this event, after `stopped`, so that
    /// `list` shows the reason until the next start.
    DataDisk {
        /// `None`: the guest said nothing of it and did not mount /data.
        #[serde(default)]
        disk: Option<DataDisk>,
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
    /// A suspend began: the guest is paused and its state is being saved.
    Suspending {
        deadline_secs: f64,
        #[serde(default)]
        cause: SuspendCause,
    },
    /// The VM's state is saved in the instance directory and QEMU is gone;
    /// the next start resumes it. Ends the run, as `stopped` does.
    Suspended {
        /// Size of the device state written (the RAM stays in its file).
        state_bytes: u64,
        /// Size of the guest's RAM file kept with it.
        ram_bytes: u64,
        /// From the guest's pause to the state being durable.
        secs: f64,
    },
    /// A suspend did not happen, and nothing of it was kept; `fallback`
    /// says whether the VM runs on or is being stopped instead.
    SuspendFailed {
        error: String,
        fallback: SuspendFallback,
    },
    /// QEMU was launched to resume a saved state instead of booting.
    Resuming {
        qemu_pid: u32,
        accel: String,
        /// When the state was saved (from its record).
        saved_at: String,
    },
    /// The saved state is loaded and the guest runs again; the state is
    /// used up (the guest changes its RAM from now on). `running` follows
    /// once the guest agent answers.
    Resumed {
        qemu_pid: u32,
        /// From QEMU's launch to the guest running.
        secs: f64,
    },
    /// QEMU paused the guest by itself (a disk write that did not fit, a
    /// disk error, a panic, ...): it is `Paused` until continued.
    Paused {
        reason: PauseReason,
    },
    /// The paused guest runs again.
    Continued {
        by: ContinueCause,
        /// How long it was paused.
        after_secs: f64,
    },
    /// The host agent stepped the guest's wall clock to the host's.
    GuestClockSet {
        /// How far off the guest was (guest minus host).
        offset_ms: f64,
        /// How precisely that was measured (half the best round trip).
        uncertainty_ms: f64,
    },
    /// A saved state was deleted without being resumed.
    StateDiscarded {
        reason: String,
    },
    /// The virtiofsd of a shared directory ended while QEMU runs: the
    /// guest's mount of it fails until the VM restarts (QEMU 7.2's
    /// vhost-user-fs device does not reconnect).
    SharedDirLost {
        index: usize,
        /// The share, as `LOCATION on MOUNT_POINT (read-only|writable)`.
        share: String,
        /// How its virtiofsd ended, if known.
        exit: String,
    },
    #[serde(other)]
    Unknown,
}

/// Who let a paused guest run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContinueCause {
    /// The host agent, once the host's disk had room again.
    SpaceFreed,
    /// `vmkeep start` (the API's continue).
    Start,
    /// A stop, so that the guest can power off by its ladder.
    Stop,
    /// Someone else (another QMP client).
    Other,
}

/// Why a VM is being suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendCause {
    /// `vmkeep suspend` (or the API) asked for it.
    #[default]
    Request,
    /// The host is shutting down and the instance says `onHostShutdown: suspend`.
    HostShutdown,
}

/// What a failed suspend does with the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendFallback {
    /// The VM runs on, as before the attempt.
    #[default]
    KeepRunning,
    /// The VM is stopped by the stop ladder (what a host shutdown needs).
    Stop,
}

impl Event {
    /// The event's name as written in the journal (`"running"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Starting { .. } => "starting",
            Event::Repaired { .. } => "repaired",
            Event::UncleanEnd { .. } => "unclean-end",
            Event::Adopted { .. } => "adopted",
            Event::Booting { .. } => "booting",
            Event::Running { .. } => "running",
            Event::GuestRebooted { .. } => "guest-rebooted",
            Event::StartFailed { .. } => "start-failed",
            Event::DataDisk { .. } => "data-disk",
            Event::Stopping { .. } => "stopping",
            Event::StopStep { .. } => "stop-step",
            Event::Stopped { .. } => "stopped",
            Event::Restarting { .. } => "restarting",
            Event::GaveUp { .. } => "gave-up",
            Event::Suspending { .. } => "suspending",
            Event::Suspended { .. } => "suspended",
            Event::SuspendFailed { .. } => "suspend-failed",
            Event::Resuming { .. } => "resuming",
            Event::Resumed { .. } => "resumed",
            Event::Paused { .. } => "paused",
            Event::Continued { .. } => "continued",
            Event::GuestClockSet { .. } => "guest-clock-set",
            Event::StateDiscarded { .. } => "state-discarded",
            Event::SharedDirLost { .. } => "shared-dir-lost",
            Event::Unknown => "unknown",
        }
    }
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
    /// An adopted QEMU was paused (its host agent died while saving or
    /// resuming its state): it was let run again, and any saved state of
    /// it discarded, since the running guest no longer matches it.
    ContinuedPausedQemu,
    /// An adopted QEMU was still waiting for a saved state (its host agent
    /// died while resuming): it was ended, the state kept for this resume.
    EndedWaitingQemu,
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
    /// The guest came up without its data disk mounted at /data.
    DataDisk,
    /// A suspend failed and the request said to stop instead.
    SuspendFailed,
    /// The guest could not mount a shared directory (`mounts:`).
    SharedDir,
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
            | Event::SharedDirLost { .. } => LastRun::Unclean,
            Event::StateDiscarded { .. }
            | Event::StartFailed { .. }
            | Event::UncleanEnd { .. }
            | Event::DataDisk { .. }
            | Event::Repaired { .. }
            | Event::Restarting { .. }
            | Event::Unknown => continue,
        };
        return (ended, Some(record));
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

#[cfg(test)]
mod tests {
    use super::*;

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
