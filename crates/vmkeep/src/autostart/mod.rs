//! Autostart: have the platform's service manager run an instance's host
//! agent (`vmkeep start NAME --foreground`) at login or at boot.
//!
//! Everything here is pure: [`ServiceSpec`] is built from the instance and
//! the options, and rendered as a systemd unit ([`systemd`]) or a launchd
//! property list ([`launchd`]). Both renderers build on every platform, so
//! both are unit-tested everywhere. Installing, loading and asking the
//! service manager are side effects in `os::service_manager`; the verbs are
//! in `cli::autostart`; what was enabled is recorded in the instance
//! directory ([`record`]).
//!
//! Where a definition goes ([`Domain`]):
//!
//! | manager | condition | user     | domain          | name                        | directory                |
//! |---------|-----------|----------|-----------------|-----------------------------|--------------------------|
//! | systemd | login     | any      | user manager    | `vmkeep-NAME.service`       | `~/.config/systemd/user` |
//! | systemd | boot      | not root | user manager, lingering | `vmkeep-NAME.service` | `~/.config/systemd/user` |
//! | systemd | boot      | root     | system manager  | `vmkeep-root-NAME.service`  | `/etc/systemd/system`    |
//! | launchd | login     | any      | LaunchAgent     | `io.vmkeep.NAME.plist`      | `~/Library/LaunchAgents` |
//! | launchd | boot      | any      | LaunchDaemon    | `io.vmkeep.USER.NAME.plist` | `/Library/LaunchDaemons` |
//!
//! Under systemd, a VM of a user other than root starts at boot through that
//! user's own manager, which runs from boot when the user is *lingering*
//! (`loginctl enable-linger`): a system unit with `User=` could not give QEMU
//! a cgroup of its own (systemd creates units for a non-root process only
//! with polkit's consent), so QEMU would die with its host agent (see
//! `os::cgroup`). The user's manager can. The launchd boot labels carry the
//! user because `/Library/LaunchDaemons` is shared by every user.

pub mod error;
pub mod hooks;
pub mod launchd;
pub mod manager;
pub mod record;
pub mod registration;
pub mod systemd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::driver::qemu::binary::OVERRIDE_VAR;
use crate::instance::{InstanceDir, InstanceName};
use crate::stop_ladder::Plan;
use crate::timeouts;

/// The file, in the instance directory, that the service's output is appended to.
pub const LOG_FILE: &str = crate::instance::layout::AUTOSTART_LOG;

/// Pause before a keep-alive restart: short, since the VM runs unsupervised
/// until the restarted agent adopts it.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Starts allowed within the start-limit interval before systemd gives up.
pub const START_LIMIT_BURST: u32 = 5;
/// launchd's minimum time between two launches of a kept-alive job.
pub const THROTTLE_INTERVAL: Duration = Duration::from_secs(30);

/// Which service manager a definition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// The manager of the platform vmkeep runs on.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
        }
    }
}

impl std::str::FromStr for Manager {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "systemd" => Ok(Manager::Systemd),
            "launchd" => Ok(Manager::Launchd),
            other => Err(format!(
                "unknown service manager {other:?}; use systemd or launchd"
            )),
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the service manager starts the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// When the user logs in (per-user manager: systemd --user, LaunchAgent).
    #[default]
    Login,
    /// When the machine boots (system manager, running as the user).
    Boot,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Login => "login",
            Condition::Boot => "boot",
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "login" => Ok(Condition::Login),
            "boot" => Ok(Condition::Boot),
            other => Err(format!(
                "unknown condition {other:?}; use login (start when you log in) or boot (start when the machine boots)"
            )),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which service manager (instance) runs a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Domain {
    /// systemd's system manager: root's VMs at boot.
    SystemdSystem,
    /// The user's systemd manager: at login, or at boot when lingering.
    SystemdUser,
    /// launchd per-user agent (login).
    LaunchAgent,
    /// launchd system daemon running as the user (boot).
    LaunchDaemon,
}

impl Domain {
    /// The domain for `manager` and `condition`, for a VM run by `user`.
    pub fn of(manager: Manager, condition: Condition, user: &str) -> Domain {
        match (manager, condition) {
            (Manager::Systemd, Condition::Boot) if user == "root" => Domain::SystemdSystem,
            (Manager::Systemd, _) => Domain::SystemdUser,
            (Manager::Launchd, Condition::Login) => Domain::LaunchAgent,
            (Manager::Launchd, Condition::Boot) => Domain::LaunchDaemon,
        }
    }

