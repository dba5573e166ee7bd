//! The platform service manager (systemd, launchd) and the user database:
//! detection, `systemctl` / `launchctl` calls through [`Tool`], and writing
//! service definitions. What to write is decided in `crate::autostart`.

use std::io;
use std::path::{Path, PathBuf};

use super::tool::{Tool, ToolError};

/// Where systemd, when it runs as the init system, marks its presence
/// (what `sd_booted()` checks).
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// Whether systemd runs as the init system (PID 1).
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNTIME_DIR).is_dir()
}

/// Whether launchd is the service manager (macOS).
pub fn launchd_running() -> bool {
    cfg!(target_os = "macos") && Path::new("/bin/launchctl").exists()
}

/// The load and activity state of a systemd unit (`systemctl show`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `loaded`, `not-found`, `masked`, ...
    pub load: String,
    /// `active`, `inactive`, `activating`, `deactivating`, `failed`, ...
    pub active: String,
    /// `running`, `dead`, `auto-restart`, ...
    pub sub: String,
    /// `enabled`, `disabled`, ...
    pub unit_file: String,
    /// How the last run ended: `success`, `exit-code`, `signal`,
    /// `start-limit-hit`, ...
    pub result: String,
    /// Keep-alive restarts since the unit was last started by hand.
    pub restarts: u32,
}

impl UnitState {
    /// Parse `systemctl show --property=LoadState,ActiveState,SubState,UnitFileState,Result,NRestarts`.
    pub fn parse(text: &str) -> UnitState {
        let mut state = UnitState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim() {
                "LoadState" => state.load = value,
                "ActiveState" => state.active = value,
                "SubState" => state.sub = value,
                "UnitFileState" => state.unit_file = value,
                "Result" => state.result = value,
                "NRestarts" => state.restarts = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        state
    }

    pub fn is_loaded(&self) -> bool {
        self.load == "loaded"
    }

    /// systemd gave up on it (keep-alive hit the start limit, or a failure
    /// without keep-alive); it stays so until `reset-failed` or a start.
    pub fn is_failed(&self) -> bool {
        self.active == "failed"
    }

    /// The service has a process, or is about to (a pending restart counts:
    /// stopping the unit cancels it).
    pub fn is_active(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "activating" | "deactivating" | "reloading"
        )
    }
}

/// Which systemd manager `systemctl` talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdManager {
    /// PID 1.
    System,
    /// The calling user's own manager (`systemctl --user`).
    User,
    /// Another user's manager, reached as root by running `systemctl --user`
    /// as that user (`runuser`), with their runtime directory.
    UserOf { name: String, uid: u32 },
}

/// `systemctl` for one manager.
#[derive(Debug, Clone)]
pub struct Systemctl {
    pub manager: SystemdManager,
}

impl Systemctl {
    pub fn system() -> Systemctl {
        Systemctl {
            manager: SystemdManager::System,
        }
    }

    pub fn user() -> Systemctl {
        Systemctl {
            manager: SystemdManager::User,
        }
    }

    /// The command line, for messages and dry runs.
    pub fn describe_command(&self) -> String {
        match &self.manager {
            SystemdManager::System => "systemctl".into(),
            SystemdManager::User => "systemctl --user".into(),
            SystemdManager::UserOf { name, uid } => {
                format!("runuser -u {name} -- env XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user")
            }
        }
    }

