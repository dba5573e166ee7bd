//! Hypervisor drivers: a small trait and the QEMU implementation.

pub mod qemu;