    pub fn manager(self) -> Manager {
        match self {
            Domain::SystemdSystem | Domain::SystemdUser => Manager::Systemd,
            Domain::LaunchAgent | Domain::LaunchDaemon => Manager::Launchd,
        }
    }

    /// Whether the definition is shared by all users (a system directory).
    pub fn is_system(self) -> bool {
        matches!(self, Domain::SystemdSystem | Domain::LaunchDaemon)
    }

    /// Whether starting at `condition` needs the user's manager to run from
    /// boot (systemd's lingering).
    pub fn needs_linger(self, condition: Condition) -> bool {
        self == Domain::SystemdUser && condition == Condition::Boot
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub condition: Condition,
    /// Restart the host agent when it fails (crash, failed start), never
    /// after a clean stop or a guest power-off.
    pub keep_alive: bool,
}

/// What is known about the host and the instance when the definition is made.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub instance: InstanceDir,
    /// `$VMKEEP_HOME` as the service must see it.
    pub instances_root: PathBuf,
    /// `$VMKEEP_CACHE_DIR` as the service must see it.
    pub cache_root: PathBuf,
    /// The `vmkeep` binary (absolute, symlinks resolved).
    pub exe: PathBuf,
    /// Directory holding the QEMU binary, if it was found.
    pub qemu_dir: Option<PathBuf>,
    /// `VMKEEP_QEMU` when the definition was made: the service runs that
    /// QEMU too (a state saved on it must not meet an older one).
    pub qemu: Option<PathBuf>,
    /// The user the VM runs as.
    pub user: String,
    /// The longest the VM may take to go at a host shutdown
    /// (`Config::host_shutdown_deadline`: `stopTimeout`, twice that when a
    /// save comes first).
    pub stop_timeout: Duration,
    /// The instance's `bootTimeout`.
    pub boot_timeout: Duration,
}

/// Why a service definition cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("{what} {path} is not an absolute path; a service manager needs absolute paths")]
    Relative { what: &'static str, path: PathBuf },
    #[error(
        "{what} {path:?} contains a newline or a non-UTF-8 byte, which a service definition cannot carry; \
         use a path without them"
    )]
    Unrepresentable { what: &'static str, path: PathBuf },
    #[error("the user name {0:?} cannot be named in a service; run as a user with a plain name")]
    BadUser(String),
}

/// A service definition, independent of the service manager.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: InstanceName,
    pub options: Options,
    pub domain: Domain,
    pub user: String,
    /// The command line, program first (absolute).
    pub program_arguments: Vec<String>,
    /// The whole environment the service gets from us.
    pub environment: Vec<(String, String)>,
    pub working_directory: String,
    /// stdout and stderr are appended here.
    pub log: String,
    /// How long the service manager waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// How long a start may take.
    pub start_timeout: Duration,
    pub restart_delay: Duration,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    pub throttle_interval: Duration,
    /// The first line of every definition vmkeep writes; `disable` removes
    /// only files that carry it, and `enable` overwrites only its own.
    pub marker: String,
}

/// The service manager's stop timeout for an instance whose graceful-stop
/// deadline is `stop_timeout`: the whole ladder (deadline, then QMP `quit`
/// and its grace before SIGKILL) plus [`timeouts::STOP_MARGIN`], in whole seconds,
/// never shorter than the ladder.
pub fn service_stop_timeout(stop_timeout: Duration) -> Duration {
    let plan = Plan::new(stop_timeout);
    ceil_secs(plan.deadline + plan.quit_grace + timeouts::STOP_MARGIN)
}

/// The service manager's start timeout: the boot timeout plus [`timeouts::START_MARGIN`].
pub fn service_start_timeout(boot_timeout: Duration) -> Duration {
    ceil_secs(boot_timeout + timeouts::START_MARGIN)
}

fn ceil_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The text that marks a definition as vmkeep's, naming the instance it runs.
pub fn marker(instance: &InstanceDir) -> String {
    format!(
        "managed by vmkeep: instance {} in {}",
        instance.name(),
        instance.dir().display()
    )
}

/// Whether `text` (a unit or plist) was written by vmkeep: it carries the
/// marker prefix. Returns the marker line's instance part when it does.
pub fn managed_marker(text: &str) -> Option<&str> {
    text.lines()
        .take(5)
        .find_map(|line| line.split_once("managed by vmkeep: ").map(|(_, rest)| rest))
        .map(|rest| rest.trim_end_matches("-->").trim())
}

