//! `vmkeep delete NAME... [--force]`
//!
//! `--force` also makes a missing instance a no-op (as in Lima) and deletes a
//! directory vmkeep did not make; without it such a directory is refused,
//! naming what was found.

use anyhow::{Context, bail};

use super::DeleteArgs;
use super::util;
use crate::instance::InstanceDir;
use crate::instance::Status;
use crate::instance::ownership::Foreign;
use crate::instance::status::Broken;
use crate::os;
use crate::os::lock::HeldLock;

/// Delete a directory vmkeep did not make: only with `--force`, and never
/// while a process holds one of its pid files (its VM still runs).
fn delete_foreign(dir: &InstanceDir, foreign: &Foreign, force: bool) -> anyhow::Result<()> {
    let name = dir.name();
    if !force {
        bail!(
            "{} is not a vmkeep instance: it is {}; vmkeep did not make it, so it deletes it only with \
             `vmkeep delete --force {name}` (everything in it goes, disks included)",
            dir.dir().display(),
            foreign.describe()
        );
    }
    if let Some((file, pid)) = foreign.live.first() {
        bail!(
            "{} is in use: pid {pid} holds {file}; stop it with the tool that started it, then delete again",
            dir.dir().display()
        );
    }
    let doomed = os::fs::temp_sibling(dir.dir());
    std::fs::rename(dir.dir(), &doomed)
        .with_context(|| format!("cannot remove {}", dir.dir().display()))?;
    os::fs::remove_dir_all_if_exists(&doomed)
        .with_context(|| format!("cannot remove {}", doomed.display()))?;
    Ok(())
}

pub fn run(args: DeleteArgs) -> anyhow::Result<i32> {
    for name in &args.names {
        let dir = util::layout_any(name)?;
        if !dir.dir().is_dir() && args.force {
            eprintln!("there is no instance {name}; nothing to delete");
            continue;
        }
        if let Some(foreign) = util::foreign(&dir)? {
            delete_foreign(&dir, &foreign, args.force)?;
            println!("deleted {} ({})", dir.dir().display(), foreign.describe());
            continue;
        }
        let dir = util::existing(name)?;
        let runs = |s: &Status| {
            matches!(s, Status::Running | Status::Starting | Status::Stopping)
                || matches!(
                    s,
                    Status::Broken(
                        Broken::OrphanedQemu { .. }
                            | Broken::AgentUnresponsive { .. }
                            | Broken::QemuGone { .. }
                    )
                )
        };
        let status = util::status_of(&dir)?;
        if runs(&status) && !args.force {
            bail!(
                "{name} is {}; stop it first (`vmkeep stop {name}`) or use `vmkeep delete --force {name}`",
                status.word()
            );
        }
        let autostart = super::autostart::disable_for_delete(&dir)?;
        if runs(&status) {
            super::stop::force_stop(&dir)?;
        }
        autostart.settle();
        // Hold the agent lock so no start can begin while the files go.
        let Some(lock) = HeldLock::try_acquire(&dir.agent_lock())? else {
            bail!("{name} was started meanwhile; stop it and delete again");
        };
        let doomed = os::fs::temp_sibling(dir.dir());
        std::fs::rename(dir.dir(), &doomed)
            .with_context(|| format!("cannot remove {}", dir.dir().display()))?;
        drop(lock);
        os::fs::remove_dir_all_if_exists(&doomed)
            .with_context(|| format!("cannot remove {}", doomed.display()))?;
        println!("deleted {name}");
    }
    Ok(0)
}
