//! `events`: the lifecycle events of every instance of a home (or one),
//! merged in time order from the per-instance journals; read again, only
//! the ones written since.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::EngineError;
use crate::instance::journal::Record;
use crate::instance::{Home, InstanceName};

/// Reads the journals of a home, remembering how far it got in each.
pub struct Events {
    home: Home,
    only: Option<InstanceName>,
    /// Bytes of each journal already read.
    read: BTreeMap<InstanceName, u64>,
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
            let offset = self.read.entry(name.clone()).or_insert(0);
            let journal = dir.journal();
            let (records, consumed) =
                read_from(&journal, *offset).map_err(EngineError::io("read", &journal))?;
            *offset += consumed;
            batch.extend(records.into_iter().map(|r| (name.clone(), r)));
        }
        // RFC 3339 UTC timestamps of one width sort as text.
        batch.sort_by(|a, b| a.1.ts.cmp(&b.1.ts));
        Ok(batch)
    }
}

/// Complete lines from `offset` on; returns the records and the bytes
/// consumed (a torn last line waits for its end).
fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let records = bytes[..complete]
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    Ok((records, complete as u64))
}
