//! Instance configuration: `vmkeep.yaml`, in Lima's field names and shapes
//! (`vmType`, `arch`, `cpus`, `memory`, `disk`, `images`, `provision`, ...;
//! Lima's other settings are in `lima.rs`).
//!
//! Every value is checked while it is parsed, so an error carries the line
//! and column of the offending field. A field vmkeep does not know is noted
//! and left out, as Lima does, or refused with its line and the nearest
//! known name under `--strict` ([`unknown_fields`]). A config that parses is
//! valid on its own;
//! [`Config::check_whole`] adds the checks that need the whole, merged
//! template (a tiny-image instance cannot take provision scripts, ...).
//!
//! [`schema`] is what the YAML may say, [`image`] its image references,
//! [`units`] the checked values, [`error`] why a config is refused,
//! [`unknown_fields`] the parsing policy; this
//! file fills the defaults and holds the whole, valid [`Config`].

pub mod error;
pub mod image;
pub mod schema;
pub mod units;
pub mod unknown_fields;

use std::path::Path;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

pub use self::error::{ConfigError, ParseError};
pub use self::image::{
    Digest, DigestAlgorithm, FileRef, ImageArch, ImageEntry, KernelFile, Location,
};
pub use self::schema::RawConfig;
pub use self::units::{AbsolutePath, ByteSize, Cpus, DiskSize, GIB, MIB, Memory, Timeout};
pub use self::unknown_fields::{FieldPolicy, UnknownField};
pub use super::provision::{DataFile, Probe, Provision, ProvisionMode, YqEdit};
use super::yaml_de::parse_checked;
use crate::timeouts;

/// The built-in template `vmkeep create` writes when no `--template` is given.
pub const DEFAULT_TEMPLATE: &str = "\
# vmkeep instance configuration. Unknown fields are noted and ignored
# (`vmkeep create --strict` refuses them).
# Boots the built-in tiny image: a Debian cloud kernel and vmkeep's own
# initramfs (guest agent as PID 1, busybox), with the data disk at /data.

vmType: qemu
# Number of virtual CPUs.
cpus: 1
# Guest memory (KiB, MiB, GiB; K, M, G mean the same).
memory: 256MiB
# Size of the data disk (a sparse qcow2, mounted at /data in the guest).
disk: 2GiB
# How long a graceful stop may take before vmkeep forces the VM off.
stopTimeout: 30s
# How long a start may take until the guest agent reports ready.
bootTimeout: 180s
# What a host shutdown does to the VM: poweroff (its stop ladder), or
# suspend (its state is saved and the next boot resumes it).
onHostShutdown: poweroff
# Accelerator: auto (KVM where it really works, else TCG), kvm or tcg.
# The environment variable VMKEEP_ACCEL overrides this.
accel: auto
";

/// A parsed, valid instance configuration.
///
/// Built from [`RawConfig`] (what the YAML says, every field optional) by
/// filling defaults: a cloud image (`images:` given) gets cloud-sized ones
/// (2 CPUs, 2 GiB, 20 GiB, 60 s stop, 600 s boot), the tiny image its own
/// (1 CPU, 256 MiB, 2 GiB, 30 s, 180 s).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vm_type: VmType,
    pub arch: Arch,
    pub cpus: Cpus,
    pub memory: Memory,
    pub disk: DiskSize,
    pub accel: AccelSetting,
    pub stop_timeout: Timeout,
    pub boot_timeout: Timeout,
    /// Settings for the kernel of the built-in tiny image.
    pub kernel: KernelSettings,
    /// What `vmkeep daemon` does when the VM exits (KubeVirt's runStrategy).
    /// Absent: the daemon leaves the instance alone.
    pub run_strategy: Option<RunStrategy>,
    /// What a host shutdown does to the VM.
    pub on_host_shutdown: OnHostShutdown,
    /// Cloud images to boot instead of the tiny image (Lima's `images:`);
    /// the first one for the host's architecture that can be fetched wins.
    pub images: Vec<ImageEntry>,
    /// Scripts and files cloud-init applies (Lima's `provision:`).
    pub provision: Vec<Provision>,
    /// Readiness probes: `start` returns once every one has passed.
    pub probes: Vec<Probe>,
    /// Everything as written, Lima's own settings included (`ssh`, `user`,
    /// `env`, `param`, `message`, ...; see `instance/lima.rs`).
    pub raw: RawConfig,
}

