//! `stop`: end an instance's VM by its ladder (ACPI power button, guest
//! agent, hard stop at the deadline), whoever supervises it: its host agent
//! (asked over its API, else by SIGTERM), the service manager that runs
//! the agent, or, when QEMU runs without an agent, a host agent run here to
//! adopt it. `force` ends it at once. It acts in rounds, each on what it
//! sees, so a process that dies midway (an agent killed mid-stop leaves
//! QEMU orphaned) is dealt with by the next round.

use std::time::{Duration, Instant};

use super::suspend::SuspendOptions;
use super::{EngineError, Notice, status_of};
use crate::autostart::hooks;
use crate::driver::qemu;
use crate::hostagent::api::{ApiClient, StopRequest};
use crate::hostagent::report::Reporter;
use crate::hostagent::{self, AgentOptions, AgentOutcome, Mode};
use crate::instance::config::OnHostShutdown;
use crate::instance::desired::{self, Desired};
use crate::instance::journal::{self, Event, Journal, Repair, StoppedReason};
use crate::instance::status::StopPlan;
use crate::instance::{Config, InstanceDir};
use crate::os::lock::HeldLock;
use crate::os::process::{self, ProcessHandle};
use crate::stop_ladder::{Step, force_after};
use crate::timeouts;

/// How many times `stop` acts before it gives up and says so.
const MAX_ROUNDS: usize = 3;
/// How long a host agent that got SIGTERM (its API did not answer) may
/// take to show that it is stopping before it counts as hung.
const AGENT_REACTION: Duration = Duration::from_secs(5);
/// How long a host agent asked to stop at once may take to exit.
const FORCED_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct StopOptions {
    /// Graceful-stop deadline; the instance's `stopTimeout` when `None`.
    pub timeout: Option<Duration>,
    /// Skip the graceful steps.
    pub force: bool,
    /// Go through the service manager when it runs the instance (so that
    /// keep-alive does not bring it back). The daemon, itself the
    /// supervisor, does not.
    pub through_service_manager: bool,
}

/// How a stop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// Nothing ran.
    WasNotRunning,
    /// Nothing ran; runtime files of dead processes were removed.
    RemovedStaleFiles { files: Vec<String> },
    /// It ran and is stopped now.
    Stopped { how: How, took: Duration },
}

/// What ended the VM, from its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Step(Step),
    GuestPoweroff,
    QemuHadExited,
    Unknown,
}

impl How {
    pub fn words(self) -> &'static str {
        match self {
            How::Step(step) => step_words(step),
            How::GuestPoweroff => "the guest powered off",
            How::QemuHadExited => "QEMU had exited",
            How::Unknown => "done",
        }
    }
}

pub fn step_words(step: Step) -> &'static str {
    match step {
        Step::PowerButton => "ACPI power button",
        Step::GuestAgentPoweroff => "guest agent power-off",
        Step::Quit => "hard stop: QMP quit",
        Step::Kill => "hard stop: SIGKILL",
    }
}

