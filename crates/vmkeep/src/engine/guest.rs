//! The one gate for reaching into a guest, for every verb that does (`shell`,
//! `copy`, `ssh-config`): whether the status lets commands run in the guest
//! (`Status::can_exec`), and the way in: the guest agent, through the host
//! agent's API, for every image (as the instance's user in a cloud image,
//! as root in the tiny one); ssh, for those who ask for it
//! (`ssh-config`), into cloud images.
//!
//! Why the guest agent for cloud images too, and not ssh: one path for every
//! image (the same streaming, flow control, exit codes and signals), no
//! sshd, key or forwarded port needed for `shell` and `copy`, and a session
//! that ends with the link ends its command at once. sshd stays in cloud
//! images for `ssh-config` and whoever wants ssh's own features.

use std::path::PathBuf;
use std::time::Duration;

use super::{EngineError, describe, status_of};
use crate::hostagent::api::SessionClient;
use crate::image::cloud::{self, CloudError, ImageRecord};
use crate::image::sshkeys;
use crate::instance::shares::SharedDir;
use crate::instance::vars::GuestUser;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status};
use crate::os;
use vmkeep_protocol::session::OpenSession;

/// How long opening a session may take (the agent waits up to two minutes
/// for a rebooting guest to come back).
const OPEN_TIMEOUT: Duration = Duration::from_secs(150);

/// The way into a guest whose status lets commands run: its guest agent.
#[derive(Debug, Clone)]
pub struct AgentAccess {
    pub dir: InstanceDir,
    /// Whom sessions run as: the instance's user (cloud images), or `None`
    /// for the agent's own root (the tiny image).
    pub user: Option<GuestUser>,
    /// The shared directories, for Lima's rule on the working directory.
    pub shares: Vec<SharedDir>,
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
pub fn access(home: &Home, name: &InstanceName) -> Result<AgentAccess, EngineError> {
    let dir = running(home, name)?;
    let config = Config::load(&dir.config())?;
    let user = match config.is_cloud() {
        true => Some(
            ImageRecord::load(&dir)
                .map_err(|source: CloudError| EngineError::NoSsh {
                    why: format!(
                        "{name} boots a cloud image but has no image record ({source}); delete and create it again"
                    ),
                    name: name.clone(),
                })?
                .guest_user(),
        ),
        false => None,
    };
    let shares = crate::hostagent::mounts::resolve(&dir, &config).unwrap_or_default();
    Ok(AgentAccess { dir, user, shares })
}

/// The instance's directory, if its status lets commands run in it.
fn running(home: &Home, name: &InstanceName) -> Result<InstanceDir, EngineError> {
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
    Ok(dir)
}

/// The way in by ssh (`ssh-config`): through the gate, and only into a
/// guest that has an ssh server (the tiny image has no image record, hence
/// none).
pub fn ssh_access(home: &Home, name: &InstanceName) -> Result<SshAccess, EngineError> {
    ssh(running(home, name)?)
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
    /// The user name sessions run as (`None`: root).
    pub fn user_name(&self) -> Option<String> {
        self.user.as_ref().map(|u| u.name.clone())
    }

    /// The guest user's home (`/` for the tiny image's root, whose
    /// sessions start there).
    pub fn home(&self) -> String {
        self.user
            .as_ref()
            .map(|u| u.home.clone())
            .unwrap_or_else(|| "/".into())
    }

    /// Open a streaming session (inside a runtime: the session lives on it).
    pub async fn session(&self, open: OpenSession) -> Result<SessionClient, EngineError> {
        SessionClient::open(&self.dir.api_socket(), open, OPEN_TIMEOUT)
            .await
            .map_err(EngineError::from)
    }
}
