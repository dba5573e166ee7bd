//! Instance status: derived, never stored. [`derive()`] is a pure function of
//! [`Observations`]; `instance::observe` gathers them.

use serde::Serialize;

use crate::instance::data_disk::DataDiskProblem;
use crate::instance::journal::{Event, Record};
use crate::instance::pause::PauseReason;

/// What was seen when looking at an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    pub config: ConfigState,
    pub disk_present: bool,
    /// The process holding the host agent's lock, if any.
    pub agent_pid: Option<u32>,
    /// That process is stopped (SIGSTOP, a debugger): it answers nothing.
    pub agent_frozen: bool,
    /// The process holding QEMU's pid-file lock, if any.
    pub qemu_pid: Option<u32>,
    /// Runtime files present in the instance directory (names).
    pub runtime_files: Vec<String>,
    /// The journal's last record.
    pub last_event: Option<Record>,
    /// The service manager gave up on the unit that runs it (asked only when
    /// nothing runs and the last run failed).
    pub service_failure: Option<UnitFailure>,
    /// Shared directories whose virtiofsd is gone (its `fsN.pid` lock is
    /// free) while QEMU runs, as their lock files describe them.
    pub shares_lost: Vec<String>,
    /// A saved state (`vmkeep suspend`) waits to be resumed.
    pub saved_state: bool,
    /// The QEMU binary that runs was replaced (or removed) on disk since
    /// QEMU started: its path. Not a status (the VM runs on, on the old
    /// code); `list` says so, and `vmkeep upgrade --qemu` moves it.
    pub qemu_replaced: Option<std::path::PathBuf>,
    /// A file of the instance is in a format version newer than this build
    /// reads (`crate::formats`): why, with the fix.
    pub too_new: Option<String>,
}

/// A registered unit that systemd gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFailure {
    pub unit: String,
    /// systemd's `Result` of the last run (`exit-code`, `signal`, ...).
    pub result: String,
    /// How often keep-alive restarted it before giving up.
    pub restarts: u32,
    /// `journalctl` flags naming the manager (`--user`, or nothing).
    pub journal_flag: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigState {
    Valid,
    Missing,
    Invalid { message: String },
}

/// The phase a live host agent is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    Running,
    /// QEMU paused the guest by itself (see `instance::pause`).
    Paused,
    Stopping,
}

/// The status of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Stopped,
    /// Not running, its state saved (`vmkeep suspend`): `start` resumes it.
    Suspended,
    Starting,
    Running,
    /// It runs, but QEMU paused the guest by itself (a full host disk, a
    /// disk error, ...): nothing in it moves until it is continued.
    Paused(PauseReason),
    Stopping,
    Broken(Broken),
}

/// Why an instance is broken. Each reason knows its message, its hint and
/// whether `start` may repair it by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    ConfigMissing,
    ConfigInvalid {
        message: String,
    },
    DiskMissing,
    /// QEMU runs but no host agent supervises it (the agent died).
    OrphanedQemu {
        qemu_pid: u32,
    },
    /// Runtime files of a process that is gone.
    StaleRuntimeFiles {
        files: Vec<String>,
    },
    /// The host agent holds its lock but its API does not answer.
    AgentUnresponsive {
        agent_pid: u32,
        error: String,
    },
    /// The host agent says running but QEMU is gone (it is about to notice).
    QemuGone {
        agent_pid: u32,
    },
    /// systemd stopped restarting its unit (keep-alive hit the start limit).
    ServiceGaveUp {
        failure: UnitFailure,
    },
    /// `vmkeep daemon` gave up restarting it after repeated failures.
    GaveUp {
        failures: u32,
        last_error: String,
    },
    /// The last start failed because the guest could not mount /data (the
    /// disk is damaged, unmountable, missing, ...); nothing was changed on it.
    DataDisk {
        problem: DataDiskProblem,
    },
    /// The VM runs, but the virtiofsd of a shared directory is gone: the
    /// guest's mount of it fails until the VM restarts.
    SharedDirsLost {
        mounts: Vec<String>,
    },
    /// A newer vmkeep wrote a file of the instance in a format this one
    /// does not read (`crate::formats::TooNew`): nothing of it is misread.
    FormatTooNew {
        message: String,
        /// Its host agent or QEMU runs (a newer agent, most likely).
        live: bool,
    },
}

