//! Creating an instance atomically: everything is built in a hidden
//! temporary directory that is renamed into place when complete, so a crash
//! or a kill mid-way never leaves a half-made instance. Bad input is rejected
//! before anything is written.

use std::path::{Path, PathBuf};

use super::layout::{InstanceDir, SocketPathTooLong};
use super::name::InstanceName;
use crate::image::cloud::{self, CloudError};
use crate::image::download::{self, Progress};
use crate::os;
use crate::os::lock::HeldLock;
use crate::os::tool::{Tool, ToolError};
use crate::template::vars::{self, ExpandError};
use crate::template::{self, Source, TemplateError};

/// Held by a creator inside its temporary directory.
const CREATE_LOCK: &str = "create.lock";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    SocketPath(#[from] SocketPathTooLong),
    #[error(
        "instance {name} already exists in {dir}; pick another name, or `vmkeep delete {name}` first"
    )]
    Exists { name: InstanceName, dir: PathBuf },
    #[error("invalid template {0}\n  nothing was created; fix the field named above")]
    Template(#[from] TemplateError),
    #[error("invalid template: {0}\n  nothing was created")]
    Expand(#[from] ExpandError),
    #[error("invalid template: message: {0}\n  nothing was created")]
    Message(crate::gotmpl::TemplateError),
    #[error("cannot create the data disk: {0}")]
    Disk(#[from] ToolError),
    #[error("cannot create the instance from its cloud image: {0}\n  nothing was created")]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create instance `name` under `root` from YAML `template` (whose origin,
/// for messages, is `source_name`; relative bases resolve against the
/// current directory).
pub fn create(
    root: &Path,
    name: &InstanceName,
    template: &str,
    source_name: &str,
) -> Result<InstanceDir, CreateError> {
    let source = Source::Text {
        label: source_name.to_string(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
    };
    create_from(root, name, template, &source, &mut download::Silent).map(|c| c.dir)
}

/// A created instance, and what its template has that is accepted but not
/// applied (one line each, for the user).
#[derive(Debug)]
pub struct Created {
    pub dir: InstanceDir,
    pub notices: Vec<String>,
}

/// A template resolved and checked for an instance, before anything is written.
#[derive(Debug)]
pub struct Checked {
    pub dir: InstanceDir,
    pub resolved: template::Resolved,
    pub guest_user: vars::GuestUser,
}

/// Resolve and check the template `text` read from `source` for instance
/// `name` under `root`: bases merged, the whole valid, template variables
/// expanding. Writes nothing (`create --dry-run` stops here).
pub fn check(
    root: &Path,
    name: &InstanceName,
    text: &str,
    source: &Source,
) -> Result<Checked, CreateError> {
    let dir = InstanceDir::new(root, name.clone())?;
    let resolved = template::resolve(text, source)?;
    let config = &resolved.config;
    let guest_user = vars::guest_user(config, name.as_str())?;
    vars::expand(
        config,
        &vars::guest_values(config, name.as_str(), dir.dir(), &guest_user),
    )?;
    if let Some(message) = &config.raw.message {
        crate::gotmpl::check(message).map_err(CreateError::Message)?;
    }
    Ok(Checked {
        dir,
        resolved,
        guest_user,
    })
}

/// Create instance `name` under `root` from the template `text` read from
/// `source`: its bases are resolved and merged, the whole is checked
/// (template variables included), and the resolved config is what the
/// instance stores. Reports the progress of image downloads.
pub fn create_from(
    root: &Path,
    name: &InstanceName,
    text: &str,
    source: &Source,
    progress: &mut dyn Progress,
) -> Result<Created, CreateError> {
    let Checked {
        dir,
        resolved,
        guest_user,
    } = check(root, name, text, source)?;
    let config = &resolved.config;
    let template = resolved.text.as_str();
    if dir.dir().exists() {
        return Err(CreateError::Exists {
            name: name.clone(),
            dir: dir.dir().to_path_buf(),
        });
    }
    os::fs::create_private_dir_all(root).map_err(io_error(root))?;
    remove_abandoned_temporaries(root);

    let staging = os::fs::temp_sibling(dir.dir());
    os::fs::create_private_dir_all(&staging).map_err(io_error(&staging))?;
    let result = (|| {
        let lock_path = staging.join(CREATE_LOCK);
        let lock = HeldLock::try_acquire(&lock_path).map_err(io_error(&lock_path))?;
        let staged = InstanceDir::new(root, name.clone())?;
        let config_path = staging.join(staged.config().file_name().unwrap_or_default());
        os::fs::write_atomic(&config_path, template.as_bytes(), 0o600)
            .map_err(io_error(&config_path))?;
        let disk = staging.join(staged.disk().file_name().unwrap_or_default());
        if config.is_cloud() {
            let record = staging.join(staged.image_record().file_name().unwrap_or_default());
            let cache = crate::home::cache_root()?;
            cloud::prepare(&cache, config, &guest_user, &disk, &record, progress)?;
        } else {
            Tool::new("qemu-img", "install it: sudo apt-get install qemu-utils")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(config.disk.0.0.to_string())
                .output()?;
        }
        match std::fs::rename(&staging, dir.dir()) {
            Ok(()) => {}
            Err(_) if dir.dir().exists() => {
                return Err(CreateError::Exists {
                    name: name.clone(),
                    dir: dir.dir().to_path_buf(),
                });
            }
            Err(source) => {
                return Err(CreateError::Io {
                    path: dir.dir().to_path_buf(),
                    source,
                });
            }
        }
        os::fs::sync_dir(root).map_err(io_error(root))?;
        let _ = os::fs::remove_file_if_exists(&dir.dir().join(CREATE_LOCK));
        drop(lock);
        Ok(())
    })();
    if result.is_err() {
        let _ = os::fs::remove_dir_all_if_exists(&staging);
    }
    result.map(|()| Created {
        dir,
        notices: config.raw.notices(),
    })
}

/// Remove staging directories whose creator is gone (its lock is free).
pub fn remove_abandoned_temporaries(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') && name.contains(".tmp-") && path.is_dir() {
            let lock = path.join(CREATE_LOCK);
            if lock.exists() && matches!(os::lock::holder(&lock), Ok(None)) {
                let _ = os::fs::remove_dir_all_if_exists(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::config::DEFAULT_TEMPLATE;

    fn name(s: &str) -> InstanceName {
        s.parse().unwrap()
    }

    #[test]
    fn creates_config_and_disk_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let dir = create(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.config()).unwrap(),
            DEFAULT_TEMPLATE
        );
        assert!(dir.disk().is_file());
        let mut files: Vec<_> = std::fs::read_dir(dir.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        files.sort();
        assert_eq!(files, ["disk.qcow2", "vmkeep.yaml"]);
        let roots: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(roots, ["dev"], "no staging directory left");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn an_invalid_template_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let err = create(&home, &name("dev"), "cpus: 0\n", "t.yaml").unwrap_err();
        assert!(
            err.to_string().contains("cpus") && err.to_string().contains("t.yaml"),
            "{err}"
        );
        assert!(!home.exists());
    }

    #[test]
    fn an_existing_instance_is_not_touched() {
        let root = tempfile::tempdir().unwrap();
        create(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap();
        let err = create(root.path(), &name("dev"), "cpus: 2\n", "other").unwrap_err();
        assert!(matches!(err, CreateError::Exists { .. }), "{err}");
        let text = std::fs::read_to_string(root.path().join("dev/vmkeep.yaml")).unwrap();
        assert_eq!(text, DEFAULT_TEMPLATE);
    }

    #[test]
    fn abandoned_staging_directories_are_removed_but_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let abandoned = root.path().join(".x.tmp-1-0");
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join(CREATE_LOCK), "").unwrap();
        let live = root.path().join(".y.tmp-2-0");
        std::fs::create_dir(&live).unwrap();
        let _held = HeldLock::try_acquire(&live.join(CREATE_LOCK))
            .unwrap()
            .unwrap();
        remove_abandoned_temporaries(root.path());
        assert!(!abandoned.exists());
        assert!(
            live.exists(),
            "a creator that still runs keeps its directory"
        );
    }
}
