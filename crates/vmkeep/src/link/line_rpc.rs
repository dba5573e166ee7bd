//! JSON-lines request/response connections with interleaved events.
//!
//! Both the QMP client and the guest-agent link speak the same shape of
//! protocol over a unix socket: one JSON object per line, requests carrying an
//! id chosen by the host, replies echoing that id, and unsolicited events in
//! between. [`Connection`] implements that mechanism once:
//!
//! - one writer task sends lines in order, so concurrent requests never
//!   interleave their bytes and a cancelled request never leaves half a line;
//!   a request that ends (timeout, cancellation) before its turn takes its
//!   line back, so a peer that stops reading holds the host to the requests
//!   still waiting, not to every one ever sent;
//! - one-way lines ([`Connection::send_frame`]: the guest link's session
//!   frames) go through the same writer, each resolving once written, so a
//!   sender that awaits them has one line queued at most;
//! - one reader task splits what arrives into lines ([`LineSplitter`]), hands
//!   each to a caller-supplied classifier, routes replies to the waiting
//!   request by id and events to the event queue ([`Events`]);
//! - when the connection ends, every pending request fails with
//!   [`LineRpcError::Closed`] and the event queue ends.
//!
//! The peer is not trusted (for the guest link it is the guest), so what it
//! can make the host hold is bounded ([`Limits`]): a line may be at most
//! [`Limits::line_bytes`] long, unless a request in flight expects a longer
//! reply (an exec's output), and events nobody has taken yet hold at most
//! [`Limits::queued_event_bytes`]; beyond that they are dropped and counted.
//! A line longer than allowed ends the connection at once, without reading
//! the rest of it. Bad lines are logged thinly ([`LogBudget`]). A peer that
//! stalls, mid-line or not, costs a request its own timeout and nothing else.
//!
//! Timeouts are per call. The connection lives as long as any handle to it;
//! dropping the last handle stops both tasks and closes the socket.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::link::untrusted::{self, LogBudget};

/// What the classifier made of one incoming line.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<R, E> {
    /// The reply to the request with this id.
    Response { id: u64, payload: R },
    /// An unsolicited message; it goes to the event queue.
    Event(E),
    /// A line the owner does not care about.
    Ignore,
    /// The peer announced that it started afresh on this same socket (the
    /// socket outlives the peer: a guest agent behind QEMU's chardev, across
    /// a guest reboot). Requests it had not answered never will be: the
    /// connection closes with [`CloseReason::PeerRestarted`].
    PeerRestarted,
}

/// A line that breaks the protocol.
///
/// If the classifier could tell which request the line answers, that request
/// fails with [`LineRpcError::Malformed`]; otherwise the line is logged and
/// skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MalformedLine {
    /// The request the line seems to answer, if that much could be read.
    pub id: Option<u64>,
    /// What is wrong, as safe to print: the constructors cut it to a few
    /// hundred bytes and escape control characters, since it may quote the
    /// peer.
    pub message: String,
}

impl MalformedLine {
    /// Longest message kept (it may quote the peer's bytes).
    pub const MAX_MESSAGE_BYTES: usize = 400;

    /// A malformed line that names no request.
    pub fn new(message: impl AsRef<str>) -> Self {
        Self::answering(None, message)
    }

    /// A malformed line that answers request `id`.
    pub fn for_request(id: u64, message: impl AsRef<str>) -> Self {
        Self::answering(Some(id), message)
    }