impl Broken {
    /// A stable identifier, for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            Broken::ConfigMissing => "config-missing",
            Broken::ConfigInvalid { .. } => "config-invalid",
            Broken::DiskMissing => "disk-missing",
            Broken::OrphanedQemu { .. } => "orphaned-qemu",
            Broken::StaleRuntimeFiles { .. } => "stale-runtime-files",
            Broken::AgentUnresponsive { .. } => "agent-unresponsive",
            Broken::QemuGone { .. } => "qemu-gone",
            Broken::ServiceGaveUp { .. } => "service-gave-up",
            Broken::GaveUp { .. } => "gave-up",
            Broken::DataDisk { .. } => "data-disk",
            Broken::SharedDirsLost { .. } => "shared-dirs-lost",
            Broken::FormatTooNew { .. } => "format-too-new",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Broken::ConfigMissing => "the instance has no config file (vmkeep.yaml)".into(),
            Broken::ConfigInvalid { message } => format!("the config is invalid: {message}"),
            Broken::DiskMissing => "the data disk (disk.qcow2) is missing".into(),
            Broken::OrphanedQemu { qemu_pid } => {
                format!("QEMU (pid {qemu_pid}) runs without its host agent")
            }
            Broken::StaleRuntimeFiles { files } => {
                format!("left over from an unclean exit: {}", files.join(", "))
            }
            Broken::AgentUnresponsive { agent_pid, error } => {
                format!("the host agent (pid {agent_pid}) does not answer: {error}")
            }
            Broken::QemuGone { agent_pid } => {
                format!("QEMU is gone while its host agent (pid {agent_pid}) still runs")
            }
            Broken::ServiceGaveUp { failure } => format!(
                "systemd gave up on its unit {} after {} restarts (last result: {})",
                failure.unit, failure.restarts, failure.result
            ),
            Broken::GaveUp {
                failures,
                last_error,
            } => format!(
                "the daemon stopped restarting it after {failures} failed starts; last: {last_error}"
            ),
            Broken::DataDisk { problem } => problem.message(),
            Broken::FormatTooNew { message, .. } => message.clone(),
            Broken::SharedDirsLost { mounts } => format!(
                "it runs, but the virtiofsd of {} is gone: the guest cannot read or write {} until the VM restarts",
                mounts.join(", "),
                if mounts.len() == 1 { "it" } else { "them" }
            ),
        }
    }

    pub fn hint(&self) -> String {
        match self {
            Broken::ConfigMissing => {
                "recreate it: `vmkeep delete NAME && vmkeep create NAME`".into()
            }
            Broken::ConfigInvalid { .. } => {
                "fix the field named in the message in vmkeep.yaml".into()
            }
            Broken::DiskMissing => "restore disk.qcow2, or recreate the instance".into(),
            Broken::OrphanedQemu { .. } => {
                "`vmkeep start NAME` adopts it without rebooting the guest".into()
            }
            Broken::StaleRuntimeFiles { .. } => {
                "`vmkeep start NAME` removes them and starts".into()
            }
            Broken::AgentUnresponsive { .. } => {
                "`vmkeep start NAME` replaces it (the VM keeps running); `vmkeep stop NAME` replaces it and stops the VM by its ladder".into()
            }
            Broken::ServiceGaveUp { failure } => format!(
                "see `vmkeep events NAME` and `journalctl{} -u {}`, fix the cause, then `vmkeep start NAME` (it clears the failure)",
                failure.journal_flag, failure.unit
            ),
            Broken::GaveUp { .. } => {
                "see `vmkeep events NAME`, fix the cause, then `vmkeep start NAME`".into()
            }
            Broken::QemuGone { .. } => {
                "the host agent cleans up within a moment; then start again".into()
            }
            Broken::DataDisk { problem } => problem.hint(),
            Broken::FormatTooNew { .. } => {
                "use the newer vmkeep that wrote it (`vmkeep --version` says which this one is)".into()
            }
            Broken::SharedDirsLost { .. } => {
                "restart it: `vmkeep stop NAME && vmkeep start NAME` (QEMU cannot reconnect a shared directory); its log is fsN.log in the instance directory".into()
            }
        }
    }

    /// Whether a process of the instance may be alive in this state.
    pub fn has_live_processes(&self) -> bool {
        match self {
            Broken::OrphanedQemu { .. }
            | Broken::AgentUnresponsive { .. }
            | Broken::QemuGone { .. }
            | Broken::SharedDirsLost { .. } => true,
            Broken::FormatTooNew { live, .. } => *live,
            Broken::ConfigMissing
            | Broken::ConfigInvalid { .. }
            | Broken::DiskMissing
            | Broken::StaleRuntimeFiles { .. }
            | Broken::ServiceGaveUp { .. }
            | Broken::GaveUp { .. }
            | Broken::DataDisk { .. } => false,
        }
    }

    /// Whether `start` repairs this by itself. (A data-disk problem needs
    /// the user's choice; a plain `start` still boots and the guest looks at
    /// the disk again, changing nothing on it.)
    pub fn repairable(&self) -> bool {
        match self {
            Broken::ConfigMissing
            | Broken::ConfigInvalid { .. }
            | Broken::DiskMissing
            | Broken::DataDisk { .. }
            | Broken::SharedDirsLost { .. }
            | Broken::FormatTooNew { .. } => false,
            Broken::OrphanedQemu { .. }
            | Broken::StaleRuntimeFiles { .. }
            | Broken::AgentUnresponsive { .. }
            | Broken::QemuGone { .. }
            | Broken::ServiceGaveUp { .. }
            | Broken::GaveUp { .. } => true,
        }
    }
}

/// What `start` does in a status. Every status has a decision here, so a
/// new status or reason gets one or a compiler error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    /// Run a host agent: it boots the VM, or adopts the QEMU that runs, and
    /// clears what dead processes left.
    Boot,
    /// Kill the host agent that does not answer (found by its lock), then
    /// boot: the new agent adopts its QEMU.
    ReplaceFrozenAgent,
    /// Nothing to do: it runs.
    AlreadyRunning,
    /// Another host agent is starting it: wait until it runs.
    WaitUntilRunning,
    /// Its host agent is stopping it: wait until it is stopped, then boot.
    WaitForStop,
    /// Its host agent is cleaning up after QEMU exited: wait, then boot.
    WaitForCleanup,
    /// QEMU paused it: ask its host agent to let it run on (refused, with
    /// the reason, while the cause lasts).
    ContinuePaused,
    /// Needs a human (config, disk): refuse, with the reason and the fix.
    Refuse,
}

