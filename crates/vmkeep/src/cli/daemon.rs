//! `vmkeep daemon`: run the supervisor of every instance that sets a
//! `runStrategy` (in the foreground, for a service manager), or
//! `vmkeep daemon install [--dry-run]` its systemd user unit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{DaemonAction, DaemonArgs};
use crate::daemon::policy::RestartLimits;
use crate::daemon::unit::{self, DaemonUnit, UNIT_NAME};
use crate::daemon::{self, DaemonOptions};
use crate::instance::home;
use crate::instance::{Config, InstanceDir};
use crate::os::service_manager as sm;

pub fn run(args: DaemonArgs) -> anyhow::Result<i32> {
    match args.action {
        Some(DaemonAction::Install { dry_run }) => install(dry_run),
        None => {
            let options = DaemonOptions {
                root: home::instances_root()?,
                limits: RestartLimits {
                    burst: args.start_limit_burst,
                    interval: args.start_limit_interval,
                    backoff: args.restart_delay,
                    backoff_max: args.restart_delay_max,
                },
                tick: Duration::from_millis(250),
            };
            daemon::run(&options)
        }
    }
}

fn install(dry_run: bool) -> anyhow::Result<i32> {
    let root = home::instances_root()?;
    let unit = DaemonUnit {
        exe: std::fs::canonicalize(crate::os::process::current_exe()?)
            .context("cannot resolve the path of the vmkeep binary")?,
        instances_root: root.clone(),
        cache_root: home::cache_root()?,
        qemu_dir: sm::find_in_path("qemu-system-x86_64"),
        longest_stop_timeout: longest_stop_timeout(&root),
    };
    let text = unit::render(&unit);
    let home_dir = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set; set it to your home directory")?;
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let dir = crate::autostart::definition_dir(
        crate::autostart::Domain::SystemdUser,
        &home_dir,
        xdg.as_deref(),
    );
    let path = dir.join(UNIT_NAME);
    if dry_run {
        println!("# would write {}:", path.display());
        print!("{text}");
        println!(
            "# then: systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
        );
        return Ok(0);
    }
    if !sm::systemd_running() {
        bail!(
            "systemd is not running here (no /run/systemd/system), so there is nothing to install into; \
             `vmkeep daemon install --dry-run` prints the unit, or run `vmkeep daemon` under your own supervisor"
        );
    }
    sm::write_definition(&path, &text, None)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let systemctl = sm::Systemctl::user();
    systemctl.daemon_reload()?;
    systemctl.enable(UNIT_NAME)?;
    systemctl.start(UNIT_NAME)?;
    println!("installed and started {} ({})", UNIT_NAME, path.display());
    Ok(0)
}

/// The longest a host shutdown may wait for a supervised instance (the
/// default stop timeout if none).
fn longest_stop_timeout(root: &std::path::Path) -> Duration {
    let mut longest = crate::timeouts::DEFAULT_STOP_TIMEOUT;
    for name in crate::instance::layout::instance_names(root) {
        if let Ok(dir) = InstanceDir::new(root, name)
            && let Ok(config) = Config::load(&dir.config())
            && config.run_strategy.is_some()
        {
            longest = longest.max(config.host_shutdown_deadline());
        }
    }
    longest
}
