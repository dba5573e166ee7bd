//! Why an autostart operation failed; each message names the fix.

use std::path::PathBuf;

use crate::os::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum AutostartError {
    #[error(
        "there is no instance {name} in {root}; create it with `vmkeep create {name}` (or see `vmkeep list`)"
    )]
    NoInstance { name: String, root: PathBuf },

    #[error(transparent)]
    Spec(#[from] super::SpecError),

    #[error(transparent)]
    Config(#[from] crate::instance::config::ConfigError),

    #[error(transparent)]
    Home(#[from] crate::instance::home::HomeError),

    #[error(transparent)]
    SocketPath(#[from] crate::instance::layout::SocketPathTooLong),

    #[error(
        "--user is for --condition boot; a login service runs as the user who enables it ({me})"
    )]
    UserForLogin { me: String },

    /// launchd's SIGTERM at a shutdown looks like any other stop, so the
    /// agent could never tell that it should suspend.
    #[error(
        "{name} has onHostShutdown: suspend, but under launchd nothing tells a host shutdown from a stop, \
         so vmkeep cannot suspend it at shutdown (not supported on macOS yet); set onHostShutdown: poweroff in {}, \
         or let `vmkeep daemon` run it (its own shutdown suspends)",
        config.display()
    )]
    SuspendUnderLaunchd { name: String, config: PathBuf },

    #[error("there is no user {0:?}; name an existing user with --user")]
    NoSuchUser(String),

    #[error(
        "{name} already starts at {condition} through {path}; run `vmkeep autostart disable {name}` first"
    )]
    AlreadyRegistered {
        name: String,
        condition: super::Condition,
        path: PathBuf,
    },

    #[error(
        "{path} exists and is not vmkeep's definition for this instance ({found}); \
         remove or rename it, then enable again"
    )]
    NotOurs { path: PathBuf, found: String },

    #[error(
        "{path} has no `managed by vmkeep` line, so vmkeep did not write it; not removing it.\n  \
         remove it yourself if it is obsolete, then run `vmkeep autostart disable {name}` again"
    )]
    NotOursToRemove { path: PathBuf, name: String },

    #[error(
        "{reason}, so {service} cannot be registered with it; nothing was written.\n  \
         `vmkeep autostart show {name}` prints the definition; \
         `vmkeep autostart enable --write-only {name}` writes it without loading it"
    )]
    ManagerNotRunning {
        reason: String,
        service: String,
        name: String,
    },

    #[error(
        "cannot write in {dir}: a {condition} service needs root; run `{sudo} autostart enable {name} --condition {condition}` \
         (it still runs as {user})"
    )]
    NeedsRoot {
        dir: PathBuf,
        condition: super::Condition,
        sudo: String,
        name: String,
        user: String,
    },

    #[error("cannot remove {path}: {dir} needs root; run `sudo vmkeep autostart disable {name}`")]
    RemovalNeedsRoot {
        path: PathBuf,
        dir: PathBuf,
        name: String,
    },

    #[error(
        "starting {name} at boot needs {user}'s systemd manager to run from boot (lingering), \
         which only root can switch on here; nothing was written.\n  \
         run `sudo loginctl enable-linger {user}`, then this command again \
         (or `sudo vmkeep autostart enable {name} --condition boot`)"
    )]
    LingerNeedsRoot { name: String, user: String },

    #[error("{manager} did not accept {path}; nothing was changed: {source}")]
    Rejected {
        manager: super::Manager,
        path: PathBuf,
        source: ToolError,
    },

    #[error("{unit} stopped before {name} ran; see {log} and `journalctl{journal_flag} -u {unit}`")]
    UnitStopped {
        unit: String,
        name: String,
        log: PathBuf,
        journal_flag: &'static str,
    },

    #[error("{name} did not come up under {service} (it is {status}); see {log}")]
    DidNotComeUp {
        name: String,
        service: String,
        status: String,
        log: PathBuf,
    },

    #[error(
        "{name} is still {status} after {manager} stopped {service}; try `vmkeep stop --force {name}`"
    )]
    StillRunning {
        name: String,
        status: String,
        manager: super::Manager,
        service: String,
    },

    #[error(transparent)]
    Tool(#[from] ToolError),

    #[error("cannot inspect the instance: {0}")]
    Inspect(std::io::Error),

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AutostartError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AutostartError::Io {
            action,
            path,
            source,
        }
    }
}
