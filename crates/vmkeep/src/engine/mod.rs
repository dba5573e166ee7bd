//! The lifecycle engine: one typed operation per verb (create, start, stop,
//! force-stop, adopt-and-stop, restart, suspend, delete, edit, clone,
//! import, inspect, the way into a guest, events, autostart), shared by
//! every front end. The CLI (`cli/`)
//! parses arguments and prints outcomes; the daemon (`daemon/`) calls the
//! same operations in-process, and spawns, stops and suspends agents only
//! through them; the service hooks (`autostart::hooks`) are consulted from
//! here. What a verb may do in a status is decided by
//! `Status::start_plan`/`stop_plan`/`edit_plan`/`restart_plan`/`clone_plan`/
//! `can_exec`/`has_live_processes`
//! (`instance::status`), in one exhaustive place.
//!
//! Nothing here prints: progress and notes go to a [`Notice`]; failures are
//! an [`EngineError`] whose [`ErrorKind`] front ends turn into exit codes.

pub mod agent;
pub mod autostart;
pub mod clone;
pub mod copy;
pub mod create;
pub mod delete;
pub mod edit;
pub mod error;
pub mod events;
pub mod guest;
pub mod import;
pub mod inspect;
pub mod restart;
pub mod shell;
pub mod start;
pub mod stop;
pub mod suspend;
pub mod upgrade;
pub mod upgrade_daemon;
pub mod upgrade_qemu;

use std::time::{Duration, Instant};

pub use self::error::{EngineError, ErrorKind};
use crate::instance::observe;
use crate::instance::status::Observations;
use crate::instance::{Config, InstanceDir, Status, status};
pub use crate::notice::Notice;

/// How often a wait on an instance's status looks again.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// The engine's one observation of an instance: locks, files, the
/// journal's tail and, when the last run failed, the service manager (the
/// model asks; the engine answers). Also the config, when it is valid.
fn observe_with_config(dir: &InstanceDir) -> std::io::Result<(Observations, Option<Config>)> {
    observe::observe_with_config(dir, &crate::autostart::manager::failed_unit)
}

/// The status, from locks, files and the journal.
pub fn status_of(dir: &InstanceDir) -> Result<Status, EngineError> {
    observed_status(dir).map_err(EngineError::io("inspect", dir.dir()))
}

/// The status, as the service hooks observe it.
fn observed_status(dir: &InstanceDir) -> std::io::Result<Status> {
    observe_with_config(dir).map(|(seen, _)| status::derive(&seen))
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
pub fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::process("start an async runtime"))
}
