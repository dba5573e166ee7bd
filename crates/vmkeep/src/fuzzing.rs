//! The checks behind the fuzz targets (`fuzz/`, built with cargo-fuzz,
//! which sets `cfg(fuzzing)`), and their deterministic replay in the test
//! suite.
//!
//! Each function takes arbitrary bytes, feeds them to one host-side parser
//! of bytes that a guest (or a user) controls, and panics if the parser
//! panics or breaks a property the host relies on:
//!
//! - [`line_splitter`]: however the bytes arrive, lines come out as a model
//!   splits them, and no line over the limit is ever held;
//! - [`guest_lines`]: the guest link's decoding of a connection's lines;
//!   whatever it accepts passes [`check_guest_info`], round-trips, and what
//!   it rejects is described in a short, printable message;
//! - [`guest_sessions`]: a guest's session events, delivered to the host's
//!   session table: each session holds no more output than it granted and
//!   at most a bounded number of refusals, escaped; an ended one leaves the
//!   table;
//! - [`qmp_lines`]: QMP decoding; every event keeps QEMU's name, shows as a
//!   short printable line, and `query-status` replies parse or fail cleanly;
//! - [`journal`]: every record read from a journal writes back as itself;
//! - [`config`]: `Config::parse`, the public entry point, on any text.
//!
//! The replay (in `tests` below) runs every committed input under
//! `fuzz/seeds/TARGET/` (seeds, and each crash the fuzzer found, once fixed),
//! then a fixed number of mutations of them from a fixed seed: the same
//! inputs on every run.

use serde_json::Value;
use vmkeep_protocol::{FromGuest, Reply};

use crate::driver::qemu::qmp::{self, Message, QmpEvent};
use crate::driver::qemu::usernet;
use crate::instance::journal;
use crate::link::guest_link::{
    GuestEvent, Readiness, check_exposed, check_guest_info, check_listening,
};
use crate::link::line_rpc::model::{model_lines, split_lines};
use crate::link::line_rpc::{Incoming, MalformedLine};
use crate::link::untrusted;

/// One check: arbitrary bytes in, a panic on a failure.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [(&str, Check); 6] = [
    ("line_splitter", line_splitter),
    ("guest_lines", guest_lines),
    ("guest_sessions", guest_sessions),
    ("qmp_lines", qmp_lines),
    ("journal", journal),
    ("config", config),
];

/// Byte 0: the line limit; bytes 1-3: chunk sizes; the rest: the stream.
pub fn line_splitter(data: &[u8]) {
    let Some((&max, rest)) = data.split_first() else {
        return;
    };
    let (chunks, input) = rest.split_at(rest.len().min(3));
    let chunks: Vec<usize> = chunks.iter().map(|c| usize::from(*c)).collect();
    let max = usize::from(max);
    assert_eq!(
        split_lines(input, &chunks, max),
        model_lines(input, max),
        "max {max}, chunks {chunks:?}"
    );
}

/// The lines of one guest-agent connection, through the host's decoder.
pub fn guest_lines(data: &[u8]) {
    let mut readiness = Readiness::default();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match readiness.classify(line) {
            Ok(Incoming::Response { id, payload }) => {
                match &payload {
                    Reply::Hello { info, .. } | Reply::Info(info) => {
                        assert_eq!(check_guest_info(info), Ok(()), "accepted unchecked info")
                    }
                    Reply::Ports(listening) => {
                        assert_eq!(
                            check_listening(listening),
                            Ok(()),
                            "accepted unchecked ports"
                        )
                    }
                    Reply::Exposed(exposed) => {
                        assert_eq!(check_exposed(exposed), Ok(()), "accepted unchecked relays")
                    }
                    _ => {}
                }
                let again = vmkeep_protocol::encode_line(&FromGuest::Reply {
                    id,
                    body: payload.clone(),
                });
                match vmkeep_protocol::decode_line::<FromGuest>(&again) {
                    Ok(FromGuest::Reply { id: id2, body }) => {
                        assert_eq!((id2, body), (id, payload), "a reply does not round-trip")
                    }
                    other => panic!("a reply re-encoded as {other:?}"),
                }
            }
            Ok(Incoming::Event(GuestEvent::Ready(info))) => {
                assert_eq!(
                    check_guest_info(&info),
                    Ok(()),
                    "accepted an unchecked ready"
                );
            }
            Ok(Incoming::Event(GuestEvent::Ports(listening))) => {
                assert_eq!(
                    check_listening(&listening),
                    Ok(()),
                    "accepted an unchecked port report"
                );
                // What the forwarding rules make of it is bounded too.
                let forwards =
                    crate::forwards::wanted(&crate::forwards::default_rules(&[], None), &listening);
                assert!(forwards.len() <= vmkeep_protocol::MAX_LISTENING);
            }
            Ok(Incoming::Event(GuestEvent::Session { .. })) => {}
            Ok(Incoming::PeerRestarted | Incoming::Ignore) => {}
            Err(malformed) => {
                assert_printable(&malformed.message, MalformedLine::MAX_MESSAGE_BYTES)
            }
        }
    }
}

/// A guest's session events through the host's session table (see
/// `link::guest_link::sessions::fuzz_deliveries`).
pub fn guest_sessions(data: &[u8]) {
    crate::link::guest_link::sessions::fuzz_deliveries(data);
}

