//! Cloud images: at `create`, pick the `images:` entry for the host's
//! architecture, fetch it (and its kernel/initrd) into the cache, and make
//! the instance disk a qcow2 overlay on it; at `start`, turn that into a
//! launch: seed volume, ssh port, boot method.
//!
//! What `create` chose is recorded in the instance's `image.json`, so a
//! start never downloads and never re-resolves.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::download::{self, DownloadError, Progress};
use crate::driver::qemu::accel::Accel;
use crate::driver::qemu::args::{Boot, LaunchSpec};
use crate::driver::qemu::disk_image;
use crate::image::cloudinit::{self, SeedInputs};
use crate::image::sshkeys::{self, SshKeyError};
use crate::instance::InstanceDir;
use crate::instance::config::{Config, ImageArch, ImageEntry};
use crate::instance::vars::{self, ExpandError, GuestUser};
use crate::os;
use crate::os::tool::ToolError;

/// Kernel command line of a direct boot when the image entry gives none.
/// The kernel command line of a cloud image booted with its own kernel
/// (`kernel.cmdline` replaces it), for a guest of `arch`.
pub fn default_cmdline(arch: crate::guest_arch::GuestArch) -> String {
    format!("root=/dev/vda console={}", arch.console())
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(
        "images: no entry is for {arch:?}, the architecture of this instance; add one with `arch: {arch_name}`"
    )]
    NoImageForArch { arch: ImageArch, arch_name: String },
    #[error("{0}")]
    Download(#[from] DownloadError),
    #[error("no image could be fetched:\n  {}", .0.join("\n  "))]
    AllFailed(Vec<String>),
    #[error("{0}")]
    Tool(#[from] ToolError),
    #[error("`qemu-img info` on {path} said something unexpected: {message}")]
    ImageInfo { path: PathBuf, message: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the base image {path} of this instance is gone from the cache; delete the instance and create it again"
    )]
    BaseMissing { path: PathBuf },
    #[error("{0}")]
    Keys(#[from] SshKeyError),
    #[error("{0}\n  fix the template variable in the instance's vmkeep.yaml")]
    Expand(#[from] ExpandError),
    #[error(
        "ssh.localPort {port} is taken on 127.0.0.1 ({source}); free it, or set ssh.localPort: 0 in vmkeep.yaml for a free port at each start"
    )]
    PortTaken { port: u16, source: std::io::Error },
    #[error("{0}\n  fix it in the instance's vmkeep.yaml")]
    Shares(String),
}

impl From<disk_image::DiskImageError> for CloudError {
    fn from(error: disk_image::DiskImageError) -> CloudError {
        match error {
            disk_image::DiskImageError::Tool(e) => CloudError::Tool(e),
            disk_image::DiskImageError::Info { path, message } => {
                CloudError::ImageInfo { path, message }
            }
        }
    }
}

/// What `create` chose for a cloud-image instance (`image.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Where the base image came from.
    pub location: String,
    /// The cached base image, the backing file of the instance disk.
    pub base: PathBuf,
    pub base_format: String,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// The user created in the guest.
    pub user: String,
    /// Its uid, home and shell (absent in records of older vmkeep versions,
    /// whose guests got cloud-init's defaults).
    #[serde(default)]
    pub guest_user: Option<GuestUser>,
    /// A copy of another instance (absent for a fresh one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<crate::instance::identity::Origin>,
}

impl ImageRecord {
    /// The guest user, for records written before it was recorded.
    pub fn guest_user(&self) -> GuestUser {
        self.guest_user.clone().unwrap_or_else(|| GuestUser {
            name: self.user.clone(),
            uid: 1000,
            home: format!("/home/{}", self.user),
            shell: "/bin/bash".into(),
            comment: None,
        })
    }
}

