//! Lima's settings beyond vmkeep's core fields, in Lima's names and shapes.
//!
//! Three kinds:
//! - applied: `ssh`, `user` (with `passwordlessSudo`), `env`, `param`,
//!   `message`, `caCerts`, `upgradePackages`, `timezone`,
//!   `hostResolver.hosts`, `containerd` (cloud images: see
//!   `image::cloudinit::containerd`);
//!   `mounts` (see `instance::shares`), `portForwards` (see `forwards`;
//!   unix sockets: `instance::socket_forwards`) and `copyToHost` (see
//!   `instance::copy_to_host`);
//! - accepted, not applied (reported by [`RawConfig::notices`]): `plain`,
//!   `guestInstallPrefix`, `reverse` socket forwards, `mountType` other than
//!   virtiofs, `tpm`, `audio`, `video`, `portForwards[].static`, ...
//!   (and any field vmkeep does not know: `config::unknown_fields`);
//! - refused, one line each saying what is not supported and what to do:
//!   `vmType: vz`, `os: Darwin`, `rosetta`, `networks`, `additionalDisks`,
//!   `dns`, `cpuType`, ...
//!
//! Refusals happen while the YAML is read (see [`super::yaml_de`]), so each
//! names its own line.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::Deserializer;

use super::config::RawConfig;
use super::yaml_de::{
    MustBeEmpty, MustBeOff, Refusal, ScalarString, checked_map, nullable, parse_checked,
};

macro_rules! refusal {
    ($name:ident, $message:expr) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;
        impl Refusal for $name {
            const MESSAGE: &'static str = $message;
        }
    };
}

refusal!(
    AdditionalDisks,
    "additionalDisks is not supported by vmkeep (one disk per instance); remove it, or attach storage from inside the guest"
);
refusal!(
    CpuType,
    "cpuType is not supported by vmkeep: it picks the CPU model itself (host with KVM, max with TCG); remove it"
);
refusal!(
    RosettaEnabled,
    "rosetta needs vmType: vz on macOS; vmkeep runs QEMU: remove rosetta or set rosetta.enabled: false"
);
refusal!(
    RosettaBinfmt,
    "rosetta needs vmType: vz on macOS; vmkeep runs QEMU: remove rosetta or set rosetta.binfmt: false"
);
refusal!(
    FirmwareImages,
    "firmware.images is not supported by vmkeep (it boots cloud images with SeaBIOS or their kernel); remove it"
);
refusal!(
    Networks,
    "networks is not supported by vmkeep (QEMU user-mode networking only, with ssh forwarded); remove it"
);
refusal!(
    Dns,
    "dns is not supported by vmkeep: QEMU's user-mode network gives the guest its own resolver (10.0.2.3); remove it"
);
refusal!(
    NestedVirtualization,
    "nestedVirtualization is not supported by vmkeep (Lima offers it with vmType: vz only); remove it"
);

/// `os:` only Linux guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestOs;

impl<'de> Deserialize<'de> for GuestOs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| match text {
            "Linux" | "linux" => Ok(GuestOs),
            "Windows" | "Darwin" | "FreeBSD" => Err(format!(
                "os: {text} guests are not supported by vmkeep (Linux only); remove os or set it to Linux"
            )),
            other => Err(format!(
                "os: {other:?} is not an OS Lima knows; vmkeep runs Linux guests only"
            )),
        })
    }
}

/// One `mounts:` entry: a host directory shared with the guest over
/// virtio-fs (resolved by `instance::shares`). `sshfs`, `9p` and `virtiofs`
/// tuning is accepted and not used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub location: String,
    #[serde(default, deserialize_with = "nullable")]
    pub mount_point: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub writable: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub sshfs: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "9p", deserialize_with = "nullable")]
    pub nine_p: Option<serde_yaml_ng::Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub virtiofs: Option<serde_yaml_ng::Value>,
}

/// The protocols a `portForwards` rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleProto {
    #[default]
    Tcp,
    Udp,
    /// Both.
    Any,
}