/// What `stop` does in a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPlan {
    /// Nothing runs.
    NothingToStop,
    /// Nothing runs, but a dead process left runtime files: remove them.
    RemoveStaleFiles,
    /// Ask the host agent (API, else SIGTERM) and wait for it.
    AskAgent,
    /// A saved state waits: resume it, so that the guest powers off by its
    /// own ladder (flushing what it holds in memory), rather than throw its
    /// memory away. (`--force` discards the state instead.)
    ResumeToStop,
    /// QEMU runs without an agent: adopt it here and run the ladder.
    AdoptAndStop,
    /// The agent does not answer: kill it (by its lock), adopt its QEMU and
    /// run the ladder, so the guest still gets its power button.
    ReplaceFrozenAgent,
}

/// What `edit` (and the edit flags of `start`) may do to the config in a
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditPlan {
    /// Nothing runs: write the config; the next start applies it.
    Write,
    /// A saved state waits: write only a config it can still be resumed
    /// with (its machine: CPUs, memory, devices).
    WriteIfSavedStateAccepts,
    /// Its processes run (or may): a change applies only at a start, so it
    /// is refused, or saved and applied by a restart when asked.
    Live,
}

/// What `restart` does in a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPlan {
    /// Stop it by its ladder, then start it.
    StopThenStart,
    /// Nothing runs: start it.
    Start,
    /// It could not start again (its config or disk needs a human): refuse
    /// before stopping anything.
    Refuse,
}

/// What `clone` may do with an instance as its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClonePlan {
    /// Nothing runs and no saved state waits: copy it.
    Copy,
    /// A saved state waits: its memory would resume as a second copy of a
    /// running guest (same identity, same half-written files).
    RefuseSuspended,
    /// It runs (or may): its disk is in use.
    RefuseLive,
    /// Its config or disk is missing or invalid: nothing whole to copy.
    RefuseBroken,
}

impl Status {
    /// What `edit` may do now.
    pub fn edit_plan(&self) -> EditPlan {
        match self {
            Status::Stopped => EditPlan::Write,
            Status::Suspended => EditPlan::WriteIfSavedStateAccepts,
            Status::Starting | Status::Running | Status::Paused(_) | Status::Stopping => {
                EditPlan::Live
            }
            // An invalid or missing config is what an edit fixes.
            Status::Broken(broken) if broken.has_live_processes() => EditPlan::Live,
            Status::Broken(_) => EditPlan::Write,
        }
    }

    /// What `restart` does now.
    pub fn restart_plan(&self) -> RestartPlan {
        match self {
            Status::Stopped => RestartPlan::Start,
            // A restart boots afresh: the saved guest powers off first.
            Status::Suspended
            | Status::Starting
            | Status::Running
            | Status::Paused(_)
            | Status::Stopping => RestartPlan::StopThenStart,
            Status::Broken(broken) => match broken {
                Broken::ConfigMissing
                | Broken::ConfigInvalid { .. }
                | Broken::DiskMissing
                | Broken::FormatTooNew { .. } => RestartPlan::Refuse,
                // A stop ends what runs; the start after it is a plain one
                // (a lost shared directory is what a restart fixes).
                Broken::OrphanedQemu { .. }
                | Broken::AgentUnresponsive { .. }
                | Broken::QemuGone { .. }
                | Broken::SharedDirsLost { .. } => RestartPlan::StopThenStart,
                Broken::StaleRuntimeFiles { .. }
                | Broken::ServiceGaveUp { .. }
                | Broken::GaveUp { .. }
                | Broken::DataDisk { .. } => RestartPlan::Start,
            },
        }
    }

    /// Whether the instance can be the source of a `clone` now.
    pub fn clone_plan(&self) -> ClonePlan {
        match self {
            Status::Stopped => ClonePlan::Copy,
            Status::Suspended => ClonePlan::RefuseSuspended,
            Status::Starting | Status::Running | Status::Paused(_) | Status::Stopping => {
                ClonePlan::RefuseLive
            }
            Status::Broken(broken) => match broken {
                Broken::ConfigMissing
                | Broken::ConfigInvalid { .. }
                | Broken::DiskMissing
                | Broken::FormatTooNew { .. } => ClonePlan::RefuseBroken,
                Broken::OrphanedQemu { .. }
                | Broken::AgentUnresponsive { .. }
                | Broken::QemuGone { .. }
                | Broken::SharedDirsLost { .. } => ClonePlan::RefuseLive,
                // Nothing runs: a damaged data disk is copied as it is (a
                // copy before a repair is a reasonable wish).
                Broken::StaleRuntimeFiles { .. }
                | Broken::ServiceGaveUp { .. }
                | Broken::GaveUp { .. }
                | Broken::DataDisk { .. } => ClonePlan::Copy,
            },
        }
    }
}