    /// The flag `journalctl` needs for this manager's units.
    pub fn journal_flag(&self) -> &'static str {
        match self.manager {
            SystemdManager::System => "",
            SystemdManager::User | SystemdManager::UserOf { .. } => " --user",
        }
    }

    fn tool(&self) -> Tool {
        const HINT: &str = "install systemd (Debian: apt-get install systemd), or use --dry-run";
        match &self.manager {
            SystemdManager::System => Tool::new("systemctl", HINT),
            SystemdManager::User => Tool::new("systemctl", HINT).arg("--user"),
            SystemdManager::UserOf { name, uid } => {
                Tool::new("runuser", "runuser is part of util-linux")
                    .args(["-u", name, "--", "env"])
                    .arg(format!("XDG_RUNTIME_DIR=/run/user/{uid}"))
                    .args(["systemctl", "--user"])
            }
        }
    }

    pub fn daemon_reload(&self) -> Result<(), ToolError> {
        self.tool().arg("daemon-reload").output().map(drop)
    }

    pub fn enable(&self, unit: &str) -> Result<(), ToolError> {
        self.tool().args(["enable", unit]).output().map(drop)
    }

    pub fn disable(&self, unit: &str) -> Result<(), ToolError> {
        self.tool().args(["disable", unit]).output().map(drop)
    }

    /// Start the unit (returns once it is up: for a Type=notify unit, once it said READY=1).
    pub fn start(&self, unit: &str) -> Result<(), ToolError> {
        self.tool().args(["start", unit]).output().map(drop)
    }

    /// Forget the unit's failure (and its start-limit count), so that it can
    /// be started again.
    pub fn reset_failed(&self, unit: &str) -> Result<(), ToolError> {
        self.tool().args(["reset-failed", unit]).output().map(drop)
    }

    /// Stop the unit and wait until it is stopped (up to its TimeoutStopSec);
    /// also cancels a pending keep-alive restart.
    pub fn stop(&self, unit: &str) -> Result<(), ToolError> {
        self.tool().args(["stop", unit]).output().map(drop)
    }

    /// Whether this manager is going down (`is-system-running` says
    /// `stopping`: its shutdown, or for a user's manager its exit, is under
    /// way).
    pub fn is_stopping(&self) -> Result<bool, ToolError> {
        let state = self.tool().arg("is-system-running").answer_text()?;
        Ok(state.trim() == "stopping")
    }

    /// The type of the job systemd runs or has queued on `unit` now
    /// (`restart`, `stop`, `start`, ...; `None`: no job), from `systemctl
    /// list-jobs`. A process asks it of its own unit at its stop signal to
    /// tell a `systemctl restart` (job `restart` while the old process is
    /// stopped) from a `systemctl stop` or a shutdown (`stop`); systemd 252
    /// shows it so, for the system and the user managers alike.
    pub fn job_type(&self, unit: &str) -> Result<Option<String>, ToolError> {
        self.tool()
            .args(["list-jobs", "--no-legend", "--full", "--no-pager", unit])
            .output_text()
            .map(|text| job_type_in(&text, unit))
    }

    pub fn show(&self, unit: &str) -> Result<UnitState, ToolError> {
        self.tool()
            .args([
                "show",
                "--property=LoadState,ActiveState,SubState,UnitFileState,Result,NRestarts",
                unit,
            ])
            .output_text()
            .map(|text| UnitState::parse(&text))
    }
}

/// The job type `systemctl list-jobs --no-legend` shows for `unit`: its rows
/// are `ID UNIT TYPE STATE`, columns padded with spaces.
pub fn job_type_in(list_jobs: &str, unit: &str) -> Option<String> {
    list_jobs.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_id, name, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (name == unit).then(|| kind.to_string())
    })
}

/// The job systemd runs on this process's own unit now (see
/// [`Systemctl::job_type`]), asked of the manager that runs it: `Ok(None)`
/// for no job. An error when this process is not in a unit of a manager it
/// can ask (not under systemd, or started from a shell outside any service).
pub fn own_unit_job() -> Result<Option<String>, String> {
    if !systemd_running() {
        return Err("systemd is not the init system".into());
    }
    let unit = super::cgroup::own_unit().ok_or("this process is in no systemd unit")?;
    if !unit.ends_with(".service") {
        return Err(format!("this process runs in {unit}, not in a service"));
    }
    let manager = match super::cgroup::placement() {
        Ok(super::cgroup::Placement {
            manager: super::cgroup::Manager::User { .. },
            ..
        }) => Systemctl::user(),
        Ok(_) => Systemctl::system(),
        Err(why) => return Err(format!("no manager to ask about {unit}: {}", why.0)),
    };
    manager
        .job_type(&unit)
        .map_err(|e| format!("{}: {e}", manager.describe_command()))
}

