//! The host agent's part in suspend and resume (the mechanism is
//! `driver::qemu::snapshot`): saving on request and ending, resuming instead
//! of booting when a saved state exists, and putting right a QEMU that a
//! dead predecessor left mid-save or mid-resume.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::api::SuspendDone;
use super::api::{ErrorCode, Refusal};
use super::error::{AdoptError, LaunchError};
use super::{Agent, AgentOutcome, LaunchFailed, clock, error_chain, mounts};
use crate::driver::Vm;
use crate::driver::qemu::QemuVm;
use crate::driver::qemu::accel::Accel;
use crate::driver::qemu::args::{LaunchSpec, ShareDevice};
use crate::driver::qemu::binary::QemuBinary;
use crate::driver::qemu::capabilities;
use crate::driver::qemu::qmp::QmpEvents;
use crate::driver::qemu::snapshot::{self, SaveOptions, Settled, StateAfterFailure, StateRecord};
use crate::instance::journal::{
    Event, Repair, StopCause, StoppedReason, SuspendCause, SuspendFallback,
};
use crate::instance::status::Phase;
use crate::link::guest_link::GuestLink;
use crate::os;

/// How long loading a saved state may take (the tiny guest takes ~10 ms).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the clock correction before a resumed guest is called ready
/// may take; past it the keeper carries on in the background.
const CLOCK_BEFORE_READY: Duration = Duration::from_millis(500);

impl Agent<'_, '_> {
    /// Save the VM and end (`Some`), or carry on (`None`) when the save
    /// failed and the VM runs on. The API's caller hears the outcome on
    /// `answer` before the agent acts on it.
    pub(super) async fn suspend(
        &mut self,
        vm: &QemuVm,
        deadline: Duration,
        fallback: SuspendFallback,
        cause: SuspendCause,
        answer: oneshot::Sender<Result<SuspendDone, Refusal>>,
    ) -> Option<AgentOutcome> {
        self.set_info(|info| info.phase = Phase::Stopping);
        os::service_notify::stopping("saving the VM's state (suspend)");
        self.record(Event::Suspending {
            deadline_secs: deadline.as_secs_f64(),
            cause,
        });
        match snapshot::save(vm, &self.dir, &SaveOptions::new(deadline)).await {
            Ok(saved) => {
                tracing::info!(
                    state_bytes = saved.state_bytes,
                    secs = saved.elapsed.as_secs_f64(),
                    qemu_exit = %saved.qemu_exit,
                    "suspended"
                );
                let _ = self.guest_tx.send(None);
                self.record(Event::Suspended {
                    state_bytes: saved.state_bytes,
                    ram_bytes: saved.ram_bytes,
                    secs: saved.elapsed.as_secs_f64(),
                });
                let _ = answer.send(Ok(SuspendDone {
                    state_bytes: saved.state_bytes,
                    ram_bytes: saved.ram_bytes,
                    secs: saved.elapsed.as_secs_f64(),
                }));
                Some(AgentOutcome::Suspended {
                    state_bytes: saved.state_bytes,
                })
            }
            Err(failed) => {
                let error = error_chain(&failed);
                tracing::warn!("suspend failed: {error}");
                self.record(Event::SuspendFailed {
                    error: error.clone(),
                    fallback,
                });
                match failed.after {
                    StateAfterFailure::Gone { outcome } => {
                        let _ = answer.send(Err(Refusal::new(ErrorCode::Failed, error)));
                        self.record_stopped(StoppedReason::Crashed, None, None, outcome);
                        Some(AgentOutcome::Stopped {
                            reason: StoppedReason::Crashed,
                            by: None,
                        })
                    }
                    StateAfterFailure::Running | StateAfterFailure::Paused { .. }
                        if fallback == SuspendFallback::Stop =>
                    {
                        let _ = answer.send(Err(Refusal::new(
                            ErrorCode::Failed,
                            format!("{error}; stopping it instead"),
                        )));
                        let deadline = self.config.stop_timeout.0;
                        Some(
                            self.stop(vm, StopCause::SuspendFailed, deadline, false)
                                .await,
                        )
                    }
                    StateAfterFailure::Running | StateAfterFailure::Paused { .. } => {
                        let _ = answer.send(Err(Refusal::new(ErrorCode::Failed, error)));
                        self.set_info(|info| info.phase = Phase::Running);
                        self.clock_nudge.notify_one();
                        None
                    }
                }
            }
        }
    }

