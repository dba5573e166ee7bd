//! `vmkeep restart [NAME...] [--force] [--timeout D]`: arguments and
//! printing; the work is `engine::restart`.

use super::progress::Lines;
use super::{CliError, ExitCode, RestartArgs};
use crate::engine::restart::{RestartOptions, Restarted, restart};
use crate::instance::{Home, InstanceName};

pub fn run(args: RestartArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let mut names = args.names.clone();
    if names.is_empty() {
        names.push(InstanceName::default_instance());
    }
    let options = RestartOptions {
        force: args.force,
        timeout: args.timeout,
    };
    let one = |name: &InstanceName| -> Result<(), CliError> {
        let notice = Lines {
            name: name.as_str(),
        };
        let restarted = restart(&home, name, &options, &notice)?;
        print_restarted(&home, name, &restarted)
    };
    if let [name] = names.as_slice() {
        one(name)?;
        return Ok(ExitCode::Success as i32);
    }
    super::util::for_each_in_parallel(&names, one)
}

/// What a restart did: the stop's line, then the start's.
pub fn print_restarted(
    home: &Home,
    name: &InstanceName,
    restarted: &Restarted,
) -> Result<(), CliError> {
    match &restarted.stopped {
        Some(stopped) => println!("{}", super::stop::summary(name, stopped)),
        None => println!("{name} was not running"),
    }
    super::start::print_outcome(home, name, restarted.started.clone()).map(drop)
}
