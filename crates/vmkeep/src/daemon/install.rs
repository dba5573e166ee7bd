//! `vmkeep daemon install`: the daemon's systemd user unit, rendered for
//! this home (`unit`), written and started.

use std::path::PathBuf;
use std::time::Duration;

use super::error::DaemonError;
use super::unit::{self, DaemonUnit, UNIT_NAME};
use crate::engine::EngineError;
use crate::instance::{Config, Home, home};
use crate::os::service_manager as sm;

/// The unit and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Install {
    pub path: PathBuf,
    pub text: String,
}

/// What `install` would write, for the home `home`.
pub fn plan(home: &Home) -> Result<Install, DaemonError> {
    let exe = crate::os::process::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(EngineError::process(
            "cannot resolve the path of the vmkeep binary",
        ))?;
    let unit = DaemonUnit {
        exe,
        instances_root: home.root.clone(),
        cache_root: home::cache_root().map_err(EngineError::from)?,
        qemu_dir: sm::find_in_path("qemu-system-x86_64"),
        qemu: crate::driver::qemu::binary::override_path(),
        longest_stop_timeout: longest_stop_timeout(home),
    };
    let home_dir = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or(DaemonError::NoHome)?;
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let dir = crate::autostart::definition_dir(
        crate::autostart::Domain::SystemdUser,
        &home_dir,
        xdg.as_deref(),
    );
    Ok(Install {
        path: dir.join(UNIT_NAME),
        text: unit::render(&unit),
    })
}

/// Write the unit, and have the user's systemd load, enable and start it.
pub fn install(plan: &Install) -> Result<(), DaemonError> {
    if !sm::systemd_running() {
        return Err(DaemonError::NoSystemd);
    }
    sm::write_definition(&plan.path, &plan.text, None)
        .map_err(EngineError::io("write", &plan.path))?;
    let systemctl = sm::Systemctl::user();
    systemctl.daemon_reload()?;
    systemctl.enable(UNIT_NAME)?;
    systemctl.start(UNIT_NAME)?;
    Ok(())
}

/// The longest a host shutdown may wait for a supervised instance (the
/// default stop timeout if none).
fn longest_stop_timeout(home: &Home) -> Duration {
    let mut longest = crate::timeouts::DEFAULT_STOP_TIMEOUT;
    for name in home.instance_names() {
        if let Ok(dir) = home.layout_any(&name)
            && let Ok(config) = Config::load(&dir.config())
            && config.run_strategy.is_some()
        {
            longest = longest.max(config.host_shutdown_deadline());
        }
    }
    longest
}
