//! One host agent's life: it takes the instance's lock and journal, serves
//! its API, adopts or launches QEMU, supervises it (`supervise`) or, when
//! asked only to stop an orphan, stops it, and cleans up at the end.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::api::AgentInfo;
use super::inbox::Inbox;
use super::report::{Report, Reporter};
use super::server::{self, Shared};
use super::upgrade::TakingOver;
use super::{AgentOptions, AgentOutcome, LaunchFailed, Mode, bounded_logs, fail, mounts};
use crate::driver::qemu::qmp::BlockIoError;
use crate::driver::qemu::snapshot;
use crate::instance::journal::{self, Event, Journal, StopCause, StoppedReason};
use crate::instance::pause::PauseReason;
use crate::instance::status::Phase;
use crate::instance::{Config, InstanceDir};
use crate::link::guest_link::{self, GuestLink};
use crate::os;
use crate::os::lock::{self, HeldLock};

pub(super) async fn run_async(options: &AgentOptions, reporter: &mut Reporter<'_>) -> AgentOutcome {
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
    let taking_over = options.upgraded.clone().map(TakingOver::new);
    let acquired = match &taking_over {
        // The previous image of this process held it, and kept it across its exec.
        Some(over) => HeldLock::inherited(over.handover.lock_fd, &dir.agent_lock()).map(Some),
        None => HeldLock::try_acquire(&dir.agent_lock()),
    };
    let mut lock = match acquired {
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
    if taking_over.is_none() {
        let _ = lock.write_pid();
    }
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
            api_version: crate::formats::AGENT_API.current,
            build: Some(super::api::BuildInfo::this_build()),
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
        resume_steps: None,
        early_fill: None,
        began: Instant::now(),
        launched_at: None,
        guest_shutdown: false,
        shares: mounts::Shares::default(),
        last_io_error: None,
        pause_tx,
        guest_reset: Arc::new(AtomicBool::new(false)),
        lock_fd: lock.raw_fd(),
        taking_over,
    };
    let outcome = agent.run(options.mode).await;
    // [copyToHost] deleteOnStop: the VM is stopped (not suspended, not
    // another agent's).
    if matches!(
        outcome,
        AgentOutcome::Stopped { .. } | AgentOutcome::StartFailed { .. }
    ) && let Ok(rules) = agent.copy_rules(&agent.guest_user())
    {
        super::copy_to_host::delete_on_stop(&rules);
    }
    agent.finish().await;
    if let Err(e) = lock.remove() {
        tracing::warn!("removing the agent lock: {e}");
    }
    outcome
}

pub(super) struct Agent<'r, 'n> {
    pub(super) dir: InstanceDir,
    pub(super) config: Config,
    pub(super) journal: Journal,
    pub(super) inbox: Inbox,
    pub(super) shared: Arc<Shared>,
    pub(super) guest_tx: watch::Sender<Option<GuestLink>>,
    pub(super) guest_rx: watch::Receiver<Option<GuestLink>>,
    pub(super) reporter: &'r mut Reporter<'n>,
    pub(super) foreground: bool,
    pub(super) repair_data: bool,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// The API server, and how to tell it to drain and end.
    pub(super) server: Option<JoinHandle<()>>,
    pub(super) server_stop: watch::Sender<bool>,
    /// Wakes the guest-clock keeper for an early check.
    pub(super) clock_nudge: Arc<Notify>,
    /// This run resumed a saved state rather than booting.
    pub(super) resumed: bool,
    /// The resume's steps so far, said in the log once the guest is ready.
    pub(super) resume_steps: Option<crate::driver::qemu::snapshot::Steps>,
    /// When this agent began (what a resume's steps count from).
    pub(super) began: Instant,
    /// The guest RAM's fill begun at the start of the run, for the resume.
    pub(super) early_fill: Option<super::suspend::RamFill>,
    /// When this agent launched its QEMU (what `boot_secs` counts from).
    pub(super) launched_at: Option<Instant>,
    /// QEMU reported a shutdown the guest asked for.
    pub(super) guest_shutdown: bool,
    /// The virtiofsd of each shared directory (hostagent/mounts.rs).
    pub(super) shares: mounts::Shares,
    /// The last disk error QEMU reported (what a pause for `io-error` was).
    pub(super) last_io_error: Option<BlockIoError>,
    /// Why QEMU paused the guest, while it is paused (the API reads it).
    pub(super) pause_tx: watch::Sender<Option<PauseReason>>,
    /// QEMU reset the machine since the guest's boot id was last taken.
    pub(super) guest_reset: Arc<AtomicBool>,
    /// The descriptor of the instance lock (kept across an upgrade's exec).
    pub(super) lock_fd: i32,
    /// This build is taking over from the previous one of this process
    /// (`vmkeep upgrade`) until the guest is ready again.
    pub(super) taking_over: Option<TakingOver>,
}

