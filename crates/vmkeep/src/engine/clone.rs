//! `clone`: a new instance that is an independent copy of a stopped one:
//! its own disk (a copy of the source's; a cloud image's overlay keeps its
//! read-only base in the cache, or gets a copy of a base the source owns),
//! its own name and so hostname, a free ssh port where the source fixed
//! one, and, at its first boot, a fresh identity (cloud-init's new instance
//! id: new ssh host keys; a new machine id). Built in a staging directory
//! renamed into place when complete, like `create`; the source is only
//! read, and the copy is thrown away if the source changed meanwhile.
//!
//! Whether an instance can be a source is `Status::clone_plan`'s: a
//! suspended one cannot (its saved memory would resume as a second copy of
//! a running guest, with the same identity and files half-written).

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::create::{CreateError, remove_abandoned_temporaries};
use super::{EngineError, Notice, status_of};
use crate::driver::qemu::disk_image;
use crate::image::cloud::ImageRecord;
use crate::instance::identity::Origin;
use crate::instance::layout::OwnFile;
use crate::instance::status::ClonePlan;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status};
use crate::os;
use crate::os::fs::FileId;
use crate::text::yaml_edit;

/// A made clone, and what to tell the user about it.
#[derive(Debug)]
pub struct Cloned {
    pub dir: InstanceDir,
    pub notes: Vec<String>,
}

/// Clone instance `source` of `home` as `target`.
pub fn clone(
    home: &Home,
    source: &InstanceName,
    target: &InstanceName,
    notice: &dyn Notice,
) -> Result<Cloned, EngineError> {
    let from = home.existing(source)?;
    let to = home.layout(target)?;
    let status = status_of(&from)?;
    refuse_unless_copyable(&from, &status)?;
    if to.dir().exists() {
        return Err(CreateError::Exists {
            name: target.clone(),
            dir: to.dir().to_path_buf(),
        }
        .into());
    }
    let config = Config::load(&from.config())?;
    let text = std::fs::read_to_string(from.config())
        .map_err(EngineError::io("read the config", from.config()))?;
    let mut notes = Vec::new();
    let text = with_own_ports(&from, &text, &config, &mut notes)?;
    notice.step(&format!("copying {source} to {target}"));
    let record = config
        .is_cloud()
        .then(|| ImageRecord::load(&from))
        .transpose()
        .map_err(|e| EngineError::WrongState {
            name: source.clone(),
            message: format!("{source} cannot be cloned: {e}"),
        })?;
    let watched = watched_files(&from, record.as_ref());
    let before = identities(&watched)?;
    let built = build_in_staging(home, &to, |staging| {
        let staged = |path: PathBuf| staging.join(path.file_name().unwrap_or_default());
        os::fs::write_atomic(&staged(to.config()), text.as_bytes(), 0o600)
            .map_err(EngineError::io("write", staged(to.config())))?;
        copy(&from.disk(), &staged(to.disk()))?;
        if from.data_disk_new().exists() {
            copy(&from.data_disk_new(), &staged(to.data_disk_new()))?;
        }
        if let Some(record) = &record {
            let record = own_copies(&from, &to, staging, record, &mut notes)?;
            let record = ImageRecord {
                origin: Some(Origin::Cloned {
                    from: source.to_string(),
                }),
                ..record
            };
            record
                .write(&staged(to.image_record()))
                .map_err(CreateError::from)?;
        }
        // Copied from a stopped instance that stayed stopped, file by file.
        if identities(&watched)? != before || status_of(&from)?.clone_plan() != ClonePlan::Copy {
            return Err(EngineError::WrongState {
                name: source.clone(),
                message: format!(
                    "{source} changed while it was being copied (was it started?); nothing was created; \
                     clone it again once it is stopped"
                ),
            });
        }
        Ok(())
    })?;
    if config.is_cloud() {
        notes.push(format!(
            "{target} gets a new cloud-init instance id at its first boot: new ssh host keys, a new machine id, hostname {}",
            crate::instance::identity::hostname(target.as_str())
        ));
    }
    if crate::autostart::hooks::managed(&from).is_some() {
        notes.push(format!(
            "{source} starts with its service manager; {target} does not (`vmkeep autostart enable {target}` for that)"
        ));
    }
    Ok(Cloned { dir: built, notes })
}

