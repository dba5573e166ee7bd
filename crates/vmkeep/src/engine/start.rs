//! `start`: make an instance run (creating `default` on first use), by a
//! host agent spawned detached, by the service manager that runs it, or,
//! for `--foreground`, by the calling process becoming the agent. Waits
//! until the guest is ready. What happens in each status is
//! `Status::start_plan`'s decision.

use std::io::BufRead;
use std::time::Duration;

use super::{EngineError, Notice, agent, status_of, wait_for_status};
use crate::autostart::hooks;
use crate::engine::create::CreateError;
use crate::hostagent::api::{ApiClient, ApiError};
use crate::hostagent::report::Report;
use crate::instance::config::{DEFAULT_TEMPLATE, RunStrategy};
use crate::instance::desired::{self, Desired};
use crate::instance::home::{Home, LookupError};
use crate::instance::pause::PauseReason;
use crate::instance::status::{Broken, StartPlan};
use crate::instance::{Config, InstanceDir, InstanceName, Status};
use crate::os;
use crate::os::process::Program;
use crate::timeouts;

/// How many times `start` re-reads the status while others change it.
const MAX_ROUNDS: usize = 4;
/// How long a host agent cleaning up after its QEMU exited may take.
const CLEANUP_WAIT: Duration = Duration::from_secs(10);
/// Space the host filesystem must have for a start: the agent's runtime
/// files, journal and logs, and the guest's first writes. The guest's RAM
/// takes none (a memfd; see `driver::qemu::args`), a resume none beyond
/// this (its saved RAM is there already).
pub const MIN_FREE_TO_START: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The guest checks (e2fsck) the data disk before mounting it.
    pub repair_data: bool,
    /// The caller becomes the host agent (what service managers run).
    pub foreground: bool,
    /// Go through the service manager when it runs the instance (so it owns
    /// the agent and keeps it alive).
    pub through_service_manager: bool,
    /// Throw away a saved state first and boot afresh (the guest loses what
    /// was in its memory; its disk keeps what was written to it).
    pub discard_state: bool,
}

/// How a start ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// A host agent this start spawned runs it now.
    Running {
        agent_pid: u32,
        qemu_pid: Option<u32>,
        accel: Option<String>,
    },
    /// It was running already.
    AlreadyRunning,
    /// Another start was bringing it up; it runs now.
    CameUp,
    /// The service manager started it; it runs now.
    ThroughServiceManager { service: String },
    /// QEMU had paused it (`reason`); it runs on now.
    Continued { reason: PauseReason },
    /// `--foreground`: run this program in place of the caller (same pid).
    BecomeAgent(Program),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StartOutcome {
    /// `default` did not exist and was created first.
    pub created: bool,
    pub started: Started,
}

pub fn start(
    home: &Home,
    name: &InstanceName,
    options: &StartOptions,
    notice: &dyn Notice,
) -> Result<StartOutcome, EngineError> {
    let dir = home.layout(name)?;
    let created = !dir.dir().is_dir() && create_default(home, name)?;
    let config = Config::load(&dir.config())?;
    check_startable(&dir, &config)?;
    if options.discard_state && dir.has_saved_state() {
        if status_of(&dir)?.has_live_processes() {
            return Err(EngineError::WrongState {
                name: name.clone(),
                message: format!("{name} runs: its saved state is in use; stop it first"),
            });
        }
        super::suspend::discard_state(&dir, notice)?;
    }
    if options.repair_data {
        refuse_repair_unless_stopped(&dir, &config)?;
    }
    desired::write(&dir, Desired::Running)
        .map_err(EngineError::io("record the desired state in", dir.dir()))?;
    if options.through_service_manager
        && !options.foreground
        && let Some(service) = start_through_service_manager(&dir, notice)?
    {
        return Ok(StartOutcome {
            created,
            started: Started::ThroughServiceManager { service },
        });
    }
    let started = match settle(&dir, &config, notice)? {
        Settled::Boot => boot(&dir, &config, options, notice)?,
        Settled::Done(started) => {
            if options.foreground {
                // This process has nothing to supervise: a service manager
                // waiting for readiness hears so, and sees a clean exit.
                os::service_notify::ready(&format!(
                    "{name} is run by another host agent; nothing to supervise"
                ));
            }
            started
        }
    };
    Ok(StartOutcome { created, started })
}

