//! Executes the stop ladder (decisions in [`crate::stop_ladder`]) against a
//! running VM, journaling every step, until the hypervisor process is gone.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::{ErrorCode, Refusal};
use super::inbox::{Inbox, Incoming};
use super::server::Command;
use super::{Agent, AgentOutcome};
use crate::driver::Vm;
use crate::driver::qemu::QemuVm;
use crate::instance::journal::StoppedReason;
use crate::instance::journal::{Event, Journal, StopCause};
use crate::instance::status::Phase;
use crate::link::guest_link::GuestLink;
use crate::os;
use crate::os::process::ExitOutcome;
use crate::stop_ladder::{self, Channels, Decision, Plan, Progress, Step};

/// How long the guest agent's power-off request may take to be accepted.
const GUEST_AGENT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Stopped {
    pub exit: ExitOutcome,
    /// The last step taken before the VM went away.
    pub by: Option<Step>,
    pub elapsed: Duration,
}

/// Run the ladder to the end. Returns only once the VM process has exited.
/// A forced stop request, or a second Ctrl-C (SIGINT), skips to the hard
/// stop; a further graceful request may grant a longer deadline, never a
/// shorter one. SIGTERM and SIGHUP change nothing: they ask for what is already
/// under way, and more than one party may ask (`vmkeep stop` falls back to
/// SIGTERM when the API is slow to answer, the daemon SIGTERMs an agent whose
/// instance should stay stopped, a host shutdown SIGTERMs every agent), so
/// none of them may turn a graceful stop into a power cut.
pub async fn stop<V: Vm>(
    vm: &V,
    guest: &watch::Receiver<Option<GuestLink>>,
    deadline: Duration,
    force: bool,
    journal: &mut Journal,
    inbox: &mut Inbox,
) -> Stopped {
    let mut plan = Plan::new(deadline);
    let mut progress = Progress::default();
    if force {
        progress.force();
    }
    let started = Instant::now();
    loop {
        let link = guest.borrow().clone();
        let channels = Channels {
            hypervisor: vm.hypervisor_reachable(),
            guest_agent: link.is_some(),
        };
        let wake = match stop_ladder::decide(&plan, &progress, channels, started.elapsed()) {
            Decision::Take(step) => {
                let at = started.elapsed();
                if let Err(e) = journal.record(Event::StopStep {
                    step,
                    at_secs: at.as_secs_f64(),
                }) {
                    tracing::warn!("journal: {e}");
                }
                tracing::info!(?step, at = ?at, "stop ladder");
                progress.taken(step, at);
                let result = match step {
                    Step::PowerButton => vm.request_stop().await.map_err(|e| e.to_string()),
                    Step::GuestAgentPoweroff => match link {
                        Some(link) => link
                            .poweroff(GUEST_AGENT_TIMEOUT)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("guest agent not connected".into()),
                    },
                    Step::Quit => vm.hard_stop().await.map_err(|e| e.to_string()),
                    Step::Kill => vm.kill().map_err(|e| e.to_string()),
                };
                match result {
                    Ok(()) => progress.delivered(step),
                    Err(error) => tracing::warn!(?step, %error, "stop ladder step failed"),
                }
                continue;
            }
            Decision::WaitUntil(at) => Some(started + at),
            Decision::WaitForExit => None,
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            exit = vm.exited() => {
                return Stopped { exit, by: progress.ended_by(), elapsed: started.elapsed() };
            }
            () = sleep => {}
            incoming = inbox.next() => match incoming {
                Incoming::Signal(name) => {
                    if forces(name) {
                        tracing::info!("{name} while stopping: forcing the stop");
                        progress.force();
                    } else {
                        tracing::info!("{name} while stopping: the ladder goes on");
                    }
                }
                Incoming::Command(Command::Stop { force: true, .. }) => progress.force(),
                Incoming::Command(Command::Stop { force: false, deadline }) => {
                    if plan.extend_to(started.elapsed().saturating_add(deadline)) {
                        tracing::info!(?deadline, "a further stop request grants the guest more time");
                        if let Err(e) = journal.record(Event::Stopping {
                            cause: StopCause::Request,
                            deadline_secs: deadline.as_secs_f64(),
                            force: false,
                        }) {
                            tracing::warn!("journal: {e}");
                        }
                    }
                }
                Incoming::Command(Command::Suspend { answer, .. }) => {
                    let _ = answer.send(Err(Refusal::new(
                        ErrorCode::WrongState,
                        "the VM is being stopped; it cannot be suspended now",
                    )));
                }
                Incoming::Command(Command::Continue { answer }) => {
                    let _ = answer.send(Err(Refusal::new(
                        ErrorCode::WrongState,
                        "the VM is being stopped",
                    )));
                }
                Incoming::Command(Command::Upgrade(asked)) => {
                    let _ = asked.answer.send(Err(Refusal::new(
                        ErrorCode::WrongState,
                        "the VM is being stopped; there is nothing to upgrade",
                    )));
                }
            },
        }
    }
}

/// Whether a signal that arrives while the ladder runs skips to the hard
/// stop: only an interactive second Ctrl-C does.
fn forces(signal: &str) -> bool {
    signal == "SIGINT"
}

impl Agent<'_, '_> {
    pub(super) async fn stop(
        &mut self,
        vm: &QemuVm,
        cause: StopCause,
        deadline: Duration,
        force: bool,
    ) -> AgentOutcome {
        self.set_info(|info| info.phase = Phase::Stopping);
        os::service_notify::stopping(&format!(
            "stopping the VM (deadline {:.0}s)",
            deadline.as_secs_f64()
        ));
        self.record(Event::Stopping {
            cause,
            deadline_secs: deadline.as_secs_f64(),
            force,
        });
        let guest = self.guest_rx.clone();
        let stopped = self::stop(
            vm,
            &guest,
            deadline,
            force,
            &mut self.journal,
            &mut self.inbox,
        )
        .await;
        let reason = match cause {
            StopCause::BootTimeout
            | StopCause::DataDisk
            | StopCause::SharedDir
            | StopCause::CopyToHost => StoppedReason::StartFailed,
            StopCause::Request | StopCause::Signal | StopCause::SuspendFailed => {
                StoppedReason::Requested
            }
        };
        self.record_stopped(reason, stopped.by, Some(stopped.elapsed), stopped.exit);
        AgentOutcome::Stopped {
            reason,
            by: stopped.by,
        }
    }

    pub(super) fn record_stopped(
        &mut self,
        reason: StoppedReason,
        by: Option<Step>,
        after: Option<Duration>,
        exit: ExitOutcome,
    ) {
        let _ = self.guest_tx.send(None);
        self.record(Event::Stopped {
            reason,
            by,
            after_secs: after.map(|d| d.as_secs_f64()),
            qemu_exit: exit.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_second_ctrl_c_forces_a_stop_under_way() {
        assert!(forces("SIGINT"));
        assert!(!forces("SIGTERM"), "a repeated request, not a power cut");
        assert!(!forces("SIGHUP"));
    }
}
