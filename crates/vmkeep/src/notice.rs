//! How an operation tells whoever runs it what it is doing: the CLI shows
//! a spinner or lines, the daemon logs. Operations never print.

/// Hears an operation's steps and notes.
pub trait Notice {
    /// A step of work, or something worth saying ("adopting QEMU pid 42").
    fn step(&self, message: &str);
    /// Something the user should know although nothing failed.
    fn warn(&self, message: &str) {
        self.step(&format!("warning: {message}"));
    }
}

/// Hears nothing.
pub struct Silent;

impl Notice for Silent {
    fn step(&self, _: &str) {}
}

/// Sends everything to the log (`tracing`), for the daemon.
pub struct Logged<'a> {
    pub instance: &'a str,
}

impl Notice for Logged<'_> {
    fn step(&self, message: &str) {
        tracing::info!(instance = %self.instance, "{message}");
    }
    fn warn(&self, message: &str) {
        tracing::warn!(instance = %self.instance, "{message}");
    }
}
