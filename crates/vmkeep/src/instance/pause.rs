//! Why QEMU paused a guest by itself, and when it may carry on: pure
//! decisions (the QEMU driver reads the reason from what QMP says; the host
//! agent observes QMP and the host's free space, and acts). A paused VM is
//! its own status (`Paused`), journaled with its reason; a guest paused for
//! a full host disk continues once there is room.

use serde::{Deserialize, Serialize};

use crate::instance::config::ByteSize;

/// Free space a guest paused for a full host disk needs before it is
/// continued: room for its disk image to grow by what it was writing and
/// then some, so that it does not pause again at once.
pub const MIN_FREE_TO_CONTINUE: u64 = 32 * 1024 * 1024;

/// Why the guest is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PauseReason {
    /// A disk write found the host's filesystem full (QEMU's `werror=enospc`).
    HostDiskFull {
        /// The filesystem that holds the disk image, and what it had free
        /// when the guest was paused.
        mount_point: String,
        available_bytes: u64,
    },
    /// Another disk error that QEMU stops the guest for.
    IoError {
        device: String,
        operation: String,
        error: String,
    },
    /// The guest panicked (with QEMU's panic action `pause`).
    GuestPanicked,
    /// The guest's watchdog fired (action `pause`).
    Watchdog,
    /// QEMU could not go on emulating (KVM internal error, ...).
    InternalError,
    /// Something else paused it (a `stop` over QMP by another client, ...);
    /// `run_state` is QEMU's word for it.
    Other { run_state: String },
}

impl PauseReason {
    /// The reason code `list --json` shows.
    pub fn code(&self) -> &'static str {
        match self {
            PauseReason::HostDiskFull { .. } => "host-disk-full",
            PauseReason::IoError { .. } => "io-error",
            PauseReason::GuestPanicked => "guest-panicked",
            PauseReason::Watchdog => "watchdog",
            PauseReason::InternalError => "internal-error",
            PauseReason::Other { .. } => "paused",
        }
    }

    pub fn message(&self) -> String {
        match self {
            PauseReason::HostDiskFull {
                mount_point,
                available_bytes,
            } => format!(
                "host disk full on {mount_point} ({} free): a write of the guest's disk did not fit",
                ByteSize(*available_bytes).approx()
            ),
            PauseReason::IoError {
                device,
                operation,
                error,
            } => format!("a disk {operation} on {device} failed: {error}"),
            PauseReason::GuestPanicked => "the guest panicked".into(),
            PauseReason::Watchdog => "the guest's watchdog fired".into(),
            PauseReason::InternalError => "QEMU hit an internal error running the guest".into(),
            PauseReason::Other { run_state } => format!("QEMU paused it ({run_state})"),
        }
    }

    /// What the user can do (`NAME` stands for the instance).
    pub fn hint(&self) -> String {
        match self {
            PauseReason::HostDiskFull { mount_point, .. } => format!(
                "free at least {} on {mount_point}: the VM continues by itself \
                 (or with `vmkeep start NAME`); nothing the guest wrote is lost",
                ByteSize(MIN_FREE_TO_CONTINUE).approx()
            ),
            PauseReason::IoError { .. } => {
                "fix the disk, then `vmkeep start NAME` retries the request; \
                 `vmkeep stop NAME` stops it"
                    .into()
            }
            _ => "`vmkeep start NAME` lets it run on; `vmkeep stop NAME` stops it".into(),
        }
    }

    /// Whether the agent continues the guest by itself once `available`
    /// bytes are free where its disk is.
    pub fn continues_with_room(&self, available: u64) -> bool {
        matches!(self, PauseReason::HostDiskFull { .. }) && available >= MIN_FREE_TO_CONTINUE
    }
}
