//! `vmkeep clone SRC NEW`: arguments and printing; the work is
//! `engine::clone`.

use super::progress::Lines;
use super::{CliError, CloneArgs, ExitCode};
use crate::engine::clone::clone;
use crate::instance::Home;

pub fn run(args: CloneArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let notice = Lines {
        name: args.target.as_str(),
    };
    let cloned = clone(&home, &args.source, &args.target, &notice)?;
    for note in &cloned.notes {
        eprintln!("note: {note}");
    }
    println!(
        "cloned {} as {} in {}",
        args.source,
        args.target,
        cloned.dir.dir().display()
    );
    Ok(ExitCode::Success as i32)
}