impl Agent<'_, '_> {
    pub(super) fn record(&mut self, event: Event) {
        if let Err(e) = self.journal.record(event) {
            tracing::warn!("cannot write the journal: {e}");
        }
    }

    /// Journal a progress event of a start without waiting for it to be
    /// durable (it is with the next [`Agent::record`], at the latest the
    /// start's `running` or its failure): no crash safety depends on it,
    /// and its fsync would sit on the way to ready.
    pub(super) fn record_deferred(&mut self, event: Event) {
        if let Err(e) = self.journal.record_deferred(event) {
            tracing::warn!("cannot write the journal: {e}");
        }
    }

    pub(super) fn set_info(&self, update: impl FnOnce(&mut AgentInfo)) {
        update(&mut self.shared.info.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(super) fn fail(&mut self, error: String) -> AgentOutcome {
        self.record(Event::StartFailed {
            error: error.clone(),
        });
        fail(self.reporter, error)
    }

    pub(super) async fn run(&mut self, mode: Mode) -> AgentOutcome {
        if mode == Mode::Run && self.taking_over.is_none() && !self.repair_data {
            self.begin_fill();
        }
        // Taking over in place, the previous build's run goes on.
        let unfinished = match self.taking_over {
            Some(_) => None,
            None => {
                let unfinished = self.unfinished_previous_run();
                // Durable with the start's next durable record (its
                // booting, running or failure): off a resume's way.
                self.record_deferred(Event::Starting {
                    foreground: self.foreground,
                });
                unfinished
            }
        };
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
            Err(error) => return self.fail(error.to_string()),
        };
        if adopted.is_some() {
            // The QEMU runs on: no resume to fill a RAM for.
            self.early_fill = None;
        }
        if let Err(e) = self.serve_api() {
            return self.fail(e);
        }
        let (vm, events, launched_at) = match (adopted, mode) {
            (Some((vm, events)), _) => (vm, events, None),
            // QEMU ended while the build was changing: nothing to take over.
            (None, Mode::Run) if self.taking_over.is_some() => {
                return self.fail("QEMU was gone when the new host agent build took over".into());
            }
            (None, Mode::StopOnly { .. }) => return AgentOutcome::NothingToStop,
            (None, Mode::Run) => match self.launch().await {
                Ok((vm, events)) => (vm, events, self.launched_at.or(Some(Instant::now()))),
                Err(LaunchFailed { error, qemu_exit }) => {
                    let error = error.to_string();
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
        // A guest flooding its console, or anything else, must not fill
        // the host's disk.
        self.tasks
            .push(tokio::spawn(bounded_logs::keep_bounded(bounded_logs::of(
                &self.dir,
                crate::instance::shares::MAX_SHARES,
            ))));
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

    /// Serve the API on `ha.sock` (again, after a failed upgrade).
    pub(super) fn serve_api(&mut self) -> Result<(), String> {
        self.server_stop.send_replace(false);
        let listener = os::socket::bind_private(&self.dir.api_socket()).map_err(|e| {
            format!(
                "cannot serve the API on {}: {e}",
                self.dir.api_socket().display()
            )
        })?;
        self.server = Some(tokio::spawn(server::serve(
            listener,
            self.shared.clone(),
            self.server_stop.subscribe(),
        )));
        Ok(())
    }

    /// Stop accepting API requests and let the answers in flight out.
    pub(super) async fn stop_serving(&mut self) {
        self.server_stop.send_replace(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(server::DRAIN * 2, server).await;
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

    /// Stop serving (letting answers in flight out) and remove runtime
    /// files, and the RAM file of a VM that is gone unless a saved state
    /// keeps it (the lock goes last, by the caller).
    pub(super) async fn finish(&mut self) {
        self.server_stop.send_replace(true);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.stop_serving().await;
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

pub(super) fn stopped_as_failed(stopped: AgentOutcome) -> AgentOutcome {
    match stopped {
        AgentOutcome::Stopped { by, .. } => AgentOutcome::Stopped {
            reason: StoppedReason::StartFailed,
            by,
        },
        other => other,
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