fn refuse_unless_copyable(from: &InstanceDir, status: &Status) -> Result<(), EngineError> {
    let name = from.name();
    let refuse = |message: String| EngineError::WrongState {
        name: name.clone(),
        message,
    };
    match status.clone_plan() {
        ClonePlan::Copy => Ok(()),
        ClonePlan::RefuseSuspended => Err(refuse(format!(
            "{name} is suspended: its saved memory would resume as a second copy of a running guest \
             (the same identity, files half-written in memory), so it is not cloned; \
             `vmkeep stop {name}` resumes it and powers it off by its ladder, then clone it"
        ))),
        ClonePlan::RefuseLive => Err(refuse(format!(
            "{name} is {}: its disk is in use; `vmkeep stop {name}` first, then clone it",
            super::describe(status).to_lowercase()
        ))),
        ClonePlan::RefuseBroken => {
            let Status::Broken(broken) = status.clone() else {
                unreachable!("only a broken instance is refused as broken")
            };
            Err(EngineError::Broken {
                name: name.clone(),
                broken,
            })
        }
    }
}

/// A fixed `ssh.localPort` would collide with the source's: the clone takes
/// a free port at each start instead.
fn with_own_ports(
    from: &InstanceDir,
    text: &str,
    config: &Config,
    notes: &mut Vec<String>,
) -> Result<String, EngineError> {
    let Some(port) = config.raw.ssh().local_port.filter(|p| *p != 0) else {
        return Ok(text.to_string());
    };
    notes.push(format!(
        "{} forwards ssh from port {port}; the clone takes a free port at each start (ssh.localPort: 0)",
        from.name()
    ));
    let edited = yaml_edit::apply(
        text,
        &[(
            vec!["ssh".to_string(), "localPort".to_string()],
            Value::from(0u64),
        )],
    )
    .map_err(|e| EngineError::WrongState {
        name: from.name().clone(),
        message: format!("cannot change the clone's ssh.localPort: {e}"),
    })?;
    Ok(edited.text)
}

/// The files a clone copies from, watched for changes while it does.
fn watched_files(from: &InstanceDir, record: Option<&ImageRecord>) -> Vec<PathBuf> {
    let mut files = vec![from.config(), from.disk(), from.data_disk_new()];
    if let Some(record) = record {
        files.push(from.image_record());
        files.extend(
            [
                Some(&record.base),
                record.kernel.as_ref(),
                record.initrd.as_ref(),
            ]
            .into_iter()
            .flatten()
            .filter(|path| path.starts_with(from.dir()))
            .cloned(),
        );
    }
    files
}

pub(super) fn identities(files: &[PathBuf]) -> Result<Vec<Option<FileId>>, EngineError> {
    files
        .iter()
        .map(|path| os::fs::file_id(path).map_err(EngineError::io("inspect", path.clone())))
        .collect()
}

/// A byte-for-byte copy, holes kept.
pub(super) fn copy(from: &Path, to: &Path) -> Result<(), EngineError> {
    os::fs::copy_sparse(from, to, 0o600).map_err(|source| EngineError::Io {
        action: "copy",
        path: from.to_path_buf(),
        source,
    })
}

