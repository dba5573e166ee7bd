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
