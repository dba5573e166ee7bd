//! The engine's one error type. Each variant is a message for the user
//! (what went wrong and how to fix it) and has a [`ErrorKind`], from which
//! front ends derive their exit codes.

use std::path::PathBuf;

use crate::autostart::error::AutostartError;
use crate::instance::InstanceName;
use crate::instance::config::ByteSize;
use crate::instance::home::LookupError;
use crate::instance::status::Broken;

/// What kind of failure it is: the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// There is no such instance.
    NotFound,
    /// A config or template is invalid.
    InvalidConfig,
    /// The instance's state does not allow the operation now.
    WrongState,
    /// The VM did not come up.
    StartFailed,
    /// The VM could not be stopped (it may still run).
    StopFailed,
    /// The command line names something that does not exist or cannot apply.
    Usage,
    /// Anything else: the host (files, tools, processes).
    Host,
}

/// What kind of failure an autostart operation's error is.
impl From<&AutostartError> for ErrorKind {
    fn from(error: &AutostartError) -> ErrorKind {
        match error {
            AutostartError::NoInstance { .. } => ErrorKind::NotFound,
            AutostartError::Config(_) | AutostartError::SuspendUnderLaunchd { .. } => {
                ErrorKind::InvalidConfig
            }
            AutostartError::UnitStopped { .. } | AutostartError::DidNotComeUp { .. } => {
                ErrorKind::StartFailed
            }
            AutostartError::StillRunning { .. } => ErrorKind::StopFailed,
            AutostartError::UserForLogin { .. } | AutostartError::NoSuchUser(_) => ErrorKind::Usage,
            AutostartError::Spec(_)
            | AutostartError::Home(_)
            | AutostartError::SocketPath(_)
            | AutostartError::AlreadyRegistered { .. }
            | AutostartError::NotOurs { .. }
            | AutostartError::NotOursToRemove { .. }
            | AutostartError::ManagerNotRunning { .. }
            | AutostartError::NeedsRoot { .. }
            | AutostartError::RemovalNeedsRoot { .. }
            | AutostartError::LingerNeedsRoot { .. }
            | AutostartError::Rejected { .. }
            | AutostartError::Tool(_)
            | AutostartError::Inspect(_)
            | AutostartError::Io { .. } => ErrorKind::Host,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Lookup(#[from] LookupError),

    #[error("{} is in use: pid {pid} holds {file}; stop it with the tool that started it, then delete again", dir.display())]
    ForeignInUse {
        dir: PathBuf,
        file: String,
        pid: u32,
    },

    #[error(transparent)]
    Home(#[from] crate::instance::home::HomeError),

    #[error(transparent)]
    SocketPath(#[from] crate::instance::layout::SocketPathTooLong),

    #[error(transparent)]
    Config(#[from] crate::instance::config::ConfigError),

    #[error(transparent)]
    Create(#[from] crate::engine::create::CreateError),

    #[error(transparent)]
    Import(Box<crate::engine::import::ImportError>),

    /// A change to a config was refused; the config is unchanged.
    #[error(transparent)]
    Edit(Box<crate::engine::edit::EditError>),

    #[error("{name} is broken: {}\n  {}", broken.message(), broken.hint().replace("NAME", name.as_str()))]
    Broken { name: InstanceName, broken: Broken },

    /// The command line asks for something that cannot be (a contradiction,
    /// a malformed argument); the message says what to give instead.
    #[error("{message}")]
    Usage { message: String },

    /// The operation makes no sense in the instance's state; the message
    /// says what the state is and what to do.
    #[error("{message}")]
    WrongState { name: InstanceName, message: String },

    /// `upgrade`: the agent did not move onto the new build; it runs on
    /// with the old one and nothing was stopped.
    #[error("{name} was not upgraded: {reason}; it runs on unchanged (host agent pid {agent_pid})")]
    NotUpgraded {
        name: InstanceName,
        agent_pid: u32,
        reason: String,
    },

    #[error("{name} did not start: {reason}\n  host agent log: {log}")]
    StartFailed {
        name: InstanceName,
        reason: String,
        log: PathBuf,
    },

    #[error(
        "{name} cannot start: the filesystem of {filesystem} has {} free, and a start needs at least {}; \
         free some space there (or move VMKEEP_HOME) and start again",
        ByteSize(*free).approx(), ByteSize(*needed).approx()
    )]
    NoRoom {
        name: InstanceName,
        filesystem: PathBuf,
        free: u64,
        needed: u64,
    },

    #[error("{name} was not suspended: {reason}")]
    SuspendFailed { name: InstanceName, reason: String },

    /// `upgrade --qemu` did not move it (it runs on its QEMU, or, when the
    /// resume failed, its state is saved).
    #[error("{name} was not moved onto the QEMU installed now: {reason}")]
    QemuNotUpgraded { name: InstanceName, reason: String },

    /// QEMU paused it and it cannot run on yet (the cause lasts).
    #[error("{name} is paused and cannot run on yet: {reason}")]
    StillPaused { name: InstanceName, reason: String },

    #[error("{name} did not come up: it is {status}")]
    DidNotComeUp { name: InstanceName, status: String },

    #[error(
        "{name} is still {status} after {attempts} attempts to stop it; try `vmkeep stop --force {name}`"
    )]
    StillRunning {
        name: InstanceName,
        status: String,
        attempts: usize,
    },

    /// No ssh server to reach (`why` says so, naming the instance).
    #[error("{why}")]
    NoSsh { name: InstanceName, why: String },

    /// The host agent's API refused or failed a request.
    #[error(transparent)]
    Agent(#[from] crate::hostagent::api::ApiError),

    /// The QEMU driver could not tell what runs.
    #[error("find the QEMU of {name}: {source}")]
    Driver {
        name: InstanceName,
        #[source]
        source: crate::driver::qemu::QemuError,
    },

    /// A saved state could not be handled.
    #[error("{action} the saved state of {name}: {source}")]
    Snapshot {
        action: &'static str,
        name: InstanceName,
        #[source]
        source: crate::driver::qemu::snapshot::StateError,
    },

    /// A copy into a guest did not complete.
    #[error("copy into {name}: {source}")]
    CopyIn {
        name: InstanceName,
        #[source]
        source: crate::session::copy_in::CopyInError,
    },

    /// A copy out of a guest did not complete.
    #[error("copy from {name}: {source}")]
    CopyOut {
        name: InstanceName,
        #[source]
        source: crate::session::copy_out::CopyOutError,
    },

    /// A host path given on the command line cannot be used.
    #[error("{}: {source}", path.display())]
    HostPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} pid {pid} did not exit after SIGKILL")]
    Unkillable { what: &'static str, pid: u32 },

    #[error("{path} is locked by pid {pid}, which is not this instance's QEMU; not touching it")]
    ForeignLockHolder { path: PathBuf, pid: u32 },

    #[error(transparent)]
    Autostart(#[from] crate::autostart::error::AutostartError),

    #[error(transparent)]
    Image(#[from] crate::image::tiny::TinyImageError),

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Process {
        context: String,
        source: std::io::Error,
    },
}

impl From<crate::engine::import::ImportError> for EngineError {
    fn from(error: crate::engine::import::ImportError) -> EngineError {
        EngineError::Import(Box::new(error))
    }
}

impl From<crate::engine::edit::EditError> for EngineError {
    fn from(error: crate::engine::edit::EditError) -> EngineError {
        EngineError::Edit(Box::new(error))
    }
}

impl From<crate::driver::qemu::disk_image::DiskImageError> for EngineError {
    fn from(error: crate::driver::qemu::disk_image::DiskImageError) -> EngineError {
        crate::engine::import::ImportError::from(error).into()
    }
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Lookup(LookupError::NotFound { .. }) => ErrorKind::NotFound,
            EngineError::Config(_) => ErrorKind::InvalidConfig,
            EngineError::Edit(e) => e.kind(),
            EngineError::Import(e) => e.kind(),
            EngineError::Create(e) if e.is_invalid_template() => ErrorKind::InvalidConfig,
            EngineError::Create(crate::engine::create::CreateError::Exists { .. }) => {
                ErrorKind::WrongState
            }
            EngineError::Broken { .. }
            | EngineError::WrongState { .. }
            | EngineError::Lookup(LookupError::Foreign { .. })
            | EngineError::ForeignInUse { .. } => ErrorKind::WrongState,
            EngineError::StartFailed { .. }
            | EngineError::DidNotComeUp { .. }
            | EngineError::StillPaused { .. } => ErrorKind::StartFailed,
            EngineError::StillRunning { .. }
            | EngineError::Unkillable { .. }
            | EngineError::SuspendFailed { .. } => ErrorKind::StopFailed,
            EngineError::QemuNotUpgraded { .. } => ErrorKind::WrongState,
            EngineError::Usage { .. } => ErrorKind::Usage,
            // The agent said the VM's state does not allow it now.
            EngineError::Agent(crate::hostagent::api::ApiError::Refused {
                code: crate::hostagent::api::ErrorCode::WrongState,
                ..
            }) => ErrorKind::WrongState,
            EngineError::Autostart(e) => ErrorKind::from(e),
            EngineError::Create(_)
            | EngineError::NoRoom { .. }
            | EngineError::Home(_)
            | EngineError::Lookup(LookupError::SocketPath(_) | LookupError::Read { .. })
            | EngineError::SocketPath(_)
            | EngineError::ForeignLockHolder { .. }
            | EngineError::Image(_)
            | EngineError::NoSsh { .. }
            | EngineError::Agent(_)
            | EngineError::Driver { .. }
            | EngineError::Snapshot { .. }
            | EngineError::Io { .. }
            | EngineError::NotUpgraded { .. }
            | EngineError::CopyIn { .. }
            | EngineError::CopyOut { .. }
            | EngineError::HostPath { .. }
            | EngineError::Process { .. } => ErrorKind::Host,
        }
    }

    /// An I/O error while acting on `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| EngineError::Io {
            action,
            path,
            source,
        }
    }

    /// An error of a process operation (spawn, signal, wait).
    pub fn process(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| EngineError::Process { context, source }
    }
}
