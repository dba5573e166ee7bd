//! The host agent: one process per running instance. It holds the instance's
//! lock for its whole life, owns QEMU (as its child, or adopted after a
//! predecessor died), serves the API on `ha.sock`, journals every lifecycle
//! event, and on SIGTERM/SIGINT/SIGHUP or an API request runs the stop ladder
//! and exits only once QEMU is gone.

pub mod api;
pub mod binary;
pub mod clock;
mod data_disk;
pub mod forwards;
pub mod inbox;
mod mounts;
pub mod report;
pub mod serial_log;
pub mod server;
pub mod stop_ladder;
mod supervise;
mod suspend;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::api::AgentInfo;
use self::inbox::Inbox;
use self::report::{Report, Reporter};
use self::server::Shared;
use crate::driver::Vm;
use crate::driver::qemu::accel::{self, HostFacts};
use crate::driver::qemu::args::LaunchSpec;
use crate::driver::qemu::qmp::{BlockIoError, QmpEvents};
use crate::driver::qemu::snapshot;
use crate::driver::qemu::{self, QemuError, QemuVm};
use crate::hostagent::api::GuestInfo;
use crate::image::tiny;
use crate::instance::home;
use crate::instance::journal::{self, Event, Journal, Repair, StopCause, StoppedReason};
use crate::instance::pause::PauseReason;
use crate::instance::status::Phase;
use crate::instance::{Config, InstanceDir, InstanceName};
use crate::link::guest_link::{self, GuestLink};
use crate::os;
use crate::os::cgroup;
use crate::os::lock::{self, HeldLock};
use crate::os::process::ExitOutcome;
use crate::stop_ladder::Step;

/// What the agent is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Boot (or adopt) the VM and supervise it until it stops.
    Run,
    /// Adopt a QEMU left without an agent and stop it; never boots.
    StopOnly {
        deadline: Option<Duration>,
        force: bool,
    },
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub root: PathBuf,
    pub name: InstanceName,
    pub foreground: bool,
    pub mode: Mode,
    /// `start --repair-data`: the guest runs e2fsck on the data disk first.
    pub repair_data: bool,
    /// Take SIGTERM/SIGINT/SIGHUP as stop requests: the agent is its own
    /// process. An agent run inside another vmkeep process leaves that
    /// process's signals alone.
    pub signals: bool,
}

/// How the agent ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// Another agent holds the instance.
    AlreadyRunning { agent_pid: Option<u32> },
    /// The VM ran and is now stopped.
    Stopped {
        reason: StoppedReason,
        by: Option<Step>,
    },
    /// The VM never became ready.
    StartFailed { error: String },
    /// `StopOnly` found no QEMU.
    NothingToStop,
    /// The VM's state was saved (see `driver::qemu::snapshot`) and QEMU is
    /// gone; the next start resumes it.
    Suspended { state_bytes: u64 },
}

impl AgentOutcome {
    /// The process exit code: 0 when the VM ended as asked or by the guest's
    /// own power-off, so that a service manager's keep-alive restarts only
    /// after a crash or a failed start.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentOutcome::AlreadyRunning { .. }
            | AgentOutcome::NothingToStop
            | AgentOutcome::Suspended { .. } => 0,
            AgentOutcome::Stopped {
                reason: StoppedReason::Requested | StoppedReason::GuestPoweroff,
                ..
            } => 0,
            AgentOutcome::Stopped {
                reason: StoppedReason::Crashed | StoppedReason::StartFailed,
                ..
            } => 1,
            AgentOutcome::StartFailed { .. } => 1,
        }
    }
}

/// Run a host agent to the end, on a runtime of its own.
pub fn run(options: &AgentOptions, reporter: &mut Reporter<'_>) -> AgentOutcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                reporter,
                format!("cannot start the host agent's runtime: {e}"),
            );
        }
    };
    runtime.block_on(run_async(options, reporter))
}

fn fail(reporter: &mut Reporter<'_>, error: String) -> AgentOutcome {
    tracing::error!("{error}");
    reporter.send(Report::Failed {
        error: error.clone(),
    });
    AgentOutcome::StartFailed { error }
}

