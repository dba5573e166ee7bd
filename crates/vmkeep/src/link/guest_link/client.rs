//! The guest link's client: one connection to the guest agent, its
//! requests (hello, exec, poweroff, clock, mounts, ports) and their errors,
//! and its streaming sessions (`sessions`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;
use vmkeep_protocol::{
    ClockAdjustment, ExecRequest, ExecResult, Exposed, Exposure, GuestInfo, Listening,
    MAX_LINE_BYTES, MAX_MESSAGE_BYTES, MountRequest, Mounted, Op, Reply, Request,
};

use super::LIMITS;
use super::ready::Readiness;
use super::sessions::{GuestSession, OpenError, SessionTable};
use crate::link::line_rpc::{
    CloseReason, Connection, Events, Incoming, LineRpcError, MalformedLine,
};
use crate::link::untrusted;

/// Longest error message of the guest's that is shown.
const MAX_GUEST_ERROR_BYTES: usize = 4096;

/// The request kinds, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOp {
    Hello,
    Ping,
    Info,
    Exec,
    Poweroff,
    Time,
    AdjustClock,
    Mount,
    ShareLost,
    WatchPorts,
    Expose,
    HostChanges,
}

impl GuestOp {
    fn of(op: &Op) -> GuestOp {
        match op {
            Op::Hello => GuestOp::Hello,
            Op::Ping => GuestOp::Ping,
            Op::Info => GuestOp::Info,
            Op::Exec(_) => GuestOp::Exec,
            Op::Poweroff => GuestOp::Poweroff,
            Op::Time => GuestOp::Time,
            Op::AdjustClock(_) => GuestOp::AdjustClock,
            Op::Mount(_) => GuestOp::Mount,
            Op::ShareLost(_) => GuestOp::ShareLost,
            Op::WatchPorts => GuestOp::WatchPorts,
            Op::Expose(_) => GuestOp::Expose,
            Op::HostChanges(_) => GuestOp::HostChanges,
        }
    }
}

impl fmt::Display for GuestOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestOp::Hello => "hello",
            GuestOp::Ping => "ping",
            GuestOp::Info => "info",
            GuestOp::Exec => "exec",
            GuestOp::Poweroff => "poweroff",
            GuestOp::Time => "time",
            GuestOp::AdjustClock => "adjust-clock",
            GuestOp::Mount => "mount",
            GuestOp::ShareLost => "share-lost",
            GuestOp::WatchPorts => "watch-ports",
            GuestOp::Expose => "expose",
            GuestOp::HostChanges => "host-changes",
        })
    }
}

/// Errors of the guest link.
#[derive(Debug, thiserror::Error)]
pub enum GuestLinkError {
    /// The guest-agent socket could not be connected.
    #[error("cannot connect to guest-agent socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The guest did not answer in time.
    #[error("the guest agent did not answer {op} within {after:?}")]
    Timeout { op: GuestOp, after: Duration },
    /// The connection ended before the guest answered.
    #[error("the guest-agent connection closed before {op} was answered")]
    Closed {
        op: GuestOp,
        #[source]
        reason: Arc<CloseReason>,
    },
    /// The guest answered with an error.
    #[error("the guest agent refused {op}: {message}")]
    Refused { op: GuestOp, message: String },
    /// The guest answered with a reply of the wrong kind.
    #[error("the guest agent answered {op} with a {reply} reply")]
    UnexpectedReply {
        op: GuestOp,
        /// The kind of reply it sent (its content is not kept: it may be
        /// large, and it is the guest's).
        reply: &'static str,
    },
    /// The guest's reply could not be parsed.
    #[error("the guest agent's reply to {op} is malformed")]
    Malformed {
        op: GuestOp,
        #[source]
        source: MalformedLine,
    },
    /// [`wait_ready`] reached its deadline.
    #[error("the guest on {} was not ready by the deadline", path.display())]
    NotReady {
        path: PathBuf,
        /// The last thing that went wrong, if anything did.
        #[source]
        last: Option<Box<GuestLinkError>>,
    },
}

