//! `edit`: change an instance's config after it exists, by Lima's edit
//! flags or by a text (what `$EDITOR` made of a copy). The new config is
//! checked as `create` checks a template (every field, the whole, template
//! variables, shared directories), a smaller `disk:` is refused, and only
//! then is `vmkeep.yaml` replaced, atomically; a refused change leaves it
//! byte for byte as it was.
//!
//! What the status allows is `Status::edit_plan`'s: a stopped instance
//! takes the change at its next start; a suspended one only a change its
//! saved state can still be resumed with; a running one none, unless the
//! caller asks for a restart, which saves the change and then restarts it
//! (stop by the ladder, start), so that the VM never runs a half-applied
//! config.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::restart::{self, RestartOptions, Restarted};
use super::{EngineError, Notice, status_of};
use crate::driver::qemu::snapshot;
use crate::engine::create::{self, CreateError};
use crate::instance::config::{AccelSetting, ByteSize, Config, FieldPolicy};
use crate::instance::disk_size::DiskChange;
use crate::instance::edit_flags::{EditFlags, FlagError, HostPaths, NewParams};
use crate::instance::status::EditPlan;
use crate::instance::{Home, InstanceDir, InstanceName, Status};
use crate::os;
use crate::template::Source;
use crate::text::yaml_edit;

/// Why a change to a config is refused (the config is unchanged).
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}\n  nothing was changed")]
    Flag(#[from] FlagError),
    #[error(
        "the config of {name} is not YAML vmkeep can edit ({message}); edit it by hand with `vmkeep edit {name}`"
    )]
    NotYaml { name: InstanceName, message: String },
    #[error("the change would make the config of {name} invalid: {message}\n  {}", kept_words(.kept.as_deref()))]
    Invalid {
        name: InstanceName,
        message: String,
        /// Where the refused text was kept (an editor's edit).
        kept: Option<PathBuf>,
    },
    #[error("{message}\n  nothing was changed")]
    Shrink { message: String },
}

fn kept_words(kept: Option<&Path>) -> String {
    match kept {
        Some(path) => format!(
            "vmkeep.yaml is unchanged; your text is kept in {}, and `vmkeep edit` opens it again",
            path.display()
        ),
        None => "nothing was changed".into(),
    }
}

impl EditError {
    pub fn kind(&self) -> super::ErrorKind {
        match self {
            EditError::Flag(flag) if flag.is_syntax() => super::ErrorKind::Usage,
            EditError::Flag(_)
            | EditError::NotYaml { .. }
            | EditError::Invalid { .. }
            | EditError::Shrink { .. } => super::ErrorKind::InvalidConfig,
        }
    }
}

/// What to change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Lima's edit flags, applied to the config's text (comments kept).
    Flags(EditFlags),
    /// The whole new text.
    Text(String),
}

#[derive(Debug, Clone, Default)]
pub struct EditOptions {
    /// Save a change to a running instance and restart it (else refused).
    pub restart: bool,
    /// How that restart stops it.
    pub restart_options: RestartOptions,
}

/// One field whose value changed, as YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// How an edit ended.
#[derive(Debug)]
pub enum EditOutcome {
    /// The new config is the old one.
    Unchanged,
    /// The editor was left with an empty file: nothing changed (Lima's way
    /// to abort).
    Aborted,
    /// Written; the next start applies it.
    Saved,
    /// Written; the next fresh boot applies what a resume does not (the
    /// saved state is resumed first, at `start`).
    SavedForAfterResume,
    /// Written, and the instance restarted with it.
    Restarted(Box<Restarted>),
}

#[derive(Debug)]
pub struct Edited {
    pub fields: Vec<FieldChange>,
    /// What to tell the user (comments that could not be kept, a disk that
    /// grows at the next start, ...).
    pub notes: Vec<String>,
    pub outcome: EditOutcome,
}

/// Change the config of instance `name` of `home`.
pub fn edit(
    home: &Home,
    name: &InstanceName,
    change: &Change,
    options: &EditOptions,
    notice: &dyn Notice,
) -> Result<Edited, EngineError> {
    let dir = home.existing(name)?;
    let old = read_config(&dir)?;
    let mut notes = Vec::new();
    let new = match change {
        Change::Text(text) => text.clone(),
        Change::Flags(flags) => {
            let (text, flag_notes) = with_flags(&dir, &old, flags, NewParams::Refused)?;
            notes.extend(flag_notes);
            text
        }
    };
    change_config(&dir, &old, &new, None, options, notes, notice)
}

