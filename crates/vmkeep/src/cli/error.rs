//! The command line's errors and exit codes.
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | success |
//! | 1 | failure (the host: files, tools, processes; the message says what) |
//! | 2 | invalid command line (also a `--user` naming nobody) |
//! | 3 | no such instance |
//! | 4 | invalid config or template |
//! | 5 | the instance's state does not allow it (running, halted, broken, ...) |
//! | 6 | the start failed: the VM did not come up |
//! | 7 | the stop or suspend failed: the VM may still run |
//!
//! `vmkeep shell` passes the guest command's own exit code through. Each
//! error knows its code: an engine error by its [`ErrorKind`], the command
//! line's own by its variant.

use std::path::PathBuf;

use crate::daemon::DaemonError;
use crate::engine::{EngineError, ErrorKind};
use crate::instance::home::{HomeError, LookupError};

/// An exit code of `vmkeep` (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    Success = 0,
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    InvalidConfig = 4,
    WrongState = 5,
    StartFailed = 6,
    StopFailed = 7,
}

impl From<ErrorKind> for ExitCode {
    fn from(kind: ErrorKind) -> ExitCode {
        match kind {
            ErrorKind::NotFound => ExitCode::NotFound,
            ErrorKind::InvalidConfig => ExitCode::InvalidConfig,
            ErrorKind::WrongState => ExitCode::WrongState,
            ErrorKind::StartFailed => ExitCode::StartFailed,
            ErrorKind::StopFailed => ExitCode::StopFailed,
            ErrorKind::Usage => ExitCode::Usage,
            ErrorKind::Host => ExitCode::Failure,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Several instances failed (start or stop of many); each message is
    /// already printed.
    #[error("{failed} of {total} failed")]
    Several {
        failed: usize,
        total: usize,
        code: ExitCode,
    },
    /// Names that are not instances (`list NAME...`).
    #[error("no such instance: {}; `vmkeep list` shows them all", names.join(", "))]
    Missing { names: Vec<String> },
    /// The command line asks for what cannot be; the message says what to
    /// give instead.
    #[error("{0}")]
    Usage(String),
    /// Writing what the command prints (or reading what it passes on)
    /// failed.
    #[error("{0}")]
    Terminal(#[source] std::io::Error),
    /// `--format`'s template did not render.
    #[error(transparent)]
    Format(#[from] crate::text::gotmpl::TemplateError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] serde_yaml_ng::Error),
    /// A program the command runs is not installed.
    #[error("{program} was not found in PATH; install it ({install})")]
    NotInPath {
        program: &'static str,
        install: &'static str,
    },
    /// A program to run in place of `vmkeep` (ssh, the host agent) did not.
    #[error("cannot run {what}{}: {source}", program.display())]
    Exec {
        /// What the program is, for the message ("the host agent ").
        what: &'static str,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<HomeError> for CliError {
    fn from(error: HomeError) -> CliError {
        CliError::Engine(error.into())
    }
}

impl From<LookupError> for CliError {
    fn from(error: LookupError) -> CliError {
        CliError::Engine(error.into())
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> CliError {
        CliError::Terminal(error)
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Engine(e) => e.kind().into(),
            CliError::Daemon(DaemonError::Engine(e)) => e.kind().into(),
            CliError::Several { code, .. } => *code,
            CliError::Missing { .. } => ExitCode::NotFound,
            CliError::Usage(_) => ExitCode::Usage,
            CliError::Daemon(_)
            | CliError::Terminal(_)
            | CliError::Format(_)
            | CliError::Json(_)
            | CliError::Yaml(_)
            | CliError::NotInPath { .. }
            | CliError::Exec { .. } => ExitCode::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::InvalidConfig,
            ErrorKind::WrongState,
            ErrorKind::StartFailed,
            ErrorKind::StopFailed,
            ErrorKind::Usage,
            ErrorKind::Host,
        ];
        let codes: std::collections::BTreeSet<i32> =
            kinds.iter().map(|k| ExitCode::from(*k) as i32).collect();
        assert_eq!(codes.len(), kinds.len(), "distinct codes");
        assert!(!codes.contains(&0));
    }

    #[test]
    fn usage_and_wrong_state_have_their_codes_whoever_finds_them() {
        let usage = CliError::Usage("--format x".into());
        assert_eq!(usage.exit_code(), ExitCode::Usage);
        let engine_usage = CliError::from(EngineError::Usage {
            message: "give one".into(),
        });
        assert_eq!(engine_usage.exit_code(), ExitCode::Usage);
        let exists = CliError::from(EngineError::Create(
            crate::engine::create::CreateError::Exists {
                name: "a".parse().unwrap(),
                dir: "/h/a".into(),
            },
        ));
        assert_eq!(exists.exit_code(), ExitCode::WrongState);
    }
}
