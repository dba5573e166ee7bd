//! The host agent's one loop, from QEMU's launch until the VM is gone, over
//! an explicit state: [`Supervised::Booting`] (waiting for the guest agent),
//! [`Supervised::Running`], [`Supervised::Paused`] (QEMU paused the guest by
//! itself). Every input is taken in one `select!`: the guest becoming ready,
//! QEMU exiting, QMP events, the free-space check of a guest paused for a
//! full disk, and signals and API commands. What each input does in each
//! state is one method here.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{ErrorCode, Refusal};
use super::error::ContinueError;
use super::inbox::Incoming;
use super::report::Report;
use super::server::Command;
use super::{
    Agent, AgentOutcome, clock, copy_to_host, fail, forwards, mount_inotify, mounts, now_rfc3339,
    socket_forwards, stopped_as_failed,
};
use crate::driver::Vm;
use crate::driver::qemu::QemuVm;
use crate::driver::qemu::pause::{self, PauseFacts};
use crate::driver::qemu::qmp::{QmpEvent, QmpEvents};
use crate::driver::qemu::snapshot;
use crate::hostagent::api::{self, GuestInfo};
use crate::instance::config::{ByteSize, OnHostShutdown};
use crate::instance::journal::{
    ContinueCause, Event, Journal, StopCause, StoppedReason, SuspendCause, SuspendFallback,
};
use crate::instance::pause::{MIN_FREE_TO_CONTINUE, PauseReason};
use crate::instance::status::Phase;
use crate::link::guest_link::{self, GuestLink};
use crate::link::repeats;
use crate::os;
use crate::os::process::ExitOutcome;

/// How often a guest paused for a full host disk looks for room again.
const ROOM_CHECK: Duration = Duration::from_secs(1);

/// Where the supervised VM is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Supervised {
    /// QEMU runs; the guest agent has not said it is ready.
    Booting,
    /// The guest is ready.
    Running,
    /// QEMU paused the guest by itself.
    Paused { reason: PauseReason, since: Instant },
}

