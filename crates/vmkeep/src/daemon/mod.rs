//! `vmkeep daemon`: one supervisor for every instance whose config sets a
//! `runStrategy`. It does not replace the host agents: it runs one per VM
//! (`vmkeep-hostagent NAME --foreground`, in its own session, so it outlives
//! a daemon that is killed) and watches each by pidfd. Decisions are pure in
//! [`policy`]; this module only observes, spawns and signals.
//!
//! - An agent it did not start (a `vmkeep start`, or one left by a previous
//!   daemon) is watched, not restarted.
//! - An orphaned QEMU is adopted by a new agent (or stopped, when it should
//!   not run).
//! - An unwanted agent (`halted`, or `vmkeep stop` recorded) gets SIGTERM,
//!   so it runs the stop ladder; a forced stop comes only after its deadline.
//! - On SIGTERM/SIGINT the daemon stops every supervised VM at once and waits
//!   for them together, under one deadline: the slowest stop, not the sum.

pub mod policy;
pub mod unit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use self::policy::{RestartLimits, Restarts, Verdict};
use crate::instance::config::RunStrategy;
use crate::instance::desired::{self, Desired};
use crate::instance::observe::observe;
use crate::instance::status::{self, Broken};
use crate::instance::{Config, InstanceDir, InstanceName, Status};
use crate::journal::{self, Event, Journal, LastRun};
use crate::os;
use crate::os::lock::HeldLock;
use crate::os::process::{Output, ProcessHandle, Program};

/// The daemon's lock (and pid) file, in the instances root.
pub const DAEMON_LOCK: &str = "daemon.pid";
/// Extra time an agent gets beyond its stop deadline before a forced stop.
const STOP_MARGIN: Duration = Duration::from_secs(15);

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
    /// The daemon saw the current run's agent exit.
    witnessed_end: bool,
    /// Key of the run ending already decided on (`Some(None)`: "never ran"
    /// was decided on).
    decided: Option<Option<String>>,
    restarts: Restarts,
    /// A (re)start decided on: when, and after what.
    start_at: Option<(Duration, LastRun, Duration)>,
    /// When the daemon asked the agent to stop.
    stop_asked: Option<Duration>,
    /// A `vmkeep stop` the daemon spawned.
    helper: Option<ProcessHandle>,
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
    /// `vmkeep`, for `vmkeep stop` helpers.
    exe: PathBuf,
    /// Where agents go under systemd (a scope each), if systemd can be asked.
    placement: Option<os::cgroup::Placement>,
    began: Instant,
    watches: BTreeMap<InstanceName, Watch>,
}

