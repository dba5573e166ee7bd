//! Host side of the guest-agent channel.
//!
//! QEMU exposes the guest's virtio-serial port as a unix socket (`ga.sock`,
//! a listening `-chardev socket`); the host connects as a client and speaks
//! [`vmkeep_protocol`] over it. The guest answers only while a host is
//! connected, and the host may reconnect any number of times. While nothing
//! in the guest has the port open, QEMU may accept the connection and simply
//! not answer: [`wait_ready`] copes with that by re-sending `Hello` on a new
//! connection.
//!
//! The guest is untrusted. Its lines may be at most
//! [`vmkeep_protocol::MAX_MESSAGE_BYTES`] long, except while an exec is in
//! flight (its reply carries the output: up to
//! [`vmkeep_protocol::MAX_LINE_BYTES`]); the facts it reports about itself
//! ([`GuestInfo`]) are checked before anything shows, logs or journals them
//! ([`check_guest_info`]); its error messages are cut and escaped.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;
use vmkeep_protocol::{
    ClockAdjustment, ExecRequest, ExecResult, Exposed, Exposure, FromGuest, GuestInfo, Listening,
    MAX_LINE_BYTES, MAX_LISTENING, MAX_MESSAGE_BYTES, MountRequest, Mounted, Op, Reply, Request,
};

use crate::link::line_rpc::{
    CloseReason, Connection, Events, Incoming, Limits, LineRpcError, MalformedLine,
};
use crate::link::untrusted;

/// What the guest may make the host hold on one connection.
pub const LIMITS: Limits = Limits {
    line_bytes: MAX_MESSAGE_BYTES,
    // `Ready` comes at most twice per connection (a second one ends it).
    queued_event_bytes: 2 * MAX_MESSAGE_BYTES,
};

/// Longest error message of the guest's that is shown.
const MAX_GUEST_ERROR_BYTES: usize = 4096;

/// How long [`wait_ready`] waits for a `Hello` reply (or a `Ready` event)
/// before it tries a fresh connection.
pub const HELLO_RETRY: Duration = Duration::from_secs(1);

/// Pause between attempts while the socket is missing, refuses, or closes.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

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
    conn: Connection<Reply>,
    /// The latest listening-socket report the guest volunteered (after
    /// [`GuestLink::watch_ports`]); only the newest is kept.
    ports: watch::Receiver<Option<Listening>>,
}

/// What the guest volunteers on a connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GuestEvent {
    Ready(GuestInfo),
    Ports(Listening),
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
        let (conn, rx) = Connection::new(stream, LIMITS, move |line: &[u8]| {
            Ok(match readiness.classify(line)? {
                Incoming::Event(GuestEvent::Ready(info)) => Incoming::Event(info),
                // Held as the newest only: a guest reporting often costs
                // the host one report, whatever its pace.
                Incoming::Event(GuestEvent::Ports(listening)) => {
                    ports_tx.send_replace(Some(listening));
                    Incoming::Ignore
                }
                Incoming::Response { id, payload } => Incoming::Response { id, payload },
                Incoming::Ignore => Incoming::Ignore,
                Incoming::PeerRestarted => Incoming::PeerRestarted,
            })
        });
        let link = GuestLink { conn, ports };
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
        Reply::Error { .. } => "error",
    };
    GuestLinkError::UnexpectedReply { op, reply }
}

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

/// Longest address text accepted in a port report (an IPv6 address with
/// an embedded IPv4 one is 45).
const MAX_IP_BYTES: usize = 45;
/// Longest relay error shown.
const MAX_RELAY_ERROR_BYTES: usize = 256;