/// When the daemon (re)starts an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStrategy {
    /// Restart after any exit, the guest's own power-off included.
    Always,
    /// Restart only after a crash (QEMU or host agent died, start failed).
    OnFailure,
    /// Never restart; start and stop only when asked.
    Manual,
    /// Keep it stopped: the daemon stops it if it runs.
    Halted,
}

impl RunStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "always",
            RunStrategy::OnFailure => "on-failure",
            RunStrategy::Manual => "manual",
            RunStrategy::Halted => "halted",
        }
    }
}

/// What a host shutdown (systemd going down, or `vmkeep daemon` stopping
/// all it runs) does to a VM. A `vmkeep stop` or a stop of its one unit is
/// not a host shutdown: it always stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHostShutdown {
    /// The stop ladder: the guest powers off.
    #[default]
    Poweroff,
    /// Save its state (within `stopTimeout`), resumed at the next boot; if
    /// the save fails or would not fit, the stop ladder as for poweroff.
    Suspend,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_TEMPLATE).expect("the built-in template is valid")
    }
}

/// Kernel of the built-in tiny image.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelSettings {
    /// A kernel image to use instead of Debian's cloud kernel (for hosts
    /// without apt). Must be an absolute path.
    #[serde(default)]
    pub path: Option<AbsolutePath>,
    /// Directory holding that kernel's modules (`/lib/modules/RELEASE`).
    #[serde(default)]
    pub modules: Option<AbsolutePath>,
    /// Extra kernel command-line arguments, appended to vmkeep's own.
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// Cloud-image defaults where a setting is absent (Lima's are larger: min(4,
/// host cores), min(4GiB, half the host's memory), 100GiB).
const CLOUD_CPUS: u32 = 2;
const CLOUD_MEMORY: u64 = 2 * GIB;
const CLOUD_DISK: u64 = 20 * GIB;
const CLOUD_STOP_TIMEOUT: u64 = 60;
const CLOUD_BOOT_TIMEOUT: u64 = 600;

