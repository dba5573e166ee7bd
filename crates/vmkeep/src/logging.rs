//! Log set-up shared by the `vmkeep` and `vmkeep-hostagent` binaries.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Log to stderr, filtered by `VMKEEP_LOG` (`debug`, or per module such as
/// `vmkeep::daemon=debug,info`). Long-running processes (host agent, daemon)
/// log what they do, plainly, into their log files; commands only warnings,
/// coloured on a terminal.
pub fn init(long_running: bool) {
    let default_level = if long_running {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    let filter = match std::env::var("VMKEEP_LOG") {
        Ok(text) => text.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!(
                "warning: ignoring VMKEEP_LOG={text:?} ({e}); write a level such as `debug`, \
                 or `vmkeep::daemon=debug,info`"
            );
            Targets::new().with_default(default_level)
        }),
        Err(_) => Targets::new().with_default(default_level),
    };
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!long_running && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
}
