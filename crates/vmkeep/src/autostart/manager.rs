//! The service manager behind a registration, as one trait: systemd (the
//! system manager, the user's own, or another user's as root) and launchd
//! (a `gui/UID` or `system` domain). The commands themselves are side
//! effects in `os::service_manager`; the transactions and hooks that use
//! this trait (`registration`, `hooks`) are unit-tested with a test double.

use std::path::Path;

use super::error::AutostartError;
use super::record::Record;
use super::{Domain, Manager};
pub use crate::instance::status::UnitFailure;
use crate::os::service_manager::{self as sm, Launchctl, Systemctl, SystemdManager, User};

/// What the service manager says of the service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceState {
    /// It knows the definition.
    pub loaded: bool,
    /// It has a process, or is about to (a pending keep-alive restart counts).
    pub active: bool,
    /// It gave up on it (systemd's failed state).
    pub failed: Option<UnitFailure>,
    /// A line for `autostart status`.
    pub summary: String,
}

/// One registration's service manager.
pub trait ServiceManager {
    /// "systemd (user unit vmkeep-web.service)", for messages.
    fn describe(&self) -> String;
    fn manager(&self) -> Manager;
    /// The unit name or label.
    fn service(&self) -> &str;
    fn state(&self) -> Result<ServiceState, AutostartError>;
    /// Register the written definition (systemd: daemon-reload and enable;
    /// launchd: bootstrap, which starts it).
    fn load(&self, definition: &Path) -> Result<(), AutostartError>;
    /// Unregister it (launchd's bootout also stops a running job by SIGTERM,
    /// so the agent runs its ladder).
    fn unload(&self) -> Result<(), AutostartError>;
    /// After the definition file is gone (systemd: daemon-reload).
    fn forget(&self) -> Result<(), AutostartError>;
    /// Start the service now; a given-up-on unit starts afresh.
    fn start(&self, definition: &Path) -> Result<(), AutostartError>;
    /// Stop it (SIGTERM to the agent); keep-alive does not restart it.
    fn stop(&self) -> Result<(), AutostartError>;
    /// The commands `load` runs, as text (for --dry-run).
    fn load_commands(&self, definition: &Path) -> Vec<String>;
    /// `journalctl` flags for this manager's units ("" or " --user").
    fn journal_flag(&self) -> &'static str;
}

pub struct Systemd {
    systemctl: Systemctl,
    unit: String,
}

impl ServiceManager for Systemd {
    fn describe(&self) -> String {
        let unit = &self.unit;
        match &self.systemctl.manager {
            SystemdManager::System => format!("systemd (system unit {unit})"),
            SystemdManager::User => format!("systemd (user unit {unit})"),
            SystemdManager::UserOf { name, .. } => format!("systemd ({name}'s user unit {unit})"),
        }
    }

    fn manager(&self) -> Manager {
        Manager::Systemd
    }

    fn service(&self) -> &str {
        &self.unit
    }

    fn state(&self) -> Result<ServiceState, AutostartError> {
        let state = self.systemctl.show(&self.unit)?;
        Ok(ServiceState {
            loaded: state.is_loaded(),
            active: state.is_active(),
            failed: state.is_failed().then(|| UnitFailure {
                unit: self.unit.clone(),
                result: state.result.clone(),
                restarts: state.restarts,
                journal_flag: self.systemctl.journal_flag(),
            }),
            summary: format!(
                "{} ({}), {}/{}",
                state.load, state.unit_file, state.active, state.sub
            ),
        })
    }

    fn load(&self, _definition: &Path) -> Result<(), AutostartError> {
        self.systemctl.daemon_reload()?;
        self.systemctl.enable(&self.unit)?;
        Ok(())
    }

    fn unload(&self) -> Result<(), AutostartError> {
        if self.systemctl.show(&self.unit)?.is_loaded() {
            self.systemctl.disable(&self.unit)?;
        }
        Ok(())
    }

    fn forget(&self) -> Result<(), AutostartError> {
        Ok(self.systemctl.daemon_reload()?)
    }

    fn start(&self, _definition: &Path) -> Result<(), AutostartError> {
        if self.systemctl.show(&self.unit)?.is_failed() {
            // Given up on (start limit): a start by hand begins afresh.
            self.systemctl.reset_failed(&self.unit)?;
        }
        // Type=notify: this returns once the guest is ready.
        Ok(self.systemctl.start(&self.unit)?)
    }

    fn stop(&self) -> Result<(), AutostartError> {
        Ok(self.systemctl.stop(&self.unit)?)
    }

    fn load_commands(&self, _definition: &Path) -> Vec<String> {
        let systemctl = self.systemctl.describe_command();
        vec![
            format!("{systemctl} daemon-reload"),
            format!("{systemctl} enable {}", self.unit),
        ]
    }

    fn journal_flag(&self) -> &'static str {
        self.systemctl.journal_flag()
    }
}

pub struct Launchd {
    launchctl: Launchctl,
    label: String,
}

impl ServiceManager for Launchd {
    fn describe(&self) -> String {
        format!("launchd ({}/{})", self.launchctl.domain, self.label)
    }

    fn manager(&self) -> Manager {
        Manager::Launchd
    }

