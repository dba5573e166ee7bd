//! Log lines that a peer can make vmkeep repeat (a guest flapping a port, a
//! reboot loop, a reconnecting guest agent), summarised: a flapping guest
//! costs a few lines an hour, not one per flap.
//!
//! Each kind of line has a key (`"forward tcp 127.0.0.1:30001"`, `"guest
//! rebooted"`, one per instance in the daemon). In a window that opens at
//! the first occurrence of its key, the first [`Repeats::PER_WINDOW`]
//! occurrences are logged and the others only counted; the first one logged
//! after the window carries the count ("... (and 397 like it in the last
//! 61 s, not logged)"). A window with lines left out makes the next one
//! twice as long, up to [`Repeats::LONGEST`]; a quiet window starts afresh.
//! So a port that flaps every half second for a day costs about 60 lines.
//! The count of the last window shows with the next such line, whenever
//! that is.
//!
//! Use [`allow`] (one process-wide set of windows) for any such line:
//!
//! ```ignore
//! if let Some(repeated) = repeats::allow(&format!("forward {forward}")) {
//!     tracing::info!("forwarding {forward}{repeated}");
//! }
//! ```
//!
//! [`link::untrusted::LogBudget`](super::untrusted::LogBudget) is the other
//! way: for floods of bad messages, logged ever more rarely for good.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines left out before one that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repeated {
    pub left_out: u64,
    /// Over how long (the window they fell in, up to this line).
    pub over: Duration,
}

impl fmt::Display for Repeated {
    /// Nothing when none were left out; else ` (and N like it in the last
    /// S s, not logged)`, to end a log line with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.left_out == 0 {
            return Ok(());
        }
        write!(
            f,
            " (and {} like it in the last {} s, not logged)",
            self.left_out,
            self.over.as_secs().max(1)
        )
    }
}

#[derive(Debug, Clone)]
struct Window {
    opened: Instant,
    length: Duration,
    logged: u32,
    left_out: u64,
}

/// The windows of every key seen.
#[derive(Debug)]
pub struct Repeats {
    windows: HashMap<String, Window>,
    first_window: Duration,
}

impl Default for Repeats {
    fn default() -> Self {
        Repeats::new(Repeats::FIRST_WINDOW)
    }
}

impl Repeats {
    /// How many occurrences of a key a window logs.
    pub const PER_WINDOW: u32 = 3;
    /// A key's first window.
    pub const FIRST_WINDOW: Duration = Duration::from_secs(60);
    /// The longest a window grows.
    pub const LONGEST: Duration = Duration::from_secs(3600);
    /// Keys kept at most; past that, new keys share one window.
    pub const MAX_KEYS: usize = 512;
    /// The key that new keys share past [`Repeats::MAX_KEYS`].
    pub const OVERFLOW: &'static str = "(other repeated lines)";

    pub fn new(first_window: Duration) -> Repeats {
        Repeats {
            windows: HashMap::new(),
            first_window,
        }
    }

    /// Count one occurrence of `key` at `now`: `Some` (with what was left
    /// out before it) when it is to be logged.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<Repeated> {
        if !self.windows.contains_key(key) && self.windows.len() >= Self::MAX_KEYS {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.opened) < w.length);
        }
        let key = if self.windows.contains_key(key) || self.windows.len() < Self::MAX_KEYS {
            key
        } else {
            Self::OVERFLOW
        };
        let first_window = self.first_window;
        let window = self.windows.entry(key.to_owned()).or_insert(Window {
            opened: now,
            length: first_window,
            logged: 0,
            left_out: 0,
        });
        let age = now.saturating_duration_since(window.opened);
        let mut repeated = Repeated::default();
        if age >= window.length {
            repeated = Repeated {
                left_out: window.left_out,
                over: age,
            };
            let length = if window.left_out > 0 {
                (window.length * 2).min(Self::LONGEST)
            } else {
                first_window
            };
            *window = Window {
                opened: now,
                length,
                logged: 0,
                left_out: 0,
            };
        }
        if window.logged < Self::PER_WINDOW {
            window.logged += 1;
            Some(repeated)
        } else {
            window.left_out += 1;
            None
        }
    }
}

static REPEATS: Mutex<Option<Repeats>> = Mutex::new(None);

/// [`Repeats::allow`] of this process's one set of windows, now.
pub fn allow(key: &str) -> Option<Repeated> {
    let mut repeats = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
    repeats
        .get_or_insert_with(Repeats::default)
        .allow(key, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_logs_a_few_and_the_next_line_says_how_many_were_left_out() {
        let start = Instant::now();
        let mut repeats = Repeats::default();
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut logged = Vec::new();
        // A port opened and closed every half second for 61 s.
        for n in 0..122 {
            if let Some(repeated) = repeats.allow("forward 30001", at(n as f64 * 0.5)) {
                logged.push((n, repeated));
            }
        }
        assert_eq!(
            logged
                .iter()
                .map(|(n, r)| (*n, r.left_out))
                .collect::<Vec<_>>(),
            [(0, 0), (1, 0), (2, 0), (120, 117), (121, 0)]
        );
        assert_eq!(
            logged[3].1.to_string(),
            " (and 117 like it in the last 60 s, not logged)"
        );
        assert_eq!(logged[0].1.to_string(), "");
        // Another key has windows of its own.
        assert_eq!(
            repeats.allow("guest rebooted", at(1.0)),
            Some(Repeated::default())
        );
    }

    #[test]
    fn a_day_of_flapping_costs_a_few_dozen_lines_and_a_quiet_window_starts_afresh() {
        let start = Instant::now();
        let mut repeats = Repeats::default();
        let day = 24 * 3600 * 2;
        let mut lines = 0;
        let mut left_out = 0;
        for n in 0..day {
            if let Some(repeated) = repeats.allow("k", start + Duration::from_millis(n * 500)) {
                lines += 1;
                left_out += repeated.left_out;
            }
        }
        assert!(lines < 100, "{lines} lines");
        // Every occurrence is logged or counted in a later line, but for the
        // last window's.
        let last_window = day - lines - left_out;
        assert!(last_window < 3600 * 2, "{last_window}");
        // After a quiet hour, the window is a minute again.
        let later = start + Duration::from_secs(24 * 3600 + 2 * 3600);
        assert!(repeats.allow("k", later).unwrap().left_out > 0);
        for n in 1..3 {
            assert!(repeats.allow("k", later + Duration::from_secs(n)).is_some());
        }
        assert!(repeats.allow("k", later + Duration::from_secs(3)).is_none());
        let quiet = later + Duration::from_secs(3 * 3600);
        assert_eq!(repeats.allow("k", quiet).unwrap().left_out, 1);
        let again = quiet + Duration::from_secs(3 * 3600);
        assert_eq!(repeats.allow("k", again).unwrap().left_out, 0);
        assert_eq!(
            repeats.windows["k"].length,
            Repeats::FIRST_WINDOW,
            "a window without lines left out starts afresh"
        );
    }

    #[test]
    fn keys_are_bounded_and_new_ones_share_a_window_past_the_bound() {
        let start = Instant::now();
        let mut repeats = Repeats::default();
        for port in 0..10_000 {
            repeats.allow(&format!("forward {port}"), start);
        }
        assert!(repeats.windows.len() <= Repeats::MAX_KEYS + 1);
        assert!(repeats.windows[Repeats::OVERFLOW].left_out > 0);
        // Once their windows are over, keys make room again.
        let later = start + Repeats::LONGEST;
        assert!(repeats.allow("forward fresh", later).is_some());
        assert!(repeats.windows.contains_key("forward fresh"));
    }
}
