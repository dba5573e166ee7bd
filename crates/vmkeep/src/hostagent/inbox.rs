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
    /// SIGTERM, SIGINT, SIGHUP; none for an agent run inside another
    /// process, whose signals are that process's.
    signals: Option<[Signal; 3]>,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Inbox {
    /// Install the signal handlers (from now on these signals no longer kill
    /// the process) and take the API's command stream.
    pub fn new(
        commands: mpsc::UnboundedReceiver<Command>,
        signals: bool,
    ) -> std::io::Result<Inbox> {
        let signals = if signals {
            Some([
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ])
        } else {
            None
        };
        Ok(Inbox { signals, commands })
    }

    pub async fn next(&mut self) -> Incoming {
        let Some([term, int, hup]) = &mut self.signals else {
            return match self.commands.recv().await {
                Some(command) => Incoming::Command(command),
                None => std::future::pending().await,
            };
        };
        loop {
            tokio::select! {
                Some(()) = term.recv() => return Incoming::Signal("SIGTERM"),
                Some(()) = int.recv() => return Incoming::Signal("SIGINT"),
                Some(()) = hup.recv() => return Incoming::Signal("SIGHUP"),
                Some(command) = self.commands.recv() => return Incoming::Command(command),
                else => std::future::pending::<()>().await,
            }
        }
    }
}