/// Refuse what a start would refuse for the config alone, before anything
/// is touched: `runStrategy: halted`, and a `disk:` smaller than the disk
/// (never shrunk; a resume keeps the disk as it is, so only a fresh boot
/// is checked).
pub fn check_startable(dir: &InstanceDir, config: &Config) -> Result<(), EngineError> {
    let name = dir.name();
    if config.run_strategy == Some(RunStrategy::Halted) {
        return Err(EngineError::WrongState {
            name: name.clone(),
            message: format!(
                "{name} has runStrategy: halted, so it is kept stopped; change runStrategy in {} to start it",
                dir.config().display()
            ),
        });
    }
    if dir.has_saved_state() || !dir.disk().is_file() {
        return Ok(());
    }
    match crate::image::disk_size::change(dir, config) {
        Ok(change) => match change.refusal(name.as_str()) {
            Some(message) => Err(super::edit::EditError::Shrink {
                message: format!(
                    "{message}; `vmkeep edit {name} --disk SIZE` sets it (in {})",
                    dir.config().display()
                ),
            }
            .into()),
            None => Ok(()),
        },
        // The host agent reports what is wrong with the disk.
        Err(e) => {
            tracing::debug!("cannot inspect the disk of {name}: {e}");
            Ok(())
        }
    }
}

/// Resume a suspended instance without recording that it should run, and
/// without its service manager: `stop` does this to let a suspended guest
/// power off by its own ladder.
pub fn resume_quietly(dir: &InstanceDir, notice: &dyn Notice) -> Result<(), EngineError> {
    let config = Config::load(&dir.config())?;
    match settle(dir, &config, notice)? {
        Settled::Boot => {
            boot(dir, &config, &StartOptions::default(), notice)?;
        }
        Settled::Done(_) => {}
    }
    Ok(())
}

