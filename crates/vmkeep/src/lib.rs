//! vmkeep: run Linux VMs on QEMU and own their whole lifecycle.
//!
//! The `vmkeep` binary is a thin CLI (`cli`) over this library; the host
//! agent runs as its own lean binary, `vmkeep-hostagent` ([`hostagent`]).
//! Side effects on processes, sockets and files go through [`os`]; instance
//! status is a pure function in [`instance::status`]; the stop ladder's
//! decisions are pure in [`stop_ladder`].

pub mod autostart;
pub mod cli;
pub mod daemon;
pub mod driver;
pub mod engine;
pub mod formats;
pub mod forwards;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod guest_arch;
pub mod hostagent;
pub mod image;
pub mod instance;
pub mod link;
pub mod logging;
pub mod mount_inotify;
pub mod notice;
pub mod os;
pub mod session;
pub mod stop_ladder;
pub mod template;
pub mod text;
pub mod timeouts;
