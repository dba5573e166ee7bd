//! Registering an instance with its service manager and taking it back:
//! the plan (which user, which domain, which file), `enable` as a
//! transaction (nothing changed when the manager refuses), `disable`, and
//! the unregistration that `delete` does first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::AutostartError;
use super::manager::{self, ServiceManager};
use super::record::{self, Record};
use super::{Condition, Domain, Inputs, Manager, Options, ServiceSpec};
use crate::instance::config::OnHostShutdown;
use crate::instance::home;
use crate::instance::{Config, InstanceDir, InstanceName};
use crate::notice::Notice;
use crate::os::service_manager::{self as sm, Systemctl, User};
use crate::timeouts;

/// What `enable` would write, where, for whom.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: InstanceDir,
    pub options: Options,
    pub manager: Manager,
    pub domain: Domain,
    /// The user the VM runs as.
    pub user: User,
    /// The user running this command (root under sudo).
    pub me: User,
    /// Unit name (with `.service`) or launchd label.
    pub service: String,
    pub path: PathBuf,
    pub text: String,
    /// The service manager's stop timeout for the unit.
    pub stop_timeout: Duration,
}

impl Plan {
    /// Root writing into another user's home: files must become theirs.
    pub fn owner(&self) -> Option<&User> {
        (!self.domain.is_system() && self.user.uid != self.me.uid).then_some(&self.user)
    }

    /// Whether enabling needs the user's manager to run from boot and it
    /// does not yet.
    pub fn needs_linger(&self) -> bool {
        self.domain.needs_linger(self.options.condition) && !sm::is_lingering(&self.user.name)
    }

    pub fn service_manager(&self) -> Box<dyn ServiceManager> {
        manager::for_domain(self.domain, &self.service, &self.user, &self.me)
    }
}

/// The user a registration runs as: `--user` (boot only), else under sudo
/// for a boot service the user who ran sudo, else the caller. Pure.
pub fn choose_user(
    me: &User,
    requested: Option<User>,
    requested_name: Option<&str>,
    condition: Condition,
    sudo_user: Option<User>,
) -> Result<User, AutostartError> {
    match (requested_name, condition) {
        (Some(name), Condition::Login) if name != me.name => {
            return Err(AutostartError::UserForLogin {
                me: me.name.clone(),
            });
        }
        (Some(name), _) => {
            return requested.ok_or_else(|| AutostartError::NoSuchUser(name.to_string()));
        }
        _ => {}
    }
    Ok(match (condition, sudo_user) {
        (Condition::Boot, Some(sudo)) if me.uid == 0 => sudo,
        _ => me.clone(),
    })
}

