//! JSON-lines request/response connections with interleaved events.
//!
//! Both the QMP client and the guest-agent link speak the same shape of
//! protocol over a unix socket: one JSON object per line, requests carrying an
//! id chosen by the host, replies echoing that id, and unsolicited events in
//! between. [`Connection`] implements that mechanism once:
//!
//! - one writer task sends lines in order, so concurrent requests never
//!   interleave their bytes and a cancelled request never leaves half a line;
//! - one reader task reads lines (of any length up to a cap), hands each to a
//!   caller-supplied classifier, routes replies to the waiting request by id
//!   and events to an unbounded channel;
//! - when the connection ends, every pending request fails with
//!   [`LineRpcError::Closed`] and the event channel ends.
//!
//! Timeouts are per call. The connection lives as long as any handle to it;
//! dropping the last handle stops both tasks and closes the socket.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// What the classifier made of one incoming line.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<R, E> {
    /// The reply to the request with this id.
    Response { id: u64, payload: R },
    /// An unsolicited message; it goes to the event channel.
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
    pub message: String,
}

impl MalformedLine {
    /// A malformed line that names no request.
    pub fn new(message: impl Into<String>) -> Self {
        MalformedLine {
            id: None,
            message: message.into(),
        }
    }

    /// A malformed line that answers request `id`.
    pub fn for_request(id: u64, message: impl Into<String>) -> Self {
        MalformedLine {
            id: Some(id),
            message: message.into(),
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
    /// The peer sent a line longer than the connection accepts.
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

/// How a pending request can end other than with its reply.
enum Failure {
    Malformed(MalformedLine),
    Closed(Arc<CloseReason>),
}

type Waiter<R> = oneshot::Sender<Result<R, Failure>>;

enum State<R> {
    Open(HashMap<u64, Waiter<R>>),
    Closed(Arc<CloseReason>),
}

struct Shared<R> {
    state: Mutex<State<R>>,
    next_id: AtomicU64,
    /// Turns true once, when the connection closes.
    closed: watch::Sender<bool>,
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
            let State::Open(waiters) = &mut *state else {
                return;
            };
            let waiters = std::mem::take(waiters);
            let reason = Arc::new(reason);
            *state = State::Closed(Arc::clone(&reason));
            waiters
                .into_values()
                .map(move |w| (w, Arc::clone(&reason)))
                .collect::<Vec<_>>()
        };
        for (waiter, reason) in waiters {
            let _ = waiter.send(Err(Failure::Closed(reason)));
        }
        self.closed.send_replace(true);
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter<R>> {
        match &mut *self.lock() {
            State::Open(waiters) => waiters.remove(&id),
            State::Closed(_) => None,
        }
    }

    fn close_reason(&self) -> Option<Arc<CloseReason>> {
        match &*self.lock() {
            State::Open(_) => None,
            State::Closed(reason) => Some(Arc::clone(reason)),
        }
    }
}

struct Inner<R> {
    shared: Arc<Shared<R>>,
    lines: mpsc::UnboundedSender<Vec<u8>>,
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

impl<R: Send + 'static> Connection<R> {
    /// Start the reader and writer tasks on `stream`.
    ///
    /// `classify` sees every non-blank line without its line ending. Lines
    /// longer than `max_line_bytes` (not counting the line ending) end the
    /// connection with [`CloseReason::LineTooLong`]. Returns the handle and the
    /// receiver of events, which ends when the connection ends.
    ///
    /// Must be called inside a tokio runtime (it spawns two tasks).
    pub fn new<E, F>(
        stream: UnixStream,
        max_line_bytes: usize,
        classify: F,
    ) -> (Connection<R>, mpsc::UnboundedReceiver<E>)
    where
        E: Send + 'static,
        F: FnMut(&[u8]) -> Result<Incoming<R, E>, MalformedLine> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Open(HashMap::new())),
            next_id: AtomicU64::new(first_id()),
            closed: watch::Sender::new(false),
        });
        let (read_half, write_half) = stream.into_split();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            classify,
            events_tx,
            max_line_bytes,
        ))
        .abort_handle();
        let writer =
            tokio::spawn(write_loop(write_half, lines_rx, Arc::clone(&shared))).abort_handle();
        let inner = Inner {
            shared,
            lines: lines_tx,
            reader,
            writer,
        };
        (
            Connection {
                inner: Arc::new(inner),
            },
            events_rx,
        )
    }

    /// Send one request and wait up to `timeout` for its reply.
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
        let shared = &self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match &mut *shared.lock() {
            State::Open(waiters) => {
                waiters.insert(id, tx);
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
        if self.inner.lines.send(line).is_err() {
            // The writer stopped; it recorded why.
            return Err(LineRpcError::Closed {
                id,
                reason: self.reason_or_stopped(),
            });
        }

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

/// Removes a request's waiter when the request ends in any way (reply,
/// timeout, cancellation).
struct ForgetGuard<'a, R> {
    shared: &'a Shared<R>,
    id: u64,
}

impl<R> Drop for ForgetGuard<'_, R> {
    fn drop(&mut self) {
        drop(self.shared.take_waiter(self.id));
    }
}

