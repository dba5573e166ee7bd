//! `vmkeep daemon`: one supervisor for every instance whose config sets a
//! `runStrategy`. It does not replace the host agents: it runs one per VM
//! (`vmkeep-hostagent NAME --foreground`, in its own session, so it outlives
//! a daemon that is killed) and watches each by pidfd. Decisions are pure in
//! [`policy`]; this module observes and carries them out, spawning, stopping
//! and suspending only through the engine (`engine::agent`,
//! `engine::stop`, `engine::suspend`), which every other stop requester
//! uses too.
//!
//! - An agent it did not start (a `vmkeep start`, or one left by a previous
//!   daemon) is watched, not restarted.
//! - An orphaned QEMU is adopted by a new agent (or, when it should not run,
//!   stopped by the engine's adopt-and-stop, in a thread of the daemon).
//! - An unwanted agent (`halted`, or `vmkeep stop` recorded) is asked to
//!   stop (`engine::stop::ask_agent`), so it runs the stop ladder; a forced
//!   stop (the engine's, in-process) comes only past `stop_ladder::force_after`.
//! - A SIGTERM for a restart of its own systemd unit (`systemctl restart`:
//!   a `restart` job on the unit) leaves every VM running: the agents are
//!   in scopes of their own, and the next daemon watches them again
//!   ([`policy::at_exit`] decides).
//! - On any other SIGTERM, and on SIGINT, the daemon takes every supervised VM down at once
//!   (`engine::stop::shut_down`, one thread each) and waits for them
//!   together: the slowest stop, not the sum. That is a host shutdown for
//!   the VMs: those with `onHostShutdown: suspend` are suspended instead
//!   (their desired state stays, so the next daemon resumes them), falling
//!   back to their stop ladder.

pub mod error;
pub mod install;
pub mod policy;
mod reexec;
pub mod unit;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

pub use self::error::DaemonError;
use self::policy::{Action, AtExit, Memory, RestartLimits, Seen, Termination};
use crate::engine::agent::{self, Reports, Spawned};
use crate::engine::stop::ForceCause;
use crate::engine::{self, EngineError, Notice};
use crate::hostagent::bounded_logs;
use crate::instance::config::RunStrategy;
use crate::instance::desired;
use crate::instance::journal::{self, Event, Journal, LastRun};
use crate::instance::{Config, Home, InstanceDir, InstanceName};
use crate::link::repeats;
use crate::link::untrusted::LogBudget;
use crate::os::lock::HeldLock;
use crate::os::process::ProcessHandle;
use crate::{notice, os};

/// The daemon's lock (and pid) file, in the instances root.
pub const DAEMON_LOCK: &str = crate::engine::upgrade_daemon::DAEMON_LOCK;

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub home: Home,
    pub limits: RestartLimits,
    /// How often instances are looked at.
    pub tick: Duration,
    /// The lock the daemon's previous image held, kept across its exec
    /// (an in-place upgrade, see `reexec`).
    pub inherited_lock: Option<i32>,
    /// How many in-place upgrades this daemon went through.
    pub generation: u64,
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

