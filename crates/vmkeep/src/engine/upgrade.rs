//! `upgrade`: move a running instance's host agent onto the
//! `vmkeep-hostagent` installed now beside `vmkeep`, in place: the agent
//! checks the binary, re-executes itself as it (same pid) and adopts its
//! QEMU, which runs on untouched (see `hostagent::upgrade`). The outcome is
//! the agent's journal record (`upgraded` or `upgrade-failed`) by its pid.
//! An agent that cannot move says why and runs on; nothing is stopped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{EngineError, Notice, observe_with_config, status};
use crate::hostagent::api::{ApiClient, ApiError, ErrorCode, UpgradeAccepted, UpgradeRequest};
use crate::instance::journal::{self, Event, UpgradeSteps};
use crate::instance::{InstanceDir, Status};
use crate::os;
use crate::timeouts;

/// How long an upgrade may take unless asked otherwise: the new binary's
/// check and the guest agent answering the new build (a moment; minutes
/// only on a host whose cores are all busy).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the journal is read for the outcome.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub timeout: Duration,
    /// The host agent binary to move onto; `None`: the one beside the
    /// running `vmkeep` (`hostagent::binary::path`).
    pub binary: Option<PathBuf>,
}

impl Default for UpgradeOptions {
    fn default() -> UpgradeOptions {
        UpgradeOptions {
            timeout: DEFAULT_TIMEOUT,
            binary: None,
        }
    }
}

/// How an upgrade went.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgraded {
    pub agent_pid: u32,
    pub qemu_pid: u32,
    /// The builds, as `version (commit)`.
    pub from: String,
    pub to: String,
    pub guest_boot_id: Option<String>,
    pub steps: UpgradeSteps,
    pub took: Duration,
}

pub fn upgrade(
    dir: &InstanceDir,
    options: &UpgradeOptions,
    notice: &dyn Notice,
) -> Result<Upgraded, EngineError> {
    let name = dir.name();
    let began = Instant::now();
    let (seen, _) = observe_with_config(dir).map_err(EngineError::io("inspect", dir.dir()))?;
    let status = status::derive(&seen);
    let agent_pid = match (&status, seen.agent_pid) {
        (Status::Running, Some(agent_pid)) => agent_pid,
        (other, _) => {
            return Err(EngineError::WrongState {
                name: name.clone(),
                message: format!(
                    "{name} is {}: only the host agent of a running VM can be upgraded",
                    super::describe(other)
                ),
            });
        }
    };
    let not_upgraded = |reason: String| EngineError::NotUpgraded {
        name: name.clone(),
        agent_pid,
        reason,
    };
    let binary = match &options.binary {
        Some(binary) => binary.clone(),
        None => crate::hostagent::binary::path().map_err(|e| not_upgraded(e.to_string()))?,
    };
    let binary = std::path::absolute(&binary).unwrap_or(binary);
    let accepted = ask(dir, &binary, options, notice, &not_upgraded)?;
    notice.step(&format!(
        "{name}: {} -> {}: re-executing in place",
        accepted.from, accepted.to
    ));
    wait_for_outcome(dir, agent_pid, &accepted, began + options.timeout, began)
}

/// Ask the agent to move onto `binary`; its acceptance. The runtime (and
/// with it the connection) is gone when this returns, so that the agent's
/// drain of its API before the exec does not wait for it.
fn ask(
    dir: &InstanceDir,
    binary: &std::path::Path,
    options: &UpgradeOptions,
    notice: &dyn Notice,
    not_upgraded: &dyn Fn(String) -> EngineError,
) -> Result<UpgradeAccepted, EngineError> {
    let name = dir.name();
    let client = ApiClient::new(&dir.api_socket());
    let runtime = super::runtime()?;
    let info = runtime
        .block_on(client.info(timeouts::API_ANSWER))
        .map_err(|e| not_upgraded(e.to_string()))?;
    if info.api_version < crate::formats::AGENT_API.current {
        return Err(not_upgraded(too_old()));
    }
    notice.step(&format!(
        "{name}: moving host agent pid {} onto {}",
        info.agent_pid,
        binary.display()
    ));
    let request = UpgradeRequest {
        binary: binary.to_path_buf(),
    };
    match runtime.block_on(client.upgrade(&request, options.timeout)) {
        Ok(accepted) => Ok(accepted),
        Err(ApiError::Refused {
            code: ErrorCode::NoRoute,
            ..
        }) => Err(not_upgraded(too_old())),
        Err(ApiError::Refused { message, .. }) => Err(not_upgraded(message)),
        Err(e) => Err(not_upgraded(e.to_string())),
    }
}

/// The agent's journal record of how the upgrade went, polled until
/// `deadline`.
fn wait_for_outcome(
    dir: &InstanceDir,
    agent_pid: u32,
    accepted: &UpgradeAccepted,
    deadline: Instant,
    began: Instant,
) -> Result<Upgraded, EngineError> {
    let name = dir.name();
    let not_upgraded = |reason: String| EngineError::NotUpgraded {
        name: name.clone(),
        agent_pid,
        reason,
    };
    loop {
        let records = journal::tail(&dir.journal(), journal::LAST_RUN_BYTES).unwrap_or_default();
        let outcome = records
            .iter()
            .filter(|r| r.pid == agent_pid && r.ts >= accepted.accepted_at)
            .find_map(|r| match &r.event {
                Event::Upgraded {
                    from,
                    to,
                    qemu_pid,
                    guest_boot_id,
                    steps,
                } => Some(Ok(Upgraded {
                    agent_pid,
                    qemu_pid: *qemu_pid,
                    from: from.clone(),
                    to: to.clone(),
                    guest_boot_id: guest_boot_id.clone(),
                    steps: steps.clone(),
                    took: began.elapsed(),
                })),
                Event::UpgradeFailed { error, .. } => Some(Err(not_upgraded(error.clone()))),
                Event::StartFailed { error } => Some(Err(EngineError::WrongState {
                    name: name.clone(),
                    message: format!(
                        "the new host agent build of {name} could not take its VM over: {error}; \
                         `vmkeep start {name}` adopts the QEMU that runs"
                    ),
                })),
                _ => None,
            });
        if let Some(outcome) = outcome {
            return outcome;
        }
        let holder = os::lock::holder(&dir.agent_lock())
            .ok()
            .flatten()
            .map(|pid| pid.as_raw_nonzero().get() as u32);
        if holder != Some(agent_pid) {
            return Err(EngineError::WrongState {
                name: name.clone(),
                message: format!(
                    "the host agent of {name} (pid {agent_pid}) ended during its upgrade; \
                     see `vmkeep events {name}`; `vmkeep start {name}` adopts a QEMU that runs"
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(EngineError::WrongState {
                name: name.clone(),
                message: format!(
                    "the host agent of {name} (pid {agent_pid}) did not finish its upgrade within {} s; \
                     see `vmkeep events {name}` and its ha.log",
                    deadline.duration_since(began).as_secs()
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

fn too_old() -> String {
    "its host agent is of a build before upgrades in place (API version 1): it is too old to move in place; stop and start it".into()
}
