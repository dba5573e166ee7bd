//! The checks behind the protocol's fuzz targets (`fuzz/`, built with
//! cargo-fuzz, which sets `cfg(fuzzing)`), and their replay in the tests.
//!
//! - [`archive`]: the archive decoder on any bytes, however they arrive:
//!   the same verdict for any split, never an empty `Data`, a file's data
//!   exactly its size, special bits never in `mode`, paths that re-validate,
//!   and what it accepts encodes again into an archive that decodes the same;
//! - [`session_lines`]: session lines both ways: whatever the host decodes
//!   from the guest round-trips, and [`SessionState`] never lets output beyond
//!   the credit through nor changes on an event it refuses; whatever the guest
//!   decodes from the host round-trips.

use std::collections::HashMap;

use crate::archive::{ArchivePath, Decoder, Encoder, Entry, EntryKind, Event, Problem, Summary};
use crate::session::{
    INITIAL_OUTPUT_CREDIT, OpenSession, OutputCredit, PtyRequest, SessionEvent, SessionState,
};
use crate::{FromGuest, HostMessage, decode_host_line, decode_line, encode_line};

/// One check: arbitrary bytes in, a panic on a failure.
pub type Check = fn(&[u8]);

/// The fuzz targets of this crate, by name (`fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [(&str, Check); 2] = [("archive", archive), ("session_lines", session_lines)];

/// A decoded event, owned; consecutive data joined.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Entry(Entry),
    Data(Vec<u8>),
    FileEnd,
    Error(Problem),
    End(Summary),
}

/// Decode `bytes` in pieces of `chunk`: the events, or the error's kind.
fn decode(bytes: &[u8], chunk: usize) -> Result<Vec<Owned>, crate::archive::DecodeErrorKind> {
    let mut decoder = Decoder::new();
    let mut events: Vec<Owned> = Vec::new();
    let feed = |decoder: &mut Decoder, mut input: &[u8], events: &mut Vec<Owned>| loop {
        let (used, event) = decoder.decode(input).map_err(|e| e.kind)?;
        assert!(used <= input.len());
        input = &input[used..];
        let Some(event) = event else {
            assert!(input.is_empty(), "None before the input was taken");
            return Ok::<(), crate::archive::DecodeErrorKind>(());
        };
        match event {
            Event::Data(data) => {
                assert!(!data.is_empty(), "an empty Data event");
                match events.last_mut() {
                    Some(Owned::Data(joined)) => joined.extend_from_slice(data),
                    _ => events.push(Owned::Data(data.to_vec())),
                }
            }
            Event::Entry(entry) => events.push(Owned::Entry(entry)),
            Event::FileEnd => events.push(Owned::FileEnd),
            Event::Error(problem) => events.push(Owned::Error(problem)),
            Event::End(summary) => events.push(Owned::End(summary)),
        }
    };
    for piece in bytes.chunks(chunk.max(1)) {
        feed(&mut decoder, piece, &mut events)?;
    }
    feed(&mut decoder, &[], &mut events)?;
    decoder.finish().map_err(|e| e.kind)?;
    Ok(events)
}

/// Byte 0: how the rest is split; the rest: an archive stream.
pub fn archive(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(stream, stream.len());
    let pieces = decode(stream, usize::from(split % 17) + 1);
    assert_eq!(whole, pieces, "the verdict depends on how the bytes arrive");
    let Ok(events) = whole else {
        return;
    };
    // What was accepted keeps the rules, and encodes again.
    let mut encoder = Encoder::new(Vec::new()).expect("a Vec takes the magic");
    let mut owed: Option<u64> = None;
    for event in &events {
        match event {
            Owned::Entry(entry) => {
                assert_eq!(owed, None, "an entry inside a file");
                assert_eq!(
                    ArchivePath::new(entry.path.as_bytes()).as_ref(),
                    Ok(&entry.path)
                );
                assert_eq!(entry.mode & !0o777, 0, "special bits in the mode");
                assert_eq!(entry.special_bits & !0o7000, 0);
                assert_eq!(entry.target.is_some(), entry.kind == EntryKind::Symlink);
                if entry.kind == EntryKind::File {
                    owed = Some(entry.size);
                } else {
                    assert_eq!(entry.size, 0);
                }
                encoder.entry(entry).expect("an accepted entry encodes");
            }
            Owned::Data(bytes) => {
                let left = owed.expect("data outside a file");
                assert!(bytes.len() as u64 <= left, "more data than the size");
                owed = Some(left - bytes.len() as u64);
                encoder.data(bytes).expect("accepted data encodes");
            }
            Owned::FileEnd => {
                assert_eq!(owed, Some(0), "a file's end before its size");
                owed = None;
            }
            Owned::Error(problem) => {
                encoder
                    .error(problem.path.as_ref(), &problem.message)
                    .expect("an accepted error encodes");
            }
            Owned::End(summary) => {
                assert_eq!(*summary, encoder.counts(), "the end counts what came");
            }
        }
    }
    let (again, _) = encoder.finish().expect("a complete archive finishes");
    assert_eq!(
        decode(&again, 4096),
        Ok(events),
        "does not decode the same again"
    );
}