impl Config {
    /// Parse YAML text. An empty document means all defaults. This is the
    /// one entry point from text (create, load and the fuzz target use it).
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        Ok(Config::from_raw(RawConfig::parse(text)?))
    }

    /// Parse YAML text with the fields vmkeep does not know, noted or
    /// refused as `policy` says.
    pub fn read(
        text: &str,
        policy: FieldPolicy,
    ) -> Result<(Config, Vec<UnknownField>), ParseError> {
        let (raw, unknown) = RawConfig::read(text, policy)?;
        Ok((Config::from_raw(raw), unknown))
    }

    /// Fill the defaults of a raw config.
    pub fn from_raw(raw: RawConfig) -> Config {
        let images = raw.images.clone().unwrap_or_default();
        let cloud = !images.is_empty();
        let pick = |cloud_value: u64, tiny_value: u64| if cloud { cloud_value } else { tiny_value };
        Config {
            vm_type: raw.vm_type.unwrap_or_default(),
            arch: raw.arch.unwrap_or_default(),
            cpus: raw.cpus.unwrap_or(Cpus(pick(CLOUD_CPUS.into(), 1) as u32)),
            memory: raw
                .memory
                .unwrap_or(Memory(ByteSize(pick(CLOUD_MEMORY, 256 * MIB)))),
            disk: raw
                .disk
                .unwrap_or(DiskSize(ByteSize(pick(CLOUD_DISK, 2 * GIB)))),
            accel: raw.accel.unwrap_or_default(),
            stop_timeout: raw.stop_timeout.unwrap_or(Timeout(Duration::from_secs(pick(
                CLOUD_STOP_TIMEOUT,
                timeouts::DEFAULT_STOP_TIMEOUT.as_secs(),
            )))),
            boot_timeout: raw.boot_timeout.unwrap_or(Timeout(Duration::from_secs(pick(
                CLOUD_BOOT_TIMEOUT,
                timeouts::DEFAULT_BOOT_TIMEOUT.as_secs(),
            )))),
            kernel: raw.kernel.clone().unwrap_or_default(),
            run_strategy: raw.run_strategy,
            on_host_shutdown: raw.on_host_shutdown.unwrap_or_default(),
            images,
            provision: raw.provision.clone().unwrap_or_default(),
            probes: raw.probes.clone().unwrap_or_default(),
            raw,
        }
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|source| ConfigError::Invalid {
            path: path.into(),
            source,
        })
    }

    /// The longest a host shutdown may have to wait for this VM: its stop
    /// ladder's deadline, and for `onHostShutdown: suspend` before it a save
    /// that may take as long (and then fail, leaving the ladder to run).
    pub fn host_shutdown_deadline(&self) -> Duration {
        match self.on_host_shutdown {
            OnHostShutdown::Poweroff => self.stop_timeout.0,
            OnHostShutdown::Suspend => self.stop_timeout.0 * 2,
        }
    }

    /// Whether the instance boots a cloud image (else the tiny image).
    pub fn is_cloud(&self) -> bool {
        !self.images.is_empty()
    }

    /// Checks that need the whole (merged) config, run when an instance is
    /// created: what the built-in tiny image cannot do, and `file:`
    /// references left unresolved.
    pub fn check_whole(&self) -> Result<(), ParseError> {
        if !self.is_cloud() {
            let raw = &self.raw;
            let ssh = raw.ssh();
            let user = raw.user();
            let needs_cloud = [
                ("provision", !self.provision.is_empty()),
                ("probes", !self.probes.is_empty()),
                ("env", !raw.env().is_empty()),
                ("ssh.localPort", ssh.local_port.is_some_and(|p| p != 0)),
                (
                    "ssh.loadDotSSHPubKeys",
                    ssh.load_dot_ssh_pub_keys == Some(true),
                ),
                (
                    "user",
                    user.name.is_some()
                        || user.uid.is_some()
                        || user.home.is_some()
                        || user.shell.is_some(),
                ),
                (
                    "caCerts",
                    raw.ca_certs.as_ref().is_some_and(|c| {
                        c.remove_defaults == Some(true)
                            || c.certs.as_ref().is_some_and(|v| !v.is_empty())
                            || c.files.as_ref().is_some_and(|v| !v.is_empty())
                    }),
                ),
                ("upgradePackages", raw.upgrade_packages == Some(true)),
                (
                    "timezone",
                    raw.timezone.as_ref().is_some_and(|t| !t.is_empty()),
                ),
            ];
            let used: Vec<&str> = needs_cloud
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
            if !used.is_empty() {
                return Err(ParseError::whole(format!(
                    "{} need a cloud image (images:): the built-in tiny image has no cloud-init, users or ssh; \
                     add images: (or base: template:debian-12), or remove {}",
                    used.join(", "),
                    if used.len() == 1 { "it" } else { "them" }
                )));
            }
        }
        let unresolved = self
            .provision
            .iter()
            .filter_map(|p| p.file.as_deref())
            .chain(self.probes.iter().filter_map(|p| p.file.as_deref()))
            .next();
        if let Some(file) = unresolved {
            return Err(ParseError::whole(format!(
                "file: {file} was not read into the config; create the instance from its template file so that relative files are found"
            )));
        }
        Ok(())
    }
}

/// `vmType:` QEMU only (Lima's `default` is QEMU on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    #[default]
    Qemu,
}

impl<'de> Deserialize<'de> for VmType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| match text {
            "qemu" | "default" => Ok(VmType::Qemu),
            "vz" | "wsl2" | "krunkit" => Err(format!(
                "vmType: {text} is not supported: vmkeep runs VMs on QEMU only; remove vmType or set it to qemu"
            )),
            other => Err(format!("vmType: {other:?} is not a VM type; use qemu")),
        })
    }
}

/// `arch:` of the guest: x86_64 or aarch64 (`default`: the host's). A
/// guest of another architecture than the host's is emulated (see
/// `driver::qemu::accel`); every choice that depends on it is made in
/// [`crate::guest_arch`].
pub use crate::guest_arch::GuestArch as Arch;

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| match Arch::from_name(text) {
            Some(arch) => Ok(arch),
            None if matches!(text, "armv7l" | "riscv64" | "s390x" | "ppc64le") => Err(format!(
                "arch: {text} guests are not supported by vmkeep yet: it boots x86_64 and aarch64 guests; remove arch or set it to default, x86_64 or aarch64"
            )),
            None => Err(format!(
                "arch: {text:?} is not an architecture; use x86_64, aarch64 or default"
            )),
        })
    }
}

/// The accelerator the instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// KVM where it really works, else TCG.
    #[default]
    Auto,
    Kvm,
    /// macOS's Hypervisor.framework.
    Hvf,
    Tcg,
}

