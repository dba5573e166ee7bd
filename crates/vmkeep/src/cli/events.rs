//! `vmkeep events [NAME] [--follow] [--json]`: the lifecycle events of every
//! instance (or one), merged in time order from the per-instance journals;
//! with `--follow`, new ones as they are written.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::EventsArgs;
use crate::instance::home;
use crate::instance::journal::Record;
use crate::instance::{InstanceDir, InstanceName};

pub fn run(args: EventsArgs) -> anyhow::Result<i32> {
    let root = home::instances_root()?;
    if let Some(name) = &args.name {
        crate::instance::Home::from_env()?.existing(name)?;
    }
    // Bytes of each journal already shown.
    let mut shown: BTreeMap<InstanceName, u64> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    loop {
        let mut batch = Vec::new();
        for name in names(&root, args.name.as_ref()) {
            let Ok(dir) = InstanceDir::new(&root, name.clone()) else {
                continue;
            };
            let offset = shown.entry(name.clone()).or_insert(0);
            let (records, consumed) = read_from(&dir.journal(), *offset)?;
            *offset += consumed;
            batch.extend(records.into_iter().map(|r| (name.clone(), r)));
        }
        // RFC 3339 UTC timestamps of one width sort as text.
        batch.sort_by(|a, b| a.1.ts.cmp(&b.1.ts));
        for (name, record) in batch {
            writeln!(out, "{}", render(&name, &record, args.json)?)?;
        }
        out.flush()?;
        if !args.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(root: &Path, only: Option<&InstanceName>) -> Vec<InstanceName> {
    if let Some(name) = only {
        return vec![name.clone()];
    }
    crate::instance::layout::instance_names(root)
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

fn render(name: &InstanceName, record: &Record, json: bool) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(record)?;
    let fields = value.as_object_mut().expect("a record is an object");
    if json {
        fields.insert("instance".into(), name.as_str().into());
        return Ok(serde_json::to_string(&value)?);
    }
    let event = fields
        .remove("event")
        .and_then(|e| e.as_str().map(str::to_owned))
        .unwrap_or_default();
    fields.remove("ts");
    let pid = fields.remove("pid").unwrap_or_default();
    let details: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    Ok(format!(
        "{}  {:<12} {:<13} {} (pid {pid})",
        record.ts,
        name.as_str(),
        event,
        details.join(" ")
    ))
}