/// A `portForwards` rule that forwards (or ignores) guest ports, with
/// Lima's defaults filled in: guest IP 127.0.0.1 (which also matches
/// listeners on 0.0.0.0, `::` and `::1`), every guest port, host IP
/// 127.0.0.1, the same host port as the guest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub proto: RuleProto,
    pub guest_ip: std::net::IpAddr,
    /// Match listeners on `0.0.0.0` only (Lima's `guestIPMustBeZero`).
    pub guest_ip_must_be_zero: bool,
    /// First and last guest port matched.
    pub guest_ports: (u16, u16),
    /// Where forwards listen on the host: IPv4 only (QEMU's user network
    /// cannot listen on IPv6 host addresses).
    pub host_ip: std::net::Ipv4Addr,
    /// The host port of the first guest port (the rest follow in order).
    pub host_port_start: u16,
    pub ignore: bool,
    /// The rule gives its ports (`guestPort`, `guestPortRange`, `hostPort`
    /// or `hostPortRange`), rather than Lima's default of every port: only
    /// such a rule forwards to a privileged host port (below 1024).
    pub names_ports: bool,
    /// Lima's `static: true` (forwarded before the guest agent runs):
    /// accepted, forwarded as any rule, while the guest listens.
    pub static_forward: bool,
}

/// One `portForwards` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortForward {
    Ports(PortRule),
    /// A unix socket forward (`guestSocket`/`hostSocket`, see
    /// `instance::socket_forwards`); `reverse`: the host's socket served in
    /// the guest (accepted, not applied).
    Socket {
        guest_socket: String,
        host_socket: String,
        reverse: bool,
    },
}

/// One `copyToHost` entry (see `instance::copy_to_host`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CopyToHost {
    /// The file in the guest (its symlinks resolved in the guest).
    pub guest: String,
    /// Where it goes on the host (Lima's template variables; relative to the
    /// instance directory).
    pub host: String,
    /// Remove the host's copy when the instance stops.
    #[serde(default, deserialize_with = "nullable")]
    pub delete_on_stop: Option<bool>,
    /// A guest file that does not exist is skipped instead of failing the start.
    #[serde(default, deserialize_with = "nullable")]
    pub skip_if_missing: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPortForward {
    #[serde(default, rename = "guestIP", deserialize_with = "nullable")]
    guest_ip: Option<String>,
    #[serde(default, rename = "guestIPMustBeZero", deserialize_with = "nullable")]
    guest_ip_must_be_zero: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    guest_port: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    guest_port_range: Option<[u32; 2]>,
    #[serde(default, deserialize_with = "nullable")]
    guest_socket: Option<String>,
    #[serde(default, rename = "hostIP", deserialize_with = "nullable")]
    host_ip: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    host_port: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    host_port_range: Option<[u32; 2]>,
    #[serde(default, deserialize_with = "nullable")]
    host_socket: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    proto: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    reverse: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    ignore: Option<bool>,
    #[serde(default, rename = "static", deserialize_with = "nullable")]
    static_forward: Option<bool>,
}

/// A port range as Lima fills it: `port` alone, `range` alone (each end
/// 1-65535, in order), both (they must agree), or `default`.
fn port_range(
    name: &str,
    port: Option<u32>,
    range: Option<[u32; 2]>,
    default: (u16, u16),
) -> Result<(u16, u16), String> {
    let valid = |n: u32, what: &str| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{what} {n} is not a port; use 1 to 65535"))
    };
    let port = port.filter(|p| *p != 0);
    let range = range.filter(|r| *r != [0, 0]);
    match (port, range) {
        (None, None) => Ok(default),
        (Some(p), None) => {
            let p = valid(p, &format!("{name}Port"))?;
            Ok((p, p))
        }
        (port, Some([a, b])) => {
            let (a, b) = (
                valid(a, &format!("{name}PortRange"))?,
                valid(b, &format!("{name}PortRange"))?,
            );
            if a > b {
                return Err(format!(
                    "{name}PortRange [{a}, {b}] is not in order; write the lower port first"
                ));
            }
            if let Some(p) = port
                && p != u32::from(a)
            {
                return Err(format!(
                    "{name}Port {p} must be the first port of {name}PortRange [{a}, {b}]"
                ));
            }
            Ok((a, b))
        }
    }
}