/// Stop the instance in `dir`.
pub fn stop(
    dir: &InstanceDir,
    options: &StopOptions,
    notice: &dyn Notice,
) -> Result<Stopped, EngineError> {
    let name = dir.name();
    // First, so that a supervising daemon does not restart it meanwhile. A
    // host disk too full to record it must not keep the VM from stopping.
    if let Err(e) = desired::write(dir, Desired::Stopped) {
        notice.warn(&format!(
            "cannot record in {} that {name} should stay stopped ({e}); a daemon may start it again",
            dir.dir().display()
        ));
    }
    let started = Instant::now();
    let deadline = options.timeout.unwrap_or_else(|| stop_timeout(dir));
    let mut rounds = 0;
    loop {
        let status = status_of(dir)?;
        let plan = status.stop_plan();
        match plan {
            StopPlan::NothingToStop if rounds == 0 => return Ok(Stopped::WasNotRunning),
            StopPlan::NothingToStop => break,
            StopPlan::RemoveStaleFiles => {
                let files = remove_leftovers(dir, None)?;
                if rounds == 0 {
                    return Ok(Stopped::RemovedStaleFiles { files });
                }
                break;
            }
            _ if rounds >= MAX_ROUNDS => {
                return Err(EngineError::StillRunning {
                    name: name.clone(),
                    status: super::describe(&status),
                    attempts: MAX_ROUNDS,
                });
            }
            StopPlan::ResumeToStop if options.force => {
                super::suspend::discard_state(dir, notice)?;
            }
            StopPlan::ResumeToStop => {
                // Its memory holds what the guest has not written yet: resume
                // it, and the next round stops it by its ladder.
                notice.step(&format!(
                    "{name} is suspended: resuming it so that it powers off by its own ladder \
                     (`vmkeep stop --force {name}` would discard its saved memory instead)"
                ));
                super::start::resume_quietly(dir, notice)?;
            }
            _ if options.force => {
                force_stop(dir, ForceCause::Asked, notice)?;
                hooks::cancel_restart(dir, notice);
            }
            // Run by a service manager: stop it there, so keep-alive does not
            // restart it (a deadline of one's own cannot be passed that way).
            _ if options.through_service_manager
                && options.timeout.is_none()
                && stop_through_service_manager(dir, notice)? => {}
            StopPlan::AdoptAndStop => adopt_and_stop(dir, deadline, notice)?,
            StopPlan::ReplaceFrozenAgent => {
                replace_frozen_agent(dir, notice)?;
                let left = deadline.saturating_sub(started.elapsed());
                adopt_and_stop(dir, left.max(Duration::from_secs(1)), notice)?;
            }
            StopPlan::AskAgent => {
                if let AgentAnswer::Hung = stop_through_agent(dir, deadline, notice)? {
                    // It took the request but never acted on it: its QEMU
                    // still gets the ladder, through an agent run here.
                    replace_frozen_agent(dir, notice)?;
                    let left = deadline.saturating_sub(started.elapsed());
                    adopt_and_stop(dir, left.max(Duration::from_secs(1)), notice)?;
                }
            }
        }
        rounds += 1;
    }
    Ok(Stopped::Stopped {
        how: how_it_ended(dir),
        took: started.elapsed(),
    })
}

fn stop_timeout(dir: &InstanceDir) -> Duration {
    Config::load(&dir.config())
        .map(|c| c.stop_timeout.0)
        .unwrap_or(timeouts::DEFAULT_STOP_TIMEOUT)
}

fn stop_through_service_manager(
    dir: &InstanceDir,
    notice: &dyn Notice,
) -> Result<bool, EngineError> {
    let Some((record, service)) = hooks::managed(dir) else {
        return Ok(false);
    };
    let observe = || super::observed_status(dir);
    Ok(hooks::stop_through(
        dir,
        &record,
        service.as_ref(),
        &observe,
        notice,
    )?)
}

enum AgentAnswer {
    /// The agent exited (or was forced to, past its deadline).
    Done,
    /// It neither answered nor acted on SIGTERM.
    Hung,
}

/// Ask the host agent to stop (API, else SIGTERM) and wait for it to exit;
/// force the stop if it overruns its deadline.
fn stop_through_agent(
    dir: &InstanceDir,
    deadline: Duration,
    notice: &dyn Notice,
) -> Result<AgentAnswer, EngineError> {
    let Some(agent) = agent_of(dir)? else {
        return Ok(AgentAnswer::Done); // it exited meanwhile
    };
    let request = StopRequest {
        timeout_secs: Some(deadline.as_secs_f64()),
        force: false,
    };
    let asked = super::runtime()?
        .block_on(ApiClient::new(&dir.api_socket()).stop(&request, timeouts::API_ANSWER));
    if let Err(e) = asked {
        if process::is_stopped(agent.pid()) {
            notice.warn(&format!(
                "the host agent (pid {}) is frozen (stopped by a signal) and did not answer ({e})",
                agent.pid()
            ));
            return Ok(AgentAnswer::Hung);
        }
        notice.step(&format!(
            "{}: the host agent's API did not answer ({e}); sending it SIGTERM",
            dir.name()
        ));
        ask_agent(&agent)?;
        if !agent_reacts(dir, &agent) {
            notice.warn(&format!(
                "the host agent (pid {}) did not act on SIGTERM within {}s",
                agent.pid(),
                AGENT_REACTION.as_secs()
            ));
            return Ok(AgentAnswer::Hung);
        }
    }
    wait_or_force(dir, &agent, deadline, notice)?;
    Ok(AgentAnswer::Done)
}