pub fn run(options: &DaemonOptions) -> Result<i32, DaemonError> {
    let root = &options.home.root;
    os::fs::create_private_dir_all(root).map_err(EngineError::io("create", root))?;
    let lock_path = root.join(DAEMON_LOCK);
    let mut lock = match options.inherited_lock {
        Some(fd) => {
            let lock = HeldLock::inherited(fd, &lock_path)
                .map_err(EngineError::io("take over the lock", &lock_path))?;
            tracing::info!(
                build = %crate::formats::BUILD,
                generation = options.generation,
                "daemon upgraded in place: now running this build"
            );
            lock
        }
        None => {
            let Some(lock) =
                HeldLock::try_acquire(&lock_path).map_err(EngineError::io("lock", &lock_path))?
            else {
                let pid = os::lock::holder(&lock_path)
                    .map_err(EngineError::io("inspect", &lock_path))?
                    .map(|p| p.as_raw_nonzero().get().to_string())
                    .unwrap_or_else(|| "?".into());
                return Err(DaemonError::AlreadyRunning {
                    root: root.clone(),
                    pid,
                });
            };
            lock
        }
    };
    lock.write_pid()
        .map_err(EngineError::io("write", &lock_path))?;
    // The binary to become at an upgrade: the path this image was run from
    // (read now, while it names a file; once replaced on disk, this
    // process's own link would say "(deleted)").
    let exe = os::process::current_exe()
        .map_err(EngineError::process("cannot find the daemon's own binary"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::process("cannot start an async runtime"))?;
    loop {
        let daemon = Daemon::new(options.clone(), exe.clone())?;
        match runtime.block_on(daemon.run())? {
            Ended::Exit(code) => {
                lock.remove()
                    .map_err(EngineError::io("remove", &lock_path))?;
                return Ok(code);
            }
            Ended::Upgrade => {
                let error = reexec::exec(&exe, &args, &lock, options.generation);
                // Only on failure: the daemon goes on, on this build.
                tracing::warn!(
                    exe = %exe.display(),
                    "daemon upgrade failed: {error}; running on, on this build"
                );
            }
        }
    }
}

/// How a daemon's run ended.
enum Ended {
    /// Exit with this code.
    Exit(i32),
    /// Become the installed binary (SIGHUP), its check passed.
    Upgrade,
}

struct Daemon {
    options: DaemonOptions,
    /// Where agents go under systemd (a scope each), if systemd can be asked.
    placement: Option<os::cgroup::Placement>,
    began: Instant,
    watches: BTreeMap<InstanceName, Watch>,
    /// The daemon's own binary, checked at SIGHUP before it becomes it.
    exe: std::path::PathBuf,
}

impl Daemon {
    fn new(options: DaemonOptions, exe: std::path::PathBuf) -> Result<Daemon, DaemonError> {
        // Fail now, not at the first spawn, if the agent binary is missing.
        agent::check_binary()?;
        Ok(Daemon {
            options,
            placement: match os::cgroup::placement() {
                Ok(placement) => Some(placement),
                Err(why) => {
                    tracing::info!("host agents stay in the daemon's cgroup: {why}");
                    None
                }
            },
            began: Instant::now(),
            watches: BTreeMap::new(),
            exe,
        })
    }

    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    async fn run(mut self) -> Result<Ended, DaemonError> {
        let signals = || EngineError::process("cannot install signal handlers");
        let mut terminate = signal(SignalKind::terminate()).map_err(signals())?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signals())?;
        // SIGHUP: move onto the installed binary (`vmkeep upgrade`,
        // `systemctl reload`); the VMs run on.
        let mut hangup = signal(SignalKind::hangup()).map_err(signals())?;
        let mut ticks = tokio::time::interval(self.options.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(root = %self.options.home.root.display(), "daemon supervising");
        // Its own log, when a unit sends its output there (see `unit::LOG_FILE`).
        let log = [bounded_logs::Watched {
            file: os::capped::CappedFile::at(self.options.home.root.join(unit::LOG_FILE)),
            bound: bounded_logs::log_bound(),
            own: true,
        }];
        let (mut cuts, mut failures) = (LogBudget::default(), LogBudget::default());
        let why = loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.reconcile_all();
                    bounded_logs::check_all(&log, &mut cuts, &mut failures);
                }
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
                _ = hangup.recv() => {
                    let exe = self.exe.clone();
                    let checked = tokio::task::spawn_blocking(move || {
                        crate::engine::upgrade_daemon::check_binary(&exe)
                    })
                    .await
                    .unwrap_or_else(|_| Err("the check panicked".into()));
                    match checked {
                        Ok(version) => {
                            tracing::info!(
                                from = %crate::formats::BUILD,
                                to = %version,
                                "SIGHUP: upgrading the daemon in place (its VMs run on)"
                            );
                            self.finish_helpers().await;
                            return Ok(Ended::Upgrade);
                        }
                        Err(why) => tracing::warn!(
                            "SIGHUP: not upgrading the daemon: {why}; running on, on this build"
                        ),
                    }
                }
            }
        };
        let at_exit = match why {
            "SIGTERM" => policy::at_exit(&self.termination().await),
            _ => AtExit::StopAll { why: "interrupted" },
        };
        match at_exit {
            AtExit::LeaveRunning => {
                tracing::info!(
                    "{why} for a restart of the daemon's unit: leaving every VM running, the next daemon takes them over"
                );
                self.finish_helpers().await;
            }
            AtExit::StopAll { why: because } => {
                tracing::info!("{why} ({because}): stopping every supervised VM");
                self.stop_all().await;
            }
        }
        Ok(Ended::Exit(0))
    }

    /// What a SIGTERM means: the job systemd runs on the daemon's unit,
    /// and whether the host is going down, each asked in a bounded time (an
    /// answer that does not come counts as unknown: a stop).
    async fn termination(&self) -> Termination {
        let limit = crate::timeouts::API_ANSWER;
        let asked = tokio::task::spawn_blocking(os::service_manager::own_unit_job);
        let unit_job = match tokio::time::timeout(limit, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err("systemd did not say in time".into()),
        };
        let host_shutting_down = match unit_job {
            Ok(Some(_)) => {
                let asked = tokio::task::spawn_blocking(os::service_manager::host_shutting_down);
                match tokio::time::timeout(limit, asked).await {
                    Ok(Ok(Ok(down))) => Some(down),
                    _ => None,
                }
            }
            _ => None,
        };
        let seen = Termination {
            unit_job,
            host_shutting_down,
            agents_outside: self.placement.is_some(),
        };
        tracing::info!(?seen, "SIGTERM");
        seen
    }

    /// Let the stops the daemon runs itself (adopt-and-stop, force) finish
    /// before it exits, so none is cut off half way.
    async fn finish_helpers(&mut self) {
        for watch in self.watches.values_mut() {
            if let Some(helper) = watch.helper.take() {
                while !helper.is_finished() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = helper.join();
            }
        }
    }

    fn supervised(&self) -> Vec<(InstanceDir, Config, RunStrategy)> {
        let home = &self.options.home;
        let mut found = Vec::new();
        for name in home.instance_names() {
            let Ok(dir) = home.layout_any(&name) else {
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
                self.report(dir.name(), e.to_string());
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
    ) -> Result<(), DaemonError> {
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
                if let Some(repeated) = repeats::allow(&format!("agent exited {name}")) {
                    tracing::info!(instance = %name, pid = agent.pid(), %outcome, "host agent exited{repeated}");
                }
            }
            watch.memory.agent_exited();
            if let Some(start) = watch.log_start.take() {
                scope_refused = agent::scope_refused(dir, start);
            }
        }
        // systemd refused the agent its scope, so it never ran: spawn
        // agents where the daemon is from now on.
        if let Some(message) = scope_refused
            && self.placement.take().is_some()
        {
            tracing::warn!("{message}; host agents now stay in the daemon's cgroup");
        }

        let status = engine::status_of(dir)?;
        let records = journal::tail(&dir.journal(), journal::LAST_RUN_BYTES)
            .map_err(EngineError::io("read", dir.journal()))?;
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
    fn act(
        &mut self,
        dir: &InstanceDir,
        config: &Config,
        action: Action,
    ) -> Result<(), DaemonError> {
        let name = dir.name().clone();
        let placement = self.placement.clone();
        let watch = self.watches.entry(name.clone()).or_default();
        match action {
            Action::WatchAgent => {
                // A run the daemon did not start (or a previous daemon did).
                if let Some(agent) = os::process::open_lock_holder(&dir.agent_lock())
                    .map_err(EngineError::io("inspect", dir.agent_lock()))?
                {
                    if let Some(repeated) = repeats::allow(&format!("watching {name}")) {
                        tracing::info!(instance = %name, pid = agent.pid(), "watching host agent{repeated}");
                    }
                    watch.memory.watching_agent(agent.is_child());
                    watch.agent = Some(agent);
                }
            }
            Action::AskAgentToStop { why } => {
                if let Some(agent) = &watch.agent {
                    tracing::info!(instance = %name, "should not run ({why}): stopping it");
                    engine::stop::ask_agent(agent)?;
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
                spawn_agent(watch, placement.as_ref(), dir, config)?;
            }
            Action::Start {
                attempt,
                after,
                backoff,
            } => {
                if after != LastRun::Never {
                    record(
                        dir,
                        Event::Restarting {
                            attempt,
                            after: after.describe(),
                            backoff_secs: backoff.as_secs_f64(),
                        },
                    )?;
                }
                if let Some(repeated) = repeats::allow(&format!("starting {name}")) {
                    tracing::info!(instance = %name, attempt, "starting ({}){repeated}", after.describe());
                }
                spawn_agent(watch, placement.as_ref(), dir, config)?;
            }
            Action::GiveUp { starts, last_error } => {
                tracing::error!(instance = %name, starts, "giving up: {last_error}");
                let record = record(
                    dir,
                    Event::GaveUp {
                        failures: starts,
                        within_secs: self.options.limits.interval.as_secs_f64(),
                        last_error,
                    },
                )?;
                watch.memory.decided = Some(Some(record.ts));
            }
            Action::Report(problem) => {
                self.report(&name, problem.replace("NAME", name.as_str()));
            }
        }
        Ok(())
    }

    /// Take every supervised VM down at once (the engine's host-shutdown
    /// stop, one thread each) and wait for all of them together.
    async fn stop_all(&mut self) {
        let began = Instant::now();
        let stopping: Vec<_> = self
            .supervised()
            .into_iter()
            .map(|(dir, ..)| {
                let helper = in_thread(&dir, engine::stop::shut_down);
                (dir, helper)
            })
            .collect();
        tracing::info!(count = stopping.len(), "waiting for the VMs to stop");
        for (dir, helper) in stopping {
            while !helper.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            match helper.join() {
                Ok(Ok(())) => {
                    tracing::info!(instance = %dir.name(), after = ?began.elapsed(), "stopped")
                }
                Ok(Err(e)) => tracing::warn!(instance = %dir.name(), "stopping it failed: {e}"),
                Err(_) => tracing::error!(instance = %dir.name(), "the stop thread panicked"),
            }
        }
        // Reap the agents the daemon spawned (they are its children).
        for watch in self.watches.values_mut() {
            if let Some(agent) = watch.agent.take() {
                agent.wait_timeout(Duration::from_secs(5));
                agent.reap();
            }
            if let Some(helper) = watch.helper.take() {
                let _ = helper.join();
            }
        }
    }
}

/// Spawn the host agent of `dir` (through the engine, as `start` does), in
/// its own session and, under systemd, its own scope (it outlives the
/// daemon's unit), reporting into the instance's log; watch it.
fn spawn_agent(
    watch: &mut Watch,
    placement: Option<&os::cgroup::Placement>,
    dir: &InstanceDir,
    config: &Config,
) -> Result<(), DaemonError> {
    let Spawned { agent, log_start } = agent::spawn(dir, config, Reports::Log, false, placement)?;
    watch.agent = Some(agent);
    watch.log_start = Some(log_start);
    watch.memory.watching_agent(true);
    Ok(())
}

/// Journal what the daemon decided.
fn record(dir: &InstanceDir, event: Event) -> Result<journal::Record, DaemonError> {
    Journal::open(&dir.journal())
        .and_then(|mut journal| journal.record(event))
        .map_err(EngineError::io("write the journal", dir.journal()))
        .map_err(DaemonError::from)
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
