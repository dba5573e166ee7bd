//! Why the daemon could not run, or its unit not be installed.

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::os::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("a vmkeep daemon already supervises {} (pid {pid}); stop it first", root.display())]
    AlreadyRunning { root: PathBuf, pid: String },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Engine(#[from] EngineError),

    #[error("HOME is not set; set it to your home directory")]
    NoHome,

    #[error(
        "systemd is not running here (no /run/systemd/system), so there is nothing to install into; \
         `vmkeep daemon install --dry-run` prints the unit, or run `vmkeep daemon` under your own supervisor"
    )]
    NoSystemd,

    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl DaemonError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> DaemonError {
        let path = path.into();
        move |source| DaemonError::Io {
            action,
            path,
            source,
        }
    }

    pub fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
        move |source| DaemonError::Setup { what, source }
    }
}