impl Status {
    pub fn start_plan(&self) -> StartPlan {
        match self {
            // The host agent resumes a saved state by itself.
            Status::Stopped | Status::Suspended => StartPlan::Boot,
            Status::Starting => StartPlan::WaitUntilRunning,
            Status::Running => StartPlan::AlreadyRunning,
            Status::Paused(_) => StartPlan::ContinuePaused,
            Status::Stopping => StartPlan::WaitForStop,
            Status::Broken(broken) => match broken {
                // A restart is the user's call: its guest runs.
                Broken::ConfigMissing
                | Broken::ConfigInvalid { .. }
                | Broken::DiskMissing
                | Broken::SharedDirsLost { .. }
                | Broken::FormatTooNew { .. } => StartPlan::Refuse,
                Broken::AgentUnresponsive { .. } => StartPlan::ReplaceFrozenAgent,
                Broken::QemuGone { .. } => StartPlan::WaitForCleanup,
                // The guest looks at the data disk again (and changes nothing
                // on it unless asked to repair it): a disk restored meanwhile
                // just works.
                Broken::DataDisk { .. }
                | Broken::OrphanedQemu { .. }
                | Broken::StaleRuntimeFiles { .. }
                | Broken::ServiceGaveUp { .. }
                | Broken::GaveUp { .. } => StartPlan::Boot,
            },
        }
    }

    pub fn stop_plan(&self) -> StopPlan {
        match self {
            Status::Stopped => StopPlan::NothingToStop,
            Status::Suspended => StopPlan::ResumeToStop,
            // A paused guest is continued by its agent for the ladder.
            Status::Starting | Status::Running | Status::Paused(_) | Status::Stopping => {
                StopPlan::AskAgent
            }
            Status::Broken(broken) => match broken {
                Broken::StaleRuntimeFiles { .. } => StopPlan::RemoveStaleFiles,
                Broken::OrphanedQemu { .. } => StopPlan::AdoptAndStop,
                Broken::AgentUnresponsive { .. } => StopPlan::ReplaceFrozenAgent,
                Broken::QemuGone { .. } | Broken::SharedDirsLost { .. } => StopPlan::AskAgent,
                // A newer agent still takes a stop by its API (version 1's
                // route, which every version keeps).
                Broken::FormatTooNew { live: true, .. } => StopPlan::AskAgent,
                Broken::FormatTooNew { live: false, .. } => StopPlan::NothingToStop,
                Broken::ConfigMissing
                | Broken::ConfigInvalid { .. }
                | Broken::DiskMissing
                | Broken::DataDisk { .. }
                | Broken::ServiceGaveUp { .. }
                | Broken::GaveUp { .. } => StopPlan::NothingToStop,
            },
        }
    }

    /// Whether commands can run in the guest (`shell`, exec): also in a VM
    /// that lost a shared directory, whose guest runs.
    pub fn can_exec(&self) -> bool {
        matches!(
            self,
            Status::Running | Status::Broken(Broken::SharedDirsLost { .. })
        )
    }

    /// Whether `suspend` can save its state now.
    pub fn can_suspend(&self) -> bool {
        matches!(self, Status::Running)
    }
}

impl Status {
    /// Whether a process of the instance (its host agent or QEMU) may be
    /// alive: what `stop` must end and `delete` must not leave behind.
    pub fn has_live_processes(&self) -> bool {
        match self {
            Status::Stopped | Status::Suspended => false,
            Status::Starting | Status::Running | Status::Paused(_) | Status::Stopping => true,
            Status::Broken(broken) => broken.has_live_processes(),
        }
    }

    /// The word `list` shows.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Stopped => "Stopped",
            Status::Suspended => "Suspended",
            Status::Starting => "Starting",
            Status::Running => "Running",
            Status::Paused(_) => "Paused",
            Status::Stopping => "Stopping",
            Status::Broken(_) => "Broken",
        }
    }
}

/// Derive the status from what was observed.
pub fn derive(seen: &Observations) -> Status {
    if let Some(message) = &seen.too_new {
        return Status::Broken(Broken::FormatTooNew {
            message: message.clone(),
            live: seen.agent_pid.is_some() || seen.qemu_pid.is_some(),
        });
    }
    match (seen.agent_pid, seen.qemu_pid) {
        (Some(agent_pid), _) if seen.agent_frozen => Status::Broken(Broken::AgentUnresponsive {
            agent_pid,
            error: "it is stopped (SIGSTOP, or a debugger holds it)".into(),
        }),
        (Some(agent_pid), qemu_pid) => {
            let last = seen.last_event.as_ref();
            match phase_from_journal(last, agent_pid) {
                Phase::Running | Phase::Paused if qemu_pid.is_none() => {
                    Status::Broken(Broken::QemuGone { agent_pid })
                }
                Phase::Running if !seen.shares_lost.is_empty() => {
                    Status::Broken(Broken::SharedDirsLost {
                        mounts: seen.shares_lost.clone(),
                    })
                }
                Phase::Starting => Status::Starting,
                Phase::Running => Status::Running,
                Phase::Paused => Status::Paused(pause_reason(last)),
                Phase::Stopping => Status::Stopping,
            }
        }
        (None, Some(qemu_pid)) => Status::Broken(Broken::OrphanedQemu { qemu_pid }),
        (None, None) => match &seen.config {
            ConfigState::Missing => Status::Broken(Broken::ConfigMissing),
            ConfigState::Invalid { message } => Status::Broken(Broken::ConfigInvalid {
                message: message.clone(),
            }),
            ConfigState::Valid if !seen.disk_present => Status::Broken(Broken::DiskMissing),
            ConfigState::Valid if !seen.runtime_files.is_empty() => {
                Status::Broken(Broken::StaleRuntimeFiles {
                    files: seen.runtime_files.clone(),
                })
            }
            ConfigState::Valid if seen.saved_state => Status::Suspended,
            ConfigState::Valid if seen.service_failure.is_some() => {
                Status::Broken(Broken::ServiceGaveUp {
                    failure: seen.service_failure.clone().expect("checked"),
                })
            }
            ConfigState::Valid => match seen.last_event.as_ref().map(|r| &r.event) {
                Some(Event::GaveUp {
                    failures,
                    last_error,
                    ..
                }) => Status::Broken(Broken::GaveUp {
                    failures: *failures,
                    last_error: last_error.clone(),
                }),
                Some(Event::DataDisk { disk }) => {
                    match DataDiskProblem::in_report(disk.as_ref(), None) {
                        Some(problem) => Status::Broken(Broken::DataDisk { problem }),
                        None => Status::Stopped,
                    }
                }
                _ => Status::Stopped,
            },
        },
    }
}