/// The guest's answer to `Hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// Whether the guest is ready already (its `Ready` was sent before).
    pub ready: bool,
    pub info: GuestInfo,
}

/// A connection to the guest agent: a cheap handle; clones share it.
#[derive(Debug, Clone)]
pub struct GuestLink {
    pub(super) conn: Connection<Reply>,
    /// The latest listening-socket report the guest volunteered (after
    /// [`GuestLink::watch_ports`]); only the newest is kept.
    pub(super) ports: watch::Receiver<Option<Listening>>,
    /// The streaming sessions open on this connection.
    pub(super) sessions: Arc<SessionTable>,
}

/// What the guest volunteers on a connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GuestEvent {
    Ready(GuestInfo),
    Ports(Listening),
    /// An event of a streaming session (checked by its session's rules
    /// when it is delivered).
    Session {
        id: u64,
        event: vmkeep_protocol::session::SessionEvent,
    },
}

/// `Ready` announcements the guest sends on this connection. Ends when the
/// connection ends.
#[derive(Debug)]
pub struct GuestEvents {
    rx: Events<GuestInfo>,
}

impl GuestEvents {
    /// The info of the next `Ready` announcement, or `None` once the
    /// connection has ended.
    pub async fn next(&mut self) -> Option<GuestInfo> {
        self.rx.recv().await
    }
}

