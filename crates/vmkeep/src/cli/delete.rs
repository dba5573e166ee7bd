//! `vmkeep delete NAME... [--force]`

use anyhow::{Context, bail};

use super::DeleteArgs;
use super::util;
use crate::os;
use crate::os::lock::HeldLock;

pub fn run(args: DeleteArgs) -> anyhow::Result<i32> {
    for name in &args.names {
        let dir = util::existing(name)?;
        let status = util::status_of(&dir)?;
        let runs = status.has_live_processes();
        if runs && !args.force {
            bail!(
                "{name} is {}; stop it first (`vmkeep stop {name}`) or use `vmkeep delete --force {name}`",
                status.word()
            );
        }
        let autostart = super::autostart::disable_for_delete(&dir)?;
        if runs {
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
