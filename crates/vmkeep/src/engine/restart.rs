//! `restart`: the stop ladder, then a start, in one operation (what
//! `Status::restart_plan` says for the status): a fresh boot, through the
//! service manager when it runs the instance (a `systemctl stop` and then a
//! `start` of its unit: a clean stop, never a failure systemd would count).
//! An instance that could not start again (its config invalid, halted, a
//! disk smaller than `disk:` asks) is refused before it is stopped.

use std::time::Duration;

use super::start::{self, StartOptions, StartOutcome};
use super::stop::{self, StopOptions, Stopped};
use super::{EngineError, Notice, status_of};
use crate::instance::status::RestartPlan;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status};

#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// End the VM at once rather than by its ladder.
    pub force: bool,
    /// The ladder's deadline (the instance's `stopTimeout` when `None`).
    pub timeout: Option<Duration>,
}

/// How a restart went: the stop (none when nothing ran), then the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Restarted {
    pub stopped: Option<Stopped>,
    pub started: StartOutcome,
}

/// Restart instance `name` of `home`.
pub fn restart(
    home: &Home,
    name: &InstanceName,
    options: &RestartOptions,
    notice: &dyn Notice,
) -> Result<Restarted, EngineError> {
    restart_dir(&home.existing(name)?, options, notice)
}

/// Restart the instance in `dir`.
pub fn restart_dir(
    dir: &InstanceDir,
    options: &RestartOptions,
    notice: &dyn Notice,
) -> Result<Restarted, EngineError> {
    let name = dir.name();
    let status = status_of(dir)?;
    let plan = status.restart_plan();
    if plan == RestartPlan::Refuse {
        let Status::Broken(broken) = status else {
            unreachable!("only a broken instance is refused a restart")
        };
        return Err(EngineError::Broken {
            name: name.clone(),
            broken,
        });
    }
    // Whatever would refuse the start refuses the restart, before the stop.
    let config = Config::load(&dir.config())?;
    start::check_startable(dir, &config)?;
    let stopped = match plan {
        RestartPlan::StopThenStart => Some(stop::stop(
            dir,
            &StopOptions {
                timeout: options.timeout,
                force: options.force,
                through_service_manager: true,
            },
            notice,
        )?),
        RestartPlan::Start | RestartPlan::Refuse => None,
    };
    let home = Home::at(dir.dir().parent().unwrap_or(dir.dir()));
    let started = start::start(
        &home,
        name,
        &StartOptions {
            through_service_manager: true,
            ..StartOptions::default()
        },
        notice,
    )?;
    Ok(Restarted { stopped, started })
}
