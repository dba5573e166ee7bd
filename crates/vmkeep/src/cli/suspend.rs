//! `vmkeep suspend NAME... [--timeout D] [--or-stop]`: arguments and
//! printing; the work is `engine::suspend`.

use super::progress::Lines;
use super::{CliError, ExitCode, SuspendArgs};
use crate::engine::suspend::{SuspendOptions, suspend};
use crate::instance::Home;
use crate::instance::InstanceName;

pub fn run(args: SuspendArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let options = SuspendOptions {
        timeout: args.timeout,
        or_stop: args.or_stop,
        host_shutdown: false,
    };
    let one = |name: &InstanceName| -> Result<(), CliError> {
        let dir = home.existing(name)?;
        let notice = Lines {
            name: name.as_str(),
        };
        let done = suspend(&dir, &options, &notice)?;
        match done.state_bytes {
            Some(bytes) => println!(
                "suspended {name} in {:.0} ms ({} KiB of device state, and the memory its guest touched beside it); \
                 `vmkeep start {name}` resumes it",
                done.took.as_secs_f64() * 1000.0,
                bytes / 1024
            ),
            None => println!("suspended {name}; `vmkeep start {name}` resumes it"),
        }
        Ok(())
    };
    if let [name] = args.names.as_slice() {
        one(name)?;
        return Ok(ExitCode::Success as i32);
    }
    super::util::for_each_in_parallel(&args.names, one)
}
