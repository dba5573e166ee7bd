//! `vmkeep stop [NAME] [--force] [--timeout D]`

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::StopArgs;
use super::util;
use crate::home;
use crate::hostagent::api::{ApiClient, StopRequest};
use crate::hostagent::report::Reporter;
use crate::hostagent::{self, AgentOptions, AgentOutcome, Mode};
use crate::instance::desired::{self, Desired};
use crate::instance::status::Broken;
use crate::instance::{Config, InstanceDir, InstanceName, Status};
use crate::journal::{self, Event, Journal, StoppedReason};
use crate::os::lock::HeldLock;
use crate::os::process::{self, ProcessHandle};
use crate::stop_ladder::Step;

/// Time the host agent gets beyond the deadline to finish the hard stop.
const AGENT_MARGIN: Duration = Duration::from_secs(15);

pub fn run(args: StopArgs) -> anyhow::Result<i32> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(InstanceName::default_instance);
    let dir = util::existing(&name)?;
    // First, so that a supervising daemon does not restart it meanwhile.
    desired::write(&dir, Desired::Stopped)
        .with_context(|| format!("cannot record the desired state in {}", dir.dir().display()))?;
    let started = Instant::now();
    // Each round acts on what it sees; a process that dies mid-way (say the
    // host agent, leaving QEMU orphaned) is dealt with in the next round.
    let mut rounds = 0;
    loop {
        let status = util::status_of(&dir)?;
        match status {
            Status::Broken(Broken::StaleRuntimeFiles { files }) => {
                clean_runtime_files(&dir, None)?;
                if rounds == 0 {
                    println!(
                        "{name} was not running; removed stale runtime files: {}",
                        files.join(", ")
                    );
                    return Ok(0);
                }
                break;
            }
            ref nothing_runs if !nothing_runs.has_live_processes() => {
                if rounds == 0 {
                    println!("{name} is not running");
                    return Ok(0);
                }
                break;
            }
            _ if rounds >= MAX_ROUNDS => bail!(
                "{name} is still {} after {MAX_ROUNDS} attempts to stop it; try `vmkeep stop --force {name}`",
                super::start::describe(&status)
            ),
            _ if args.force => {
                force_stop(&dir)?;
                super::autostart::after_forced_stop(&dir);
            }
            // Run by a service manager: stop it there, so keep-alive does not
            // restart it (a deadline of one's own cannot be passed that way).
            _ if args.timeout.is_none() && super::autostart::stop_hook(&dir)? => {}
            Status::Broken(Broken::OrphanedQemu { qemu_pid }) => {
                eprintln!(
                    "{name}: QEMU pid {qemu_pid} runs without a host agent; adopting it to stop it"
                );
                let options = AgentOptions {
                    root: home::instances_root()?,
                    name: name.clone(),
                    foreground: true,
                    mode: Mode::StopOnly {
                        deadline: args.timeout,
                        force: false,
                    },
                    repair_data: false,
                };
                match hostagent::run(&options, &mut Reporter::Terminal) {
                    AgentOutcome::StartFailed { error } => {
                        bail!("could not stop {name}: {error}")
                    }
                    // Another agent took it meanwhile: the next round asks it.
                    AgentOutcome::AlreadyRunning { .. } => {}
                    _ => {}
                }
            }
            Status::Stopped
            | Status::Running
            | Status::Starting
            | Status::Stopping
            | Status::Broken(_) => {
                stop_through_agent(&dir, args.timeout)?;
            }
        }
        rounds += 1;
    }
    println!("{}", summary(&dir, started.elapsed()));
    Ok(0)
}

/// How many times `stop` acts before it gives up and says so.
const MAX_ROUNDS: usize = 3;

/// Ask the host agent to stop (API, else SIGTERM) and wait for it to exit;
/// force the stop if it overruns its deadline.
fn stop_through_agent(dir: &InstanceDir, timeout: Option<Duration>) -> anyhow::Result<()> {
    let Some(agent) = process::open_lock_holder(&dir.agent_lock())? else {
        return Ok(()); // it exited meanwhile
    };
    let deadline = match timeout {
        Some(t) => t,
        None => Config::load(&dir.config())
            .map(|c| c.stop_timeout.0)
            .unwrap_or(Duration::from_secs(30)),
    };
    let request = StopRequest {
        timeout_secs: Some(deadline.as_secs_f64()),
        force: false,
    };
    let asked = util::runtime()?
        .block_on(ApiClient::new(&dir.api_socket()).stop(&request, Duration::from_secs(3)));
    if let Err(e) = asked {
        eprintln!(
            "{}: the host agent's API did not answer ({e}); sending it SIGTERM",
            dir.name()
        );
        agent.terminate()?;
    }
    if !agent.wait_timeout(deadline + AGENT_MARGIN) {
        eprintln!(
            "{}: the host agent did not finish within {}; forcing the stop",
            dir.name(),
            util::seconds(deadline + AGENT_MARGIN)
        );
        force_stop(dir)?;
    }
    Ok(())
}

