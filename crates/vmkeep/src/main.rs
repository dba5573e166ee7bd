//! The `vmkeep` binary: parse, run, map the outcome to an exit code (the
//! codes are documented in `cli::error`: 0 success, 1 failure, 2 invalid
//! command line, 3 no such instance, 4 invalid config, 5 wrong state, 6 the
//! start failed, 7 the stop or suspend failed; `vmkeep shell` passes the guest
//! command's code through). Invoked as `lima`, it is Lima's `lima`
//! (`vmkeep::cli::lima_args`). Run as `vmkeep --sandboxed ...` (a hidden
//! first argument, before the parser), it is the sandbox shim that becomes
//! virtiofsd (`vmkeep::os::confine`).

use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == vmkeep::os::confine::SHIM_FLAG)
    {
        std::process::exit(vmkeep::os::confine::run_shim(&args[2..]));
    }
    let cli = vmkeep::cli::Cli::parse_from(vmkeep::cli::lima_args(args));
    vmkeep::logging::init(matches!(cli.verb, vmkeep::cli::Verb::Daemon(_)));
    let code = match vmkeep::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code() as i32
        }
    };
    std::process::exit(code);
}
