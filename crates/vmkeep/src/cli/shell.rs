//! `vmkeep shell NAME -- COMMAND...`: run a command in the guest; its
//! output and exit code become vmkeep's. The way in is the engine's one
//! gate (`engine::guest`): the guest agent for the tiny image, ssh for
//! cloud images (see `ssh.rs`).

use std::io::{IsTerminal, Read, Write};

use super::{CliError, ShellArgs};
use crate::engine::guest::{self, GuestAccess};
use crate::hostagent::api::ExecRequest;
use crate::instance::Home;

pub fn run(args: ShellArgs) -> Result<i32, CliError> {
    let access = match guest::access(&Home::from_env()?, &args.name)? {
        GuestAccess::Ssh(ssh) => {
            return super::ssh::exec_shell(&ssh, &args.command, args.workdir.as_deref());
        }
        GuestAccess::Agent(agent) => agent,
    };
    if args.command.is_empty() {
        return Err(CliError::Usage(format!(
            "the tiny image has no interactive shell; give a command: `vmkeep shell {} -- COMMAND`",
            args.name
        )));
    }
    let mut stdin = Vec::new();
    if !std::io::stdin().is_terminal() {
        std::io::stdin().read_to_end(&mut stdin)?;
    }
    let request = ExecRequest {
        argv: args.command.clone(),
        stdin,
        env: Vec::new(),
        cwd: args.workdir.clone(),
    };
    let result = access.exec(&request)?;
    std::io::stdout().write_all(&result.stdout)?;
    std::io::stderr().write_all(&result.stderr)?;
    std::io::stdout().flush()?;
    Ok(result.exit_code)
}
