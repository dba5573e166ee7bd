//! The units of a config's values, each checked as it is parsed: sizes
//! ([`ByteSize`]: `256MiB`, `2GiB`), CPU counts, memory and disk sizes,
//! timeouts (`30s`, `2m`) and absolute paths.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::instance::yaml_de::parse_checked;

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

    /// The size for messages, rounded: `12.0 MiB`, `512 KiB`.
    pub fn approx(self) -> String {
        if self.0 >= MIB {
            format!("{:.1} MiB", self.0 as f64 / MIB as f64)
        } else {
            format!("{} KiB", self.0 / 1024)
        }
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