/// A cloud image's record for the clone: a base or boot file the source
/// owns (an imported one's, say) is copied, and the copied overlay pointed
/// at the copied base; one in the cache is shared (it is never written).
fn own_copies(
    from: &InstanceDir,
    to: &InstanceDir,
    staging: &Path,
    record: &ImageRecord,
    notes: &mut Vec<String>,
) -> Result<ImageRecord, EngineError> {
    let mut record = record.clone();
    let owned = |path: &Path| path.starts_with(from.dir());
    let place = |file: OwnFile, path: &Path| -> Result<PathBuf, EngineError> {
        let target = to.own_file(file);
        copy(path, &staging.join(target.file_name().unwrap_or_default()))?;
        Ok(target)
    };
    if owned(&record.base) {
        let base = place(OwnFile::BaseDisk, &record.base)?;
        let disk = staging.join(to.disk().file_name().unwrap_or_default());
        // Named relative to the disk: it is built in a staging directory.
        let relative = Path::new(base.file_name().unwrap_or_default());
        disk_image::rebase_onto_copy(&disk, relative, &record.base_format).map_err(|e| {
            EngineError::WrongState {
                name: from.name().clone(),
                message: format!("cannot point the copied disk at its copied base: {e}"),
            }
        })?;
        record.base = base;
        notes.push(format!(
            "{} owns its base disk: the clone has a copy of it",
            from.name()
        ));
    } else {
        notes.push(format!(
            "the clone's disk is a copy of {}'s, on the same read-only base image in the cache",
            from.name()
        ));
    }
    if let Some(kernel) = record.kernel.clone().filter(|k| owned(k)) {
        record.kernel = Some(place(OwnFile::Kernel, &kernel)?);
    }
    if let Some(initrd) = record.initrd.clone().filter(|i| owned(i)) {
        record.initrd = Some(place(OwnFile::Initrd, &initrd)?);
    }
    Ok(record)
}

/// Build instance `to` in a staging directory by `fill`, then rename it into
/// place (as `create` does: a crash leaves nothing a later `create` does not
/// sweep).
pub(super) fn build_in_staging(
    home: &Home,
    to: &InstanceDir,
    fill: impl FnOnce(&Path) -> Result<(), EngineError>,
) -> Result<InstanceDir, EngineError> {
    let root = &home.root;
    os::fs::create_private_dir_all(root).map_err(EngineError::io("create", root.clone()))?;
    remove_abandoned_temporaries(root);
    let (staging, lock) =
        os::lock::lock_temp_sibling(to.dir()).map_err(EngineError::io("lock", to.dir()))?;
    let result = (|| {
        os::fs::create_private_dir_all(&staging)
            .map_err(EngineError::io("create", staging.clone()))?;
        fill(&staging)?;
        match os::fs::rename(&staging, to.dir()) {
            Ok(()) => {}
            Err(_) if to.dir().exists() => {
                return Err(CreateError::Exists {
                    name: to.name().clone(),
                    dir: to.dir().to_path_buf(),
                }
                .into());
            }
            Err(source) => {
                return Err(EngineError::Io {
                    action: "rename into place",
                    path: to.dir().to_path_buf(),
                    source,
                });
            }
        }
        os::fs::sync_dir(root).map_err(EngineError::io("sync", root.clone()))
    })();
    if result.is_err() {
        let _ = os::fs::remove_dir_all_if_exists(&staging);
    }
    if let Err(e) = lock.remove() {
        tracing::warn!("cannot remove the lock of {}: {e}", staging.display());
    }
    result.map(|()| to.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_ssh_port_becomes_a_free_one_and_comments_stay() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "src".parse().unwrap()).unwrap();
        let text = "# mine\nimages:\n- location: /i\nssh:\n  # fixed\n  localPort: 2222\n";
        let config = Config::parse(text).unwrap();
        let mut notes = Vec::new();
        let cloned = with_own_ports(&dir, text, &config, &mut notes).unwrap();
        assert_eq!(
            cloned,
            "# mine\nimages:\n- location: /i\nssh:\n  # fixed\n  localPort: 0\n"
        );
        assert!(notes[0].contains("2222"), "{notes:?}");
        let free = "images:\n- location: /i\nssh:\n  localPort: 0\n";
        let mut notes = Vec::new();
        let same = with_own_ports(&dir, free, &Config::parse(free).unwrap(), &mut notes).unwrap();
        assert_eq!((same.as_str(), notes.len()), (free, 0));
    }
}
