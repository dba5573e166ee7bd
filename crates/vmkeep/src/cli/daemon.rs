//! `vmkeep daemon`: run the supervisor of every instance that sets a
//! `runStrategy` (in the foreground, for a service manager), or
//! `vmkeep daemon install [--dry-run]` its systemd user unit: arguments and
//! printing; the work is `daemon` and `daemon::install`.

use std::time::Duration;

use super::{CliError, DaemonAction, DaemonArgs};
use crate::daemon::install::{self, Install};
use crate::daemon::policy::RestartLimits;
use crate::daemon::unit::UNIT_NAME;
use crate::daemon::{self, DaemonOptions};
use crate::instance::Home;

pub fn run(args: DaemonArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    match args.action {
        Some(DaemonAction::Install { dry_run }) => {
            let plan = install::plan(&home)?;
            match dry_run {
                true => print_plan(&plan),
                false => {
                    install::install(&plan)?;
                    println!(
                        "installed and started {} ({})",
                        UNIT_NAME,
                        plan.path.display()
                    );
                }
            }
            Ok(0)
        }
        None => {
            let options = DaemonOptions {
                home,
                limits: RestartLimits {
                    burst: args.start_limit_burst,
                    interval: args.start_limit_interval,
                    backoff: args.restart_delay,
                    backoff_max: args.restart_delay_max,
                },
                tick: Duration::from_millis(250),
                inherited_lock: args.inherited_lock,
                generation: args.generation,
            };
            Ok(daemon::run(&options)?)
        }
    }
}

fn print_plan(plan: &Install) {
    println!("# would write {}:", plan.path.display());
    print!("{}", plan.text);
    println!("# then: systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}");
}
