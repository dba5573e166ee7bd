//! `vmkeep daemon`: one supervisor for every instance whose config sets a
//! `runStrategy`. It does not replace the host agents: it runs one per VM
//! (`vmkeep-hostagent NAME --foreground`, in its own session, so it outlives
//! a daemon that is killed) and watches each by pidfd. Decisions are pure in
//! [`policy`]; this module only observes, spawns and signals.
//!
//! - An agent it did not start (a `vmkeep start`, or one left by a previous
//!   daemon) is watched, not restarted.
//! - An orphaned QEMU is adopted by a new agent (or, when it should not run,
//!   stopped by the engine's adopt-and-stop, in a thread of the daemon).
//! - An unwanted agent (`halted`, or `vmkeep stop` recorded) gets SIGTERM,
//!   so it runs the stop ladder; a forced stop (the engine's, in-process)
//!   comes only after its deadline.
//! - On SIGTERM/SIGINT the daemon stops every supervised VM at once and waits
//!   for them together, under one deadline: the slowest stop, not the sum.
//!   That is a host shutdown for the VMs: those with `onHostShutdown:
//!   suspend` are suspended instead (their desired state stays, so the next
//!   daemon resumes them), falling back to their stop ladder.

pub mod policy;
pub mod unit;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use self::policy::{Action, Memory, RestartLimits, Seen};
use crate::engine::stop::ForceCause;
use crate::engine::suspend::SuspendOptions;
use crate::engine::{self, EngineError, Notice};
use crate::instance::config::{OnHostShutdown, RunStrategy};
use crate::instance::desired;
use crate::instance::journal::{self, Event, Journal, LastRun};
use crate::instance::observe::observe;
use crate::instance::status;
use crate::instance::{Config, InstanceDir, InstanceName};
use crate::os::lock::HeldLock;
use crate::os::process::{Output, ProcessHandle, Program};
use crate::{notice, os, timeouts};

/// The daemon's lock (and pid) file, in the instances root.
pub const DAEMON_LOCK: &str = "daemon.pid";

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub root: PathBuf,
    pub limits: RestartLimits,
    /// How often instances are looked at.
    pub tick: Duration,
}

/// What the daemon knows about one supervised instance.
#[derive(Default)]
struct Watch {
    /// The host agent of the current run, if any (ours or adopted).
    agent: Option<ProcessHandle>,
    /// Where the agent log ended when the daemon spawned the current agent.
    log_start: Option<u64>,
    /// What the decisions remember (pure state, see `policy::decide`).
    memory: Memory,
    /// A stop the daemon runs itself (adopt-and-stop, force), in a thread.
    helper: Option<std::thread::JoinHandle<Result<(), EngineError>>>,
    /// The last problem logged, so it is logged once.
    reported: Option<String>,
}

pub fn run(options: &DaemonOptions) -> anyhow::Result<i32> {
    os::fs::create_private_dir_all(&options.root)
        .with_context(|| format!("cannot create {}", options.root.display()))?;
    let lock_path = options.root.join(DAEMON_LOCK);
    let Some(mut lock) = HeldLock::try_acquire(&lock_path)? else {
        let pid = os::lock::holder(&lock_path)?
            .map(|p| p.as_raw_nonzero().get().to_string())
            .unwrap_or_else(|| "?".into());
        bail!(
            "a vmkeep daemon already supervises {} (pid {pid}); stop it first",
            options.root.display()
        );
    };
    lock.write_pid()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(Daemon::new(options.clone())?.run());
    lock.remove()?;
    result
}

struct Daemon {
    options: DaemonOptions,
    /// Where agents go under systemd (a scope each), if systemd can be asked.
    placement: Option<os::cgroup::Placement>,
    began: Instant,
    watches: BTreeMap<InstanceName, Watch>,
}

impl Daemon {
    fn new(options: DaemonOptions) -> anyhow::Result<Daemon> {
        Ok(Daemon {
            options,
            placement: {
                // Fail now, not at the first spawn, if the agent binary is missing.
                crate::hostagent::binary::path()?;
                match os::cgroup::placement() {
                    Ok(placement) => Some(placement),
                    Err(why) => {
                        tracing::info!("host agents stay in the daemon's cgroup: {why}");
                        None
                    }
                }
            },
            began: Instant::now(),
            watches: BTreeMap::new(),
        })
    }

    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    async fn run(mut self) -> anyhow::Result<i32> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut ticks = tokio::time::interval(self.options.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(root = %self.options.root.display(), "daemon supervising");
        let why = loop {
            tokio::select! {
                _ = ticks.tick() => self.reconcile_all(),
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
            }
        };
        tracing::info!("{why}: stopping every supervised VM");
        self.stop_all().await;
        Ok(0)
    }

