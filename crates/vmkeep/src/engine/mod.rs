//! The lifecycle engine: one typed operation per verb (start, stop,
//! force-stop, adopt-and-stop, suspend, delete), shared by every front end. The CLI
//! (`cli/`) parses arguments and prints outcomes; the daemon (`daemon/`)
//! calls the same operations in-process; the service hooks
//! (`autostart::hooks`) are consulted from here. What a verb may do in a
//! status is decided by `Status::start_plan`/`stop_plan`/`has_live_processes`
//! (`instance::status`), in one exhaustive place.
//!
//! Nothing here prints: progress and notes go to a [`Notice`]; failures are
//! an [`EngineError`] whose [`ErrorKind`] front ends turn into exit codes.

pub mod create;
pub mod delete;
pub mod error;
pub mod start;
pub mod stop;
pub mod suspend;

use std::time::{Duration, Instant};

pub use self::error::{EngineError, ErrorKind};
use crate::instance::observe::observe;
use crate::instance::{InstanceDir, Status, status};
pub use crate::notice::Notice;

/// How often a wait on an instance's status looks again.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// The status, from locks, files and the journal.
pub fn status_of(dir: &InstanceDir) -> Result<Status, EngineError> {
    let seen = observe(dir, &crate::autostart::manager::failed_unit)
        .map_err(EngineError::io("inspect", dir.dir()))?;
    Ok(status::derive(&seen))
}

/// The status, as the service hooks observe it.
fn observed_status(dir: &InstanceDir) -> std::io::Result<Status> {
    observe(dir, &crate::autostart::manager::failed_unit).map(|seen| status::derive(&seen))
}

/// Poll the status until `done` says so, or the time is up; returns the
/// last status seen.
pub fn wait_for_status(
    dir: &InstanceDir,
    limit: Duration,
    done: impl Fn(&Status) -> bool,
) -> Result<Status, EngineError> {
    let until = Instant::now() + limit;
    loop {
        let status = status_of(dir)?;
        if done(&status) || Instant::now() >= until {
            return Ok(status);
        }
        std::thread::sleep(STATUS_POLL);
    }
}

/// A status as a user reads it ("Running", "Broken: ...").
pub fn describe(status: &Status) -> String {
    match status {
        Status::Broken(broken) => format!("Broken: {}", broken.message()),
        Status::Paused(reason) => format!("Paused: {}", reason.message()),
        other => other.word().to_string(),
    }
}

/// A runtime for talking to a host agent from synchronous code.
fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::process("start an async runtime"))
}
