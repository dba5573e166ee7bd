//! Giving a process a cgroup of its own under systemd, so that it outlives
//! the unit that spawned it.
//!
//! systemd tracks a service's processes by cgroup, not by process group or
//! session: when a host agent's unit fails (the agent was killed), systemd
//! kills every process left in the unit's cgroup before it restarts the
//! unit. A QEMU that is the agent's child sits there by default and would be
//! power-cut. So QEMU (and a host agent spawned by the daemon) is started in
//! a transient **scope** unit of its own, through `systemd-run --scope`, which
//! creates the scope, moves itself into it and then execs the program: the
//! pid, the parent and the descriptors stay as they were, and there is no
//! moment at which the program runs outside its scope.
//!
//! Each scope is ordered `Before=` the unit of the process that spawned it.
//! systemd stops units in the reverse order of their start ordering, so at a
//! host shutdown (or a user manager's exit) the spawner's unit is stopped
//! first: the host agent runs its stop ladder (or the daemon stops its VMs)
//! while QEMU's scope waits, and the scope is stopped (SIGTERM, a hard stop)
//! only once the spawner is gone, which is after the ladder's deadline.
//!
//! Who can be asked (decided by [`decide`], a pure function of what this
//! process sees):
//! - a process inside a user manager (`user@UID.service`) of its own uid asks
//!   that manager, over its private socket (`$XDG_RUNTIME_DIR/systemd/private`);
//! - root asks the system manager (`/run/systemd/private`);
//! - anyone else cannot: a system service running as a non-root user cannot
//!   create units without polkit, and a login session's processes cannot be
//!   moved into the user manager (cgroup delegation forbids it). Those
//!   processes run where they are, as without systemd.
//!
//! The D-Bus API is reached through systemd's own `systemd-run`: the D-Bus
//! client crates tried (zbus) refuse the replies of systemd's private socket
//! (their sender is `org.freedesktop.systemd1`, not a unique bus name), and
//! the bus daemon itself may not exist (a user bus needs dbus-user-session).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::process::Program;

/// The service manager that can give a process a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    /// The system manager (PID 1); only root may ask it.
    System,
    /// The per-user manager `user@UID.service`.
    User { uid: u32, runtime_dir: PathBuf },
}

impl Manager {
    pub fn describe(&self) -> &'static str {
        match self {
            Manager::System => "the system manager",
            Manager::User { .. } => "the user manager",
        }
    }
}

/// Where new scopes go, and what they are ordered before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub manager: Manager,
    /// The slice of the spawner's unit (`app.slice`, `system.slice`, ...).
    pub slice: Option<String>,
    /// The spawner's own unit, stopped before the new scope.
    pub before: Option<String>,
}

/// Why no scope can be made (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPlacement(pub String);

impl std::fmt::Display for NoPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`decide`] needs to know about this process and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `/proc/self/cgroup`.
    pub proc_cgroup: String,
    pub euid: u32,
    /// systemd runs as the init system (`/run/systemd/system` exists).
    pub systemd_booted: bool,
    /// `/run/systemd/private` exists.
    pub system_private_socket: bool,
    /// `$XDG_RUNTIME_DIR`, if set.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// Whether `RUNTIME_DIR/systemd/private` exists, for the runtime dir
    /// that applies (`$XDG_RUNTIME_DIR`, else `/run/user/UID`).
    pub user_private_socket: bool,
}

/// The path of this process in systemd's hierarchy: the `name=systemd`
/// hierarchy of cgroup v1 (and the hybrid layout), else the unified one.
pub fn systemd_cgroup_path(proc_cgroup: &str) -> Option<&str> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        match controllers {
            "name=systemd" => return Some(path),
            "" => unified = Some(path),
            _ => {}
        }
    }
    unified
}

/// The units along a cgroup path: (slice of the innermost unit, innermost unit).
fn innermost_unit(components: &[&str]) -> (Option<String>, Option<String>) {
    let unit_at = components
        .iter()
        .rposition(|c| c.ends_with(".service") || c.ends_with(".scope"));
    let Some(at) = unit_at else {
        return (None, None);
    };
    let slice = components[..at]
        .iter()
        .rev()
        .find(|c| c.ends_with(".slice"))
        .map(|s| s.to_string());
    (slice, Some(components[at].to_string()))
}