impl GuestLink {
    /// Connect and send `Hello`. `timeout` bounds connecting and the reply.
    /// Returns the link, the guest's answer (ready already, and its info),
    /// and the stream of later `Ready` announcements.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(GuestLink, Hello, GuestEvents), GuestLinkError> {
        let deadline = Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(GuestLinkError::Connect {
                    path: path.to_owned(),
                    source,
                });
            }
            Err(_elapsed) => {
                return Err(GuestLinkError::Connect {
                    path: path.to_owned(),
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
        };
        let mut readiness = Readiness::default();
        let (ports_tx, ports) = watch::channel(None);
        let sessions = Arc::new(SessionTable::default());
        let table = Arc::clone(&sessions);
        let (conn, rx) = Connection::new(stream, LIMITS, move |line: &[u8]| {
            Ok(match readiness.classify(line)? {
                Incoming::Event(GuestEvent::Ready(info)) => Incoming::Event(info),
                // Held as the newest only: a guest reporting often costs
                // the host one report, whatever its pace.
                Incoming::Event(GuestEvent::Ports(listening)) => {
                    ports_tx.send_replace(Some(listening));
                    Incoming::Ignore
                }
                Incoming::Event(GuestEvent::Session { id, event }) => {
                    table.deliver(id, event);
                    Incoming::Ignore
                }
                // A watch's answer is the newest report too, in the order
                // the lines came: a report the guest sent before it (still
                // queued across a suspend, or by the watch of a previous
                // host) is older than this snapshot and must not win over
                // it, which it did as the receiver's unseen value.
                Incoming::Response {
                    id,
                    payload: Reply::Ports(listening),
                } => {
                    ports_tx.send_replace(Some(listening.clone()));
                    Incoming::Response {
                        id,
                        payload: Reply::Ports(listening),
                    }
                }
                Incoming::Response { id, payload } => Incoming::Response { id, payload },
                Incoming::Ignore => Incoming::Ignore,
                Incoming::PeerRestarted => Incoming::PeerRestarted,
            })
        });
        let link = GuestLink {
            conn,
            ports,
            sessions,
        };
        let hello = link
            .hello(deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok((link, hello, GuestEvents { rx }))
    }

    /// Ask whether the guest is ready (every connection starts with this).
    pub async fn hello(&self, timeout: Duration) -> Result<Hello, GuestLinkError> {
        match self.call(Op::Hello, timeout).await? {
            Reply::Hello { ready, info } => Ok(Hello { ready, info }),
            other => Err(unexpected(GuestOp::Hello, other)),
        }
    }

    /// Check that the guest agent answers.
    pub async fn ping(&self, timeout: Duration) -> Result<(), GuestLinkError> {
        match self.call(Op::Ping, timeout).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected(GuestOp::Ping, other)),
        }
    }

    /// Facts about the running guest.
    pub async fn info(&self, timeout: Duration) -> Result<GuestInfo, GuestLinkError> {
        match self.call(Op::Info, timeout).await? {
            Reply::Info(info) => Ok(info),
            other => Err(unexpected(GuestOp::Info, other)),
        }
    }

    /// Run a command in the guest and collect its output. `timeout` covers
    /// the whole run.
    pub async fn exec(
        &self,
        request: ExecRequest,
        timeout: Duration,
    ) -> Result<ExecResult, GuestLinkError> {
        match self.call(Op::Exec(request), timeout).await? {
            Reply::Exec(result) => Ok(result),
            other => Err(unexpected(GuestOp::Exec, other)),
        }
    }

    /// Ask the guest to sync, unmount and power off. Returns once the guest
    /// accepted; it goes down afterwards.
    pub async fn poweroff(&self, timeout: Duration) -> Result<(), GuestLinkError> {
        match self.call(Op::Poweroff, timeout).await? {
            Reply::PoweroffAccepted => Ok(()),
            other => Err(unexpected(GuestOp::Poweroff, other)),
        }
    }

    /// The guest's wall clock (`CLOCK_REALTIME`, ns since the epoch). A
    /// guest agent that predates the op answers with an error
    /// ([`GuestLinkError::Refused`]).
    pub async fn time(&self, timeout: Duration) -> Result<i64, GuestLinkError> {
        match self.call(Op::Time, timeout).await? {
            Reply::Time(time) => Ok(time.realtime_ns),
            other => Err(unexpected(GuestOp::Time, other)),
        }
    }

    /// Step the guest's wall clock by `delta_ns`; returns its new reading.
    pub async fn adjust_clock(
        &self,
        delta_ns: i64,
        timeout: Duration,
    ) -> Result<i64, GuestLinkError> {
        match self
            .call(Op::AdjustClock(ClockAdjustment { delta_ns }), timeout)
            .await?
        {
            Reply::ClockAdjusted(time) => Ok(time.realtime_ns),
            other => Err(unexpected(GuestOp::AdjustClock, other)),
        }
    }

    /// Mount a shared directory in the guest (idempotent).
    pub async fn mount(
        &self,
        request: MountRequest,
        timeout: Duration,
    ) -> Result<Mounted, GuestLinkError> {
        match self.call(Op::Mount(request), timeout).await? {
            Reply::Mounted(mounted) => Ok(mounted),
            other => Err(unexpected(GuestOp::Mount, other)),
        }
    }

    /// Tell the guest a share's virtiofsd is gone (see [`Op::ShareLost`]);
    /// returns how many mounts of it the guest has.
    pub async fn share_lost(&self, tag: &str, timeout: Duration) -> Result<u32, GuestLinkError> {
        let lost = vmkeep_protocol::ShareLost { tag: tag.into() };
        match self.call(Op::ShareLost(lost), timeout).await? {
            Reply::ShareLost { mounts } => Ok(mounts),
            other => Err(unexpected(GuestOp::ShareLost, other)),
        }
    }

    /// The guest's listening sockets now; from then on the guest reports
    /// changes on this connection ([`GuestLink::port_reports`]).
    pub async fn watch_ports(&self, timeout: Duration) -> Result<Listening, GuestLinkError> {
        match self.call(Op::WatchPorts, timeout).await? {
            Reply::Ports(listening) => Ok(listening),
            other => Err(unexpected(GuestOp::WatchPorts, other)),
        }
    }

    /// The newest listening-socket report the guest volunteered.
    pub fn port_reports(&self) -> watch::Receiver<Option<Listening>> {
        self.ports.clone()
    }

    /// Relay exactly these loopback ports from the guest's network address.
    pub async fn expose(
        &self,
        exposure: Exposure,
        timeout: Duration,
    ) -> Result<Exposed, GuestLinkError> {
        match self.call(Op::Expose(exposure), timeout).await? {
            Reply::Exposed(exposed) => Ok(exposed),
            other => Err(unexpected(GuestOp::Expose, other)),
        }
    }

    /// Tell the guest what changed on the host side of a share, so that its
    /// inotify sees it (Lima's `mountInotify`); what it could raise.
    pub async fn raise_host_changes(
        &self,
        changes: vmkeep_protocol::host_changes::HostChanges,
        timeout: Duration,
    ) -> Result<vmkeep_protocol::host_changes::Raised, GuestLinkError> {
        match self.call(Op::HostChanges(changes), timeout).await? {
            Reply::Raised(raised) => Ok(raised),
            other => Err(unexpected(GuestOp::HostChanges, other)),
        }
    }

    /// Open a streaming session (see `vmkeep_protocol::session`): the
    /// `open` frame is queued at once; the guest's answer is the session's
    /// first update.
    pub fn open_session(
        &self,
        open: vmkeep_protocol::session::OpenSession,
    ) -> Result<GuestSession, OpenError> {
        self.sessions.open(&self.conn, open)
    }

    /// How many sessions are open on this connection.
    pub fn open_sessions(&self) -> usize {
        self.sessions.open_count()
    }

    /// Give the connection up because the guest restarted (QEMU reported a
    /// reset): requests in flight fail now instead of waiting for answers
    /// that will never come.
    pub fn abandon_after_guest_reset(&self) {
        self.conn.close(CloseReason::PeerRestarted);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        self.conn.closed().await
    }

    async fn call(&self, op: Op, timeout: Duration) -> Result<Reply, GuestLinkError> {
        let kind = GuestOp::of(&op);
        // Only an exec's reply carries bulk data.
        let reply_limit = match kind {
            GuestOp::Exec => MAX_LINE_BYTES,
            _ => MAX_MESSAGE_BYTES,
        };
        let encode = |id| vmkeep_protocol::encode_line(&Request { id, op });
        match self
            .conn
            .request_with_reply_limit(encode, timeout, reply_limit)
            .await
        {
            Ok(Reply::Error { message }) => Err(GuestLinkError::Refused {
                op: kind,
                message: untrusted::shown(&message, MAX_GUEST_ERROR_BYTES),
            }),
            Ok(reply) => Ok(reply),
            Err(LineRpcError::Timeout { after, .. }) => {
                Err(GuestLinkError::Timeout { op: kind, after })
            }
            Err(LineRpcError::Closed { reason, .. }) => {
                Err(GuestLinkError::Closed { op: kind, reason })
            }
            Err(LineRpcError::Malformed { source, .. }) => {
                Err(GuestLinkError::Malformed { op: kind, source })
            }
        }
    }
}

fn unexpected(op: GuestOp, reply: Reply) -> GuestLinkError {
    let reply = match reply {
        Reply::Hello { .. } => "hello",
        Reply::Pong => "pong",
        Reply::Info(_) => "info",
        Reply::Exec(_) => "exec",
        Reply::PoweroffAccepted => "poweroff-accepted",
        Reply::Time(_) => "time",
        Reply::ClockAdjusted(_) => "clock-adjusted",
        Reply::Mounted(_) => "mounted",
        Reply::ShareLost { .. } => "share-lost",
        Reply::Ports(_) => "ports",
        Reply::Exposed(_) => "exposed",
        Reply::Raised(_) => "raised",
        Reply::Error { .. } => "error",
    };
    GuestLinkError::UnexpectedReply { op, reply }
}
