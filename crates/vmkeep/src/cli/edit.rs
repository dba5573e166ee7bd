//! `vmkeep edit [NAME] [edit flags] [--restart | --start]`: Lima's edit
//! flags, or with none `$EDITOR` (then `$VISUAL`, then `vi`) on a copy of
//! the config; arguments and printing. The work is `engine::edit`.

use super::progress::Progress;
use super::{CliError, EditArgs, ExitCode};
use crate::engine::edit::{self, Change, EditOptions, EditOutcome, Edited};
use crate::engine::start::{StartOptions, start};
use crate::engine::{EngineError, Notice};
use crate::instance::edit_flags::EditFlags;
use crate::instance::{Home, InstanceName};
use crate::os;

pub fn run(args: EditArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(InstanceName::default_instance);
    let options = EditOptions {
        restart: args.restart,
        ..EditOptions::default()
    };
    let flags = args.flags.flags();
    let progress = Progress::new();
    let edited = if flags.is_empty() {
        with_editor(&home, &name, &options, &progress)
    } else {
        edit::edit(&home, &name, &Change::Flags(flags), &options, &progress)
    };
    progress.finish();
    let edited = edited?;
    print_edited(&home, &name, &edited)?;
    if args.start && matches!(edited.outcome, EditOutcome::Saved | EditOutcome::Unchanged) {
        let progress = Progress::new();
        let outcome = start(
            &home,
            &name,
            &StartOptions {
                through_service_manager: true,
                ..StartOptions::default()
            },
            &progress,
        );
        progress.finish();
        return super::start::print_outcome(&home, &name, outcome?);
    }
    Ok(ExitCode::Success as i32)
}

/// `$EDITOR` on a copy; the copy replaces the config once it is checked.
fn with_editor(
    home: &Home,
    name: &InstanceName,
    options: &EditOptions,
    notice: &dyn Notice,
) -> Result<Edited, EngineError> {
    let copy = edit::open_editor_copy(home, name, options)?;
    if copy.from_rejected {
        eprintln!(
            "note: opening your last edit of {name}, which was refused (vmkeep.yaml is unchanged); \
             save an empty file to abort"
        );
    }
    let program = edit::editor_program(&copy.path);
    let ran = os::process::run_on_terminal(&program).map_err(EngineError::process(format!(
        "run the editor ({})",
        program.display()
    )))?;
    if !ran.success() {
        let _ = os::fs::remove_file_if_exists(&copy.path);
        return Err(EngineError::Usage {
            message: format!(
                "the editor ({}) ended with {ran}: nothing was changed",
                program.display()
            ),
        });
    }
    edit::apply_editor_copy(home, name, &copy, options, notice)
}

/// `start NAME --cpus 2 ...` on an existing instance: the flags change its
/// config first (refused while it runs).
pub fn edit_before_start(
    home: &Home,
    name: &InstanceName,
    flags: &EditFlags,
) -> Result<(), CliError> {
    let edited = edit::edit(
        home,
        name,
        &Change::Flags(flags.clone()),
        &EditOptions::default(),
        &crate::notice::Silent,
    )?;
    print_edited(home, name, &edited)
}

fn print_edited(home: &Home, name: &InstanceName, edited: &Edited) -> Result<(), CliError> {
    for field in &edited.fields {
        match (&field.from, &field.to) {
            (Some(from), Some(to)) => println!("{name}: {}: {from} -> {to}", field.field),
            (None, Some(to)) => println!("{name}: {}: {to} (added)", field.field),
            (Some(from), None) => println!("{name}: {}: {from} (removed)", field.field),
            (None, None) => {}
        }
    }
    for note in &edited.notes {
        eprintln!("note: {note}");
    }
    match &edited.outcome {
        EditOutcome::Unchanged => println!("{name}: no change to its config"),
        EditOutcome::Aborted => println!("{name}: the edit was empty, so nothing was changed"),
        EditOutcome::Saved => {
            println!("{name}: config saved; it applies at the next start")
        }
        EditOutcome::SavedForAfterResume => println!(
            "{name}: config saved; {name} is suspended, so `vmkeep start {name}` resumes it as saved \
             and the change applies from its next fresh boot"
        ),
        EditOutcome::Restarted(restarted) => {
            super::restart::print_restarted(home, name, restarted)?;
        }
    }
    Ok(())
}