/// Plan the registration of `name` for `manager`.
pub fn plan(
    name: &InstanceName,
    options: Options,
    requested_user: Option<&str>,
    manager: Manager,
    notice: &dyn Notice,
) -> Result<Plan, AutostartError> {
    let me = sm::current_user().map_err(AutostartError::io(
        "look up the current user",
        "/etc/passwd",
    ))?;
    let lookup = |user: &str| {
        sm::user_by_name(user).map_err(AutostartError::io("look up a user in", "/etc/passwd"))
    };
    let requested = requested_user.map(lookup).transpose()?.flatten();
    let sudo_user = match std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()) {
        Some(user) => lookup(&user)?,
        None => None,
    };
    let user = choose_user(&me, requested, requested_user, options.condition, sudo_user)?;
    let other_user = user.uid != me.uid;
    // Under sudo, the instance and the cache are the invoking user's, unless
    // the environment names them.
    let instances_root = match std::env::var_os(home::HOME_ENV) {
        None if other_user => user.home.join(".vmkeep"),
        _ => home::instances_root()?,
    };
    let cache_root = match std::env::var_os(home::CACHE_ENV) {
        None if other_user => user.home.join(".cache/vmkeep"),
        _ => home::cache_root()?,
    };
    let dir = InstanceDir::new(&instances_root, name.clone())?;
    if !dir.dir().is_dir() {
        return Err(AutostartError::NoInstance {
            name: name.to_string(),
            root: instances_root,
        });
    }
    let config = Config::load(&dir.config())?;
    if manager == Manager::Launchd && config.on_host_shutdown == OnHostShutdown::Suspend {
        return Err(AutostartError::SuspendUnderLaunchd {
            name: name.to_string(),
            config: dir.config(),
        });
    }
    let exe = crate::os::process::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(AutostartError::io(
            "resolve the path of",
            "the vmkeep binary",
        ))?;
    let qemu = config.arch.qemu_binary();
    let qemu_dir = sm::find_in_path(qemu);
    if qemu_dir.is_none() {
        notice.warn(&format!(
            "{qemu} is not in PATH; the service will look in the system directories only"
        ));
    }
    let inputs = Inputs {
        instance: dir.clone(),
        instances_root,
        cache_root,
        exe,
        qemu_dir,
        qemu: crate::driver::qemu::binary::override_path(),
        user: user.name.clone(),
        stop_timeout: config.host_shutdown_deadline(),
        boot_timeout: config.boot_timeout.0,
    };
    let spec = ServiceSpec::new(&inputs, options, manager)?;
    let domain = spec.domain;
    // Per-user definitions go to the home of the user the VM runs as.
    let (home_dir, xdg) = if other_user {
        (user.home.clone(), None)
    } else {
        (
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| me.home.clone()),
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        )
    };
    let def_dir = super::definition_dir(domain, &home_dir, xdg.as_deref());
    let file = super::file_name(domain, &user.name, name.as_str());
    let mut service = super::service_name(domain, &user.name, name.as_str());
    if manager == Manager::Systemd {
        service.push_str(".service");
    }
    Ok(Plan {
        dir,
        options,
        manager,
        domain,
        service,
        path: def_dir.join(file),
        text: super::render(manager, &spec),
        stop_timeout: spec.stop_timeout,
        user,
        me,
    })
}

/// What `enable` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    /// An earlier definition of vmkeep's was replaced.
    pub replaced: bool,
    /// The service manager registered it (not `--write-only`).
    pub loaded: bool,
    /// Lingering was switched on for the user.
    pub lingering: bool,
    /// A drop-in lengthening the user manager's stop timeout was written.
    pub drop_in: Option<PathBuf>,
}

/// The definition at the plan's path, if one is there; refuses one that is
/// not vmkeep's definition for this instance.
fn existing_definition(plan: &Plan) -> Result<Option<String>, AutostartError> {
    match std::fs::read_to_string(&plan.path) {
        Ok(old) if super::managed_marker(&old) != super::managed_marker(&plan.text) => {
            Err(AutostartError::NotOurs {
                path: plan.path.clone(),
                found: super::managed_marker(&old)
                    .map(|m| format!("it is for {m}"))
                    .unwrap_or_else(|| "it has no `managed by vmkeep` line".into()),
            })
        }
        Ok(old) => Ok(Some(old)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AutostartError::io("read", &plan.path)(e)),
    }
}

/// Everything `enable` checks before it changes anything. Returns the
/// definition it would replace.
pub fn check(plan: &Plan, write_only: bool) -> Result<Option<String>, AutostartError> {
    let name = plan.dir.name().to_string();
    if let Some(existing) =
        record::load(&plan.dir).map_err(AutostartError::io("read", record::path(&plan.dir)))?
        && existing.path != plan.path
    {
        return Err(AutostartError::AlreadyRegistered {
            name,
            condition: existing.condition,
            path: existing.path,
        });
    }
    let replacing = existing_definition(plan)?;
    if !write_only && !manager::running(plan.manager) {
        return Err(AutostartError::ManagerNotRunning {
            reason: manager::not_running_reason(plan.manager),
            service: plan.service.clone(),
            name,
        });
    }
    let def_dir = plan.path.parent().unwrap_or(Path::new("/"));
    if !sm::may_write_in(def_dir) {
        let sudo = match std::env::var_os(home::HOME_ENV) {
            Some(_) => format!(
                "sudo {}={} vmkeep",
                home::HOME_ENV,
                home::instances_root()?.display()
            ),
            None => "sudo vmkeep".into(),
        };
        return Err(AutostartError::NeedsRoot {
            dir: def_dir.to_path_buf(),
            condition: plan.options.condition,
            sudo,
            name,
            user: plan.user.name.clone(),
        });
    }
    if !write_only && plan.needs_linger() && plan.me.uid != 0 {
        return Err(AutostartError::LingerNeedsRoot {
            name,
            user: plan.user.name.clone(),
        });
    }
    Ok(replacing)
}