    /// A malformed line that answers request `id`, if known.
    pub fn answering(id: Option<u64>, message: impl AsRef<str>) -> Self {
        MalformedLine {
            id,
            message: untrusted::shown(message.as_ref(), Self::MAX_MESSAGE_BYTES),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// The peer closed its end of the socket.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// Reading from the socket failed.
    #[error("reading from the socket failed")]
    Read(#[source] io::Error),
    /// Writing to the socket failed.
    #[error("writing to the socket failed")]
    Write(#[source] io::Error),
    /// The peer started afresh; see [`Incoming::PeerRestarted`].
    #[error(
        "the other end started afresh (for the guest agent: the guest rebooted), so what it had not answered is lost"
    )]
    PeerRestarted,
    /// The peer sent a line longer than the connection accepted at the time.
    #[error("the peer sent a line longer than {max} bytes")]
    LineTooLong { max: usize },
    /// The connection's tasks stopped without recording why (its runtime
    /// shut down, or its last handle was dropped).
    #[error("the connection's tasks stopped")]
    Stopped,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum LineRpcError {
    /// The connection ended before the reply arrived.
    #[error("the connection closed before request {id} was answered")]
    Closed {
        id: u64,
        #[source]
        reason: Arc<CloseReason>,
    },
    /// No reply arrived in time. The request stays sent; a late reply is
    /// dropped.
    #[error("request {id} was not answered within {after:?}")]
    Timeout { id: u64, after: Duration },
    /// The reply could not be understood.
    #[error("the reply to request {id} is malformed")]
    Malformed {
        id: u64,
        #[source]
        source: MalformedLine,
    },
}

/// What a connection lets its peer make the host hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line (without its line ending) accepted while no request in
    /// flight allows more (see [`Connection::request_with_reply_limit`]).
    pub line_bytes: usize,
    /// Most bytes of events received and not yet taken from [`Events`]
    /// (each counts twice its line's length plus its in-memory size). Events
    /// beyond are dropped, and counted in the log. At least twice
    /// `line_bytes` is used, so that a single event always fits an empty
    /// queue.
    pub queued_event_bytes: usize,
}

/// How a pending request can end other than with its reply.
enum Failure {
    Malformed(MalformedLine),
    Closed(Arc<CloseReason>),
}

type Waiter<R> = oneshot::Sender<Result<R, Failure>>;

struct Pending<R> {
    waiter: Waiter<R>,
    /// The longest reply line this request allows.
    reply_limit: usize,
}

enum State<R> {
    Open(HashMap<u64, Pending<R>>),
    Closed(Arc<CloseReason>),
}

struct Shared<R> {
    state: Mutex<State<R>>,
    next_id: AtomicU64,
    /// Turns true once, when the connection closes.
    closed: watch::Sender<bool>,
    /// Lines not yet taken by the writer, with their ids.
    outbox: Mutex<VecDeque<Outgoing>>,
    /// Wakes the writer when a line is queued.
    queued: Notify,
}

impl<R> Shared<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // A panic while holding this lock leaves the map consistent (every
        // operation on it is a single insert/remove/replace).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Mark the connection closed and fail every pending request. Only the
    /// first reason counts.
    fn close(&self, reason: CloseReason) {
        let waiters = {
            let mut state = self.lock();
            let State::Open(pending) = &mut *state else {
                return;
            };
            let pending = std::mem::take(pending);
            let reason = Arc::new(reason);
            *state = State::Closed(Arc::clone(&reason));
            pending
                .into_values()
                .map(move |p| (p.waiter, Arc::clone(&reason)))
                .collect::<Vec<_>>()
        };
        for (waiter, reason) in waiters {
            let _ = waiter.send(Err(Failure::Closed(reason)));
        }
        self.closed.send_replace(true);
    }

    fn outbox(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        // As for `lock`: every operation on the queue is a single push or
        // removal.
        self.outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue a line for the writer.
    fn send(&self, id: u64, line: Vec<u8>, written: Option<oneshot::Sender<()>>) {
        self.outbox().push_back(Outgoing { id, line, written });
        self.queued.notify_one();
    }

    /// Take back a line if the writer has not taken it yet.
    fn unsend(&self, id: u64) {
        self.outbox().retain(|queued| queued.id != id);
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter<R>> {
        match &mut *self.lock() {
            State::Open(pending) => pending.remove(&id).map(|p| p.waiter),
            State::Closed(_) => None,
        }
    }

    /// The longest line accepted now: `base`, or more while a request in
    /// flight allows more.
    fn line_limit(&self, base: usize) -> usize {
        match &*self.lock() {
            State::Open(pending) => pending
                .values()
                .map(|p| p.reply_limit)
                .fold(base, usize::max),
            State::Closed(_) => base,
        }
    }

    fn close_reason(&self) -> Option<Arc<CloseReason>> {
        match &*self.lock() {
            State::Open(_) => None,
            State::Closed(reason) => Some(Arc::clone(reason)),
        }
    }
}

/// A line waiting for the writer.
struct Outgoing {
    id: u64,
    line: Vec<u8>,
    /// Told once the line is written (one-way frames, see
    /// [`Connection::send_frame`]).
    written: Option<oneshot::Sender<()>>,
}

struct Inner<R> {
    shared: Arc<Shared<R>>,
    base_line_limit: usize,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl<R> Drop for Inner<R> {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The first request id of a new connection: unpredictable, so that a late
/// reply meant for an earlier connection cannot pass for an answer on this
/// one. (A guest that was saved and resumed answers, on the new connection,
/// what it had received on the old one before the save.) Below 2^48, so
/// that every JSON reader keeps it exact.
fn first_id() -> u64 {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let serial = CONNECTIONS.fetch_add(1, Ordering::Relaxed) & 0xfff;
    1 + (((nanos << 12) | serial) & ((1 << 48) - 1))
}

/// A JSON-lines connection: a cheap, cloneable handle.
///
/// `R` is the payload of a reply as produced by the classifier.
pub struct Connection<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for Connection<R> {
    fn clone(&self) -> Self {
        Connection {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R> fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.inner.shared.close_reason())
            .finish_non_exhaustive()
    }
}

/// The events of one connection, in order. Ends when the connection ends.
#[derive(Debug)]
pub struct Events<E> {
    rx: mpsc::UnboundedReceiver<Queued<E>>,
    queued_bytes: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Queued<E> {
    event: E,
    /// What it counts against [`Limits::queued_event_bytes`].
    charge: usize,
}

impl<E> Events<E> {
    /// The next event, or `None` once the connection has ended and every
    /// event received was taken.
    pub async fn recv(&mut self) -> Option<E> {
        let queued = self.rx.recv().await?;
        self.queued_bytes
            .fetch_sub(queued.charge, Ordering::Relaxed);
        Some(queued.event)
    }
}

/// What an event of a `line_bytes` line counts against
/// [`Limits::queued_event_bytes`]: parsed, it takes about twice its text
/// (strings, maps), plus its place in the queue.
fn event_charge<E>(line_bytes: usize) -> usize {
    line_bytes
        .saturating_mul(2)
        .saturating_add(std::mem::size_of::<Queued<E>>())
}

/// The reader's side of the event queue.
struct EventSender<E> {
    tx: mpsc::UnboundedSender<Queued<E>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    dropped: LogBudget,
}

impl<E> EventSender<E> {
    fn send(&mut self, event: E, line_bytes: usize) {
        let charge = event_charge::<E>(line_bytes);
        // Only this task adds, so the check and the add cannot race with
        // another add; a concurrent take only makes room.
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued.saturating_add(charge) > self.max_bytes {
            if let Some(count) = self.dropped.tick() {
                tracing::warn!(
                    dropped = count,
                    queued_bytes = queued,
                    "the peer's events are not being taken; dropping one"
                );
            }
            return;
        }
        self.queued_bytes.fetch_add(charge, Ordering::Relaxed);
        if self.tx.send(Queued { event, charge }).is_err() {
            // Nobody listening is fine.
            self.queued_bytes.fetch_sub(charge, Ordering::Relaxed);
        }
    }
}

impl<R: Send + 'static> Connection<R> {
    /// Start the reader and writer tasks on `stream`.
    ///
    /// `classify` sees every non-blank line without its line ending. Lines
    /// longer than allowed (see [`Limits`]) end the connection with
    /// [`CloseReason::LineTooLong`]. Returns the handle and the events, which
    /// end when the connection ends.
    ///
    /// Must be called inside a tokio runtime (it spawns two tasks).
    pub fn new<E, F>(stream: UnixStream, limits: Limits, classify: F) -> (Connection<R>, Events<E>)
    where
        E: Send + 'static,
        F: FnMut(&[u8]) -> Result<Incoming<R, E>, MalformedLine> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Open(HashMap::new())),
            next_id: AtomicU64::new(first_id()),
            closed: watch::Sender::new(false),
            outbox: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
        });
        let (read_half, write_half) = stream.into_split();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let events_tx = EventSender {
            tx: events_tx,
            queued_bytes: Arc::clone(&queued_bytes),
            max_bytes: limits
                .queued_event_bytes
                .max(event_charge::<E>(limits.line_bytes)),
            dropped: LogBudget::default(),
        };
        let reader = tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            classify,
            events_tx,
            limits.line_bytes,
        ))
        .abort_handle();
        let writer = tokio::spawn(write_loop(write_half, Arc::clone(&shared))).abort_handle();
        let inner = Inner {
            shared,
            base_line_limit: limits.line_bytes,
            reader,
            writer,
        };
        (
            Connection {
                inner: Arc::new(inner),
            },
            Events {
                rx: events_rx,
                queued_bytes,
            },
        )
    }

    /// Send one request and wait up to `timeout` for its reply, which may be
    /// as long as [`Limits::line_bytes`].
    ///
    /// `encode` gets the id the connection allocated and returns the request
    /// as one line of JSON (a trailing newline is added if missing; the line
    /// must contain no other newline). Cancelling the returned future forgets
    /// the request; a late reply to it is dropped.
    pub async fn request(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
        timeout: Duration,
    ) -> Result<R, LineRpcError> {
        self.request_with_reply_limit(encode, timeout, self.inner.base_line_limit)
            .await
    }

    /// [`Connection::request`] for a request whose reply may be longer than
    /// [`Limits::line_bytes`], up to `reply_limit` bytes. While it is in
    /// flight, any line may be that long (the reader cannot tell a reply
    /// from an event before it has read it).
    pub async fn request_with_reply_limit(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
        timeout: Duration,
        reply_limit: usize,
    ) -> Result<R, LineRpcError> {
        let shared = &self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match &mut *shared.lock() {
            State::Open(pending) => {
                pending.insert(
                    id,
                    Pending {
                        waiter: tx,
                        reply_limit,
                    },
                );
            }
            State::Closed(reason) => {
                return Err(LineRpcError::Closed {
                    id,
                    reason: Arc::clone(reason),
                });
            }
        }
        let _forget_on_exit = ForgetGuard { shared, id };

        let mut line = encode(id);
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        debug_assert!(
            !line[..line.len() - 1].contains(&b'\n'),
            "a request must be a single line"
        );
        if self.inner.writer.is_finished() {
            // The writer stopped; it recorded why.
            return Err(LineRpcError::Closed {
                id,
                reason: self.reason_or_stopped(),
            });
        }
        shared.send(id, line, None);

        match tokio::time::timeout(timeout, rx).await {
            Err(_elapsed) => Err(LineRpcError::Timeout { id, after: timeout }),
            Ok(Ok(Ok(payload))) => Ok(payload),
            Ok(Ok(Err(Failure::Malformed(source)))) => Err(LineRpcError::Malformed { id, source }),
            Ok(Ok(Err(Failure::Closed(reason)))) => Err(LineRpcError::Closed { id, reason }),
            Ok(Err(_dropped)) => Err(LineRpcError::Closed {
                id,
                reason: self.reason_or_stopped(),
            }),
        }
    }

    /// Send one line that is not answered (a session frame of the guest
    /// link) and wait until it is written to the socket, so that a sender
    /// that awaits each frame has at most one in the queue. Cancelling the
    /// future takes the line back if the writer has not taken it yet.
    pub async fn send_frame(&self, mut line: Vec<u8>) -> Result<(), Arc<CloseReason>> {
        let shared = &self.inner.shared;
        if let Some(reason) = shared.close_reason() {
            return Err(reason);
        }
        if self.inner.writer.is_finished() {
            return Err(self.reason_or_stopped());
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        debug_assert!(
            !line[..line.len() - 1].contains(&b'\n'),
            "a frame must be a single line"
        );
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (written, was_written) = oneshot::channel();
        let _take_back = UnsendGuard { shared, id };
        shared.send(id, line, Some(written));
        let mut closed = shared.closed.subscribe();
        tokio::select! {
            done = was_written => done.map_err(|_| self.reason_or_stopped()),
            _ = closed.wait_for(|closed| *closed) => Err(self.reason_or_stopped()),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.close_reason().is_some()
    }

    /// Resolves once the connection has ended (at once if it has already).
    pub async fn closed(&self) {
        let mut closed = self.inner.shared.closed.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// End the connection now: pending requests fail with `reason`, and the
    /// socket is let go (so that a new connection can take its place).
    pub fn close(&self, reason: CloseReason) {
        self.inner.shared.close(reason);
        // The writer stops on its own once it sees the connection closed.
        self.inner.reader.abort();
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<Arc<CloseReason>> {
        self.inner.shared.close_reason()
    }

    fn reason_or_stopped(&self) -> Arc<CloseReason> {
        self.inner
            .shared
            .close_reason()
            .unwrap_or_else(|| Arc::new(CloseReason::Stopped))
    }
}

/// Removes a request's waiter, and its line if still queued, when the
/// request ends in any way (reply, timeout, cancellation).
struct ForgetGuard<'a, R> {
    shared: &'a Shared<R>,
    id: u64,
}

impl<R> Drop for ForgetGuard<'_, R> {
    fn drop(&mut self) {
        drop(self.shared.take_waiter(self.id));
        self.shared.unsend(self.id);
    }
}

/// Takes a frame's line back, if still queued, when its sender stops waiting.
struct UnsendGuard<'a, R> {
    shared: &'a Shared<R>,
    id: u64,
}