impl RawPortForward {
    fn check(self) -> Result<PortForward, String> {
        if self.guest_socket.is_some() || self.host_socket.is_some() {
            return Ok(PortForward::Socket {
                guest_socket: self.guest_socket.unwrap_or_default(),
                host_socket: self.host_socket.unwrap_or_default(),
                reverse: self.reverse == Some(true),
            });
        }
        if self.reverse == Some(true) {
            return Err(
                "reverse: true applies to unix sockets only (guestSocket/hostSocket); remove it"
                    .into(),
            );
        }
        let proto = match self
            .proto
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("tcp") => RuleProto::Tcp,
            Some("udp") => RuleProto::Udp,
            Some("any") => RuleProto::Any,
            Some(other) => {
                return Err(format!(
                    "proto: {other:?} is not a protocol; use tcp, udp or any"
                ));
            }
        };
        let guest_ip = match &self.guest_ip {
            None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            Some(text) => text
                .parse()
                .map_err(|_| format!("guestIP: {text:?} is not an IP address"))?,
        };
        let host_ip = match &self.host_ip {
            None => std::net::Ipv4Addr::LOCALHOST,
            Some(text) => match text.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => ip,
                Ok(std::net::IpAddr::V6(_)) => {
                    return Err(format!(
                        "hostIP: {text} is an IPv6 address; QEMU's user network forwards from IPv4 host addresses only: use 127.0.0.1 or 0.0.0.0"
                    ));
                }
                Err(_) => return Err(format!("hostIP: {text:?} is not an IP address")),
            },
        };
        let names_ports = [self.guest_port, self.host_port]
            .iter()
            .any(|p| p.is_some_and(|p| p != 0))
            || [self.guest_port_range, self.host_port_range]
                .iter()
                .any(|r| r.is_some_and(|r| r != [0, 0]));
        let guest_ports = port_range("guest", self.guest_port, self.guest_port_range, (1, 65535))?;
        let host_ports = port_range("host", self.host_port, self.host_port_range, guest_ports)?;
        if host_ports.1 - host_ports.0 != guest_ports.1 - guest_ports.0 {
            return Err(format!(
                "hostPortRange [{}, {}] and guestPortRange [{}, {}] must have the same number of ports",
                host_ports.0, host_ports.1, guest_ports.0, guest_ports.1
            ));
        }
        Ok(PortForward::Ports(PortRule {
            proto,
            guest_ip,
            guest_ip_must_be_zero: self.guest_ip_must_be_zero == Some(true),
            guest_ports,
            host_ip,
            host_port_start: host_ports.0,
            ignore: self.ignore == Some(true),
            names_ports,
            static_forward: self.static_forward == Some(true),
        }))
    }
}

