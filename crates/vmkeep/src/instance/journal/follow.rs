//! Following a journal as it grows (`vmkeep events --follow`), across its
//! rotations: each record once, none lost.
//!
//! The follower keeps the file it reads open. Once the journal's path names
//! another file (a rotation), it reads what is left of its own (nothing is
//! appended to a file moved aside), then goes on with the new file from its
//! start. Only if more than one rotation happened between two calls (more
//! than a whole cap of events in one interval) is a file skipped: the one
//! between is read whole from `events.jsonl.1`, older ones are gone.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::event::{Event, Record};
use super::{Files, id_at, id_of, open_if_exists, open_pair};

/// Reads one journal's records as they are written.
#[derive(Debug)]
pub struct Follower {
    files: Files,
    /// The file being read, its identity, and how far (whole lines).
    reading: Option<(File, (u64, u64), u64)>,
    started: bool,
}

impl Follower {
    pub fn of(path: &Path) -> Follower {
        Follower {
            files: Files::of(path),
            reading: None,
            started: false,
        }
    }

    /// The records written since the last call (at the first, all of them,
    /// from the rotated part on), oldest first, without the rotations' own.
    pub fn read_new(&mut self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        if !self.started {
            self.started = true;
            let (previous, current) = open_pair(&self.files.current)?;
            if let Some(mut previous) = previous {
                read_lines(&mut previous, &mut 0, &mut records)?;
            }
            self.reading = current
                .map(|f| id_of(&f).map(|id| (f, id, 0)))
                .transpose()?;
        }
        loop {
            let now = id_at(&self.files.current)?;
            if let Some((file, _, offset)) = &mut self.reading {
                read_lines(file, offset, &mut records)?;
            }
            let ours = self.reading.as_ref().map(|(_, id, _)| *id);
            if now == ours {
                break;
            }
            // Rotated (or the journal appeared, or was removed).
            if ours.is_some()
                && id_at(&self.files.previous)? != ours
                && let Some(mut between) = open_if_exists(&self.files.previous)?
            {
                read_lines(&mut between, &mut 0, &mut records)?;
            }
            self.reading = open_if_exists(&self.files.current)?
                .map(|f| id_of(&f).map(|id| (f, id, 0)))
                .transpose()?;
            if self.reading.is_none() {
                break;
            }
        }
        records.retain(|r| !matches!(r.event, Event::Rotated { .. }));
        Ok(records)
    }
}

/// The complete lines of `file` from `offset` on, parsed; `offset` moves
/// past them (a torn last line waits for its end).
fn read_lines(file: &mut File, offset: &mut u64, records: &mut Vec<Record>) -> io::Result<()> {
    file.seek(SeekFrom::Start(*offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    records.extend(super::parse_lines(&bytes[..complete]));
    *offset += complete as u64;
    Ok(())
}
