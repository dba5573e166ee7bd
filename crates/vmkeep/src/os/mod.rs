//! The one place where vmkeep touches processes, locks, sockets and files.
//!
//! Everything else decides; this module acts. Keeping the side effects here
//! keeps them few, reviewed together, and out of the pure logic's way.

pub mod capped;
pub mod cgroup;
pub mod child_fds;
pub mod confine;
pub mod exit_watch;
pub mod fs;
pub mod identity;
pub mod inotify;
pub mod lock;
pub mod memfd;
pub mod process;
#[cfg(target_os = "linux")]
pub mod seccomp;
pub mod service_manager;
pub mod service_notify;
pub mod socket;
pub mod terminal;
pub mod tool;