impl Daemon {
    fn new(options: DaemonOptions) -> anyhow::Result<Daemon> {
        Ok(Daemon {
            options,
            exe: os::process::current_exe()?,
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
        if watch.helper.as_ref().is_some_and(|h| h.has_exited())
            && let Some(helper) = watch.helper.take()
        {
            helper.reap();
        }
        if watch.agent.as_ref().is_some_and(|a| a.has_exited()) {
            if let Some(agent) = watch.agent.take() {
                let outcome = agent.reap();
                tracing::info!(instance = %name, pid = agent.pid(), %outcome, "host agent exited");
            }
            watch.witnessed_end = true;
            // systemd refused the agent its scope, so it never ran: spawn
            // agents where the daemon is from now on.
            if self.placement.is_some()
                && let Some(start) = watch.log_start.take()
                && let Some(message) = os::cgroup::scope_failure(&os::fs::appended_since(
                    &dir.agent_log(),
                    start,
                    4096,
                ))
            {
                tracing::warn!("{message}; host agents now stay in the daemon's cgroup");
                self.placement = None;
            }
        }
        let watch = self.watches.entry(name.clone()).or_default();

        let status = status::derive(&observe(dir)?);
        let desired = desired::read(dir);
        let unwanted = strategy == RunStrategy::Halted || desired == Some(Desired::Stopped);
        match status {
            Status::Running
            | Status::Starting
            | Status::Stopping
            | Status::Broken(Broken::QemuGone { .. } | Broken::AgentUnresponsive { .. }) => {
                watch.start_at = None;
                if watch.agent.is_none() {
                    // A run the daemon did not start (or a previous daemon did).
                    watch.agent = os::process::open_lock_holder(&dir.agent_lock())?;
                    if let Some(agent) = &watch.agent {
                        tracing::info!(instance = %name, pid = agent.pid(), "watching host agent");
                        if !agent.is_child() {
                            watch.restarts.reset();
                        }
                    }
                }
                if unwanted
                    && watch.stop_asked.is_none()
                    && status != Status::Stopping
                    && let Some(agent) = &watch.agent
                {
                    tracing::info!(instance = %name, "should not run ({}): stopping it", why_unwanted(strategy));
                    agent.terminate()?;
                    watch.stop_asked = Some(now);
                }
                if let Some(asked) = watch.stop_asked
                    && now.saturating_sub(asked) > config.stop_timeout.0 + STOP_MARGIN
                    && watch.helper.is_none()
                {
                    tracing::warn!(instance = %name, "the host agent overran its stop deadline: forcing");
                    watch.helper = Some(spawn_logged(
                        &self.exe,
                        dir,
                        &["stop", "--force", name.as_str()],
                    )?);
                }
            }
            Status::Broken(Broken::OrphanedQemu { qemu_pid }) => {
                if watch.helper.is_none() && watch.agent.is_none() {
                    if unwanted {
                        tracing::info!(instance = %name, qemu_pid, "orphaned QEMU that should not run: stopping it gracefully");
                        watch.helper =
                            Some(spawn_logged(&self.exe, dir, &["stop", name.as_str()])?);
                    } else {
                        tracing::info!(instance = %name, qemu_pid, "orphaned QEMU: adopting it");
                        watch.log_start = Some(os::fs::len_of(&dir.agent_log()));
                        watch.agent = Some(spawn_agent(self.placement.as_ref(), dir, config)?);
                    }
                }
            }
            Status::Stopped
            | Status::Broken(Broken::StaleRuntimeFiles { .. } | Broken::GaveUp { .. }) => {
                watch.stop_asked = None;
                if watch.agent.is_some() {
                    return Ok(()); // ours, still taking its lock
                }
                let records = journal::tail(&dir.journal(), journal::LAST_RUN_BYTES)?;
                let (last, decided_by) = journal::last_run(&records);
                let key = decided_by.map(|r| r.ts.clone());
                if watch.decided.as_ref() != Some(&key) {
                    watch.decided = Some(key);
                    let witnessed = std::mem::take(&mut watch.witnessed_end);
                    watch.start_at = None;
                    if policy::should_run(strategy, desired, &last, witnessed) {
                        let paced = last.is_failure() || witnessed;
                        let verdict = if paced {
                            watch.restarts.next(&self.options.limits, now)
                        } else {
                            Verdict::StartAt(now)
                        };
                        match verdict {
                            Verdict::StartAt(at) => watch.start_at = Some((at, last, at - now)),
                            Verdict::GiveUp { starts } => {
                                let error = last.describe();
                                tracing::error!(instance = %name, starts, "giving up: {error}");
                                let record =
                                    Journal::open(&dir.journal())?.record(Event::GaveUp {
                                        failures: starts,
                                        within_secs: self.options.limits.interval.as_secs_f64(),
                                        last_error: error,
                                    })?;
                                watch.decided = Some(Some(record.ts));
                            }
                        }
                    }
                }
                if let Some((at, after, delay)) = &watch.start_at
                    && now >= *at
                {
                    let attempt = watch.restarts.attempts() + 1;
                    if *after != LastRun::Never {
                        Journal::open(&dir.journal())?.record(Event::Restarting {
                            attempt,
                            after: after.describe(),
                            backoff_secs: delay.as_secs_f64(),
                        })?;
                    }
                    tracing::info!(instance = %name, attempt, "starting ({})", after.describe());
                    watch.restarts.record_start(now);
                    watch.start_at = None;
                    watch.log_start = Some(os::fs::len_of(&dir.agent_log()));
                    watch.agent = Some(spawn_agent(self.placement.as_ref(), dir, config)?);
                }
            }
            Status::Broken(other) => {
                let problem = format!(
                    "{}; {}",
                    other.message(),
                    other.hint().replace("NAME", name.as_str())
                );
                self.report(&name, problem);
            }
        }
        Ok(())
    }

    /// Stop every supervised VM at once and wait for all of them together.
    async fn stop_all(&mut self) {
        let mut waiting: Vec<(InstanceName, ProcessHandle, Duration)> = Vec::new();
        let mut longest = Duration::ZERO;
        for (dir, config, _) in self.supervised() {
            let name = dir.name().clone();
            let deadline = config.stop_timeout.0;
            let watch = self.watches.entry(name.clone()).or_default();
            let agent = match watch.agent.take() {
                Some(agent) if !agent.has_exited() => Some(agent),
                _ => os::process::open_lock_holder(&dir.agent_lock())
                    .ok()
                    .flatten(),
            };
            let target = if let Some(agent) = agent {
                if let Err(e) = agent.terminate() {
                    tracing::warn!(instance = %name, "cannot signal the host agent: {e}");
                }
                agent
            } else if os::lock::holder(&dir.qemu_pid()).ok().flatten().is_some() {
                match spawn_logged(&self.exe, &dir, &["stop", name.as_str()]) {
                    Ok(helper) => helper,
                    Err(e) => {
                        tracing::warn!(instance = %name, "cannot stop the orphaned QEMU: {e}");
                        continue;
                    }
                }
            } else {
                continue;
            };
            longest = longest.max(deadline);
            waiting.push((name, target, deadline));
        }
        let began = Instant::now();
        let limit = longest + STOP_MARGIN;
        tracing::info!(
            count = waiting.len(),
            "waiting for the VMs to stop (limit {limit:?})"
        );
        loop {
            waiting.retain(|(name, process, _)| {
                if process.has_exited() {
                    process.reap();
                    tracing::info!(instance = %name, after = ?began.elapsed(), "stopped");
                    false
                } else {
                    true
                }
            });
            if waiting.is_empty() || began.elapsed() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (name, process, _) in waiting {
            tracing::warn!(instance = %name, "still running after {limit:?}: forcing");
            let dir = InstanceDir::new(&self.options.root, name.clone());
            if let Ok(dir) = dir
                && let Ok(force) =
                    spawn_logged(&self.exe, &dir, &["stop", "--force", name.as_str()])
            {
                force.wait_timeout(Duration::from_secs(30));
                force.reap();
            }
            process.wait_timeout(Duration::from_secs(5));
            process.reap();
        }
    }
}

fn why_unwanted(strategy: RunStrategy) -> &'static str {
    if strategy == RunStrategy::Halted {
        "runStrategy: halted"
    } else {
        "`vmkeep stop` was asked"
    }
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
        config.stop_timeout.0,
    )?;
    spawn_program(&program, dir)
}

/// `program args`, detached, its output appended to the instance's agent log.
fn spawn_logged<S: AsRef<std::ffi::OsStr>>(
    program: &Path,
    dir: &InstanceDir,
    args: &[S],
) -> anyhow::Result<ProcessHandle> {
    spawn_program(&Program::new(program, args), dir)
}

fn spawn_program(program: &Program, dir: &InstanceDir) -> anyhow::Result<ProcessHandle> {
    let log = os::fs::open_append(&dir.agent_log())
        .with_context(|| format!("cannot open {}", dir.agent_log().display()))?;
    let stdout = log.try_clone()?;
    os::process::spawn_detached(program, Output::File(stdout), log)
        .with_context(|| format!("cannot run {}", program.display()))
}
