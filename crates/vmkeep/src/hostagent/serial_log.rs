//! The guest's serial console log, `serial.log`, kept bounded.
//!
//! QEMU appends whatever the guest writes to its console to `serial.log`
//! (`-chardev file,append=on`), as fast as the guest writes it: a guest that
//! floods its console would fill the host's disk. So the host agent checks
//! the file every [`CHECK_EVERY`]; once it holds more than
//! [`Bound::max_bytes`], the newest [`Bound::keep_bytes`] of it go to
//! `serial.log.1` (replacing what was there) and `serial.log` is cut to zero,
//! which QEMU, appending, fills again from the start. Both files together
//! hold at most `max_bytes + keep_bytes`, plus what the guest writes between
//! two checks; the newest output is at the end of `serial.log`, and of
//! `serial.log.1` right after a cut: [`tail`] reads across both.
//!
//! Why copy-then-cut: QEMU keeps the file open, so renaming it would not
//! move QEMU to a new file (QMP's `chardev-change` could, but would make the
//! bound depend on QMP answering). The cost: what QEMU appends between the
//! last read and the cut is lost. The file is read once more right before
//! cutting, so that window is a few microseconds, once per cut, and a guest
//! that is not flooding its console almost never reaches a cut.
//!
//! Nothing enforces the bound while no host agent runs; the next one (after
//! adopting the QEMU) does at once. `VMKEEP_SERIAL_LOG_MAX` (bytes, in the
//! host agent's environment) sets another bound.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::link::untrusted::LogBudget;
use crate::os;

/// How often the host agent looks at the log's size.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How large the log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// `serial.log` is cut once it holds more than this.
    pub max_bytes: u64,
    /// How much of its newest output a cut keeps, in `serial.log.1`.
    pub keep_bytes: u64,
}

impl Bound {
    /// About ten boots of a chatty cloud image fit `serial.log`; a flood
    /// costs at most 5 MiB of disk plus a second of output.
    pub const DEFAULT: Bound = Bound::with_max(4 << 20);

    /// The environment variable that sets `max_bytes` (a number of bytes).
    pub const ENV: &'static str = "VMKEEP_SERIAL_LOG_MAX";

    /// A bound of `max_bytes`, keeping a quarter of it at a cut.
    pub const fn with_max(max_bytes: u64) -> Bound {
        Bound {
            max_bytes,
            keep_bytes: max_bytes / 4,
        }
    }

    /// [`Bound::ENV`] if set (at least 4 KiB), else [`Bound::DEFAULT`].
    pub fn from_env() -> Bound {
        let Some(text) = std::env::var_os(Self::ENV) else {
            return Bound::DEFAULT;
        };
        match text.to_str().and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(max) if max >= 4096 => Bound::with_max(max),
            _ => {
                tracing::warn!(
                    "ignoring {}={text:?}: write a number of bytes, at least 4096; \
                     the guest's console log is cut at {} bytes",
                    Self::ENV,
                    Bound::DEFAULT.max_bytes
                );
                Bound::DEFAULT
            }
        }
    }
}

/// The log and where a cut keeps its newest output.
#[derive(Debug, Clone)]
pub struct SerialLog {
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

impl SerialLog {
    /// The instance's `serial.log` and `serial.log.1`.
    pub fn of(dir: &crate::instance::InstanceDir) -> SerialLog {
        SerialLog {
            log: dir.serial_log(),
            previous: dir.serial_log_previous(),
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
        let (newest, end) = os::fs::read_tail_from(&self.log, 0, bound.keep_bytes)?;
        os::fs::write_atomic(&self.previous, &newest, 0o600)?;
        // What QEMU appended meanwhile, read again just before the cut.
        let (late, _) = os::fs::read_tail_from(&self.log, end, u64::MAX)?;
        os::fs::truncate(&self.log)?;
        if !late.is_empty() {
            os::fs::append(&self.previous, &late)?;
        }
        Ok(Checked::Cut { bytes })
    }
}

/// Check `log` every [`CHECK_EVERY`] for as long as the task runs (the host
/// agent's life).
pub async fn keep_bounded(log: SerialLog, bound: Bound) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cuts = LogBudget::default();
    let mut failures = LogBudget::default();
    loop {
        ticks.tick().await;
        match log.check(bound) {
            Ok(Checked::Within { .. }) => {}
            Ok(Checked::Cut { bytes }) => {
                if let Some(count) = cuts.tick() {
                    tracing::info!(
                        count,
                        "the guest's console log {} reached {bytes} bytes; its newest {} bytes \
                         are in {}, and it starts afresh",
                        log.log.display(),
                        bound.keep_bytes,
                        log.previous.display()
                    );
                }
            }
            Err(error) => {
                if let Some(count) = failures.tick() {
                    tracing::warn!(count, "cannot keep {} bounded: {error}", log.log.display());
                }
            }
        }
    }
}

/// The newest `max_bytes` of the guest's console output (across a cut), as
/// text for an error message. Empty if there is none.
pub fn tail(log: &SerialLog, max_bytes: u64) -> String {
    let read = |path: &Path, max| {
        os::fs::read_tail_from(path, 0, max)
            .map(|(bytes, _)| bytes)
            .unwrap_or_default()
    };
    let mut bytes = read(&log.log, max_bytes);
    let missing = max_bytes.saturating_sub(bytes.len() as u64);
    if missing > 0 {
        let mut older = read(&log.previous, missing);
        older.append(&mut bytes);
        bytes = older;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SMALL: Bound = Bound {
        max_bytes: 4096,
        keep_bytes: 1024,
    };

    fn in_dir(dir: &tempfile::TempDir) -> SerialLog {
        SerialLog {
            log: dir.path().join("serial.log"),
            previous: dir.path().join("serial.log.1"),
        }
    }

    /// Numbered lines, so that what was kept and lost can be told.
    fn lines(from: usize, to: usize) -> String {
        (from..to).map(|n| format!("line {n:06}\n")).collect()
    }

    #[test]
    fn a_log_over_its_bound_keeps_its_newest_output_and_the_writer_carries_on_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        assert_eq!(log.check(SMALL).unwrap(), Checked::Within { bytes: 0 });
        // QEMU's way of writing: one descriptor, opened to append, kept open.
        let mut qemu = os::fs::open_append(&log.log).unwrap();
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
        assert_eq!(tail(&log, 24), lines(599, 601));
    }

    #[test]
    fn a_flood_never_holds_more_than_the_bound_plus_what_came_between_checks() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        let mut qemu = os::fs::open_append(&log.log).unwrap();
        let burst = lines(0, 1000); // 12 000 bytes between two checks
        let mut written = 0;
        for _ in 0..100 {
            qemu.write_all(burst.as_bytes()).unwrap();
            written += burst.len() as u64;
            log.check(SMALL).unwrap();
            let held = std::fs::metadata(&log.log).unwrap().len()
                + std::fs::metadata(&log.previous).map_or(0, |m| m.len());
            assert!(held <= SMALL.max_bytes + SMALL.keep_bytes, "{held}");
        }
        assert_eq!(written, 1_200_000);
        // The newest output is still readable.
        assert!(tail(&log, 100).ends_with(&lines(999, 1000)));
    }

    #[test]
    fn the_tail_reads_across_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = in_dir(&dir);
        assert_eq!(tail(&log, 100), "");
        std::fs::write(&log.previous, lines(0, 10)).unwrap();
        std::fs::write(&log.log, lines(10, 12)).unwrap();
        assert_eq!(tail(&log, 36), lines(9, 12));
        assert_eq!(tail(&log, 12), lines(11, 12));
    }
}
