//! Why the host agent could not do what it was for, typed, each keeping
//! what caused it: a launch ([`LaunchError`]), the adoption of what a dead
//! agent left ([`AdoptError`]), the shared directories ([`MountsError`]),
//! letting a paused guest run on ([`ContinueError`]). Each message is the
//! text the journal, the start's report and the API's caller get.

use std::path::PathBuf;

use super::api::{ErrorCode, Refusal};
use crate::driver::DriverError;
use crate::driver::qemu::QemuError;
use crate::driver::qemu::accel::{BadAccelOverride, KvmUnavailable};
use crate::driver::qemu::qmp::RunState;
use crate::driver::qemu::snapshot::{ResumeError, SettleError, StateError};
use crate::driver::qemu::virtiofs::VirtiofsError;
use crate::image::cloud::CloudError;
use crate::image::tiny::TinyImageError;
use crate::instance::InstanceName;
use crate::instance::config::ByteSize;
use crate::instance::data_disk::PrepareError;
use crate::instance::home::HomeError;
use crate::instance::pause::MIN_FREE_TO_CONTINUE;
use crate::instance::shares::ShareError;
use crate::link::guest_link::GuestLinkError;
use crate::text::chain::error_chain;

/// Why no VM came up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The saved state's record cannot be read: never boot its disk then.
    #[error("{}", error_chain(.0))]
    SavedState(#[source] StateError),

    #[error(
        "{name} is suspended: its data disk is in use by the saved guest, so it can be \
         checked only at a fresh boot; resume it with `vmkeep start {name}`, or discard \
         the saved state first"
    )]
    RepairSuspended { name: InstanceName },

    #[error(transparent)]
    AccelOverride(#[from] BadAccelOverride),

    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),

    #[error(transparent)]
    CloudImage(#[from] CloudError),

    #[error(transparent)]
    Home(#[from] HomeError),

    #[error(transparent)]
    TinyImage(#[from] TinyImageError),

    #[error(transparent)]
    DataDisk(#[from] PrepareError),

    /// `disk:` is smaller than the disk (nothing was changed).
    #[error("{message}")]
    DiskShrink { message: String },

    #[error("cannot grow the disk: {0}")]
    DiskImage(#[from] crate::driver::qemu::disk_image::DiskImageError),

    #[error("cannot read the saved guest RAM {}; the state is kept", path.display())]
    ResumeRam {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot make a memfd of {mib} MiB for the guest's RAM: {source}")]
    GuestRam {
        mib: u64,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Mounts(#[from] MountsError),

    #[error(transparent)]
    Qemu(#[from] QemuError),

    /// No QEMU to resume a saved state with (not in PATH, or a bad
    /// `VMKEEP_QEMU`).
    #[error("{0}; the saved state is kept")]
    NoQemuToResume(QemuError),

    /// The saved state does not fit this launch, or QEMU refused it.
    #[error("{}", error_chain(.0))]
    Resume(#[source] ResumeError),
}

/// Why what a dead host agent left could not be taken over or cleared.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Qemu(#[from] QemuError),

    /// A QEMU left mid-save or mid-resume could not be put right.
    #[error("{}", error_chain(.0))]
    Settle(#[source] SettleError),

    #[error("QEMU pid {pid} does not answer and did not die from SIGKILL")]
    Unkillable { pid: u32 },

    #[error("cannot clean {}: {source}", dir.display())]
    Clean {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the shared directories (`mounts:`) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// The guest user comes from the cloud image's record.
    #[error(transparent)]
    ImageRecord(#[from] CloudError),

    #[error("{source}\n  fix it in {}", config.display())]
    Shares {
        config: PathBuf,
        #[source]
        source: ShareError,
    },

    #[error(transparent)]
    Virtiofs(#[from] VirtiofsError),

    /// The sandbox virtiofsd runs in is the `vmkeep` binary beside the agent.
    #[error("cannot find the binary that sandboxes virtiofsd: {0}")]
    Shim(#[source] std::io::Error),

    #[error("the guest could not mount the shared directory {share}: {source}")]
    Mount {
        share: String,
        #[source]
        source: GuestLinkError,
    },
}

/// Why a paused guest does not run on.
#[derive(Debug, thiserror::Error)]
pub enum ContinueError {
    #[error("QEMU did not let it run on: {0}")]
    Cont(#[source] DriverError),

    #[error("QEMU paused it again at once ({0})")]
    PausedAgain(RunState),

    #[error("cannot ask QEMU whether it runs: {0}")]
    RunState(#[source] DriverError),

    #[error("cannot see how much room {} has: {source}", dir.display())]
    Room {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Its cause lasts: the host disk is still full.
    #[error(
        "the host disk is still full: {} free on {}; free at least {} there \
         (the VM then continues by itself)",
        ByteSize(*available).approx(),
        mount_point.display(),
        ByteSize(MIN_FREE_TO_CONTINUE).approx()
    )]
    StillFull {
        available: u64,
        mount_point: PathBuf,
    },
}

impl From<ContinueError> for Refusal {
    fn from(error: ContinueError) -> Refusal {
        let code = match error {
            ContinueError::StillFull { .. } => ErrorCode::WrongState,
            ContinueError::Cont(_)
            | ContinueError::PausedAgain(_)
            | ContinueError::RunState(_)
            | ContinueError::Room { .. } => ErrorCode::Failed,
        };
        Refusal::new(code, error.to_string())
    }
}