/// Check a listening-socket report: at most [`MAX_LISTENING`] sockets, each
/// an IP address and a port other than 0. (What they ask for is for the
/// forwarding rules to decide; this only bounds what the host holds and
/// makes every entry well-formed.)
pub fn check_listening(listening: &Listening) -> Result<(), String> {
    if listening.sockets.len() > MAX_LISTENING {
        return Err(format!(
            "{} sockets; at most {MAX_LISTENING} are accepted",
            listening.sockets.len()
        ));
    }
    for socket in &listening.sockets {
        if socket.ip.len() > MAX_IP_BYTES || socket.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "{} is not an IP address",
                untrusted::shown(&socket.ip, untrusted::SHOWN_BYTES)
            ));
        }
        if socket.port == 0 {
            return Err("a socket on port 0".into());
        }
    }
    Ok(())
}

/// Check the guest's answer to an expose request: short, printable errors.
pub fn check_exposed(exposed: &Exposed) -> Result<(), String> {
    if exposed.failed.len() > MAX_LISTENING {
        return Err(format!("{} failures reported", exposed.failed.len()));
    }
    for failure in &exposed.failed {
        if failure.error.len() > MAX_RELAY_ERROR_BYTES
            || failure.error.chars().any(char::is_control)
        {
            return Err(format!(
                "the error for port {} is over {MAX_RELAY_ERROR_BYTES} bytes or not printable",
                failure.port
            ));
        }
    }
    Ok(())
}

/// Longest kernel release accepted (Linux's `utsname` holds 64 bytes).
const MAX_KERNEL_BYTES: usize = 64;
/// Longest boot id accepted (Linux's is a 36-character UUID).
const MAX_BOOT_ID_BYTES: usize = 64;
/// Longest agent version accepted.
const MAX_VERSION_BYTES: usize = 64;
/// Longest data mount path accepted (Linux's `PATH_MAX`).
const MAX_MOUNT_BYTES: usize = 4096;

/// Check what the guest says about itself before the host shows, logs or
/// journals it: short strings without control characters (a hostile guest
/// must not write escape sequences to the user's terminal, nor megabytes
/// into every journal line that names its boot), a boot id of letters,
/// digits and `-` (it is compared and journaled), a finite uptime.
/// What the guest says of its data disk: device names, errors and e2fsck's
/// output are shown to the user and journaled, so they are bounded and
/// free of control characters (e2fsck's lines may keep their newlines).
fn check_data_disk(
    disk: &vmkeep_protocol::DataDisk,
    text: fn(&str, &str, usize) -> Result<(), String>,
) -> Result<(), String> {
    use vmkeep_protocol::{DataDisk, FsckRun};
    let fsck = |run: &FsckRun| {
        if run.output.len() > MAX_FSCK_OUTPUT_BYTES {
            return Err(format!(
                "data_disk's e2fsck output is {} bytes long; at most {MAX_FSCK_OUTPUT_BYTES} are accepted",
                run.output.len()
            ));
        }
        if run
            .output
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("data_disk's e2fsck output contains control characters".into());
        }
        Ok(())
    };
    match disk {
        DataDisk::Mounted {
            mount, repaired, ..
        } => {
            text("data_disk.mount", mount, MAX_MOUNT_BYTES)?;
            repaired.as_ref().map_or(Ok(()), fsck)
        }
        DataDisk::NotAttached | DataDisk::Unknown => Ok(()),
        DataDisk::DeviceMissing { device, error }
        | DataDisk::FormatFailed { device, error }
        | DataDisk::MountFailed { device, error } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)?;
            text("data_disk.error", error, MAX_MOUNT_BYTES)
        }
        DataDisk::NoFileSystem { device } | DataDisk::NoRepairTool { device } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)
        }
        DataDisk::RepairFailed { device, fsck: run } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)?;
            fsck(run)
        }
    }
}

/// The most of e2fsck's output a guest may report.
const MAX_FSCK_OUTPUT_BYTES: usize = 16 * 1024;

