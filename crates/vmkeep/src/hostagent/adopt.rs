//! Adopting what a dead host agent left: its QEMU (settled if it was left
//! mid-save or mid-resume; killed if it does not answer), its virtiofsds,
//! or, when no QEMU runs, the runtime files and leftovers to clear.

use std::time::Duration;

use super::error::AdoptError;
use super::{Agent, mounts};
use crate::driver::Vm;
use crate::driver::qemu::qmp::QmpEvents;
use crate::driver::qemu::snapshot;
use crate::driver::qemu::{self, QemuVm};
use crate::instance::journal::{Event, Repair};

impl Agent<'_, '_> {
    /// Adopt a QEMU that outlived its agent, or clear what dead processes left.
    pub(super) async fn adopt_or_clean(
        &mut self,
    ) -> Result<Option<(QemuVm, QmpEvents)>, AdoptError> {
        match qemu::adopt(&self.dir).await? {
            Some(Ok((vm, events))) => {
                self.reporter.progress(format!(
                    "adopting QEMU pid {} left running by a previous host agent",
                    vm.pid()
                ));
                if self.settle_adopted(&vm).await? {
                    match &mut self.taking_over {
                        // Journaled as `upgraded` once the guest is back.
                        Some(over) => over.adopted = Some(std::time::SystemTime::now()),
                        None => self.record(Event::Adopted { qemu_pid: vm.pid() }),
                    }
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
                    return Err(AdoptError::Unkillable { pid });
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
        let clean = |source| AdoptError::Clean {
            dir: self.dir.dir().to_path_buf(),
            source,
        };
        let mut stale = self.remove_runtime_files().map_err(clean)?;
        // No QEMU runs: a device state no record claims, and the RAM file
        // of a VM that is gone, are leftovers (a saved state keeps both).
        stale.extend(snapshot::remove_unclaimed(&self.dir, false).map_err(clean)?);
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
    pub(super) fn remove_runtime_files(&self) -> std::io::Result<Vec<String>> {
        crate::instance::runtime::remove_leftovers(&self.dir)
    }
}
