//! Streaming sessions on one guest link, host side (the protocol is
//! `vmkeep_protocol::session`).
//!
//! The link's reader hands every session event to [`SessionTable::deliver`],
//! which never blocks: it checks the event with the session's
//! [`SessionState`] (the guest is untrusted), keeps what the event says in
//! the session's slot and wakes its owner. The owner ([`GuestSession`])
//! takes updates from the slot and sends frames through a queue of its own
//! that one writer task drains, one frame at a time, onto the link.
//!
//! What a guest can make the host hold, per session: the output it was
//! granted credit for ([`INITIAL_OUTPUT_CREDIT`] per stream, and more only
//! as the owner consumes it), [`MAX_QUEUED_NOTICES`] refusal messages of at
//! most [`MAX_EVENT_MESSAGE_BYTES`], and a counter or two. An event that
//! breaks the rules ends the session at once (the owner hears
//! [`End::Broken`] and the guest is told to close it); events for a session
//! that is not open are dropped (thinly logged). What the host queues for
//! the guest per session: its stdin within the guest's window
//! ([`STDIN_WINDOW`]), one merged credit, the latest window size, a few
//! signals.
//!
//! When the link ends, every session's owner hears [`End::Broken`] once it
//! has taken what arrived before; the guest hangs the commands up when it
//! sees the host go.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use vmkeep_protocol::session::{
    MAX_EVENT_MESSAGE_BYTES, MAX_SESSIONS, OpenSession, OutputCredit, SessionEvent, SessionOp,
    SessionRequest, SessionState, Signal, SignalRequest, StartFailure, StdinData, Stream,
    WindowSize,
};

use crate::link::line_rpc::Connection;
use crate::link::untrusted::{self, LogBudget};
use crate::session::{End, SessionError, SessionStream, Update};
use vmkeep_protocol::Reply;

/// Refusal messages of the guest's kept for an owner that has not taken
/// them; more are dropped (and counted in the log).
pub const MAX_QUEUED_NOTICES: usize = 16;
/// Signals queued for the guest and not yet sent; more are dropped (the
/// command is not helped by more of them).
const MAX_QUEUED_SIGNALS: usize = 8;

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the guest-agent link is closed")]
    LinkClosed,
    #[error("{MAX_SESSIONS} sessions are open in this guest; close one first")]
    TooMany,
}

/// The sessions of one guest link.
#[derive(Debug)]
pub struct SessionTable {
    inner: Mutex<TableInner>,
}

#[derive(Debug)]
struct TableInner {
    next_id: u64,
    open: HashMap<u64, Arc<Slot>>,
    /// Events for sessions that are not open, logged thinly.
    strays: LogBudget,
    /// Events that broke a session's rules, logged thinly.
    violations: LogBudget,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            inner: Mutex::new(TableInner {
                next_id: first_id(),
                open: HashMap::new(),
                strays: LogBudget::default(),
                violations: LogBudget::default(),
            }),
        }
    }
}

/// The first session id of a link: unpredictable, so that events of a
/// session of an earlier connection (a guest resumed from a saved state
/// may still send some) never pass for one of this connection's. Below
/// 2^48, so that every JSON reader keeps it exact.
fn first_id() -> u64 {
    let bytes = crate::os::fs::random_bytes::<6>().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let b = nanos.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    });
    let mut wide = [0u8; 8];
    wide[..6].copy_from_slice(&bytes);
    // Half the id space left above it, so the counter never wraps.
    1 + (u64::from_le_bytes(wide) >> 1)
}

/// One session as the link's reader and its owner share it.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    wake: Notify,
}

