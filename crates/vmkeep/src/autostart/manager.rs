//! The service manager behind a registration: which `systemctl` (system,
//! the user's own, another user's as root) or `launchctl` domain to ask.
//! The commands themselves are side effects in `os::service_manager`.

use std::path::Path;

use super::record::Record;
use super::{Domain, Manager};
use crate::os::service_manager::{self as sm, Launchctl, Systemctl, SystemdManager, User};

/// The service manager's commands for a registration.
pub enum Handle {
    Systemd(Systemctl, String),
    Launchd(Launchctl, String),
}

impl Handle {
    /// The handle for a `domain` registration of a VM run by `user`, as seen
    /// by `me` (the user running this command).
    pub fn new(domain: Domain, service: &str, user: &User, me: &User) -> Handle {
        let service = service.to_string();
        match domain {
            Domain::SystemdSystem => Handle::Systemd(Systemctl::system(), service),
            Domain::SystemdUser if user.uid == me.uid => {
                Handle::Systemd(Systemctl::user(), service)
            }
            Domain::SystemdUser => Handle::Systemd(
                Systemctl {
                    manager: SystemdManager::UserOf {
                        name: user.name.clone(),
                        uid: user.uid,
                    },
                },
                service,
            ),
            Domain::LaunchAgent => Handle::Launchd(
                Launchctl {
                    domain: format!("gui/{}", user.uid),
                },
                service,
            ),
            Domain::LaunchDaemon => Handle::Launchd(
                Launchctl {
                    domain: "system".into(),
                },
                service,
            ),
        }
    }

    /// The handle for a recorded registration, if its service manager runs
    /// and this user may talk to it.
    pub fn of(record: &Record) -> Option<Handle> {
        if !running(record.manager) {
            return None;
        }
        let me = sm::current_user().ok()?;
        let user = if record.user == me.name {
            me.clone()
        } else {
            sm::user_by_name(&record.user).ok().flatten()?
        };
        let domain = record.domain();
        // Another user's own manager is reachable only for root.
        if domain == Domain::SystemdUser && user.uid != me.uid && me.uid != 0 {
            return None;
        }
        Some(Handle::new(domain, &record.service, &user, &me))
    }

    /// The commands `enable` runs, as text (for --dry-run).
    pub fn enable_commands(&self, path: &Path) -> Vec<String> {
        match self {
            Handle::Systemd(s, unit) => {
                let systemctl = s.describe_command();
                vec![
                    format!("{systemctl} daemon-reload"),
                    format!("{systemctl} enable {unit}"),
                ]
            }
            Handle::Launchd(l, _) => {
                vec![format!(
                    "launchctl bootstrap {} {}",
                    l.domain,
                    path.display()
                )]
            }
        }
    }

    pub fn load(&self, path: &Path) -> anyhow::Result<()> {
        match self {
            Handle::Systemd(s, unit) => {
                s.daemon_reload()?;
                s.enable(unit)?;
            }
            Handle::Launchd(l, _) => l.bootstrap(path)?,
        }
        Ok(())
    }

    pub fn unload(&self) -> anyhow::Result<()> {
        match self {
            Handle::Systemd(s, unit) => {
                if s.show(unit)?.is_loaded() {
                    s.disable(unit)?;
                }
            }
            // bootout also stops a running job: SIGTERM, so the host agent
            // runs the stop ladder (see docs/autostart.md).
            Handle::Launchd(l, label) => {
                if l.is_loaded(label) {
                    l.bootout(label)?;
                }
            }
        }
        Ok(())
    }

    pub fn after_removal(&self) -> anyhow::Result<()> {
        if let Handle::Systemd(s, _) = self {
            s.daemon_reload()?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            Handle::Systemd(s, unit) => match &s.manager {
                SystemdManager::System => format!("systemd (system unit {unit})"),
                SystemdManager::User => format!("systemd (user unit {unit})"),
                SystemdManager::UserOf { name, .. } => {
                    format!("systemd ({name}'s user unit {unit})")
                }
            },
            Handle::Launchd(l, label) => format!("launchd ({}/{label})", l.domain),
        }
    }
}

/// Whether `manager` runs here.
pub fn running(manager: Manager) -> bool {
    match manager {
        Manager::Systemd => sm::systemd_running(),
        Manager::Launchd => sm::launchd_running(),
    }
}

/// Why `manager` cannot be asked here.
pub fn not_running_reason(manager: Manager) -> String {
    match manager {
        Manager::Systemd => format!(
            "systemd is not running as the init system here (there is no {})",
            sm::SYSTEMD_RUNTIME_DIR
        ),
        Manager::Launchd => "launchd is only on macOS".into(),
    }
}

/// A registered systemd unit that systemd gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFailure {
    pub unit: String,
    /// systemd's `Result` of the last run (`exit-code`, `signal`, ...).
    pub result: String,
    /// How often keep-alive restarted it before giving up.
    pub restarts: u32,
    /// `journalctl` flags naming the manager (`--user`, or nothing).
    pub journal_flag: &'static str,
}

/// Whether systemd gave up on the unit that runs this instance (asked only
/// of a registered instance; one `systemctl show`).
pub fn failed_unit(dir: &crate::instance::InstanceDir) -> Option<UnitFailure> {
    let record = super::record::load(dir).ok().flatten()?;
    match Handle::of(&record)? {
        Handle::Systemd(systemctl, unit) => {
            let state = systemctl.show(&unit).ok()?;
            state.is_failed().then(|| UnitFailure {
                unit,
                result: state.result,
                restarts: state.restarts,
                journal_flag: systemctl.journal_flag(),
            })
        }
        Handle::Launchd(..) => None,
    }
}
