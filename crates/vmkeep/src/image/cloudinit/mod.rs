//! The cloud-init NoCloud seed of a cloud-image instance: rendering
//! (`meta-data`, `user-data`; pure) and writing the `cidata` volume (a FAT
//! image written with the `fatfs` crate; no host tool needed).
//!
//! The seed also carries the static guest agent as a file next to
//! `user-data`. A `bootcmd` (run at every boot, before the agent's service
//! starts) copies it into the guest, so the guest always runs the agent of
//! the vmkeep that started it. Carrying the binary as a file rather than as
//! base64 in `user-data` keeps cloud-init from parsing megabytes of YAML
//! (slow under TCG).
//!
//! No `network-config` is written: cloud-init's fallback (DHCP on the first
//! NIC) is what QEMU's user-mode network expects.
//!
//! Lima's provision modes map onto cloud-init like this:
//! - `boot`: `bootcmd` (every boot, early, by /bin/sh);
//! - `data`: the file is carried in the seed and installed by a per-boot
//!   script (`scripts-per-boot`, after users exist and before `runcmd` on the
//!   first boot), every boot unless `overwrite: false`;
//! - `dependency`, then `system`, `user` and `yq` in their order: `runcmd`,
//!   once, at the first boot (`yq` edits run with the guest's python3, which
//!   cloud-init itself needs);
//! - `probes`: run as the user until each passes, at the end of `runcmd` on
//!   the first boot and from the per-boot script on later ones; the guest
//!   agent reports ready only after cloud-init, and so the probes, finished.
//!
//! Lima's `containerd` is a first-boot script after the dependency steps
//! ([`containerd`]); `user.passwordlessSudo: false` gives the user a random
//! password in `~/password` and a sudo rule that asks for it.
//!
//! This file holds what the seed is made of and `meta-data`; [`user_data`]
//! renders `user-data`, [`volume`] writes the volume.

pub mod containerd;
pub mod user_data;
pub mod volume;

use crate::instance::config::Config;
use crate::instance::identity::hostname;
use crate::instance::vars::GuestUser;

pub use self::user_data::{mount_share_command, provision_path, shell_quote, user_data};
pub use self::volume::write_seed;

/// FAT volume label cloud-init looks for (it accepts `CIDATA` and `cidata`).
pub const VOLUME_LABEL: &[u8; 11] = b"CIDATA     ";
/// File name of the guest agent on the seed volume.
pub const AGENT_FILE: &str = "vmkeep-guest";
/// Where the guest agent is installed in the guest.
pub const AGENT_GUEST_PATH: &str = "/usr/local/sbin/vmkeep-guest";
/// The systemd unit that runs the guest agent.
pub const AGENT_UNIT: &str = "vmkeep-guest.service";
/// Where provision scripts are written in the guest.
pub const PROVISION_DIR: &str = "/var/lib/vmkeep/provision";

/// Where data files, probes and the environment file live in the guest.
pub const STATE_DIR: &str = "/var/lib/vmkeep";
/// Written at the end of the first boot's `runcmd`: later boots run the
/// probes from the per-boot script.
pub const PROVISIONED_MARKER: &str = "/var/lib/vmkeep/provisioned";
/// The per-boot script (cloud-init runs it at every boot, in its final stage).
pub const PER_BOOT_SCRIPT: &str = "/var/lib/cloud/scripts/per-boot/vmkeep-boot";
pub(crate) const ENV_FILE: &str = "/var/lib/vmkeep/env";
pub(crate) const PROBE_RUNNER: &str = "/var/lib/vmkeep/run-probes";

/// Everything the seed depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedInputs<'a> {
    pub instance: &'a str,
    pub user: &'a GuestUser,
    /// OpenSSH public key lines: vmkeep's, then (with
    /// `ssh.loadDotSSHPubKeys`) the host user's.
    pub ssh_public_keys: Vec<String>,
    /// The config with its template variables expanded
    /// ([`crate::instance::vars::expand`]).
    pub config: &'a Config,
    /// Host directories shared over virtio-fs: mounted at every boot by
    /// `bootcmd`, early, so that provision scripts and services see them
    /// (the guest agent mounts them again, idempotently, for the host).
    pub shares: &'a [crate::instance::shares::SharedDir],
    /// A copy of another instance: its first boot takes a fresh identity.
    pub origin: Option<&'a crate::instance::identity::Origin>,
}

/// The systemd unit of the guest agent. It starts after cloud-init's first
/// stage (whose `bootcmd` installs the binary); the agent itself waits for
/// `cloud-init status --wait` before it reports ready.
///
/// `KillMode=process`: the commands of `vmkeep shell` sessions are the
/// agent's children, in its unit's cgroup, and with systemd's default
/// (`control-group`) a restart of the agent (a crash, an upgrade) would kill
/// every one of them, `nohup`ed and `setsid`ed ones included, which an ssh
/// login's never suffer. With `process` only the agent is stopped: its
/// sessions end as over a dropped ssh connection (their ptys and pipes
/// close, the commands get SIGHUP), and what the user put in the
/// background lives on. At a guest shutdown systemd's final kill still ends
/// them.
pub fn agent_unit() -> String {
    format!(
        "[Unit]\n\
         Description=vmkeep guest agent\n\
         After=cloud-init.service systemd-udev-settle.service\n\
         \n\
         [Service]\n\
         ExecStart={AGENT_GUEST_PATH}\n\
         KillMode=process\n\
         Restart=always\n\
         RestartSec=1\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// `meta-data`: the instance id stays the same across restarts, so
/// cloud-init's once-per-instance steps (users, provision scripts) run once
/// per disk.
pub fn meta_data(inputs: &SeedInputs<'_>) -> String {
    format!(
        "instance-id: vmkeep-{}\nlocal-hostname: {}\n",
        inputs.instance,
        hostname(inputs.instance)
    )
}

#[cfg(test)]
mod tests;
