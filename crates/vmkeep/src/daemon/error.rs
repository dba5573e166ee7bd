//! Why the daemon could not run, or its unit not be installed. Its file and
//! process failures are the engine's (`EngineError::io`, `::process`).

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::os::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("a vmkeep daemon already supervises {} (pid {pid}); stop it first", root.display())]
    AlreadyRunning { root: PathBuf, pid: String },

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
