//! `vmkeep events [NAME] [--follow] [--json]`: arguments and printing; the
//! events come from `engine::events` (every instance's journal, or one's,
//! merged in time order; with `--follow`, new ones as they are written).

use std::io::Write;
use std::time::Duration;

use super::{CliError, EventsArgs};
use crate::engine::events::Events;
use crate::instance::journal::Record;
use crate::instance::{Home, InstanceName};

pub fn run(args: EventsArgs) -> Result<i32, CliError> {
    let mut events = Events::of(&Home::from_env()?, args.name.as_ref())?;
    let mut out = std::io::stdout().lock();
    loop {
        for (name, record) in events.next_batch()? {
            writeln!(out, "{}", render(&name, &record, args.json)?)?;
        }
        out.flush()?;
        if !args.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn render(name: &InstanceName, record: &Record, json: bool) -> Result<String, CliError> {
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