/// Lines whose buffer grew past this are not kept around for reuse.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

async fn read_loop<R, E, F>(
    read_half: OwnedReadHalf,
    shared: Arc<Shared<R>>,
    mut classify: F,
    events: mpsc::UnboundedSender<E>,
    max_line_bytes: usize,
) where
    F: FnMut(&[u8]) -> Result<Incoming<R, E>, MalformedLine>,
{
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::new();
    // One byte more than the longest line, so the newline after a line of
    // exactly `max_line_bytes` still fits.
    let limit = u64::try_from(max_line_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let reason = loop {
        if line.capacity() > KEEP_BUFFER_BYTES {
            line = Vec::new();
        } else {
            line.clear();
        }
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => break CloseReason::PeerClosed,
            Ok(_) => {}
            Err(error) => break CloseReason::Read(error),
        }
        if line.last() != Some(&b'\n') && line.len() > max_line_bytes {
            break CloseReason::LineTooLong {
                max: max_line_bytes,
            };
        }
        // A final line without a newline (the peer closed mid-line) is still
        // handled; the next read reports the end.
        let content = trim_line_end(&line);
        if content.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match classify(content) {
            Ok(Incoming::Response { id, payload }) => match shared.take_waiter(id) {
                Some(waiter) => {
                    let _ = waiter.send(Ok(payload));
                }
                None => tracing::debug!(id, "dropping a reply to an unknown or abandoned request"),
            },
            Ok(Incoming::Event(event)) => {
                // Nobody listening is fine.
                let _ = events.send(event);
            }
            Ok(Incoming::Ignore) => {}
            Ok(Incoming::PeerRestarted) => break CloseReason::PeerRestarted,
            Err(malformed) => match malformed.id.and_then(|id| shared.take_waiter(id)) {
                Some(waiter) => {
                    let _ = waiter.send(Err(Failure::Malformed(malformed)));
                }
                None => tracing::warn!(
                    id = ?malformed.id,
                    problem = %malformed.message,
                    "skipping a malformed line"
                ),
            },
        }
    };
    tracing::debug!(%reason, "connection reader stopped");
    shared.close(reason);
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn write_loop<R>(
    mut write_half: OwnedWriteHalf,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared<R>>,
) {
    // Once the connection is closed (by the reader too), stop writing and
    // let go of the socket, so that its peer sees the end and a new
    // connection can take its place.
    let mut closed = shared.closed.subscribe();
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = closed.wait_for(|closed| *closed) => None,
        };
        let Some(line) = line else { break };
        if let Err(error) = write_half.write_all(&line).await {
            tracing::debug!(%error, "connection writer stopped");
            shared.close(CloseReason::Write(error));
            return;
        }
    }
    let _ = write_half.shutdown().await;
}

#[cfg(test)]
mod tests {
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

    fn setup(max: usize) -> (Connection<Value>, mpsc::UnboundedReceiver<Value>, Peer) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (conn, events) = Connection::new(ours, max, classify);
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
}
