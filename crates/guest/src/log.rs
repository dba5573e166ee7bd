//! Console logging: every line starts with `vmkeep-guest: `.
//!
//! In init mode standard error is the kernel's console (ttyS0). A failed write
//! is ignored: PID 1 must not die because the console is gone.

use std::io::Write;

/// Write one log line to standard error, ignoring failures.
pub fn write(args: std::fmt::Arguments) {
    let line = format!("vmkeep-guest: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Write a line exactly as given (used for the ready marker).
pub fn raw(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}
pub(crate) use log;