async fn run_async(options: &AgentOptions, reporter: &mut Reporter<'_>) -> AgentOutcome {
    let dir = match InstanceDir::new(&options.root, options.name.clone()) {
        Ok(dir) => dir,
        Err(e) => return fail(reporter, e.to_string()),
    };
    if !dir.dir().is_dir() {
        let name = options.name.as_str();
        return fail(
            reporter,
            format!("there is no instance {name}; create it with `vmkeep create {name}`"),
        );
    }
    let config = match (Config::load(&dir.config()), options.mode) {
        (Ok(config), _) => config,
        // Stopping an orphan must not depend on a config that went bad meanwhile.
        (Err(e), Mode::StopOnly { .. }) => {
            tracing::warn!("{e}; stopping with default settings");
            Config::default()
        }
        (Err(e), Mode::Run) => return fail(reporter, e.to_string()),
    };
    let mut lock = match HeldLock::try_acquire(&dir.agent_lock()) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            let agent_pid = lock::holder(&dir.agent_lock())
                .ok()
                .flatten()
                .map(|p| p.as_raw_nonzero().get() as u32);
            reporter.send(Report::AlreadyRunning { agent_pid });
            return AgentOutcome::AlreadyRunning { agent_pid };
        }
        Err(e) => {
            return fail(
                reporter,
                format!("cannot lock {}: {e}", dir.agent_lock().display()),
            );
        }
    };
    let _ = lock.write_pid();
    let journal = match Journal::open(&dir.journal()) {
        Ok(journal) => journal,
        Err(e) => {
            return fail(
                reporter,
                format!("cannot open the journal {}: {e}", dir.journal().display()),
            );
        }
    };
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let inbox = match Inbox::new(commands_rx, options.signals) {
        Ok(inbox) => inbox,
        Err(e) => return fail(reporter, format!("cannot install signal handlers: {e}")),
    };
    let (guest_tx, guest_rx) = watch::channel(None);
    let (pause_tx, pause_rx) = watch::channel(None);
    let (server_stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        info: Mutex::new(AgentInfo {
            name: options.name.to_string(),
            agent_pid: std::process::id(),
            phase: Phase::Starting,
            qemu_pid: None,
            accel: None,
            foreground: options.foreground,
            started_at: now_rfc3339(),
            ready_at: None,
            guest: None,
        }),
        commands,
        guest: guest_rx.clone(),
        pause: pause_rx,
        default_stop_timeout: config.stop_timeout.0,
    });
    let mut agent = Agent {
        dir,
        config,
        journal,
        inbox,
        shared,
        guest_tx,
        guest_rx,
        reporter,
        foreground: options.foreground,
        repair_data: options.repair_data,
        tasks: Vec::new(),
        server: None,
        server_stop,
        clock_nudge: Arc::new(Notify::new()),
        resumed: false,
        launched_at: None,
        guest_shutdown: false,
        shares: mounts::Shares::default(),
        last_io_error: None,
        pause_tx,
        guest_reset: Arc::new(AtomicBool::new(false)),
    };
    let outcome = agent.run(options.mode).await;
    agent.finish().await;
    if let Err(e) = lock.remove() {
        tracing::warn!("removing the agent lock: {e}");
    }
    outcome
}

struct Agent<'r, 'n> {
    dir: InstanceDir,
    config: Config,
    journal: Journal,
    inbox: Inbox,
    shared: Arc<Shared>,
    guest_tx: watch::Sender<Option<GuestLink>>,
    guest_rx: watch::Receiver<Option<GuestLink>>,
    reporter: &'r mut Reporter<'n>,
    foreground: bool,
    repair_data: bool,
    tasks: Vec<JoinHandle<()>>,
    /// The API server, and how to tell it to drain and end.
    server: Option<JoinHandle<()>>,
    server_stop: watch::Sender<bool>,
    /// Wakes the guest-clock keeper for an early check.
    clock_nudge: Arc<Notify>,
    /// This run resumed a saved state rather than booting.
    resumed: bool,
    /// When this agent launched its QEMU (what `boot_secs` counts from).
    launched_at: Option<Instant>,
    /// QEMU reported a shutdown the guest asked for.
    guest_shutdown: bool,
    /// The virtiofsd of each shared directory (hostagent/mounts.rs).
    shares: mounts::Shares,
    /// The last disk error QEMU reported (what a pause for `io-error` was).
    last_io_error: Option<BlockIoError>,
    /// Why QEMU paused the guest, while it is paused (the API reads it).
    pause_tx: watch::Sender<Option<PauseReason>>,
    /// QEMU reset the machine since the guest's boot id was last taken.
    guest_reset: Arc<AtomicBool>,
}

