//! Host agents, spawned: the one path by which `start` and the daemon run
//! an instance's agent detached (its own session and, under systemd, a
//! scope of its own, so that it outlives whoever spawned it), logging to
//! the instance's log; and the program `start --foreground` becomes.

use std::os::fd::OwnedFd;

use super::EngineError;
use crate::hostagent::binary;
use crate::instance::{Config, InstanceDir};
use crate::os;
use crate::os::cgroup::Placement;
use crate::os::process::{Output, ProcessHandle, Program};

/// Where a spawned agent's reports of its start go.
pub enum Reports {
    /// JSON lines on this pipe, which the spawner reads (`start`).
    Pipe(OwnedFd),
    /// Text into the agent's log (the daemon reads the journal instead).
    Log,
}

/// An agent just spawned.
pub struct Spawned {
    pub agent: ProcessHandle,
    /// Where the agent log ended before it ran (see [`scope_refused`]).
    pub log_start: u64,
}

/// Why systemd refused an agent spawned when its log ended at `log_start`
/// a scope of its own, if that is why it exited (it never ran): what it
/// wrote to its log says.
pub fn scope_refused(dir: &InstanceDir, log_start: u64) -> Option<String> {
    os::cgroup::scope_failure(&os::fs::appended_since(&dir.agent_log(), log_start, 4096))
}

/// Fail early when the agent binary is missing (the daemon does, at its
/// start, rather than at its first spawn).
pub fn check_binary() -> Result<(), EngineError> {
    binary::path()
        .map(drop)
        .map_err(EngineError::io("find", binary::FILE_NAME))
}

/// Spawn the host agent of `dir`, detached; `placement` is where systemd
/// puts it (`None` where systemd cannot be asked, or refused a scope).
pub fn spawn(
    dir: &InstanceDir,
    config: &Config,
    reports: Reports,
    repair_data: bool,
    placement: Option<&Placement>,
) -> Result<Spawned, EngineError> {
    let log_start = os::fs::len_of(&dir.agent_log());
    let log =
        os::fs::open_append(&dir.agent_log()).map_err(EngineError::io("open", dir.agent_log()))?;
    let (text_reports, output) = match reports {
        Reports::Pipe(pipe) => (false, Output::Pipe(pipe)),
        Reports::Log => (
            true,
            Output::File(
                log.try_clone()
                    .map_err(EngineError::io("open", dir.agent_log()))?,
            ),
        ),
    };
    let program = binary::detached(
        dir.name(),
        text_reports,
        repair_data,
        placement,
        config.host_shutdown_deadline(),
    )
    .map_err(EngineError::io("find", binary::FILE_NAME))?;
    let agent = os::process::spawn_detached(&program, output, log)
        .map_err(EngineError::process("spawn the host agent"))?;
    Ok(Spawned { agent, log_start })
}

/// The agent program `start --foreground` becomes (same pid, so that a
/// service manager that ran it supervises the agent itself).
pub fn in_place(dir: &InstanceDir, repair_data: bool) -> Result<Program, EngineError> {
    let agent = binary::path().map_err(EngineError::io("find", binary::FILE_NAME))?;
    Ok(Program::new(
        &agent,
        &binary::args_repairing(dir.name(), true, repair_data),
    ))
}