/// The reason of the `paused` record the journal ends with.
fn pause_reason(last: Option<&Record>) -> PauseReason {
    match last.map(|r| &r.event) {
        Some(Event::Paused { reason }) => reason.clone(),
        _ => PauseReason::Other {
            run_state: "unknown".into(),
        },
    }
}

/// The phase of a live agent, from the last thing it wrote. An agent that has
/// written nothing yet is starting.
fn phase_from_journal(last: Option<&Record>, agent_pid: u32) -> Phase {
    let Some(record) = last.filter(|r| r.pid == agent_pid) else {
        return Phase::Starting;
    };
    match &record.event {
        Event::Paused { .. } => Phase::Paused,
        Event::Running { .. }
        | Event::Continued { .. }
        | Event::GuestRebooted { .. }
        | Event::GuestClockSet { .. }
        | Event::SharedDirLost { .. }
        | Event::Upgraded { .. }
        | Event::UpgradeFailed { .. }
        // A failed suspend leaves the VM running (or a stop follows).
        | Event::SuspendFailed { .. } => Phase::Running,
        // A refused data disk is journaled after the VM stopped.
        Event::DataDisk { disk } if DataDiskProblem::in_report(disk.as_ref(), None).is_some() => {
            Phase::Stopping
        }
        Event::Stopping { .. }
        | Event::StopStep { .. }
        | Event::Stopped { .. }
        | Event::StartFailed { .. }
        | Event::Suspending { .. }
        | Event::Suspended { .. } => Phase::Stopping,
        Event::Starting { .. }
        | Event::Resuming { .. }
        | Event::Resumed { .. }
        | Event::StateDiscarded { .. }
        | Event::Repaired { .. }
        | Event::Adopted { .. }
        | Event::UncleanEnd { .. }
        | Event::Booting { .. }
        | Event::Restarting { .. }
        | Event::QemuUpgrade { .. }
        | Event::GaveUp { .. }
        | Event::DataDisk { .. }
        | Event::Rotated { .. }
        | Event::DiskGrown { .. }
        | Event::Unknown => Phase::Starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::data_disk::DataDisk;
    use crate::instance::journal::{StopCause, StoppedReason};
    use crate::stop_ladder::Step;

    fn stopped_instance() -> Observations {
        Observations {
            config: ConfigState::Valid,
            disk_present: true,
            agent_pid: None,
            agent_frozen: false,
            qemu_pid: None,
            runtime_files: vec![],
            last_event: None,
            service_failure: None,
            shares_lost: vec![],
            saved_state: false,
            qemu_replaced: None,
            too_new: None,
        }
    }

    #[test]
    fn a_file_of_a_newer_format_is_broken_whatever_runs_and_only_a_live_one_is_stopped() {
        for (agent_pid, qemu_pid, live) in [
            (None, None, false),
            (Some(10), Some(20), true),
            (None, Some(20), true),
        ] {
            let seen = Observations {
                agent_pid,
                qemu_pid,
                last_event: record(10, running_event()),
                too_new: Some("events.jsonl is in version 2".into()),
                ..stopped_instance()
            };
            let status = derive(&seen);
            let Status::Broken(broken @ Broken::FormatTooNew { .. }) = &status else {
                panic!("{status:?}");
            };
            assert_eq!(broken.code(), "format-too-new");
            assert_eq!(broken.message(), "events.jsonl is in version 2");
            assert!(!broken.repairable());
            assert_eq!(status.has_live_processes(), live);
            assert_eq!(status.start_plan(), StartPlan::Refuse);
            assert_eq!(status.restart_plan(), RestartPlan::Refuse);
            assert_eq!(
                status.stop_plan(),
                if live {
                    StopPlan::AskAgent
                } else {
                    StopPlan::NothingToStop
                }
            );
        }
    }

    fn record(pid: u32, event: Event) -> Option<Record> {
        Some(Record {
            ts: "t".into(),
            pid,
            event,
        })
    }

    fn no_fs() -> DataDisk {
        DataDisk::NoFileSystem {
            device: "/dev/vda".into(),
        }
    }

    fn unmountable() -> DataDisk {
        DataDisk::MountFailed {
            device: "/dev/vda".into(),
            error: "Structure needs cleaning (os error 117)".into(),
        }
    }

    fn mounted() -> DataDisk {
        DataDisk::Mounted {
            mount: "/data".into(),
            formatted: false,
            repaired: None,
            grown: None,
        }
    }

    fn disk_full() -> PauseReason {
        PauseReason::HostDiskFull {
            mount_point: "/home".into(),
            available_bytes: 0,
        }
    }

    fn paused_event() -> Event {
        Event::Paused {
            reason: disk_full(),
        }
    }

    fn running_event() -> Event {
        Event::Running {
            qemu_pid: 20,
            guest_boot_id: "b".into(),
            boot_secs: 3.0,
        }
    }

    #[test]
    fn table() {
        let base = stopped_instance;
        let cases: Vec<(&str, Observations, Status)> = vec![
            ("nothing running", base(), Status::Stopped),
            (
                "agent running, journal says running",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(10, running_event()),
                    ..base()
                },
                Status::Running,
            ),
            (
                "agent took the lock but wrote nothing yet",
                Observations {
                    agent_pid: Some(10),
                    last_event: record(9, running_event()),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "agent booting",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::Booting {
                            qemu_pid: 20,
                            accel: "tcg".into(),
                        },
                    ),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "agent adopting before QEMU is verified",
                Observations {
                    agent_pid: Some(10),
                    last_event: record(10, Event::Starting { foreground: true }),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "agent stopping",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::StopStep {
                            step: Step::PowerButton,
                            at_secs: 0.0,
                        },
                    ),
                    ..base()
                },
                Status::Stopping,
            ),
            (
                "agent cleaning up after QEMU exited",
                Observations {
                    agent_pid: Some(10),
                    last_event: record(
                        10,
                        Event::Stopped {
                            reason: StoppedReason::Requested,
                            by: None,
                            after_secs: None,
                            qemu_exit: "".into(),
                        },
                    ),
                    runtime_files: vec!["ha.pid".into()],
                    ..base()
                },
                Status::Stopping,
            ),
            (
                "stop requested",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::Stopping {
                            cause: StopCause::Signal,
                            deadline_secs: 30.0,
                            force: false,
                        },
                    ),
                    ..base()
                },
                Status::Stopping,
            ),
            (
                "QEMU paused the guest: paused, with the reason",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(10, paused_event()),
                    ..base()
                },
                Status::Paused(disk_full()),
            ),
            (
                "continued after a pause: running",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::Continued {
                            by: crate::instance::journal::ContinueCause::SpaceFreed,
                            after_secs: 3.0,
                        },
                    ),
                    ..base()
                },
                Status::Running,
            ),
            (
                "paused, but QEMU is gone",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: None,
                    last_event: record(10, paused_event()),
                    ..base()
                },
                Status::Broken(Broken::QemuGone { agent_pid: 10 }),
            ),
            (
                "a pause journaled by a previous agent says nothing of this one",
                Observations {
                    agent_pid: Some(11),
                    qemu_pid: Some(20),
                    last_event: record(10, paused_event()),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "a frozen agent is unresponsive whatever its journal says",
                Observations {
                    agent_pid: Some(10),
                    agent_frozen: true,
                    qemu_pid: Some(20),
                    last_event: record(10, running_event()),
                    ..base()
                },
                Status::Broken(Broken::AgentUnresponsive {
                    agent_pid: 10,
                    error: "it is stopped (SIGSTOP, or a debugger holds it)".into(),
                }),
            ),
            (
                "agent says running, QEMU gone",
                Observations {
                    agent_pid: Some(10),
                    last_event: record(10, running_event()),
                    ..base()
                },
                Status::Broken(Broken::QemuGone { agent_pid: 10 }),
            ),
            (
                "orphaned QEMU",
                Observations {
                    qemu_pid: Some(20),
                    runtime_files: vec!["qemu.pid".into()],
                    ..base()
                },
                Status::Broken(Broken::OrphanedQemu { qemu_pid: 20 }),
            ),
            (
                "orphaned QEMU of an instance whose config vanished",
                Observations {
                    qemu_pid: Some(20),
                    config: ConfigState::Missing,
                    ..base()
                },
                Status::Broken(Broken::OrphanedQemu { qemu_pid: 20 }),
            ),
            (
                "stale files after kill -9 of everything",
                Observations {
                    runtime_files: vec!["ha.pid".into(), "qmp.sock".into()],
                    ..base()
                },
                Status::Broken(Broken::StaleRuntimeFiles {
                    files: vec!["ha.pid".into(), "qmp.sock".into()],
                }),
            ),
            (
                "a saved state waits to be resumed",
                Observations {
                    saved_state: true,
                    last_event: record(
                        9,
                        Event::Stopped {
                            reason: StoppedReason::Requested,
                            by: None,
                            after_secs: None,
                            qemu_exit: "".into(),
                        },
                    ),
                    ..base()
                },
                Status::Suspended,
            ),
            (
                "config missing",
                Observations {
                    config: ConfigState::Missing,
                    ..base()
                },
                Status::Broken(Broken::ConfigMissing),
            ),
            (
                "config invalid",
                Observations {
                    config: ConfigState::Invalid {
                        message: "bad".into(),
                    },
                    runtime_files: vec!["x.pid".into()],
                    ..base()
                },
                Status::Broken(Broken::ConfigInvalid {
                    message: "bad".into(),
                }),
            ),
            (
                "disk missing",
                Observations {
                    disk_present: false,
                    ..base()
                },
                Status::Broken(Broken::DiskMissing),
            ),
            (
                "the last start was refused for a damaged data disk",
                Observations {
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(no_fs()),
                        },
                    ),
                    ..base()
                },
                Status::Broken(Broken::DataDisk {
                    problem: DataDiskProblem {
                        state: Some(no_fs()),
                    },
                }),
            ),
            (
                "the last start was refused: /data would not mount",
                Observations {
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(unmountable()),
                        },
                    ),
                    ..base()
                },
                Status::Broken(Broken::DataDisk {
                    problem: DataDiskProblem {
                        state: Some(unmountable()),
                    },
                }),
            ),
            (
                "the last start was refused: the guest said nothing of /data",
                Observations {
                    last_event: record(10, Event::DataDisk { disk: None }),
                    ..base()
                },
                Status::Broken(Broken::DataDisk {
                    problem: DataDiskProblem { state: None },
                }),
            ),
            (
                "a data disk reported mounted is no problem",
                Observations {
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(mounted()),
                        },
                    ),
                    ..base()
                },
                Status::Stopped,
            ),
            (
                "the agent that refused the data disk is finishing",
                Observations {
                    agent_pid: Some(10),
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(no_fs()),
                        },
                    ),
                    ..base()
                },
                Status::Stopping,
            ),
            (
                "the agent heard the data disk mounted and is about to say running",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(mounted()),
                        },
                    ),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "a new start after a refused data disk",
                Observations {
                    agent_pid: Some(11),
                    last_event: record(11, Event::Starting { foreground: false }),
                    ..base()
                },
                Status::Starting,
            ),
            (
                "running, a shared directory's virtiofsd gone",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(10, running_event()),
                    shares_lost: vec!["/src on /src (writable)".into()],
                    ..base()
                },
                Status::Broken(Broken::SharedDirsLost {
                    mounts: vec!["/src on /src (writable)".into()],
                }),
            ),
            (
                "the loss journaled, the VM still running",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::SharedDirLost {
                            index: 0,
                            share: "/src on /src (writable)".into(),
                            exit: "killed by signal 9".into(),
                        },
                    ),
                    shares_lost: vec!["/src on /src (writable)".into()],
                    ..base()
                },
                Status::Broken(Broken::SharedDirsLost {
                    mounts: vec!["/src on /src (writable)".into()],
                }),
            ),
            (
                "stopping: virtiofsd ends with QEMU, no loss",
                Observations {
                    agent_pid: Some(10),
                    qemu_pid: Some(20),
                    last_event: record(
                        10,
                        Event::Stopping {
                            cause: StopCause::Request,
                            deadline_secs: 30.0,
                            force: false,
                        },
                    ),
                    shares_lost: vec!["/src on /src (writable)".into()],
                    ..base()
                },
                Status::Stopping,
            ),
            (
                "an orphaned QEMU whose virtiofsd is gone is adopted first",
                Observations {
                    qemu_pid: Some(20),
                    shares_lost: vec!["/src on /src (writable)".into()],
                    ..base()
                },
                Status::Broken(Broken::OrphanedQemu { qemu_pid: 20 }),
            ),
            (
                "stale files outrank an old data-disk refusal (start removes them)",
                Observations {
                    runtime_files: vec!["ha.pid".into()],
                    last_event: record(
                        10,
                        Event::DataDisk {
                            disk: Some(no_fs()),
                        },
                    ),
                    ..base()
                },
                Status::Broken(Broken::StaleRuntimeFiles {
                    files: vec!["ha.pid".into()],
                }),
            ),
        ];
        for (what, seen, expected) in cases {
            assert_eq!(derive(&seen), expected, "{what}");
        }
    }

    /// One status of every kind, each reason included.
    fn every_status() -> Vec<Status> {
        let mut all = vec![
            Status::Stopped,
            Status::Suspended,
            Status::Starting,
            Status::Running,
            Status::Paused(disk_full()),
            Status::Stopping,
        ];
        all.extend(every_reason().into_iter().map(Status::Broken));
        all
    }

    fn every_reason() -> Vec<Broken> {
        vec![
            Broken::ConfigMissing,
            Broken::ConfigInvalid {
                message: "m".into(),
            },
            Broken::DiskMissing,
            Broken::OrphanedQemu { qemu_pid: 1 },
            Broken::StaleRuntimeFiles {
                files: vec!["a.pid".into()],
            },
            Broken::AgentUnresponsive {
                agent_pid: 1,
                error: "e".into(),
            },
            Broken::QemuGone { agent_pid: 1 },
            Broken::ServiceGaveUp {
                failure: UnitFailure {
                    unit: "vmkeep-a.service".into(),
                    result: "exit-code".into(),
                    restarts: 5,
                    journal_flag: " --user",
                },
            },
            Broken::GaveUp {
                failures: 5,
                last_error: "e".into(),
            },
            Broken::DataDisk {
                problem: DataDiskProblem {
                    state: Some(no_fs()),
                },
            },
            Broken::SharedDirsLost {
                mounts: vec!["/src on /src (read-only)".into()],
            },
        ]
    }

    #[test]
    fn every_verb_has_a_decision_for_every_status() {
        use StartPlan as B;
        use StopPlan as S;
        // (code or word, start, stop, has live processes, can exec)
        let expected: &[(&str, StartPlan, StopPlan, bool, bool)] = &[
            ("Stopped", B::Boot, S::NothingToStop, false, false),
            ("Suspended", B::Boot, S::ResumeToStop, false, false),
            ("Starting", B::WaitUntilRunning, S::AskAgent, true, false),
            ("Running", B::AlreadyRunning, S::AskAgent, true, true),
            ("Paused", B::ContinuePaused, S::AskAgent, true, false),
            ("Stopping", B::WaitForStop, S::AskAgent, true, false),
            ("config-missing", B::Refuse, S::NothingToStop, false, false),
            ("config-invalid", B::Refuse, S::NothingToStop, false, false),
            ("disk-missing", B::Refuse, S::NothingToStop, false, false),
            ("orphaned-qemu", B::Boot, S::AdoptAndStop, true, false),
            (
                "stale-runtime-files",
                B::Boot,
                S::RemoveStaleFiles,
                false,
                false,
            ),
            (
                "agent-unresponsive",
                B::ReplaceFrozenAgent,
                S::ReplaceFrozenAgent,
                true,
                false,
            ),
            ("qemu-gone", B::WaitForCleanup, S::AskAgent, true, false),
            ("service-gave-up", B::Boot, S::NothingToStop, false, false),
            ("gave-up", B::Boot, S::NothingToStop, false, false),
            ("data-disk", B::Boot, S::NothingToStop, false, false),
            ("shared-dirs-lost", B::Refuse, S::AskAgent, true, true),
        ];
        use ClonePlan as C;
        use EditPlan as E;
        use RestartPlan as R;
        // (code or word, edit, restart, clone), in the same order.
        let changes: &[(&str, EditPlan, RestartPlan, ClonePlan)] = &[
            ("Stopped", E::Write, R::Start, C::Copy),
            (
                "Suspended",
                E::WriteIfSavedStateAccepts,
                R::StopThenStart,
                C::RefuseSuspended,
            ),
            ("Starting", E::Live, R::StopThenStart, C::RefuseLive),
            ("Running", E::Live, R::StopThenStart, C::RefuseLive),
            ("Paused", E::Live, R::StopThenStart, C::RefuseLive),
            ("Stopping", E::Live, R::StopThenStart, C::RefuseLive),
            ("config-missing", E::Write, R::Refuse, C::RefuseBroken),
            ("config-invalid", E::Write, R::Refuse, C::RefuseBroken),
            ("disk-missing", E::Write, R::Refuse, C::RefuseBroken),
            ("orphaned-qemu", E::Live, R::StopThenStart, C::RefuseLive),
            ("stale-runtime-files", E::Write, R::Start, C::Copy),
            (
                "agent-unresponsive",
                E::Live,
                R::StopThenStart,
                C::RefuseLive,
            ),
            ("qemu-gone", E::Live, R::StopThenStart, C::RefuseLive),
            ("service-gave-up", E::Write, R::Start, C::Copy),
            ("gave-up", E::Write, R::Start, C::Copy),
            ("data-disk", E::Write, R::Start, C::Copy),
            ("shared-dirs-lost", E::Live, R::StopThenStart, C::RefuseLive),
        ];
        let all = every_status();
        assert_eq!(all.len(), expected.len(), "a row per status");
        for (status, (name, start, stop, live, exec)) in all.iter().zip(expected) {
            let label = match status {
                Status::Broken(b) => b.code(),
                other => other.word(),
            };
            assert_eq!(label, *name, "rows in order");
            assert_eq!(status.start_plan(), *start, "start when {name}");
            assert_eq!(status.stop_plan(), *stop, "stop when {name}");
            assert_eq!(
                status.has_live_processes(),
                *live,
                "live processes when {name}"
            );
            assert_eq!(status.can_exec(), *exec, "exec when {name}");
            let (row, edit, restart, clone) =
                changes[all.iter().position(|s| s == status).unwrap()];
            assert_eq!(row, *name, "change rows in order");
            assert_eq!(status.edit_plan(), edit, "edit when {name}");
            assert_eq!(status.restart_plan(), restart, "restart when {name}");
            assert_eq!(status.clone_plan(), clone, "clone when {name}");
            // A change never lands under a live process unless asked to
            // restart, and nothing live is copied.
            assert_eq!(edit == E::Live, *live, "edit when {name}");
            if *live {
                assert_eq!(clone, C::RefuseLive, "{name}");
            }
            // A VM with shared directories cannot be saved (vhost-user-fs
            // does not migrate), so one that lost one is not suspended.
            let suspends = *exec && *name != "shared-dirs-lost";
            assert_eq!(status.can_suspend(), suspends, "suspend when {name}");
            // What start repairs by itself, it must not refuse.
            if let Status::Broken(broken) = status {
                if broken.repairable() {
                    assert_ne!(*start, B::Refuse, "{name}");
                }
                // A stop with nothing to do leaves no process behind.
                if *stop == S::NothingToStop {
                    assert!(!live, "{name}");
                }
            }
        }
    }

    #[test]
    fn only_problems_that_need_a_human_are_unrepairable() {
        let all = every_reason();
        let unrepairable: Vec<_> = all
            .iter()
            .filter(|b| !b.repairable())
            .map(Broken::code)
            .collect();
        assert_eq!(
            unrepairable,
            [
                "config-missing",
                "config-invalid",
                "disk-missing",
                "data-disk",
                "shared-dirs-lost"
            ]
        );
        for broken in &all {
            assert!(
                !broken.message().is_empty() && !broken.hint().is_empty(),
                "{broken:?}"
            );
        }
    }
}
