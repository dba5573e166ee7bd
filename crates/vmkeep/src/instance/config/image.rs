//! Image references in a config (`images:`): where a file comes from, the
//! architecture it is for, its kernel and initrd, and its expected digest.

use std::fmt;
use std::path::PathBuf;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::Arch;
use crate::instance::yaml_de::{nullable, parse_checked};

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
    /// Lima's distribution variant (`minimal`, ...): entries without one are
    /// preferred; the others are used only when no plain entry exists.
    #[serde(default, deserialize_with = "nullable")]
    pub variant: Option<String>,
    /// Lima's microarchitecture variant (`v2`, `v3`): as `variant`.
    #[serde(default, deserialize_with = "nullable")]
    pub arch_variant: Option<String>,
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

/// The architecture an image is built for: every one Lima knows, so that a
/// template listing images for all of them parses; only the host's is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ImageArch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
    #[serde(rename = "armv7l")]
    Armv7l,
    #[serde(rename = "riscv64")]
    Riscv64,
    #[serde(rename = "s390x")]
    S390x,
    #[serde(rename = "ppc64le")]
    Ppc64le,
}

impl ImageArch {
    /// The architecture an instance of `arch` boots.
    pub fn of(arch: Arch) -> ImageArch {
        match arch {
            Arch::X86_64 => ImageArch::X86_64,
            Arch::Aarch64 => ImageArch::Aarch64,
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
