//! The one gate for reaching into a guest, for every verb that does (`shell`,
//! `ssh-config`, and `copy` to come): whether the status lets commands run
//! in the guest (`Status::can_exec`), and which way leads in: the guest
//! agent, through the host agent's API (the built-in tiny image), or ssh as
//! the instance's user (cloud images).

use std::path::PathBuf;
use std::time::Duration;

use super::{EngineError, describe, status_of};
use crate::hostagent::api::{ApiClient, ExecRequest, ExecResult};
use crate::image::cloud::{self, CloudError, ImageRecord};
use crate::image::sshkeys;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status};
use crate::os;

/// Longest a command run in the guest may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The way into a guest whose status lets commands run.
#[derive(Debug, Clone)]
pub enum GuestAccess {
    /// The tiny image: commands go to its guest agent.
    Agent(AgentAccess),
    /// A cloud image: ssh as the instance's user.
    Ssh(SshAccess),
}

/// Commands through the host agent's API to the guest agent.
#[derive(Debug, Clone)]
pub struct AgentAccess {
    pub dir: InstanceDir,
}

/// ssh into a cloud image.
#[derive(Debug, Clone)]
pub struct SshAccess {
    pub dir: InstanceDir,
    /// The `Host` the config block defines.
    pub host_alias: String,
    /// An ssh config block for it: port, user, key, forwarding options.
    pub config_block: String,
}

/// The ssh host alias of an instance.
pub fn host_alias(name: &InstanceName) -> String {
    format!("vmkeep-{name}")
}

/// The gate: the way into the guest of `name`, or why there is none now.
pub fn access(home: &Home, name: &InstanceName) -> Result<GuestAccess, EngineError> {
    let dir = home.existing(name)?;
    let status = status_of(&dir)?;
    if !status.can_exec() {
        let next = match &status {
            Status::Suspended => format!("`vmkeep start {name}` resumes it"),
            Status::Paused(reason) => reason.hint().replace("NAME", name.as_str()),
            _ => format!("start it with `vmkeep start {name}`"),
        };
        return Err(EngineError::WrongState {
            name: name.clone(),
            message: format!("{name} is {}, not Running; {next}", describe(&status)),
        });
    }
    if Config::load(&dir.config()).is_ok_and(|c| c.is_cloud()) {
        return Ok(GuestAccess::Ssh(ssh(dir)?));
    }
    Ok(GuestAccess::Agent(AgentAccess { dir }))
}

/// The way in by ssh (`ssh-config`): through the gate, and only into a
/// guest that has an ssh server.
pub fn ssh_access(home: &Home, name: &InstanceName) -> Result<SshAccess, EngineError> {
    match access(home, name)? {
        GuestAccess::Ssh(ssh) => Ok(ssh),
        // The tiny image has no image record, hence no ssh server.
        GuestAccess::Agent(AgentAccess { dir }) => ssh(dir),
    }
}

fn ssh(dir: InstanceDir) -> Result<SshAccess, EngineError> {
    let name = dir.name().clone();
    let record = ImageRecord::load(&dir).map_err(|source: CloudError| EngineError::NoSsh {
        why: format!("{name} does not boot a cloud image, so it has no ssh server: {source}"),
        name: name.clone(),
    })?;
    let port = cloud::ssh_port(&dir).ok_or_else(|| EngineError::NoSsh {
        why: format!("{name} has no ssh port recorded; restart it"),
        name: name.clone(),
    })?;
    let key = sshkeys::key_path(dir.dir().parent().unwrap_or(dir.dir()));
    let host_alias = host_alias(&name);
    let mut config_block = cloud::ssh_config(&host_alias, port, &record.user, &key);
    // ssh.forwardAgent / forwardX11 / forwardX11Trusted
    if let Ok(config) = Config::load(&dir.config()) {
        config_block.push_str(&cloud::ssh_forwarding(&config));
    }
    Ok(SshAccess {
        dir,
        host_alias,
        config_block,
    })
}

impl SshAccess {
    /// Write the config block where ssh is pointed at (`ssh -F`).
    pub fn write_config(&self) -> Result<PathBuf, EngineError> {
        let path = self.dir.ssh_config();
        os::fs::write_atomic(&path, self.config_block.as_bytes(), 0o600)
            .map_err(EngineError::io("write", &path))?;
        Ok(path)
    }
}

impl AgentAccess {
    /// Run a command in the guest; its output and exit code.
    pub fn exec(&self, request: &ExecRequest) -> Result<ExecResult, EngineError> {
        super::runtime()?
            .block_on(ApiClient::new(&self.dir.api_socket()).exec(request, EXEC_TIMEOUT))
            .map_err(EngineError::from)
    }
}