/// Decide whether, and through which manager, this process can give a child
/// a scope of its own.
pub fn decide(facts: &Facts) -> Result<Placement, NoPlacement> {
    if !facts.systemd_booted {
        return Err(NoPlacement("systemd is not the init system".into()));
    }
    let path = systemd_cgroup_path(&facts.proc_cgroup)
        .ok_or_else(|| NoPlacement("no systemd cgroup in /proc/self/cgroup".into()))?;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let user_manager = components.iter().position(|c| {
        c.strip_prefix("user@")
            .and_then(|rest| rest.strip_suffix(".service"))
            .and_then(|uid| uid.parse::<u32>().ok())
            == Some(facts.euid)
    });
    if let Some(at) = user_manager {
        if !facts.user_private_socket {
            return Err(NoPlacement(
                "the user manager's private socket (XDG_RUNTIME_DIR/systemd/private) is missing"
                    .into(),
            ));
        }
        let (slice, before) = innermost_unit(&components[at + 1..]);
        let runtime_dir = facts
            .xdg_runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", facts.euid)));
        return Ok(Placement {
            manager: Manager::User {
                uid: facts.euid,
                runtime_dir,
            },
            slice,
            before,
        });
    }
    if facts.euid != 0 {
        return Err(NoPlacement(format!(
            "this process ({path}) is neither in its user's manager nor root: \
             systemd creates units for it only with polkit's consent"
        )));
    }
    if !facts.system_private_socket {
        return Err(NoPlacement("/run/systemd/private is missing".into()));
    }
    let (slice, before) = innermost_unit(&components);
    // A root login session's slice (user-0.slice) is not a place for VMs:
    // the system manager's default (system.slice) is.
    let slice = slice.filter(|s| !s.starts_with("user-") && s != "user.slice");
    Ok(Placement {
        manager: Manager::System,
        slice,
        before,
    })
}

/// Read the [`Facts`] of this process.
pub fn facts() -> Facts {
    let euid = rustix::process::geteuid().as_raw();
    let xdg_runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let runtime_dir = xdg_runtime_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{euid}")));
    Facts {
        proc_cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        euid,
        systemd_booted: super::service_manager::systemd_running(),
        system_private_socket: Path::new("/run/systemd/private").exists(),
        xdg_runtime_dir,
        user_private_socket: runtime_dir.join("systemd/private").exists(),
    }
}

/// Where this process can place children, or why it cannot.
pub fn placement() -> Result<Placement, NoPlacement> {
    decide(&facts())
}

/// The unit this process runs in, as seen from its manager (`None` outside
/// systemd).
pub fn own_unit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = systemd_cgroup_path(&text)?;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    innermost_unit(&components).1
}

/// A scope to start a program in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The unit name, ending in `.scope`.
    pub unit: String,
    pub description: String,
    /// How long systemd lets the scope's processes take to exit after its
    /// SIGTERM (a host agent's whole stop ladder); systemd's default if `None`.
    pub stop_timeout: Option<std::time::Duration>,
}

impl Scope {
    /// A scope name from parts that are already valid in unit names (ASCII
    /// letters, digits, `-`, `_`: instance names are).
    pub fn named(parts: &[&str], description: String) -> Scope {
        Scope {
            unit: format!("{}.scope", parts.join("-")),
            description,
            stop_timeout: None,
        }
    }
}

/// `program` run inside `scope`: `systemd-run --scope ... -- program args`,
/// with the environment it needs. Pure.
pub fn wrap(placement: &Placement, scope: &Scope, program: &Program) -> Program {
    let mut args: Vec<OsString> = Vec::new();
    let mut env = program.env.clone();
    if let Manager::User { runtime_dir, .. } = &placement.manager {
        args.push("--user".into());
        env.push(("XDG_RUNTIME_DIR".into(), runtime_dir.clone().into()));
    }
    args.extend(
        [
            "--scope",
            "--quiet",
            "--collect",
            &format!("--unit={}", scope.unit),
            &format!("--description={}", scope.description),
        ]
        .map(OsString::from),
    );
    if let Some(slice) = &placement.slice {
        args.push(format!("--slice={slice}").into());
    }
    if let Some(before) = &placement.before {
        args.push(format!("--property=Before={before}").into());
    }
    if let Some(timeout) = scope.stop_timeout {
        args.push(format!("--property=TimeoutStopSec={}", timeout.as_secs().max(1)).into());
    }
    args.push("--".into());
    args.push(program.path.as_os_str().to_owned());
    args.extend(program.args.iter().cloned());
    Program {
        path: PathBuf::from(SYSTEMD_RUN),
        args,
        env,
    }
}

/// systemd's tool that runs a command in a new scope.
pub const SYSTEMD_RUN: &str = "systemd-run";

/// Whether a program's log ends with systemd-run's own failure to create
/// its scope (the program then never ran), and what it said.
pub fn scope_failure(log_tail: &str) -> Option<String> {
    log_tail
        .lines()
        .rev()
        .find(|line| line.contains("Failed to start transient scope unit"))
        .map(|line| line.trim().to_string())
}

