//! Append-only logs kept under a size cap, for files that other processes
//! append to (QEMU's serial console and its stderr, virtiofsd's stderr, a
//! service manager's `StandardOutput=append:`, a spawner's redirect).
//!
//! Every such writer opened the file with `O_APPEND`, so it cannot be moved
//! aside under them (a rename would leave each writer on the old file). The
//! cut is copy-then-truncate instead: once the log holds more than
//! [`Bound::max_bytes`], its newest [`Bound::keep_bytes`] go to `FILE.1`
//! (replacing what was there, atomically) and `FILE` is cut to zero, where
//! every `O_APPEND` writer carries on, with no hole. Both files together hold
//! at most `max_bytes + keep_bytes`, plus what is written between two checks.
//!
//! What another process appends between the last read and the cut is lost:
//! the file is read once more right before cutting, so the window is a few
//! microseconds, once per cut. A process cutting its own log holds its own
//! writes meanwhile (`crate::logging::hold_writes`), so none of its lines is
//! lost. Killed at any point, a cut leaves `FILE` whole (not yet cut, its
//! tail maybe also in `FILE.1`) or cut (the tail in `FILE.1`): always
//! readable, never more than the bound plus one copy of the kept part.

use std::io;
use std::path::{Path, PathBuf};

use super::fs;

/// How large a log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The log is cut once it holds more than this.
    pub max_bytes: u64,
    /// How much of its newest output a cut keeps, in `FILE.1`.
    pub keep_bytes: u64,
}

/// The smallest cap an environment variable may set.
pub const MIN_BYTES: u64 = 4096;

impl Bound {
    /// A bound of `max_bytes`, keeping a quarter of it at a cut.
    pub const fn with_max(max_bytes: u64) -> Bound {
        Bound {
            max_bytes,
            keep_bytes: max_bytes / 4,
        }
    }

    /// Most bytes the log and its kept part hold together, between checks.
    pub const fn held_at_most(&self) -> u64 {
        self.max_bytes + self.keep_bytes
    }
}

/// The number of bytes the environment variable `var` sets (at least
/// [`MIN_BYTES`]), or `default`; a bad value is ignored, with a warning.
pub fn max_from_env(var: &str, default: u64) -> u64 {
    let Some(text) = std::env::var_os(var) else {
        return default;
    };
    match text.to_str().and_then(|t| t.trim().parse::<u64>().ok()) {
        Some(max) if max >= MIN_BYTES => max,
        _ => {
            tracing::warn!(
                "ignoring {var}={text:?}: write a number of bytes, at least {MIN_BYTES}; \
                 using {default}"
            );
            default
        }
    }
}

/// A log and where a cut keeps its newest output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedFile {
    pub log: PathBuf,
    pub previous: PathBuf,
}

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The log is within its bound (or does not exist yet).
    Within { bytes: u64 },
    /// The log was cut; it held `bytes`.
    Cut { bytes: u64 },
}

impl CappedFile {
    /// `log`, its cuts kept in `log` with `.1` appended.
    pub fn at(log: PathBuf) -> CappedFile {
        CappedFile {
            previous: previous_of(&log),
            log,
        }
    }

