//! Instance configuration: `vmkeep.yaml`, with Lima's field names where Lima
//! has the field (`vmType`, `arch`, `cpus`, `memory`, `disk`).
//!
//! Every value is checked while it is parsed, so an error carries the line
//! and column of the offending field; unknown fields are errors too. A config
//! that parses is valid.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The built-in template `vmkeep create` writes when no `--template` is given.
pub const DEFAULT_TEMPLATE: &str = "\
# vmkeep instance configuration. Unknown fields are errors.
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
# Accelerator: auto (KVM where it really works, else TCG), kvm or tcg.
# The environment variable VMKEEP_ACCEL overrides this.
accel: auto
";

/// A parsed, valid instance configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    #[serde(default)]
    pub vm_type: VmType,
    #[serde(default)]
    pub arch: Arch,
    #[serde(default)]
    pub cpus: Cpus,
    #[serde(default = "default_memory")]
    pub memory: Memory,
    #[serde(default = "default_disk")]
    pub disk: DiskSize,
    #[serde(default)]
    pub accel: AccelSetting,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Timeout,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: Timeout,
    /// Settings for the kernel of the built-in tiny image.
    #[serde(default)]
    pub kernel: KernelSettings,
    /// What `vmkeep daemon` does when the VM exits (KubeVirt's runStrategy).
    /// Absent: the daemon leaves the instance alone.
    #[serde(default)]
    pub run_strategy: Option<RunStrategy>,
    /// Cloud images to boot instead of the tiny image (Lima's `images:`);
    /// the first one for the host's architecture that can be fetched wins.
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// Scripts cloud-init runs once, at the first boot of a cloud image.
    #[serde(default)]
    pub provision: Vec<Provision>,
}

/// One entry of `images:` (Lima's shape).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageEntry {
    /// An http(s) URL or an absolute local path.
    pub location: Location,
    #[serde(default)]
    pub arch: ImageArch,
    /// `sha256:HEX` or `sha512:HEX`; checked before the file is used.
    #[serde(default)]
    pub digest: Option<Digest>,
    /// A kernel for direct boot (else the image boots through its firmware).
    #[serde(default)]
    pub kernel: Option<KernelFile>,
    /// An initrd for direct boot; needs `kernel`.
    #[serde(default)]
    pub initrd: Option<FileRef>,
}

/// A kernel file of an image entry, with its command line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelFile {
    pub location: Location,
    #[serde(default)]
    pub digest: Option<Digest>,
    /// The kernel command line (default: `root=/dev/vda console=ttyS0`).
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// A file other than the image itself (an initrd).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileRef {
    pub location: Location,
    #[serde(default)]
    pub digest: Option<Digest>,
}

/// The architecture an image is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ImageArch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl ImageArch {
    /// The architecture an instance of `arch` boots.
    pub fn of(arch: Arch) -> ImageArch {
        match arch {
            Arch::X86_64 => ImageArch::X86_64,
        }
    }
}

/// Where a file comes from: an http(s) URL or an absolute local path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Url(String),
    Path(PathBuf),
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, String> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            if text
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty())
            {
                return Err(format!("location: {text:?} has no host"));
            }
            return Ok(Location::Url(text.to_string()));
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Location::parse(path);
        }
        if text.contains("://") {
            return Err(format!(
                "location: {text:?} has an unsupported scheme; use http://, https:// or an absolute path"
            ));
        }
        let path = PathBuf::from(text);
        if path.is_absolute() {
            Ok(Location::Path(path))
        } else {
            Err(format!(
                "location: {text:?} is neither an http(s) URL nor an absolute path"
            ))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Url(url) => f.write_str(url),
            Location::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, Location::parse)
    }
}

