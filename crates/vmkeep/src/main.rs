//! The `vmkeep` binary: parse, run, map the outcome to an exit code.
//!
//! Exit codes: 0 success; 1 failure (the message says what and how to fix
//! it); 2 invalid command line; `vmkeep shell` passes the guest command's
//! code through.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = vmkeep::cli::Cli::parse();
    // Long-running processes log what they do; commands only warnings.
    let agent = matches!(
        cli.verb,
        vmkeep::cli::Verb::Hostagent(_) | vmkeep::cli::Verb::Daemon(_)
    );
    let default_level = if agent { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VMKEEP_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(!agent && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match vmkeep::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