pub fn check_guest_info(info: &GuestInfo) -> Result<(), String> {
    fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
        if value.len() > max {
            return Err(format!(
                "{field} is {} bytes long; at most {max} are accepted",
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "{field} {} contains control characters",
                untrusted::shown(value, untrusted::SHOWN_BYTES)
            ));
        }
        Ok(())
    }
    text("kernel", &info.kernel, MAX_KERNEL_BYTES)?;
    text("boot_id", &info.boot_id, MAX_BOOT_ID_BYTES)?;
    if info.boot_id.is_empty()
        || !info
            .boot_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "boot_id {:?} is not letters, digits and '-'",
            untrusted::shown(&info.boot_id, untrusted::SHOWN_BYTES)
        ));
    }
    text("agent_version", &info.agent_version, MAX_VERSION_BYTES)?;
    if let Some(mount) = &info.data_mount {
        text("data_mount", mount, MAX_MOUNT_BYTES)?;
    }
    if let Some(disk) = &info.data_disk {
        check_data_disk(disk, text)?;
    }
    if !(info.uptime_secs.is_finite() && info.uptime_secs >= 0.0) {
        return Err(format!(
            "uptime_secs {} is not a duration",
            info.uptime_secs
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use vmkeep_protocol::{decode_line, encode_line};

    const T: Duration = Duration::from_secs(5);

    fn info() -> GuestInfo {
        GuestInfo {
            kernel: "6.1.0-test".into(),
            boot_id: "b00t".into(),
            uptime_secs: 2.5,
            agent_version: "0.1.0".into(),
            data_mount: None,
            data_disk: None,
        }
    }

    /// The guest end of the socket.
    struct FakeGuest {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeGuest {
        fn new(stream: UnixStream) -> FakeGuest {
            let (r, w) = stream.into_split();
            FakeGuest {
                reader: BufReader::new(r),
                writer: w,
            }
        }

        /// The next request, or `None` at end of stream.
        async fn recv(&mut self) -> Option<Request> {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).await.unwrap();
            (n > 0).then(|| decode_line(&line).unwrap())
        }

        async fn send(&mut self, message: &FromGuest) {
            self.writer.write_all(&encode_line(message)).await.unwrap();
        }

        async fn answer(&mut self, request: &Request, body: Reply) {
            self.send(&FromGuest::Reply {
                id: request.id,
                body,
            })
            .await;
        }
    }

    fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("ga.sock")
    }

    #[tokio::test]
    async fn connect_says_hello_and_reports_later_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(&dir);
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
            let hello = guest.recv().await.unwrap();
            assert_eq!(hello.op, Op::Hello);
            guest
                .answer(
                    &hello,
                    Reply::Hello {
                        ready: false,
                        info: info(),
                    },
                )
                .await;
            let ping = guest.recv().await.unwrap();
            assert_eq!(ping.op, Op::Ping);
            assert_ne!(ping.id, hello.id);
            guest.send(&FromGuest::Ready(info())).await;
            guest.answer(&ping, Reply::Pong).await;
            let request = guest.recv().await.unwrap();
            assert_eq!(request.op, Op::Info);
            guest.answer(&request, Reply::Info(info())).await;
            // Stays until the host hangs up.
            assert!(guest.recv().await.is_none());
        });

        let (link, hello, mut events) = GuestLink::connect(&path, T).await.unwrap();
        assert_eq!(
            hello,
            Hello {
                ready: false,
                info: info()
            }
        );
        link.ping(T).await.unwrap();
        assert_eq!(events.next().await, Some(info()));
        assert_eq!(link.info(T).await.unwrap(), info());
        drop(link);
        guest.await.unwrap();
        assert_eq!(events.next().await, None);
    }

    #[tokio::test]
    async fn exec_round_trips_binary_output_and_guest_errors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let all_bytes: Vec<u8> = (0..=255).collect();
        let expected_stdout = all_bytes.clone();
        let guest = tokio::spawn(async move {
            let mut guest = FakeGuest::new(theirs);
            let request = guest.recv().await.unwrap();
            let Op::Exec(exec) = &request.op else {
                panic!("expected exec, got {request:?}")
            };
            assert_eq!(exec.argv, ["cat"]);
            assert_eq!(exec.stdin, all_bytes);
            let result = ExecResult {
                exit_code: 3,
                stdout: exec.stdin.clone(),
                stderr: b"warn\n".to_vec(),
            };
            guest.answer(&request, Reply::Exec(result)).await;
            let request = guest.recv().await.unwrap();
            guest
                .answer(
                    &request,
                    Reply::Error {
                        message: "no such file: nope".into(),
                    },
                )
                .await;
            let request = guest.recv().await.unwrap();
            assert_eq!(request.op, Op::Poweroff);
            guest.answer(&request, Reply::Pong).await;
            let request = guest.recv().await.unwrap();
            guest.answer(&request, Reply::PoweroffAccepted).await;
        });
        let (conn, _rx) = Connection::new(ours, LIMITS, sort_line);
        let link = GuestLink {
            conn,
            ports: watch::channel(None).1,
        };

        let request = ExecRequest {
            argv: vec!["cat".into()],
            stdin: (0..=255).collect(),
            env: vec![],
            cwd: None,
        };
        let result = link.exec(request, T).await.unwrap();
        assert_eq!(result.exit_code, 3);
        assert_eq!(result.stdout, expected_stdout);
        assert_eq!(result.stderr, b"warn\n");

        let nope = ExecRequest {
            argv: vec!["nope".into()],
            stdin: vec![],
            env: vec![],
            cwd: None,
        };
        match link.exec(nope, T).await {
            Err(GuestLinkError::Refused {
                op: GuestOp::Exec,
                message,
            }) => {
                assert_eq!(message, "no such file: nope")
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        match link.poweroff(T).await {
            Err(
                error @ GuestLinkError::UnexpectedReply {
                    op: GuestOp::Poweroff,
                    reply: "pong",
                },
            ) => {
                assert_eq!(
                    error.to_string(),
                    "the guest agent answered poweroff with a pong reply"
                )
            }
            other => panic!("expected UnexpectedReply, got {other:?}"),
        }
        link.poweroff(T).await.unwrap();
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn wait_ready_survives_missing_socket_silent_port_and_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(&dir);
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let server_path = path.clone();
        let server = tokio::spawn(async move {
            // QEMU has not created the socket yet.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = UnixListener::bind(&server_path).unwrap();

            // 1st connection: the guest has not opened its port; QEMU
            // accepts and never answers. Hold it until the host gives up.
            let mut silent = FakeGuest::new(listener.accept().await.unwrap().0);
            counter.fetch_add(1, Ordering::SeqCst);
            let mut unanswered = 0;
            while silent.recv().await.is_some() {
                unanswered += 1;
            }
            assert_eq!(unanswered, 1, "one Hello per connection");

            // 2nd connection: answered, not ready, then dropped.
            let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
            counter.fetch_add(1, Ordering::SeqCst);
            let hello = guest.recv().await.unwrap();
            guest
                .answer(
                    &hello,
                    Reply::Hello {
                        ready: false,
                        info: info(),
                    },
                )
                .await;
            drop(guest);

            // 3rd connection: not ready, then Ready.
            let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
            counter.fetch_add(1, Ordering::SeqCst);
            let hello = guest.recv().await.unwrap();
            assert_eq!(hello.op, Op::Hello);
            guest
                .answer(
                    &hello,
                    Reply::Hello {
                        ready: false,
                        info: info(),
                    },
                )
                .await;
            let ready = GuestInfo {
                uptime_secs: 9.0,
                ..info()
            };
            guest.send(&FromGuest::Ready(ready)).await;
            // The host keeps using this connection.
            let ping = guest.recv().await.unwrap();
            guest.answer(&ping, Reply::Pong).await;
            assert!(guest.recv().await.is_none());
        });

        let started = Instant::now();
        let (link, ready_info) = wait_ready(&path, started + Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(ready_info.uptime_secs, 9.0);
        assert!(
            started.elapsed() >= HELLO_RETRY,
            "the silent connection was given its second"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        link.ping(T).await.unwrap();
        drop(link);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn wait_ready_returns_at_once_when_the_guest_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(&dir);
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
            let hello = guest.recv().await.unwrap();
            guest
                .answer(
                    &hello,
                    Reply::Hello {
                        ready: true,
                        info: info(),
                    },
                )
                .await;
            assert!(guest.recv().await.is_none());
        });
        let (link, got) = wait_ready(&path, Instant::now() + T).await.unwrap();
        assert_eq!(got, info());
        drop(link);
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn wait_ready_gives_up_at_the_deadline_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(&dir);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(400);
        match wait_ready(&path, deadline).await {
            Err(GuestLinkError::NotReady { path: p, last }) => {
                assert_eq!(p, path);
                match last.as_deref() {
                    Some(GuestLinkError::Connect { source, .. }) => {
                        assert_eq!(source.kind(), io::ErrorKind::NotFound)
                    }
                    other => panic!("expected a Connect error, got {other:?}"),
                }
            }
            other => panic!("expected NotReady, got {other:?}"),
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_second_readiness_on_one_connection_means_the_guest_started_afresh() {
        let line = |message: &FromGuest| {
            let mut line = encode_line(message);
            line.pop();
            line
        };
        let ready = line(&FromGuest::Ready(info()));
        let hello = |ready| {
            line(&FromGuest::Reply {
                id: 1,
                body: Reply::Hello {
                    ready,
                    info: info(),
                },
            })
        };
        let is_restart =
            |incoming: Incoming<Reply, GuestEvent>| matches!(incoming, Incoming::PeerRestarted);

        // Booting: "not ready", then the announcement, then a reboot.
        let mut booting = Readiness::default();
        assert!(!is_restart(booting.classify(&hello(false)).unwrap()));
        assert!(matches!(
            booting.classify(&ready).unwrap(),
            Incoming::Event(_)
        ));
        assert!(!is_restart(booting.classify(&hello(true)).unwrap()));
        assert!(is_restart(booting.classify(&ready).unwrap()));

        // Connected to a guest that was ready already: its next
        // announcement is a new boot's.
        let mut connected_late = Readiness::default();
        assert!(!is_restart(connected_late.classify(&hello(true)).unwrap()));
        assert!(is_restart(connected_late.classify(&ready).unwrap()));
    }

    #[test]
    fn port_reports_are_checked_and_do_not_count_as_readiness() {
        use vmkeep_protocol::{ListenSocket, Proto};
        let line = |message: &FromGuest| {
            let mut line = encode_line(message);
            line.pop();
            line
        };
        let socket = |ip: &str, port| ListenSocket {
            proto: Proto::Tcp,
            ip: ip.into(),
            port,
        };
        let good = Listening {
            sockets: vec![socket("127.0.0.1", 8080), socket("::", 3000)],
            truncated: false,
        };
        let mut readiness = Readiness::default();
        assert!(matches!(
            readiness.classify(&line(&FromGuest::Ports(good.clone()))).unwrap(),
            Incoming::Event(GuestEvent::Ports(got)) if got == good
        ));
        // A report after readiness is no new boot.
        readiness
            .classify(&line(&FromGuest::Ready(info())))
            .unwrap();
        assert!(matches!(
            readiness.classify(&line(&FromGuest::Ports(good))).unwrap(),
            Incoming::Event(GuestEvent::Ports(_))
        ));
        for bad in [
            Listening {
                sockets: vec![socket("\x1b[2J", 1)],
                truncated: false,
            },
            Listening {
                sockets: vec![socket("0.0.0.0", 0)],
                truncated: false,
            },
            Listening {
                sockets: (1..=MAX_LISTENING as u16 + 1)
                    .map(|p| socket("0.0.0.0", p))
                    .collect(),
                truncated: false,
            },
        ] {
            assert!(check_listening(&bad).is_err(), "{bad:?}");
            let error = sort_line(&line(&FromGuest::Ports(bad.clone()))).unwrap_err();
            assert!(error.message.starts_with("the guest's ports"), "{error}");
            let reply = sort_line(&line(&FromGuest::Reply {
                id: 3,
                body: Reply::Ports(bad),
            }))
            .unwrap_err();
            assert_eq!(reply.id, Some(3));
        }
        let exposed = Exposed {
            failed: vec![vmkeep_protocol::RelayFailure {
                port: 1,
                error: "x".repeat(MAX_RELAY_ERROR_BYTES + 1),
            }],
        };
        assert!(check_exposed(&exposed).is_err());
    }

    #[test]
    fn malformed_replies_name_their_request_when_possible() {
        let bad = sort_line(br#"{"reply": {"id": 9, "body": "no-such-reply"}}"#).unwrap_err();
        assert_eq!(bad.id, Some(9));
        let worse = sort_line(b"garbage").unwrap_err();
        assert_eq!(worse.id, None);
    }

    #[test]
    fn what_the_guest_says_about_itself_is_checked() {
        assert_eq!(check_guest_info(&info()), Ok(()));
        let real = GuestInfo {
            kernel: "6.1.0-31-cloud-amd64".into(),
            boot_id: "0f5e7b1c-2b1e-4d4a-9a57-3a3c1d9f2e10".into(),
            uptime_secs: 0.0,
            agent_version: "0.1.0".into(),
            data_mount: Some("/data".into()),
            data_disk: Some(vmkeep_protocol::DataDisk::Mounted {
                mount: "/data".into(),
                formatted: false,
                repaired: None,
            }),
        };
        assert_eq!(check_guest_info(&real), Ok(()));
        let mut hostile = real.clone();
        hostile.data_disk = Some(vmkeep_protocol::DataDisk::MountFailed {
            device: "/dev/vda".into(),
            error: "\x1b[2Jcleared".into(),
        });
        assert!(
            check_guest_info(&hostile).is_err(),
            "an escape in a disk error"
        );
        hostile.data_disk = Some(vmkeep_protocol::DataDisk::NoFileSystem {
            device: "d".repeat(MAX_MOUNT_BYTES + 1),
        });
        assert!(
            check_guest_info(&hostile).is_err(),
            "an oversized device name"
        );
        let bad = |change: fn(&mut GuestInfo)| {
            let mut info = real.clone();
            change(&mut info);
            check_guest_info(&info).unwrap_err()
        };
        assert_eq!(
            bad(|i| i.kernel = "\x1b]0;owned\x07".into()),
            "kernel \\u{1b}]0;owned\\u{7} contains control characters"
        );
        assert_eq!(
            bad(|i| i.boot_id = "b".repeat(1 << 20)),
            "boot_id is 1048576 bytes long; at most 64 are accepted"
        );
        assert!(bad(|i| i.boot_id = "a b".into()).contains("not letters, digits and '-'"));
        assert!(bad(|i| i.boot_id = String::new()).contains("not letters"));
        assert!(bad(|i| i.agent_version = "v\n".into()).contains("agent_version"));
        assert!(bad(|i| i.data_mount = Some("/d\u{9b}".into())).contains("data_mount"));
        assert!(bad(|i| i.uptime_secs = -1.0).contains("uptime_secs"));
    }

    #[test]
    fn a_hostile_info_fails_its_request_and_a_hostile_ready_is_skipped() {
        let hostile = GuestInfo {
            kernel: "\x1b[2J".into(),
            ..info()
        };
        let line = |message: &FromGuest| {
            let mut line = encode_line(message);
            line.pop();
            line
        };
        let reply = sort_line(&line(&FromGuest::Reply {
            id: 4,
            body: Reply::Info(hostile.clone()),
        }))
        .unwrap_err();
        assert_eq!(reply.id, Some(4));
        assert!(
            reply.message.contains("the guest's info: kernel"),
            "{}",
            reply.message
        );
        let ready = sort_line(&line(&FromGuest::Ready(hostile))).unwrap_err();
        assert_eq!(ready.id, None);
    }
}