impl Agent<'_, '_> {
    /// Bring the guest up and supervise it until the VM is gone.
    pub(super) async fn supervise(
        &mut self,
        vm: QemuVm,
        mut events: QmpEvents,
        launched_at: Option<Instant>,
    ) -> AgentOutcome {
        let began = launched_at.unwrap_or_else(Instant::now);
        let guest_socket = self.dir.guest_socket();
        let ready = guest_link::wait_ready(&guest_socket, began + self.config.boot_timeout.0);
        tokio::pin!(ready);
        let mut state = Supervised::Booting;
        let mut events_open = true;
        let mut room_check = tokio::time::interval(ROOM_CHECK);
        room_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let booting = state == Supervised::Booting;
            let waits_for_room = matches!(
                &state,
                Supervised::Paused {
                    reason: PauseReason::HostDiskFull { .. },
                    ..
                }
            );
            let ended = tokio::select! {
                result = &mut ready, if booting => match result {
                    Ok((link, guest)) => self.become_ready(&vm, link, guest, began, &mut state).await,
                    Err(e) => Some(self.boot_timed_out(&vm, &e.to_string()).await),
                },
                exit = vm.exited() => Some(self.qemu_exited(exit, &state)),
                event = events.next(), if events_open => match event {
                    Some(event) => self.on_qmp_event(&vm, event, &mut state).await,
                    None => {
                        events_open = false;
                        None
                    }
                },
                _ = room_check.tick(), if waits_for_room => {
                    self.continue_if_room(&vm, &mut state).await;
                    None
                }
                incoming = self.inbox.next() => self.on_incoming(&vm, incoming, &mut state).await,
            };
            if let Some(outcome) = ended {
                return outcome;
            }
        }
    }

    /// The guest is ready: put its clock right after a resume, accept its
    /// data disk, start the background keepers, journal `running`, report.
    async fn become_ready(
        &mut self,
        vm: &QemuVm,
        link: GuestLink,
        guest: GuestInfo,
        began: Instant,
        state: &mut Supervised,
    ) -> Option<AgentOutcome> {
        // Ready means a right clock too: the resumed guest's is behind by
        // the whole suspended time. (Journaled once the start is reported.)
        if let Some(steps) = &mut self.resume_steps {
            steps.ended("guest answered");
        }
        let clock_step = match self.resumed {
            true => self.correct_clock_now(&link).await,
            false => None,
        };
        if let Some(steps) = &mut self.resume_steps {
            steps.ended("clock checked");
        }
        let boot_secs = began.elapsed().as_secs_f64();
        let _ = self.guest_tx.send(Some(link.clone()));
        // A resumed guest's data disk was accepted when it booted.
        if !self.resumed
            && let Err(outcome) = self.accept_data_disk(vm, &guest).await
        {
            return Some(outcome);
        }
        // Shared directories are mounted before the start is ready (an
        // adopted guest had them mounted already: only said if not).
        if let Err(error) = mounts::mount_all(&link, &self.shares).await
            && mounts::must_stop(self.launched_at.is_some(), &error)
        {
            return Some(
                self.stop_not_ready(vm, StopCause::SharedDir, error.to_string())
                    .await,
            );
        }
        // [copyToHost] the guest's files are on the host before the start
        // is ready (again after an adoption, which fails nothing).
        let guest_user = self.guest_user();
        if let Err(error) = self.copy_to_host(&link, &guest_user).await
            && mounts::must_stop(self.launched_at.is_some(), &error)
        {
            return Some(self.stop_not_ready(vm, StopCause::CopyToHost, error).await);
        }
        // [socket forwards] the host's sockets, relayed to the guest's.
        match crate::instance::socket_forwards::resolve(
            &self.config,
            self.dir.name().as_str(),
            self.dir.dir(),
            &guest_user,
        ) {
            Ok(forwards) => {
                // Bound here, served by a task: listening before ready.
                let bound = socket_forwards::bind(forwards);
                self.tasks.push(tokio::spawn(bound.keep(
                    self.guest_rx.clone(),
                    self.config.is_cloud().then(|| guest_user.name.clone()),
                )));
            }
            Err(e) => tracing::warn!("socket forwards not applied: {e}"),
        }
        // A reset before this boot was ready says nothing of the next one.
        self.guest_reset
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        let journal_path = self.dir.journal();
        let first_boot_id = guest.boot_id.clone();
        let on_reboot = move |guest: GuestInfo| {
            let recorded = Journal::open(&journal_path).and_then(|mut journal| {
                journal.record(Event::GuestRebooted {
                    guest_boot_id: guest.boot_id.clone(),
                })
            });
            if let Err(e) = recorded {
                tracing::warn!("cannot write the journal: {e}");
            }
            let mut info = shared.info.lock().unwrap_or_else(|e| e.into_inner());
            info.guest = Some(guest);
        };
        self.tasks.push(tokio::spawn(super::keep_guest_link(
            self.dir.guest_socket(),
            link,
            first_boot_id,
            self.guest_tx.clone(),
            Arc::clone(&self.guest_reset),
            on_reboot,
        )));
        self.tasks.push(tokio::spawn(clock::keep(
            self.guest_rx.clone(),
            Arc::clone(&self.clock_nudge),
            self.dir.journal(),
        )));
        // Remount after a guest reboot; journal a lost virtiofsd.
        self.tasks.push(tokio::spawn(mounts::keep(
            self.shares.clone(),
            self.guest_rx.clone(),
            self.dir.clone(),
        )));
        // Lima's mountInotify: host changes raised in the guest.
        if self.config.raw.mount_inotify == Some(true) {
            self.tasks.push(tokio::spawn(mount_inotify::keep(
                self.shares
                    .daemons
                    .iter()
                    .map(|d| d.share.clone())
                    .collect(),
                self.guest_rx.clone(),
            )));
        }
        // The guest's listening ports, forwarded as Lima does.
        self.tasks.push(tokio::spawn(forwards::keep(
            self.guest_rx.clone(),
            vm.qmp().clone(),
            forwards::Setup::of(&self.config, crate::image::cloud::ssh_port(&self.dir)),
        )));
        let record = match self.taking_over.take() {
            // Moved onto this build in place: the run goes on.
            Some(over) => over.upgraded(vm.pid(), Some(guest.boot_id.clone())),
            None => Event::Running {
                qemu_pid: vm.pid(),
                guest_boot_id: guest.boot_id.clone(),
                boot_secs,
            },
        };
        self.record(record);
        let mut resume_steps = self.resume_steps.take();
        if let Some(steps) = &mut resume_steps {
            steps.ended("running journaled");
        }
        self.set_info(|info| {
            info.phase = Phase::Running;
            info.ready_at = Some(now_rfc3339());
            info.guest = Some(guest);
        });
        let info = self
            .shared
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.reporter.send(Report::Ready {
            info: Box::new(info),
        });
        if let Some(before) = clock_step {
            clock::journal_step(&self.dir.journal(), &before);
        }
        if let Some(steps) = resume_steps {
            tracing::info!("resume steps (ms): {}", steps.summary());
            snapshot::remove_saved_ram(&self.dir);
        }
        *state = Supervised::Running;
        None
    }

    /// Something the start needs failed once the guest was up: journal it,
    /// stop the VM by its ladder, report the failure.
    async fn stop_not_ready(
        &mut self,
        vm: &QemuVm,
        cause: StopCause,
        error: String,
    ) -> AgentOutcome {
        self.record(Event::StartFailed {
            error: error.clone(),
        });
        let deadline = self.config.stop_timeout.0;
        let stopped = self.stop(vm, cause, deadline, false).await;
        fail(self.reporter, error);
        stopped_as_failed(stopped)
    }

    /// The user sessions run as in the guest: the cloud image's (from its
    /// record), or the tiny image's root.
    pub(super) fn guest_user(&self) -> crate::instance::vars::GuestUser {
        match self.config.is_cloud() {
            true => crate::image::cloud::ImageRecord::load(&self.dir)
                .map(|record| record.guest_user())
                .unwrap_or_else(|e| {
                    tracing::warn!("the image record: {e}; guest templates see root");
                    crate::instance::vars::tiny_guest_user()
                }),
            false => crate::instance::vars::tiny_guest_user(),
        }
    }

    /// The `copyToHost` entries, copied (the error is for the user).
    async fn copy_to_host(
        &mut self,
        link: &GuestLink,
        user: &crate::instance::vars::GuestUser,
    ) -> Result<(), String> {
        let rules = self.copy_rules(user)?;
        if rules.is_empty() {
            return Ok(());
        }
        self.reporter
            .progress("copying copyToHost files from the guest");
        copy_to_host::copy_all(link, &rules)
            .await
            .map_err(|e| e.to_string())
    }

    /// The resolved `copyToHost` entries.
    pub(super) fn copy_rules(
        &self,
        user: &crate::instance::vars::GuestUser,
    ) -> Result<Vec<crate::instance::copy_to_host::CopyRule>, String> {
        crate::instance::copy_to_host::resolve(
            &self.config,
            self.dir.name().as_str(),
            self.dir.dir(),
            user,
        )
        .map_err(|e| format!("{}: {e}", self.dir.config().display()))
    }

    /// The guest did not become ready in time (or cannot: `error`).
    async fn boot_timed_out(&mut self, vm: &QemuVm, error: &str) -> AgentOutcome {
        let error = format!(
            "the guest did not become ready: {error}; see {}{}",
            self.dir.serial_log().display(),
            crate::image::cloud::readiness_hint(&self.config)
        );
        self.fail_start(vm, error).await
    }

    /// Journal a failed start, stop the VM at once and report the failure.
    async fn fail_start(&mut self, vm: &QemuVm, error: String) -> AgentOutcome {
        self.record(Event::StartFailed {
            error: error.clone(),
        });
        let stopped = self
            .stop(vm, StopCause::BootTimeout, Duration::from_secs(1), true)
            .await;
        fail(self.reporter, error);
        stopped_as_failed(stopped)
    }

    /// QEMU exited without being asked to.
    fn qemu_exited(&mut self, exit: ExitOutcome, state: &Supervised) -> AgentOutcome {
        if *state == Supervised::Booting {
            let why = match self.unasked_exit_reason(exit) {
                StoppedReason::GuestPoweroff => "the guest powered off during boot".to_string(),
                _ => format!("QEMU exited during boot ({exit})"),
            };
            let error = format!(
                "{why}; see {} and {}",
                self.dir.serial_log().display(),
                self.dir.qemu_log().display()
            );
            self.record(Event::StartFailed {
                error: error.clone(),
            });
            self.record_stopped(StoppedReason::StartFailed, None, None, exit);
            return fail(self.reporter, error);
        }
        let reason = self.unasked_exit_reason(exit);
        self.record_stopped(reason, None, None, exit);
        AgentOutcome::Stopped { reason, by: None }
    }

    /// Why QEMU exited when nobody asked it to.
    fn unasked_exit_reason(&self, exit: ExitOutcome) -> StoppedReason {
        if self.guest_shutdown || exit == ExitOutcome::Exited(0) {
            StoppedReason::GuestPoweroff
        } else {
            StoppedReason::Crashed
        }
    }

    /// React to a QMP event (the QMP client has logged it by name already).
    async fn on_qmp_event(
        &mut self,
        vm: &QemuVm,
        event: QmpEvent,
        state: &mut Supervised,
    ) -> Option<AgentOutcome> {
        match event {
            QmpEvent::Shutdown { guest: true, .. } => self.guest_shutdown = true,
            // The guest restarts in the same QEMU (a `reboot` inside it):
            // its agent's answers to requests in flight are lost.
            QmpEvent::Reset { .. } => {
                self.guest_reset
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                if let Some(link) = self.guest_rx.borrow().as_ref() {
                    link.abandon_after_guest_reset();
                }
            }
            // Whatever QEMU says stopped or failed, its run state tells
            // whether the guest is paused now (events queued during a save
            // of ours arrive after it ran on again).
            QmpEvent::BlockIoError(error) => {
                self.last_io_error = Some(error);
                return self.note_pause(vm, state).await;
            }
            QmpEvent::Stop | QmpEvent::GuestPanicked { .. } | QmpEvent::Watchdog { .. } => {
                return self.note_pause(vm, state).await;
            }
            // The guest's CPUs ran again after a pause: its clock lost the
            // paused time.
            QmpEvent::Resume => {
                self.clock_nudge.notify_one();
                if matches!(state, Supervised::Paused { .. })
                    && vm.run_state().await.is_ok_and(|s| s.is_running())
                {
                    self.end_pause(state, ContinueCause::Other);
                }
            }
            _ => {}
        }
        None
    }

    /// Ask QEMU whether the guest is paused by itself; if so, a booting VM
    /// fails its start at once (naming why), a running one becomes Paused.
    async fn note_pause(&mut self, vm: &QemuVm, state: &mut Supervised) -> Option<AgentOutcome> {
        if matches!(state, Supervised::Paused { .. }) {
            return None;
        }
        let run_state = match vm.run_state().await {
            Ok(run_state) => run_state,
            Err(e) => {
                tracing::warn!("cannot ask QEMU whether the guest is paused: {e}");
                return None;
            }
        };
        let free = os::fs::free_space(self.dir.dir())
            .ok()
            .map(|free| (free.mount_point.display().to_string(), free.available_bytes));
        let reason = pause::reason(&PauseFacts {
            run_state,
            last_io_error: self.last_io_error.as_ref(),
            free,
        })?;
        if *state == Supervised::Booting {
            let fix = match &reason {
                PauseReason::HostDiskFull { mount_point, .. } => format!(
                    "free at least {} on {mount_point}, then start it again",
                    ByteSize(MIN_FREE_TO_CONTINUE).approx()
                ),
                _ => format!("see {}", self.dir.qemu_log().display()),
            };
            let error = format!(
                "QEMU paused the guest during boot: {}; {fix}",
                reason.message()
            );
            return Some(self.fail_start(vm, error).await);
        }
        if let Some(repeated) = repeats::allow("paused") {
            tracing::warn!("QEMU paused the guest: {}{repeated}", reason.message());
        }
        self.record(Event::Paused {
            reason: reason.clone(),
        });
        self.set_info(|info| info.phase = Phase::Paused);
        self.pause_tx.send_replace(Some(reason.clone()));
        *state = Supervised::Paused {
            reason,
            since: Instant::now(),
        };
        None
    }

    /// The paused guest runs again: journal it.
    fn end_pause(&mut self, state: &mut Supervised, by: ContinueCause) {
        let Supervised::Paused { since, .. } = state else {
            return;
        };
        let after_secs = since.elapsed().as_secs_f64();
        if let Some(repeated) = repeats::allow("continued") {
            tracing::info!(?by, after_secs, "the paused guest runs again{repeated}");
        }
        self.record(Event::Continued { by, after_secs });
        self.set_info(|info| info.phase = Phase::Running);
        self.pause_tx.send_replace(None);
        self.clock_nudge.notify_one();
        *state = Supervised::Running;
    }

    /// `cont`, then confirm with QEMU that the guest runs; the reason it
    /// is still paused otherwise.
    async fn continue_guest(
        &mut self,
        vm: &QemuVm,
        state: &mut Supervised,
        by: ContinueCause,
    ) -> Result<(), ContinueError> {
        vm.continue_running().await.map_err(ContinueError::Cont)?;
        match vm.run_state().await {
            Ok(run_state) if run_state.is_running() => {
                self.end_pause(state, by);
                Ok(())
            }
            Ok(run_state) => Err(ContinueError::PausedAgain(run_state)),
            Err(e) => Err(ContinueError::RunState(e)),
        }
    }

    /// A guest paused for a full host disk runs on once there is room.
    async fn continue_if_room(&mut self, vm: &QemuVm, state: &mut Supervised) {
        let Supervised::Paused { reason, .. } = state else {
            return;
        };
        let room = os::fs::free_space(self.dir.dir()).map(|f| f.available_bytes);
        if !room.is_ok_and(|free| reason.continues_with_room(free)) {
            return;
        }
        if let Err(e) = self
            .continue_guest(vm, state, ContinueCause::SpaceFreed)
            .await
        {
            tracing::warn!("the host disk has room again, but {e}");
        }
    }

    /// A signal or an API command.
    async fn on_incoming(
        &mut self,
        vm: &QemuVm,
        incoming: Incoming,
        state: &mut Supervised,
    ) -> Option<AgentOutcome> {
        match incoming {
            Incoming::Command(Command::Suspend {
                deadline,
                fallback,
                cause,
                answer,
            }) => match state {
                Supervised::Running => self.suspend(vm, deadline, fallback, cause, answer).await,
                Supervised::Booting => {
                    let _ = answer.send(Err(Refusal::new(
                        ErrorCode::WrongState,
                        "the VM is still starting; suspend it once it runs",
                    )));
                    None
                }
                Supervised::Paused { reason, .. } => {
                    let _ = answer.send(Err(Refusal::new(
                        ErrorCode::WrongState,
                        format!(
                            "the VM is paused ({}); let it run on first (`vmkeep start`)",
                            reason.message()
                        ),
                    )));
                    None
                }
            },
            Incoming::Command(Command::Upgrade(asked)) => {
                match state {
                    Supervised::Running => self.move_onto(asked).await,
                    Supervised::Booting => {
                        let _ = asked
                            .answer
                            .send(Err(super::upgrade::refusal_while("starting")));
                    }
                    Supervised::Paused { .. } => {
                        let _ = asked
                            .answer
                            .send(Err(super::upgrade::refusal_while("paused by QEMU")));
                    }
                }
                None
            }
            Incoming::Command(Command::Continue { answer }) => {
                let answered = self.continue_asked(vm, state).await;
                let _ = answer.send(answered.map_err(Refusal::from));
                None
            }
            Incoming::Signal("SIGTERM")
                if *state == Supervised::Running && self.suspends_for_host_shutdown().await =>
            {
                // Nobody waits for an answer: the journal has it.
                let (answer, _) = tokio::sync::oneshot::channel();
                let deadline = self.config.stop_timeout.0;
                self.suspend(
                    vm,
                    deadline,
                    SuspendFallback::Stop,
                    SuspendCause::HostShutdown,
                    answer,
                )
                .await
            }
            Incoming::Signal(name) => {
                tracing::info!("{name}: stopping the VM");
                let deadline = self.config.stop_timeout.0;
                Some(
                    self.stop_in(vm, state, StopCause::Signal, deadline, false)
                        .await,
                )
            }
            Incoming::Command(Command::Stop { deadline, force }) => Some(
                self.stop_in(vm, state, StopCause::Request, deadline, force)
                    .await,
            ),
        }
    }

    /// `vmkeep start` of a paused VM: let it run on, unless its cause lasts.
    async fn continue_asked(
        &mut self,
        vm: &QemuVm,
        state: &mut Supervised,
    ) -> Result<api::Continued, ContinueError> {
        let Supervised::Paused { reason, .. } = state else {
            return Ok(api::Continued { was_paused: false });
        };
        if let PauseReason::HostDiskFull { .. } = reason {
            let free =
                os::fs::free_space(self.dir.dir()).map_err(|source| ContinueError::Room {
                    dir: self.dir.dir().to_path_buf(),
                    source,
                })?;
            if !reason.continues_with_room(free.available_bytes) {
                return Err(ContinueError::StillFull {
                    available: free.available_bytes,
                    mount_point: free.mount_point,
                });
            }
        }
        self.continue_guest(vm, state, ContinueCause::Start).await?;
        Ok(api::Continued { was_paused: true })
    }

    /// Stop the VM from any state: a paused guest is let run on first, so
    /// that it can power off by its ladder (if it pauses again, the ladder
    /// ends it at its deadline); a booting one fails its start.
    async fn stop_in(
        &mut self,
        vm: &QemuVm,
        state: &mut Supervised,
        cause: StopCause,
        deadline: Duration,
        force: bool,
    ) -> AgentOutcome {
        if !force
            && matches!(state, Supervised::Paused { .. })
            && let Err(e) = self.continue_guest(vm, state, ContinueCause::Stop).await
        {
            tracing::warn!("stopping a paused guest: {e}; its ladder goes on regardless");
        }
        let booting = *state == Supervised::Booting;
        let outcome = self.stop(vm, cause, deadline, force).await;
        if booting {
            self.reporter.send(Report::Failed {
                error: "stopped while starting".into(),
            });
        }
        outcome
    }

    /// Whether a SIGTERM is the host shutting down and the instance wants
    /// to be suspended then (`onHostShutdown: suspend`). Asked of systemd,
    /// bounded: an answer that does not come means a plain stop.
    async fn suspends_for_host_shutdown(&self) -> bool {
        if self.config.on_host_shutdown != OnHostShutdown::Suspend {
            return false;
        }
        let asked = tokio::task::spawn_blocking(os::service_manager::host_shutting_down);
        match tokio::time::timeout(crate::timeouts::API_ANSWER, asked).await {
            Ok(Ok(Ok(true))) => {
                tracing::info!(
                    "SIGTERM at a host shutdown: suspending the VM (onHostShutdown: suspend)"
                );
                true
            }
            Ok(Ok(Ok(false))) => {
                tracing::info!("SIGTERM, but the host is not shutting down: stopping the VM");
                false
            }
            Ok(Ok(Err(why))) => {
                tracing::warn!(
                    "SIGTERM: cannot tell whether the host is shutting down ({why}); stopping the VM"
                );
                false
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    "SIGTERM: systemd did not say in time whether the host is shutting down; stopping the VM"
                );
                false
            }
        }
    }
}
