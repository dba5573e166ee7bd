//! Gathering [`Observations`] of an instance: locks, files and the journal's
//! tail. No socket round trip, so it is fast for any number of instances.

use std::io;

use super::config::Config;
use super::layout::{InstanceDir, is_runtime_file};
use super::status::{ApiState, ConfigState, Observations};
use crate::journal;
use crate::os;

/// Look at an instance without talking to its host agent.
pub fn observe(dir: &InstanceDir) -> io::Result<Observations> {
    observe_with_config(dir).map(|(seen, _)| seen)
}

/// [`observe`], also returning the config when it is valid (parsed once).
pub fn observe_with_config(dir: &InstanceDir) -> io::Result<(Observations, Option<Config>)> {
    let pid_of = |path: &std::path::Path| -> io::Result<Option<u32>> {
        Ok(os::lock::holder(path)?.map(|pid| pid.as_raw_nonzero().get() as u32))
    };
    let mut loaded = None;
    let config = match Config::load(&dir.config()) {
        Ok(config) => {
            loaded = Some(config);
            ConfigState::Valid
        }
        Err(crate::instance::config::ConfigError::Read { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            ConfigState::Missing
        }
        Err(e) => ConfigState::Invalid {
            message: e.to_string(),
        },
    };
    let seen = Observations {
        config,
        disk_present: dir.disk().exists(),
        agent_pid: pid_of(&dir.agent_lock())?,
        qemu_pid: pid_of(&dir.qemu_pid())?,
        runtime_files: runtime_files(dir)?,
        last_event: journal::last(&dir.journal()).unwrap_or(None),
        api: ApiState::NotAsked,
    };
    Ok((seen, loaded))
}

/// Names of the runtime files present, sorted (read_dir + suffix match).
pub fn runtime_files(dir: &InstanceDir) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_runtime_file(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