/// End the VM now: through its host agent if it answers, else by killing
/// QEMU and the agent (each verified by its lock, signalled by pidfd), then
/// remove the runtime files.
pub(super) fn force_stop(dir: &InstanceDir) -> anyhow::Result<()> {
    let mut killed = Vec::new();
    if let Some(agent) = process::open_lock_holder(&dir.agent_lock())? {
        let request = StopRequest {
            timeout_secs: None,
            force: true,
        };
        let asked = util::runtime()?
            .block_on(ApiClient::new(&dir.api_socket()).stop(&request, Duration::from_secs(1)));
        if asked.is_err() || !agent.wait_timeout(Duration::from_secs(5)) {
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
    clean_runtime_files(dir, (!killed.is_empty()).then(|| killed.join(", ")))
}

/// The QEMU holding this instance's pid-file lock, if its command line shows
/// it is this instance's.
fn our_qemu(dir: &InstanceDir) -> anyhow::Result<Option<ProcessHandle>> {
    let Some(qemu) = process::open_lock_holder(&dir.qemu_pid())? else {
        return Ok(None);
    };
    let qmp = dir.qmp_socket();
    let Some(command_line) = process::command_line_of_live(&qemu) else {
        return Ok(None); // it was exiting, and now it is gone
    };
    let ours = command_line
        .iter()
        .any(|a| a.contains(&*qmp.to_string_lossy()));
    if !ours {
        bail!(
            "{} is locked by pid {}, which is not this instance's QEMU; not touching it",
            dir.qemu_pid().display(),
            qemu.pid()
        );
    }
    Ok(Some(qemu))
}

fn kill_and_wait(process: &ProcessHandle, what: &str) -> anyhow::Result<()> {
    process
        .kill()
        .with_context(|| format!("cannot kill {what} pid {}", process.pid()))?;
    if !process.wait_timeout(Duration::from_secs(10)) {
        bail!("{what} pid {} did not exit after SIGKILL", process.pid());
    }
    Ok(())
}

/// With the agent's lock held (so no agent can start meanwhile), remove the
/// runtime files; journal what was killed, if anything.
pub(super) fn clean_runtime_files(dir: &InstanceDir, killed: Option<String>) -> anyhow::Result<()> {
    let Some(lock) = HeldLock::try_acquire(&dir.agent_lock())? else {
        bail!(
            "a host agent started on {} meanwhile; run the command again",
            dir.name()
        );
    };
    for name in crate::instance::observe::runtime_files(dir)? {
        let path = dir.dir().join(&name);
        if path != dir.agent_lock() {
            crate::os::fs::remove_file_if_exists(&path)?;
        }
    }
    if let Some(killed) = killed {
        let mut journal = Journal::open(&dir.journal())?;
        journal.record(Event::Stopped {
            reason: StoppedReason::Requested,
            by: Some(Step::Kill),
            after_secs: None,
            qemu_exit: format!("killed by vmkeep stop --force: {killed}"),
        })?;
    }
    lock.remove()?;
    Ok(())
}

/// One line saying how the stop went, from the journal.
fn summary(dir: &InstanceDir, took: Duration) -> String {
    let name = dir.name();
    let how = match journal::last(&dir.journal())
        .ok()
        .flatten()
        .map(|r| r.event)
    {
        Some(Event::Stopped { by: Some(step), .. }) => step_words(step).to_string(),
        Some(Event::Stopped {
            reason: StoppedReason::GuestPoweroff,
            ..
        }) => "the guest powered off".into(),
        Some(Event::Stopped {
            reason: StoppedReason::Crashed,
            ..
        }) => "QEMU had exited".into(),
        _ => "done".into(),
    };
    format!("stopped {name} in {} ({how})", util::seconds(took))
}

pub fn step_words(step: Step) -> &'static str {
    match step {
        Step::PowerButton => "ACPI power button",
        Step::GuestAgentPoweroff => "guest agent power-off",
        Step::Quit => "hard stop: QMP quit",
        Step::Kill => "hard stop: SIGKILL",
    }
}
