//! Small things several verbs share.

use super::{CliError, ExitCode};
use crate::instance::InstanceName;

/// Run a verb for every name at once, each in its own thread; prints each
/// failure as it comes, and fails (with the most telling exit code) if any
/// did.
pub fn for_each_in_parallel(
    names: &[InstanceName],
    one: impl Fn(&InstanceName) -> Result<(), CliError> + Sync,
) -> Result<i32, CliError> {
    let failures: Vec<ExitCode> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let one = &one;
                scope.spawn(move || (name, one(name)))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| match handle.join() {
                Ok((_, Ok(()))) => None,
                Ok((name, Err(e))) => {
                    eprintln!("error: {name}: {e}");
                    Some(e.exit_code())
                }
                Err(_) => Some(ExitCode::Failure),
            })
            .collect()
    });
    if failures.is_empty() {
        return Ok(ExitCode::Success as i32);
    }
    // One kind of failure keeps its code; mixed ones are a plain failure.
    let code = if failures.iter().all(|c| *c == failures[0]) {
        failures[0]
    } else {
        ExitCode::Failure
    };
    Err(CliError::Several {
        failed: failures.len(),
        total: names.len(),
        code,
    })
}
