//! VM images: the built-in tiny image, and cloud images (downloaded,
//! cached, booted through a qcow2 overlay with a cloud-init seed that
//! carries the instance's ssh key).

pub mod cloud;
pub mod cloudinit;
pub mod disk_size;
pub mod download;
pub mod sshkeys;
pub mod templates;
pub mod tiny;