/// The id's session opens a pty when the id is odd.
fn state_for(id: u64) -> SessionState {
    let pty = (id % 2 == 1).then_some(PtyRequest {
        rows: 24,
        cols: 80,
        term: None,
    });
    SessionState::new(&OpenSession {
        pty,
        ..OpenSession::default()
    })
}

/// Lines of a connection, as each side decodes them.
pub fn session_lines(data: &[u8]) {
    // Per session: its state and the output accepted and granted so far.
    let mut sessions: HashMap<u64, (SessionState, [u64; 2], [u64; 2])> = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(message) = decode_line::<FromGuest>(line) {
            let again = decode_line::<FromGuest>(&encode_line(&message));
            assert_eq!(again.as_ref().ok(), Some(&message), "does not round-trip");
            if let FromGuest::Session { id, event } = message {
                if sessions.len() >= 64 && !sessions.contains_key(&id) {
                    continue;
                }
                let (state, accepted, granted) = sessions
                    .entry(id)
                    .or_insert_with(|| (state_for(id), [0; 2], [INITIAL_OUTPUT_CREDIT; 2]));
                let before = state.clone();
                match state.accept(&event) {
                    Ok(()) => {
                        if let SessionEvent::Output(output) = &event {
                            let i = output.stream.index();
                            accepted[i] += output.data.len() as u64;
                            assert!(accepted[i] <= granted[i], "output beyond the credit");
                        }
                    }
                    Err(violation) => {
                        assert_eq!(*state, before, "a refused event changed the state");
                        assert!(violation.0.len() < 200, "{violation}");
                    }
                }
                // The host consumes: grant back what came on stdout.
                if state.output_credit(crate::session::Stream::Stdout) < 1024 {
                    state.grant(OutputCredit {
                        stdout: 4096,
                        stderr: 0,
                    });
                    granted[0] += 4096;
                }
            }
        }
        match decode_host_line(line) {
            Ok(HostMessage::Session(frame)) => {
                let again = decode_host_line(&encode_line(&frame));
                assert!(
                    matches!(&again, Ok(HostMessage::Session(back)) if *back == frame),
                    "{frame:?} does not round-trip: {again:?}"
                );
            }
            Ok(HostMessage::Request(request)) => {
                let again = decode_host_line(&encode_line(&request));
                assert!(
                    matches!(&again, Ok(HostMessage::Request(back)) if *back == request),
                    "{request:?} does not round-trip"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        seeds.sort();
        seeds
    }

    /// xorshift64*: the same mutations on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const INTERESTING: [&[u8]; 10] = [
        b"\n",
        b"\"",
        b"{",
        b"}",
        b"E",
        b"Z",
        b"/",
        b"..",
        b"\xff\xff",
        b"\x00",
    ];

    fn mutate(rng: &mut Rng, input: &[u8], others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 if !out.is_empty() => {
                    let i = rng.below(out.len());
                    out[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let piece = INTERESTING[rng.below(INTERESTING.len())];
                    out.splice(at..at, piece.iter().copied());
                }
                2 => out.truncate(at),
                3 if !out.is_empty() => {
                    let end = (at + rng.below(16)).min(out.len());
                    out.drain(at..end);
                }
                _ => {
                    let (_, other) = &others[rng.below(others.len())];
                    let from = rng.below(other.len() + 1);
                    out.splice(at..at, other[from..].iter().copied());
                }
            }
        }
        out
    }

    #[test]
    fn every_target_has_seeds_and_they_pass() {
        for (target, check) in TARGETS {
            let seeds = seeds(target);
            assert!(!seeds.is_empty(), "no seeds for {target}");
            for (path, bytes) in &seeds {
                eprintln!("{target}: {}", path.display());
                check(bytes);
            }
        }
    }

    #[test]
    fn the_tree_seed_is_a_valid_archive() {
        let (_, tree) = seeds("archive")
            .into_iter()
            .find(|(path, _)| path.ends_with("tree"))
            .unwrap();
        let events = decode(&tree[1..], 4096).unwrap();
        assert_eq!(events.len(), 16, "{events:?}");
    }

    #[test]
    fn mutations_of_the_seeds_pass() {
        for (target, check) in TARGETS {
            let seeds = seeds(target);
            let mut rng = Rng(0x766d_6b65_6570 ^ target.len() as u64);
            for _ in 0..3000 {
                let (_, base) = &seeds[rng.below(seeds.len())];
                check(&mutate(&mut rng, base, &seeds));
            }
        }
    }
}