    /// Launch QEMU to carry on from the saved state instead of booting. The
    /// state is checked against `spec` before anything is launched; a
    /// refusal keeps the state and says what differs and the choices.
    pub(super) async fn resume(
        &mut self,
        saved: StateRecord,
        mut spec: LaunchSpec,
        qemu: &QemuBinary,
        accel: Accel,
        why: String,
        began: Instant,
    ) -> Result<(QemuVm, QmpEvents), LaunchFailed> {
        let mut steps = snapshot::Steps::new(self.began);
        steps.ended_at("launch began", began);
        steps.ended("resume began");
        // A state saved before every VM had a network device resumes
        // without one (no port forwards until the next boot).
        if !saved.machine.network {
            spec.network = false;
        }
        // The machine it was saved under (QEMU keeps old machine types: a
        // state of QEMU 7.2's pc-q35-7.2 resumes on QEMU 10).
        spec.machine = capabilities::machine_to_launch(&saved.machine_type);
        // The new memfd, filled from the saved RAM since the agent began
        // (`begin_fill`; or from now on if its size was not the one to
        // launch): beside the agent's start, the checks, the virtiofsds'
        // start and QEMU's (the fill is the longest step of a resume);
        // whole before the device state loads (QEMU reads the virtqueues'
        // indices from guest memory while loading). A resume that fails
        // before it is awaited stops it.
        let early = self
            .early_fill
            .take()
            .filter(|fill| fill.mib == spec.memory_mib);
        let RamFill {
            ram,
            fill,
            stop: fill_stop,
            began: fill_began,
            ..
        } = match early {
            Some(fill) => fill,
            None => {
                start_fill(&self.dir, spec.memory_mib).map_err(|source| LaunchError::GuestRam {
                    mib: spec.memory_mib,
                    source,
                })?
            }
        };
        spec.ram_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&ram));
        steps.ended_at("fill began", fill_began);
        // Its shares' devices, for the check; their virtiofsds start only
        // once the state is found resumable.
        spec.shares = mounts::resolve(&self.dir, &self.config)
            .map_err(LaunchError::from)?
            .iter()
            .map(|share| ShareDevice {
                tag: share.tag(),
                socket: self.dir.share_socket(share.index),
            })
            .collect();
        let device_state = snapshot::check_resumable(&self.dir, &saved, &spec, &qemu.path)
            .map_err(LaunchError::Resume)?;
        steps.ended("checked");
        spec.shares = self.start_shares(qemu)?;
        steps.ended("shares started");
        self.reporter.progress(format!(
            "resuming the state saved at {} with {why}",
            saved.saved_at
        ));
        spec.incoming = true;
        let launched = Instant::now();
        let started = self.start_qemu(&spec, qemu).await;
        drop(ram);
        steps.ended("qemu answering");
        let qemu_secs = launched.elapsed().as_secs_f64();
        // The fill has often ended by now: no fsync here (the next durable
        // record takes this one along).
        if let Ok((vm, _)) = &started {
            self.record_deferred(Event::Resuming {
                qemu_pid: vm.pid(),
                accel: accel.as_str().into(),
                saved_at: saved.saved_at.clone(),
            });
        }
        if started.is_err() {
            drop(fill_stop);
        }
        let filled = fill
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| LaunchError::ResumeRam {
                path: self.dir.guest_ram(),
                source,
            });
        let (vm, events) = match (started, filled) {
            (Ok(launched_vm), Ok((copied, filled_at))) => {
                steps.ended_at("ram filled", filled_at);
                tracing::info!(
                    bytes = copied,
                    qemu_secs,
                    filled_secs = filled_at.saturating_duration_since(launched).as_secs_f64(),
                    "guest RAM filled from the saved state"
                );
                launched_vm
            }
            (Ok((vm, _)), Err(error)) => {
                let _ = vm.kill();
                mounts::abandon(&self.shares);
                return Err(LaunchFailed {
                    error,
                    qemu_exit: Some(vm.exited().await),
                });
            }
            (Err(error), _) => {
                mounts::abandon(&self.shares);
                return Err(error.into());
            }
        };
        self.set_info(|info| {
            info.qemu_pid = Some(vm.pid());
            info.accel = Some(accel.as_str().into());
        });
        let log = self.dir.qemu_log();
        let loaded = snapshot::load_into(
            &vm,
            &self.dir,
            &saved,
            &device_state,
            LOAD_TIMEOUT,
            &log,
            &mut steps,
        )
        .await;
        match loaded {
            Ok(_) => {
                self.resumed = true;
                // The guest runs: nothing between it and the guest link.
                self.record_deferred(Event::Resumed {
                    qemu_pid: vm.pid(),
                    secs: launched.elapsed().as_secs_f64(),
                });
                steps.ended("resumed journaled");
                self.resume_steps = Some(steps);
                Ok((vm, events))
            }
            Err(error) => {
                let _ = vm.kill();
                Err(LaunchFailed {
                    error: LaunchError::Resume(error),
                    qemu_exit: Some(vm.exited().await),
                })
            }
        }
    }

    /// Put right an adopted QEMU (see `snapshot::settle_adopted`); false
    /// when it was ended and the start goes on without it.
    pub(super) async fn settle_adopted(&mut self, vm: &QemuVm) -> Result<bool, AdoptError> {
        let settled = snapshot::settle_adopted(vm, &self.dir)
            .await
            .map_err(AdoptError::Settle)?;
        let detail = match &settled {
            Settled::Running {
                discarded_state: false,
            } => return Ok(true),
            Settled::Running {
                discarded_state: true,
            } => format!(
                "QEMU pid {} runs its guest, so its saved state no longer matched it: discarded",
                vm.pid()
            ),
            Settled::Continued { discarded_state } => format!(
                "QEMU pid {} was left paused mid-save or mid-resume; its guest runs again{}",
                vm.pid(),
                if *discarded_state {
                    " and the saved state, which no longer matches it, was discarded"
                } else {
                    ""
                }
            ),
            Settled::Ended { run_state } => format!(
                "QEMU pid {} was left waiting for a saved state ({run_state}); it was ended and the \
                 state kept for this resume",
                vm.pid()
            ),
        };
        self.reporter.progress(detail.clone());
        self.record(Event::Repaired {
            action: match settled {
                Settled::Ended { .. } => Repair::EndedWaitingQemu,
                _ => Repair::ContinuedPausedQemu,
            },
            detail,
        });
        if let Settled::Running {
            discarded_state: true,
        }
        | Settled::Continued {
            discarded_state: true,
        } = settled
        {
            self.record(Event::StateDiscarded {
                reason: "the adopted QEMU runs its guest".into(),
            });
        }
        Ok(!matches!(settled, Settled::Ended { .. }))
    }

    /// Step the guest's clock now, bounded; the keeper retries later if
    /// this could not. Returns the reading of a step, for the journal.
    pub(super) async fn correct_clock_now(&mut self, link: &GuestLink) -> Option<clock::Reading> {
        match tokio::time::timeout(CLOCK_BEFORE_READY, clock::correct(link)).await {
            Ok(Ok(clock::Correction::Stepped { before })) => return Some(before),
            Ok(Ok(other)) => tracing::debug!(?other, "guest clock after the resume"),
            Ok(Err(e)) => tracing::info!("cannot correct the guest's clock yet: {e}"),
            Err(_) => tracing::info!("correcting the guest's clock took too long; retrying later"),
        }
        None
    }
}