impl<R> Drop for UnsendGuard<'_, R> {
    fn drop(&mut self) {
        self.shared.unsend(self.id);
    }
}

/// What [`LineSplitter::feed`] made of the bytes it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// A line is complete: read it with [`LineSplitter::line`].
    Line,
    /// All the bytes were taken; the line goes on.
    Partial,
    /// The line is longer than allowed (`max`, the largest limit in force
    /// while it arrived). Nothing more should be fed.
    TooLong { max: usize },
}

/// Splits a byte stream into lines, holding at most one line, and never more
/// of it than the limit in force.
///
/// Pure (no I/O), so that it can be fuzzed against a model; the reader task
/// feeds it what each read returned.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
    /// The largest limit given while the current line arrived: a line that
    /// began under a larger allowance keeps it.
    limit: usize,
}

/// A line buffer that grew past this is not kept for the next line.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

impl LineSplitter {
    /// Take bytes from `input` up to and including the next newline, with
    /// `max` the longest line (without its `\n`) allowed now. Returns how
    /// many bytes were taken and what they made.
    pub fn feed(&mut self, input: &[u8], max: usize) -> (usize, Fed) {
        self.limit = self.limit.max(max);
        let (content, taken, complete) = match input.iter().position(|b| *b == b'\n') {
            Some(at) => (&input[..at], at + 1, true),
            None => (input, input.len(), false),
        };
        if self.line.len().saturating_add(content.len()) > self.limit {
            return (taken, Fed::TooLong { max: self.limit });
        }
        self.line.extend_from_slice(content);
        (taken, if complete { Fed::Line } else { Fed::Partial })
    }