/// The text of `old` with the edit flags applied, and what to say of them.
pub fn with_flags(
    dir: &InstanceDir,
    old: &str,
    flags: &EditFlags,
    new_params: NewParams,
) -> Result<(String, Vec<String>), EngineError> {
    let current = yaml_edit::parse_mapping(old).map_err(|e| EditError::NotYaml {
        name: dir.name().clone(),
        message: e.to_string(),
    })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let planned = flags
        .plan(
            &current,
            HostPaths {
                home: home.as_deref(),
                cwd: &cwd,
            },
            new_params,
        )
        .map_err(EditError::from)?;
    let edited = yaml_edit::apply(old, &planned.assignments).map_err(|e| EditError::Invalid {
        name: dir.name().clone(),
        message: e.to_string(),
        kept: None,
    })?;
    let mut notes = planned.notes;
    if !edited.comments_kept {
        notes.push(format!(
            "{} was written anew from its values: its comments past the header could not be kept",
            dir.config().display()
        ));
    }
    Ok((edited.text, notes))
}

fn read_config(dir: &InstanceDir) -> Result<String, EngineError> {
    match os::fs::read_if_exists(&dir.config())
        .map_err(EngineError::io("read the config", dir.config()))?
    {
        Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        None => Ok(String::new()),
    }
}

/// Check `new` as the config of `dir` the way `create` checks a template;
/// the text to store and its config.
pub fn check_text(dir: &InstanceDir, new: &str) -> Result<(String, Config), String> {
    let root = dir.dir().parent().unwrap_or(dir.dir());
    let source = Source::Text {
        label: dir.config().display().to_string(),
        cwd: dir.dir().to_path_buf(),
    };
    match create::check(root, dir.name(), new, &source, FieldPolicy::Note) {
        Ok(checked) => Ok((checked.resolved.text, checked.resolved.config)),
        Err(CreateError::Template(e)) => Err(e.to_string()),
        Err(CreateError::Expand(e)) => Err(e.to_string()),
        Err(CreateError::Message(e)) => Err(format!("message: {e}")),
        Err(CreateError::Shares(e)) => Err(e.to_string()),
        Err(other) => Err(other.to_string()),
    }
}

/// Check, decide by the status, write, and restart when asked.
fn change_config(
    dir: &InstanceDir,
    old: &str,
    new: &str,
    kept: Option<&Path>,
    options: &EditOptions,
    mut notes: Vec<String>,
    notice: &dyn Notice,
) -> Result<Edited, EngineError> {
    let name = dir.name();
    if new == old {
        return Ok(Edited {
            fields: Vec::new(),
            notes,
            outcome: EditOutcome::Unchanged,
        });
    }
    let (text, config) = check_text(dir, new).map_err(|message| EditError::Invalid {
        name: name.clone(),
        message,
        kept: kept.map(Path::to_path_buf),
    })?;
    let fields = changed_fields(old, &text);
    let disk = disk_note(dir, &config)?;
    let status = status_of(dir)?;
    // A restart grows the disk now (its start says so).
    if let Some(note) = disk.filter(|_| status.edit_plan() != EditPlan::Live) {
        notes.push(note);
    }
    let outcome = match status.edit_plan() {
        EditPlan::Write => Some(EditOutcome::Saved),
        EditPlan::WriteIfSavedStateAccepts => {
            refuse_what_the_saved_state_cannot_take(dir, &config)?;
            Some(EditOutcome::SavedForAfterResume)
        }
        EditPlan::Live if !options.restart => {
            return Err(EngineError::WrongState {
                name: name.clone(),
                message: format!(
                    "{name} is {}: a config change applies only when it starts, so none was written; \
                     add --restart to save it and restart {name} (stop by its ladder, then start), \
                     or `vmkeep stop {name}` first",
                    super::describe(&status).to_lowercase()
                ),
            });
        }
        // Saved first, so that whoever starts it next (this restart, a
        // daemon, a service manager) starts it with the whole new config.
        EditPlan::Live => None,
    };
    os::fs::write_atomic(&dir.config(), text.as_bytes(), 0o600)
        .map_err(EngineError::io("write the config", dir.config()))?;
    let outcome = match outcome {
        Some(saved) => saved,
        None => {
            let restarted = restart::restart_dir(dir, &options.restart_options, notice)
                .map_err(|e| EngineError::WrongState {
                    name: name.clone(),
                    message: format!(
                        "the new config of {name} is saved, but the restart that applies it failed: {e}\n  \
                         it applies at the next start: `vmkeep restart {name}`"
                    ),
                })?;
            EditOutcome::Restarted(Box::new(restarted))
        }
    };
    Ok(Edited {
        fields,
        notes,
        outcome,
    })
}