/// A PATH for the service: the QEMU directory first, then the usual system
/// directories (service managers start with a minimal PATH; launchd's lacks
/// Homebrew's).
pub fn service_path(qemu_dir: Option<&Path>) -> String {
    let mut dirs: Vec<String> = Vec::new();
    if let Some(dir) = qemu_dir {
        dirs.push(dir.to_string_lossy().into_owned());
    }
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_string());
        }
    }
    dirs.join(":")
}

/// A user name a service may carry: what POSIX portable names allow.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn text_of(what: &'static str, path: &Path) -> Result<String, SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::Relative {
            what,
            path: path.into(),
        });
    }
    match path.to_str() {
        Some(text) if !text.contains(['\n', '\r']) => Ok(text.to_string()),
        _ => Err(SpecError::Unrepresentable {
            what,
            path: path.into(),
        }),
    }
}

impl ServiceSpec {
    pub fn new(
        inputs: &Inputs,
        options: Options,
        manager: Manager,
    ) -> Result<ServiceSpec, SpecError> {
        if !valid_user(&inputs.user) {
            return Err(SpecError::BadUser(inputs.user.clone()));
        }
        let exe = text_of("the vmkeep binary", &inputs.exe)?;
        let home = text_of("VMKEEP_HOME", &inputs.instances_root)?;
        let cache = text_of("VMKEEP_CACHE_DIR", &inputs.cache_root)?;
        let dir = text_of("the instance directory", inputs.instance.dir())?;
        let qemu = inputs
            .qemu
            .as_deref()
            .map(|qemu| text_of(OVERRIDE_VAR, qemu))
            .transpose()?;
        let path = service_path(inputs.qemu_dir.as_deref());
        if path.contains(['\n', '\r']) {
            return Err(SpecError::Unrepresentable {
                what: "the QEMU directory",
                path: inputs.qemu_dir.clone().unwrap_or_default(),
            });
        }
        let start_timeout = service_start_timeout(inputs.boot_timeout);
        Ok(ServiceSpec {
            name: inputs.instance.name().clone(),
            options,
            domain: Domain::of(manager, options.condition, &inputs.user),
            user: inputs.user.clone(),
            program_arguments: vec![
                exe,
                "start".into(),
                inputs.instance.name().to_string(),
                "--foreground".into(),
            ],
            environment: [
                ("VMKEEP_HOME".into(), home),
                ("VMKEEP_CACHE_DIR".into(), cache),
                ("PATH".into(), path),
            ]
            .into_iter()
            .chain(qemu.map(|qemu| (OVERRIDE_VAR.into(), qemu)))
            .collect(),
            log: format!("{dir}/{LOG_FILE}"),
            working_directory: dir,
            stop_timeout: service_stop_timeout(inputs.stop_timeout),
            start_timeout,
            restart_delay: RESTART_DELAY,
            // A start that fails only at its timeout every time still trips
            // the limit: the window holds `burst` whole attempts.
            start_limit_interval: (start_timeout + RESTART_DELAY) * START_LIMIT_BURST,
            start_limit_burst: START_LIMIT_BURST,
            throttle_interval: THROTTLE_INTERVAL,
            marker: marker(&inputs.instance),
        })
    }
}

/// The service's name (unit name without `.service`, or launchd label).
pub fn service_name(domain: Domain, user: &str, name: &str) -> String {
    match domain {
        Domain::SystemdUser => format!("vmkeep-{name}"),
        Domain::SystemdSystem => format!("vmkeep-{user}-{name}"),
        Domain::LaunchAgent => format!("io.vmkeep.{name}"),
        Domain::LaunchDaemon => format!("io.vmkeep.{user}.{name}"),
    }
}

/// The file name of the definition: `NAME.service` or `LABEL.plist`.
pub fn file_name(domain: Domain, user: &str, name: &str) -> String {
    let base = service_name(domain, user, name);
    match domain.manager() {
        Manager::Systemd => format!("{base}.service"),
        Manager::Launchd => format!("{base}.plist"),
    }
}