    /// The line so far (once [`Fed::Line`]: the whole line), without its
    /// `\n` and without a `\r` before it.
    pub fn line(&self) -> &[u8] {
        self.line.strip_suffix(b"\r").unwrap_or(&self.line)
    }

    /// Whether a line has begun and not ended.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty()
    }

    /// Start the next line.
    pub fn next_line(&mut self) {
        if self.line.capacity() > KEEP_BUFFER_BYTES {
            self.line = Vec::new();
        } else {
            self.line.clear();
        }
        self.limit = 0;
    }
}

/// A model of [`LineSplitter`] to check it against (in tests and fuzzing).
#[cfg(any(test, fuzzing))]
pub(crate) mod model {
    use super::{Fed, LineSplitter};

    /// What a stream of bytes should split into with lines of at most `max`
    /// bytes: the complete lines (without `\n` and a `\r` before it), and
    /// whether a line over `max` was met (which ends the stream).
    pub fn model_lines(input: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut lines = Vec::new();
        let mut parts = input.split(|b| *b == b'\n').peekable();
        while let Some(part) = parts.next() {
            if part.len() > max {
                return (lines, true);
            }
            if parts.peek().is_some() {
                lines.push(part.strip_suffix(b"\r").unwrap_or(part).to_vec());
            }
        }
        (lines, false)
    }