/// Whether the host is shutting down as this process's service manager sees
/// it: systemd's system manager is stopping, or, for a process that a user's
/// manager runs, that manager is (a host shutdown stops it; so does the
/// user's last logout without linger, which ends the VM just the same).
/// An error when no manager could be asked.
pub fn host_shutting_down() -> Result<bool, String> {
    if !systemd_running() {
        return Err("systemd is not the init system".into());
    }
    let in_user_manager = matches!(
        super::cgroup::placement(),
        Ok(super::cgroup::Placement {
            manager: super::cgroup::Manager::User { .. },
            ..
        })
    );
    let managers = in_user_manager
        .then(Systemctl::user)
        .into_iter()
        .chain([Systemctl::system()]);
    let mut errors = Vec::new();
    let mut answered = false;
    for manager in managers {
        match manager.is_stopping() {
            Ok(true) => return Ok(true),
            Ok(false) => answered = true,
            Err(e) => errors.push(format!("{}: {e}", manager.describe_command())),
        }
    }
    match answered {
        true => Ok(false),
        false => Err(errors.join("; ")),
    }
}

/// Where logind marks lingering users (their manager runs from boot).
const LINGER_DIR: &str = "/var/lib/systemd/linger";

/// Whether `user`'s systemd manager runs from boot, without a login.
pub fn is_lingering(user: &str) -> bool {
    Path::new(LINGER_DIR).join(user).exists()
}

/// Make `user`'s manager run from boot (`loginctl enable-linger`); root may
/// do it for anyone, others need polkit's consent.
pub fn enable_linger(user: &str) -> Result<(), ToolError> {
    Tool::new("loginctl", "loginctl is part of systemd")
        .args(["enable-linger", user])
        .output()
        .map(drop)
}

/// Start `uid`'s manager now and wait until it runs (as root).
pub fn start_user_manager(uid: u32) -> Result<(), ToolError> {
    Systemctl::system().start(&format!("user@{uid}.service"))
}

/// How long the system manager lets `uid`'s manager take to stop (its
/// `TimeoutStopSec`; at a host shutdown every user unit must be done by then).
/// `None` when it cannot be told (infinity, or an unreadable answer).
pub fn user_manager_stop_timeout(uid: u32) -> Result<Option<std::time::Duration>, ToolError> {
    let text = Tool::new("systemctl", "install systemd")
        .args([
            "show",
            "--value",
            "--property=TimeoutStopUSec",
            &format!("user@{uid}.service"),
        ])
        .output_text()?;
    Ok(humantime::parse_duration(text.trim()).ok())
}

/// The drop-in that lengthens `uid`'s manager's stop timeout.
pub fn user_manager_drop_in(uid: u32) -> PathBuf {
    PathBuf::from(format!(
        "/etc/systemd/system/user@{uid}.service.d/50-vmkeep-stop-timeout.conf"
    ))
}

/// `launchctl` in one domain: `gui/UID` (LaunchAgents) or `system` (LaunchDaemons).
#[derive(Debug, Clone)]
pub struct Launchctl {
    pub domain: String,
}

impl Launchctl {
    fn tool(&self) -> Tool {
        Tool::new("launchctl", "launchctl is part of macOS")
    }

    fn target(&self, label: &str) -> String {
        format!("{}/{label}", self.domain)
    }

    /// Load a plist into the domain (with RunAtLoad, this starts the job).
    pub fn bootstrap(&self, plist: &Path) -> Result<(), ToolError> {
        self.tool()
            .arg("bootstrap")
            .arg(&self.domain)
            .arg(plist)
            .output()
            .map(drop)
    }

    /// Unload the job (launchd sends it SIGTERM, SIGKILL after ExitTimeOut).
    pub fn bootout(&self, label: &str) -> Result<(), ToolError> {
        self.tool()
            .args(["bootout", &self.target(label)])
            .output()
            .map(drop)
    }

    /// Start a loaded job now.
    pub fn kickstart(&self, label: &str) -> Result<(), ToolError> {
        self.tool()
            .args(["kickstart", &self.target(label)])
            .output()
            .map(drop)
    }

    /// Send SIGTERM to the job's process (the host agent runs its stop
    /// ladder and exits 0, so `SuccessfulExit: false` does not relaunch it).
    pub fn terminate(&self, label: &str) -> Result<(), ToolError> {
        self.tool()
            .args(["kill", "SIGTERM", &self.target(label)])
            .output()
            .map(drop)
    }