/// Ask a host agent to stop its VM by its ladder, as a service manager does
/// (SIGTERM): it journals the stop and runs the ladder under its instance's
/// `stopTimeout`, and exits once QEMU is gone. Returns at once. The one way
/// any stop requester signals an agent.
pub fn ask_agent(agent: &ProcessHandle) -> Result<(), EngineError> {
    agent.terminate().map_err(EngineError::process(format!(
        "signal host agent pid {}",
        agent.pid()
    )))
}

/// Wait for an agent asked to stop under `deadline` to exit, and force the
/// stop once it overruns (`stop_ladder::force_after`: the agent may run a
/// ladder with a longer deadline than ours, granted by another `stop
/// --timeout`, and is overrunning only past the one it journaled).
fn wait_or_force(
    dir: &InstanceDir,
    agent: &ProcessHandle,
    deadline: Duration,
    notice: &dyn Notice,
) -> Result<(), EngineError> {
    let began = Instant::now();
    let mut limit = force_after(deadline, None);
    while !agent.wait_timeout(limit.saturating_sub(began.elapsed())) {
        let journaled = journal::tail(&dir.journal(), journal::LAST_RUN_BYTES)
            .ok()
            .and_then(|records| journal::stop_deadline(&records, agent.pid()));
        let granted = force_after(deadline, journaled);
        if granted > limit {
            limit = granted;
            continue;
        }
        notice.warn(&format!(
            "{}: the host agent did not finish within {:.1}s; forcing the stop",
            dir.name(),
            limit.as_secs_f64()
        ));
        force_stop(dir, ForceCause::Overran, notice)?;
        break;
    }
    Ok(())
}

/// Take an instance down for a host shutdown, as the supervisor that runs
/// it (the daemon at its exit): by its stop plan, nothing recorded as the
/// desired state (the next boot brings back what the user wanted), its
/// agent asked as a service manager asks it. `onHostShutdown: suspend`
/// saves its state first, falling back to the ladder. Forced past its
/// deadline (`force_after`); returns once it is down.
pub fn shut_down(dir: &InstanceDir, notice: &dyn Notice) -> Result<(), EngineError> {
    let config = Config::load(&dir.config()).unwrap_or_default();
    match status_of(dir)?.stop_plan() {
        StopPlan::NothingToStop | StopPlan::RemoveStaleFiles | StopPlan::ResumeToStop => Ok(()),
        StopPlan::AdoptAndStop => adopt_and_stop(dir, config.stop_timeout.0, notice),
        StopPlan::AskAgent | StopPlan::ReplaceFrozenAgent => {
            let Some(agent) = agent_of(dir)? else {
                return Ok(());
            };
            if config.on_host_shutdown == OnHostShutdown::Suspend {
                notice.step("suspending it (onHostShutdown: suspend)");
                let options = SuspendOptions {
                    timeout: Some(config.stop_timeout.0),
                    or_stop: true,
                    host_shutdown: true,
                };
                if let Err(e) = super::suspend::suspend(dir, &options, notice) {
                    notice.warn(&format!("the suspend failed: {e}"));
                }
            }
            // A suspend refused before anything began (the VM was still
            // starting) leaves it running: stop it. (An agent stopping
            // already carries on.)
            if !agent.has_exited() {
                ask_agent(&agent)?;
            }
            wait_or_force(dir, &agent, config.host_shutdown_deadline(), notice)
        }
    }
}