    /// Feed `input` to a [`LineSplitter`] in chunks of the given sizes (cycled),
    /// as reads would return it; same result shape as [`model_lines`].
    pub fn split_lines(input: &[u8], chunks: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().copied().chain(std::iter::once(1)).cycle();
        while !rest.is_empty() {
            let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
            let mut chunk = &rest[..size];
            rest = &rest[size..];
            while !chunk.is_empty() {
                let (taken, fed) = splitter.feed(chunk, max);
                assert!(
                    taken > 0 && taken <= chunk.len(),
                    "took {taken} of {}",
                    chunk.len()
                );
                chunk = &chunk[taken..];
                match fed {
                    Fed::Line => {
                        lines.push(splitter.line().to_vec());
                        splitter.next_line();
                    }
                    Fed::Partial => assert!(chunk.is_empty(), "a partial line left bytes"),
                    Fed::TooLong { max: said } => {
                        assert_eq!(said, max);
                        return (lines, true);
                    }
                }
                assert!(
                    splitter.line().len() <= max,
                    "holding {} bytes of a line capped at {max}",
                    splitter.line().len()
                );
            }
        }
        (lines, false)
    }
}

/// What the reader does with one complete line.
fn dispatch<R, E, F>(
    line: &[u8],
    shared: &Shared<R>,
    classify: &mut F,
    events: &mut EventSender<E>,
    budget: &mut LogBudget,
) -> Option<CloseReason>
where
    F: FnMut(&[u8]) -> Result<Incoming<R, E>, MalformedLine>,
{
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match classify(line) {
        Ok(Incoming::Response { id, payload }) => match shared.take_waiter(id) {
            Some(waiter) => {
                let _ = waiter.send(Ok(payload));
            }
            None => {
                if let Some(count) = budget.tick() {
                    tracing::debug!(
                        id,
                        count,
                        "dropping a reply to an unknown or abandoned request"
                    );
                }
            }
        },
        Ok(Incoming::Event(event)) => events.send(event, line.len()),
        Ok(Incoming::Ignore) => {}
        Ok(Incoming::PeerRestarted) => return Some(CloseReason::PeerRestarted),
        Err(malformed) => match malformed.id.and_then(|id| shared.take_waiter(id)) {
            Some(waiter) => {
                let _ = waiter.send(Err(Failure::Malformed(malformed)));
            }
            None => {
                if let Some(count) = budget.tick() {
                    tracing::warn!(
                        id = ?malformed.id,
                        problem = %malformed.message,
                        count,
                        "skipping a malformed line"
                    );
                }
            }
        },
    }
    None
}

async fn read_loop<R, E, F>(
    read_half: OwnedReadHalf,
    shared: Arc<Shared<R>>,
    mut classify: F,
    mut events: EventSender<E>,
    base_line_limit: usize,
) where
    F: FnMut(&[u8]) -> Result<Incoming<R, E>, MalformedLine>,
{
    let mut reader = BufReader::new(read_half);
    let mut splitter = LineSplitter::default();
    // Lines the peer should not have sent: logged thinly.
    let mut budget = LogBudget::default();
    let reason = loop {
        let input = match reader.fill_buf().await {
            Ok(input) => input,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => break CloseReason::Read(error),
        };
        if input.is_empty() {
            // A final line without a newline (the peer closed mid-line) is
            // still handled.
            if splitter.has_partial() {
                let last = std::mem::take(&mut splitter);
                if let Some(reason) = dispatch(
                    last.line(),
                    &shared,
                    &mut classify,
                    &mut events,
                    &mut budget,
                ) {
                    break reason;
                }
            }
            break CloseReason::PeerClosed;
        }
        let (taken, fed) = splitter.feed(input, shared.line_limit(base_line_limit));
        reader.consume(taken);
        match fed {
            Fed::Partial => {}
            Fed::TooLong { max } => break CloseReason::LineTooLong { max },
            Fed::Line => {
                let closing = dispatch(
                    splitter.line(),
                    &shared,
                    &mut classify,
                    &mut events,
                    &mut budget,
                );
                splitter.next_line();
                if let Some(reason) = closing {
                    break reason;
                }
            }
        }
    };
    tracing::debug!(%reason, "connection reader stopped");
    shared.close(reason);
}

