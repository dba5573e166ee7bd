//! Launching QEMU: the accelerator, the image (a cloud image's spec, or the
//! tiny image built here), the guest's RAM (a memfd QEMU inherits), the
//! virtiofsds, QEMU in a scope of its own; a saved state is resumed instead
//! of booted (`suspend`).

use tokio::time::Instant;

use super::error::LaunchError;
use super::{Agent, mounts};
use crate::driver::Vm;
use crate::driver::qemu::accel::{self, HostFacts};
use crate::driver::qemu::args::{LaunchSpec, ShareDevice};
use crate::driver::qemu::binary::{self, QemuBinary};
use crate::driver::qemu::capabilities::Capabilities;
use crate::driver::qemu::qmp::QmpEvents;
use crate::driver::qemu::snapshot;
use crate::driver::qemu::{self, QemuError, QemuVm};
use crate::image::tiny;
use crate::instance::home;
use crate::instance::journal::Event;
use crate::os;
use crate::os::cgroup;
use crate::os::process::ExitOutcome;

impl Agent<'_, '_> {
    pub(super) async fn launch(&mut self) -> Result<(QemuVm, QmpEvents), LaunchFailed> {
        let launched = self.boot_or_resume().await;
        // Taken by a resume; any other fill (a start that failed first)
        // stops.
        self.early_fill = None;
        launched
    }

    async fn boot_or_resume(&mut self) -> Result<(QemuVm, QmpEvents), LaunchFailed> {
        let began = Instant::now();
        // Never boot a disk whose saved state exists: its RAM would no
        // longer match the disk. An unreadable record fails the start too.
        let saved = snapshot::load(&self.dir).map_err(LaunchError::SavedState)?;
        if saved.is_none() {
            // A boot: a fill begun for a state gone since stops.
            self.early_fill = None;
        }
        if saved.is_some() && self.repair_data {
            return Err(LaunchError::RepairSuspended {
                name: self.dir.name().clone(),
            }
            .into());
        }
        // The one QEMU of this run: VMKEEP_QEMU, else PATH.
        let qemu = binary::resolve(self.config.arch).map_err(|e| match saved {
            Some(_) => LaunchError::NoQemuToResume(e),
            None => LaunchError::Qemu(e),
        })?;
        if saved.is_none() {
            self.fit_disk()?;
        }
        let env_accel = accel::env_override().map_err(LaunchError::from)?;
        let (accel, why) = accel::choose(
            env_accel,
            self.config.accel,
            HostFacts::probe(),
            self.config.arch,
        )
        .map_err(LaunchError::from)?;
        if self.config.is_cloud() {
            // Cloud image: seed, ssh port and boot method come from image::cloud.
            let spec = crate::image::cloud::launch_spec(&self.dir, &self.config, accel)
                .map_err(LaunchError::from)?;
            return match saved {
                Some(saved) => self.resume(saved, spec, &qemu, accel, why, began).await,
                None => Ok(self.boot(spec, &qemu, accel, why).await?),
            };
        }
        let cache = home::cache_root().map_err(LaunchError::from)?;
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
        let image = tiny::ensure_for(
            &cache,
            self.config.arch,
            kernel_override.as_ref(),
            &mut |message| reporter.progress(message),
        )
        .map_err(LaunchError::from)?;
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
                cmdline.push_str(&self.data_disk_kernel_flags().map_err(LaunchError::from)?);
                // The guest names itself after the instance.
                if let Some(flag) =
                    vmkeep_protocol::kernel_flags::hostname(self.dir.name().as_str())
                {
                    cmdline.push(' ');
                    cmdline.push_str(&flag);
                }
                cmdline
            }
        };
        let spec = LaunchSpec {
            arch: self.config.arch,
            ..LaunchSpec::for_instance(
                &self.dir,
                accel,
                self.config.cpus.0,
                self.config.memory.0.mib(),
                image.kernel.clone(),
                image.initrd.clone(),
                cmdline,
            )
        };
        match saved {
            Some(saved) => self.resume(saved, spec, &qemu, accel, why, began).await,
            None => Ok(self.boot(spec, &qemu, accel, why).await?),
        }
    }

    async fn boot(
        &mut self,
        mut spec: LaunchSpec,
        qemu: &QemuBinary,
        accel: accel::Accel,
        why: String,
    ) -> Result<(QemuVm, QmpEvents), LaunchError> {
        self.reporter.progress(format!("booting QEMU with {why}"));
        // Fresh RAM: a memfd QEMU inherits (no disk space, no writeback).
        let ram = self.guest_ram(&mut spec)?;
        // [mounts] virtiofsd first: QEMU connects to it as it starts.
        spec.shares = self.start_shares(qemu)?;
        let launched = self.start_qemu(&spec, qemu).await;
        // QEMU holds it now; an agent that adopts QEMU finds it there.
        drop(ram);
        let (vm, events) = match launched {
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

    /// A new memfd for the guest's RAM, of `spec`'s size, named in `spec`
    /// for QEMU to inherit. The caller keeps it until QEMU was launched.
    pub(super) fn guest_ram(
        &self,
        spec: &mut LaunchSpec,
    ) -> Result<std::os::fd::OwnedFd, LaunchError> {
        use std::os::fd::AsRawFd;
        let ram = os::memfd::create_guest_ram(spec.memory_mib << 20).map_err(|source| {
            LaunchError::GuestRam {
                mib: spec.memory_mib,
                source,
            }
        })?;
        spec.ram_fd = Some(ram.as_raw_fd());
        Ok(ram)
    }

    /// Start a virtiofsd for each shared directory of the config (none:
    /// nothing to ask QEMU), before QEMU, which connects to them as it
    /// starts; returns QEMU's devices for them.
    pub(super) fn start_shares(
        &mut self,
        qemu: &QemuBinary,
    ) -> Result<Vec<ShareDevice>, LaunchError> {
        if mounts::resolve(&self.dir, &self.config)?.is_empty() {
            return Ok(Vec::new());
        }
        // Which virtiofsd goes with this QEMU is the QEMU version's call.
        let (shares, devices) = mounts::start(&self.dir, &self.config, qemu.capabilities()?)?;
        self.shares = shares;
        Ok(devices)
    }

    /// Launch QEMU for `spec` (in a scope of its own where systemd can give
    /// one). A QEMU older than vmkeep supports is said once, here, from
    /// the version its QMP greeting gives.
    pub(super) async fn start_qemu(
        &mut self,
        spec: &LaunchSpec,
        binary: &QemuBinary,
    ) -> Result<(QemuVm, QmpEvents), LaunchError> {
        let spec = spec.clone();
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
        let (vm, events) = launched?;
        let capabilities = vm.qmp().qemu_version().map(Capabilities::of);
        if let Some(warning) = capabilities.and_then(|c| c.warning(&binary.path)) {
            tracing::warn!("{warning}");
            self.reporter.warn(warning);
        }
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
}

/// Why no VM came up, and how its QEMU ended if one was launched.
pub(super) struct LaunchFailed {
    pub(super) error: LaunchError,
    pub(super) qemu_exit: Option<ExitOutcome>,
}

impl From<LaunchError> for LaunchFailed {
    fn from(error: LaunchError) -> LaunchFailed {
        LaunchFailed {
            error,
            qemu_exit: None,
        }
    }
}