#[derive(Debug)]
struct SlotState {
    rules: SessionState,
    started: Option<i32>,
    started_told: bool,
    output: VecDeque<(Stream, Vec<u8>)>,
    /// Stdin credit the guest granted that the owner has not heard of.
    stdin_granted: u64,
    stdin_closed: bool,
    stdin_closed_told: bool,
    notices: VecDeque<String>,
    notices_dropped: u64,
    end: Option<End>,
    /// The end was taken by the owner.
    end_told: bool,
    /// The guest ended the session (exited or failed): nothing to close.
    ended_by_guest: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every change under this lock is a few field updates.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionTable {
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand one event of the guest's to its session. Never blocks.
    pub(crate) fn deliver(&self, id: u64, event: SessionEvent) {
        let mut table = self.lock();
        let Some(slot) = table.open.get(&id).cloned() else {
            if let Some(count) = table.strays.tick() {
                tracing::debug!(
                    session = id,
                    count,
                    "dropping an event for a session that is not open"
                );
            }
            return;
        };
        let mut state = slot.lock();
        if let Err(violation) = state.rules.accept(&event) {
            let shown = untrusted::shown(&violation.0, untrusted::SHOWN_BYTES);
            if let Some(count) = table.violations.tick() {
                tracing::warn!(
                    session = id,
                    count,
                    "the guest broke a session's rules: {shown}"
                );
            }
            state.end = Some(End::Broken(format!(
                "the guest agent broke the session protocol ({shown}); the session was closed"
            )));
            table.open.remove(&id);
            drop(state);
            slot.wake.notify_one();
            return;
        }
        match event {
            SessionEvent::Started { pid } => state.started = Some(pid),
            SessionEvent::Output(output) => state.output.push_back((output.stream, output.data)),
            SessionEvent::StdinCredit { bytes } => {
                state.stdin_granted = state.stdin_granted.saturating_add(bytes)
            }
            SessionEvent::StdinClosed => state.stdin_closed = true,
            SessionEvent::Error { message } => {
                if state.notices.len() < MAX_QUEUED_NOTICES {
                    let shown = untrusted::shown(&message, MAX_EVENT_MESSAGE_BYTES);
                    state
                        .notices
                        .push_back(format!("the guest refused: {shown}"));
                } else {
                    state.notices_dropped += 1;
                }
            }
            SessionEvent::Exited(status) => {
                state.end = Some(End::Exited(status));
                state.ended_by_guest = true;
                table.open.remove(&id);
            }
            SessionEvent::Failed(failure) => {
                state.end = Some(End::Failed(StartFailure {
                    reason: failure.reason,
                    message: untrusted::shown(&failure.message, MAX_EVENT_MESSAGE_BYTES),
                }));
                state.ended_by_guest = true;
                table.open.remove(&id);
            }
        }
        drop(state);
        slot.wake.notify_one();
    }

    /// How many sessions are open.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    fn forget(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    /// Open a session: its slot, its frame queue (with the `open` frame in
    /// it) and the writer task that sends the queue on `conn`.
    pub(crate) fn open(
        self: &Arc<Self>,
        conn: &Connection<Reply>,
        open: OpenSession,
    ) -> Result<GuestSession, OpenError> {
        if conn.is_closed() {
            return Err(OpenError::LinkClosed);
        }
        let (id, slot) = self.register(&open)?;
        let frames = Arc::new(FrameQueue::new(open));
        tokio::spawn(write_frames(id, Arc::clone(&frames), conn.clone()));
        Ok(GuestSession {
            id,
            slot,
            frames,
            table: Arc::clone(self),
            conn: conn.clone(),
        })
    }

    /// A new session's id and slot, in the table.
    fn register(&self, open: &OpenSession) -> Result<(u64, Arc<Slot>), OpenError> {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                rules: SessionState::new(open),
                started: None,
                started_told: false,
                output: VecDeque::new(),
                stdin_granted: 0,
                stdin_closed: false,
                stdin_closed_told: false,
                notices: VecDeque::new(),
                notices_dropped: 0,
                end: None,
                end_told: false,
                ended_by_guest: false,
            }),
            wake: Notify::new(),
        });
        let id = {
            let mut table = self.lock();
            if table.open.len() >= MAX_SESSIONS {
                return Err(OpenError::TooMany);
            }
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(id, Arc::clone(&slot));
            id
        };
        Ok((id, slot))
    }
}

/// What the owner asked to send and the writer has not sent yet, merged
/// where merging loses nothing.
#[derive(Debug)]
struct FrameQueue {
    state: Mutex<Queued>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    open: Option<OpenSession>,
    stdin: VecDeque<StdinData>,
    credit: OutputCredit,
    signals: VecDeque<Signal>,
    resize: Option<WindowSize>,
    close: bool,
    /// Nothing more to send (the session ended).
    done: bool,
}

