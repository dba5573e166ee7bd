//! Text and floods from peers vmkeep does not trust.
//!
//! The guest is untrusted: its agent's messages, the names and strings in
//! them, and anything QEMU relays about the guest may be hostile. Two rules
//! follow for what such a peer can make vmkeep print or log:
//!
//! - [`shown`]: a peer's text that goes into an error message or a log line
//!   is cut to a small size and its control characters are escaped, so that
//!   it can neither flood a log nor drive the user's terminal (an ESC
//!   sequence in a "kernel version" must not retitle or clear it);
//! - [`LogBudget`]: a log line the peer can trigger once per message is
//!   written for the first few occurrences and then ever more rarely, with
//!   the count, so that a flood of bad messages grows `ha.log` by a few lines,
//!   not by the size of the flood.

use std::fmt::Write as _;

/// How many bytes of a peer's text go into a message by default.
pub const SHOWN_BYTES: usize = 200;

/// `text` as it may appear in an error message or a log line: control
/// characters escaped (`\n`, `\u{1b}`), cut to at most about `max` bytes (at
/// a character boundary), and a cut text ends with how long it was.
pub fn shown(text: &str, max: usize) -> String {
    shown_of(text, max, Some(text.len()), false)
}

/// [`shown`] for bytes that may not be UTF-8 (invalid sequences become
/// U+FFFD).
pub fn shown_bytes(bytes: &[u8], max: usize) -> String {
    // Only the start is shown: decode no more than that, whatever the length
    // (4 bytes more, so a character cut at the end still decodes).
    let head = &bytes[..bytes.len().min(max.saturating_add(4))];
    shown_of(
        &String::from_utf8_lossy(head),
        max,
        Some(bytes.len()),
        head.len() < bytes.len(),
    )
}

/// [`shown`] for a value as JSON, encoding no more of it than is shown.
pub fn shown_json<T: serde::Serialize + ?Sized>(value: &T, max: usize) -> String {
    /// Takes bytes until it has `max`, then fails the encoding.
    struct Capped {
        bytes: Vec<u8>,
        max: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.max - self.bytes.len();
            if room == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let n = buf.len().min(room);
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped {
        bytes: Vec::new(),
        // One byte more than shown tells whether there was more.
        max: max.saturating_add(1),
    };
    let complete = serde_json::to_writer(&mut capped, value).is_ok();
    shown_of(
        &String::from_utf8_lossy(&capped.bytes),
        max,
        None,
        !complete,
    )
}

/// `text` comes from something `total` bytes long (if known); `more` when
/// it is only the start of it.
fn shown_of(text: &str, max: usize, total: Option<usize>, more: bool) -> String {
    let cut = |out: &mut String| match total {
        Some(total) => {
            let _ = write!(out, "... ({total} bytes in all)");
        }
        None => out.push_str("..."),
    };
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for c in text.chars() {
        if out.len() >= max {
            cut(&mut out);
            return out;
        }
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if more {
        cut(&mut out);
    }
    out
}

/// Control characters, and the bidirectional overrides that can make a
/// terminal show text in another order than it is.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Decides which occurrences of a peer-triggered log line are written: the
/// first [`LogBudget::FIRST`], then the 16th, 32nd, 64th, ... (each written
/// line carries the count). A flood of `n` lines logs about
/// `FIRST + log2(n)` of them.
#[derive(Debug, Default, Clone)]
pub struct LogBudget {
    seen: u64,
}

impl LogBudget {
    /// How many occurrences are all logged before thinning starts.
    pub const FIRST: u64 = 10;

    /// Count one occurrence; `Some(count so far)` when it should be logged.
    pub fn tick(&mut self) -> Option<u64> {
        self.seen = self.seen.saturating_add(1);
        (self.seen <= Self::FIRST || self.seen.is_power_of_two()).then_some(self.seen)
    }

    /// Occurrences counted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_text_escapes_control_characters_and_is_cut() {
        assert_eq!(shown("6.1.0-cloud", 200), "6.1.0-cloud");
        assert_eq!(
            shown("a\x1b]0;owned\x07b\n", 200),
            "a\\u{1b}]0;owned\\u{7}b\\n"
        );
        assert_eq!(shown("abc\u{202e}fed", 200), "abc\\u{202e}fed");
        let long = "é".repeat(1000);
        let cut = shown(&long, 10);
        assert_eq!(cut, format!("{}... (2000 bytes in all)", "é".repeat(5)));
        // Escapes count toward the size too.
        let escapes = shown(&"\x01".repeat(1000), 20);
        assert!(escapes.len() < 60, "{escapes}");
    }

    #[test]
    fn shown_bytes_decodes_only_what_it_shows() {
        assert_eq!(shown_bytes(b"ok\xff", 200), "ok\u{fffd}");
        let big = vec![b'x'; 1 << 20];
        assert_eq!(shown_bytes(&big, 4), "xxxx... (1048576 bytes in all)");
    }

    #[test]
    fn shown_json_encodes_only_what_it_shows() {
        let value = serde_json::json!({"a": [1, 2], "b": "\u{1b}"});
        assert_eq!(shown_json(&value, 200), r#"{"a":[1,2],"b":"\u001b"}"#);
        let big = serde_json::json!({"blob": "x".repeat(1 << 20)});
        assert_eq!(shown_json(&big, 10), r#"{"blob":"x..."#);
    }

    #[test]
    fn a_flood_is_logged_logarithmically() {
        let mut budget = LogBudget::default();
        let logged: Vec<u64> = (0..1_000_000).filter_map(|_| budget.tick()).collect();
        assert_eq!(&logged[..10], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(
            &logged[10..],
            &[
                16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
                262144, 524288
            ]
        );
        assert_eq!(budget.seen(), 1_000_000);
    }
}
