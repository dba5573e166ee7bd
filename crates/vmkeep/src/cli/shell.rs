//! `vmkeep shell NAME -- COMMAND...`: run a command in the guest through the
//! guest agent; its output and exit code become vmkeep's. Cloud images go
//! through ssh instead (see `ssh.rs`).

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::bail;

use super::ShellArgs;
use super::util;
use crate::hostagent::api::{ApiClient, ExecRequest};
use crate::instance::Config;

pub fn run(args: ShellArgs) -> anyhow::Result<i32> {
    let dir = crate::instance::Home::from_env()?.existing(&args.name)?;
    let status = crate::engine::status_of(&dir)?;
    if !status.can_exec() {
        let name = &args.name;
        let next = match &status {
            crate::instance::Status::Suspended => format!("`vmkeep start {name}` resumes it"),
            crate::instance::Status::Paused(reason) => reason.hint().replace("NAME", name.as_str()),
            _ => format!("start it with `vmkeep start {name}`"),
        };
        let refused = crate::engine::EngineError::WrongState {
            name: name.clone(),
            message: format!(
                "{name} is {}, not Running; {next}",
                crate::engine::describe(&status)
            ),
        };
        return Err(super::CliError::from(refused).into());
    }
    if Config::load(&dir.config()).is_ok_and(|c| c.is_cloud()) {
        return super::ssh::exec_shell(&dir, &args.command, args.workdir.as_deref());
    }
    if args.command.is_empty() {
        bail!(
            "the tiny image has no interactive shell; give a command: `vmkeep shell {} -- COMMAND`",
            args.name
        );
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
    let result = util::runtime()?.block_on(
        ApiClient::new(&dir.api_socket()).exec(&request, Duration::from_secs(24 * 3600)),
    )?;
    std::io::stdout().write_all(&result.stdout)?;
    std::io::stderr().write_all(&result.stderr)?;
    std::io::stdout().flush()?;
    Ok(result.exit_code)
}