/// Fill a new guest RAM from the saved copy at `saved` (its data extents).
fn fill_ram(
    saved: &std::path::Path,
    ram: std::fs::File,
    stop: &AtomicBool,
) -> std::io::Result<u64> {
    let from = std::fs::File::open(saved)?;
    let len = ram.metadata()?.len().min(from.metadata()?.len());
    os::memfd::fill_extents(&from, &ram, len, stop)
}

/// A new guest RAM being filled from the saved one in a blocking thread.
pub(super) struct RamFill {
    /// The memfd (QEMU inherits it).
    ram: std::os::fd::OwnedFd,
    mib: u64,
    /// Bytes filled and when the fill ended.
    fill: tokio::task::JoinHandle<std::io::Result<(u64, Instant)>>,
    stop: StopOnDrop,
    began: Instant,
}

/// Begin filling a new guest RAM of `mib` MiB from `dir`'s saved RAM.
fn start_fill(dir: &crate::instance::InstanceDir, mib: u64) -> std::io::Result<RamFill> {
    let began = Instant::now();
    let ram = os::memfd::create_guest_ram(mib << 20)?;
    let theirs = ram.try_clone()?;
    let stop = StopOnDrop::default();
    let flag = Arc::clone(&stop.0);
    let saved_ram = dir.guest_ram();
    let fill = tokio::task::spawn_blocking(move || {
        fill_ram(&saved_ram, theirs.into(), &flag).map(|bytes| (bytes, Instant::now()))
    });
    Ok(RamFill {
        ram,
        mib,
        fill,
        stop,
        began,
    })
}

impl Agent<'_, '_> {
    /// At the very start of a run whose instance has a saved state: begin
    /// filling the guest's RAM (of the configured size) at once, so that
    /// the fill overlaps the whole start; [`Agent::resume`] takes it, and
    /// dropping it (an adopted QEMU, a failed start) stops it.
    pub(super) fn begin_fill(&mut self) {
        if !snapshot::exists(&self.dir) {
            return;
        }
        match start_fill(&self.dir, self.config.memory.0.mib()) {
            Ok(fill) => self.early_fill = Some(fill),
            // Tried again, and said, by the resume.
            Err(e) => tracing::debug!("cannot begin the guest RAM's fill yet: {e}"),
        }
    }
}

/// A flag set when it is dropped: a fill begun for a resume that failed
/// before waiting for it stops at its next piece.
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