    fn supervised(&self) -> Vec<(InstanceDir, Config, RunStrategy)> {
        let mut found = Vec::new();
        for name in crate::instance::layout::instance_names(&self.options.root) {
            let Ok(dir) = InstanceDir::new(&self.options.root, name) else {
                continue;
            };
            // An invalid config shows in `list`; the daemon leaves it alone.
            if let Ok(config) = Config::load(&dir.config())
                && let Some(strategy) = config.run_strategy
            {
                found.push((dir, config, strategy));
            }
        }
        found
    }

    fn reconcile_all(&mut self) {
        let instances = self.supervised();
        self.watches.retain(|name, watch| {
            watch.agent.is_some() || instances.iter().any(|(d, ..)| d.name() == name)
        });
        for (dir, config, strategy) in instances {
            if let Err(e) = self.reconcile(&dir, &config, strategy) {
                self.report(dir.name(), format!("{e:#}"));
            }
        }
    }

    fn report(&mut self, name: &InstanceName, problem: String) {
        let watch = self.watches.entry(name.clone()).or_default();
        if watch.reported.as_ref() != Some(&problem) {
            tracing::warn!(instance = %name, "{problem}");
            watch.reported = Some(problem);
        }
    }

    fn reconcile(
        &mut self,
        dir: &InstanceDir,
        config: &Config,
        strategy: RunStrategy,
    ) -> anyhow::Result<()> {
        let now = self.now();
        let name = dir.name().clone();
        let watch = self.watches.entry(name.clone()).or_default();
        if watch.helper.as_ref().is_some_and(|h| h.is_finished())
            && let Some(helper) = watch.helper.take()
        {
            watch.memory.helper_busy = false;
            match helper.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(instance = %name, "stopping it failed: {e}"),
                Err(_) => tracing::error!(instance = %name, "the stop thread panicked"),
            }
        }
        let mut scope_refused = None;
        if watch.agent.as_ref().is_some_and(|a| a.has_exited()) {
            if let Some(agent) = watch.agent.take() {
                let outcome = agent.reap();
                tracing::info!(instance = %name, pid = agent.pid(), %outcome, "host agent exited");
            }
            watch.memory.agent_exited();
            if let Some(start) = watch.log_start.take() {
                scope_refused = os::cgroup::scope_failure(&os::fs::appended_since(
                    &dir.agent_log(),
                    start,
                    4096,
                ));
            }
        }
        // systemd refused the agent its scope, so it never ran: spawn
        // agents where the daemon is from now on.
        if let Some(message) = scope_refused
            && self.placement.take().is_some()
        {
            tracing::warn!("{message}; host agents now stay in the daemon's cgroup");
        }