impl std::str::FromStr for AccelSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelSetting::Auto),
            "kvm" => Ok(AccelSetting::Kvm),
            "hvf" => Ok(AccelSetting::Hvf),
            "tcg" => Ok(AccelSetting::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}; use auto, kvm, hvf or tcg"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings that matter, without the raw text's `Option`s.
    fn core(c: &Config) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            c.vm_type,
            c.arch,
            c.cpus,
            c.memory,
            c.disk,
            c.accel,
            c.stop_timeout,
            c.boot_timeout,
            c.kernel,
            c.images,
            c.provision
        )
    }

    #[test]
    fn the_default_template_parses_to_the_defaults() {
        let config = Config::default();
        assert_eq!(config.cpus, Cpus(1));
        assert_eq!(config.memory, Memory(ByteSize(256 * MIB)));
        assert_eq!(config.disk, DiskSize(ByteSize(2 * GIB)));
        assert_eq!(config.stop_timeout, Timeout(Duration::from_secs(30)));
        assert_eq!(config.accel, AccelSetting::Auto);
        assert_eq!(core(&Config::parse("").unwrap()), core(&config));
        assert_eq!(
            core(&Config::parse("# only a comment\n").unwrap()),
            core(&config)
        );
    }

    #[test]
    fn on_host_shutdown_defaults_to_poweroff_and_a_save_doubles_the_shutdown_deadline() {
        let config = Config::default();
        assert_eq!(config.on_host_shutdown, OnHostShutdown::Poweroff);
        assert_eq!(config.host_shutdown_deadline(), Duration::from_secs(30));
        let config = Config::parse("stopTimeout: 20s\nonHostShutdown: suspend\n").unwrap();
        assert_eq!(config.on_host_shutdown, OnHostShutdown::Suspend);
        // A save that may take stopTimeout, then the ladder's stopTimeout.
        assert_eq!(config.host_shutdown_deadline(), Duration::from_secs(40));
        let config = Config::parse("onHostShutdown: null\n").unwrap();
        assert_eq!(config.on_host_shutdown, OnHostShutdown::Poweroff);
    }

    #[test]
    fn lima_style_values_parse() {
        let config =
            Config::parse("cpus: 2\nmemory: 1G\ndisk: 10GiB\nstopTimeout: 2m\naccel: tcg\n")
                .unwrap();
        assert_eq!(config.cpus, Cpus(2));
        assert_eq!(config.memory.0, ByteSize(GIB));
        assert_eq!(config.disk.0, ByteSize(10 * GIB));
        assert_eq!(config.stop_timeout.0, Duration::from_secs(120));
        assert_eq!(config.accel, AccelSetting::Tcg);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line_under_strict() {
        let strict = |yaml: &str| {
            Config::read(yaml, FieldPolicy::Refuse)
                .unwrap_err()
                .to_string()
        };
        let err = strict("cpus: 1\ncpu: 2\n");
        assert!(
            err.contains("unknown field `cpu`") && err.contains("line 2"),
            "{err}"
        );
        let err = strict("kernel:\n  cmdline: x\n  modulez: /m\n");
        assert!(err.contains("modulez") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_fields_are_noted_with_their_path_line_and_nearest_name_and_left_out() {
        let (config, unknown) = Config::read(
            "# Lima's\ncpus: 2\ntpmx: true\nuser:\n  name: bob\n  futureField: [1, 2]\n\
             portForwards:\n- {guestPort: 80, static2: true}\n- guestPort: 81\n  Static: true\nmemroy: 1GiB\n",
            FieldPolicy::Note,
        )
        .unwrap();
        assert_eq!(config.cpus, Cpus(2));
        assert_eq!(config.raw.user().name.as_deref(), Some("bob"));
        assert_eq!(config.raw.port_forwards.as_ref().map(Vec::len), Some(2));
        let said: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "line 3: tpmx: not a field vmkeep knows; ignored (did you mean `tpm`?)",
                "line 6: user.futureField: not a field vmkeep knows; ignored",
                "line 8: portForwards[0].static2: not a field vmkeep knows; ignored (did you mean `static`?)",
                "line 10: portForwards[1].Static: not a field vmkeep knows; ignored (did you mean `static`?)",
                "line 11: memroy: not a field vmkeep knows; ignored (did you mean `memory`?)",
            ]
        );
        // A value that is wrong is still refused, at its own line.
        let err = Config::parse("tpmx: 1\ncpus: 0\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        // Noting stops at a bound.
        let many: String = (0..=unknown_fields::MAX_UNKNOWN)
            .map(|i| format!("x{i}: 1\n"))
            .collect();
        assert!(Config::parse(&many).is_err());
    }

    #[test]
    fn invalid_values_name_the_field_the_line_and_the_fix() {
        let cases = [
            ("cpus: 0\n", "cpus", "1 to 64", 2),
            ("cpus: two\n", "cpus", "1 to 64", 2),
            ("memory: 1MiB\n", "memory", "between 64MiB", 2),
            ("memory: lots\n", "memory", "256MiB", 2),
            ("disk: 5XB\n", "disk", "unknown unit", 2),
            ("stopTimeout: forever\n", "forever", "30s", 2),
            ("stopTimeout: 0s\n", "0s", "between 1s", 2),
            ("vmType: vz\n", "vz", "qemu", 2),
            ("accel: whpx\n", "whpx", "`hvf`", 2),
            ("onHostShutdown: hibernate\n", "hibernate", "suspend", 2),
            ("kernel:\n  path: vmlinuz\n", "relative", "absolute", 3),
        ];
        for (yaml, names, fix, line) in cases {
            let err = Config::parse(&format!("# header\n{yaml}"))
                .unwrap_err()
                .to_string();
            // Without the header, the same field is one line up.
            let first = Config::parse(yaml).unwrap_err().to_string();
            assert!(
                first.contains(&format!("line {}", line - 1)),
                "{yaml:?} gave {first}"
            );
            assert!(!first.contains(&format!("{names}: {names}:")), "{first}");
            let at_line = format!("line {line}");
            assert!(
                err.contains(names) && err.contains(fix) && err.contains(&at_line),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn images_and_provision_parse_in_limas_shape() {
        let sha = "a".repeat(64);
        let config = Config::parse(&format!(
            "images:\n- location: https://example.org/d.qcow2\n  arch: x86_64\n  digest: sha256:{sha}\n\
             - location: /srv/img.qcow2\n  kernel:\n    location: /srv/vmlinuz\n    cmdline: root=/dev/vda\n  initrd:\n    location: file:///srv/initrd.img\n\
             provision:\n- mode: user\n  script: echo hi\n- script: |\n    #!/bin/sh\n    true\n"
        ))
        .unwrap();
        assert!(config.is_cloud());
        assert_eq!(
            config.images[0].location,
            Location::Url("https://example.org/d.qcow2".into())
        );
        assert_eq!(
            config.images[0].digest.as_ref().unwrap().to_string(),
            format!("sha256:{sha}")
        );
        let second = &config.images[1];
        assert_eq!(second.location, Location::Path("/srv/img.qcow2".into()));
        assert_eq!(
            second.kernel.as_ref().unwrap().cmdline.as_deref(),
            Some("root=/dev/vda")
        );
        assert_eq!(
            second.initrd.as_ref().unwrap().location,
            Location::Path("/srv/initrd.img".into())
        );
        assert_eq!(config.provision[0].mode, ProvisionMode::User);
        assert_eq!(config.provision[1].mode, ProvisionMode::System);
        assert!(!Config::default().is_cloud());
    }

    #[test]
    fn digests_parse_and_reject_bad_input() {
        let d = Digest::parse(&format!("SHA512:{}", "AB".repeat(64))).unwrap();
        assert_eq!(d.algorithm, DigestAlgorithm::Sha512);
        assert_eq!(d.hex, "ab".repeat(64));
        for (bad, says) in [
            ("abc", "no algorithm"),
            ("md5:abc", "unsupported algorithm"),
            ("sha256:abc", "64 hex digits"),
            (&format!("sha256:{}", "g".repeat(64)), "64 hex digits"),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_image_fields_name_the_field_and_line() {
        let cases = [
            ("images:\n- location: img.qcow2\n", "absolute path", 2),
            ("images:\n- location: ftp://x/y\n", "unsupported scheme", 2),
            (
                "images:\n- location: /x\n  digest: sha1:00\n",
                "unsupported algorithm",
                3,
            ),
            ("images:\n- location: /x\n  arch: sparc\n", "sparc", 3),
            ("images:\n- arch: x86_64\n", "missing field `location`", 2),
            ("provision:\n- mode: root\n  script: x\n", "root", 2),
        ];
        for (yaml, says, line) in cases {
            let err = Config::parse(yaml).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(&format!("line {line}")),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn a_misspelt_field_names_its_line_and_the_nearest_field_at_any_depth() {
        for (yaml, field, near, line) in [
            (
                "images:\n- location: /x\n  digets: /y\n",
                "digets",
                "digest",
                3,
            ),
            ("cpu: 2\n", "cpu", "cpus", 1),
            ("# c\ncpus: 1\nmemroy: 1GiB\n", "memroy", "memory", 3),
            ("provisions:\n- script: x\n", "provisions", "provision", 1),
            ("ssh:\n  localport: 22\n", "localport", "localPort", 2),
            (
                "images:\n- location: /x\n  archh: x86_64\n",
                "archh",
                "arch",
                3,
            ),
        ] {
            let err = Config::read(yaml, FieldPolicy::Refuse).unwrap_err();
            assert_eq!(err.unknown_field.as_deref(), Some(field), "{err}");
            assert_eq!(err.suggestion.as_deref(), Some(near), "{err}");
            assert_eq!(err.line, Some(line), "{yaml:?}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("did you mean `{near}`?"))
                    && text.contains(&format!("line {line}")),
                "{text}"
            );
        }
    }

    #[test]
    fn nulls_mean_defaults_and_cloud_images_get_cloud_defaults() {
        let config = Config::parse(
            "vmType: null\narch: null\ncpus: null\nmemory: null\ndisk: null\nimages: []\n",
        )
        .unwrap();
        assert_eq!(core(&config), core(&Config::default()));
        let cloud = Config::parse("images:\n- location: /i.qcow2\n").unwrap();
        assert_eq!(
            (
                cloud.cpus.0,
                cloud.memory.0.to_string(),
                cloud.disk.0.to_string(),
                cloud.boot_timeout.0.as_secs()
            ),
            (2, "2GiB".into(), "20GiB".into(), 600)
        );
        let set = Config::parse("cpus: 4\nimages:\n- location: /i.qcow2\n").unwrap();
        assert_eq!(set.cpus.0, 4);
    }

    #[test]
    fn limas_vm_types_and_arches_that_cannot_apply_say_so() {
        for (yaml, says) in [
            ("vmType: vz\n", "QEMU only"),
            ("vmType: wsl2\n", "remove vmType"),
            ("arch: riscv64\n", "arch: riscv64 guests are not supported"),
            ("arch: mips\n", "use x86_64, aarch64 or default"),
        ] {
            let err = Config::parse(yaml).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("line 1"), "{err}");
        }
        assert_eq!(
            core(&Config::parse("vmType: default\narch: default\n").unwrap()),
            core(&Config::default())
        );
        for arch in Arch::ALL {
            let config = Config::parse(&format!("arch: {arch}\n")).unwrap();
            assert_eq!(config.arch, arch);
        }
    }

    #[test]
    fn images_for_every_arch_parse_with_their_variants() {
        let config = Config::parse(
            "images:\n- location: /a\n  arch: riscv64\n- location: /b\n  arch: armv7l\n- location: /c\n  arch: s390x\n\
             - location: /d\n  arch: ppc64le\n- location: /e\n  arch: x86_64\n  archVariant: v3\n- location: /f\n  arch: x86_64\n  variant: minimal\n",
        )
        .unwrap();
        assert_eq!(config.images.len(), 6);
        assert_eq!(config.images[4].arch_variant.as_deref(), Some("v3"));
        assert_eq!(config.images[5].variant.as_deref(), Some("minimal"));
    }

    #[test]
    fn the_tiny_image_refuses_what_needs_cloud_init() {
        let config = Config::parse("provision:\n- script: x\nuser:\n  name: bob\n").unwrap();
        let err = config.check_whole().unwrap_err().to_string();
        assert!(err.contains("provision, user need a cloud image"), "{err}");
        assert!(
            Config::parse("images:\n- location: /i\nprovision:\n- script: x\n")
                .unwrap()
                .check_whole()
                .is_ok()
        );
        assert!(Config::default().check_whole().is_ok());
    }

    #[test]
    fn invalid_yaml_is_reported_with_its_line() {
        let err = Config::parse("cpus: 1\nmemory: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn byte_sizes_print_in_their_largest_whole_unit() {
        assert_eq!(ByteSize(2 * GIB).to_string(), "2GiB");
        assert_eq!(ByteSize(256 * MIB).to_string(), "256MiB");
        assert_eq!(ByteSize::parse("1.5GiB").unwrap(), ByteSize(GIB + GIB / 2));
        assert_eq!(ByteSize::parse("1073741824").unwrap(), ByteSize(GIB));
    }
}