/// The systemd unit a process is in now, from `/proc/PID/cgroup`.
pub fn unit_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = systemd_cgroup_path(&text)?;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    innermost_unit(&components).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cgroup: &str, euid: u32) -> Facts {
        Facts {
            proc_cgroup: cgroup.into(),
            euid,
            systemd_booted: true,
            system_private_socket: true,
            xdg_runtime_dir: None,
            user_private_socket: true,
        }
    }

    const HYBRID_USER_SERVICE: &str = "9:name=systemd:/user.slice/user-1000.slice/user@1000.service/app.slice/vmkeep-web.service\n\
        8:pids:/user.slice/user-1000.slice/user@1000.service\n\
        0::/user.slice/user-1000.slice/user@1000.service/app.slice/vmkeep-web.service\n";

    #[test]
    fn the_systemd_path_comes_from_name_systemd_else_the_unified_line() {
        assert_eq!(
            systemd_cgroup_path(HYBRID_USER_SERVICE),
            Some("/user.slice/user-1000.slice/user@1000.service/app.slice/vmkeep-web.service")
        );
        assert_eq!(
            systemd_cgroup_path("0::/system.slice/vmkeep-root-web.service\n"),
            Some("/system.slice/vmkeep-root-web.service")
        );
        assert_eq!(systemd_cgroup_path("4:memory:/x\n"), None);
        assert_eq!(systemd_cgroup_path("garbage"), None);
    }

    #[test]
    fn a_user_service_asks_its_user_manager_and_orders_the_scope_before_itself() {
        let placement = decide(&facts(HYBRID_USER_SERVICE, 1000)).unwrap();
        assert_eq!(
            placement,
            Placement {
                manager: Manager::User {
                    uid: 1000,
                    runtime_dir: "/run/user/1000".into()
                },
                slice: Some("app.slice".into()),
                before: Some("vmkeep-web.service".into()),
            }
        );
    }

    #[test]
    fn root_asks_the_system_manager() {
        let placement = decide(&facts("0::/system.slice/vmkeep-daemon.service\n", 0)).unwrap();
        assert_eq!(placement.manager, Manager::System);
        assert_eq!(placement.slice.as_deref(), Some("system.slice"));
        assert_eq!(placement.before.as_deref(), Some("vmkeep-daemon.service"));
        // A root login session: ordered before the session, in the default slice.
        let session = decide(&facts(
            "1:name=systemd:/user.slice/user-0.slice/session-3.scope\n",
            0,
        ))
        .unwrap();
        assert_eq!(session.slice, None);
        assert_eq!(session.before.as_deref(), Some("session-3.scope"));
    }

    #[test]
    fn who_cannot_be_placed_is_told_why() {
        // A system service running as a user: systemd would need polkit.
        let err = decide(&facts("0::/system.slice/vmkeep-ann-web.service\n", 1000)).unwrap_err();
        assert!(err.0.contains("polkit"), "{err}");
        // A user's login session is outside the user manager.
        assert!(
            decide(&facts(
                "0::/user.slice/user-1000.slice/session-2.scope\n",
                1000
            ))
            .is_err()
        );
        // Another user's manager is not ours.
        assert!(decide(&facts(HYBRID_USER_SERVICE, 1001)).is_err());
        let mut no_systemd = facts(HYBRID_USER_SERVICE, 1000);
        no_systemd.systemd_booted = false;
        assert!(decide(&no_systemd).is_err());
        let mut no_socket = facts(HYBRID_USER_SERVICE, 1000);
        no_socket.user_private_socket = false;
        assert!(decide(&no_socket).unwrap_err().0.contains("private socket"));
    }

    #[test]
    fn the_wrapped_command_runs_the_program_in_the_scope() {
        let placement = decide(&facts(HYBRID_USER_SERVICE, 1000)).unwrap();
        let mut scope = Scope::named(&["vmkeep", "web", "qemu", "42"], "QEMU of web".into());
        scope.stop_timeout = Some(std::time::Duration::from_secs(47));
        let qemu = Program::new(Path::new("/usr/bin/qemu-system-x86_64"), &["-m", "256"]);
        let wrapped = wrap(&placement, &scope, &qemu);
        assert_eq!(wrapped.path, Path::new("systemd-run"));
        let args: Vec<String> = wrapped
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--user",
                "--scope",
                "--quiet",
                "--collect",
                "--unit=vmkeep-web-qemu-42.scope",
                "--description=QEMU of web",
                "--slice=app.slice",
                "--property=Before=vmkeep-web.service",
                "--property=TimeoutStopSec=47",
                "--",
                "/usr/bin/qemu-system-x86_64",
                "-m",
                "256",
            ]
        );
        assert_eq!(
            wrapped.env,
            [(
                OsString::from("XDG_RUNTIME_DIR"),
                OsString::from("/run/user/1000")
            )]
        );
    }

    #[test]
    fn a_failed_scope_is_recognised_in_the_log() {
        assert_eq!(
            scope_failure("x\nFailed to start transient scope unit: Access denied\n"),
            Some("Failed to start transient scope unit: Access denied".into())
        );
        assert_eq!(scope_failure("qemu-system-x86_64: -m 1: bad size\n"), None);
    }
}