/// The digest algorithms `digest:` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// An expected file digest: `sha256:HEX` or `sha512:HEX` (hex in lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algorithm: DigestAlgorithm,
    pub hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, String> {
        let text = text.trim();
        let (name, hex) = text.split_once(':').ok_or_else(|| {
            format!("digest: {text:?} has no algorithm; write it as sha256:HEX or sha512:HEX")
        })?;
        let algorithm = match name.to_ascii_lowercase().as_str() {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => {
                return Err(format!(
                    "digest: unsupported algorithm {other:?}; use sha256 or sha512"
                ));
            }
        };
        let hex = hex.to_ascii_lowercase();
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "digest: a {} digest is {} hex digits, got {:?}",
                algorithm.name(),
                algorithm.hex_len(),
                hex
            ));
        }
        Ok(Digest { algorithm, hex })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, Digest::parse)
    }
}

/// One `provision:` script (Lima's shape).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Provision {
    #[serde(default)]
    pub mode: ProvisionMode,
    /// The script; starts with `#!` or runs with /bin/sh.
    pub script: String,
}

/// Who runs a provision script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionMode {
    /// root
    #[default]
    System,
    /// the instance's user, in a login shell
    User,
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

fn default_memory() -> Memory {
    Memory(ByteSize(256 * MIB))
}
fn default_disk() -> DiskSize {
    DiskSize(ByteSize(2 * GIB))
}
fn default_stop_timeout() -> Timeout {
    Timeout(Duration::from_secs(30))
}
fn default_boot_timeout() -> Timeout {
    Timeout(Duration::from_secs(180))
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

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message includes the field and its line and column.
    #[error(
        "invalid config {path}: {message}\n  fix the field named above; `vmkeep create --help` shows the fields"
    )]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Parse YAML text. An empty document means all defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return serde_yaml_ng::from_str("{}").map_err(|e| e.to_string());
        }
        serde_yaml_ng::from_str(text).map_err(|e| without_repeated_field(&e.to_string()))
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })
    }

    /// Whether the instance boots a cloud image (else the tiny image).
    pub fn is_cloud(&self) -> bool {
        !self.images.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    #[default]
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Arch {
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
        }
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
    Tcg,
}

impl std::str::FromStr for AccelSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelSetting::Auto),
            "kvm" => Ok(AccelSetting::Kvm),
            "tcg" => Ok(AccelSetting::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}; use auto, kvm or tcg"
            )),
        }
    }
}

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// A size in bytes, written as `256MiB`, `2GiB`, `512M`, `1G` or plain bytes.
/// K, M, G and T are binary units, as in Lima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write it like 256MiB or 2GiB"))?;
        let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => MIB,
            "g" | "gb" | "gib" => GIB,
            "t" | "tb" | "tib" => 1024 * GIB,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?}; use KiB, MiB, GiB or TiB"
                ));
            }
        };
        Ok(ByteSize((number * multiplier as f64) as u64))
    }

    pub fn mib(self) -> u64 {
        self.0 / MIB
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b >= GIB && b % GIB == 0 => write!(f, "{}GiB", b / GIB),
            b if b >= MIB && b % MIB == 0 => write!(f, "{}MiB", b / MIB),
            b => write!(f, "{b}B"),
        }
    }
}

/// Deserialize a value from a string or number and check it; the error
/// message becomes serde's, which carries the YAML location.
/// The YAML parser prefixes an error with the field's path; the value
/// checks below name their field themselves. Say it once.
fn without_repeated_field(message: &str) -> String {
    if let Some((field, rest)) = message.split_once(": ")
        && rest.starts_with(&format!("{field}: "))
    {
        return rest.to_string();
    }
    message.to_string()
}

fn parse_checked<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    /// Takes the scalar as text. Visiting (rather than buffering through an
    /// untagged enum) keeps the parser at the value, so an error carries the
    /// value's own line.
    struct ScalarText<F>(F);

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> de::Visitor<'de> for ScalarText<F> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number or a string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.0)(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
    }

    d.deserialize_any(ScalarText(parse))
}

/// Number of virtual CPUs, 1 to 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub u32);

