//! Log set-up shared by the `vmkeep` and `vmkeep-hostagent` binaries.
//!
//! Every line goes to stderr in one write, under a process-wide lock that
//! [`hold_writes`] takes: a long-running process whose stderr is its log
//! file (the host agent's `ha.log`, a unit's `autostart.log`, the daemon's
//! `daemon.log`) cuts that file while holding it, so that none of its own
//! lines falls between the cut's last read and its truncation
//! (`os::capped`).

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

static WRITES: Mutex<()> = Mutex::new(());

/// Hold this process's log writes until the guard is dropped. Log nothing
/// meanwhile (that would wait for the guard).
pub fn hold_writes() -> MutexGuard<'static, ()> {
    WRITES.lock().unwrap_or_else(|e| e.into_inner())
}

/// One log line, written to stderr whole when dropped, under the lock.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let _held = hold_writes();
        let _ = std::io::stderr().lock().write_all(&self.0);
    }
}

struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// Log to stderr, filtered by `VMKEEP_LOG` (`debug`, or per module such as
/// `vmkeep::daemon=debug,info`). Long-running processes (host agent, daemon)
/// log what they do, plainly, into their log files; commands only warnings,
/// coloured on a terminal.
pub fn init(long_running: bool) {
    let default_level = if long_running {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    let filter = match std::env::var("VMKEEP_LOG") {
        Ok(text) => text.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!(
                "warning: ignoring VMKEEP_LOG={text:?} ({e}); write a level such as `debug`, \
                 or `vmkeep::daemon=debug,info`"
            );
            Targets::new().with_default(default_level)
        }),
        Err(_) => Targets::new().with_default(default_level),
    };
    let format = tracing_subscriber::fmt::layer()
        .with_writer(Stderr)
        .with_ansi(!long_running && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
}