/// The directory a definition goes to. `home` is the home directory of the
/// user the VM runs as; `xdg_config_home` is their `$XDG_CONFIG_HOME` if
/// known (systemd's user units).
pub fn definition_dir(domain: Domain, home: &Path, xdg_config_home: Option<&Path>) -> PathBuf {
    match domain {
        Domain::SystemdUser => xdg_config_home
            .filter(|p| p.is_absolute())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join(".config"))
            .join("systemd/user"),
        Domain::SystemdSystem => PathBuf::from("/etc/systemd/system"),
        Domain::LaunchAgent => home.join("Library/LaunchAgents"),
        Domain::LaunchDaemon => PathBuf::from("/Library/LaunchDaemons"),
    }
}

/// Render `spec` for `manager`.
pub fn render(manager: Manager, spec: &ServiceSpec) -> String {
    match manager {
        Manager::Systemd => systemd::render(spec),
        Manager::Launchd => launchd::render(spec),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn inputs(stop: u64) -> Inputs {
        Inputs {
            instance: InstanceDir::new(Path::new("/home/ann/.vmkeep"), "dev".parse().unwrap())
                .unwrap(),
            instances_root: "/home/ann/.vmkeep".into(),
            cache_root: "/home/ann/.cache/vmkeep".into(),
            exe: "/opt/vmkeep/bin/vmkeep".into(),
            qemu_dir: Some("/opt/homebrew/bin".into()),
            qemu: None,
            user: "ann".into(),
            stop_timeout: Duration::from_secs(stop),
            boot_timeout: Duration::from_secs(180),
        }
    }

    pub fn spec(condition: Condition, keep_alive: bool, stop: u64) -> ServiceSpec {
        spec_for(Manager::Systemd, condition, keep_alive, stop, "ann")
    }

    pub fn spec_for(
        manager: Manager,
        condition: Condition,
        keep_alive: bool,
        stop: u64,
        user: &str,
    ) -> ServiceSpec {
        let mut inputs = inputs(stop);
        inputs.user = user.into();
        ServiceSpec::new(
            &inputs,
            Options {
                condition,
                keep_alive,
            },
            manager,
        )
        .unwrap()
    }

    #[test]
    fn the_stop_timeout_covers_the_whole_ladder_plus_a_margin() {
        for secs in [1, 6, 30, 90, 3600] {
            let deadline = Duration::from_secs(secs);
            let plan = Plan::new(deadline);
            let service = service_stop_timeout(deadline);
            assert!(
                service >= plan.deadline + plan.quit_grace + timeouts::STOP_MARGIN,
                "{secs}s -> {service:?}"
            );
            assert_eq!(service.subsec_nanos(), 0);
        }
        assert_eq!(
            service_stop_timeout(Duration::from_secs(30)),
            Duration::from_secs(47)
        );
        // Fractions round up, never down.
        assert_eq!(
            service_stop_timeout(Duration::from_millis(1500)),
            Duration::from_secs(19)
        );
    }

    #[test]
    fn the_spec_runs_the_foreground_agent_by_absolute_path_with_its_environment() {
        let spec = spec(Condition::Login, true, 30);
        assert_eq!(
            spec.program_arguments,
            ["/opt/vmkeep/bin/vmkeep", "start", "dev", "--foreground"]
        );
        let env: std::collections::HashMap<_, _> = spec.environment.iter().cloned().collect();
        assert_eq!(env["VMKEEP_HOME"], "/home/ann/.vmkeep");
        assert_eq!(env["VMKEEP_CACHE_DIR"], "/home/ann/.cache/vmkeep");
        assert!(
            env["PATH"].starts_with("/opt/homebrew/bin:"),
            "{}",
            env["PATH"]
        );
        assert!(env["PATH"].contains("/usr/bin"));
        assert_eq!(spec.log, "/home/ann/.vmkeep/dev/autostart.log");
        assert_eq!(spec.working_directory, "/home/ann/.vmkeep/dev");
        assert_eq!(spec.start_timeout, Duration::from_secs(240));
        assert!(spec.start_limit_interval >= spec.start_timeout * spec.start_limit_burst);
        assert!(!env.contains_key("VMKEEP_QEMU"), "PATH's QEMU unless told");
        // Enabled with VMKEEP_QEMU: the service runs that QEMU too.
        let mut with_qemu = inputs(30);
        with_qemu.qemu = Some("/opt/qemu-10/bin/qemu-system-x86_64".into());
        let options = Options {
            condition: Condition::Login,
            keep_alive: true,
        };
        let spec = ServiceSpec::new(&with_qemu, options, Manager::Systemd).unwrap();
        assert!(spec.environment.contains(&(
            "VMKEEP_QEMU".into(),
            "/opt/qemu-10/bin/qemu-system-x86_64".into()
        )));
        with_qemu.qemu = Some("qemu-10/bin/qemu-system-x86_64".into());
        assert!(ServiceSpec::new(&with_qemu, options, Manager::Systemd).is_err());
    }

    #[test]
    fn relative_or_unwritable_paths_and_odd_users_are_refused() {
        let options = Options {
            condition: Condition::Login,
            keep_alive: true,
        };
        let mut bad = inputs(30);
        bad.exe = "target/debug/vmkeep".into();
        let err = ServiceSpec::new(&bad, options, Manager::Systemd).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let mut bad = inputs(30);
        bad.cache_root = "/tmp/a\nb".into();
        assert!(matches!(
            ServiceSpec::new(&bad, options, Manager::Systemd),
            Err(SpecError::Unrepresentable { .. })
        ));
        for user in ["", "-x", "a b", "a/b", "a\nb"] {
            let mut bad = inputs(30);
            bad.user = user.into();
            assert!(
                matches!(
                    ServiceSpec::new(&bad, options, Manager::Systemd),
                    Err(SpecError::BadUser(_))
                ),
                "{user:?}"
            );
        }
    }

    #[test]
    fn names_and_directories_per_domain() {
        use Condition::*;
        use Manager::*;
        let home = Path::new("/home/ann");
        let cases = [
            (
                Systemd,
                Login,
                "ann",
                Domain::SystemdUser,
                "vmkeep-dev.service",
                "/home/ann/.config/systemd/user",
            ),
            (
                Systemd,
                Boot,
                "ann",
                Domain::SystemdUser,
                "vmkeep-dev.service",
                "/home/ann/.config/systemd/user",
            ),
            (
                Systemd,
                Boot,
                "root",
                Domain::SystemdSystem,
                "vmkeep-root-dev.service",
                "/etc/systemd/system",
            ),
            (
                Systemd,
                Login,
                "root",
                Domain::SystemdUser,
                "vmkeep-dev.service",
                "/home/ann/.config/systemd/user",
            ),
            (
                Launchd,
                Login,
                "ann",
                Domain::LaunchAgent,
                "io.vmkeep.dev.plist",
                "/home/ann/Library/LaunchAgents",
            ),
            (
                Launchd,
                Boot,
                "ann",
                Domain::LaunchDaemon,
                "io.vmkeep.ann.dev.plist",
                "/Library/LaunchDaemons",
            ),
        ];
        for (manager, condition, user, domain, file, dir) in cases {
            assert_eq!(Domain::of(manager, condition, user), domain);
            assert_eq!(file_name(domain, user, "dev"), file);
            assert_eq!(definition_dir(domain, home, None), Path::new(dir));
        }
        assert!(Domain::SystemdUser.needs_linger(Boot));
        assert!(!Domain::SystemdUser.needs_linger(Login));
        assert!(!Domain::SystemdSystem.needs_linger(Boot));
        assert_eq!(
            definition_dir(Domain::SystemdUser, home, Some(Path::new("/x/cfg"))),
            Path::new("/x/cfg/systemd/user")
        );
        // A relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
        assert_eq!(
            definition_dir(Domain::SystemdUser, home, Some(Path::new("cfg"))),
            Path::new("/home/ann/.config/systemd/user")
        );
    }

    #[test]
    fn bad_conditions_and_managers_name_the_choices() {
        let err = "foo".parse::<Condition>().unwrap_err();
        assert!(err.contains("login") && err.contains("boot"), "{err}");
        assert_eq!("boot".parse::<Condition>(), Ok(Condition::Boot));
        let err = "upstart".parse::<Manager>().unwrap_err();
        assert!(err.contains("systemd") && err.contains("launchd"), "{err}");
    }

    #[test]
    fn the_marker_is_found_in_both_renderings() {
        for manager in [Manager::Systemd, Manager::Launchd] {
            let text = render(
                manager,
                &spec_for(manager, Condition::Login, true, 30, "ann"),
            );
            assert_eq!(
                managed_marker(&text),
                Some("instance dev in /home/ann/.vmkeep/dev"),
                "{manager}:\n{text}"
            );
        }
        assert_eq!(managed_marker("[Unit]\nDescription=mine\n"), None);
    }

    #[test]
    fn the_path_puts_qemu_first_without_duplicates() {
        assert_eq!(
            service_path(Some(Path::new("/usr/bin"))),
            "/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
        );
        assert!(service_path(None).starts_with("/usr/local/sbin:"));
    }
}