impl FrameQueue {
    fn new(open: OpenSession) -> FrameQueue {
        FrameQueue {
            state: Mutex::new(Queued {
                open: Some(open),
                ..Queued::default()
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Queued)) {
        change(&mut self.lock());
        self.wake.notify_one();
    }

    /// The next frame to send, in order of urgency: `open` first, then
    /// `close` (the last), signals, the window size, credit, stdin.
    fn next_op(&self) -> Option<Option<SessionOp>> {
        let mut q = self.lock();
        if let Some(open) = q.open.take() {
            return Some(Some(SessionOp::Open(open)));
        }
        if q.close {
            q.done = true;
            return Some(Some(SessionOp::Close));
        }
        if q.done {
            return Some(None);
        }
        if let Some(signal) = q.signals.pop_front() {
            return Some(Some(SessionOp::Signal(SignalRequest { signal })));
        }
        if let Some(size) = q.resize.take() {
            return Some(Some(SessionOp::Resize(size)));
        }
        if q.credit.stdout > 0 || q.credit.stderr > 0 {
            return Some(Some(SessionOp::Credit(std::mem::take(&mut q.credit))));
        }
        q.stdin.pop_front().map(|data| Some(SessionOp::Stdin(data)))
    }
}

/// Send a session's frames, one at a time (each waits until it is written),
/// until the session is over or the link is.
async fn write_frames(id: u64, frames: Arc<FrameQueue>, conn: Connection<Reply>) {
    loop {
        let op = match frames.next_op() {
            Some(Some(op)) => op,
            Some(None) => return,
            None => {
                frames.wake.notified().await;
                continue;
            }
        };
        let closing = op == SessionOp::Close;
        let line = vmkeep_protocol::encode_line(&SessionRequest { session: id, op });
        if conn.send_frame(line).await.is_err() || closing {
            return;
        }
    }
}

/// One session of the guest link, for its owner. Dropping it closes the
/// session (the guest hangs the command up) unless the command ended.
#[derive(Debug)]
pub struct GuestSession {
    id: u64,
    slot: Arc<Slot>,
    frames: Arc<FrameQueue>,
    table: Arc<SessionTable>,
    conn: Connection<Reply>,
}

impl GuestSession {
    /// The session's id on the link.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Stdin the guest may be sent now.
    pub fn stdin_credit(&self) -> u64 {
        self.slot.lock().rules.stdin_credit()
    }

    /// Deliver a signal to the command (see [`SessionOp::Signal`]).
    pub fn signal(&self, signal: Signal) {
        self.frames.update(|q| {
            if q.signals.len() < MAX_QUEUED_SIGNALS {
                q.signals.push_back(signal);
            }
        });
    }

    /// The terminal's new size (pty sessions).
    pub fn resize(&self, size: WindowSize) {
        self.frames.update(|q| q.resize = Some(size));
    }

    /// Queue stdin, checked against the guest's credit.
    pub fn send_stdin(&self, data: Vec<u8>, eof: bool) -> Result<(), SessionError> {
        let mut state = self.slot.lock();
        if let Some(end) = &state.end {
            return Err(SessionError::Over(describe(end)));
        }
        if data.is_empty() && !eof {
            return Ok(());
        }
        let op = state
            .rules
            .stdin(data, eof)
            .map_err(SessionError::Refused)?;
        drop(state);
        if let SessionOp::Stdin(data) = op {
            self.frames.update(|q| q.stdin.push_back(data));
        }
        Ok(())
    }

    /// Output taken: grant as much again.
    pub fn grant(&self, stream: Stream, bytes: usize) {
        let credit = OutputCredit::of(stream, bytes as u64);
        {
            let mut state = self.slot.lock();
            if state.end.is_some() {
                return;
            }
            let _ = state.rules.grant(credit);
        }
        self.frames.update(|q| {
            q.credit.stdout = q.credit.stdout.saturating_add(credit.stdout);
            q.credit.stderr = q.credit.stderr.saturating_add(credit.stderr);
        });
    }

    /// The next update, if there is one now.
    fn take(&self) -> Option<Update> {
        let mut state = self.slot.lock();
        if let (Some(pid), false) = (state.started, state.started_told) {
            state.started_told = true;
            return Some(Update::Started { pid });
        }
        if let Some(notice) = state.notices.pop_front() {
            return Some(Update::Notice(notice));
        }
        if state.stdin_granted > 0 {
            return Some(Update::StdinCredit(std::mem::take(
                &mut state.stdin_granted,
            )));
        }
        if state.stdin_closed && !state.stdin_closed_told {
            state.stdin_closed_told = true;
            return Some(Update::StdinClosed);
        }
        if let Some((stream, data)) = state.output.pop_front() {
            return Some(Update::Output { stream, data });
        }
        if state.end_told {
            return Some(Update::End(End::Broken("the session is over".into())));
        }
        if let Some(end) = state.end.clone() {
            state.end_told = true;
            if state.notices_dropped > 0 {
                tracing::warn!(
                    session = self.id,
                    dropped = state.notices_dropped,
                    "the guest sent more refusals than were kept"
                );
            }
            return Some(Update::End(end));
        }
        None
    }

    /// The next update (cancel-safe).
    pub async fn next_update(&self) -> Update {
        loop {
            if let Some(update) = self.take() {
                return update;
            }
            tokio::select! {
                () = self.slot.wake.notified() => {}
                () = self.conn.closed() => {
                    let reason = self
                        .conn
                        .close_reason()
                        .map(|r| crate::text::chain::error_chain(&*r))
                        .unwrap_or_else(|| "it ended".into());
                    let mut state = self.slot.lock();
                    if state.end.is_none() {
                        state.end = Some(End::Broken(format!(
                            "the guest-agent link was lost ({reason}); the guest hangs the command up"
                        )));
                    }
                    drop(state);
                    self.table.forget(self.id);
                }
            }
        }
    }
}

fn describe(end: &End) -> String {
    match end {
        End::Exited(status) => format!("the command ended (exit {})", status.shell_code()),
        End::Failed(failure) => format!("the command did not start: {}", failure.message),
        End::Broken(message) => message.clone(),
    }
}

impl SessionStream for GuestSession {
    fn next(&self) -> impl std::future::Future<Output = Update> + Send {
        self.next_update()
    }

    fn consumed(
        &self,
        stream: Stream,
        bytes: usize,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.grant(stream, bytes);
        std::future::ready(())
    }

    fn stdin(
        &self,
        data: Vec<u8>,
        eof: bool,
    ) -> impl std::future::Future<Output = Result<(), SessionError>> + Send {
        std::future::ready(self.send_stdin(data, eof))
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        let ended_by_guest = self.slot.lock().ended_by_guest;
        self.table.forget(self.id);
        self.frames.update(|q| {
            if ended_by_guest {
                q.done = true;
            } else {
                q.close = true;
            }
        });
    }
}

/// The fuzz check of what guest lines make a session table hold
/// (`fuzzing::guest_sessions`): byte 0 picks how many sessions are open
/// (1 to 4, the first on a pty) and how the owner takes updates; the rest
/// are lines of the guest's, their session ids mapped onto the open ones
/// (and one that is not). Whatever comes, each session holds no more output
/// than it granted, no more than [`MAX_QUEUED_NOTICES`] refusals, each
/// escaped, and a session that ended has left the table.
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_deliveries(data: &[u8]) {
    use vmkeep_protocol::session::{INITIAL_OUTPUT_CREDIT, PtyRequest};

    use crate::link::guest_link::client::GuestEvent;
    use crate::link::line_rpc::Incoming;

    let Some((&mode, lines)) = data.split_first() else {
        return;
    };
    let count = usize::from(mode % 4) + 1;
    let table = SessionTable::default();
    let base = table.lock().next_id;
    let mut slots = Vec::new();
    for i in 0..count {
        let open = OpenSession {
            pty: (i == 0).then_some(PtyRequest {
                rows: 24,
                cols: 80,
                term: None,
            }),
            ..OpenSession::default()
        };
        let (_, slot) = table.register(&open).expect("room for four");
        slots.push((slot, [INITIAL_OUTPUT_CREDIT; 2], [0u64; 2]));
    }
    for (n, line) in lines.split(|b| *b == b'\n').enumerate() {
        if let Ok(Incoming::Event(GuestEvent::Session { id, event })) =
            crate::link::guest_link::sort_line(line)
        {
            table.deliver(base + id % (count as u64 + 1), event);
        }
        for (index, (slot, granted, taken)) in slots.iter_mut().enumerate() {
            let mut state = slot.lock();
            let mut held = [0u64; 2];
            for (stream, data) in &state.output {
                held[stream.index()] += data.len() as u64;
                assert!(
                    !data.is_empty() && data.len() <= vmkeep_protocol::session::MAX_CHUNK_BYTES
                );
            }
            for stream in 0..2 {
                assert!(
                    held[stream] <= granted[stream] - taken[stream],
                    "holding {} bytes with {} granted and {} taken",
                    held[stream],
                    granted[stream],
                    taken[stream]
                );
            }
            assert!(state.notices.len() <= MAX_QUEUED_NOTICES);
            for notice in &state.notices {
                assert!(!notice.chars().any(char::is_control), "{notice:?}");
            }
            if let Some(End::Failed(failure)) = &state.end {
                assert!(!failure.message.chars().any(char::is_control));
            }
            if state.end.is_some() {
                assert!(!table.lock().open.contains_key(&(base + index as u64)));
            }
            // The owner takes the oldest output now and then, and grants it back.
            if (usize::from(mode) >> 2).is_multiple_of(n % 3 + 1)
                && let Some((stream, data)) = state.output.pop_front()
            {
                let len = data.len() as u64;
                taken[stream.index()] += len;
                granted[stream.index()] += len;
                let _ = state.rules.grant(OutputCredit::of(stream, len));
            }
            state.notices.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use vmkeep_protocol::FromGuest;
    use vmkeep_protocol::session::{
        ExitStatus, INITIAL_OUTPUT_CREDIT, MAX_CHUNK_BYTES, OutputData, STDIN_WINDOW,
    };

    use super::*;
    use crate::link::guest_link::LIMITS;
    use crate::link::guest_link::client::GuestEvent;
    use crate::link::line_rpc::Incoming;

    const T: Duration = Duration::from_secs(10);

    /// A link whose guest is `peer`: session events go to the table as the
    /// real client routes them.
    fn link_and_peer() -> (Arc<SessionTable>, Connection<Reply>, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let table = Arc::new(SessionTable::default());
        let routed = Arc::clone(&table);
        let (conn, _events) = Connection::new(ours, LIMITS, move |line: &[u8]| {
            Ok(match crate::link::guest_link::sort_line(line)? {
                Incoming::Event(GuestEvent::Session { id, event }) => {
                    routed.deliver(id, event);
                    Incoming::<Reply, ()>::Ignore
                }
                _ => Incoming::Ignore,
            })
        });
        (table, conn, peer)
    }

    async fn send(peer: &mut UnixStream, id: u64, event: SessionEvent) {
        let line = vmkeep_protocol::encode_line(&FromGuest::Session { id, event });
        peer.write_all(&line).await.unwrap();
    }

    fn output(len: usize) -> SessionEvent {
        SessionEvent::Output(OutputData {
            stream: Stream::Stdout,
            data: vec![b'x'; len],
        })
    }

    async fn next(session: &GuestSession) -> Update {
        tokio::time::timeout(T, session.next_update())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_session_opens_streams_and_ends_and_its_frames_reach_the_guest() {
        let (table, conn, peer) = link_and_peer();
        let session = table.open(&conn, OpenSession::default()).unwrap();
        let id = session.id();
        let (read, write) = peer.into_split();
        let mut lines = BufReader::new(read).lines();
        let frame = |line: String| -> SessionRequest { serde_json::from_str(&line).unwrap() };
        let open = frame(lines.next_line().await.unwrap().unwrap());
        assert_eq!(
            (open.session, open.op),
            (id, SessionOp::Open(OpenSession::default()))
        );
        let mut peer = write.reunite(lines.into_inner().into_inner()).unwrap();
        session.send_stdin(b"abc".to_vec(), false).unwrap();
        send(&mut peer, id, SessionEvent::Started { pid: 7 }).await;
        send(&mut peer, id, output(5)).await;
        send(&mut peer, id, SessionEvent::StdinCredit { bytes: 3 }).await;
        send(&mut peer, id, SessionEvent::Exited(ExitStatus::exited(4))).await;
        // Updates come as the events arrive; the end comes last.
        let mut seen = Vec::new();
        loop {
            let update = next(&session).await;
            if let Update::Output { stream, data } = &update {
                session.grant(*stream, data.len());
            }
            let end = matches!(update, Update::End(_));
            seen.push(update);
            if end {
                break;
            }
        }
        // (Output and the credit may come in either order.)
        seen[1..3].sort_by_key(|u| format!("{u:?}"));
        assert_eq!(
            seen,
            [
                Update::Started { pid: 7 },
                Update::Output {
                    stream: Stream::Stdout,
                    data: vec![b'x'; 5]
                },
                Update::StdinCredit(3),
                Update::End(End::Exited(ExitStatus::exited(4))),
            ]
        );
        assert_eq!(table.open_count(), 0, "an exited session leaves the table");
        // A late event for it is dropped.
        send(&mut peer, id, output(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(table.open_count(), 0);
    }

    #[tokio::test]
    async fn output_beyond_the_credit_breaks_the_session_and_the_guest_is_told_to_close_it() {
        let (table, conn, peer) = link_and_peer();
        let session = table.open(&conn, OpenSession::default()).unwrap();
        let id = session.id();
        let (read, mut write) = peer.into_split();
        let mut lines = BufReader::new(read).lines();
        lines.next_line().await.unwrap(); // open
        let started = FromGuest::Session {
            id,
            event: SessionEvent::Started { pid: 7 },
        };
        write
            .write_all(&vmkeep_protocol::encode_line(&started))
            .await
            .unwrap();
        // Exactly the credit, then one byte more, without a grant between.
        let chunks = INITIAL_OUTPUT_CREDIT as usize / MAX_CHUNK_BYTES;
        for _ in 0..chunks {
            let line = vmkeep_protocol::encode_line(&FromGuest::Session {
                id,
                event: output(MAX_CHUNK_BYTES),
            });
            write.write_all(&line).await.unwrap();
        }
        let line = vmkeep_protocol::encode_line(&FromGuest::Session {
            id,
            event: output(1),
        });
        write.write_all(&line).await.unwrap();
        let mut outputs = 0;
        let end = loop {
            match next(&session).await {
                Update::Output { .. } => outputs += 1,
                Update::End(end) => break end,
                _ => {}
            }
        };
        assert_eq!(outputs, chunks, "what came within the credit was delivered");
        assert!(
            matches!(&end, End::Broken(why) if why.contains("protocol")),
            "{end:?}"
        );
        drop(session);
        let close = lines.next_line().await.unwrap().unwrap();
        let close: SessionRequest = serde_json::from_str(&close).unwrap();
        assert_eq!((close.session, close.op), (id, SessionOp::Close));
    }

    #[tokio::test]
    async fn stdin_is_held_to_the_window_and_a_lost_link_ends_every_session() {
        let (table, conn, peer) = link_and_peer();
        let a = table.open(&conn, OpenSession::default()).unwrap();
        let b = table.open(&conn, OpenSession::default()).unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.stdin_credit(), STDIN_WINDOW);
        for _ in 0..STDIN_WINDOW as usize / MAX_CHUNK_BYTES {
            a.send_stdin(vec![0; MAX_CHUNK_BYTES], false).unwrap();
        }
        assert!(matches!(
            a.send_stdin(vec![0], false),
            Err(SessionError::Refused(_))
        ));
        drop(peer);
        for session in [&a, &b] {
            assert!(
                matches!(next(session).await, Update::End(End::Broken(why)) if why.contains("link was lost"))
            );
        }
        assert!(matches!(
            table.open(&conn, OpenSession::default()),
            Err(OpenError::LinkClosed)
        ));
    }

    #[tokio::test]
    async fn at_most_max_sessions_are_open_and_refusals_are_kept_bounded() {
        let (table, conn, mut peer) = link_and_peer();
        let sessions: Vec<GuestSession> = (0..MAX_SESSIONS)
            .map(|_| table.open(&conn, OpenSession::default()).unwrap())
            .collect();
        assert!(matches!(
            table.open(&conn, OpenSession::default()),
            Err(OpenError::TooMany)
        ));
        let id = sessions[0].id();
        for _ in 0..10 * MAX_QUEUED_NOTICES {
            let message = "\u{1b}[2J".repeat(MAX_EVENT_MESSAGE_BYTES / 4);
            send(&mut peer, id, SessionEvent::Error { message }).await;
        }
        send(&mut peer, id, SessionEvent::Started { pid: 1 }).await;
        // Once started is in, every refusal before it was handled: what is
        // held is bounded, the rest counted.
        let slot = &sessions[0].slot;
        let until = tokio::time::Instant::now() + T;
        while slot.lock().started.is_none() {
            assert!(tokio::time::Instant::now() < until, "started never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        {
            let state = slot.lock();
            assert_eq!(state.notices.len(), MAX_QUEUED_NOTICES);
            assert_eq!(state.notices_dropped as usize, 9 * MAX_QUEUED_NOTICES);
            assert!(
                state.notices.iter().all(|n| !n.contains('\u{1b}')),
                "escaped"
            );
        }
    }
}
