//! The host agent's unix socket forwards (`instance::socket_forwards`
//! resolves them): for as long as the agent runs, a socket on the host
//! (0600, made by `os::socket::bind_owner_only`, so that only the user who
//! runs the VM can connect), each connection to it relayed through a
//! session of its own to the guest agent's relay mode, which connects to
//! the guest's socket (`vmkeep_protocol::unix_relay`) as the instance's
//! user (root in the tiny image). A new agent (after an adoption) makes
//! its sockets again; the agent's end removes them.
//!
//! What a forward costs the host: one session per open connection (the
//! guest runs at most `MAX_SESSIONS` at once for all uses: a connection
//! beyond is closed at once, logged), each holding no more than its credits.

use std::path::PathBuf;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use vmkeep_protocol::session::OpenSession;
use vmkeep_protocol::unix_relay::{self, connect_unix_argv};

use crate::instance::socket_forwards::SocketForward;
use crate::link::guest_link::GuestLink;
use crate::link::untrusted::LogBudget;
use crate::session::End;
use crate::session::pipe::pipe;

/// Removes the host sockets when the forwards end (the agent's end aborts
/// the task that owns it).
struct Sockets(Vec<PathBuf>);

impl Drop for Sockets {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Err(e) = crate::os::socket::remove_socket(path) {
                tracing::warn!("removing the forwarded socket {}: {e}", path.display());
            }
        }
    }
}

/// The forwards' host sockets, bound and listening. They are bound before
/// the start is reported ready (`vmkeep start` returns), so that a client
/// connecting right after it is served, not refused by a socket not made
/// yet or by the one a killed agent left behind.
pub struct Bound {
    listeners: Vec<(tokio::net::UnixListener, SocketForward)>,
    made: Sockets,
}

/// Bind the host socket of each of `forwards` (one that cannot be bound is
/// logged and left out: the VM runs on without it).
pub fn bind(forwards: Vec<SocketForward>) -> Bound {
    let mut bound = Bound {
        listeners: Vec::new(),
        made: Sockets(Vec::new()),
    };
    for forward in forwards {
        match crate::os::socket::bind_owner_only(&forward.host) {
            Ok(listener) => {
                tracing::info!(
                    "forwarding {} (host) to {} (guest)",
                    forward.host.display(),
                    forward.guest
                );
                bound.made.0.push(forward.host.clone());
                bound.listeners.push((listener, forward));
            }
            Err(e) => tracing::warn!(
                "cannot forward {} to the guest's {}: {e}",
                forward.host.display(),
                forward.guest
            ),
        }
    }
    bound
}

impl Bound {
    /// Serve the sockets until the agent ends; `user` is whom the relays
    /// run as.
    pub async fn keep(self, guest: watch::Receiver<Option<GuestLink>>, user: Option<String>) {
        let Bound { listeners, made } = self;
        let mut serving = JoinSet::new();
        for (listener, forward) in listeners {
            serving.spawn(serve(listener, forward, guest.clone(), user.clone()));
        }
        while serving.join_next().await.is_some() {}
        drop(made);
    }
}

/// Accept connections on one forward's socket and relay each.
async fn serve(
    listener: tokio::net::UnixListener,
    forward: SocketForward,
    guest: watch::Receiver<Option<GuestLink>>,
    user: Option<String>,
) {
    let mut relays = JoinSet::new();
    let mut refused = LogBudget::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let link = guest.borrow().clone().filter(|l| !l.is_closed());
                let Some(link) = link else {
                    if let Some(count) = refused.tick() {
                        tracing::warn!(count, "{}: the guest agent is away; connection closed", forward.host.display());
                    }
                    continue;
                };
                relays.spawn(relay(link, stream, forward.guest.clone(), user.clone()));
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// One connection, through one session, to its end.
async fn relay(link: GuestLink, stream: UnixStream, guest_socket: String, user: Option<String>) {
    let open = OpenSession {
        argv: connect_unix_argv(&guest_socket),
        user,
        ..OpenSession::default()
    };
    let session = match link.open_session(open) {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!("{guest_socket}: {e}; connection closed");
            return;
        }
    };
    let piped = pipe(&session, stream).await;
    match piped.end {
        Some(End::Exited(status)) if status.code == Some(unix_relay::exit::ENDED) => {}
        Some(End::Exited(status)) => tracing::warn!(
            "the guest's {guest_socket}: the relay exited {}: {}",
            status.shell_code(),
            crate::link::untrusted::shown(piped.stderr.trim(), crate::link::untrusted::SHOWN_BYTES)
        ),
        Some(End::Failed(failure)) => {
            tracing::warn!(
                "the guest's {guest_socket}: the relay did not start: {}",
                failure.message
            )
        }
        Some(End::Broken(why)) => tracing::warn!("the guest's {guest_socket}: {why}"),
        None => tracing::debug!("{guest_socket}: the host's client went away"),
    }
}
