//! The `vmkeep` binary: parse, run, map the outcome to an exit code.
//!
//! Exit codes: 0 success; 1 failure (the message says what and how to fix
//! it); 2 invalid command line; `vmkeep shell` passes the guest command's
//! code through.

use clap::Parser;

fn main() {
    let cli = vmkeep::cli::Cli::parse();
    vmkeep::logging::init(matches!(cli.verb, vmkeep::cli::Verb::Daemon(_)));
    let code = match vmkeep::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
