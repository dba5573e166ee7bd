//! `import`: a vmkeep instance made from a stopped Lima instance, its
//! guest's data whole. The Lima directory is only read: its `lima.yaml`
//! goes through the template language `create` reads (with Lima's
//! `_config/default.yaml` under it and `_config/override.yaml` over it, as
//! Lima applies them), its disks are copied byte for byte (holes kept) into
//! the new instance, the copied overlay pointed at the copied base, so
//! that both instances can be used, independently. The guest keeps its user
//! (Lima's name, uid and `/home/NAME.linux`: the seed makes no other), and
//! its first boot under vmkeep takes a fresh identity (new instance id,
//! ssh host keys, machine id) and sets Lima's own boot hook aside.
//!
//! A Lima instance that runs (its QEMU holds `qemu.pid`, or its host agent
//! lives) is refused, and so is one that changed while it was copied.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::clone::{build_in_staging, copy, identities};
use super::create::{self, CreateError};
use super::{EngineError, Notice};
use crate::driver::qemu::disk_image::{self, DiskImageError};
use crate::image::cloud::{self, ImageRecord};
use crate::instance::config::{ByteSize, FieldPolicy};
use crate::instance::identity::Origin;
use crate::instance::layout::OwnFile;
use crate::instance::lima_instance::{self, BootFiles};
use crate::instance::vars::GuestUser;
use crate::instance::{Home, InstanceDir, InstanceName};
use crate::os;
use crate::template::Source;
use crate::text::yaml_edit;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("there is no Lima instance at {}: no {} there{}", dir.display(), lima_instance::LIMA_YAML, hint)]
    NotFound { dir: PathBuf, hint: String },
    #[error(
        "the Lima instance {name} runs ({what}); stop it with `limactl stop {name}`, then import it"
    )]
    Running { name: String, what: String },
    #[error("the Lima instance at {} cannot be imported: {why}", dir.display())]
    Unsupported { dir: PathBuf, why: String },
    #[error("the lima.yaml of {} is not a config vmkeep can run: {message}\n  nothing was created", dir.display())]
    Config { dir: PathBuf, message: String },
    #[error(
        "the Lima instance at {} changed while it was being copied (was it started?); nothing was created; import it again once it is stopped",
        dir.display()
    )]
    Changed { dir: PathBuf },
    #[error("{0}")]
    DiskImage(#[from] DiskImageError),
}

impl ImportError {
    pub fn kind(&self) -> super::ErrorKind {
        match self {
            ImportError::NotFound { .. } => super::ErrorKind::NotFound,
            ImportError::Running { .. } | ImportError::Changed { .. } => {
                super::ErrorKind::WrongState
            }
            ImportError::Unsupported { .. } | ImportError::Config { .. } => {
                super::ErrorKind::InvalidConfig
            }
            ImportError::DiskImage(_) => super::ErrorKind::Host,
        }
    }
}

/// A made instance, and what to tell the user about it.
#[derive(Debug)]
pub struct Imported {
    pub dir: InstanceDir,
    pub notes: Vec<String>,
}

/// A Lima instance `vmkeep import` could take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Importable {
    pub name: String,
    pub dir: PathBuf,
    /// Lima runs it now (it must be stopped first).
    pub running: bool,
}

/// The Lima instances of the Lima home that no instance of `home` was
/// imported from.
pub fn importable(home: &Home) -> Vec<Importable> {
    let Some(lima_home) = lima_instance::lima_home() else {
        return Vec::new();
    };
    let imported: Vec<PathBuf> = home
        .instance_names()
        .into_iter()
        .filter_map(|name| home.layout(&name).ok())
        .filter_map(|dir| ImageRecord::load(&dir).ok())
        .filter_map(|record| match record.origin {
            Some(Origin::Imported { from }) => Some(from),
            _ => None,
        })
        .collect();
    lima_instance::instances(&lima_home)
        .into_iter()
        .filter(|(_, dir)| {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            !imported.contains(&dir) && dir != home.root && !dir.starts_with(&home.root)
        })
        .map(|(name, dir)| Importable {
            running: lima_instance::live_process(&dir).ok().flatten().is_some(),
            name,
            dir,
        })
        .collect()
}

/// The Lima instance `name` of the Lima home (`$LIMA_HOME`, else `~/.lima`).
pub fn lima_dir(name: &str) -> Result<PathBuf, EngineError> {
    let home = lima_instance::lima_home().ok_or_else(|| ImportError::NotFound {
        dir: PathBuf::from("~/.lima").join(name),
        hint: "; set LIMA_HOME or HOME".into(),
    })?;
    Ok(home.join(name))
}

