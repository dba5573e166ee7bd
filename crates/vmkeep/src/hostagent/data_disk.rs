//! The host agent's part in keeping the data disk safe (tiny image; a cloud
//! image's disk is its root disk and is left alone): before the launch, tell
//! the guest whether the disk is new or is to be repaired (kernel flags, see
//! `instance::data_disk`); at readiness, accept the guest's report of it or
//! refuse the start, journal it and stop the VM cleanly.

use crate::driver::qemu::QemuVm;
use crate::hostagent::api::GuestInfo;
use crate::instance::config::ByteSize;
use crate::instance::data_disk::{self, DataDisk, DataDiskProblem, Instruction, PrepareError};
use crate::instance::journal::{Event, StopCause};

use super::{Agent, AgentOutcome, fail, stopped_as_failed};

impl Agent<'_, '_> {
    /// The kernel-command-line words that tell the guest what to do with
    /// the data disk at this boot (with a leading space, or empty).
    pub(super) fn data_disk_kernel_flags(&mut self) -> Result<String, PrepareError> {
        let (_, instruction) = data_disk::prepare(&self.dir, self.repair_data)?;
        match &instruction {
            Instruction::Mount => {}
            Instruction::Format(_) => self
                .reporter
                .progress("the data disk is new: the guest formats it"),
            Instruction::Repair => self
                .reporter
                .progress("the guest checks the data disk with `e2fsck -f -y` before mounting it"),
        }
        Ok(instruction.kernel_flags())
    }

    /// Accept the data disk the ready guest reports, or fail the start: a
    /// guest without its /data would keep the user's writes in RAM only.
    /// `Err` is the outcome of the failed start, the VM stopped.
    pub(super) async fn accept_data_disk(
        &mut self,
        vm: &QemuVm,
        guest: &GuestInfo,
    ) -> Result<(), AgentOutcome> {
        if self.config.is_cloud() {
            return Ok(());
        }
        let problem =
            DataDiskProblem::in_report(guest.data_disk.as_ref(), guest.data_mount.as_deref());
        let Some(problem) = problem else {
            return self.data_disk_mounted(vm, guest).await;
        };
        let name = self.dir.name().to_string();
        let error = format!(
            "{}\n  {}",
            problem.message(),
            problem.hint().replace("NAME", &name)
        );
        self.refuse(vm, error, guest.data_disk.clone()).await
    }

    /// The disk is mounted: journal how, and make it new no more.
    async fn data_disk_mounted(
        &mut self,
        vm: &QemuVm,
        guest: &GuestInfo,
    ) -> Result<(), AgentOutcome> {
        if let Some(DataDisk::Mounted {
            formatted,
            repaired,
            grown,
            ..
        }) = &guest.data_disk
        {
            match grown {
                Some(g) if g.error.is_none() => self.reporter.progress(format!(
                    "the guest grew /data from {} to {}",
                    ByteSize(g.from_bytes),
                    ByteSize(g.to_bytes)
                )),
                Some(g) => self.reporter.progress(format!(
                    "the guest could not grow /data ({}); it is mounted at its old size, {}",
                    g.error.as_deref().unwrap_or_default(),
                    ByteSize(g.from_bytes)
                )),
                None => {}
            }
            if *formatted {
                self.reporter
                    .progress("the guest formatted the new data disk");
            }
            if let Some(fsck) = repaired {
                self.reporter.progress(format!(
                    "e2fsck repaired the data disk (exit code {})",
                    fsck.exit_code
                ));
            }
        }
        // (An older guest that only named its mount has no state to record.)
        if guest.data_disk.is_some() {
            self.record(Event::DataDisk {
                disk: guest.data_disk.clone(),
            });
        }
        match data_disk::mark_in_use(&self.dir) {
            Ok(_) => Ok(()),
            // Kept, the marker would have the next start format a disk that
            // now holds the user's files (the guest's token check prevents
            // it, but nothing should rest on that alone): refuse.
            Err(e) => {
                let error = format!(
                    "cannot remove {} after the guest mounted the data disk: {e}; \
                     fix the instance directory's permissions and start again",
                    self.dir.data_disk_new().display()
                );
                self.refuse(vm, error, guest.data_disk.clone()).await
            }
        }
    }

    /// Fail the start: journal why, stop the VM cleanly, journal the disk's
    /// state last (what `list` shows), tell whoever started us.
    async fn refuse(
        &mut self,
        vm: &QemuVm,
        error: String,
        disk: Option<DataDisk>,
    ) -> Result<(), AgentOutcome> {
        self.record(Event::StartFailed {
            error: error.clone(),
        });
        let deadline = self.config.stop_timeout.0;
        let stopped = self.stop(vm, StopCause::DataDisk, deadline, false).await;
        let refused = disk.as_ref().is_none_or(|state| !state.is_mounted());
        if refused {
            self.record(Event::DataDisk { disk });
        }
        fail(self.reporter, error);
        Err(stopped_as_failed(stopped))
    }
}