        let status = status::derive(&observe(dir, &crate::autostart::manager::failed_unit)?);
        let records = journal::tail(&dir.journal(), journal::LAST_RUN_BYTES)?;
        let (last, decided_by) = journal::last_run(&records);
        let watch = self.watches.entry(name.clone()).or_default();
        let agent_pid = watch.agent.as_ref().map(|agent| agent.pid());
        let seen = Seen {
            status: &status,
            strategy,
            desired: desired::read(dir),
            last: &last,
            last_key: decided_by.map(|r| r.ts.as_str()),
            now,
            stop_limit: policy::stop_limit(config.stop_timeout.0, agent_pid, &records),
            limits: &self.options.limits,
        };
        let actions = policy::decide(&mut watch.memory, &seen);
        for action in actions {
            self.act(dir, config, action)?;
        }
        Ok(())
    }

    /// Carry out one decision about `dir`.
    fn act(&mut self, dir: &InstanceDir, config: &Config, action: Action) -> anyhow::Result<()> {
        let name = dir.name().clone();
        let placement = self.placement.clone();
        let watch = self.watches.entry(name.clone()).or_default();
        match action {
            Action::WatchAgent => {
                // A run the daemon did not start (or a previous daemon did).
                if let Some(agent) = os::process::open_lock_holder(&dir.agent_lock())? {
                    tracing::info!(instance = %name, pid = agent.pid(), "watching host agent");
                    watch.memory.watching_agent(agent.is_child());
                    watch.agent = Some(agent);
                }
            }
            Action::AskAgentToStop { why } => {
                if let Some(agent) = &watch.agent {
                    tracing::info!(instance = %name, "should not run ({why}): stopping it");
                    agent.terminate()?;
                }
            }
            Action::ForceStop => {
                tracing::warn!(instance = %name, "the host agent overran its stop deadline: forcing");
                watch.helper = Some(in_thread(dir, move |dir, notice| {
                    engine::stop::force_stop(dir, ForceCause::Overran, notice)
                }));
            }
            Action::AdoptToStop => {
                tracing::info!(instance = %name, "orphaned QEMU that should not run: stopping it gracefully");
                let deadline = config.stop_timeout.0;
                watch.helper = Some(in_thread(dir, move |dir, notice| {
                    engine::stop::adopt_and_stop(dir, deadline, notice)
                }));
            }
            Action::AdoptToRun => {
                tracing::info!(instance = %name, "orphaned QEMU: adopting it");
                watch.log_start = Some(os::fs::len_of(&dir.agent_log()));
                watch.agent = Some(spawn_agent(placement.as_ref(), dir, config)?);
                watch.memory.watching_agent(true);
            }
            Action::Start {
                attempt,
                after,
                backoff,
            } => {
                if after != LastRun::Never {
                    Journal::open(&dir.journal())?.record(Event::Restarting {
                        attempt,
                        after: after.describe(),
                        backoff_secs: backoff.as_secs_f64(),
                    })?;
                }
                tracing::info!(instance = %name, attempt, "starting ({})", after.describe());
                watch.log_start = Some(os::fs::len_of(&dir.agent_log()));
                watch.agent = Some(spawn_agent(placement.as_ref(), dir, config)?);
                watch.memory.watching_agent(true);
            }
            Action::GiveUp { starts, last_error } => {
                tracing::error!(instance = %name, starts, "giving up: {last_error}");
                let record = Journal::open(&dir.journal())?.record(Event::GaveUp {
                    failures: starts,
                    within_secs: self.options.limits.interval.as_secs_f64(),
                    last_error,
                })?;
                watch.memory.decided = Some(Some(record.ts));
            }
            Action::Report(problem) => {
                self.report(&name, problem.replace("NAME", name.as_str()));
            }
        }
        Ok(())
    }

    /// Stop every supervised VM at once and wait for all of them together.
    async fn stop_all(&mut self) {
        /// What a VM's stop waits on.
        enum Stopping {
            Agent(ProcessHandle),
            Helper(std::thread::JoinHandle<Result<(), EngineError>>),
            /// `onHostShutdown: suspend`: the engine's suspend, whose
            /// failure makes the agent stop the VM by its ladder.
            Suspend {
                agent: ProcessHandle,
                helper: std::thread::JoinHandle<Result<(), EngineError>>,
                told_to_stop: bool,
            },
        }
        impl Stopping {
            fn done(&mut self) -> bool {
                match self {
                    Stopping::Agent(agent) => agent.has_exited(),
                    Stopping::Helper(helper) => helper.is_finished(),
                    Stopping::Suspend {
                        agent,
                        helper,
                        told_to_stop,
                    } => {
                        // A suspend refused before anything began (the VM
                        // was still starting) leaves it running: stop it.
                        if helper.is_finished() && !*told_to_stop && !agent.has_exited() {
                            *told_to_stop = true;
                            if let Err(e) = agent.terminate() {
                                tracing::warn!("cannot signal the host agent: {e}");
                            }
                        }
                        helper.is_finished() && agent.has_exited()
                    }
                }
            }
        }
        let mut waiting: Vec<(InstanceDir, Stopping)> = Vec::new();
        let mut longest = Duration::ZERO;
        for (dir, config, _) in self.supervised() {
            let name = dir.name().clone();
            let deadline = config.stop_timeout.0;
            let suspends = config.on_host_shutdown == OnHostShutdown::Suspend;
            let watch = self.watches.entry(name.clone()).or_default();
            let agent = match watch.agent.take() {
                Some(agent) if !agent.has_exited() => Some(agent),
                _ => os::process::open_lock_holder(&dir.agent_lock())
                    .ok()
                    .flatten(),
            };
            let target = if suspends && let Some(agent) = agent {
                tracing::info!(instance = %name, "suspending it (onHostShutdown: suspend)");
                let options = SuspendOptions {
                    timeout: Some(deadline),
                    or_stop: true,
                    host_shutdown: true,
                };
                Stopping::Suspend {
                    agent,
                    helper: in_thread(&dir, move |dir, notice| {
                        engine::suspend::suspend(dir, &options, notice).map(drop)
                    }),
                    told_to_stop: false,
                }
            } else if !suspends && let Some(agent) = agent {
                if let Err(e) = agent.terminate() {
                    tracing::warn!(instance = %name, "cannot signal the host agent: {e}");
                }
                Stopping::Agent(agent)
            } else if os::lock::holder(&dir.qemu_pid()).ok().flatten().is_some() {
                Stopping::Helper(in_thread(&dir, move |dir, notice| {
                    engine::stop::adopt_and_stop(dir, deadline, notice)
                }))
            } else {
                continue;
            };
            longest = longest.max(config.host_shutdown_deadline());
            waiting.push((dir, target));
        }
        let began = Instant::now();
        let limit = longest + timeouts::STOP_MARGIN;
        tracing::info!(
            count = waiting.len(),
            "waiting for the VMs to stop (limit {limit:?})"
        );
        loop {
            waiting.retain_mut(|(dir, stopping)| {
                let done = stopping.done();
                if done {
                    if let Stopping::Agent(agent) | Stopping::Suspend { agent, .. } = stopping {
                        agent.reap();
                    }
                    tracing::info!(instance = %dir.name(), after = ?began.elapsed(), "stopped");
                }
                !done
            });
            if waiting.is_empty() || began.elapsed() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let forced: Vec<_> = waiting
            .iter()
            .map(|(dir, _)| {
                tracing::warn!(instance = %dir.name(), "still running after {limit:?}: forcing");
                in_thread(dir, |dir, notice| {
                    engine::stop::force_stop(dir, ForceCause::Overran, notice)
                })
            })
            .collect();
        for force in forced {
            let _ = force.join();
        }
        for (_, stopping) in waiting {
            match stopping {
                Stopping::Agent(agent) => {
                    agent.wait_timeout(Duration::from_secs(5));
                    agent.reap();
                }
                Stopping::Helper(helper) => {
                    let _ = helper.join();
                }
                Stopping::Suspend { agent, helper, .. } => {
                    let _ = helper.join();
                    agent.wait_timeout(Duration::from_secs(5));
                    agent.reap();
                }
            }
        }
    }
}