impl<'de> Deserialize<'de> for PortForward {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, "a port forwarding rule", RawPortForward::check)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ssh {
    /// The loopback port forwarded to the guest's port 22 (0 or absent: a
    /// free one at each start).
    #[serde(default, deserialize_with = "nullable")]
    pub local_port: Option<u16>,
    /// Also authorise the host user's `~/.ssh/*.pub` keys in the guest.
    #[serde(default, rename = "loadDotSSHPubKeys", deserialize_with = "nullable")]
    pub load_dot_ssh_pub_keys: Option<bool>,
    /// `ForwardAgent yes` in the ssh config `vmkeep shell` uses.
    #[serde(default, deserialize_with = "nullable")]
    pub forward_agent: Option<bool>,
    #[serde(default, rename = "forwardX11", deserialize_with = "nullable")]
    pub forward_x11: Option<bool>,
    #[serde(default, rename = "forwardX11Trusted", deserialize_with = "nullable")]
    pub forward_x11_trusted: Option<bool>,
    /// Lima's ssh over vsock (vz); vmkeep always uses the forwarded port.
    #[serde(default, deserialize_with = "nullable")]
    pub over_vsock: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaCerts {
    #[serde(default, deserialize_with = "nullable")]
    pub remove_defaults: Option<bool>,
    /// Certificate files on the host, read when the instance is created.
    #[serde(default, deserialize_with = "nullable")]
    pub files: Option<Vec<String>>,
    /// PEM certificates.
    #[serde(default, deserialize_with = "nullable")]
    pub certs: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Containerd {
    /// containerd as a system service (root's `nerdctl`).
    #[serde(default, deserialize_with = "nullable")]
    pub system: Option<bool>,
    /// Rootless containerd for the guest user (Lima's default on Linux).
    #[serde(default, deserialize_with = "nullable")]
    pub user: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub archives: Option<serde_yaml_ng::Value>,
}

/// The user created in the guest.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: Option<u32>,
    /// Home directory in the guest (may use `{{.User}}`, `{{.Name}}`, ...).
    #[serde(default, deserialize_with = "nullable")]
    pub home: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub shell: Option<String>,
    /// `sudo` without a password (Lima's default: true); false gives the
    /// user a random password, in `~/password` in the guest.
    #[serde(default, deserialize_with = "nullable")]
    pub passwordless_sudo: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rosetta {
    #[serde(default)]
    pub enabled: MustBeOff<RosettaEnabled>,
    #[serde(default)]
    pub binfmt: MustBeOff<RosettaBinfmt>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Firmware {
    /// vmkeep boots firmware images with SeaBIOS (legacy BIOS) either way.
    #[serde(default, rename = "legacyBIOS", deserialize_with = "nullable")]
    pub legacy_bios: Option<bool>,
    #[serde(default)]
    pub images: MustBeEmpty<FirmwareImages>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Audio {
    /// QEMU's audiodev (Lima's `device`): accepted, not applied.
    #[serde(default, deserialize_with = "nullable")]
    pub device: Option<ScalarString>,
    /// The sound card's kind (`hda`, `virtio`): accepted, not applied.
    #[serde(default, deserialize_with = "nullable")]
    pub interface: Option<ScalarString>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Video {
    /// Accepted, not applied: vmkeep's VMs run headless.
    #[serde(default, deserialize_with = "nullable")]
    pub display: Option<ScalarString>,
    /// Only used with `display: vnc`, which is not applied.
    #[serde(default, deserialize_with = "nullable")]
    pub vnc: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostResolver {
    #[serde(default, deserialize_with = "nullable")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub ipv6: Option<bool>,
    /// Static names for the guest's `/etc/hosts`: an IPv4/IPv6 address, or
    /// `host.lima.internal` (the host, 10.0.2.2 on QEMU's network).
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Option<BTreeMap<String, ScalarString>>,
}

/// `env:` and `param:`: names (letters, digits, `_`, not starting with a
/// digit) to scalar values, kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vars(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Vars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(
            d,
            "a map of names to values",
            |raw: BTreeMap<String, Option<ScalarString>>| {
                let mut vars = BTreeMap::new();
                for (key, value) in raw {
                    let mut chars = key.chars();
                    let valid = chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(format!(
                            "{key:?} is not a valid name; use letters, digits and '_', starting with a letter"
                        ));
                    }
                    vars.insert(key, value.map(|v| v.0).unwrap_or_default());
                }
                Ok(Vars(vars))
            },
        )
    }
}

/// The loopback address QEMU's user-mode network gives the host.
pub const HOST_ADDRESS: &str = "10.0.2.2";

const PROXY_VARS: [&str; 4] = ["ftp_proxy", "http_proxy", "https_proxy", "no_proxy"];

/// The guest's proxy settings, as Lima makes them: `env:`'s, overridden by
/// the host's (unless `propagate` is false) with `localhost`/`127.0.0.1`
/// turned into the host's address as the guest sees it, and each proxy
/// variable set in both lower and upper case.
pub fn with_proxy_env(
    mut env: BTreeMap<String, String>,
    host: impl IntoIterator<Item = (String, String)>,
    propagate: bool,
) -> BTreeMap<String, String> {
    if propagate {
        for (key, value) in host {
            if PROXY_VARS.contains(&key.to_ascii_lowercase().as_str()) && !value.is_empty() {
                let value = value
                    .replace("localhost", HOST_ADDRESS)
                    .replace("127.0.0.1", HOST_ADDRESS);
                env.insert(key, value);
            }
        }
    }
    for var in PROXY_VARS {
        let upper = var.to_ascii_uppercase();
        match (env.get(var).cloned(), env.get(&upper).cloned()) {
            (Some(lower), None) => {
                env.insert(upper, lower);
            }
            (None, Some(value)) => {
                env.insert(var.to_string(), value);
            }
            _ => {}
        }
    }
    env
}

impl RawConfig {
    /// The `env:` settings.
    pub fn env(&self) -> BTreeMap<String, String> {
        self.env.as_ref().map(|v| v.0.clone()).unwrap_or_default()
    }

    /// The `param:` settings.
    pub fn params(&self) -> BTreeMap<String, String> {
        self.param.as_ref().map(|v| v.0.clone()).unwrap_or_default()
    }

    pub fn ssh(&self) -> Ssh {
        self.ssh.clone().unwrap_or_default()
    }

    pub fn user(&self) -> User {
        self.user.clone().unwrap_or_default()
    }

    /// `/etc/hosts` lines from `hostResolver.hosts`, and the names that could
    /// not be turned into an address (reported by [`RawConfig::notices`]).
    pub fn etc_hosts(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut lines = Vec::new();
        let mut skipped = Vec::new();
        let hosts = self
            .host_resolver
            .as_ref()
            .and_then(|h| h.hosts.clone())
            .unwrap_or_default();
        for (name, target) in hosts {
            let target = target.0;
            if target.parse::<std::net::IpAddr>().is_ok() {
                lines.push((target, name));
            } else if target == "host.lima.internal" || target == "host.vmkeep.internal" {
                lines.push((HOST_ADDRESS.to_string(), name));
            } else {
                skipped.push(name);
            }
        }
        (lines, skipped)
    }

    /// What is accepted but not applied, one line each, for `create` to show.
    pub fn notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        if let Some(kind) = &self.mount_type
            && !matches!(kind.0.as_str(), "virtiofs" | "default" | "")
            && self.mounts.as_ref().is_some_and(|m| !m.is_empty())
        {
            notices.push(format!(
                "mountType: {} not available: vmkeep mounts with virtiofs (the Debian cloud kernel has no 9p; sshfs is not built in)",
                kind.0
            ));
        }
        if self.mount_inotify == Some(true)
            && !self
                .mounts
                .iter()
                .flatten()
                .any(|m| m.writable == Some(true))
        {
            notices.push(
                "mountInotify: no writable mount: the guest cannot be told of host changes on a read-only one (as in Lima)".into(),
            );
        }
        let reversed = self
            .port_forwards
            .iter()
            .flatten()
            .filter(|f| matches!(f, PortForward::Socket { reverse: true, .. }))
            .count();
        if reversed > 0 {
            notices.push(format!(
                "portForwards: {reversed} reverse unix socket rule(s) (reverse: true) not applied: vmkeep forwards guest sockets to the host only; forward a host socket with `ssh -F <(vmkeep ssh-config NAME) -R`"
            ));
        }
        if self.plain == Some(true) {
            notices.push(
                "plain: vmkeep still runs its guest agent (it is how start knows the guest is ready), and applies mounts and port forwards".into(),
            );
        }
        if let Some(prefix) = &self.guest_install_prefix
            && prefix != "/usr/local"
        {
            notices.push(format!(
                "guestInstallPrefix: {prefix} not applied: vmkeep installs its guest agent in /usr/local/sbin"
            ));
        }
        notices.extend(self.lima_extras_notices());
        let (_, skipped) = self.etc_hosts();
        if !skipped.is_empty() {
            notices.push(format!(
                "hostResolver.hosts: {} not applied: vmkeep writes names that point to an address or to host.lima.internal",
                skipped.join(", ")
            ));
        }
        notices
    }
}

impl RawConfig {
    /// Lima's newer settings vmkeep accepts without applying them, and
    /// `containerd`, one line each.
    fn lima_extras_notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        let set = |value: &Option<ScalarString>| {
            value
                .as_ref()
                .map(|v| v.0.trim().to_string())
                .filter(|v| !v.is_empty() && v != "none")
        };
        if self.tpm == Some(true) {
            notices.push("tpm: not applied: vmkeep's VMs have no TPM device".into());
        }
        let audio = self.audio.clone().unwrap_or_default();
        for (field, value) in [
            ("device", set(&audio.device)),
            ("interface", set(&audio.interface)),
        ] {
            if let Some(value) = value {
                notices.push(format!(
                    "audio.{field}: {value} not applied: vmkeep's VMs have no sound device"
                ));
            }
        }
        if let Some(display) = self.video.as_ref().and_then(|v| set(&v.display)) {
            notices.push(format!(
                "video.display: {display} not applied: vmkeep's VMs run headless (use `vmkeep shell`)"
            ));
        }
        for (index, forward) in self.port_forwards.iter().flatten().enumerate() {
            if let PortForward::Ports(rule) = forward
                && rule.static_forward
            {
                notices.push(format!(
                    "portForwards[{index}].static: accepted; the port is forwarded while the guest listens on it, as by every rule"
                ));
            }
        }
        let containerd = self.containerd.clone().unwrap_or_default();
        let wanted: Vec<&str> = [("system", containerd.system), ("user", containerd.user)]
            .into_iter()
            .filter(|(_, on)| *on == Some(true))
            .map(|(mode, _)| mode)
            .collect();
        if !wanted.is_empty() {
            let cloud = self.images.as_ref().is_some_and(|i| !i.is_empty());
            notices.push(if cloud {
                format!(
                    "containerd.{}: installed at the first boot from the guest distribution's own packages \
                     (containerd, and nerdctl where its release ships it: Debian 12 does not); what it lacks is said on the console",
                    wanted.join(", containerd.")
                )
            } else {
                "containerd: not applied: the tiny image has no packages; use a cloud image (base: template:debian-12)".into()
            });
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RawConfig, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn lima_defaults_with_nulls_parse() {
        let lima = parse(
            "ssh:\n  localPort: null\n  loadDotSSHPubKeys: null\nrosetta:\n  enabled: null\n  binfmt: false\n\
             containerd:\n  system: false\n  user: false\nvideo:\n  display: none\naudio:\n  device: null\n\
             additionalDisks:\nnetworks: []\ndns:\ncpuType:\nmounts: []\nfirmware:\n  legacyBIOS: null\n",
        )
        .unwrap();
        assert_eq!(lima.ssh().local_port, None);
        assert!(lima.notices().is_empty(), "{:?}", lima.notices());
    }

    #[test]
    fn settings_that_cannot_apply_give_one_line_with_the_fix() {
        for (yaml, says, line) in [
            ("# c\nos: Darwin\n", "Linux only", 2),
            ("rosetta:\n  enabled: true\n", "vmType: vz", 2),
            (
                "networks:\n- lima: shared\n",
                "networks is not supported",
                2,
            ),
            ("dns:\n- 1.1.1.1\n", "10.0.2.3", 2),
            ("additionalDisks:\n- data\n", "one disk", 2),
            ("cpuType:\n  x86_64: host\n", "CPU model", 2),
            ("nestedVirtualization: true\n", "vz", 1),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(
                err.contains(says) && err.contains(&format!("line {line}")),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn what_is_not_applied_is_reported_and_mounts_and_ports_are_not() {
        let lima = parse(
            "mounts:\n- location: \"~\"\n- location: /tmp/lima\n  writable: true\nmountType: 9p\n\
             portForwards:\n- guestSocket: /run/x.sock\n  hostSocket: x.sock\n- guestPort: 80\n  hostPort: 8080\n\
             - guestSocket: /run/y.sock\n  hostSocket: y.sock\n  reverse: true\n\
             copyToHost:\n- guest: /etc/k\n  host: \"{{.Dir}}/k\"\n",
        )
        .unwrap();
        let notices = lima.notices().join("\n");
        for word in ["mountType: 9p", "1 reverse unix socket rule(s)"] {
            assert!(notices.contains(word), "{notices}");
        }
        assert!(!notices.contains("copyToHost"), "applied: {notices}");
        assert!(!notices.contains("not applied yet"), "{notices}");
        let plain = parse("mounts:\n- location: /src\nportForwards:\n- guestPort: 80\n").unwrap();
        assert!(plain.notices().is_empty(), "{:?}", plain.notices());
    }

    #[test]
    fn limas_newer_settings_are_accepted_with_one_line_each() {
        let lima = parse(
            "images:\n- location: /i\ntpm: true\naudio:\n  device: pa\n  interface: virtio\nvideo:\n  display: vnc\n\
             portForwards:\n- guestPort: 80\n  static: true\nuser:\n  passwordlessSudo: false\n\
             containerd:\n  system: false\n  user: true\nosOpts:\n  Windows: {}\n",
        )
        .unwrap();
        let notices = lima.notices();
        for word in [
            "tpm: not applied",
            "audio.device: pa not applied",
            "audio.interface: virtio not applied",
            "video.display: vnc not applied",
            "portForwards[0].static: accepted",
            "containerd.user: installed at the first boot",
        ] {
            assert_eq!(
                notices.iter().filter(|n| n.starts_with(word)).count(),
                1,
                "{word}: {notices:#?}"
            );
        }
        assert_eq!(notices.len(), 6, "{notices:#?}");
        assert_eq!(lima.user().passwordless_sudo, Some(false));
        // Lima's defaults say nothing; the tiny image cannot have containerd.
        let quiet = parse(
            "tpm: false\naudio:\n  device: none\n  interface: null\nvideo:\n  display: none\n",
        )
        .unwrap();
        assert!(quiet.notices().is_empty(), "{:?}", quiet.notices());
        let tiny = parse("containerd:\n  system: true\n").unwrap();
        assert!(
            tiny.notices()[0].contains("tiny image"),
            "{:?}",
            tiny.notices()
        );
    }

    #[test]
    fn port_forwards_get_limas_defaults() {
        let lima = parse(
            "portForwards:\n- guestPort: 443\n  hostIP: 0.0.0.0\n- guestPortRange: [4000, 4999]\n\
             - guestPort: 80\n  hostPort: 8080\n  proto: udp\n- guestIP: 0.0.0.0\n  guestIPMustBeZero: true\n  guestPort: 7443\n\
             - guestPort: 8888\n  ignore: true\n- guestIP: \"::1\"\n  hostPortRange: [10001, 10002]\n  guestPortRange: [1, 2]\n  proto: any\n",
        )
        .unwrap();
        let rules: Vec<PortRule> = lima
            .port_forwards
            .unwrap()
            .into_iter()
            .map(|f| match f {
                PortForward::Ports(rule) => rule,
                other => panic!("{other:?}"),
            })
            .collect();
        let local = std::net::Ipv4Addr::LOCALHOST;
        assert_eq!(
            rules[0],
            PortRule {
                proto: RuleProto::Tcp,
                guest_ip: local.into(),
                guest_ip_must_be_zero: false,
                guest_ports: (443, 443),
                host_ip: std::net::Ipv4Addr::UNSPECIFIED,
                host_port_start: 443,
                ignore: false,
                names_ports: true,
                static_forward: false,
            }
        );
        assert_eq!(
            (rules[1].guest_ports, rules[1].host_port_start),
            ((4000, 4999), 4000)
        );
        assert_eq!(
            (rules[2].proto, rules[2].host_port_start),
            (RuleProto::Udp, 8080)
        );
        assert!(rules[3].guest_ip_must_be_zero && rules[3].guest_ip.is_unspecified());
        assert!(rules[4].ignore);
        assert_eq!(
            (
                rules[5].proto,
                rules[5].guest_ports,
                rules[5].host_port_start
            ),
            (RuleProto::Any, (1, 2), 10001)
        );
        assert_eq!(
            rules[5].guest_ip,
            "::1".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[test]
    fn bad_port_forwards_name_the_line_and_the_fix() {
        for (yaml, says, line) in [
            ("portForwards:\n- guestPort: 70000\n", "1 to 65535", 2),
            (
                "portForwards:\n- guestPortRange: [20, 10]\n",
                "not in order",
                2,
            ),
            (
                "portForwards:\n- guestPortRange: [1, 10]\n  hostPortRange: [1, 5]\n",
                "same number of ports",
                2,
            ),
            (
                "portForwards:\n- guestPort: 5\n  guestPortRange: [6, 7]\n",
                "first port of guestPortRange",
                2,
            ),
            (
                "portForwards:\n- guestPort: 80\n  hostIP: \"::1\"\n",
                "IPv4",
                2,
            ),
            (
                "portForwards:\n- guestPort: 80\n  proto: sctp\n",
                "tcp, udp or any",
                2,
            ),
            (
                "portForwards:\n- guestPort: 80\n  guestIP: localhost\n",
                "not an IP",
                2,
            ),
            (
                "portForwards:\n- guestPort: 80\n  reverse: true\n",
                "unix sockets only",
                2,
            ),
            (
                "portForwards:\n- guestPort: 80\n  hostport: 81\n",
                "hostPort",
                3,
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(
                err.contains(says) && err.contains(&format!("line {line}")),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn env_and_param_names_are_checked() {
        let lima = parse("param:\n  containerdSnapshotter: false\n  N: 3\nenv:\n  HTTP_PROXY: x\n")
            .unwrap();
        assert_eq!(lima.params()["containerdSnapshotter"], "false");
        assert_eq!(lima.params()["N"], "3");
        assert_eq!(lima.env()["HTTP_PROXY"], "x");
        let err = parse("# c\nparam:\n  9lives: x\n").unwrap_err();
        assert!(err.contains("9lives") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn proxies_come_from_the_host_in_both_cases_and_reach_the_host_address() {
        let env = BTreeMap::from([("http_proxy".to_string(), "http://mine:1".to_string())]);
        let host = [
            (
                "HTTPS_PROXY".to_string(),
                "http://localhost:3128".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let out = with_proxy_env(env.clone(), host.clone(), true);
        assert_eq!(out["http_proxy"], "http://mine:1");
        assert_eq!(out["HTTP_PROXY"], "http://mine:1");
        assert_eq!(out["HTTPS_PROXY"], "http://10.0.2.2:3128");
        assert_eq!(out["https_proxy"], "http://10.0.2.2:3128");
        assert!(!out.contains_key("PATH"));
        let kept = with_proxy_env(env, host, false);
        assert!(
            !kept.contains_key("HTTPS_PROXY"),
            "propagateProxyEnv: false"
        );
    }

    #[test]
    fn host_names_map_to_addresses() {
        let lima = parse(
            "hostResolver:\n  hosts:\n    host.docker.internal: host.lima.internal\n    db: 192.168.5.9\n    other: example.org\n",
        )
        .unwrap();
        let (lines, skipped) = lima.etc_hosts();
        assert!(lines.contains(&("10.0.2.2".into(), "host.docker.internal".into())));
        assert!(lines.contains(&("192.168.5.9".into(), "db".into())));
        assert_eq!(skipped, ["other"]);
    }
}
