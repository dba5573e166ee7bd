//! `vmkeep ssh-config NAME`: an ssh config block for a running cloud-image
//! instance, for those who want ssh itself (`ssh -F <(vmkeep ssh-config
//! NAME) vmkeep-NAME`, scp, rsync, editors' remote modes). `vmkeep shell`
//! and `vmkeep copy` go through the guest agent instead (`engine::guest`
//! says why).

use super::CliError;
use crate::engine::guest;
use crate::instance::{Home, InstanceName};

/// `vmkeep ssh-config NAME`
pub fn print_config(name: &InstanceName) -> Result<i32, CliError> {
    print!(
        "{}",
        guest::ssh_access(&Home::from_env()?, name)?.config_block
    );
    Ok(0)
}
