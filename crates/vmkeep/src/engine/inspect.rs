//! `inspect`: what `list` shows of an instance (its status, its processes,
//! its config, its ssh port), and what `autostart status` shows of its
//! registration. From the engine's one observation, never a socket round
//! trip, so it is fast for any number of instances. Whatever is shown comes
//! from [`Status`] or, for a directory that is no instance vmkeep can look
//! at, from its typed sibling [`NotInstance`].

use std::path::PathBuf;

use super::EngineError;
use crate::autostart::manager::{self, not_running_reason};
use crate::autostart::record::{self, Record};
use crate::autostart::{Condition, Manager};
use crate::instance::home::foreign;
use crate::instance::not_instance::NotInstance;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status, status};

/// What was found of an instance.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub dir: InstanceDir,
    pub status: Status,
    /// The process holding the host agent's lock, if any.
    pub agent_pid: Option<u32>,
    /// The process holding QEMU's pid-file lock, if any.
    pub qemu_pid: Option<u32>,
    /// The config, when it is valid.
    pub config: Option<Config>,
    /// The loopback port forwarded to the guest's ssh (a running cloud image).
    pub ssh_port: Option<u16>,
    /// The QEMU binary that runs was replaced on disk since it started
    /// (its path): `vmkeep upgrade --qemu` moves the VM onto the new one.
    pub qemu_replaced: Option<PathBuf>,
}

/// What a name of the home is.
#[derive(Debug, Clone)]
pub enum Inspected {
    Instance(Box<Inspection>),
    /// A directory that is no instance vmkeep can look at; `dir` is `None`
    /// when its path cannot even be laid out.
    NotInstance {
        dir: Option<InstanceDir>,
        what: NotInstance,
    },
}

/// Inspect `name` in `home`; `None` when there is no such directory.
pub fn inspect(home: &Home, name: &InstanceName) -> Option<Inspected> {
    let dir = match home.layout_any(name) {
        Ok(dir) => dir,
        Err(e) => {
            return Some(Inspected::NotInstance {
                dir: None,
                what: NotInstance::SocketPathTooLong {
                    message: e.to_string(),
                },
            });
        }
    };
    if !dir.dir().is_dir() {
        return None;
    }
    if let Ok(Some(foreign)) = foreign(&dir) {
        return Some(Inspected::NotInstance {
            dir: Some(dir),
            what: NotInstance::Foreign(foreign),
        });
    }
    let (seen, config) = match super::observe_with_config(&dir) {
        Ok(seen) => seen,
        Err(e) => {
            return Some(Inspected::NotInstance {
                dir: Some(dir),
                what: NotInstance::Unreadable {
                    error: e.to_string(),
                },
            });
        }
    };
    let status = status::derive(&seen);
    let ssh_port = match status {
        Status::Running => crate::image::cloud::ssh_port(&dir),
        _ => None,
    };
    Some(Inspected::Instance(Box::new(Inspection {
        dir,
        status,
        agent_pid: seen.agent_pid,
        qemu_pid: seen.qemu_pid,
        config,
        ssh_port,
        qemu_replaced: seen.qemu_replaced,
    })))
}

/// Inspect every one of `names` (a few threads at once), in their order;
/// those that do not exist are left out.
pub fn inspect_all(home: &Home, names: &[InstanceName]) -> Vec<(InstanceName, Inspected)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(names.len().div_ceil(8).max(1))
            .map(|chunk| {
                scope.spawn(|| {
                    chunk
                        .iter()
                        .filter_map(|name| Some((name.clone(), inspect(home, name)?)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// An instance's autostart registration, as `autostart status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Autostart {
    NotEnabled,
    Enabled(Registration),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Registration {
    pub manager: Manager,
    pub condition: Condition,
    pub keep_alive: bool,
    pub service: String,
    pub path: PathBuf,
    /// The definition file exists and carries vmkeep's marker.
    pub definition_present: bool,
    /// What the service manager says, or why it cannot be asked.
    pub manager_state: String,
}

/// The autostart registration of the instance in `dir` (asks the service
/// manager: one subprocess).
pub fn autostart(dir: &InstanceDir) -> Result<Autostart, EngineError> {
    let loaded = record::load(dir).map_err(EngineError::io("read", record::path(dir)))?;
    let Some(record) = loaded else {
        return Ok(Autostart::NotEnabled);
    };
    let definition_present = std::fs::read_to_string(&record.path)
        .map(|t| crate::autostart::managed_marker(&t).is_some())
        .unwrap_or(false);
    let manager_state = match manager::for_record(&record) {
        None => not_running_reason(record.manager),
        Some(service) => match service.state() {
            Ok(state) => state.summary,
            Err(e) => format!("cannot ask: {e}"),
        },
    };
    let Record {
        manager,
        condition,
        keep_alive,
        service,
        path,
        ..
    } = record;
    Ok(Autostart::Enabled(Registration {
        manager,
        condition,
        keep_alive,
        service,
        path,
        definition_present,
        manager_state,
    }))
}
