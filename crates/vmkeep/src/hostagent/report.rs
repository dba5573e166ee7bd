//! How a starting host agent tells whoever started it how the start went.
//!
//! A detached agent writes [`Report`]s as JSON lines to its stdout, a pipe the
//! `vmkeep start` that spawned it reads; after the final report it points
//! stdout at /dev/null, so the reader sees end-of-file. An agent run in the
//! foreground prints the same reports as text on stderr. Either way, a
//! service manager that started the agent is notified too.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::api::AgentInfo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "kebab-case")]
pub enum Report {
    /// A step of the start, for the user to watch.
    Progress { message: String },
    /// Something the user should know although the start goes on (an
    /// unsupported QEMU).
    Warning { message: String },
    /// The guest is ready. Final. (Boxed: far larger than the others.)
    Ready { info: Box<AgentInfo> },
    /// The start failed; the agent exits. Final.
    Failed { error: String },
    /// Another host agent holds the instance. Final.
    AlreadyRunning { agent_pid: Option<u32> },
}

impl Report {
    pub fn is_final(&self) -> bool {
        !matches!(self, Report::Progress { .. } | Report::Warning { .. })
    }
}

/// A service manager that started the agent (systemd `Type=notify`) hears
/// the same story: each step as its status line, and readiness only once
/// the guest is ready, so `systemctl start` returns when the VM is usable.
fn tell_the_service_manager(report: &Report) {
    use crate::os::service_notify;
    match report {
        Report::Progress { message } => service_notify::status(message),
        Report::Warning { message } => service_notify::status(&format!("warning: {message}")),
        Report::Ready { info } => service_notify::ready(&format!(
            "running (QEMU pid {})",
            info.qemu_pid.map(|p| p.to_string()).unwrap_or_default()
        )),
        Report::Failed { error } => service_notify::status(&format!("failed: {error}")),
        // Another agent runs the VM: nothing to supervise, a clean exit.
        Report::AlreadyRunning { agent_pid } => service_notify::ready(&format!(
            "run by host agent pid {}; nothing to supervise",
            agent_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        )),
    }
}

/// Where reports go.
pub enum Reporter<'n> {
    /// JSON lines on stdout (a pipe to the spawning CLI).
    Pipe { done: bool },
    /// Text on stderr.
    Terminal,
    /// An agent run inside another vmkeep process (to adopt and stop an
    /// orphaned QEMU): steps go to that process's notice; no service
    /// manager is told anything (the process is not the one it started).
    InProcess(&'n dyn crate::notice::Notice),
}

impl Reporter<'_> {
    pub fn send(&mut self, report: Report) {
        if let Reporter::InProcess(notice) = self {
            match report {
                Report::Progress { message } => notice.step(&message),
                Report::Warning { message } => notice.warn(&message),
                Report::Failed { error } => notice.warn(&error),
                Report::Ready { .. } | Report::AlreadyRunning { .. } => {}
            }
            return;
        }
        tell_the_service_manager(&report);
        match self {
            Reporter::InProcess(_) => {}
            Reporter::Pipe { done } => {
                if *done {
                    return;
                }
                let mut line = serde_json::to_vec(&report).unwrap_or_default();
                line.push(b'\n');
                let mut stdout = std::io::stdout().lock();
                // The reader may be gone (killed CLI): nothing to do then.
                let _ = stdout.write_all(&line).and_then(|_| stdout.flush());
                if report.is_final() {
                    *done = true;
                    let _ = crate::os::process::silence_stdout();
                }
            }
            Reporter::Terminal => match report {
                Report::Progress { message } => eprintln!("{message}"),
                Report::Warning { message } => eprintln!("warning: {message}"),
                Report::Ready { info } => eprintln!(
                    "{} is running (host agent pid {}, QEMU pid {})",
                    info.name,
                    info.agent_pid,
                    info.qemu_pid.map(|p| p.to_string()).unwrap_or_default()
                ),
                Report::Failed { error } => eprintln!("error: {error}"),
                Report::AlreadyRunning { agent_pid } => eprintln!(
                    "the instance is already run by host agent pid {}",
                    agent_pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            },
        }
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.send(Report::Warning {
            message: message.into(),
        });
    }

    pub fn progress(&mut self, message: impl Into<String>) {
        self.send(Report::Progress {
            message: message.into(),
        });
    }
}
