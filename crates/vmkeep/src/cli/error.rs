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
//! `vmkeep shell` passes the guest command's own exit code through.

use crate::autostart::error::AutostartError;
use crate::engine::{EngineError, ErrorKind};

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
    Autostart(#[from] AutostartError),
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
    /// Failures of the command line's own work (reading a template file,
    /// printing, the daemon's set-up), with their causes.
    #[error("{}", chain(.0))]
    Other(#[from] anyhow::Error),
}

impl From<crate::instance::home::HomeError> for CliError {
    fn from(error: crate::instance::home::HomeError) -> CliError {
        CliError::Engine(error.into())
    }
}

impl From<crate::instance::home::LookupError> for CliError {
    fn from(error: crate::instance::home::LookupError) -> CliError {
        CliError::Engine(error.into())
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Engine(e) => e.kind().into(),
            CliError::Autostart(e) => ErrorKind::from(e).into(),
            CliError::Several { code, .. } => *code,
            CliError::Missing { .. } => ExitCode::NotFound,
            CliError::Other(e) if e.downcast_ref::<CliError>().is_some() => e
                .downcast_ref::<CliError>()
                .map(CliError::exit_code)
                .unwrap_or(ExitCode::Failure),
            CliError::Other(e) => match e.downcast_ref::<EngineError>() {
                Some(engine) => engine.kind().into(),
                None => match e.downcast_ref::<crate::engine::create::CreateError>() {
                    Some(create) if create.is_invalid_template() => ExitCode::InvalidConfig,
                    Some(crate::engine::create::CreateError::Exists { .. }) => ExitCode::WrongState,
                    _ => ExitCode::Failure,
                },
            },
        }
    }
}

/// An error and its causes, each cause once: typed errors of this crate
/// already say their cause in their own message, which a plain `{:#}` would
/// then repeat ("cannot write X: No space left: No space left").
fn chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write /x: {0}")]
        struct Write(#[source] std::io::Error);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let error = anyhow::Error::new(Write(full)).context("cannot create a");
        let text = chain(&error);
        assert_eq!(text.matches("No space left").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot create a: cannot write /x: "),
            "{text}"
        );
    }

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
}
