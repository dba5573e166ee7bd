//! The instance disk's size against `disk:` (`instance::disk_size`
//! decides): its virtual size now, and for a cloud image the size of the
//! base it was made on, which a `disk:` below it leaves as it is.

use crate::driver::qemu::disk_image::{self, DiskImageError};
use crate::image::cloud::ImageRecord;
use crate::instance::InstanceDir;
use crate::instance::config::Config;
use crate::instance::disk_size::{self, DiskChange};

/// What a start would do with the disk of `dir` under `config`.
pub fn change(dir: &InstanceDir, config: &Config) -> Result<DiskChange, DiskImageError> {
    let current = disk_image::info(&dir.disk())?.virtual_size;
    let image = match config.is_cloud() {
        true => ImageRecord::load(dir)
            .ok()
            .filter(|record| record.base.is_file())
            .map(|record| disk_image::info(&record.base).map(|i| i.virtual_size))
            .transpose()?
            .unwrap_or(0),
        false => 0,
    };
    Ok(disk_size::decide(config.disk.0.0, current, image))
}
