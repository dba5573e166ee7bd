//! `vmkeep daemon`: run the supervisor of every instance that sets a
//! `runStrategy` (in the foreground, for a service manager).

use super::DaemonArgs;
use crate::daemon::policy::RestartLimits;
use crate::daemon::{self, DaemonOptions};
use crate::home;

pub fn run(args: DaemonArgs) -> anyhow::Result<i32> {
    let options = DaemonOptions {
        root: home::instances_root()?,
        limits: RestartLimits {
            burst: args.start_limit_burst,
            interval: args.start_limit_interval,
            backoff: args.restart_delay,
            backoff_max: args.restart_delay_max,
        },
        tick: std::time::Duration::from_millis(250),
    };
    daemon::run(&options)
}
