//! The host agent: one process per running instance. It holds the instance's
//! lock for its whole life, owns QEMU (as its child, or adopted after a
//! predecessor died), serves the API on `ha.sock`, journals every lifecycle
//! event, and on SIGTERM/SIGINT/SIGHUP or an API request runs the stop ladder
//! and exits only once QEMU is gone.

mod adopt;
mod agent;
pub mod api;
pub mod binary;
pub mod bounded_logs;
pub mod clock;
pub mod copy_to_host;
mod data_disk;
mod disk_size;
pub mod error;
pub mod forwards;
mod guest;
pub mod inbox;
mod launch;
mod mount_inotify;
pub mod mounts;
pub mod report;
pub mod server;
pub mod session_api;
mod session_relay;
pub mod socket_forwards;
pub mod stop_ladder;
mod supervise;
mod suspend;
pub mod upgrade;

use std::path::PathBuf;
use std::time::Duration;

use self::agent::{Agent, now_rfc3339, stopped_as_failed};
use self::guest::{keep_guest_link, link_gone, open_link};
use self::launch::LaunchFailed;
use self::report::{Report, Reporter};
use crate::instance::InstanceName;
use crate::instance::journal::StoppedReason;
use crate::stop_ladder::Step;
use crate::text::chain::error_chain;

/// What the agent is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Boot (or adopt) the VM and supervise it until it stops.
    Run,
    /// Adopt a QEMU left without an agent and stop it; never boots.
    StopOnly {
        deadline: Option<Duration>,
        force: bool,
    },
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub root: PathBuf,
    pub name: InstanceName,
    pub foreground: bool,
    pub mode: Mode,
    /// `start --repair-data`: the guest runs e2fsck on the data disk first.
    pub repair_data: bool,
    /// Take SIGTERM/SIGINT/SIGHUP as stop requests: the agent is its own
    /// process. An agent run inside another vmkeep process leaves that
    /// process's signals alone.
    pub signals: bool,
    /// This process's previous build handed its running agent over
    /// (`vmkeep upgrade`): take its lock and adopt its VM.
    pub upgraded: Option<upgrade::Handover>,
}

/// How the agent ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// Another agent holds the instance.
    AlreadyRunning { agent_pid: Option<u32> },
    /// The VM ran and is now stopped.
    Stopped {
        reason: StoppedReason,
        by: Option<Step>,
    },
    /// The VM never became ready.
    StartFailed { error: String },
    /// `StopOnly` found no QEMU.
    NothingToStop,
    /// The VM's state was saved (see `driver::qemu::snapshot`) and QEMU is
    /// gone; the next start resumes it.
    Suspended { state_bytes: u64 },
}

impl AgentOutcome {
    /// The process exit code: 0 when the VM ended as asked or by the guest's
    /// own power-off, so that a service manager's keep-alive restarts only
    /// after a crash or a failed start.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentOutcome::AlreadyRunning { .. }
            | AgentOutcome::NothingToStop
            | AgentOutcome::Suspended { .. } => 0,
            AgentOutcome::Stopped {
                reason: StoppedReason::Requested | StoppedReason::GuestPoweroff,
                ..
            } => 0,
            AgentOutcome::Stopped {
                reason: StoppedReason::Crashed | StoppedReason::StartFailed,
                ..
            } => 1,
            AgentOutcome::StartFailed { .. } => 1,
        }
    }
}

/// Run a host agent to the end, on a runtime of its own.
pub fn run(options: &AgentOptions, reporter: &mut Reporter<'_>) -> AgentOutcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                reporter,
                format!("cannot start the host agent's runtime: {e}"),
            );
        }
    };
    runtime.block_on(agent::run_async(options, reporter))
}

fn fail(reporter: &mut Reporter<'_>, error: String) -> AgentOutcome {
    tracing::error!("{error}");
    reporter.send(Report::Failed {
        error: error.clone(),
    });
    AgentOutcome::StartFailed { error }
}
