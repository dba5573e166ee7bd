//! `create`: make an instance from a template, atomically: everything is
//! built in a hidden temporary directory that is renamed into place when
//! complete, so a crash or a kill mid-way never leaves a half-made
//! instance. Bad input is rejected before anything is written. What the
//! command line asks for is [`plan`]'s.

pub mod plan;

use std::path::{Path, PathBuf};

use crate::image::cloud::{self, CloudError};
use crate::image::download::{self, Progress};
use crate::instance::Home;
use crate::instance::config::FieldPolicy;
use crate::instance::data_disk;
use crate::instance::layout::{InstanceDir, SocketPathTooLong};
use crate::instance::name::InstanceName;
use crate::instance::vars::{self, ExpandError};
use crate::os;
use crate::os::tool::{Tool, ToolError};
use crate::template::locator::LocatorError;
use crate::template::{self, Source, TemplateError};

pub use self::plan::{Input, Plan, Target, Template, plan, read, start_target};
use super::EngineError;

/// Where older versions kept the creator's lock: inside the staging
/// directory (still honoured, so that a mixed-version home stays clean).
const OLD_CREATE_LOCK: &str = "create.lock";

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
    Message(crate::text::gotmpl::TemplateError),
    #[error("invalid template: {0}\n  nothing was created")]
    Shares(crate::instance::shares::ShareError),
    #[error("cannot create the data disk: {0}")]
    Disk(#[from] ToolError),
    #[error("cannot create the instance from its cloud image: {0}\n  nothing was created")]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Home(#[from] crate::instance::home::HomeError),
    /// Reading the template (a file, a URL, a built-in one) failed.
    #[error(transparent)]
    Read(Box<TemplateError>),
    #[error(transparent)]
    Locator(LocatorError),
    #[error("cannot read the template from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("the template on standard input is larger than {limit} bytes")]
    StdinTooLarge { limit: u64 },
    #[error("cannot add the --param settings to the template: {0}")]
    Params(serde_yaml_ng::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CreateError {
    /// The template itself is wrong (not the host).
    pub fn is_invalid_template(&self) -> bool {
        match self {
            // Reading or fetching one is the host's (or the network's) trouble.
            CreateError::Template(TemplateError::Read { .. } | TemplateError::Fetch { .. }) => {
                false
            }
            CreateError::Template(_)
            | CreateError::Expand(_)
            | CreateError::Message(_)
            | CreateError::Shares(_) => true,
            CreateError::SocketPath(_)
            | CreateError::Read(_)
            | CreateError::Locator(_)
            | CreateError::Stdin(_)
            | CreateError::StdinTooLarge { .. }
            | CreateError::Params(_)
            | CreateError::Exists { .. }
            | CreateError::Disk(_)
            | CreateError::Cloud(_)
            | CreateError::Home(_)
            | CreateError::Io { .. } => false,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Check `template` for instance `name` of `home` as `create` would, and
/// write nothing (`create --dry-run`).
pub fn dry_run(
    home: &Home,
    name: &InstanceName,
    template: &Template,
) -> Result<Checked, EngineError> {
    Ok(check(
        &home.root,
        name,
        &template.text,
        &template.source,
        template.fields,
    )?)
}

/// `template` with Lima's edit flags applied to what it resolves to (the
/// config the instance stores), checked like any template; `--param` is
/// [`read`]'s, so it is not applied again here.
pub fn with_edit_flags(
    home: &Home,
    name: &InstanceName,
    template: Template,
    flags: &crate::instance::edit_flags::EditFlags,
) -> Result<(Template, Vec<String>), EngineError> {
    let flags = crate::instance::edit_flags::EditFlags {
        params: Vec::new(),
        ..flags.clone()
    };
    if flags.is_empty() {
        return Ok((template, Vec::new()));
    }
    let checked = check(
        &home.root,
        name,
        &template.text,
        &template.source,
        template.fields,
    )?;
    let (text, notes) = super::edit::with_flags(
        &checked.dir,
        &checked.resolved.text,
        &flags,
        crate::instance::edit_flags::NewParams::Allowed,
    )?;
    Ok((
        Template {
            text,
            source: template.source,
            fields: template.fields,
        },
        notes,
    ))
}

/// Create instance `name` of `home` from `template`; reports the progress
/// of image downloads.
pub fn create(
    home: &Home,
    name: &InstanceName,
    template: &Template,
    progress: &mut dyn Progress,
) -> Result<Created, EngineError> {
    Ok(create_from(
        &home.root,
        name,
        &template.text,
        &template.source,
        template.fields,
        progress,
    )?)
}

/// Create instance `name` under `root` from YAML `template` (whose origin,
/// for messages, is `source_name`; relative bases resolve against the
/// current directory).
pub fn create_text(
    root: &Path,
    name: &InstanceName,
    template: &str,
    source_name: &str,
) -> Result<InstanceDir, CreateError> {
    let source = Source::Text {
        label: source_name.to_string(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
    };
    create_from(
        root,
        name,
        template,
        &source,
        FieldPolicy::default(),
        &mut download::Silent,
    )
    .map(|c| c.dir)
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
/// expanding; fields vmkeep does not know noted or refused as `fields`
/// says. Writes nothing (`create --dry-run` stops here).
pub fn check(
    root: &Path,
    name: &InstanceName,
    text: &str,
    source: &Source,
    fields: FieldPolicy,
) -> Result<Checked, CreateError> {
    let dir = InstanceDir::new(root, name.clone())?;
    let resolved = template::resolve_with(text, source, fields)?;
    let config = &resolved.config;
    let guest_user = vars::guest_user(config, name.as_str())?;
    vars::expand(
        config,
        &vars::guest_values(config, name.as_str(), dir.dir(), &guest_user),
    )?;
    if let Some(message) = &config.raw.message {
        crate::text::gotmpl::check(message).map_err(CreateError::Message)?;
    }
    let guest = if config.is_cloud() {
        crate::instance::shares::GuestSide {
            user: guest_user.name.clone(),
            uid: guest_user.uid,
            home: guest_user.home.clone(),
            cloud: true,
        }
    } else {
        crate::instance::shares::GuestSide::tiny()
    };
    crate::instance::shares::resolve(
        config,
        name.as_str(),
        dir.dir(),
        &crate::instance::shares::HostSide::current(),
        &guest,
    )
    .map_err(CreateError::Shares)?;
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
    fields: FieldPolicy,
    progress: &mut dyn Progress,
) -> Result<Created, CreateError> {
    let Checked {
        dir,
        resolved,
        guest_user,
    } = check(root, name, text, source, fields)?;
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

    // The lock comes first and goes last (see `remove_abandoned_temporaries`).
    let (staging, lock) = os::lock::lock_temp_sibling(dir.dir()).map_err(io_error(dir.dir()))?;
    let lock_path = lock.path().to_path_buf();
    let result = (|| {
        os::fs::create_private_dir_all(&staging).map_err(io_error(&staging))?;
        let staged = InstanceDir::new(root, name.clone())?;
        let config_path = staging.join(staged.config().file_name().unwrap_or_default());
        os::fs::write_atomic(&config_path, template.as_bytes(), 0o600)
            .map_err(io_error(&config_path))?;
        let disk = staging.join(staged.disk().file_name().unwrap_or_default());
        if config.is_cloud() {
            let record = staging.join(staged.image_record().file_name().unwrap_or_default());
            let cache = crate::instance::home::cache_root()?;
            cloud::prepare(&cache, config, &guest_user, &disk, &record, progress)?;
        } else {
            Tool::new("qemu-img", "install it: sudo apt-get install qemu-utils")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(config.disk.0.0.to_string())
                .output()?;
            // Written after the disk: a marker never names a disk that
            // could hold anything of the user's.
            let marker = staging.join(staged.data_disk_new().file_name().unwrap_or_default());
            data_disk::write_new_marker(&marker).map_err(io_error(&marker))?;
        }
        match os::fs::rename(&staging, dir.dir()) {
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
        os::fs::sync_dir(root).map_err(io_error(root))
    })();
    if result.is_err() {
        let _ = os::fs::remove_dir_all_if_exists(&staging);
    }
    if let Err(e) = lock.remove() {
        tracing::warn!("cannot remove {}: {e}", lock_path.display());
    }
    result.map(|()| Created {
        dir,
        notices: resolved.notices(),
    })
}

/// Remove staging directories whose creator is gone.
///
/// A creator takes its lock, a sibling of the staging directory, before it
/// makes the directory and removes it after the directory is gone, so a
/// free lock means the creator died ([`os::lock::remove_abandoned_temporaries`]).
/// A staging directory without its sibling lock was made by an older
/// version, which kept the lock inside it: abandoned when that one is free.
/// (When the lock lived inside the directory, a creator killed between
/// `mkdir` and taking the lock left a directory that no sweep ever removed.)
pub fn remove_abandoned_temporaries(root: &Path) {
    os::lock::remove_abandoned_temporaries(root, &|staging| {
        matches!(os::lock::holder(&staging.join(OLD_CREATE_LOCK)), Ok(None))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::config::DEFAULT_TEMPLATE;
    use crate::os::lock::HeldLock;

    pub(super) fn name(s: &str) -> InstanceName {
        s.parse().unwrap()
    }

    #[test]
    fn creates_config_and_disk_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let dir = create_text(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap();
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
        assert_eq!(files, ["data-disk.new", "disk.qcow2", "vmkeep.yaml"]);
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
        let err = create_text(&home, &name("dev"), "cpus: 0\n", "t.yaml").unwrap_err();
        assert!(
            err.to_string().contains("cpus") && err.to_string().contains("t.yaml"),
            "{err}"
        );
        assert!(!home.exists());
    }

    #[test]
    fn an_existing_instance_is_not_touched() {
        let root = tempfile::tempdir().unwrap();
        create_text(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap();
        let err = create_text(root.path(), &name("dev"), "cpus: 2\n", "other").unwrap_err();
        assert!(matches!(err, CreateError::Exists { .. }), "{err}");
        let text = std::fs::read_to_string(root.path().join("dev/vmkeep.yaml")).unwrap();
        assert_eq!(text, DEFAULT_TEMPLATE);
    }

    #[test]
    fn abandoned_staging_directories_are_removed_but_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let at = |name: &str| root.path().join(name);
        // Killed between its lock and its mkdir, or mid-way: a free lock.
        std::fs::write(at(".a.tmp-1-0.lock"), "").unwrap();
        std::fs::create_dir(at(".b.tmp-1-1")).unwrap();
        std::fs::write(at(".b.tmp-1-1.lock"), "").unwrap();
        // A directory without its lock: the lock is taken before the
        // directory exists and removed after it is gone, so its creator died.
        std::fs::create_dir(at(".c.tmp-1-2")).unwrap();
        // The older layout: a free lock inside.
        std::fs::create_dir(at(".d.tmp-1-3")).unwrap();
        std::fs::write(at(".d.tmp-1-3").join(OLD_CREATE_LOCK), "").unwrap();
        // Live creators, both layouts.
        std::fs::create_dir(at(".y.tmp-2-0")).unwrap();
        let _live = HeldLock::try_acquire(&at(".y.tmp-2-0.lock"))
            .unwrap()
            .unwrap();
        let _live_lock_only = HeldLock::try_acquire(&at(".w.tmp-2-1.lock"))
            .unwrap()
            .unwrap();
        std::fs::create_dir(at(".z.tmp-3-0")).unwrap();
        let _old_live = HeldLock::try_acquire(&at(".z.tmp-3-0").join(OLD_CREATE_LOCK))
            .unwrap()
            .unwrap();
        // Not ours: an instance and an unrelated dot file.
        std::fs::create_dir(at("dev")).unwrap();
        std::fs::write(at(".notes"), "").unwrap();

        remove_abandoned_temporaries(root.path());
        let mut left = os::fs::entry_names(root.path()).unwrap();
        left.sort();
        assert_eq!(
            left,
            [
                ".notes",
                ".w.tmp-2-1.lock",
                ".y.tmp-2-0",
                ".y.tmp-2-0.lock",
                ".z.tmp-3-0",
                "dev"
            ],
            "only what live creators hold, and what is not a staging directory, is kept"
        );
    }

    #[test]
    fn a_finished_create_leaves_neither_staging_nor_lock() {
        let root = tempfile::tempdir().unwrap();
        create_text(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap();
        let err = create_text(root.path(), &name("dev"), DEFAULT_TEMPLATE, "built-in").unwrap_err();
        assert!(matches!(err, CreateError::Exists { .. }), "{err}");
        assert_eq!(os::fs::entry_names(root.path()).unwrap(), ["dev"]);
    }
}
