//! VM images: the built-in tiny image, and cloud images (downloaded,
//! cached, booted through a qcow2 overlay with a cloud-init seed).

pub mod cloud;
pub mod download;
pub mod templates;
pub mod tiny;