    /// Whether the job is loaded in the domain.
    pub fn is_loaded(&self, label: &str) -> bool {
        self.tool()
            .args(["print", &self.target(label)])
            .output()
            .is_ok()
    }
}

pub use super::identity::{User, current_user, user_by_name};

/// The first directory of `$PATH` holding an executable `program`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .find(|dir| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok() && path.is_file()
}

/// Whether this process may create or replace files in `dir` (or, if it does
/// not exist yet, in its nearest existing ancestor).
pub fn may_write_in(dir: &Path) -> bool {
    let mut probe = Some(dir);
    while let Some(p) = probe {
        if p.exists() {
            return rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
        }
        probe = p.parent();
    }
    false
}

/// Write a service definition (mode 0644: service managers read it as
/// another user), creating its directory if needed. With an `owner` (root
/// writing into another user's home), the file and the directories it
/// created belong to that user, so that they can manage them later.
pub fn write_definition(path: &Path, text: &str, owner: Option<&User>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        let mut missing = Vec::new();
        let mut probe = Some(dir);
        while let Some(d) = probe.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            probe = d.parent();
        }
        std::fs::create_dir_all(dir)?;
        if let Some(user) = owner {
            for d in &missing {
                chown(d, user)?;
            }
        }
    }
    super::fs::write_atomic(path, text.as_bytes(), 0o644)?;
    if let Some(user) = owner {
        chown(path, user)?;
    }
    Ok(())
}

fn chown(path: &Path, user: &User) -> io::Result<()> {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(user.uid)),
        Some(rustix::fs::Gid::from_raw(user.gid)),
    )
    .map_err(io::Error::from)
}

/// Remove a service definition; one that is already gone is not an error.
pub fn remove_definition(path: &Path) -> io::Result<bool> {
    super::fs::remove_file_if_exists(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_state_parses_systemctl_show() {
        let state = UnitState::parse(
            "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nUnitFileState=enabled\n",
        );
        assert!(!state.is_failed());
        assert!(state.is_loaded());
        assert!(state.is_active(), "a pending restart counts as active");
        assert_eq!(state.unit_file, "enabled");
        let gone = UnitState::parse("LoadState=not-found\nActiveState=inactive\nSubState=dead\n");
        assert!(!gone.is_loaded() && !gone.is_active());
        let given_up = UnitState::parse("ActiveState=failed\nResult=exit-code\nNRestarts=5\n");
        assert!(given_up.is_failed() && !given_up.is_active());
        assert_eq!(
            (given_up.result.as_str(), given_up.restarts),
            ("exit-code", 5)
        );
        assert_eq!(UnitState::parse("garbage"), UnitState::default());
    }

    #[test]
    fn the_job_type_comes_from_the_units_row_of_list_jobs() {
        // What systemd 252 printed at a SIGTERM, during a restart and at a
        // shutdown (columns padded).
        let restart = "131 probe.service restart running\n";
        assert_eq!(
            job_type_in(restart, "probe.service").as_deref(),
            Some("restart")
        );
        let shutdown = "49 systemd-exit.service start waiting\n\
                        54 vmkeep-daemon.service stop  running\n\
                        51 timers.target        stop  waiting\n";
        assert_eq!(
            job_type_in(shutdown, "vmkeep-daemon.service").as_deref(),
            Some("stop")
        );
        assert_eq!(job_type_in(shutdown, "vmkeep-daemon"), None);
        assert_eq!(job_type_in("", "probe.service"), None);
        assert_eq!(job_type_in("probe.service\n", "probe.service"), None);
    }

    #[test]
    fn the_current_user_is_in_the_user_database() {
        let me = current_user().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert_eq!(user_by_name(&me.name).unwrap(), Some(me));
        assert_eq!(user_by_name("vmkeep-no-such-user").unwrap(), None);
    }

    #[test]
    fn programs_are_found_in_path() {
        assert!(find_in_path("sh").is_some());
        assert_eq!(find_in_path("vmkeep-no-such-program"), None);
    }

    #[test]
    fn writability_is_judged_by_the_nearest_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(may_write_in(&tmp.path().join("a/b/c")));
    }
}
