//! Hypervisor drivers. The stop ladder and the host agent speak to a running
//! VM only through [`Vm`], so a driver for another hypervisor (VZ's
//! `RequestStop`, WSL2) needs only to implement it, plus start and adopt.

pub mod qemu;

use crate::os::process::ExitOutcome;

/// A running VM, as the stop ladder and the host agent see it.
#[allow(async_fn_in_trait)] // used on a single-threaded runtime; no Send bound needed
pub trait Vm {
    /// The hypervisor's process id (for display; signals go through a pidfd).
    fn pid(&self) -> u32;
    /// Whether the hypervisor's control channel answers.
    fn hypervisor_reachable(&self) -> bool;
    /// Ask the guest to shut down through the hypervisor (ACPI power button).
    async fn request_stop(&self) -> Result<(), DriverError>;
    /// End the VM now through the hypervisor (a power cut for the guest).
    async fn hard_stop(&self) -> Result<(), DriverError>;
    /// Kill the hypervisor process.
    fn kill(&self) -> std::io::Result<()>;
    /// Resolves when the hypervisor process has exited.
    async fn exited(&self) -> ExitOutcome;
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("QMP: {0}")]
    Qmp(#[from] qemu::qmp::QmpError),
    #[error("the hypervisor's control channel is not connected")]
    NotConnected,
}
