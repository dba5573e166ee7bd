//! Progress on the terminal: a spinner when stderr is a terminal, plain lines
//! otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    pub fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl crate::notice::Notice for Progress {
    fn step(&self, message: &str) {
        Progress::step(self, message);
    }

    fn warn(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }
}

/// Plain lines on stderr, each naming its instance: for several verbs run
/// at once, whose spinners would fight over one line.
pub struct Lines<'a> {
    pub name: &'a str,
}

impl crate::notice::Notice for Lines<'_> {
    fn step(&self, message: &str) {
        eprintln!("{}: {message}", self.name);
    }

    fn warn(&self, message: &str) {
        eprintln!("{}: warning: {message}", self.name);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Download progress: a bar with bytes, rate and ETA on a terminal; on
/// anything else one line when a fetch begins and one when it ends.
pub struct DownloadProgress {
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl DownloadProgress {
    pub fn new() -> DownloadProgress {
        DownloadProgress {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }
}

impl crate::image::download::Progress for DownloadProgress {
    fn begin(&mut self, what: &str, total: Option<u64>, resumed_at: u64) {
        let resumed = if resumed_at > 0 {
            format!(", resuming at {}", indicatif::HumanBytes(resumed_at))
        } else {
            String::new()
        };
        if !self.terminal {
            let size = total
                .map(|t| format!(" ({})", indicatif::HumanBytes(t)))
                .unwrap_or_default();
            eprintln!("fetching {what}{size}{resumed}");
            return;
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg}\n{wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("fetching {what}{resumed}"));
        bar.set_position(resumed_at);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn advance(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn end(&mut self, message: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.terminal {
            eprintln!("{message}");
        }
    }
}
