//! The QEMU driver: command line, accelerator choice, QMP.

pub mod qmp;
