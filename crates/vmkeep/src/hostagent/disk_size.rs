//! Growing the disk to a larger `disk:` before a fresh boot (never before
//! a resume: the saved guest knows its disk's size), and refusing a
//! smaller one (`instance::disk_size` decides). The guest grows its file
//! system: the tiny image's agent grows /data online and says so in its
//! ready report; a cloud image's cloud-init grows its root at every boot.

use super::Agent;
use super::error::LaunchError;
use crate::driver::qemu::disk_image;
use crate::instance::config::ByteSize;
use crate::instance::disk_size::DiskChange;
use crate::instance::journal::Event;

impl Agent<'_, '_> {
    /// Make the disk as large as `disk:` says, or refuse a shrink.
    pub(super) fn fit_disk(&mut self) -> Result<(), LaunchError> {
        let change = crate::image::disk_size::change(&self.dir, &self.config)?;
        match change {
            DiskChange::Keep | DiskChange::KeepImageSize { .. } => Ok(()),
            DiskChange::Shrink { .. } => Err(LaunchError::DiskShrink {
                message: change
                    .refusal(self.dir.name().as_str())
                    .expect("a shrink is refused"),
            }),
            DiskChange::Grow { from, to } => {
                disk_image::grow(&self.dir.disk(), to)?;
                self.record(Event::DiskGrown {
                    from_bytes: from,
                    to_bytes: to,
                });
                self.reporter.progress(format!(
                    "grew the disk from {} to {}{}",
                    ByteSize(from),
                    ByteSize(to),
                    if self.config.is_cloud() {
                        "; cloud-init grows the root file system at boot"
                    } else {
                        "; the guest grows /data at boot"
                    }
                ));
                Ok(())
            }
        }
    }
}