/// Import the Lima instance at `lima` as instance `name` of `home`.
pub fn import(
    home: &Home,
    lima: &Path,
    name: &InstanceName,
    notice: &dyn Notice,
) -> Result<Imported, EngineError> {
    let lima = std::fs::canonicalize(lima).unwrap_or_else(|_| lima.to_path_buf());
    let lima_yaml = lima.join(lima_instance::LIMA_YAML);
    if !lima_yaml.is_file() {
        let hint = match lima_instance::lima_home() {
            Some(lima_home) => {
                let names: Vec<String> = lima_instance::instances(&lima_home)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                if names.is_empty() {
                    format!("; {} holds no Lima instance", lima_home.display())
                } else {
                    format!(
                        "; the Lima instances in {} are {}",
                        lima_home.display(),
                        names.join(", ")
                    )
                }
            }
            None => String::new(),
        };
        return Err(ImportError::NotFound { dir: lima, hint }.into());
    }
    refuse_if_running(&lima)?;
    let to = home.layout(name)?;
    if to.dir().exists() {
        return Err(CreateError::Exists {
            name: name.clone(),
            dir: to.dir().to_path_buf(),
        }
        .into());
    }
    let unsupported = |why: String| ImportError::Unsupported {
        dir: lima.clone(),
        why,
    };
    let top = lima_instance::disk(&lima)
        .ok_or_else(|| unsupported("it has no disk (neither disk nor diffdisk)".into()))?;
    let top_info = disk_image::info(&top)?;
    let base = match top_info.backing_path(&top) {
        Some(base) => {
            if top_info.format != "qcow2" {
                return Err(unsupported(format!(
                    "{} is {} with a backing file; vmkeep reads qcow2 overlays",
                    top.display(),
                    top_info.format
                ))
                .into());
            }
            if disk_image::info(&base)?.backing.is_some() {
                return Err(unsupported(format!(
                    "{} has a backing file of its own: a chain of more than two images",
                    base.display()
                ))
                .into());
            }
            Some(base)
        }
        None => None,
    };
    let boot = lima_instance::boot_files(&lima);
    let user = lima_user(&lima);
    let mut notes = Vec::new();
    let (text, config) = config_text(&lima, &to, &user, &top_info, &mut notes)?;
    if !config.is_cloud() {
        return Err(unsupported(
            "its lima.yaml names no images (vmkeep imports cloud-image instances)".into(),
        )
        .into());
    }
    let location = cloud::candidates(&config)
        .ok()
        .and_then(|c| c.first().map(|e| e.location.to_string()))
        .unwrap_or_else(|| format!("lima:{}", lima.display()));
    let cmdline = boot.cmdline.clone().or_else(|| {
        cloud::candidates(&config).ok().and_then(|c| {
            c.first()
                .and_then(|e| e.kernel.as_ref())
                .and_then(|k| k.cmdline.clone())
        })
    });
    let watched = watched_files(&lima, &top, base.as_deref(), &boot);
    let before = identities(&watched)?;
    notice.step(&format!(
        "copying the Lima instance {} into {}",
        lima.display(),
        to.dir().display()
    ));
    let built = build_in_staging(home, &to, |staging| {
        let staged = |path: PathBuf| staging.join(path.file_name().unwrap_or_default());
        os::fs::write_atomic(&staged(to.config()), text.as_bytes(), 0o600)
            .map_err(EngineError::io("write", staged(to.config())))?;
        let disk = staged(to.disk());
        // The overlay names the copied base beside it by a relative name, so
        // that the instance can be built here and renamed into place.
        let base_name = to.own_file(OwnFile::BaseDisk);
        let base_name = Path::new(base_name.file_name().unwrap_or_default());
        let base_copy = staging.join(base_name);
        let base_format = match &base {
            // diffdisk over basedisk: both copied, the copy pointed at the copy.
            Some(base) => {
                let format = disk_image::info(base)?.format;
                copy(base, &base_copy)?;
                copy(&top, &disk)?;
                disk_image::rebase_onto_copy(&disk, base_name, &format)
                    .map_err(ImportError::from)?;
                format
            }
            // One image (Lima 2.1+): copied as the base of a new overlay.
            None => {
                copy(&top, &base_copy)?;
                disk_image::create_overlay(
                    base_name,
                    &top_info.format,
                    &disk,
                    top_info.virtual_size,
                )
                .map_err(ImportError::from)?;
                top_info.format.clone()
            }
        };
        let own = |file: OwnFile, from: &Option<PathBuf>| -> Result<Option<PathBuf>, EngineError> {
            let Some(from) = from else { return Ok(None) };
            let target = to.own_file(file);
            copy(from, &staged(target.clone()))?;
            Ok(Some(target))
        };
        let record = ImageRecord {
            location: location.clone(),
            base: to.own_file(OwnFile::BaseDisk),
            base_format,
            kernel: own(OwnFile::Kernel, &boot.kernel)?,
            initrd: own(OwnFile::Initrd, &boot.initrd)?,
            cmdline: cmdline.clone(),
            user: user.name.clone(),
            guest_user: Some(user.clone()),
            origin: Some(Origin::Imported { from: lima.clone() }),
        };
        record
            .write(&staged(to.image_record()))
            .map_err(CreateError::from)?;
        // Copied from a stopped Lima instance that stayed stopped.
        if identities(&watched)? != before
            || lima_instance::live_process(&lima).ok().flatten().is_some()
        {
            return Err(ImportError::Changed { dir: lima.clone() }.into());
        }
        Ok(())
    })?;
    notes.push(format!(
        "the guest keeps its user {} (uid {}, home {}); its first boot under vmkeep takes a new instance id \
         (new ssh host keys and machine id) and sets Lima's boot hook aside; the Lima instance is unchanged",
        user.name, user.uid, user.home
    ));
    Ok(Imported { dir: built, notes })
}