    /// Cut the log if it is over `bound`.
    pub fn check(&self, bound: Bound) -> io::Result<Checked> {
        let bytes = match std::fs::metadata(&self.log) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Checked::Within { bytes: 0 });
            }
            Err(e) => return Err(e),
        };
        if bytes <= bound.max_bytes {
            return Ok(Checked::Within { bytes });
        }
        // The newest output, up to the end as it is now.
        let (newest, end) = fs::read_tail_from(&self.log, 0, bound.keep_bytes)?;
        fs::write_atomic(&self.previous, &newest, 0o600)?;
        // What was appended meanwhile, read again just before the cut.
        let (late, _) = fs::read_tail_from(&self.log, end, u64::MAX)?;
        fs::truncate(&self.log)?;
        if !late.is_empty() {
            fs::append(&self.previous, &late)?;
        }
        Ok(Checked::Cut { bytes })
    }

    /// The newest `max_bytes` of the log (across a cut), as text for an error
    /// message. Empty if there is none.
    pub fn tail(&self, max_bytes: u64) -> String {
        let read = |path: &Path, max| {
            fs::read_tail_from(path, 0, max)
                .map(|(bytes, _)| bytes)
                .unwrap_or_default()
        };
        let mut bytes = read(&self.log, max_bytes);
        let missing = max_bytes.saturating_sub(bytes.len() as u64);
        if missing > 0 {
            let mut older = read(&self.previous, missing);
            older.append(&mut bytes);
            bytes = older;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `FILE.1` for `FILE`: where the older part of a bounded file goes.
pub fn previous_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SMALL: Bound = Bound {
        max_bytes: 4096,
        keep_bytes: 1024,
    };

    fn in_dir(dir: &tempfile::TempDir) -> CappedFile {
        CappedFile::at(dir.path().join("serial.log"))
    }

    /// Numbered lines, so that what was kept and lost can be told.
    fn lines(from: usize, to: usize) -> String {
        (from..to).map(|n| format!("line {n:06}\n")).collect()
    }

    #[test]
    fn a_log_over_its_bound_keeps_its_newest_output_and_the_writer_carries_on_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        assert_eq!(log.previous, dir.path().join("serial.log.1"));
        assert_eq!(log.check(SMALL).unwrap(), Checked::Within { bytes: 0 });
        // QEMU's way of writing: one descriptor, opened to append, kept open.
        let mut qemu = fs::open_append(&log.log).unwrap();
        qemu.write_all(lines(0, 300).as_bytes()).unwrap(); // 12 bytes a line: 3600
        assert_eq!(log.check(SMALL).unwrap(), Checked::Within { bytes: 3600 });
        qemu.write_all(lines(300, 600).as_bytes()).unwrap();
        assert_eq!(log.check(SMALL).unwrap(), Checked::Cut { bytes: 7200 });

        let previous = std::fs::read_to_string(&log.previous).unwrap();
        assert_eq!(previous.len(), 1024);
        assert!(previous.ends_with(&lines(599, 600)));
        assert_eq!(std::fs::metadata(&log.log).unwrap().len(), 0);

        // The writer appends at the new end: no hole of zeros before it.
        qemu.write_all(lines(600, 601).as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(&log.log).unwrap(), lines(600, 601));
        assert_eq!(log.tail(24), lines(599, 601));
    }

    #[test]
    fn a_flood_never_holds_more_than_the_bound_plus_what_came_between_checks() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        let mut qemu = fs::open_append(&log.log).unwrap();
        let burst = lines(0, 1000); // 12 000 bytes between two checks
        let mut written = 0;
        for _ in 0..100 {
            qemu.write_all(burst.as_bytes()).unwrap();
            written += burst.len() as u64;
            log.check(SMALL).unwrap();
            let held = std::fs::metadata(&log.log).unwrap().len()
                + std::fs::metadata(&log.previous).map_or(0, |m| m.len());
            assert!(held <= SMALL.held_at_most(), "{held}");
        }
        assert_eq!(written, 1_200_000);
        // The newest output is still readable.
        assert!(log.tail(100).ends_with(&lines(999, 1000)));
    }

    #[test]
    fn the_tail_reads_across_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        assert_eq!(log.tail(100), "");
        std::fs::write(&log.previous, lines(0, 10)).unwrap();
        std::fs::write(&log.log, lines(10, 12)).unwrap();
        assert_eq!(log.tail(36), lines(9, 12));
        assert_eq!(log.tail(12), lines(11, 12));
    }

    #[test]
    fn caps_from_the_environment_are_bytes_and_not_too_small() {
        // A variable no other test sets.
        let var = "VMKEEP_TEST_CAPPED_MAX";
        assert_eq!(max_from_env(var, 10_000), 10_000);
        // SAFETY: only this test reads or writes this variable.
        unsafe { std::env::set_var(var, "8192") };
        assert_eq!(max_from_env(var, 10_000), 8192);
        unsafe { std::env::set_var(var, "100") };
        assert_eq!(max_from_env(var, 10_000), 10_000);
        unsafe { std::env::set_var(var, "1M") };
        assert_eq!(max_from_env(var, 10_000), 10_000);
        unsafe { std::env::remove_var(var) };
    }
}