async fn write_loop<R>(mut write_half: OwnedWriteHalf, shared: Arc<Shared<R>>) {
    // Once the connection is closed (by the reader too), stop writing and
    // let go of the socket, so that its peer sees the end and a new
    // connection can take its place.
    let mut closed = shared.closed.subscribe();
    loop {
        let next = shared.outbox().pop_front();
        let Some(Outgoing { line, written, .. }) = next else {
            // `notify_one` keeps a wake-up for a line queued meanwhile.
            tokio::select! {
                () = shared.queued.notified() => continue,
                _ = closed.wait_for(|closed| *closed) => break,
            }
        };
        let result = tokio::select! {
            written = write_half.write_all(&line) => written,
            _ = closed.wait_for(|closed| *closed) => break,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection writer stopped");
            shared.close(CloseReason::Write(error));
            return;
        }
        if let Some(written) = written {
            let _ = written.send(());
        }
    }
    let _ = write_half.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::model::{model_lines, split_lines};
    use super::*;
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

    const SECOND: Duration = Duration::from_secs(5);

    /// Test protocol: `{"id": N, "r": ...}` is a reply, `{"ev": ...}` an
    /// event, `{"noise": ...}` ignored, anything else malformed.
    fn classify(line: &[u8]) -> Result<Incoming<Value, Value>, MalformedLine> {
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| MalformedLine::new(format!("not JSON: {e}")))?;
        let id = value.get("id").and_then(Value::as_u64);
        if let Some(ev) = value.get("ev") {
            return Ok(Incoming::Event(ev.clone()));
        }
        if value.get("noise").is_some() {
            return Ok(Incoming::Ignore);
        }
        if value.get("restarted").is_some() {
            return Ok(Incoming::PeerRestarted);
        }
        match (id, value.get("r")) {
            (Some(id), Some(r)) => Ok(Incoming::Response {
                id,
                payload: r.clone(),
            }),
            (id, _) => Err(MalformedLine {
                id,
                message: "no reply field".into(),
            }),
        }
    }

    struct Peer {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Peer {
        async fn recv(&mut self) -> Value {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            assert!(n > 0, "peer saw end of stream");
            serde_json::from_str(&line).unwrap()
        }

        /// Assert that our side let the socket go: the peer reads its end.
        async fn sees_the_end(&mut self) {
            let mut rest = String::new();
            let n = tokio::time::timeout(SECOND, self.reader.read_line(&mut rest))
                .await
                .expect("the socket was let go")
                .unwrap();
            assert_eq!(n, 0, "{rest:?}");
        }

        async fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).await.unwrap();
            self.writer.write_all(b"\n").await.unwrap();
        }
    }

    fn limits(line_bytes: usize) -> Limits {
        Limits {
            line_bytes,
            queued_event_bytes: 1 << 20,
        }
    }

    fn setup(max: usize) -> (Connection<Value>, Events<Value>, Peer) {
        setup_with(limits(max))
    }

    fn setup_with(limits: Limits) -> (Connection<Value>, Events<Value>, Peer) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (conn, events) = Connection::new(ours, limits, classify);
        let (r, w) = theirs.into_split();
        (
            conn,
            events,
            Peer {
                reader: BufReader::new(r),
                writer: w,
            },
        )
    }

    fn ask(
        conn: &Connection<Value>,
        q: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Value, LineRpcError>> {
        let conn = conn.clone();
        let q = q.to_owned();
        async move {
            conn.request(
                |id| json!({"id": id, "q": q}).to_string().into_bytes(),
                timeout,
            )
            .await
        }
    }

    #[tokio::test]
    async fn replies_are_matched_by_id_out_of_order() {
        let (conn, _events, mut peer) = setup(1024);
        let peer_task = async {
            let a = peer.recv().await;
            let b = peer.recv().await;
            assert_ne!(a["id"], b["id"], "ids are unique");
            // Answer in reverse order.
            for req in [&b, &a] {
                let reply = json!({"id": req["id"], "r": format!("answer to {}", req["q"].as_str().unwrap())});
                peer.send(&reply.to_string()).await;
            }
        };
        let (ra, rb, ()) =
            tokio::join!(ask(&conn, "a", SECOND), ask(&conn, "b", SECOND), peer_task);
        assert_eq!(ra.unwrap(), json!("answer to a"));
        assert_eq!(rb.unwrap(), json!("answer to b"));
    }

    #[tokio::test]
    async fn events_interleave_with_replies_and_may_come_first() {
        let (conn, mut events, mut peer) = setup(1024);
        peer.send(r#"{"ev": 1}"#).await;
        peer.send(r#"{"noise": true}"#).await;
        peer.send("").await;
        let peer_task = async {
            let req = peer.recv().await;
            peer.send(r#"{"ev": 2}"#).await;
            peer.send(&json!({"id": req["id"], "r": "ok"}).to_string())
                .await;
            peer.send("{\"ev\": 3}\r").await;
        };
        let (reply, ()) = tokio::join!(ask(&conn, "x", SECOND), peer_task);
        assert_eq!(reply.unwrap(), json!("ok"));
        for expected in 1..=3 {
            assert_eq!(events.recv().await, Some(json!(expected)));
        }
    }

    #[tokio::test]
    async fn very_long_lines_are_read_whole() {
        let (conn, _events, mut peer) = setup(16 * 1024 * 1024);
        let big = "x".repeat(6 * 1024 * 1024);
        let peer_task = async {
            let req = peer.recv().await;
            peer.send(&json!({"id": req["id"], "r": big}).to_string())
                .await;
        };
        let (reply, ()) = tokio::join!(ask(&conn, "big", SECOND), peer_task);
        assert_eq!(reply.unwrap().as_str().unwrap().len(), big.len());
    }

    #[tokio::test]
    async fn a_line_over_the_cap_closes_the_connection() {
        let (conn, mut events, mut peer) = setup(100);
        // Exactly at the cap is fine.
        let at_cap = format!(r#"{{"ev":"{}"}}"#, "y".repeat(100 - 9));
        assert_eq!(at_cap.len(), 100);
        peer.send(&at_cap).await;
        let peer_task = async {
            let req = peer.recv().await;
            let long = json!({"id": req["id"], "r": "z".repeat(200)}).to_string();
            peer.send(&long).await;
        };
        let (reply, ()) = tokio::join!(ask(&conn, "x", SECOND), peer_task);
        match reply {
            Err(LineRpcError::Closed { reason, .. }) => {
                assert!(
                    matches!(*reason, CloseReason::LineTooLong { max: 100 }),
                    "{reason:?}"
                )
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(
            events.recv().await.is_some(),
            "the line at the cap was delivered"
        );
        assert_eq!(events.recv().await, None, "events end with the connection");
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn a_restarted_peer_fails_pending_requests_and_the_socket_is_let_go() {
        let (conn, mut events, mut peer) = setup(1024);
        let peer_task = async {
            peer.recv().await;
            peer.send(r#"{"restarted": true}"#).await;
        };
        let (reply, ()) = tokio::join!(ask(&conn, "lost", SECOND), peer_task);
        match reply {
            Err(LineRpcError::Closed { reason, .. }) => {
                assert!(matches!(*reason, CloseReason::PeerRestarted), "{reason:?}")
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(conn.is_closed());
        assert_eq!(events.recv().await, None, "events end with the connection");
        // The handle is still alive, yet the peer sees the end of the stream:
        // a new connection can take this one's place.
        peer.sees_the_end().await;
        drop(conn);
    }

    #[tokio::test]
    async fn closing_fails_pending_requests_and_lets_the_socket_go() {
        let (conn, _events, mut peer) = setup(1024);
        let closer = async {
            peer.recv().await;
            conn.close(CloseReason::PeerRestarted);
        };
        let (pending, ()) = tokio::join!(ask(&conn, "never answered", SECOND), closer);
        match pending {
            Err(LineRpcError::Closed { reason, .. }) => {
                assert!(matches!(*reason, CloseReason::PeerRestarted), "{reason:?}")
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        peer.sees_the_end().await;
        assert!(matches!(
            ask(&conn, "after", SECOND).await,
            Err(LineRpcError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn a_dropped_connection_fails_pending_requests_and_ends_events() {
        let (conn, mut events, mut peer) = setup(1024);
        let peer_task = async move {
            peer.recv().await;
            peer.recv().await;
            drop(peer);
        };
        let (a, b, ()) = tokio::join!(ask(&conn, "a", SECOND), ask(&conn, "b", SECOND), peer_task);
        for result in [a, b] {
            match result {
                Err(LineRpcError::Closed { reason, .. }) => {
                    assert!(matches!(*reason, CloseReason::PeerClosed), "{reason:?}")
                }
                other => panic!("expected Closed, got {other:?}"),
            }
        }
        assert_eq!(events.recv().await, None);
        // Later requests fail at once.
        assert!(matches!(
            ask(&conn, "c", SECOND).await,
            Err(LineRpcError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn a_timeout_abandons_the_request_and_a_late_reply_is_dropped() {
        let (conn, _events, mut peer) = setup(1024);
        let started = tokio::time::Instant::now();
        let (first, req) =
            tokio::join!(ask(&conn, "slow", Duration::from_millis(100)), peer.recv());
        match first {
            Err(LineRpcError::Timeout { id, after }) => {
                assert_eq!(Some(id), req["id"].as_u64());
                assert_eq!(after, Duration::from_millis(100));
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
        // The late reply arrives and is ignored; the connection keeps working.
        peer.send(&json!({"id": req["id"], "r": "late"}).to_string())
            .await;
        let peer_task = async {
            let req = peer.recv().await;
            peer.send(&json!({"id": req["id"], "r": "fresh"}).to_string())
                .await;
        };
        let (second, ()) = tokio::join!(ask(&conn, "again", SECOND), peer_task);
        assert_eq!(second.unwrap(), json!("fresh"));
    }

    #[tokio::test]
    async fn a_malformed_reply_fails_only_its_request() {
        let (conn, _events, mut peer) = setup(1024);
        let peer_task = async {
            let a = peer.recv().await;
            let b = peer.recv().await;
            peer.send("this is not json").await;
            peer.send(&json!({"id": a["id"], "oops": 1}).to_string())
                .await;
            peer.send(&json!({"id": b["id"], "r": "fine"}).to_string())
                .await;
        };
        let (a, b, ()) = tokio::join!(ask(&conn, "a", SECOND), ask(&conn, "b", SECOND), peer_task);
        match a {
            Err(LineRpcError::Malformed { source, .. }) => {
                assert_eq!(source.message, "no reply field")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(b.unwrap(), json!("fine"));
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_socket() {
        let (conn, mut events, mut peer) = setup(1024);
        drop(conn);
        let mut line = String::new();
        let n = tokio::time::timeout(SECOND, peer.reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "peer sees end of stream");
        assert_eq!(
            tokio::time::timeout(SECOND, events.recv()).await.unwrap(),
            None
        );
    }

    #[test]
    fn the_splitter_agrees_with_a_model_however_the_bytes_arrive() {
        let inputs: [&[u8]; 6] = [
            b"",
            b"one\ntwo\r\n\nthree",
            b"\n\n\n",
            b"exactly10!\nexactly11!!\nnever",
            b"\xff\xfe\x00\n\r\r\n",
            b"0123456789\r\n",
        ];
        for input in inputs {
            for chunks in [&[1][..], &[2, 3], &[7], &[1000], &[1, 9, 4]] {
                assert_eq!(
                    split_lines(input, chunks, 10),
                    model_lines(input, 10),
                    "{input:?} in chunks of {chunks:?}"
                );
            }
        }
    }

    #[test]
    fn a_line_keeps_the_largest_allowance_it_began_under() {
        let mut splitter = LineSplitter::default();
        // Begun while a request allowed 100 bytes, continued after it ended.
        assert_eq!(splitter.feed(&[b'x'; 60], 100), (60, Fed::Partial));
        assert_eq!(splitter.feed(&[b'x'; 30], 10), (30, Fed::Partial));
        assert_eq!(splitter.feed(b"\n", 10), (1, Fed::Line));
        assert_eq!(splitter.line().len(), 90);
        // The next line is back to the limit of the day.
        splitter.next_line();
        assert_eq!(
            splitter.feed(&[b'y'; 11], 10),
            (11, Fed::TooLong { max: 10 })
        );
    }

    #[tokio::test]
    async fn a_long_reply_is_accepted_only_while_a_request_allows_it() {
        let (conn, mut events, mut peer) = setup(100);
        let long = "z".repeat(500);
        let peer_task = async {
            let req = peer.recv().await;
            peer.send(&json!({"id": req["id"], "r": long}).to_string())
                .await;
            // Unasked, the same length ends the connection.
            peer.send(&json!({"ev": long}).to_string()).await;
        };
        let asked = conn.request_with_reply_limit(
            |id| json!({"id": id, "q": "big"}).to_string().into_bytes(),
            SECOND,
            1000,
        );
        let (reply, ()) = tokio::join!(asked, peer_task);
        assert_eq!(reply.unwrap().as_str().unwrap().len(), 500);
        assert_eq!(events.recv().await, None);
        assert!(
            matches!(
                conn.close_reason().as_deref(),
                Some(CloseReason::LineTooLong { max: 100 })
            ),
            "{:?}",
            conn.close_reason()
        );
    }

    #[tokio::test]
    async fn events_nobody_takes_are_held_up_to_the_limit_then_dropped() {
        let limit = Limits {
            line_bytes: 100,
            queued_event_bytes: 1000,
        };
        let (conn, mut events, mut peer) = setup_with(limit);
        let peer_task = async {
            let req = peer.recv().await;
            for n in 0..1000 {
                peer.send(&json!({"ev": n}).to_string()).await;
            }
            // Replies still get through while events are dropped.
            peer.send(&json!({"id": req["id"], "r": "ok"}).to_string())
                .await;
            drop(peer);
        };
        let (reply, ()) = tokio::join!(ask(&conn, "x", SECOND), peer_task);
        assert_eq!(reply.unwrap(), json!("ok"));
        let mut received = Vec::new();
        while let Some(event) = events.recv().await {
            received.push(event.as_u64().unwrap());
        }
        // The first ones, in order, as many as fit 1000 bytes.
        let charge = event_charge::<Value>(r#"{"ev": 0}"#.len());
        assert!(!received.is_empty());
        assert!(received.len() <= 1000 / charge, "{}", received.len());
        assert_eq!(received, (0..received.len() as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn taking_events_makes_room_for_more() {
        let limit = Limits {
            line_bytes: 100,
            queued_event_bytes: 100,
        };
        let (conn, mut events, mut peer) = setup_with(limit);
        // One event fits at a time: each is taken before the next is sent.
        for n in 0..50 {
            peer.send(&json!({"ev": n}).to_string()).await;
            let event = tokio::time::timeout(SECOND, events.recv()).await;
            assert_eq!(event.expect("the event was queued"), Some(json!(n)));
        }
        drop(conn);
    }

    /// Whether the other end of `fd` has shut down, waiting up to 5 s.
    fn hung_up(fd: std::os::fd::RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, on a socket the caller keeps open.
        let ready = unsafe { libc::poll(&mut poll, 1, 5000) };
        ready == 1 && poll.revents & libc::POLLRDHUP != 0
    }

    #[tokio::test]
    async fn closing_lets_the_socket_go_even_while_the_peer_reads_nothing() {
        use std::os::fd::AsRawFd;
        let (conn, _events, peer) = setup(1024);
        // Far more than the socket buffers: the writer blocks on this line.
        let big = "x".repeat(8 << 20);
        let short = Duration::from_millis(100);
        assert!(matches!(
            ask(&conn, &big, short).await,
            Err(LineRpcError::Timeout { .. })
        ));
        // As after a guest reset: the socket must be let go so that QEMU can
        // accept the next connection, though the guest never read this one.
        conn.close(CloseReason::PeerRestarted);
        let fd = peer.reader.get_ref().as_ref().as_raw_fd();
        let hung_up = tokio::task::spawn_blocking(move || hung_up(fd))
            .await
            .unwrap();
        assert!(hung_up, "the connection still holds the socket");
        drop(peer);
    }

    #[tokio::test]
    async fn a_request_that_ends_before_its_turn_is_never_sent() {
        let (conn, _events, mut peer) = setup(1 << 20);
        // Fill the socket so that the next lines wait in the queue.
        let big = "x".repeat(8 << 20);
        let short = Duration::from_millis(100);
        for q in [big.as_str(), "abandoned"] {
            assert!(matches!(
                ask(&conn, q, short).await,
                Err(LineRpcError::Timeout { .. })
            ));
        }
        // The peer reads again: the big line (already begun), then the next
        // request; the abandoned one was taken back.
        let peer_task = async {
            assert_eq!(
                peer.recv().await["q"].as_str().map(str::len),
                Some(big.len())
            );
            let next = peer.recv().await;
            assert_eq!(next["q"], "wanted");
            peer.send(&json!({"id": next["id"], "r": "ok"}).to_string())
                .await;
        };
        let (reply, ()) = tokio::join!(ask(&conn, "wanted", SECOND), peer_task);
        assert_eq!(reply.unwrap(), json!("ok"));
    }
}