    fn service(&self) -> &str {
        &self.label
    }

    fn state(&self) -> Result<ServiceState, AutostartError> {
        let loaded = self.launchctl.is_loaded(&self.label);
        Ok(ServiceState {
            loaded,
            active: loaded,
            failed: None,
            summary: if loaded { "loaded" } else { "not loaded" }.into(),
        })
    }

    fn load(&self, definition: &Path) -> Result<(), AutostartError> {
        Ok(self.launchctl.bootstrap(definition)?)
    }

    fn unload(&self) -> Result<(), AutostartError> {
        if self.launchctl.is_loaded(&self.label) {
            self.launchctl.bootout(&self.label)?;
        }
        Ok(())
    }

    fn forget(&self) -> Result<(), AutostartError> {
        Ok(())
    }

    fn start(&self, definition: &Path) -> Result<(), AutostartError> {
        if self.launchctl.is_loaded(&self.label) {
            self.launchctl.kickstart(&self.label)?;
        } else {
            self.launchctl.bootstrap(definition)?;
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), AutostartError> {
        Ok(self.launchctl.terminate(&self.label)?)
    }

    fn load_commands(&self, definition: &Path) -> Vec<String> {
        vec![format!(
            "launchctl bootstrap {} {}",
            self.launchctl.domain,
            definition.display()
        )]
    }

    fn journal_flag(&self) -> &'static str {
        ""
    }
}

/// The service manager for a `domain` registration of a VM run by `user`,
/// as seen by `me` (the user running this command).
pub fn for_domain(
    domain: Domain,
    service: &str,
    user: &User,
    me: &User,
) -> Box<dyn ServiceManager> {
    let service = service.to_string();
    let systemd = |manager| -> Box<dyn ServiceManager> {
        Box::new(Systemd {
            systemctl: Systemctl { manager },
            unit: service.clone(),
        })
    };
    let launchd = |domain: String| -> Box<dyn ServiceManager> {
        Box::new(Launchd {
            launchctl: Launchctl { domain },
            label: service.clone(),
        })
    };
    match domain {
        Domain::SystemdSystem => systemd(SystemdManager::System),
        Domain::SystemdUser if user.uid == me.uid => systemd(SystemdManager::User),
        Domain::SystemdUser => systemd(SystemdManager::UserOf {
            name: user.name.clone(),
            uid: user.uid,
        }),
        Domain::LaunchAgent => launchd(format!("gui/{}", user.uid)),
        Domain::LaunchDaemon => launchd("system".into()),
    }
}

/// The service manager of a recorded registration, if it runs here and
/// this user may talk to it.
pub fn for_record(record: &Record) -> Option<Box<dyn ServiceManager>> {
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
    Some(for_domain(domain, &record.service, &user, &me))
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

/// Whether systemd gave up on the unit that runs this instance (asked only
/// of a registered instance; one `systemctl show`).
pub fn failed_unit(dir: &crate::instance::InstanceDir) -> Option<UnitFailure> {
    let record = super::record::load(dir).ok().flatten()?;
    for_record(&record)?.state().ok()?.failed
}

#[cfg(test)]
pub(crate) mod fake {
    //! A service manager that records what it is asked and answers from a
    //! script, for the transactions' and hooks' unit tests.

    use std::cell::RefCell;
    use std::path::Path;

    use super::*;

    #[derive(Default)]
    pub struct FakeManager {
        pub calls: RefCell<Vec<String>>,
        pub state: RefCell<ServiceState>,
        /// The call that fails, if any (by name: "load", "start", ...).
        pub failing: RefCell<Option<&'static str>>,
    }

    impl FakeManager {
        fn call(&self, name: &'static str) -> Result<(), AutostartError> {
            self.calls.borrow_mut().push(name.to_string());
            if *self.failing.borrow() == Some(name) {
                return Err(AutostartError::Tool(crate::os::tool::ToolError::Failed {
                    command: format!("fake {name}"),
                    status: "exit status: 1".into(),
                    stderr: "refused".into(),
                }));
            }
            Ok(())
        }
    }

    impl ServiceManager for FakeManager {
        fn describe(&self) -> String {
            "fake (unit vmkeep-dev.service)".into()
        }
        fn manager(&self) -> Manager {
            Manager::Systemd
        }
        fn service(&self) -> &str {
            "vmkeep-dev.service"
        }
        fn state(&self) -> Result<ServiceState, AutostartError> {
            self.call("state")?;
            Ok(self.state.borrow().clone())
        }
        fn load(&self, _: &Path) -> Result<(), AutostartError> {
            self.call("load")
        }
        fn unload(&self) -> Result<(), AutostartError> {
            self.call("unload")
        }
        fn forget(&self) -> Result<(), AutostartError> {
            self.call("forget")
        }
        fn start(&self, _: &Path) -> Result<(), AutostartError> {
            self.call("start")
        }
        fn stop(&self) -> Result<(), AutostartError> {
            self.call("stop")
        }
        fn load_commands(&self, _: &Path) -> Vec<String> {
            vec!["fake load".into()]
        }
        fn journal_flag(&self) -> &'static str {
            ""
        }
    }
}