/// QMP lines, through the client's decoder; each also as a `query-status`
/// reply.
pub fn qmp_lines(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match qmp::parse_line(line) {
            Ok(Message::Event { event, .. }) => {
                // The event keeps QEMU's name, whatever its data.
                let value: Value = serde_json::from_slice(line).expect("an event is JSON");
                assert_eq!(Some(event.event.name()), value["event"].as_str());
                if let QmpEvent::Unknown { name, .. } = &event.event {
                    assert_eq!(name, event.event.name());
                }
                assert_printable(&event.event.to_string(), 2000);
            }
            Ok(Message::Reply {
                outcome: Ok(value), ..
            }) => match qmp::parse_status(&value) {
                Ok(status) => assert_printable(&status.status.to_string(), 400),
                Err(message) => assert_printable(&message, 1000),
            },
            Ok(Message::Greeting(_) | Message::Reply { .. }) => {}
            Err(malformed) => {
                assert_printable(&malformed.message, MalformedLine::MAX_MESSAGE_BYTES)
            }
        }
        assert_printable(&untrusted::shown_bytes(line, 50), 100);
    }
    // The same bytes as `info usernet`'s text, whose connection table lists
    // what the guest opened: the forwards read back are printable, and a
    // table of just them reads back the same.
    let forwards = usernet::parse_info_usernet(&String::from_utf8_lossy(data));
    let mut table = String::new();
    for forward in &forwards {
        assert_printable(&usernet::rule_text(forward), 64);
        let proto = match forward.proto {
            crate::forwards::Transport::Tcp => "TCP",
            crate::forwards::Transport::Udp => "UDP",
        };
        table.push_str(&format!(
            "  {proto}[HOST_FORWARD] 3 {} {} 10.0.2.15 {} 0 0\r\n",
            forward.host_ip, forward.host_port, forward.guest_port
        ));
    }
    assert_eq!(usernet::parse_info_usernet(&table), forwards);
}

/// A journal's bytes, through its reader; the first byte says where a
/// rotation falls: what the readers conclude across it (with the records it
/// carried, `rotated` records in the input included) is what they conclude
/// from the whole history.
pub fn journal(data: &[u8]) {
    let records = journal::parse_lines(data);
    for record in &records {
        let line = serde_json::to_vec(record).expect("a record serializes");
        let back: journal::Record = serde_json::from_slice(&line).expect("a written record reads");
        // Debug text: a NaN figure is not equal to itself.
        assert_eq!(
            format!("{back:?}"),
            format!("{record:?}"),
            "a record does not round-trip"
        );
    }
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) * records.len() / 256);
    let history = journal::carry::expand(records);
    let (before, after) = history.split_at(cut.min(history.len()));
    let view = journal::carry::rotated_view(before, after);
    assert_eq!(
        journal::carry::conclusions(&view),
        journal::carry::conclusions(&history),
        "a rotation changed what the readers conclude"
    );
}

/// Config text, through `Config::parse` (the entry point of `create` and
/// of every command that loads an instance).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::instance::Config::parse(text);
    }
}

/// A message quoting a peer is short and has no control characters.
fn assert_printable(message: &str, max: usize) {
    // The cut may leave a few bytes over `max`, and then says how long it was.
    assert!(
        message.len() <= max + 40,
        "{} bytes: {message:.200}",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "control characters in {message:?}"
    );
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn seeds_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target)
    }

    fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = seeds_dir(target);
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

    /// A small deterministic generator (xorshift64*), so that the
    /// mutations are the same on every run.
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

    /// Bytes that make parsers take their other paths.
    const INTERESTING: [&[u8]; 12] = [
        b"\n",
        b"\r\n",
        b"\"",
        b"\\u0000",
        b"\\u001b",
        b"\xff",
        b"{",
        b"}",
        b"[",
        b"null",
        b"-1e999",
        b"\"id\":18446744073709551615",
    ];

    fn mutate(rng: &mut Rng, input: &[u8], others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(6) {
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
                4 => {
                    let (_, other) = &others[rng.below(others.len())];
                    let from = rng.below(other.len() + 1);
                    out.splice(at..at, other[from..].iter().copied());
                }
                _ => {
                    let repeated = out[at..].to_vec();
                    out.extend_from_slice(&repeated);
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
    fn mutations_of_the_seeds_pass() {
        const PER_TARGET: usize = 3000;
        for (target, check) in TARGETS {
            let seeds = seeds(target);
            let mut rng = Rng(0x766d_6b65_6570 ^ target.len() as u64);
            for _ in 0..PER_TARGET {
                let (_, base) = &seeds[rng.below(seeds.len())];
                let input = mutate(&mut rng, base, &seeds);
                check(&input);
            }
        }
    }

    #[test]
    fn the_model_splits_as_documented() {
        // What the splitter is compared against.
        assert_eq!(
            model_lines(b"a\r\nbb\nccc", 2),
            (vec![b"a".to_vec(), b"bb".to_vec()], true)
        );
        assert_eq!(
            model_lines(b"a\n\nb", 2),
            (vec![b"a".to_vec(), vec![]], false)
        );
        assert_eq!(
            split_lines(b"a\r\nbb\nccc", &[1], 2),
            model_lines(b"a\r\nbb\nccc", 2)
        );
    }
}
