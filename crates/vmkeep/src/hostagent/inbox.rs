//! Everything that can ask a host agent to act: termination signals and API
//! commands, merged into one stream.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::server::Command;

#[derive(Debug)]
pub enum Incoming {
    /// SIGTERM, SIGINT or SIGHUP (by name).
    Signal(&'static str),
    Command(Command),
}

pub struct Inbox {
    term: Signal,
    int: Signal,
    hup: Signal,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Inbox {
    /// Install the signal handlers (from now on these signals no longer kill
    /// the process) and take the API's command stream.
    pub fn new(commands: mpsc::UnboundedReceiver<Command>) -> std::io::Result<Inbox> {
        Ok(Inbox {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            commands,
        })
    }

    pub async fn next(&mut self) -> Incoming {
        loop {
            tokio::select! {
                Some(()) = self.term.recv() => return Incoming::Signal("SIGTERM"),
                Some(()) = self.int.recv() => return Incoming::Signal("SIGINT"),
                Some(()) = self.hup.recv() => return Incoming::Signal("SIGHUP"),
                Some(command) = self.commands.recv() => return Incoming::Command(command),
                else => std::future::pending::<()>().await,
            }
        }
    }
}
