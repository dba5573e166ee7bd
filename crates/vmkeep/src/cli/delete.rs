//! `vmkeep delete NAME... [--force]`: arguments and printing; the work is
//! `engine::delete`. `--force` also makes a missing instance a no-op (as in
//! Lima) and deletes a directory vmkeep did not make.

use super::progress::Lines;
use super::{CliError, DeleteArgs, ExitCode};
use crate::engine::delete::{Deleted, delete};
use crate::instance::Home;

pub fn run(args: DeleteArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    for name in &args.names {
        let notice = Lines {
            name: name.as_str(),
        };
        match delete(&home, name, args.force, &notice)? {
            Deleted::Removed { through_link: None } => println!("deleted {name}"),
            Deleted::Removed {
                through_link: Some(target),
            } => println!(
                "deleted {name} (its files in {}, and the link to them in {})",
                target.display(),
                home.root.display()
            ),
            Deleted::WasMissing => eprintln!("there is no instance {name}; nothing to delete"),
            Deleted::Foreign { dir, what } => println!("deleted {} ({what})", dir.display()),
        }
    }
    Ok(ExitCode::Success as i32)
}
