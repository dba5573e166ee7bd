//! ssh access to cloud-image instances: `vmkeep ssh-config NAME`, and the
//! ssh half of `vmkeep shell`.
//!
//! `shell NAME` on a cloud image always goes through ssh, as the instance's
//! user (with or without a command), so that it behaves like a login: the
//! user's shell, environment and home directory, a terminal when stdin is
//! one, and ssh's exit code. The tiny image has no sshd and keeps using the
//! guest agent.

use super::CliError;
use crate::engine::guest::{self, SshAccess};
use crate::instance::{Home, InstanceName};
use crate::os;

/// `vmkeep ssh-config NAME`
pub fn print_config(name: &InstanceName) -> Result<i32, CliError> {
    print!(
        "{}",
        guest::ssh_access(&Home::from_env()?, name)?.config_block
    );
    Ok(0)
}

/// Quote one word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The remote command line ssh sends (ssh joins words with spaces and the
/// remote shell splits them again, so each word is quoted).
pub fn remote_command(command: &[String], workdir: Option<&str>) -> Option<String> {
    let quoted = command
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    match (workdir, command.is_empty()) {
        (None, true) => None,
        (None, false) => Some(quoted),
        (Some(dir), true) => Some(format!("cd {} && exec \"$SHELL\" -l", shell_quote(dir))),
        (Some(dir), false) => Some(format!("cd {} && {quoted}", shell_quote(dir))),
    }
}

/// Replace this process with ssh into the instance.
pub fn exec_shell(
    access: &SshAccess,
    command: &[String],
    workdir: Option<&str>,
) -> Result<i32, CliError> {
    let config_path = access.write_config()?;
    let ssh = crate::driver::qemu::find_in_path("ssh").ok_or(CliError::NotInPath {
        program: "ssh",
        install: "Debian/Ubuntu: sudo apt-get install openssh-client",
    })?;
    let mut args: Vec<String> = vec!["-F".into(), config_path.to_string_lossy().into_owned()];
    let remote = remote_command(command, workdir);
    if remote.is_some() && workdir.is_some() && command.is_empty() {
        args.push("-t".into());
    }
    args.push(access.host_alias.clone());
    if let Some(remote) = remote {
        args.push("--".into());
        args.push(remote);
    }
    let source = os::process::exec_replace(&ssh, &args);
    Err(CliError::Exec {
        what: "",
        program: ssh,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn remote_commands_keep_their_words() {
        let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(remote_command(&[], None), None);
        assert_eq!(
            remote_command(&cmd(&["sh", "-c", "echo $0; exit 3"]), None).unwrap(),
            "sh -c 'echo $0; exit 3'"
        );
        assert_eq!(
            remote_command(&cmd(&["pwd"]), Some("/tmp/a b")).unwrap(),
            "cd '/tmp/a b' && pwd"
        );
    }
}
