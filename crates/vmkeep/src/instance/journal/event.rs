//! What a journal line says: a [`Record`] (when, which process) of an
//! [`Event`], and the small enums events carry (causes, reasons, repairs).
//! Each has a stable kebab-case wire form; an event kind this version does
//! not know reads as [`Event::Unknown`].

use serde::{Deserialize, Serialize};

use crate::instance::data_disk::DataDisk;
use crate::instance::pause::PauseReason;
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
    /// `vmkeep upgrade --qemu`: the state is saved, and the start that
    /// follows resumes it on the QEMU installed now (`binary`).
    QemuUpgrade {
        from: String,
        to: String,
        binary: String,
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
    /// The journal was rotated: what it held is in `events.jsonl.1`, and
    /// this first line of the new file carries the records of it that
    /// status derivation reads (see `journal::carry`), so that no rotation
    /// changes what `list`, `start`, `stop` or the daemon conclude. Readers
    /// put the carried records in its place; `vmkeep events` shows neither.
    Rotated {
        /// The size of the file moved aside.
        previous_bytes: u64,
        carried: Vec<Record>,
    },
    /// The disk was grown to a larger `disk:` before the boot (the guest
    /// grows its file system: the tiny image's /data, as the `data-disk`
    /// event after it says; a cloud image's root, by cloud-init).
    DiskGrown {
        from_bytes: u64,
        to_bytes: u64,
    },
    /// The host agent moved onto another build in place (`vmkeep upgrade`):
    /// it re-executed itself (same pid) and adopted its running QEMU and
    /// guest (same QEMU pid, same boot). Written by the new build.
    Upgraded {
        /// The builds, as `version (commit)`.
        from: String,
        to: String,
        qemu_pid: u32,
        #[serde(default)]
        guest_boot_id: Option<String>,
        steps: UpgradeSteps,
    },
    /// An upgrade in place was accepted but the agent could not re-execute
    /// (the exec failed): it runs on with the old build, nothing stopped.
    UpgradeFailed {
        to: String,
        error: String,
    },
    #[serde(other)]
    Unknown,
}

/// How long each step of an upgrade in place took (seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UpgradeSteps {
    /// The old build's check of the new binary (`--check-formats`).
    pub checked_secs: f64,
    /// From the accepted request to the new build's first instruction
    /// (draining the API, the exec).
    pub exec_secs: f64,
    /// The new build reconnecting to QEMU (QMP) and its virtiofsds.
    pub adopted_secs: f64,
    /// Then the guest agent answering again, forwards and keepers back.
    pub ready_secs: f64,
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
            Event::QemuUpgrade { .. } => "qemu-upgrade",
            Event::SharedDirLost { .. } => "shared-dir-lost",
            Event::Rotated { .. } => "rotated",
            Event::DiskGrown { .. } => "disk-grown",
            Event::Upgraded { .. } => "upgraded",
            Event::UpgradeFailed { .. } => "upgrade-failed",
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
    /// A `copyToHost` file could not be copied.
    CopyToHost,
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
