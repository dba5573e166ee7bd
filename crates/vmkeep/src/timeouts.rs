//! The timeouts more than one part of vmkeep relies on, each defined once.
//! (A timeout used in one place only is a named constant next to its use.)

use std::time::Duration;

/// An instance's graceful-stop deadline when its config says nothing
/// (`stopTimeout`; a cloud image's default is longer, see `instance::config`).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a guest may take to become ready when its config says nothing
/// (`bootTimeout`; a cloud image's default is longer).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Time a host agent gets beyond its stop ladder's end (the deadline plus
/// the grace between QMP `quit` and SIGKILL) to wait for QEMU to be reaped,
/// remove its runtime files and write the journal, before whoever asked for
/// the stop (a service manager, the daemon, `vmkeep stop`) forces it.
pub const STOP_MARGIN: Duration = Duration::from_secs(15);

/// Time granted beyond an instance's boot timeout before a start is given
/// up on from outside (image preparation happens before booting).
pub const START_MARGIN: Duration = Duration::from_secs(60);

/// How long a host agent's API may take to accept a request.
pub const API_ANSWER: Duration = Duration::from_secs(3);

/// How long a process may take to disappear after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(10);
