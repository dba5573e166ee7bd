//! `suspend`: save a running VM's state into its instance directory and end
//! QEMU (the host agent does the work: `driver::qemu::snapshot`); `start`
//! resumes it. And the way to throw a saved state away, which only an
//! explicit request does (`stop --force`, `start --discard-state`): the
//! saved memory holds what the guest had not written to its disk yet.

use std::time::{Duration, Instant};

use super::{EngineError, Notice, status_of};
use crate::driver::qemu::snapshot;
use crate::hostagent::api::{
    ApiClient, ApiError, DEFAULT_SUSPEND_TIMEOUT, SuspendCause, SuspendFallback, SuspendRequest,
};
use crate::instance::desired::{self, Desired};
use crate::instance::journal::{Event, Journal};
use crate::instance::{InstanceDir, Status};
use crate::os::process;

/// Beyond the save's own deadline: the agent's answer and its exit.
const MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct SuspendOptions {
    /// How long the save may take; [`DEFAULT_SUSPEND_TIMEOUT`] when `None`.
    pub timeout: Option<Duration>,
    /// When the save fails, stop the VM by its ladder instead of letting it
    /// run on (what a host shutdown wants).
    pub or_stop: bool,
    /// The host is shutting down: the user still wants the VM running (it is
    /// resumed at the next boot), so the desired state stays as it is.
    pub host_shutdown: bool,
}

/// How a suspend ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspended {
    /// The device state written (the RAM already is in its file), if the
    /// agent said before it ended.
    pub state_bytes: Option<u64>,
    pub took: Duration,
}

pub fn suspend(
    dir: &InstanceDir,
    options: &SuspendOptions,
    notice: &dyn Notice,
) -> Result<Suspended, EngineError> {
    let name = dir.name();
    let status = status_of(dir)?;
    if !status.can_suspend() {
        return Err(EngineError::WrongState {
            name: name.clone(),
            message: match status {
                Status::Suspended => {
                    format!("{name} is suspended already; `vmkeep start {name}` resumes it")
                }
                other => format!(
                    "{name} is {}: only a running VM can be suspended",
                    super::describe(&other)
                ),
            },
        });
    }
    if !options.host_shutdown
        && let Err(e) = desired::write(dir, Desired::Suspended)
    {
        notice.warn(&format!(
            "cannot record in {} that {name} should stay suspended ({e}); a daemon may resume it",
            dir.dir().display()
        ));
    }
    let agent = process::open_lock_holder(&dir.agent_lock())
        .map_err(EngineError::io("inspect", dir.agent_lock()))?
        .ok_or_else(|| EngineError::WrongState {
            name: name.clone(),
            message: format!("{name} stopped meanwhile; there is nothing to suspend"),
        })?;
    let deadline = options.timeout.unwrap_or(DEFAULT_SUSPEND_TIMEOUT);
    let request = SuspendRequest {
        timeout_secs: Some(deadline.as_secs_f64()),
        fallback: if options.or_stop {
            SuspendFallback::Stop
        } else {
            SuspendFallback::KeepRunning
        },
        cause: if options.host_shutdown {
            SuspendCause::HostShutdown
        } else {
            SuspendCause::Request
        },
    };
    let began = Instant::now();
    let answer = super::runtime()?
        .block_on(ApiClient::new(&dir.api_socket()).suspend(&request, deadline + MARGIN));
    let state_bytes = match answer {
        Ok(done) => Some(done.state_bytes),
        Err(ApiError::Refused { message, .. }) => {
            return Err(EngineError::SuspendFailed {
                name: name.clone(),
                reason: message,
            });
        }
        // The agent may end before its answer is out: the directory tells.
        Err(other) => {
            tracing::debug!("no answer to the suspend: {other}");
            None
        }
    };
    if !agent.wait_timeout(MARGIN) {
        return Err(EngineError::SuspendFailed {
            name: name.clone(),
            reason: format!(
                "its host agent (pid {}) did not exit after the save",
                agent.pid()
            ),
        });
    }
    if !snapshot::exists(dir) {
        return Err(EngineError::SuspendFailed {
            name: name.clone(),
            reason: format!(
                "no state was saved; see `vmkeep events {name}` and {}",
                dir.agent_log().display()
            ),
        });
    }
    Ok(Suspended {
        state_bytes,
        took: began.elapsed(),
    })
}

/// Throw a saved state away (asked for explicitly), journaled.
pub fn discard_state(dir: &InstanceDir, notice: &dyn Notice) -> Result<(), EngineError> {
    let name = dir.name();
    let had = snapshot::discard(dir, false).map_err(|source| EngineError::Snapshot {
        action: "discard",
        name: name.clone(),
        source,
    })?;
    if had {
        notice.step(&format!(
            "discarded the saved state of {name}: what was in its memory is lost; its disk keeps what was written to it"
        ));
        let recorded = Journal::open(&dir.journal()).and_then(|mut journal| {
            journal.record(Event::StateDiscarded {
                reason: "asked for (stop --force, or start --discard-state)".into(),
            })
        });
        if let Err(e) = recorded {
            notice.warn(&format!("cannot write the journal: {e}"));
        }
    }
    Ok(())
}