impl Agent<'_, '_> {
    fn record(&mut self, event: Event) {
        if let Err(e) = self.journal.record(event) {
            tracing::warn!("cannot write the journal: {e}");
        }
    }

    fn set_info(&self, update: impl FnOnce(&mut AgentInfo)) {
        update(&mut self.shared.info.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn fail(&mut self, error: String) -> AgentOutcome {
        self.record(Event::StartFailed {
            error: error.clone(),
        });
        fail(self.reporter, error)
    }

    async fn run(&mut self, mode: Mode) -> AgentOutcome {
        let unfinished = self.unfinished_previous_run();
        self.record(Event::Starting {
            foreground: self.foreground,
        });
        if let Some(previous) = unfinished {
            // Its QEMU holds its pid-file lock while it lives.
            let qemu_survived = lock::holder(&self.dir.qemu_pid()).ok().flatten().is_some();
            tracing::warn!(
                "the previous run (host agent pid {}) ended without a stop record; its last event was {} at {}; QEMU {}",
                previous.pid,
                previous.event.kind(),
                previous.ts,
                if qemu_survived {
                    "still runs"
                } else {
                    "is gone"
                }
            );
            self.record(Event::UncleanEnd {
                previous_pid: previous.pid,
                last_event: previous.event.kind().into(),
                last_at: previous.ts,
                qemu_survived,
            });
        }
        let adopted = match self.adopt_or_clean().await {
            Ok(adopted) => adopted,
            Err(error) => return self.fail(error),
        };
        match os::socket::bind_private(&self.dir.api_socket()) {
            Ok(listener) => {
                self.server = Some(tokio::spawn(server::serve(
                    listener,
                    self.shared.clone(),
                    self.server_stop.subscribe(),
                )))
            }
            Err(e) => {
                return self.fail(format!(
                    "cannot serve the API on {}: {e}",
                    self.dir.api_socket().display()
                ));
            }
        }
        let (vm, events, launched_at) = match (adopted, mode) {
            (Some((vm, events)), _) => (vm, events, None),
            (None, Mode::StopOnly { .. }) => return AgentOutcome::NothingToStop,
            (None, Mode::Run) => match self.launch().await {
                Ok((vm, events)) => (vm, events, self.launched_at.or(Some(Instant::now()))),
                Err(LaunchFailed { error, qemu_exit }) => {
                    self.record(Event::StartFailed {
                        error: error.clone(),
                    });
                    if let Some(exit) = qemu_exit {
                        self.record_stopped(StoppedReason::StartFailed, None, None, exit);
                    }
                    return fail(self.reporter, error);
                }
            },
        };
        // A guest flooding its console must not fill the host's disk.
        self.tasks.push(tokio::spawn(serial_log::keep_bounded(
            serial_log::SerialLog::of(&self.dir),
            serial_log::Bound::from_env(),
        )));
        match mode {
            Mode::Run => self.supervise(vm, events, launched_at).await,
            Mode::StopOnly { deadline, force } => {
                // Connect the guest agent if it answers, for the ladder's fallback.
                let quick = Instant::now() + Duration::from_secs(2);
                if let Ok((link, _)) = guest_link::wait_ready(&self.dir.guest_socket(), quick).await
                {
                    let _ = self.guest_tx.send(Some(link));
                }
                let deadline = deadline.unwrap_or(self.config.stop_timeout.0);
                self.stop(&vm, StopCause::Request, deadline, force).await
            }
        }
    }

    /// The last record of the previous run if that run never ended (its
    /// agent died without writing `stopped`).
    fn unfinished_previous_run(&self) -> Option<journal::Record> {
        let records =
            journal::tail(&self.dir.journal(), journal::LAST_RUN_BYTES).unwrap_or_default();
        match journal::last_run(&records) {
            (journal::LastRun::Unclean, Some(record)) => Some(record.clone()),
            _ => None,
        }
    }

    /// Adopt a QEMU that outlived its agent, or clear what dead processes left.
    async fn adopt_or_clean(&mut self) -> Result<Option<(QemuVm, QmpEvents)>, String> {
        match qemu::adopt(&self.dir).await.map_err(|e| e.to_string())? {
            Some(Ok((vm, events))) => {
                self.reporter.progress(format!(
                    "adopting QEMU pid {} left running by a previous host agent",
                    vm.pid()
                ));
                if self.settle_adopted(&vm).await? {
                    self.record(Event::Adopted { qemu_pid: vm.pid() });
                    self.set_info(|info| info.qemu_pid = Some(vm.pid()));
                    // The virtiofsds the dead agent started; one that
                    // ended meanwhile is journaled (and `list` shows it).
                    let (shares, lost) = mounts::adopt(&self.dir, &self.config);
                    self.shares = shares;
                    for event in lost {
                        self.record(event);
                    }
                    return Ok(Some((vm, events)));
                }
            }
            Some(Err(hung)) => {
                let pid = hung.process.pid();
                self.reporter.progress(format!(
                    "QEMU pid {pid} does not answer QMP ({}); killing it",
                    hung.error
                ));
                let _ = hung.process.kill();
                if !hung.process.wait_timeout(Duration::from_secs(10)) {
                    return Err(format!(
                        "QEMU pid {pid} does not answer and did not die from SIGKILL"
                    ));
                }
                self.record(Event::Repaired {
                    action: Repair::KilledUnresponsiveQemu,
                    detail: format!("pid {pid}: {}", hung.error),
                });
            }
            None => {}
        }
        // [mounts] No QEMU: a virtiofsd left by a dead agent waits for nobody.
        let ended = mounts::end_leftovers(&self.dir);
        let mut stale = self
            .remove_runtime_files()
            .map_err(|e| format!("cannot clean {}: {e}", self.dir.dir().display()))?;
        // No QEMU runs: a device state no record claims, and the RAM file
        // of a VM that is gone, are leftovers (a saved state keeps both).
        stale.extend(
            snapshot::remove_unclaimed(&self.dir, false)
                .map_err(|e| format!("cannot clean {}: {e}", self.dir.dir().display()))?,
        );
        stale.extend(ended);
        if !stale.is_empty() {
            let detail = stale.join(", ");
            self.reporter
                .progress(format!("removed stale runtime files: {detail}"));
            self.record(Event::Repaired {
                action: Repair::RemovedStaleFiles,
                detail,
            });
        }
        Ok(None)
    }

    /// Remove what dead processes left (our own lock stays); returns the names.
    fn remove_runtime_files(&self) -> std::io::Result<Vec<String>> {
        crate::instance::runtime::remove_leftovers(&self.dir)
    }

    async fn launch(&mut self) -> Result<(QemuVm, QmpEvents), LaunchFailed> {
        // Never boot a disk whose saved state exists: its RAM would no
        // longer match the disk. An unreadable record fails the start too.
        let saved = snapshot::load(&self.dir).map_err(|e| error_chain(&e))?;
        if saved.is_some() && self.repair_data {
            let name = self.dir.name();
            return Err(LaunchFailed::from(format!(
                "{name} is suspended: its data disk is in use by the saved guest, so it can be \
                 checked only at a fresh boot; resume it with `vmkeep start {name}`, or discard \
                 the saved state first"
            )));
        }
        let env_accel = accel::env_override()?;
        let (accel, why) = accel::choose(env_accel, self.config.accel, HostFacts::probe())
            .map_err(|e| e.to_string())?;
        if self.config.is_cloud() {
            // Cloud image: seed, ssh port and boot method come from image::cloud.
            let spec = crate::image::cloud::launch_spec(&self.dir, &self.config, accel)
                .map_err(|e| e.to_string())?;
            return match saved {
                Some(saved) => self.resume(saved, spec, accel, why).await,
                None => Ok(self.boot(spec, accel, why).await?),
            };
        }
        let cache = home::cache_root().map_err(|e| e.to_string())?;
        let kernel_override = self
            .config
            .kernel
            .path
            .as_ref()
            .map(|kernel| tiny::KernelOverride {
                kernel: kernel.0.clone(),
                modules_dir: self.config.kernel.modules.as_ref().map(|m| m.0.clone()),
            });
        let reporter = &mut *self.reporter;
        let image = tiny::ensure(&cache, kernel_override.as_ref(), &mut |message| {
            reporter.progress(message)
        })
        .map_err(|e| e.to_string())?;
        let cmdline = match &saved {
            // The guest booted with it; a reboot inside the resumed QEMU
            // gets it again, as in the QEMU that booted it.
            Some(saved) => saved.kernel_cmdline.clone().unwrap_or_default(),
            None => {
                let mut cmdline = image.base_cmdline();
                if let Some(extra) = &self.config.kernel.cmdline {
                    cmdline.push(' ');
                    cmdline.push_str(extra);
                }
                cmdline.push_str(&self.data_disk_kernel_flags()?);
                cmdline
            }
        };
        let spec = LaunchSpec::for_instance(
            &self.dir,
            accel,
            self.config.cpus.0,
            self.config.memory.0.mib(),
            image.kernel.clone(),
            image.initrd.clone(),
            cmdline,
        );
        match saved {
            Some(saved) => self.resume(saved, spec, accel, why).await,
            None => Ok(self.boot(spec, accel, why).await?),
        }
    }

    async fn boot(
        &mut self,
        mut spec: LaunchSpec,
        accel: accel::Accel,
        why: String,
    ) -> Result<(QemuVm, QmpEvents), String> {
        self.reporter.progress(format!("booting QEMU with {why}"));
        // Fresh RAM, its blocks reserved now: a guest must not meet a full
        // disk as a SIGBUS in the middle of running.
        let ram_bytes = spec.memory_mib << 20;
        os::fs::create_reserved(&spec.ram_file, ram_bytes, 0o600).map_err(|e| {
            format!(
                "cannot reserve {} MiB for the guest's RAM in {}: {e}; free some space there, \
                 or lower `memory` in {}",
                spec.memory_mib,
                spec.ram_file.display(),
                self.dir.config().display()
            )
        })?;
        // [mounts] virtiofsd first: QEMU connects to it as it starts.
        let (shares, devices) = mounts::start(&self.dir, &self.config)?;
        self.shares = shares;
        spec.shares = devices;
        let (vm, events) = match self.start_qemu(&spec).await {
            Ok(launched) => launched,
            Err(error) => {
                mounts::abandon(&self.shares);
                return Err(error);
            }
        };
        self.record(Event::Booting {
            qemu_pid: vm.pid(),
            accel: accel.as_str().into(),
        });
        self.set_info(|info| {
            info.qemu_pid = Some(vm.pid());
            info.accel = Some(accel.as_str().into());
        });
        Ok((vm, events))
    }

    /// Launch QEMU for `spec` (in a scope of its own where systemd can give
    /// one).
    async fn start_qemu(&mut self, spec: &LaunchSpec) -> Result<(QemuVm, QmpEvents), String> {
        let spec = spec.clone();
        let binary = self.config.arch.qemu_binary();
        self.launched_at = Some(Instant::now());
        let log_path = self.dir.qemu_log();
        let scope = self.qemu_scope();
        let launched = match &scope {
            Some((placement, scope)) => {
                match qemu::launch(binary, &spec, &log_path, Some((placement, scope))).await {
                    Err(QemuError::NoScope { message }) => {
                        tracing::warn!(
                            "{message}; QEMU runs in the host agent's cgroup and will not outlive it"
                        );
                        qemu::launch(binary, &spec, &log_path, None).await
                    }
                    other => other,
                }
            }
            None => qemu::launch(binary, &spec, &log_path, None).await,
        };
        let (vm, events) = launched.map_err(|e| e.to_string())?;
        if let Some((placement, scope)) = &scope {
            tracing::info!(
                "QEMU pid {} runs in {} of {}{}",
                vm.pid(),
                scope.unit,
                placement.manager.describe(),
                placement
                    .before
                    .as_ref()
                    .map(|b| format!(", stopped after {b}"))
                    .unwrap_or_default()
            );
        }
        Ok((vm, events))
    }

    /// The cgroup QEMU gets under systemd: a scope of its own, so that it
    /// outlives this agent's unit (see `os::cgroup`). `None` without
    /// systemd, or where systemd cannot be asked.
    fn qemu_scope(&self) -> Option<(cgroup::Placement, cgroup::Scope)> {
        match cgroup::placement() {
            Ok(placement) => {
                let name = self.dir.name().as_str();
                let pid = std::process::id().to_string();
                let scope = cgroup::Scope::named(
                    &["vmkeep", name, "qemu", &pid],
                    format!(
                        "QEMU of vmkeep instance {name} ({})",
                        self.dir.dir().display()
                    ),
                );
                Some((placement, scope))
            }
            Err(why) => {
                tracing::debug!("QEMU stays in the host agent's cgroup: {why}");
                None
            }
        }
    }

    async fn stop(
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
        let stopped = stop_ladder::stop(
            vm,
            &guest,
            deadline,
            force,
            &mut self.journal,
            &mut self.inbox,
        )
        .await;
        let reason = match cause {
            StopCause::BootTimeout | StopCause::DataDisk | StopCause::SharedDir => {
                StoppedReason::StartFailed
            }
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

    fn record_stopped(
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

    /// Stop serving (letting answers in flight out) and remove runtime
    /// files, and the RAM file of a VM that is gone unless a saved state
    /// keeps it (the lock goes last, by the caller).
    async fn finish(&mut self) {
        self.server_stop.send_replace(true);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(server::DRAIN * 2, server).await;
        }
        // [mounts] virtiofsd ends with QEMU; its lock file goes after it.
        mounts::stop(&self.shares).await;
        if let Err(e) = self.remove_runtime_files() {
            tracing::warn!("cleaning runtime files: {e}");
        }
        let qemu_alive = lock::holder(&self.dir.qemu_pid()).ok().flatten().is_some();
        if let Err(e) = snapshot::remove_unclaimed(&self.dir, qemu_alive) {
            tracing::warn!("removing the guest's RAM file: {e}");
        }
    }
}

fn stopped_as_failed(stopped: AgentOutcome) -> AgentOutcome {
    match stopped {
        AgentOutcome::Stopped { by, .. } => AgentOutcome::Stopped {
            reason: StoppedReason::StartFailed,
            by,
        },
        other => other,
    }
}

/// The guest link the agent publishes, once one is open (the current one
/// if it still is); `None` once the agent is gone.
pub(crate) async fn open_link(guest: &mut watch::Receiver<Option<GuestLink>>) -> Option<GuestLink> {
    let open = |link: &Option<GuestLink>| link.as_ref().is_some_and(|l| !l.is_closed());
    guest
        .wait_for(open)
        .await
        .ok()
        .and_then(|link| link.clone())
}

/// Until the published link is closed or withdrawn (or the agent is gone).
pub(crate) async fn link_gone(guest: &mut watch::Receiver<Option<GuestLink>>) {
    let gone = |link: &Option<GuestLink>| link.as_ref().is_none_or(|l| l.is_closed());
    let _ = guest.wait_for(gone).await;
}

/// Keep a guest-agent connection available: when it drops (guest reboot,
/// channel reset), reconnect and publish the new one. `on_reboot` hears of
/// each new boot of the guest: a new boot id after QEMU reset the machine
/// (`reset` is set on QMP's RESET). A guest that claims new boots without a
/// reset is untrusted talk: logged, thinly, never journaled.
async fn keep_guest_link(
    socket: PathBuf,
    mut link: GuestLink,
    mut boot_id: String,
    publish: watch::Sender<Option<GuestLink>>,
    reset: Arc<AtomicBool>,
    mut on_reboot: impl FnMut(GuestInfo),
) {
    let mut claims = crate::link::untrusted::LogBudget::default();
    loop {
        link.closed().await;
        let _ = publish.send(None);
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        match guest_link::wait_ready(&socket, far).await {
            Ok((new_link, guest)) => {
                link = new_link;
                if guest.boot_id != boot_id {
                    if reset.swap(false, Ordering::SeqCst) {
                        tracing::info!(boot_id = %guest.boot_id, "the guest rebooted");
                        boot_id = guest.boot_id.clone();
                        on_reboot(guest);
                    } else if let Some(seen) = claims.tick() {
                        tracing::warn!(
                            seen,
                            "the guest agent reports a new boot id ({}) though QEMU did not reset the machine; ignored",
                            crate::link::untrusted::shown(&guest.boot_id, 64)
                        );
                    }
                }
                let _ = publish.send(Some(link.clone()));
            }
            Err(e) => {
                tracing::warn!("guest agent: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Why no VM came up, and how its QEMU ended if one was launched.
struct LaunchFailed {
    error: String,
    qemu_exit: Option<ExitOutcome>,
}

impl From<String> for LaunchFailed {
    fn from(error: String) -> LaunchFailed {
        LaunchFailed {
            error,
            qemu_exit: None,
        }
    }
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    use vmkeep_protocol::{FromGuest, Op, Reply, Request};

    use super::*;

    /// A guest agent on `listener` that answers each connection's hello
    /// with the next boot id (saying so on `answered`), and ends that
    /// connection when told on `next`.
    fn guest_with_boots(
        listener: UnixListener,
        boots: Vec<&'static str>,
        answered: tokio::sync::mpsc::UnboundedSender<&'static str>,
    ) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (next, told) = mpsc::channel::<()>();
        let guest = std::thread::spawn(move || {
            for boot in boots {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let hello: Request = vmkeep_protocol::decode_line(line.as_bytes()).unwrap();
                assert_eq!(hello.op, Op::Hello);
                let info = GuestInfo {
                    kernel: "6.1".into(),
                    boot_id: boot.into(),
                    uptime_secs: 1.0,
                    agent_version: "0.1".into(),
                    data_mount: None,
                    data_disk: None,
                };
                let reply = FromGuest::Reply {
                    id: hello.id,
                    body: Reply::Hello { ready: true, info },
                };
                writer
                    .write_all(&vmkeep_protocol::encode_line(&reply))
                    .unwrap();
                let _ = answered.send(boot);
                if told.recv().is_err() {
                    return;
                }
            }
        });
        (next, guest)
    }

    /// Only a new boot id after QEMU's reset is a reboot: a guest that
    /// reconnects claiming another boot, without one, is not journaled.
    #[tokio::test]
    async fn a_new_boot_id_is_a_reboot_only_after_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ga.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
        let (next, guest) =
            guest_with_boots(listener, vec!["first", "claimed", "real"], answered_tx);
        let far = Instant::now() + Duration::from_secs(10);
        let (link, info) = guest_link::wait_ready(&socket, far).await.unwrap();
        assert_eq!(answered.recv().await, Some("first"));
        let (publish, published) = watch::channel(Some(link.clone()));
        let reset = Arc::new(AtomicBool::new(false));
        let reboots = Arc::new(Mutex::new(Vec::new()));
        let heard = Arc::clone(&reboots);
        let keeper = tokio::spawn(keep_guest_link(
            socket.clone(),
            link,
            info.boot_id,
            publish,
            Arc::clone(&reset),
            move |guest: GuestInfo| heard.lock().unwrap().push(guest.boot_id),
        ));
        // The keeper has taken the hello the guest just answered: it
        // published the new link (the old one is closed by then).
        let taken = |published: &watch::Receiver<Option<GuestLink>>| {
            let mut published = published.clone();
            async move {
                let open = |link: &Option<GuestLink>| link.as_ref().is_some_and(|l| !l.is_closed());
                tokio::time::timeout(Duration::from_secs(10), published.wait_for(open))
                    .await
                    .expect("the keeper published the new link")
                    .unwrap();
            }
        };

        // The guest drops the link and comes back claiming another boot.
        next.send(()).unwrap();
        assert_eq!(answered.recv().await, Some("claimed"));
        taken(&published).await;
        assert!(reboots.lock().unwrap().is_empty(), "no reset, no reboot");

        // QEMU resets the machine; the guest comes back with a new boot.
        reset.store(true, Ordering::SeqCst);
        next.send(()).unwrap();
        assert_eq!(answered.recv().await, Some("real"));
        taken(&published).await;
        assert_eq!(*reboots.lock().unwrap(), ["real"]);
        assert!(
            !reset.load(Ordering::SeqCst),
            "one reset counts for one boot"
        );

        keeper.abort();
        drop(next);
        guest.join().unwrap();
    }
}
