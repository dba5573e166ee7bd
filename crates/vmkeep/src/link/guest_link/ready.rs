//! Readiness: connecting until the guest agent answers and says it is
//! ready ([`wait_ready`]), and sorting its lines, where a second `Ready` on
//! one connection means the guest started afresh.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use vmkeep_protocol::{FromGuest, GuestInfo, Reply};

use super::client::{GuestEvent, GuestEvents, GuestLink, GuestLinkError, GuestOp};
use super::reports::{check_exposed, check_guest_info, check_listening};
use crate::link::line_rpc::{Incoming, MalformedLine};

/// How long [`wait_ready`] waits for a `Hello` reply (or a `Ready` event)
/// before it tries a fresh connection.
pub const HELLO_RETRY: Duration = Duration::from_secs(1);

/// Pause between attempts while the socket is missing, refuses, or closes.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Connect (retrying while the socket is missing or refuses) and wait until
/// the guest says it is ready.
///
/// A connection that drops, or a `Hello` that goes unanswered for
/// [`HELLO_RETRY`] (the guest may not have opened its port yet), is replaced
/// by a new connection with a new `Hello`. While the guest answers but is not
/// ready yet, the link waits for its `Ready` and re-asks with `Hello` every
/// [`HELLO_RETRY`]. Returns the connected link and the guest's info.
pub async fn wait_ready(
    path: &Path,
    deadline: Instant,
) -> Result<(GuestLink, GuestInfo), GuestLinkError> {
    let mut last: Option<GuestLinkError> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(GuestLinkError::NotReady {
                path: path.to_owned(),
                last: last.map(Box::new),
            });
        }
        let attempt = deadline.saturating_duration_since(now).min(HELLO_RETRY);
        let error = match GuestLink::connect(path, attempt).await {
            Ok((link, hello, mut events)) => {
                if hello.ready {
                    return Ok((link, hello.info));
                }
                match wait_on_link(&link, &mut events, deadline).await {
                    Ok(info) => return Ok((link, info)),
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        tracing::debug!(path = %path.display(), %error, "guest agent not ready yet");
        let pause = match &error {
            GuestLinkError::Connect { source, .. } if !retryable_connect(source) => {
                return Err(error);
            }
            // Waited long enough already.
            GuestLinkError::Timeout { .. } => Duration::ZERO,
            _ => RECONNECT_DELAY,
        };
        last = Some(error);
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
    }
}

/// On a link whose guest answered "not ready": wait for `Ready`, re-asking
/// with `Hello` every [`HELLO_RETRY`], until the deadline or an error.
async fn wait_on_link(
    link: &GuestLink,
    events: &mut GuestEvents,
    deadline: Instant,
) -> Result<GuestInfo, GuestLinkError> {
    loop {
        let wake = (Instant::now() + HELLO_RETRY).min(deadline);
        // Otherwise the connection ended, or it is time to ask again: a
        // Hello reports which.
        if let Ok(Some(info)) = tokio::time::timeout_at(wake, events.next()).await {
            return Ok(info);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(GuestLinkError::Timeout {
                op: GuestOp::Hello,
                after: HELLO_RETRY,
            });
        }
        let hello = link.hello(remaining.min(HELLO_RETRY)).await?;
        if hello.ready {
            return Ok(hello.info);
        }
    }
}

/// Whether a connect error means "QEMU is not listening yet".
fn retryable_connect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
    )
}

/// What one connection has heard of the guest's readiness.
///
/// The guest agent announces `Ready` once per start, and answers `Hello`
/// with its readiness in the same order it announces (see the guest's
/// `announce_ready`). So a `Ready` on a connection that already heard the
/// guest was ready comes from a new guest agent: the guest rebooted under
/// this socket (QEMU's chardev stays connected across it), and requests sent
/// before will never be answered.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    heard_ready: bool,
}

impl Readiness {
    /// Sort one line from the guest into reply, `Ready` event, or restart.
    pub(crate) fn classify(
        &mut self,
        line: &[u8],
    ) -> Result<Incoming<Reply, GuestEvent>, MalformedLine> {
        let incoming = sort_line(line)?;
        match &incoming {
            Incoming::Event(GuestEvent::Ready(_)) if self.heard_ready => {
                return Ok(Incoming::PeerRestarted);
            }
            Incoming::Event(GuestEvent::Ready(_))
            | Incoming::Response {
                payload: Reply::Hello { ready: true, .. },
                ..
            } => self.heard_ready = true,
            _ => {}
        }
        Ok(incoming)
    }
}

/// Sort one line from the guest into reply or event.
pub(crate) fn sort_line(line: &[u8]) -> Result<Incoming<Reply, GuestEvent>, MalformedLine> {
    match vmkeep_protocol::decode_line::<FromGuest>(line) {
        Ok(FromGuest::Reply { id, body }) => {
            let problem = match &body {
                Reply::Hello { info, .. } | Reply::Info(info) => {
                    check_guest_info(info).map_err(|p| format!("the guest's info: {p}"))
                }
                Reply::Ports(listening) => {
                    check_listening(listening).map_err(|p| format!("the guest's ports: {p}"))
                }
                Reply::Exposed(exposed) => {
                    check_exposed(exposed).map_err(|p| format!("the guest's relays: {p}"))
                }
                _ => Ok(()),
            };
            problem.map_err(|problem| MalformedLine::for_request(id, problem))?;
            Ok(Incoming::Response { id, payload: body })
        }
        Ok(FromGuest::Ready(info)) => {
            check_guest_info(&info)
                .map_err(|problem| MalformedLine::new(format!("the guest's ready: {problem}")))?;
            Ok(Incoming::Event(GuestEvent::Ready(info)))
        }
        Ok(FromGuest::Ports(listening)) => {
            check_listening(&listening)
                .map_err(|problem| MalformedLine::new(format!("the guest's ports: {problem}")))?;
            Ok(Incoming::Event(GuestEvent::Ports(listening)))
        }
        // Checked by its session's rules when it is delivered.
        Ok(FromGuest::Session { id, event }) => {
            Ok(Incoming::Event(GuestEvent::Session { id, event }))
        }
        Err(error) => {
            // Fail the request the line answers, if its id can be read.
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.pointer("/reply/id").and_then(serde_json::Value::as_u64));
            Err(MalformedLine::answering(
                id,
                format!("not a guest-agent message: {error}"),
            ))
        }
    }
}
