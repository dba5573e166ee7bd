//! `events`: the lifecycle events of every instance of a home (or one),
//! merged in time order from the per-instance journals (each across its
//! rotated part); read again, only the ones written since (across a
//! rotation too: `journal::follow`).

use std::collections::BTreeMap;

use super::EngineError;
use crate::instance::journal::Record;
use crate::instance::journal::follow::Follower;
use crate::instance::{Home, InstanceName};

/// Reads the journals of a home, remembering how far it got in each.
pub struct Events {
    home: Home,
    only: Option<InstanceName>,
    /// How far each journal was read.
    read: BTreeMap<InstanceName, Follower>,
}

impl Events {
    /// The events of every instance of `home`, or of `only` (which must
    /// exist).
    pub fn of(home: &Home, only: Option<&InstanceName>) -> Result<Events, EngineError> {
        if let Some(name) = only {
            home.existing(name)?;
        }
        Ok(Events {
            home: home.clone(),
            only: only.cloned(),
            read: BTreeMap::new(),
        })
    }

    /// The records written since the last call (all of them at the first),
    /// oldest first, each with its instance.
    pub fn next_batch(&mut self) -> Result<Vec<(InstanceName, Record)>, EngineError> {
        let names = match &self.only {
            Some(name) => vec![name.clone()],
            None => self.home.instance_names(),
        };
        let mut batch = Vec::new();
        for name in names {
            let Ok(dir) = self.home.layout_any(&name) else {
                continue;
            };
            let journal = dir.journal();
            let follower = self
                .read
                .entry(name.clone())
                .or_insert_with(|| Follower::of(&journal));
            let records = follower
                .read_new()
                .map_err(EngineError::io("read", &journal))?;
            batch.extend(records.into_iter().map(|r| (name.clone(), r)));
        }
        // RFC 3339 UTC timestamps of one width sort as text.
        batch.sort_by(|a, b| a.1.ts.cmp(&b.1.ts));
        Ok(batch)
    }
}