/// Run an engine operation on `dir` in a thread of its own (the daemon's
/// loop goes on), its notes in the daemon's log.
fn in_thread(
    dir: &InstanceDir,
    operation: impl FnOnce(&InstanceDir, &dyn Notice) -> Result<(), EngineError> + Send + 'static,
) -> std::thread::JoinHandle<Result<(), EngineError>> {
    let dir = dir.clone();
    std::thread::spawn(move || {
        let notice = notice::Logged {
            instance: dir.name().as_str(),
        };
        operation(&dir, &notice)
    })
}

/// A host agent for `dir`, in its own session (and, under systemd, its own
/// scope: it outlives the daemon's unit), logging to the instance's log.
fn spawn_agent(
    placement: Option<&os::cgroup::Placement>,
    dir: &InstanceDir,
    config: &Config,
) -> anyhow::Result<ProcessHandle> {
    let program = crate::hostagent::binary::detached(
        dir.name(),
        true,
        false,
        placement,
        config.host_shutdown_deadline(),
    )?;
    spawn_program(&program, dir)
}

fn spawn_program(program: &Program, dir: &InstanceDir) -> anyhow::Result<ProcessHandle> {
    let log = os::fs::open_append(&dir.agent_log())
        .with_context(|| format!("cannot open {}", dir.agent_log().display()))?;
    let stdout = log.try_clone()?;
    os::process::spawn_detached(program, Output::File(stdout), log)
        .with_context(|| format!("cannot run {}", program.display()))
}