/// Check, then write the definition, register it and record it; when the
/// service manager refuses it, put back what was there and record nothing.
pub fn enable(
    plan: &Plan,
    service: &dyn ServiceManager,
    write_only: bool,
    notice: &dyn Notice,
) -> Result<Enabled, AutostartError> {
    let replacing = check(plan, write_only)?;
    apply(plan, service, replacing, write_only, notice)
}

/// The transaction of [`enable`], once [`check`] passed.
fn apply(
    plan: &Plan,
    service: &dyn ServiceManager,
    replacing: Option<String>,
    write_only: bool,
    notice: &dyn Notice,
) -> Result<Enabled, AutostartError> {
    let mut enabled = Enabled {
        replaced: replacing.is_some(),
        loaded: !write_only,
        lingering: false,
        drop_in: None,
    };
    if !write_only && plan.needs_linger() {
        sm::enable_linger(&plan.user.name)?;
        enabled.lingering = true;
    }
    if !write_only && plan.domain == Domain::SystemdUser {
        if plan.user.uid != plan.me.uid {
            // `systemctl --user` as that user needs their manager up.
            sm::start_user_manager(plan.user.uid)?;
        }
        enabled.drop_in = allow_user_manager_stop(plan, notice)?;
    }
    sm::write_definition(&plan.path, &plan.text, plan.owner())
        .map_err(AutostartError::io("write", &plan.path))?;
    if !write_only && let Err(e) = service.load(&plan.path) {
        // Leave things as they were.
        let _ = match &replacing {
            Some(old) => sm::write_definition(&plan.path, old, plan.owner()),
            None => sm::remove_definition(&plan.path).map(drop),
        };
        let source = match e {
            AutostartError::Tool(tool) => tool,
            other => return Err(other),
        };
        return Err(AutostartError::Rejected {
            manager: plan.manager,
            path: plan.path.clone(),
            source,
        });
    }
    let record = Record {
        domain: Some(plan.domain),
        manager: plan.manager,
        condition: plan.options.condition,
        keep_alive: plan.options.keep_alive,
        service: plan.service.clone(),
        path: plan.path.clone(),
        user: plan.user.name.clone(),
        loaded: !write_only,
        enabled_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    record::save(&plan.dir, &record)
        .map_err(AutostartError::io("write", record::path(&plan.dir)))?;
    Ok(enabled)
}

/// At a host shutdown (or the user's last logout) the system manager stops
/// the user's manager, and kills it after that unit's `TimeoutStopSec` (120 s
/// as Debian ships it): the VM's unit must be done well before. When it
/// would not be, root lengthens it with a drop-in; others are told how.
fn allow_user_manager_stop(
    plan: &Plan,
    notice: &dyn Notice,
) -> Result<Option<PathBuf>, AutostartError> {
    let needed = plan.stop_timeout + timeouts::STOP_MARGIN;
    let granted = sm::user_manager_stop_timeout(plan.user.uid)?;
    if granted.is_none_or(|granted| granted >= needed) {
        return Ok(None);
    }
    let drop_in = sm::user_manager_drop_in(plan.user.uid);
    let text = format!(
        "# managed by vmkeep: {}'s VMs need {}s to stop at a host shutdown\n[Service]\nTimeoutStopSec={}s\n",
        plan.user.name,
        needed.as_secs(),
        needed.as_secs()
    );
    if plan.me.uid != 0 {
        notice.warn(&format!(
            "at a host shutdown systemd gives {}'s manager {}, less than the {}s this VM's stop may take; \
             as root, write {} with:\n{text}and run `systemctl daemon-reload`",
            plan.user.name,
            granted
                .map(|g| format!("{}s", g.as_secs()))
                .unwrap_or_default(),
            needed.as_secs(),
            drop_in.display()
        ));
        return Ok(None);
    }
    sm::write_definition(&drop_in, &text, None).map_err(AutostartError::io("write", &drop_in))?;
    Systemctl::system().daemon_reload()?;
    Ok(Some(drop_in))
}

/// A registration taken back, and its service manager if it runs here.
pub type Disabled = (Record, Option<Box<dyn ServiceManager>>);

/// Unregister and remove the definition and the record. Refuses (changing
/// nothing) when the definition lacks vmkeep's marker or cannot be removed.
pub fn disable(dir: &InstanceDir, notice: &dyn Notice) -> Result<Option<Disabled>, AutostartError> {
    let Some(record) = record::load(dir).map_err(AutostartError::io("read", record::path(dir)))?
    else {
        return Ok(None);
    };
    match std::fs::read_to_string(&record.path) {
        Ok(text) if super::managed_marker(&text).is_none() => {
            return Err(AutostartError::NotOursToRemove {
                path: record.path.clone(),
                name: dir.name().to_string(),
            });
        }
        Ok(_) => {
            let parent = record.path.parent().unwrap_or(Path::new("/"));
            if !sm::may_write_in(parent) {
                return Err(AutostartError::RemovalNeedsRoot {
                    path: record.path.clone(),
                    dir: parent.to_path_buf(),
                    name: dir.name().to_string(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AutostartError::io("read", &record.path)(e)),
    }
    let service = manager::for_record(&record);
    match &service {
        Some(service) => service.unload()?,
        None if record.loaded => notice.step(&format!(
            "note: {}; removing the definition only",
            manager::not_running_reason(record.manager)
        )),
        None => {}
    }
    sm::remove_definition(&record.path).map_err(AutostartError::io("remove", &record.path))?;
    if let Some(service) = &service {
        service.forget()?;
    }
    record::remove(dir).map_err(AutostartError::io("remove", record::path(dir)))?;
    Ok(Some((record, service)))
}

/// What `delete` must still do once the VM is gone.
pub struct Unregistered(Option<Box<dyn ServiceManager>>);

impl Unregistered {
    /// Cancel a keep-alive restart scheduled when a forced stop killed the agent.
    pub fn settle(self) {
        if let Some(service) = self.0
            && service.state().is_ok_and(|s| s.active)
        {
            let _ = service.stop();
        }
    }
}

/// `delete` unregisters first, so that no service manager starts the
/// instance while (or after) it is deleted.
pub fn unregister_for_delete(
    dir: &InstanceDir,
    notice: &dyn Notice,
) -> Result<Unregistered, AutostartError> {
    if let Err(e) = record::load(dir) {
        // The record is unreadable: nothing says where a definition is.
        notice.warn(&format!(
            "{e}; if a service definition for {} exists, remove it by hand",
            dir.name()
        ));
        return Ok(Unregistered(None));
    }
    match disable(dir, notice)? {
        Some((record, service)) => {
            notice.step(&format!(
                "removed {} (autostart of {})",
                record.path.display(),
                dir.name()
            ));
            Ok(Unregistered(service))
        }
        None => Ok(Unregistered(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::manager::fake::FakeManager;
    use super::*;
    use crate::notice::Silent;

    fn user(name: &str, uid: u32) -> User {
        User {
            name: name.into(),
            uid,
            gid: uid,
            home: format!("/home/{name}").into(),
        }
    }

    #[test]
    fn the_user_is_the_caller_or_for_a_boot_service_under_sudo_the_sudoer() {
        let ann = user("ann", 1000);
        let root = user("root", 0);
        let bob = user("bob", 1001);
        let pick = |me: &User,
                    requested: Option<&User>,
                    name: Option<&str>,
                    condition,
                    sudo: Option<&User>| {
            choose_user(me, requested.cloned(), name, condition, sudo.cloned())
        };
        assert_eq!(pick(&ann, None, None, Condition::Login, None).unwrap(), ann);
        assert_eq!(pick(&ann, None, None, Condition::Boot, None).unwrap(), ann);
        assert_eq!(
            pick(&root, None, None, Condition::Boot, Some(&ann)).unwrap(),
            ann
        );
        assert_eq!(
            pick(&root, None, None, Condition::Login, Some(&ann)).unwrap(),
            root
        );
        assert_eq!(
            pick(&root, None, None, Condition::Boot, None).unwrap(),
            root
        );
        assert_eq!(
            pick(&root, Some(&bob), Some("bob"), Condition::Boot, Some(&ann)).unwrap(),
            bob
        );
        assert!(matches!(
            pick(&ann, Some(&bob), Some("bob"), Condition::Login, None),
            Err(AutostartError::UserForLogin { .. })
        ));
        assert!(matches!(
            pick(&root, None, Some("nobody-here"), Condition::Boot, None),
            Err(AutostartError::NoSuchUser(_))
        ));
    }

    fn test_plan(root: &Path, existing: Option<&str>) -> Plan {
        let dir = InstanceDir::new(root, "dev".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        let me = sm::current_user().unwrap();
        let path = root.join("units/vmkeep-dev.service");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if let Some(text) = existing {
            std::fs::write(&path, text).unwrap();
        }
        Plan {
            text: format!(
                "# {}\n[Service]\nExecStart=/new\n",
                super::super::marker(&dir)
            ),
            dir,
            options: Options {
                condition: Condition::Login,
                keep_alive: true,
            },
            manager: Manager::Systemd,
            domain: Domain::LaunchAgent,
            user: me.clone(),
            me,
            service: "vmkeep-dev.service".into(),
            path,
            stop_timeout: Duration::from_secs(47),
        }
    }

    #[test]
    fn a_refused_registration_puts_back_what_was_there_and_records_nothing() {
        let root = tempfile::tempdir().unwrap();
        let old = {
            let dir = InstanceDir::new(root.path(), "dev".parse().unwrap()).unwrap();
            format!(
                "# {}\n[Service]\nExecStart=/old\n",
                super::super::marker(&dir)
            )
        };
        let plan = test_plan(root.path(), Some(&old));
        let fake = FakeManager::default();
        *fake.failing.borrow_mut() = Some("load");
        // --write-only skips the manager; a real enable needs it running,
        // which this machine may not have: check the transaction itself.
        let err = enable_with(&plan, &fake).unwrap_err();
        assert!(matches!(err, AutostartError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read_to_string(&plan.path).unwrap(), old);
        assert_eq!(record::load(&plan.dir).unwrap(), None);

        let fresh = tempfile::tempdir().unwrap();
        let plan = test_plan(fresh.path(), None);
        assert!(enable_with(&plan, &fake).is_err());
        assert!(!plan.path.exists(), "a new definition is removed again");
    }

    #[test]
    fn an_accepted_registration_is_written_loaded_and_recorded() {
        let root = tempfile::tempdir().unwrap();
        let plan = test_plan(root.path(), None);
        let fake = FakeManager::default();
        enable_with(&plan, &fake).unwrap();
        assert_eq!(*fake.calls.borrow(), ["load"]);
        assert_eq!(std::fs::read_to_string(&plan.path).unwrap(), plan.text);
        let record = record::load(&plan.dir).unwrap().unwrap();
        assert_eq!(record.path, plan.path);
        assert!(record.loaded);
    }

    #[test]
    fn a_file_that_is_not_ours_is_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let mine = "[Service]\nExecStart=/bin/true\n";
        let plan = test_plan(root.path(), Some(mine));
        let fake = FakeManager::default();
        let err = enable_with(&plan, &fake).unwrap_err();
        assert!(matches!(err, AutostartError::NotOurs { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&plan.path).unwrap(), mine);
        assert!(fake.calls.borrow().is_empty());
    }

    /// The transaction, without the checks that depend on this machine (a
    /// running service manager).
    fn enable_with(plan: &Plan, service: &dyn ServiceManager) -> Result<Enabled, AutostartError> {
        let replacing = existing_definition(plan)?;
        apply(plan, service, replacing, false, &Silent)
    }
}