fn refuse_if_running(lima: &Path) -> Result<(), EngineError> {
    let what = lima_instance::live_process(lima).map_err(EngineError::io("inspect", lima))?;
    match what {
        Some(what) => Err(ImportError::Running {
            name: lima
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            what,
        }
        .into()),
        None => Ok(()),
    }
}

/// The user Lima made in the guest: from its `cloud-config.yaml`, else
/// Lima's default for the user running vmkeep.
fn lima_user(lima: &Path) -> GuestUser {
    std::fs::read_to_string(lima.join(lima_instance::CLOUD_CONFIG))
        .ok()
        .and_then(|text| lima_instance::user_from_cloud_config(&text))
        .unwrap_or_else(|| {
            lima_instance::default_user(
                crate::instance::identity::host_user().as_deref(),
                rustix::process::getuid().as_raw(),
            )
        })
}

/// The config the instance stores: `lima.yaml` resolved (with Lima's
/// `_config` defaults and overrides), the guest user written out, and
/// `disk:` no smaller than the disk.
fn config_text(
    lima: &Path,
    to: &InstanceDir,
    user: &GuestUser,
    top: &disk_image::ImageInfo,
    notes: &mut Vec<String>,
) -> Result<(String, crate::instance::Config), EngineError> {
    let bad = |message: String| ImportError::Config {
        dir: lima.to_path_buf(),
        message,
    };
    let lima_yaml = lima.join(lima_instance::LIMA_YAML);
    let config_dir = lima.parent().map(|h| h.join("_config"));
    let layer = |name: &str| {
        config_dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
    };
    let (defaults, overrides) = (layer("default.yaml"), layer("override.yaml"));
    let (text, source) = if defaults.is_none() && overrides.is_none() {
        let text = std::fs::read_to_string(&lima_yaml)
            .map_err(EngineError::io("read", lima_yaml.clone()))?;
        (text, Source::File(lima_yaml.clone()))
    } else {
        // Lima's order: override.yaml over lima.yaml over default.yaml.
        let mut top = match &overrides {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(EngineError::io("read", path.clone()))?;
                yaml_edit::parse_mapping(&text)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?
            }
            None => Default::default(),
        };
        let bases: Vec<Value> = std::iter::once(&lima_yaml)
            .chain(defaults.iter())
            .map(|p| Value::from(p.display().to_string()))
            .collect();
        top.insert("base".into(), Value::Sequence(bases));
        let text = serde_yaml_ng::to_string(&Value::Mapping(top)).expect("YAML values serialize");
        (
            text,
            Source::Text {
                label: format!("the Lima instance {}", lima.display()),
                cwd: lima.to_path_buf(),
            },
        )
    };
    let root = to.dir().parent().unwrap_or(to.dir());
    let checked = create::check(root, to.name(), &text, &source, FieldPolicy::Note)
        .map_err(|e| bad(e.to_string()))?;
    let mut assignments = vec![
        (
            vec!["user".to_string(), "name".to_string()],
            Value::from(user.name.as_str()),
        ),
        (
            vec!["user".to_string(), "uid".to_string()],
            Value::from(u64::from(user.uid)),
        ),
        (
            vec!["user".to_string(), "home".to_string()],
            Value::from(user.home.as_str()),
        ),
    ];
    if checked.resolved.config.disk.0.0 < top.virtual_size {
        notes.push(format!(
            "disk: {} as the Lima instance's disk is (its lima.yaml says less, or nothing)",
            ByteSize(top.virtual_size)
        ));
        assignments.push((
            vec!["disk".to_string()],
            Value::from(ByteSize(top.virtual_size).to_string()),
        ));
    }
    let edited =
        yaml_edit::apply(&checked.resolved.text, &assignments).map_err(|e| bad(e.to_string()))?;
    let text = format!(
        "# Imported by vmkeep from the Lima instance {} (left as it was).\n{}",
        lima.display(),
        edited.text
    );
    let (text, config) = super::edit::check_text(to, &text).map_err(bad)?;
    Ok((text, config))
}

fn watched_files(lima: &Path, top: &Path, base: Option<&Path>, boot: &BootFiles) -> Vec<PathBuf> {
    let mut files = vec![lima.join(lima_instance::LIMA_YAML), top.to_path_buf()];
    files.extend(base.map(Path::to_path_buf));
    files.extend(boot.kernel.clone());
    files.extend(boot.initrd.clone());
    files
}