/// Create `default` on first use. Several starts at once may race to it:
/// whichever loses finds it made, which is as good.
fn create_default(home: &Home, name: &InstanceName) -> Result<bool, EngineError> {
    if *name != InstanceName::default_instance() {
        return Err(LookupError::NotFound { name: name.clone() }.into());
    }
    match crate::engine::create::create_text(
        &home.root,
        name,
        DEFAULT_TEMPLATE,
        "the built-in template",
    ) {
        Ok(_) => Ok(true),
        Err(CreateError::Exists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Refuse to start on a host filesystem without room for the agent's
/// files, naming it.
fn ensure_room(dir: &InstanceDir) -> Result<(), EngineError> {
    let space = os::fs::free_space(dir.dir())
        .map_err(EngineError::io("inspect the filesystem of", dir.dir()))?;
    let needed = MIN_FREE_TO_START;
    if space.available_bytes < needed {
        return Err(EngineError::NoRoom {
            name: dir.name().clone(),
            filesystem: space.mount_point,
            free: space.available_bytes,
            needed,
        });
    }
    Ok(())
}

fn start_through_service_manager(
    dir: &InstanceDir,
    notice: &dyn Notice,
) -> Result<Option<String>, EngineError> {
    let Some((record, service)) = hooks::managed(dir) else {
        return Ok(None);
    };
    let observe = || super::observed_status(dir);
    Ok(hooks::start_through(
        dir,
        &record,
        service.as_ref(),
        &observe,
        notice,
    )?)
}

enum Settled {
    /// Nothing runs it: boot (or adopt) now.
    Boot,
    /// It runs; nothing else to do.
    Done(Started),
}

/// Follow the start plan until the instance either needs booting or runs.
fn settle(dir: &InstanceDir, config: &Config, notice: &dyn Notice) -> Result<Settled, EngineError> {
    let name = dir.name();
    for _ in 0..MAX_ROUNDS {
        let status = status_of(dir)?;
        match status.start_plan() {
            StartPlan::Boot => return Ok(Settled::Boot),
            StartPlan::ReplaceFrozenAgent => {
                super::stop::replace_frozen_agent(dir, notice)?;
                return Ok(Settled::Boot);
            }
            StartPlan::AlreadyRunning => return Ok(Settled::Done(Started::AlreadyRunning)),
            StartPlan::ContinuePaused => {
                let Status::Paused(reason) = status else {
                    continue;
                };
                notice.step(&format!(
                    "{name} is paused ({}): letting it run on",
                    reason.message()
                ));
                let client = ApiClient::new(&dir.api_socket());
                return match super::runtime()?
                    .block_on(client.continue_running(timeouts::API_ANSWER))
                {
                    Ok(_) => Ok(Settled::Done(Started::Continued { reason })),
                    Err(ApiError::Refused { message, .. }) => Err(EngineError::StillPaused {
                        name: name.clone(),
                        reason: message,
                    }),
                    // It may have stopped meanwhile: look again.
                    Err(other) => {
                        tracing::debug!("no answer to the continue: {other}");
                        continue;
                    }
                };
            }
            StartPlan::WaitUntilRunning => {
                notice.step(&format!(
                    "{name} is already starting; waiting until it runs"
                ));
                wait_until_running(dir, config.boot_timeout.0)?;
                return Ok(Settled::Done(Started::CameUp));
            }
            StartPlan::WaitForStop => {
                notice.step(&format!("{name} is stopping; waiting to start it again"));
                let limit = config.stop_timeout.0 + timeouts::STOP_MARGIN;
                let after = wait_for_status(dir, limit, |s| *s != Status::Stopping)?;
                if after == Status::Stopping {
                    return Err(EngineError::WrongState {
                        name: name.clone(),
                        message: format!(
                            "{name} is still stopping after {:.1}s; try `vmkeep stop --force {name}`",
                            limit.as_secs_f64()
                        ),
                    });
                }
            }
            StartPlan::WaitForCleanup => {
                wait_for_status(dir, CLEANUP_WAIT, |s| {
                    !matches!(s, Status::Broken(Broken::QemuGone { .. }))
                })?;
            }
            StartPlan::Refuse => {
                let Status::Broken(broken) = status else {
                    unreachable!("only Broken statuses are refused")
                };
                return Err(EngineError::Broken {
                    name: name.clone(),
                    broken,
                });
            }
        }
    }
    Err(EngineError::WrongState {
        name: name.clone(),
        message: format!(
            "{name} kept changing state while starting it ({}); try again",
            super::describe(&status_of(dir)?)
        ),
    })
}

/// Wait until another start brought it up.
fn wait_until_running(dir: &InstanceDir, boot_timeout: Duration) -> Result<(), EngineError> {
    let status = wait_for_status(dir, boot_timeout, |s| *s != Status::Starting)?;
    match status {
        Status::Running => Ok(()),
        other => Err(EngineError::DidNotComeUp {
            name: dir.name().clone(),
            status: super::describe(&other),
        }),
    }
}

/// `--repair-data` runs e2fsck at boot: it makes sense only for a
/// tiny-image instance whose disk is not in use.
fn refuse_repair_unless_stopped(dir: &InstanceDir, config: &Config) -> Result<(), EngineError> {
    let name = dir.name();
    let refuse = |message: String| EngineError::WrongState {
        name: name.clone(),
        message,
    };
    if config.is_cloud() {
        return Err(refuse(format!(
            "--repair-data checks the data disk of the built-in tiny image; {name} boots a cloud \
             image, whose disk is its root file system (its own boot checks it)"
        )));
    }
    let status = status_of(dir)?;
    match status {
        Status::Running | Status::Starting | Status::Stopping => Err(refuse(format!(
            "{name} is {}: its data disk is in use, so it cannot be checked now; \
             `vmkeep stop {name}`, then `vmkeep start {name} --repair-data`",
            status.word().to_lowercase()
        ))),
        _ if status.has_live_processes() => Err(refuse(format!(
            "{name} still has a QEMU or host agent running, so its data disk is in use; \
             `vmkeep stop {name}` (or `vmkeep stop --force {name}`), then `vmkeep start {name} --repair-data`"
        ))),
        _ => Ok(()),
    }
}

/// Prepare the image (where the caller sees the progress), then either hand
/// the caller the agent to become, or spawn one detached and follow it.
fn boot(
    dir: &InstanceDir,
    config: &Config,
    options: &StartOptions,
    notice: &dyn Notice,
) -> Result<Started, EngineError> {
    ensure_room(dir)?;
    // Cloud images were fetched by `create`; only the tiny image is built here.
    if !config.is_cloud() {
        let kernel_override =
            config
                .kernel
                .path
                .as_ref()
                .map(|kernel| crate::image::tiny::KernelOverride {
                    kernel: kernel.0.clone(),
                    modules_dir: config.kernel.modules.as_ref().map(|m| m.0.clone()),
                });
        crate::image::tiny::ensure(
            &crate::instance::home::cache_root()?,
            kernel_override.as_ref(),
            &mut |message| notice.step(message),
        )?;
    }
    if options.foreground {
        // The caller becomes the host agent: the same pid, so a service
        // manager that started `vmkeep start NAME --foreground` supervises
        // the agent itself.
        return Ok(Started::BecomeAgent(agent::in_place(
            dir,
            options.repair_data,
        )?));
    }
    let placement = os::cgroup::placement().ok();
    match follow_agent(dir, config, options.repair_data, placement.as_ref(), notice)? {
        Followed::Done(started) => Ok(started),
        // systemd refused the agent a scope of its own: it never ran.
        Followed::NoScope(message) => {
            notice.warn(&format!(
                "{message}; the host agent of {} runs in this command's cgroup",
                dir.name()
            ));
            match follow_agent(dir, config, options.repair_data, None, notice)? {
                Followed::Done(started) => Ok(started),
                Followed::NoScope(message) => Err(EngineError::StartFailed {
                    name: dir.name().clone(),
                    reason: message,
                    log: dir.agent_log(),
                }),
            }
        }
    }
}

enum Followed {
    Done(Started),
    NoScope(String),
}

/// Spawn a detached host agent and follow its reports until it is ready.
fn follow_agent(
    dir: &InstanceDir,
    config: &Config,
    repair_data: bool,
    placement: Option<&os::cgroup::Placement>,
    notice: &dyn Notice,
) -> Result<Followed, EngineError> {
    let name = dir.name();
    let (read_end, write_end) = os::process::pipe().map_err(EngineError::process("make a pipe"))?;
    let spawned = agent::spawn(
        dir,
        config,
        agent::Reports::Pipe(write_end),
        repair_data,
        placement,
    )?;
    let agent = &spawned.agent;
    notice.step(&format!("starting {name} (host agent pid {})", agent.pid()));
    let reader = std::io::BufReader::new(std::fs::File::from(read_end));
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Progress { message }) => notice.step(&message),
            Ok(Report::Warning { message }) => notice.warn(&message),
            Ok(Report::Ready { info }) => {
                return Ok(Followed::Done(Started::Running {
                    agent_pid: info.agent_pid,
                    qemu_pid: info.qemu_pid,
                    accel: info.accel,
                }));
            }
            Ok(Report::Failed { error }) => {
                // The agent reports before it has cleaned up (QEMU,
                // virtiofsd, its runtime files): wait for it to end, within
                // bounds, so that what the user sees next is settled, not
                // Stopping.
                if agent.wait_timeout(CLEANUP_WAIT) {
                    agent.reap();
                }
                return Err(EngineError::StartFailed {
                    name: name.clone(),
                    reason: error,
                    log: dir.agent_log(),
                });
            }
            Ok(Report::AlreadyRunning { .. }) => {
                notice.step(&format!(
                    "{name} is already being started by another host agent; waiting until it runs"
                ));
                wait_until_running(dir, config.boot_timeout.0)?;
                return Ok(Followed::Done(Started::CameUp));
            }
            Err(_) => tracing::debug!("host agent said: {line}"),
        }
    }
    let outcome = agent
        .wait_timeout(Duration::from_secs(5))
        .then(|| agent.reap());
    if placement.is_some()
        && let Some(message) = agent::scope_refused(dir, spawned.log_start)
    {
        return Ok(Followed::NoScope(message));
    }
    Err(EngineError::StartFailed {
        name: name.clone(),
        reason: format!(
            "the host agent exited without reporting ({}); its log ends with:\n{}",
            outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "still running".into()),
            crate::driver::qemu::tail(&dir.agent_log(), 10)
        ),
        log: dir.agent_log(),
    })
}
