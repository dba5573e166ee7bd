//! `vmkeep stop [NAME...] [--force] [--timeout D]`: arguments and printing;
//! the work is `engine::stop`.

use super::progress::Lines;
use super::{CliError, ExitCode, StopArgs};
use crate::engine::stop::{StopOptions, Stopped, stop};
use crate::instance::Home;
use crate::instance::InstanceName;

pub fn run(args: StopArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let mut names = args.names.clone();
    if names.is_empty() {
        names.push(InstanceName::default_instance());
    }
    let options = StopOptions {
        timeout: args.timeout,
        force: args.force,
        through_service_manager: true,
    };
    let one = |name: &InstanceName| -> Result<(), CliError> {
        let dir = home.existing(name)?;
        let notice = Lines {
            name: name.as_str(),
        };
        let stopped = stop(&dir, &options, &notice)?;
        println!("{}", summary(dir.name(), &stopped));
        Ok(())
    };
    if let [name] = names.as_slice() {
        one(name)?;
        return Ok(ExitCode::Success as i32);
    }
    super::util::for_each_in_parallel(&names, one)
}

/// One line saying how the stop went.
pub fn summary(name: &InstanceName, stopped: &Stopped) -> String {
    match stopped {
        Stopped::WasNotRunning => format!("{name} is not running"),
        Stopped::RemovedStaleFiles { files } => format!(
            "{name} was not running; removed stale runtime files: {}",
            files.join(", ")
        ),
        Stopped::Stopped { how, took } => format!(
            "stopped {name} in {:.1}s ({})",
            took.as_secs_f64(),
            how.words()
        ),
    }
}
