//! ssh access to cloud-image instances: `vmkeep ssh-config NAME`, and the
//! ssh half of `vmkeep shell`.
//!
//! `shell NAME` on a cloud image always goes through ssh, as the instance's
//! user (with or without a command), so that it behaves like a login: the
//! user's shell, environment and home directory, a terminal when stdin is
//! one, and ssh's exit code. The tiny image has no sshd and keeps using the
//! guest agent.

use anyhow::{Context, bail};

use crate::image::cloud::{self, ImageRecord};
use crate::image::sshkeys;
use crate::instance::{InstanceDir, InstanceName, Status};
use crate::os;

/// The ssh host alias of an instance.
pub fn host_alias(name: &InstanceName) -> String {
    format!("vmkeep-{name}")
}

/// The ssh config block of a running cloud-image instance.
pub fn config_block(dir: &InstanceDir) -> anyhow::Result<String> {
    let name = dir.name();
    let status = crate::engine::status_of(dir)?;
    if status != Status::Running {
        bail!(
            "{name} is {}, not Running; start it with `vmkeep start {name}`",
            crate::engine::describe(&status)
        );
    }
    let record = ImageRecord::load(dir)
        .with_context(|| format!("{name} does not boot a cloud image, so it has no ssh server"))?;
    let port = cloud::ssh_port(dir)
        .with_context(|| format!("{name} has no ssh port recorded; restart it"))?;
    let key = sshkeys::key_path(dir.dir().parent().unwrap_or(dir.dir()));
    let mut block = cloud::ssh_config(&host_alias(name), port, &record.user, &key);
    // ssh.forwardAgent / forwardX11 / forwardX11Trusted
    if let Ok(config) = crate::instance::Config::load(&dir.config()) {
        block.push_str(&cloud::ssh_forwarding(&config));
    }
    Ok(block)
}

/// `vmkeep ssh-config NAME`
pub fn print_config(name: &InstanceName) -> anyhow::Result<i32> {
    let dir = crate::instance::Home::from_env()?.existing(name)?;
    print!("{}", config_block(&dir)?);
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
    dir: &InstanceDir,
    command: &[String],
    workdir: Option<&str>,
) -> anyhow::Result<i32> {
    let block = config_block(dir)?;
    let config_path = dir.ssh_config();
    os::fs::write_atomic(&config_path, block.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let ssh = crate::driver::qemu::find_in_path("ssh").context(
        "ssh was not found in PATH; install it (Debian/Ubuntu: sudo apt-get install openssh-client)",
    )?;
    let mut args: Vec<String> = vec!["-F".into(), config_path.to_string_lossy().into_owned()];
    let remote = remote_command(command, workdir);
    if remote.is_some() && workdir.is_some() && command.is_empty() {
        args.push("-t".into());
    }
    args.push(host_alias(dir.name()));
    if let Some(remote) = remote {
        args.push("--".into());
        args.push(remote);
    }
    let error = os::process::exec_replace(&ssh, &args);
    bail!("cannot run {}: {error}", ssh.display())
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
