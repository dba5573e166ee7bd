//! The schema of `vmkeep.yaml`: [`RawConfig`], every field as written
//! (optional, `null` meaning "not set"), vmkeep's own fields and Lima's.

use serde::Deserialize;

use super::unknown_fields::{self, FieldPolicy, UnknownField};
use super::{
    AccelSetting, Arch, Cpus, DiskSize, ImageEntry, KernelSettings, Memory, OnHostShutdown,
    ParseError, Probe, Provision, RunStrategy, Timeout, VmType,
};
use crate::instance::lima;
use crate::instance::yaml_de::{MustBeEmpty, MustBeOff, ScalarString, nullable};

/// What a config file says, before defaults: every field optional, `null`
/// meaning "not set" (Lima's templates write `cpus: null` for "the default").
/// vmkeep's own fields first, then Lima's (applied, accepted or refused: see
/// `instance/lima.rs`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    #[serde(default, deserialize_with = "nullable")]
    pub vm_type: Option<VmType>,
    #[serde(default, deserialize_with = "nullable")]
    pub arch: Option<Arch>,
    #[serde(default, deserialize_with = "nullable")]
    pub cpus: Option<Cpus>,
    #[serde(default, deserialize_with = "nullable")]
    pub memory: Option<Memory>,
    #[serde(default, deserialize_with = "nullable")]
    pub disk: Option<DiskSize>,
    #[serde(default, deserialize_with = "nullable")]
    pub accel: Option<AccelSetting>,
    #[serde(default, deserialize_with = "nullable")]
    pub stop_timeout: Option<Timeout>,
    #[serde(default, deserialize_with = "nullable")]
    pub boot_timeout: Option<Timeout>,
    #[serde(default, deserialize_with = "nullable")]
    pub kernel: Option<KernelSettings>,
    #[serde(default, deserialize_with = "nullable")]
    pub run_strategy: Option<RunStrategy>,
    #[serde(default, deserialize_with = "nullable")]
    pub on_host_shutdown: Option<OnHostShutdown>,
    #[serde(default, deserialize_with = "nullable")]
    pub images: Option<Vec<ImageEntry>>,
    #[serde(default, deserialize_with = "nullable")]
    pub provision: Option<Vec<Provision>>,
    #[serde(default, deserialize_with = "nullable")]
    pub probes: Option<Vec<Probe>>,
    /// Who serves the shared directories on the host when vmkeep runs as
    /// root (see `instance::share_owner`).
    #[serde(default, deserialize_with = "nullable")]
    pub mount_owner: Option<crate::instance::share_owner::MountOwner>,

    /// Resolved (and removed) when an instance is created; kept here only so
    /// that a base file on its own parses.
    #[serde(default, deserialize_with = "nullable")]
    pub base: Option<serde_yaml_ng::Value>,
    /// Accepted; vmkeep reads every template Lima 1.x and 2.x reads.
    #[serde(default, deserialize_with = "nullable")]
    pub minimum_lima_version: Option<ScalarString>,
    #[serde(default, deserialize_with = "nullable")]
    pub vm_opts: Option<serde_yaml_ng::Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub os: Option<lima::GuestOs>,
    #[serde(default, deserialize_with = "nullable")]
    pub mounts: Option<Vec<lima::Mount>>,
    #[serde(default, deserialize_with = "nullable")]
    pub mount_type: Option<ScalarString>,
    #[serde(default, deserialize_with = "nullable")]
    pub mount_types_unsupported: Option<Vec<ScalarString>>,
    #[serde(default, deserialize_with = "nullable")]
    pub mount_inotify: Option<bool>,
    #[serde(default)]
    pub additional_disks: MustBeEmpty<lima::AdditionalDisks>,
    #[serde(default, deserialize_with = "nullable")]
    pub ssh: Option<lima::Ssh>,
    #[serde(default, deserialize_with = "nullable")]
    pub ca_certs: Option<lima::CaCerts>,
    #[serde(default, deserialize_with = "nullable")]
    pub upgrade_packages: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub containerd: Option<lima::Containerd>,
    #[serde(default, deserialize_with = "nullable")]
    pub user: Option<lima::User>,
    #[serde(default)]
    pub cpu_type: MustBeEmpty<lima::CpuType>,
    #[serde(default, deserialize_with = "nullable")]
    pub rosetta: Option<lima::Rosetta>,
    #[serde(default, deserialize_with = "nullable")]
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub firmware: Option<lima::Firmware>,
    #[serde(default, deserialize_with = "nullable")]
    pub audio: Option<lima::Audio>,
    #[serde(default, deserialize_with = "nullable")]
    pub video: Option<lima::Video>,
    #[serde(default)]
    pub networks: MustBeEmpty<lima::Networks>,
    #[serde(default, deserialize_with = "nullable")]
    pub port_forwards: Option<Vec<lima::PortForward>>,
    #[serde(default, deserialize_with = "nullable")]
    pub copy_to_host: Option<Vec<lima::CopyToHost>>,
    /// Shown after `start` (a template with list fields: `{{.Dir}}`, ...).
    #[serde(default, deserialize_with = "nullable")]
    pub message: Option<String>,
    /// Environment of the guest (`/etc/environment`) and of provision scripts.
    #[serde(default, deserialize_with = "nullable")]
    pub env: Option<lima::Vars>,
    /// `{{.Param.Key}}` in scripts, probes and mounts; `$PARAM_Key` in scripts.
    #[serde(default, deserialize_with = "nullable")]
    pub param: Option<lima::Vars>,
    #[serde(default, deserialize_with = "nullable")]
    pub propagate_proxy_env: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub host_resolver: Option<lima::HostResolver>,
    /// Lima's name before `hostResolver` (still read by Lima).
    #[serde(default, deserialize_with = "nullable")]
    pub use_host_resolver: Option<bool>,
    #[serde(default)]
    pub dns: MustBeEmpty<lima::Dns>,
    #[serde(default, deserialize_with = "nullable")]
    pub guest_install_prefix: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub plain: Option<bool>,
    #[serde(default)]
    pub nested_virtualization: MustBeOff<lima::NestedVirtualization>,
    /// Lima's emulated TPM (swtpm): accepted, not applied.
    #[serde(default, deserialize_with = "nullable")]
    pub tpm: Option<bool>,
    /// Settings of other guest OSes (Windows): accepted, not used.
    #[serde(default, deserialize_with = "nullable")]
    pub os_opts: Option<serde_yaml_ng::Value>,
}

impl RawConfig {
    /// Parse YAML text without filling defaults, by Lima's policy: a field
    /// vmkeep does not know is left out (see [`RawConfig::read`]). An empty
    /// document (or only comments) means nothing set.
    pub fn parse(text: &str) -> Result<RawConfig, ParseError> {
        Ok(RawConfig::read(text, FieldPolicy::Note)?.0)
    }

    /// Parse YAML text, with the fields vmkeep does not know: noted and
    /// left out, or refused, as `policy` says.
    pub fn read(
        text: &str,
        policy: FieldPolicy,
    ) -> Result<(RawConfig, Vec<UnknownField>), ParseError> {
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok((RawConfig::default(), Vec::new()));
        }
        unknown_fields::read_noting(text, policy, |text| {
            serde_yaml_ng::from_str(text).map_err(|e| ParseError::from_yaml(&e, text))
        })
    }
}
