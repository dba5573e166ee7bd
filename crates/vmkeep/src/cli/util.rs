//! Small things several verbs share.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::home;
use crate::instance::observe::observe;
use crate::instance::ownership::{self, Foreign, Ownership};
use crate::instance::{InstanceDir, InstanceName, Status, status};

/// The layout of an existing instance, or an error saying how to create it.
pub fn existing(name: &InstanceName) -> anyhow::Result<InstanceDir> {
    let dir = layout(name)?;
    if !dir.dir().is_dir() {
        bail!(
            "there is no instance {name}; create it with `vmkeep create {name}` (or see `vmkeep list`)"
        );
    }
    Ok(dir)
}

/// The layout of an instance, existing or not. A directory of that name that
/// vmkeep did not make (a Lima instance, say) is refused here, so that no
/// verb acts on it: only `delete --force` removes it (see `delete.rs`).
pub fn layout(name: &InstanceName) -> anyhow::Result<InstanceDir> {
    let dir = layout_any(name)?;
    if let Some(foreign) = foreign(&dir)? {
        bail!(
            "{} is not a vmkeep instance: it is {}; vmkeep leaves it alone \
             (move it out of {}, or `vmkeep delete --force {name}` to delete it with everything in it)",
            dir.dir().display(),
            foreign.describe(),
            dir.dir()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(dir)
}

/// The layout of `name`, whoever made its directory.
pub fn layout_any(name: &InstanceName) -> anyhow::Result<InstanceDir> {
    let root = home::instances_root()?;
    Ok(InstanceDir::new(&root, name.clone())?)
}

/// What the directory of `dir` is when vmkeep did not make it (None when it
/// is vmkeep's, or does not exist).
pub fn foreign(dir: &InstanceDir) -> anyhow::Result<Option<Foreign>> {
    if !dir.dir().is_dir() {
        return Ok(None);
    }
    match ownership::inspect(dir.dir())
        .with_context(|| format!("cannot read {}", dir.dir().display()))?
    {
        Ownership::Vmkeep => Ok(None),
        Ownership::Foreign(foreign) => Ok(Some(foreign)),
    }
}

/// The status, from locks, files and the journal.
pub fn status_of(dir: &InstanceDir) -> anyhow::Result<Status> {
    let seen = observe(dir).with_context(|| format!("cannot inspect {}", dir.dir().display()))?;
    Ok(status::derive(&seen))
}

/// A runtime for the verbs that talk to a host agent.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Poll `status_of` until `done` says so, or the time is up.
pub fn wait_for_status(
    dir: &InstanceDir,
    limit: Duration,
    done: impl Fn(&Status) -> bool,
) -> anyhow::Result<Status> {
    let until = std::time::Instant::now() + limit;
    loop {
        let status = status_of(dir)?;
        if done(&status) || std::time::Instant::now() >= until {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