impl ImageRecord {
    /// Write the record to `path` (atomically).
    pub fn write(&self, path: &Path) -> Result<(), CloudError> {
        let json = crate::text::versioned_json::to_vec(crate::formats::IMAGE_RECORD, self)
            .expect("the record serializes");
        os::fs::write_atomic(path, &json, 0o600).map_err(|source| CloudError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(dir: &InstanceDir) -> Result<ImageRecord, CloudError> {
        let path = dir.image_record();
        let text = std::fs::read(&path).map_err(|source| CloudError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        // A newer format is refused, never misread.
        crate::text::versioned_json::check(crate::formats::IMAGE_RECORD, &path, &text).map_err(
            |e| CloudError::Io {
                action: "read",
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            },
        )?;
        serde_json::from_slice(&text).map_err(|e| CloudError::Io {
            action: "parse",
            path,
            source: e.into(),
        })
    }
}

/// The entries usable on this instance's architecture, in order: those
/// without a `variant`/`archVariant` (Lima's default choice); only when
/// there is none, the variants.
pub fn candidates(config: &Config) -> Result<Vec<&ImageEntry>, CloudError> {
    let arch = ImageArch::of(config.arch);
    let for_arch: Vec<_> = config.images.iter().filter(|e| e.arch == arch).collect();
    let plain: Vec<_> = for_arch
        .iter()
        .copied()
        .filter(|e| e.variant.is_none() && e.arch_variant.is_none())
        .collect();
    let found = if plain.is_empty() { for_arch } else { plain };
    if found.is_empty() {
        return Err(CloudError::NoImageForArch {
            arch,
            arch_name: serde_json::to_value(arch)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        });
    }
    Ok(found)
}

/// Fetch the image of `config` and create the overlay `disk` on it; write
/// the record to `record_path`. Tries the entries for this architecture in
/// order (as Lima does) and reports every failure if none works.
pub fn prepare(
    cache_root: &Path,
    config: &Config,
    guest_user: &GuestUser,
    disk: &Path,
    record_path: &Path,
    progress: &mut dyn Progress,
) -> Result<ImageRecord, CloudError> {
    let mut failures = Vec::new();
    let mut fetched = None;
    for entry in candidates(config)? {
        match fetch_entry(cache_root, entry, progress) {
            Ok(files) => {
                fetched = Some((entry, files));
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let Some((entry, (base, kernel, initrd))) = fetched else {
        return Err(CloudError::AllFailed(failures));
    };
    let (base_format, virtual_size) = image_info(&base)?;
    let size = config.disk.0.0.max(virtual_size);
    if size > config.disk.0.0 {
        tracing::info!(
            "disk: the image is {virtual_size} bytes, more than the configured {}; using the image's size",
            config.disk.0
        );
    }
    disk_image::create_overlay(&base, &base_format, disk, size)?;
    let record = ImageRecord {
        location: entry.location.to_string(),
        base,
        base_format,
        kernel,
        initrd,
        cmdline: entry.kernel.as_ref().and_then(|k| k.cmdline.clone()),
        user: guest_user.name.clone(),
        guest_user: Some(guest_user.clone()),
        origin: None,
    };
    record.write(record_path)?;
    Ok(record)
}

type Fetched = (PathBuf, Option<PathBuf>, Option<PathBuf>);

fn fetch_entry(
    cache_root: &Path,
    entry: &ImageEntry,
    progress: &mut dyn Progress,
) -> Result<Fetched, DownloadError> {
    let base = download::fetch(cache_root, &entry.location, entry.digest.as_ref(), progress)?;
    let kernel = entry
        .kernel
        .as_ref()
        .map(|k| download::fetch(cache_root, &k.location, k.digest.as_ref(), progress))
        .transpose()?;
    let initrd = entry
        .initrd
        .as_ref()
        .map(|i| download::fetch(cache_root, &i.location, i.digest.as_ref(), progress))
        .transpose()?;
    Ok((base, kernel, initrd))
}

/// The format and virtual size of an image file.
fn image_info(path: &Path) -> Result<(String, u64), CloudError> {
    let info = disk_image::info(path)?;
    usable(info).map_err(|message| CloudError::ImageInfo {
        path: path.to_path_buf(),
        message,
    })
}

/// `qemu-img info --output=json` -> (format, virtual size).
pub fn parse_image_info(json: &[u8]) -> Result<(String, u64), String> {
    usable(disk_image::parse_info(json)?)
}

/// The format and size of an image vmkeep can boot.
fn usable(info: disk_image::ImageInfo) -> Result<(String, u64), String> {
    if !matches!(
        info.format.as_str(),
        "qcow2" | "raw" | "vmdk" | "vdi" | "vhdx" | "vpc"
    ) {
        return Err(format!(
            "{:?} is not a disk image format vmkeep can use",
            info.format
        ));
    }
    Ok((info.format, info.virtual_size))
}

/// The launch of a cloud-image instance: writes the seed and the ssh port
/// file, then describes the QEMU command line.
pub fn launch_spec(
    dir: &InstanceDir,
    config: &Config,
    accel: Accel,
) -> Result<LaunchSpec, CloudError> {
    let record = ImageRecord::load(dir)?;
    if !record.base.is_file() {
        return Err(CloudError::BaseMissing { path: record.base });
    }
    let root = dir.dir().parent().unwrap_or(dir.dir());
    let keys = sshkeys::ensure(root)?;
    let seed = dir.seed();
    let user = record.guest_user();
    let values = vars::guest_values(config, dir.name().as_str(), dir.dir(), &user);
    let mut expanded = vars::expand(config, &values)?;
    let env = crate::instance::lima::with_proxy_env(
        expanded.raw.env(),
        std::env::vars(),
        config.raw.propagate_proxy_env != Some(false),
    );
    expanded.raw.env = Some(crate::instance::lima::Vars(env));
    let ssh = config.raw.ssh();
    let mut ssh_public_keys = vec![keys.public_key.clone()];
    if ssh.load_dot_ssh_pub_keys == Some(true) {
        ssh_public_keys.extend(host_public_keys());
    }
    let shares = crate::instance::shares::resolve(
        config,
        dir.name().as_str(),
        dir.dir(),
        &crate::instance::shares::HostSide::current(),
        &crate::instance::shares::GuestSide {
            user: user.name.clone(),
            uid: user.uid,
            home: user.home.clone(),
            cloud: true,
        },
    )
    .map_err(|e| CloudError::Shares(e.to_string()))?;
    let inputs = SeedInputs {
        instance: dir.name().as_str(),
        user: &user,
        ssh_public_keys,
        config: &expanded,
        shares: &shares,
        origin: record.origin.as_ref(),
    };
    cloudinit::write_seed(&seed, &inputs, super::tiny::guest_agent(config.arch).0).map_err(
        |source| CloudError::Io {
            action: "write the cloud-init seed",
            path: seed.clone(),
            source,
        },
    )?;
    let port_err = |source| CloudError::Io {
        action: "pick a free loopback port for ssh and record it in",
        path: dir.ssh_port(),
        source,
    };
    let port = match ssh.local_port {
        Some(port) if port != 0 => {
            os::socket::check_loopback_port_free(port)
                .map_err(|source| CloudError::PortTaken { port, source })?;
            port
        }
        _ => os::socket::free_loopback_port().map_err(port_err)?,
    };
    os::fs::write_atomic(&dir.ssh_port(), format!("{port}\n").as_bytes(), 0o600)
        .map_err(port_err)?;
    let boot = match &record.kernel {
        Some(kernel) => Boot::Kernel {
            kernel: kernel.clone(),
            initrd: record.initrd.clone(),
            cmdline: record
                .cmdline
                .clone()
                .unwrap_or_else(|| default_cmdline(config.arch)),
        },
        None => Boot::Firmware,
    };
    let mut spec = LaunchSpec::for_instance(
        dir,
        accel,
        config.cpus.0,
        config.memory.0.mib(),
        PathBuf::new(),
        PathBuf::new(),
        String::new(),
    );
    spec.arch = config.arch;
    spec.boot = boot;
    spec.seed = Some(seed);
    spec.ssh_port = Some(port);
    Ok(spec)
}

/// The host user's public keys (`~/.ssh/*.pub`), for `ssh.loadDotSSHPubKeys`.
fn host_public_keys() -> Vec<String> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let mut keys: Vec<String> = std::fs::read_dir(Path::new(&home).join(".ssh"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pub"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What to say when a cloud image did not become ready in time: the
/// readiness probes it waited for, with their hints.
pub fn readiness_hint(config: &Config) -> String {
    if config.probes.is_empty() {
        return String::new();
    }
    let mut text = String::from("; the guest is ready only once its probes pass:");
    for (index, probe) in config.probes.iter().enumerate() {
        text.push_str(&format!("\n  {}", probe.label(index)));
        if let Some(hint) = &probe.hint {
            text.push_str(&format!(": {}", hint.trim().replace('\n', " ")));
        }
    }
    text
}

/// The ssh port of a running cloud-image instance, if recorded.
pub fn ssh_port(dir: &InstanceDir) -> Option<u16> {
    std::fs::read_to_string(dir.ssh_port())
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// The forwarding options `ssh:` asks for, as lines of an ssh config block.
pub fn ssh_forwarding(config: &Config) -> String {
    let ssh = config.raw.ssh();
    let mut lines = String::new();
    for (set, option) in [
        (ssh.forward_agent, "ForwardAgent yes"),
        (ssh.forward_x11, "ForwardX11 yes"),
        (ssh.forward_x11_trusted, "ForwardX11Trusted yes"),
    ] {
        if set == Some(true) {
            lines.push_str(&format!("  {option}\n"));
        }
    }
    lines
}

/// An ssh config block for a running instance.
pub fn ssh_config(host: &str, port: u16, user: &str, key: &Path) -> String {
    format!(
        "Host {host}\n\
         \x20 HostName 127.0.0.1\n\
         \x20 Port {port}\n\
         \x20 User {user}\n\
         \x20 IdentityFile \"{}\"\n\
         \x20 IdentitiesOnly yes\n\
         \x20 PasswordAuthentication no\n\
         \x20 # Host keys change with every new instance on the same port.\n\
         \x20 StrictHostKeyChecking no\n\
         \x20 UserKnownHostsFile /dev/null\n\
         \x20 LogLevel ERROR\n\
         \x20 ConnectTimeout 10\n",
        key.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::tool::Tool;

    #[test]
    fn an_image_record_states_its_format_and_a_newer_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "c".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        let record = ImageRecord {
            location: "https://example.org/img.qcow2".into(),
            base: "/cache/img.qcow2".into(),
            base_format: "qcow2".into(),
            kernel: None,
            initrd: None,
            cmdline: None,
            user: "ann".into(),
            guest_user: None,
            origin: None,
        };
        record.write(&dir.image_record()).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.image_record()).unwrap()).unwrap();
        assert_eq!(json["format"], 1);
        assert_eq!(ImageRecord::load(&dir).unwrap(), record);
        // Written before versions: version 1.
        json.as_object_mut().unwrap().remove("format");
        std::fs::write(dir.image_record(), json.to_string()).unwrap();
        assert_eq!(ImageRecord::load(&dir).unwrap(), record);
        json["format"] = 2.into();
        std::fs::write(dir.image_record(), json.to_string()).unwrap();
        let refused = ImageRecord::load(&dir).unwrap_err().to_string();
        assert!(refused.contains("image.json version 2"), "{refused}");
    }

    #[test]
    fn image_info_gives_format_and_size() {
        let json = br#"{"virtual-size": 2147483648, "filename": "d", "format": "qcow2"}"#;
        assert_eq!(parse_image_info(json).unwrap(), ("qcow2".into(), 2 << 30));
        let err = parse_image_info(br#"{"format": "luks", "virtual-size": 1}"#).unwrap_err();
        assert!(err.contains("luks"), "{err}");
        assert!(parse_image_info(b"not json").is_err());
    }

    #[test]
    fn entries_for_other_architectures_are_skipped() {
        let config = Config::parse(
            "images:\n- location: /a\n  arch: aarch64\n- location: /b\n  arch: x86_64\n",
        )
        .unwrap();
        let found = candidates(&config).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].location.to_string(), "/b");
        let variants = Config::parse(
            "images:\n- location: /v3\n  arch: x86_64\n  archVariant: v3\n- location: /plain\n  arch: x86_64\n",
        )
        .unwrap();
        let found = candidates(&variants).unwrap();
        assert_eq!(found.len(), 1, "a plain entry is preferred to a variant");
        assert_eq!(found[0].location.to_string(), "/plain");
        let only_variant = Config::parse("images:\n- location: /m\n  variant: minimal\n").unwrap();
        assert_eq!(candidates(&only_variant).unwrap().len(), 1);
        let only_arm = Config::parse("images:\n- location: /a\n  arch: aarch64\n").unwrap();
        let err = candidates(&only_arm).unwrap_err().to_string();
        assert!(err.contains("arch: x86_64"), "{err}");
    }

    #[test]
    fn an_aarch64_instance_takes_the_aarch64_entries_of_limas_per_arch_lists() {
        let config = Config::parse(
            "arch: aarch64\nimages:\n- location: /b\n  arch: x86_64\n- location: /a\n  arch: aarch64\n",
        )
        .unwrap();
        let found = candidates(&config).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].location.to_string(), "/a");
        let only_x86 =
            Config::parse("arch: aarch64\nimages:\n- location: /b\n  arch: x86_64\n").unwrap();
        let err = candidates(&only_x86).unwrap_err().to_string();
        assert!(err.contains("arch: aarch64"), "{err}");
        assert!(default_cmdline(config.arch).contains("console=ttyAMA0"));
    }

    #[test]
    fn ssh_forwarding_options_follow_the_ssh_settings() {
        let config = Config::parse("ssh:\n  forwardAgent: true\n  forwardX11: false\n").unwrap();
        assert_eq!(ssh_forwarding(&config), "  ForwardAgent yes\n");
        assert_eq!(ssh_forwarding(&Config::default()), "");
    }

    #[test]
    fn readiness_hints_name_each_probe() {
        let config = Config::parse(
            "images:\n- location: /i\nprobes:\n- description: docker\n  script: \"#!/bin/sh\"\n  hint: |\n    see the log\n",
        )
        .unwrap();
        assert_eq!(
            readiness_hint(&config),
            "; the guest is ready only once its probes pass:\n  probe 0 (docker): see the log"
        );
        assert_eq!(readiness_hint(&Config::default()), "");
    }

    #[test]
    fn ssh_config_is_a_usable_host_block() {
        let text = ssh_config(
            "vmkeep-dev",
            40022,
            "alice",
            Path::new("/h/.ssh/id_ed25519"),
        );
        assert!(text.starts_with("Host vmkeep-dev\n"));
        for line in [
            "  HostName 127.0.0.1",
            "  Port 40022",
            "  User alice",
            "  IdentityFile \"/h/.ssh/id_ed25519\"",
            "  StrictHostKeyChecking no",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn overlay_on_a_local_image_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let made = Tool::new("qemu-img", "")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M")
            .output();
        if made.is_err() {
            eprintln!("qemu-img missing; skipping");
            return;
        }
        let digest =
            download::digest_of(&base, crate::instance::config::DigestAlgorithm::Sha256).unwrap();
        let config = Config::parse(&format!(
            "disk: 128MiB\nimages:\n- location: {}\n  digest: {digest}\n",
            base.display()
        ))
        .unwrap();
        let disk = dir.path().join("disk.qcow2");
        let record_path = dir.path().join("image.json");
        let user = crate::instance::vars::guest_user(&config, "t").unwrap();
        let record = prepare(
            &dir.path().join("cache"),
            &config,
            &user,
            &disk,
            &record_path,
            &mut download::Silent,
        )
        .unwrap();
        assert_eq!(record.base_format, "qcow2");
        assert!(record.base.starts_with(dir.path().join("cache/images")));
        let (format, size) = image_info(&disk).unwrap();
        assert_eq!((format.as_str(), size), ("qcow2", 128 << 20));
        let info = Tool::new("qemu-img", "")
            .args(["info", "--output=json"])
            .arg(&disk)
            .output_text()
            .unwrap();
        assert!(info.contains(&*record.base.to_string_lossy()), "{info}");
        let saved: ImageRecord =
            serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
        assert_eq!(saved, record);
    }
}