/// A smaller `disk:` is refused; a larger one is said to grow at the next
/// start; one below a cloud image's own size keeps that size.
fn disk_note(dir: &InstanceDir, config: &Config) -> Result<Option<String>, EngineError> {
    if !dir.disk().exists() {
        return Ok(None);
    }
    let change = match crate::image::disk_size::change(dir, config) {
        Ok(change) => change,
        Err(e) => {
            tracing::debug!("cannot inspect the disk of {}: {e}", dir.name());
            return Ok(None);
        }
    };
    if let Some(message) = change.refusal(dir.name().as_str()) {
        return Err(EditError::Shrink { message }.into());
    }
    Ok(match change {
        DiskChange::Grow { from, to } => Some(format!(
            "the disk grows from {} to {} at the next start (data kept)",
            ByteSize(from),
            ByteSize(to)
        )),
        DiskChange::KeepImageSize { image, configured } => Some(format!(
            "disk: {} is below the size of the image the disk was made from, {}: the disk keeps that size",
            ByteSize(configured),
            ByteSize(image)
        )),
        DiskChange::Keep | DiskChange::Shrink { .. } => None,
    })
}

/// A suspended instance resumes with the machine it was saved from: a
/// config that would build another one (CPUs, memory, shared directories,
/// the accelerator) is refused with the ways out.
fn refuse_what_the_saved_state_cannot_take(
    dir: &InstanceDir,
    config: &Config,
) -> Result<(), EngineError> {
    let name = dir.name();
    let Some(record) = snapshot::load(dir).map_err(|source| EngineError::Snapshot {
        action: "read",
        name: name.clone(),
        source,
    })?
    else {
        return Ok(());
    };
    let accel = match config.accel {
        AccelSetting::Auto => None,
        AccelSetting::Kvm => Some("kvm"),
        AccelSetting::Hvf => Some("hvf"),
        AccelSetting::Tcg => Some("tcg"),
    };
    let mounts = config.raw.mounts.as_ref().map_or(0, Vec::len) as u32;
    let conflicts = snapshot::record::config_conflicts(
        &record.machine,
        config.cpus.0,
        config.memory.0.mib(),
        mounts,
        accel,
    );
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(EngineError::WrongState {
        name: name.clone(),
        message: format!(
            "{name} is suspended, and its saved state cannot be resumed with this config: {}; nothing was changed.\n  \
             Resume and stop it first (`vmkeep stop {name}` resumes it and powers it off by its ladder), then edit; \
             or discard the saved state (`vmkeep start {name} --discard-state`: the guest loses what was in its memory)",
            conflicts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// The top-level fields whose values differ, in the new text's order
/// (then the removed ones).
fn changed_fields(old: &str, new: &str) -> Vec<FieldChange> {
    let old = yaml_edit::parse_mapping(old).unwrap_or_default();
    let new = yaml_edit::parse_mapping(new).unwrap_or_default();
    // Scalars as YAML, lists and maps on one line as JSON.
    let show = |v: &Value| {
        let text = match v {
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => {
                serde_json::to_string(v).unwrap_or_default()
            }
            _ => serde_yaml_ng::to_string(v).unwrap_or_default(),
        };
        let text = text.trim();
        if text.len() > 80 {
            "(changed)".to_string()
        } else {
            text.to_string()
        }
    };
    let mut fields = Vec::new();
    for (key, value) in &new {
        if old.get(key) != Some(value) {
            fields.push(FieldChange {
                field: key.as_str().unwrap_or("?").to_string(),
                from: old.get(key).map(show),
                to: Some(show(value)),
            });
        }
    }
    for (key, value) in &old {
        if !new.contains_key(key) {
            fields.push(FieldChange {
                field: key.as_str().unwrap_or("?").to_string(),
                from: Some(show(value)),
                to: None,
            });
        }
    }
    fields
}

/// The copy of the config an editor works on.
#[derive(Debug, Clone)]
pub struct EditorCopy {
    pub path: PathBuf,
    /// It starts from the last refused edit, not from the config.
    pub from_rejected: bool,
}

/// Make the copy of the config for an editor (the last refused edit when
/// one is kept). A running instance is refused before anything is opened,
/// unless a restart is asked for.
pub fn open_editor_copy(
    home: &Home,
    name: &InstanceName,
    options: &EditOptions,
) -> Result<EditorCopy, EngineError> {
    let dir = home.existing(name)?;
    let status = status_of(&dir)?;
    if status.edit_plan() == EditPlan::Live && !options.restart {
        return Err(running_refusal(name, &status));
    }
    let rejected = os::fs::read_if_exists(&dir.config_rejected())
        .map_err(EngineError::io("read", dir.config_rejected()))?;
    let from_rejected = rejected.is_some();
    let text = match rejected {
        Some(bytes) => bytes,
        None => read_config(&dir)?.into_bytes(),
    };
    let path = dir.config_edit_copy();
    let _ = os::fs::remove_file_if_exists(&path);
    os::fs::write_atomic(&path, &text, 0o600).map_err(EngineError::io("write", path.clone()))?;
    Ok(EditorCopy {
        path,
        from_rejected,
    })
}

fn running_refusal(name: &InstanceName, status: &Status) -> EngineError {
    EngineError::WrongState {
        name: name.clone(),
        message: format!(
            "{name} is {}: a config change applies only when it starts; \
             `vmkeep edit {name} --restart` saves it and restarts {name}, or `vmkeep stop {name}` first",
            super::describe(status).to_lowercase()
        ),
    }
}

/// Apply what the editor left in `copy`: an empty file aborts, the same
/// text changes nothing, a refused one is kept (in `vmkeep.yaml.rejected`)
/// for the next `vmkeep edit`.
pub fn apply_editor_copy(
    home: &Home,
    name: &InstanceName,
    copy: &EditorCopy,
    options: &EditOptions,
    notice: &dyn Notice,
) -> Result<Edited, EngineError> {
    let dir = home.existing(name)?;
    let text = std::fs::read(&copy.path)
        .map_err(EngineError::io("read the edited copy", copy.path.clone()))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let done = |outcome| {
        let _ = os::fs::remove_file_if_exists(&copy.path);
        Edited {
            fields: Vec::new(),
            notes: Vec::new(),
            outcome,
        }
    };
    if text.trim().is_empty() {
        return Ok(done(EditOutcome::Aborted));
    }
    let old = read_config(&dir)?;
    if text == old {
        let _ = os::fs::remove_file_if_exists(&dir.config_rejected());
        return Ok(done(EditOutcome::Unchanged));
    }
    let rejected = dir.config_rejected();
    match change_config(
        &dir,
        &old,
        &text,
        Some(&rejected),
        options,
        Vec::new(),
        notice,
    ) {
        Ok(edited) => {
            let _ = os::fs::remove_file_if_exists(&copy.path);
            let _ = os::fs::remove_file_if_exists(&rejected);
            Ok(edited)
        }
        Err(error) => {
            // Keep what the user typed; vmkeep.yaml is untouched.
            if let Err(e) = os::fs::rename(&copy.path, &rejected) {
                tracing::warn!(
                    "cannot keep the refused edit in {}: {e}",
                    rejected.display()
                );
            }
            Err(error)
        }
    }
}

/// The editor to run on `path`: `$EDITOR`, else `$VISUAL`, else `vi`, by
/// the shell (it may carry arguments, such as `code --wait`).
pub fn editor_program(path: &Path) -> os::process::Program {
    let editor = ["EDITOR", "VISUAL"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    os::process::Program::new(
        Path::new("/bin/sh"),
        &[
            "-c".to_string(),
            format!("{editor} \"$1\""),
            "vmkeep-edit".to_string(),
            path.display().to_string(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_name_old_and_new_values() {
        let fields = changed_fields(
            "cpus: 1\nmemory: 256MiB\ndisk: 2GiB\n",
            "# c\ncpus: 2\nmemory: 256MiB\nmounts:\n- location: /a\n",
        );
        assert_eq!(
            fields,
            [
                FieldChange {
                    field: "cpus".into(),
                    from: Some("1".into()),
                    to: Some("2".into())
                },
                FieldChange {
                    field: "mounts".into(),
                    from: None,
                    to: Some(r#"[{"location":"/a"}]"#.into())
                },
                FieldChange {
                    field: "disk".into(),
                    from: Some("2GiB".into()),
                    to: None
                },
            ]
        );
    }

    #[test]
    fn the_editor_comes_from_editor_then_visual_then_vi() {
        let program = editor_program(Path::new("/h/x/vmkeep.yaml"));
        let text = program.display();
        assert!(text.contains("/h/x/vmkeep.yaml"), "{text}");
    }
}
