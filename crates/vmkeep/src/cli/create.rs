//! `vmkeep create [--name NAME] [FILE.yaml | template:NAME | URL | -]`
//! (Lima's form) and `vmkeep create NAME [--template FILE|NAME]` (vmkeep's),
//! with Lima's edit flags: arguments and printing; the work is
//! `engine::create`. Also what `vmkeep start FILE.yaml` creates first.
//! `--strict` refuses the fields vmkeep does not know (noted otherwise, as
//! Lima does); with `--dry-run` it is Lima's `limactl validate`.

use super::{CliError, CreateArgs, EditFlagArgs, ExitCode};
use crate::engine::create::{self, Plan};
use crate::instance::config::FieldPolicy;
use crate::instance::{Home, InstanceName};

pub fn run(args: CreateArgs) -> Result<i32, CliError> {
    if let Some(lima) = &args.from_lima {
        return super::import::from_dir(lima, args.name.clone());
    }
    let plan = create::plan(
        args.target.as_deref(),
        args.name.as_ref(),
        args.template.as_deref(),
    )?;
    let fields = match args.strict {
        true => FieldPolicy::Refuse,
        false => FieldPolicy::Note,
    };
    create_planned(&Home::from_env()?, &plan, &args.flags, args.dry_run, fields)?;
    Ok(ExitCode::Success as i32)
}

/// Create what `plan` says, with the edit flags applied (or with `dry_run`
/// only check it and print the config it would store); prints the notices;
/// returns the instance name.
pub fn create_planned(
    home: &Home,
    plan: &Plan,
    flags: &EditFlagArgs,
    dry_run: bool,
    fields: FieldPolicy,
) -> Result<InstanceName, CliError> {
    if let Some(note) = &plan.note {
        eprintln!("note: {note}");
    }
    let mut template = create::read(&plan.template, &flags.params, &mut std::io::stdin())?;
    template.fields = fields;
    let (template, notes) = create::with_edit_flags(home, &plan.name, template, &flags.flags())?;
    for note in notes {
        eprintln!("note: {note}");
    }
    if dry_run {
        let checked = create::dry_run(home, &plan.name, &template)?;
        print!("{}", checked.resolved.text);
        for notice in checked.resolved.notices() {
            eprintln!("note: {notice}");
        }
        eprintln!(
            "{} is valid for instance {} (nothing was created)",
            template.source, plan.name
        );
        return Ok(plan.name.clone());
    }
    let mut progress = super::progress::DownloadProgress::new();
    let created = create::create(home, &plan.name, &template, &mut progress)?;
    for notice in &created.notices {
        eprintln!("note: {notice}");
    }
    println!(
        "created instance {} in {}",
        plan.name,
        created.dir.dir().display()
    );
    Ok(plan.name.clone())
}