/// Whether an agent sent SIGTERM shows within [`AGENT_REACTION`] that it
/// acts on it: it journals its stop, or exits.
fn agent_reacts(dir: &InstanceDir, agent: &ProcessHandle) -> bool {
    let until = Instant::now() + AGENT_REACTION;
    loop {
        if agent.has_exited() {
            return true;
        }
        let stopping = journal::last(&dir.journal())
            .ok()
            .flatten()
            .is_some_and(|r| {
                r.pid == agent.pid()
                    && matches!(
                        r.event,
                        Event::Stopping { .. } | Event::StopStep { .. } | Event::Stopped { .. }
                    )
            });
        if stopping || Instant::now() > until {
            return stopping;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live host agent of `dir`, by its lock.
fn agent_of(dir: &InstanceDir) -> Result<Option<ProcessHandle>, EngineError> {
    process::open_lock_holder(&dir.agent_lock())
        .map_err(EngineError::io("inspect", dir.agent_lock()))
}

/// Kill a host agent that does not answer (the holder of the agent lock,
/// signalled by pidfd), so that its QEMU can be adopted. Journaled.
pub(super) fn replace_frozen_agent(
    dir: &InstanceDir,
    notice: &dyn Notice,
) -> Result<(), EngineError> {
    let Some(agent) = agent_of(dir)? else {
        return Ok(());
    };
    let pid = agent.pid();
    notice.step(&format!("killing the unresponsive host agent pid {pid}"));
    kill_and_wait(&agent, "host agent")?;
    let mut journal =
        Journal::open(&dir.journal()).map_err(EngineError::io("open", dir.journal()))?;
    if let Err(e) = journal.record(Event::Repaired {
        action: Repair::KilledUnresponsiveAgent,
        detail: format!("pid {pid}: did not answer its API; its QEMU is stopped by its ladder"),
    }) {
        notice.warn(&format!("cannot write the journal: {e}"));
    }
    Ok(())
}

/// Adopt a QEMU that runs without a host agent, in a host agent run in this
/// process, and run the stop ladder on it.
pub fn adopt_and_stop(
    dir: &InstanceDir,
    deadline: Duration,
    notice: &dyn Notice,
) -> Result<(), EngineError> {
    let name = dir.name();
    notice.step(&format!(
        "{name}: QEMU runs without a host agent; adopting it to stop it"
    ));
    let options = AgentOptions {
        root: dir.dir().parent().unwrap_or(dir.dir()).to_path_buf(),
        name: name.clone(),
        foreground: true,
        mode: Mode::StopOnly {
            deadline: Some(deadline),
            force: false,
        },
        repair_data: false,
        signals: false,
        upgraded: None,
    };
    match hostagent::run(&options, &mut Reporter::InProcess(notice)) {
        AgentOutcome::StartFailed { error } => Err(EngineError::StillRunning {
            name: name.clone(),
            status: format!("running (adopting it failed: {error})"),
            attempts: 1,
        }),
        // Another agent took it meanwhile: the next round asks it.
        AgentOutcome::AlreadyRunning { .. }
        | AgentOutcome::Stopped { .. }
        | AgentOutcome::Suspended { .. }
        | AgentOutcome::NothingToStop => Ok(()),
    }
}

/// Why a stop is forced (the journal says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceCause {
    /// `vmkeep stop --force`.
    Asked,
    /// `vmkeep delete --force` of a running instance.
    Delete,
    /// The host agent overran its deadline plus its margin.
    Overran,
}

impl ForceCause {
    fn words(self) -> &'static str {
        match self {
            ForceCause::Asked => "vmkeep stop --force",
            ForceCause::Delete => "vmkeep delete --force",
            ForceCause::Overran => "the host agent overran its stop deadline",
        }
    }
}

/// End the VM now: through its host agent if it answers, else by killing
/// QEMU and the agent (each verified by its lock, signalled by pidfd), then
/// remove the runtime files. Journals what it killed, and why.
pub fn force_stop(
    dir: &InstanceDir,
    cause: ForceCause,
    notice: &dyn Notice,
) -> Result<(), EngineError> {
    let mut killed = Vec::new();
    if let Some(agent) = agent_of(dir)? {
        let request = StopRequest {
            timeout_secs: None,
            force: true,
        };
        let asked = super::runtime()?
            .block_on(ApiClient::new(&dir.api_socket()).stop(&request, Duration::from_secs(1)));
        if asked.is_err() || !agent.wait_timeout(FORCED_EXIT) {
            if let Some(qemu) = our_qemu(dir)? {
                kill_and_wait(&qemu, "QEMU")?;
                killed.push(format!("QEMU pid {}", qemu.pid()));
            }
            kill_and_wait(&agent, "host agent")?;
            killed.push(format!("host agent pid {}", agent.pid()));
        }
    }
    if let Some(qemu) = our_qemu(dir)? {
        kill_and_wait(&qemu, "QEMU")?;
        killed.push(format!("QEMU pid {}", qemu.pid()));
    }
    let killed =
        (!killed.is_empty()).then(|| format!("killed by {}: {}", cause.words(), killed.join(", ")));
    let files = remove_leftovers(dir, killed)?;
    if !files.is_empty() {
        notice.step(&format!("removed {}", files.join(", ")));
    }
    Ok(())
}

fn our_qemu(dir: &InstanceDir) -> Result<Option<ProcessHandle>, EngineError> {
    qemu::find_running(dir).map_err(|e| match e {
        qemu::QemuError::ForeignLockHolder { path, pid, .. } => {
            EngineError::ForeignLockHolder { path, pid }
        }
        other => EngineError::Driver {
            name: dir.name().clone(),
            source: other,
        },
    })
}

fn kill_and_wait(process: &ProcessHandle, what: &'static str) -> Result<(), EngineError> {
    process.kill().map_err(EngineError::process(format!(
        "kill {what} pid {}",
        process.pid()
    )))?;
    if !process.wait_timeout(timeouts::KILL_WAIT) {
        return Err(EngineError::Unkillable {
            what,
            pid: process.pid(),
        });
    }
    Ok(())
}

/// With the agent's lock held (so no agent can start meanwhile), remove what
/// dead processes left; journal what was killed (and why), if anything.
fn remove_leftovers(dir: &InstanceDir, killed: Option<String>) -> Result<Vec<String>, EngineError> {
    let lock = HeldLock::try_acquire(&dir.agent_lock())
        .map_err(EngineError::io("lock", dir.agent_lock()))?
        .ok_or_else(|| EngineError::WrongState {
            name: dir.name().clone(),
            message: format!(
                "a host agent started on {} meanwhile; run the command again",
                dir.name()
            ),
        })?;
    let files = crate::instance::runtime::remove_leftovers(dir)
        .map_err(EngineError::io("clean", dir.dir()))?;
    if let Some(killed) = killed {
        // A full disk must not turn a done stop into a failure: the VM is gone.
        let recorded = Journal::open(&dir.journal()).and_then(|mut journal| {
            journal.record(Event::Stopped {
                reason: StoppedReason::Requested,
                by: Some(Step::Kill),
                after_secs: None,
                qemu_exit: killed,
            })
        });
        if let Err(e) = recorded {
            tracing::warn!("cannot write the journal: {e}");
        }
    }
    lock.remove()
        .map_err(EngineError::io("remove", dir.agent_lock()))?;
    Ok(files)
}

/// What ended the VM, from the journal.
fn how_it_ended(dir: &InstanceDir) -> How {
    match journal::last_run(
        &journal::tail(&dir.journal(), journal::LAST_RUN_BYTES).unwrap_or_default(),
    ) {
        (_, Some(record)) => match &record.event {
            Event::Stopped { by: Some(step), .. } => How::Step(*step),
            Event::Stopped {
                reason: StoppedReason::GuestPoweroff,
                ..
            } => How::GuestPoweroff,
            Event::Stopped {
                reason: StoppedReason::Crashed,
                ..
            } => How::QemuHadExited,
            _ => How::Unknown,
        },
        _ => How::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_words() {
        for step in [
            Step::PowerButton,
            Step::GuestAgentPoweroff,
            Step::Quit,
            Step::Kill,
        ] {
            assert!(!How::Step(step).words().is_empty());
        }
    }
}