impl Default for Cpus {
    fn default() -> Self {
        Cpus(1)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| match text.parse::<u32>() {
            Ok(n @ 1..=64) => Ok(Cpus(n)),
            _ => Err(format!(
                "cpus: {text:?} is not a CPU count; use a whole number from 1 to 64"
            )),
        })
    }
}

/// Guest memory, 64 MiB to 1 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory(pub ByteSize);

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| {
            let size = ByteSize::parse(text).map_err(|e| format!("memory: {e}"))?;
            if size.0 < 64 * MIB || size.0 > 1024 * GIB {
                return Err(format!(
                    "memory: {size} is out of range; use between 64MiB and 1024GiB"
                ));
            }
            Ok(Memory(size))
        })
    }
}

/// Size of the data disk, 16 MiB to 16 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSize(pub ByteSize);

impl<'de> Deserialize<'de> for DiskSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| {
            let size = ByteSize::parse(text).map_err(|e| format!("disk: {e}"))?;
            if size.0 < 16 * MIB || size.0 > 16 * 1024 * GIB {
                return Err(format!(
                    "disk: {size} is out of range; use between 16MiB and 16TiB"
                ));
            }
            Ok(DiskSize(size))
        })
    }
}

/// A timeout such as `30s` or `2m`, from 1 second to 1 hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    pub fn parse(text: &str) -> Result<Timeout, String> {
        let duration = humantime::parse_duration(text.trim())
            .map_err(|_| format!("{text:?} is not a duration; write it like 30s, 90s or 2m"))?;
        if duration < Duration::from_secs(1) || duration > Duration::from_secs(3600) {
            return Err(format!("{text:?} is out of range; use between 1s and 1h"));
        }
        Ok(Timeout(duration))
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, Timeout::parse)
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A path that must be absolute (relative paths break under service managers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsolutePath(pub PathBuf);

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        if path.is_absolute() {
            Ok(AbsolutePath(path))
        } else {
            Err(de::Error::custom(format!(
                "{} is a relative path; write an absolute path",
                path.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_parses_to_the_defaults() {
        let config = Config::default();
        assert_eq!(config.cpus, Cpus(1));
        assert_eq!(config.memory, Memory(ByteSize(256 * MIB)));
        assert_eq!(config.disk, DiskSize(ByteSize(2 * GIB)));
        assert_eq!(config.stop_timeout, Timeout(Duration::from_secs(30)));
        assert_eq!(config.accel, AccelSetting::Auto);
        assert_eq!(Config::parse("").unwrap(), config);
        assert_eq!(Config::parse("# only a comment\n").unwrap(), config);
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
    fn unknown_fields_are_named_with_their_line() {
        let err = Config::parse("cpus: 1\ncpu: 2\n").unwrap_err();
        assert!(
            err.contains("unknown field `cpu`") && err.contains("line 2"),
            "{err}"
        );
        let err = Config::parse("kernel:\n  cmdline: x\n  modulez: /m\n").unwrap_err();
        assert!(err.contains("modulez") && err.contains("line 3"), "{err}");
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
            ("accel: hvf\n", "hvf", "auto", 2),
            ("kernel:\n  path: vmlinuz\n", "relative", "absolute", 3),
        ];
        for (yaml, names, fix, line) in cases {
            let err = Config::parse(&format!("# header\n{yaml}")).unwrap_err();
            // Without the header, the same field is one line up.
            let first = Config::parse(yaml).unwrap_err();
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
            (
                "images:\n- location: /x\n  url: /y\n",
                "unknown field `url`",
                3,
            ),
            ("images:\n- arch: x86_64\n", "missing field `location`", 2),
            ("provision:\n- mode: root\n  script: x\n", "root", 2),
        ];
        for (yaml, says, line) in cases {
            let err = Config::parse(yaml).unwrap_err();
            assert!(
                err.contains(says) && err.contains(&format!("line {line}")),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn invalid_yaml_is_reported_with_its_line() {
        let err = Config::parse("cpus: 1\nmemory: [\n").unwrap_err();
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
