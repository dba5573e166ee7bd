//! `vmkeep import NAME [--as NEW]` and `vmkeep create --from-lima PATH
//! [--name NEW]`: arguments and printing; the work is `engine::import`.

use std::path::Path;

use super::progress::Lines;
use super::{CliError, ExitCode, ImportArgs};
use crate::engine::EngineError;
use crate::engine::import::{import, lima_dir};
use crate::instance::{Home, InstanceName};

pub fn run(args: ImportArgs) -> Result<i32, CliError> {
    let dir = lima_dir(&args.name)?;
    from_dir(&dir, args.as_name)
}

/// Import the Lima instance at `dir`, named `name` or after the directory.
pub fn from_dir(dir: &Path, name: Option<InstanceName>) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let name = match name {
        Some(name) => name,
        None => {
            let word = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            word.parse().map_err(|e| EngineError::Usage {
                message: format!(
                    "the Lima instance's name {word:?} is not a vmkeep instance name ({e}); give one with --as (import) or --name (create)"
                ),
            })?
        }
    };
    let notice = Lines {
        name: name.as_str(),
    };
    let imported = import(&home, dir, &name, &notice)?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    println!(
        "imported the Lima instance {} as {name} in {}; `vmkeep start {name}` boots it",
        dir.display(),
        imported.dir.dir().display()
    );
    Ok(ExitCode::Success as i32)
}
