//! A hostile guest against the host's real code paths: the guest link and
//! the QMP client over real unix sockets, with a fake peer (a thread of this
//! test) sending oversized lines, invalid UTF-8, floods, lines that never
//! end and stalls mid-message; and a real VM flooding its serial console.
//!
//! Memory is measured, not guessed: this binary's allocator counts the bytes
//! live on each thread, and the client runs on the test's thread (a
//! current-thread runtime) while the fake peer runs on its own, so a test
//! reads how much the host side held at its peak. Bounds are in bytes; the
//! only times are generous request timeouts and deadlines for things that
//! take milliseconds.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use vmkeep::driver::qemu::qmp::{self, Qmp, QmpError, QmpEvent, RunState, StatusInfo};
use vmkeep::link::guest_link::{self, GuestLink, GuestLinkError, GuestOp};
use vmkeep::link::line_rpc::CloseReason;
use vmkeep_protocol::{
    ExecRequest, ExecResult, FromGuest, GuestInfo, MAX_LINE_BYTES, MAX_MESSAGE_BYTES, Op, Reply,
    Request,
};

// ---------------------------------------------------------------------------
// Counting allocator: bytes live on the current thread, and their peak.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    // The host side across its threads (the fake peer's excluded): for
    // memory handed from one thread to another (a copy's chunks, freed by
    // the thread that writes them). nextest runs each test in a process of
    // its own, so no other test counts here.
    if !PEER_THREAD.try_with(Cell::get).unwrap_or(true) {
        let now = HOST_LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
        HOST_PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

thread_local! {
    /// This thread plays the peer (its allocations are not the host's).
    static PEER_THREAD: Cell<bool> = const { Cell::new(false) };
}
static HOST_LIVE: AtomicIsize = AtomicIsize::new(0);
static HOST_PEAK: AtomicIsize = AtomicIsize::new(0);

/// Measures the peak of bytes the host side held, on all its threads.
struct HostPeak {
    base: isize,
}

impl HostPeak {
    fn start() -> HostPeak {
        let base = HOST_LIVE.load(Ordering::Relaxed);
        HOST_PEAK.store(base, Ordering::Relaxed);
        HostPeak { base }
    }

    fn bytes(&self) -> usize {
        (HOST_PEAK.load(Ordering::Relaxed) - self.base).max(0) as usize
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are plain thread-local cells without destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measures the peak of bytes held by this thread from its creation on.
struct Peak {
    base: isize,
}

impl Peak {
    fn start() -> Peak {
        let base = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(base));
        Peak { base }
    }

    /// The most bytes held at once since `start`, above what was held then.
    fn bytes(&self) -> usize {
        (PEAK.with(Cell::get) - self.base).max(0) as usize
    }
}

const MIB: usize = 1024 * 1024;
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Log capture: what the host agent would write to ha.log.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn lines_with(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture this thread's logs at the host agent's level (info) until the
/// guard is dropped.
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

// ---------------------------------------------------------------------------
// The fake peer: a thread with a blocking socket.

struct Peer {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Peer {
    fn new(stream: UnixStream) -> Peer {
        Peer {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// The next line the host sent, or `None` at the end.
    fn recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    fn recv(&mut self) -> Option<Request> {
        self.recv_line()
            .map(|line| vmkeep_protocol::decode_line(line.as_bytes()).unwrap())
    }

    /// Write, as the guest would; false once the host has hung up.
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).is_ok()
    }

    fn answer(&mut self, request: &Request, body: Reply) -> bool {
        self.send(&vmkeep_protocol::encode_line(&FromGuest::Reply {
            id: request.id,
            body,
        }))
    }

    /// Write `bytes` over and over (no newline in them) until the host hangs
    /// up or `limit` bytes went out; how many did.
    fn endless(&mut self, bytes: &[u8], limit: usize) -> usize {
        let mut sent = 0;
        while sent < limit && self.send(bytes) {
            sent += bytes.len();
        }
        sent
    }
}

fn info() -> GuestInfo {
    GuestInfo {
        kernel: "6.1.0-test".into(),
        boot_id: "b00t".into(),
        uptime_secs: 1.0,
        agent_version: "0.1.0".into(),
        data_mount: None,
        data_disk: None,
    }
}

/// A guest-agent socket in a temp dir, and a thread playing the guest on its
/// first connection.
fn fake_guest<T: Send + 'static>(
    play: impl FnOnce(Peer) -> T + Send + 'static,
) -> (tempfile::TempDir, PathBuf, JoinHandle<T>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let guest = std::thread::spawn(move || {
        PEER_THREAD.with(|peer| peer.set(true));
        play(Peer::new(listener.accept().unwrap().0))
    });
    (dir, path, guest)
}

/// Answer the host's Hello as a ready guest.
fn hello(peer: &mut Peer) {
    let hello = peer.recv().unwrap();
    assert_eq!(hello.op, Op::Hello);
    peer.answer(
        &hello,
        Reply::Hello {
            ready: true,
            info: info(),
        },
    );
}

fn closed_by_a_long_line(error: &GuestLinkError) -> Option<usize> {
    match error {
        GuestLinkError::Closed { reason, .. } => match **reason {
            CloseReason::LineTooLong { max } => Some(max),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The guest link.

#[tokio::test]
async fn a_reply_that_never_ends_closes_the_link_at_the_message_cap_holding_little() {
    let (_dir, path, guest) = fake_guest(|mut peer| {
        let hello = peer.recv().unwrap();
        peer.send(format!(r#"{{"reply":{{"id":{},"body":{{"hello":"#, hello.id).as_bytes());
        // No newline, ever: 256 MiB at most, unless the host hangs up first.
        peer.endless(&[b'x'; 64 * 1024], 256 * MIB)
    });
    let peak = Peak::start();
    let error = GuestLink::connect(&path, T).await.unwrap_err();
    assert_eq!(
        closed_by_a_long_line(&error),
        Some(MAX_MESSAGE_BYTES),
        "{error:?}"
    );
    let held = peak.bytes();
    let sent = guest.join().unwrap();
    assert!(sent < 256 * MIB, "the host read everything the guest sent");
    // One capped line and the reader's buffers; not the 64 MiB a line could
    // take before, nor what the guest kept sending.
    assert!(held < 3 * MIB, "the host held {held} bytes");
}

#[tokio::test]
async fn an_exec_reply_may_be_long_but_not_longer_than_the_exec_cap() {
    let stdout = vec![0x5a; 10 * MIB];
    let expected = stdout.clone();
    let (_dir, path, guest) = fake_guest(move |mut peer| {
        hello(&mut peer);
        // A legitimate large output is read whole.
        let exec = peer.recv().unwrap();
        let result = ExecResult {
            exit_code: 0,
            stdout,
            stderr: vec![],
        };
        peer.answer(&exec, Reply::Exec(result));
        // An exec reply over the cap ends the connection.
        let exec = peer.recv().unwrap();
        peer.send(
            format!(
                r#"{{"reply":{{"id":{},"body":{{"exec":{{"exit_code":0,"stderr":"","stdout":""#,
                exec.id
            )
            .as_bytes(),
        );
        peer.endless(&[b'A'; 64 * 1024], MAX_LINE_BYTES + 4 * MIB)
    });
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let cat = || ExecRequest {
        argv: vec!["cat".into(), "/big".into()],
        stdin: vec![],
        env: vec![],
        cwd: None,
    };
    let result = link.exec(cat(), T).await.unwrap();
    assert_eq!(result.stdout, expected);
    drop(result);

    let peak = Peak::start();
    let error = link.exec(cat(), T).await.unwrap_err();
    assert_eq!(
        closed_by_a_long_line(&error),
        Some(MAX_LINE_BYTES),
        "{error:?}"
    );
    let held = peak.bytes();
    guest.join().unwrap();
    // The line buffer grows by doubling up to the cap: at most twice it.
    assert!(
        held <= 2 * MAX_LINE_BYTES + MIB,
        "the host held {held} bytes"
    );
}

#[tokio::test]
async fn invalid_utf8_garbage_and_stray_replies_are_skipped_and_logged_thinly() {
    const FLOOD: usize = 100_000;
    let (_dir, path, guest) = fake_guest(|mut peer| {
        hello(&mut peer);
        let ping = peer.recv().unwrap();
        for n in 0..FLOOD {
            let line: &[u8] = match n % 4 {
                0 => b"\xff\xfe\xfd not utf-8 \xc3\x28\n",
                1 => b"{\"reply\": {\"id\": 1, \"body\": \"\\u001b]0;owned\\u0007\"}}\n",
                2 => b"{\"reply\":{\"id\":999999,\"body\":\"pong\"}}\n",
                _ => b"{\"ready\": {\"kernel\": \"\\u001b[2J\", \"boot_id\": \"x\", \"uptime_secs\": 1, \"agent_version\": \"v\"}}\n",
            };
            if !peer.send(line) {
                return false;
            }
        }
        peer.answer(&ping, Reply::Pong)
    });
    let (logs, _guard) = capture_logs();
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let peak = Peak::start();
    link.ping(T).await.unwrap();
    let held = peak.bytes();
    assert!(guest.join().unwrap(), "the guest could send its flood");
    assert!(held < MIB, "the host held {held} bytes");
    // 75 000 malformed lines (the stray replies are dropped quietly): a few
    // log lines, each short and without the guest's control characters.
    let logged = logs.lines_with("skipping a malformed line");
    assert!(
        (10..=40).contains(&logged),
        "{logged} lines:\n{}",
        logs.text()
    );
    assert!(!logs.text().contains('\u{1b}'), "{}", logs.text());
    assert!(
        logs.text().len() < 40_000,
        "{} bytes of log",
        logs.text().len()
    );
}

#[tokio::test]
async fn a_stall_mid_reply_costs_the_request_its_timeout_and_the_link_recovers() {
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let (_dir, path, guest) = fake_guest(move |mut peer| {
        hello(&mut peer);
        let ping = peer.recv().unwrap();
        let line = vmkeep_protocol::encode_line(&FromGuest::Reply {
            id: ping.id,
            body: Reply::Pong,
        });
        let (first, rest) = line.split_at(line.len() / 2);
        peer.send(first);
        // Stall until the host has given up on the ping.
        resume_rx.recv().unwrap();
        peer.send(rest);
        let info = peer.recv().unwrap();
        peer.answer(&info, Reply::Info(self::info()));
    });
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let short = Duration::from_millis(300);
    match link.ping(short).await {
        Err(GuestLinkError::Timeout { op, after }) => {
            assert_eq!(op, GuestOp::Ping);
            assert_eq!(after, short);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    resume_tx.send(()).unwrap();
    // The late half completes a reply nobody waits for; the next request
    // works on the same connection.
    assert_eq!(link.info(T).await.unwrap(), info());
    guest.join().unwrap();
}

#[tokio::test]
async fn a_guest_that_stops_reading_holds_the_host_to_the_requests_still_waiting() {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (_dir, path, guest) = fake_guest(move |mut peer| {
        hello(&mut peer);
        // Never read again, and keep the socket open until the test is done.
        done_rx.recv().unwrap();
    });
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let before = LIVE.with(Cell::get);
    // Two dozen execs with a megabyte of stdin each (1.4 MB on the wire):
    // the socket's buffer fills with the first, the rest wait their turn and
    // time out.
    for _ in 0..24 {
        let request = ExecRequest {
            argv: vec!["cat".into()],
            stdin: vec![0x42; MIB],
            env: vec![],
            cwd: None,
        };
        match link.exec(request, Duration::from_millis(50)).await {
            Err(GuestLinkError::Timeout {
                op: GuestOp::Exec, ..
            }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    let held = (LIVE.with(Cell::get) - before).max(0) as usize;
    // The line being written stays (the writer is blocked on it); the lines
    // of requests that timed out before their turn are gone.
    assert!(held < 3 * MIB, "the host holds {held} bytes");
    drop(link);
    done_tx.send(()).unwrap();
    guest.join().unwrap();
}

#[tokio::test]
async fn wait_ready_gives_up_on_a_guest_that_stalls_mid_hello_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let guest = std::thread::spawn(move || {
        let mut stalled = Vec::new();
        loop {
            let mut peer = Peer::new(listener.accept().unwrap().0);
            match peer.recv_line() {
                Some(line) if line == "done\n" => return stalled.len(),
                Some(_hello) => {
                    peer.send(br#"{"reply":{"id":1,"bo"#);
                    // Keep the connection open, mid-message.
                    stalled.push(peer);
                }
                None => {}
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    match guest_link::wait_ready(&path, deadline).await {
        Err(GuestLinkError::NotReady { last, .. }) => assert!(
            matches!(
                last.as_deref(),
                Some(GuestLinkError::Timeout {
                    op: GuestOp::Hello,
                    ..
                })
            ),
            "{last:?}"
        ),
        other => panic!("expected NotReady, got {other:?}"),
    }
    UnixStream::connect(&path)
        .unwrap()
        .write_all(b"done\n")
        .unwrap();
    let connections = guest.join().unwrap();
    assert!(connections >= 1, "the host connected");
}

// ---------------------------------------------------------------------------
// The QMP client.

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

fn fake_qemu<T: Send + 'static>(
    play: impl FnOnce(Peer) -> T + Send + 'static,
) -> (tempfile::TempDir, PathBuf, JoinHandle<T>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let qemu = std::thread::spawn(move || play(Peer::new(listener.accept().unwrap().0)));
    (dir, path, qemu)
}

/// Greet and accept `qmp_capabilities`.
fn handshake(peer: &mut Peer) {
    peer.send(format!("{GREETING}\r\n").as_bytes());
    let request: serde_json::Value = serde_json::from_str(&peer.recv_line().unwrap()).unwrap();
    assert_eq!(request["execute"], "qmp_capabilities");
    peer.send(format!("{}\r\n", json!({"return": {}, "id": request["id"]})).as_bytes());
}

fn reply_to_next(peer: &mut Peer, value: serde_json::Value) -> bool {
    let Some(line) = peer.recv_line() else {
        return false;
    };
    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
    peer.send(format!("{}\r\n", json!({"return": value, "id": request["id"]})).as_bytes())
}

#[tokio::test]
async fn a_greeting_that_never_ends_fails_connect_at_the_cap_holding_little() {
    let (_dir, path, qemu) = fake_qemu(|mut peer| {
        peer.send(br#"{"QMP": {"version": ""#);
        peer.endless(&[b'7'; 64 * 1024], 256 * MIB)
    });
    let peak = Peak::start();
    match Qmp::connect(&path, T).await {
        Err(QmpError::ClosedBeforeGreeting {
            reason: Some(reason),
            ..
        }) => assert!(
            matches!(*reason, CloseReason::LineTooLong { max } if max == qmp::MAX_MESSAGE_BYTES),
            "{reason:?}"
        ),
        other => panic!("expected ClosedBeforeGreeting, got {other:?}"),
    }
    let held = peak.bytes();
    assert!(qemu.join().unwrap() < 256 * MIB);
    assert!(held < 3 * MIB, "the client held {held} bytes");
}

#[tokio::test]
async fn a_flood_of_events_nobody_takes_is_held_bounded_and_logged_by_name_thinly() {
    const FLOOD: usize = 200_000;
    let (qemu_done_tx, qemu_done_rx) = mpsc::channel::<()>();
    let (_dir, path, qemu) = fake_qemu(move |mut peer| {
        handshake(&mut peer);
        // Events vmkeep knows and one it does not, before the reply.
        let status = peer.recv_line().unwrap();
        for n in 0..FLOOD {
            let event = if n % 2 == 0 {
                r#"{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#
            } else {
                r#"{"event": "X_FROM_A_NEWER_QEMU", "data": {"n": 1}, "timestamp": {"seconds": 1, "microseconds": 2}}"#
            };
            if !peer.send(format!("{event}\r\n").as_bytes()) {
                return false;
            }
        }
        let request: serde_json::Value = serde_json::from_str(&status).unwrap();
        let reply = json!({"return": {"status": "running", "running": true}, "id": request["id"]});
        peer.send(format!("{reply}\r\n").as_bytes());
        // Keep the connection until the test has read the events.
        qemu_done_rx.recv().unwrap();
        true
    });
    let (logs, _guard) = capture_logs();
    let (qmp, mut events) = Qmp::connect(&path, T).await.unwrap();
    let peak = Peak::start();
    let status = qmp.query_status(T).await.unwrap();
    assert_eq!(
        status,
        StatusInfo {
            running: true,
            status: RunState::Running
        }
    );
    let held = peak.bytes();
    // The event queue holds about 4 MiB of events (5.3 MiB measured with
    // the parsed events' overhead); the flood was 22 MB.
    assert!(held < 8 * MIB, "the client held {held} bytes");

    qemu_done_tx.send(()).unwrap();
    assert!(qemu.join().unwrap());
    drop(qmp);
    let mut taken = 0;
    while let Some(event) = events.next().await {
        let expected_name = if taken % 2 == 0 {
            "RESET"
        } else {
            "X_FROM_A_NEWER_QEMU"
        };
        assert_eq!(event.name(), expected_name, "the first events, in order");
        taken += 1;
    }
    assert!(taken > 1000 && taken < FLOOD, "{taken} events were kept");

    // Every event name is in the log, the unknown one too, and a flood of a
    // name is logged thinly (about 10 + log2(100 000) lines each).
    let text = logs.text();
    let resets = logs.lines_with("QMP event: RESET (guest: true, reason: guest-reset)");
    let unknown = logs.lines_with("QMP event vmkeep does not handle: X_FROM_A_NEWER_QEMU");
    assert!((10..=40).contains(&resets), "{resets}:\n{text}");
    assert!((10..=40).contains(&unknown), "{unknown}:\n{text}");
    assert!(logs.lines_with("dropping one") <= 40, "{text}");
}

#[tokio::test]
async fn typed_events_arrive_typed_and_an_io_error_status_reads_as_such() {
    let (_dir, path, qemu) = fake_qemu(|mut peer| {
        handshake(&mut peer);
        for event in [
            json!({"event": "BLOCK_IO_ERROR", "data": {"device": "data", "node-name": "#block1", "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device"}}),
            json!({"event": "STOP"}),
            json!({"event": "GUEST_PANICKED", "data": {"action": "pause"}}),
        ] {
            peer.send(format!("{event}\r\n").as_bytes());
        }
        reply_to_next(
            &mut peer,
            json!({"status": "io-error", "singlestep": false, "running": false}),
        )
    });
    let (qmp, mut events) = Qmp::connect(&path, T).await.unwrap();
    assert_eq!(
        qmp.query_status(T).await.unwrap(),
        StatusInfo {
            running: false,
            status: RunState::IoError
        }
    );
    match events.next().await {
        Some(QmpEvent::BlockIoError(error)) => {
            assert_eq!(error.device, "data");
            assert_eq!(error.node_name.as_deref(), Some("#block1"));
            assert_eq!(error.operation, qmp::IoOperation::Write);
            assert_eq!(error.action, qmp::BlockErrorAction::Stop);
            assert!(error.nospace);
            assert_eq!(error.reason, "No space left on device");
        }
        other => panic!("expected BLOCK_IO_ERROR, got {other:?}"),
    }
    assert_eq!(events.next().await, Some(QmpEvent::Stop));
    assert_eq!(
        events.next().await,
        Some(QmpEvent::GuestPanicked {
            action: qmp::GuestPanicAction::Pause
        })
    );
    assert!(qemu.join().unwrap());
}

// ---------------------------------------------------------------------------
// A real guest flooding its serial console.

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn vm_a_guest_flooding_its_console_cannot_grow_serial_log_beyond_its_bound() {
    const MAX: u64 = 64 * 1024;
    const KEEP: u64 = MAX / 4;
    const FLOOD: u64 = 1_000_000;
    let env = common::TestEnv::new();
    env.ok(&["create", "flood"]);
    let mut start = env.command(&["start", "flood"]);
    start.env("VMKEEP_SERIAL_LOG_MAX", MAX.to_string());
    let started = start.output().unwrap();
    assert!(
        started.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let dir = env.instance_dir("flood");
    let log = dir.join("serial.log");
    let previous = dir.join("serial.log.1");

    // A megabyte of console output from a process in the guest, then a
    // marker line.
    let flood = format!(
        "head -c {FLOOD} /dev/zero | tr '\\0' x > /dev/ttyS0; echo; echo flood-ends-here > /dev/ttyS0"
    );
    env.ok(&["shell", "flood", "--", "sh", "-c", &flood]);

    // The host agent's next check cuts the log (it looks every second).
    let within = common::wait_until(Duration::from_secs(30), || {
        (file_len(&log) <= MAX).then_some(())
    });
    assert!(
        within.is_some(),
        "serial.log stayed at {} bytes",
        file_len(&log)
    );
    let previous_len = file_len(&previous);
    assert!(previous_len > 0, "serial.log was never cut");
    // The cut keeps the newest KEEP bytes (plus what QEMU wrote during the
    // microseconds of the cut itself).
    assert!(
        previous_len <= KEEP + 4096,
        "serial.log.1 is {previous_len} bytes"
    );
    let held = file_len(&log) + previous_len;
    assert!(held < FLOOD / 4, "{held} bytes held for {FLOOD} written");

    // The newest output is readable across the two files, and QEMU kept
    // appending from the start of the cut file (no hole of zeros).
    let mut text = std::fs::read(&previous).unwrap();
    let current = std::fs::read(&log).unwrap();
    assert!(
        !current.starts_with(b"\0"),
        "a hole at the start of serial.log"
    );
    text.extend_from_slice(&current);
    assert!(
        String::from_utf8_lossy(&text).contains("flood-ends-here"),
        "the newest output was lost"
    );

    // The guest is still served.
    let echo = env.ok(&["shell", "flood", "--", "echo", "still-here"]);
    assert_eq!(echo.stdout(), "still-here\n");
    env.ok(&["stop", "flood"]);
}

// ---------------------------------------------------------------------------
// Copies out of a hostile guest: the fake guest answers a copy-out session
// with an archive of its own making.

mod hostile_copy {
    use super::*;
    use vmkeep::session::copy_out::{CopyOutError, Limits, copy_out};
    use vmkeep_protocol::session::{
        ExitStatus, MAX_CHUNK_BYTES, OpenSession, OutputData, SessionEvent, SessionOp,
        SessionRequest, Stream,
    };

    /// An archive entry as raw bytes (the format of
    /// `vmkeep_protocol::archive`), whatever its path says.
    pub fn entry(kind: u8, mode: u32, size: u64, path: &[u8], target: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'E', kind];
        bytes.extend_from_slice(&mode.to_le_bytes());
        bytes.extend_from_slice(&1_600_000_000i64.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&(path.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&(target.len() as u16).to_le_bytes());
        bytes.extend_from_slice(path);
        bytes.extend_from_slice(target);
        bytes
    }

    pub fn end(entries: u64, bytes: u64) -> Vec<u8> {
        let mut out = vec![b'Z'];
        for n in [entries, 0, bytes] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// A session frame from the host.
    fn frame(peer: &mut Peer) -> Option<SessionRequest> {
        let line = peer.recv_line()?;
        Some(serde_json::from_str(&line).expect("a session frame"))
    }

    fn event(peer: &mut Peer, id: u64, event: SessionEvent) -> bool {
        peer.send(&vmkeep_protocol::encode_line(&FromGuest::Session {
            id,
            event,
        }))
    }

    /// Play the guest of one copy-out session: `archive` as its stdout
    /// (`honour_credit`: within the host's credit, as a guest must; else all
    /// at once), then exit 0. Returns how many bytes of it went out.
    pub fn serve(peer: Peer, archive: impl Iterator<Item = Vec<u8>>, honour_credit: bool) -> u64 {
        serve_reporting(peer, archive, honour_credit, None)
    }

    fn serve_reporting(
        mut peer: Peer,
        mut archive: impl Iterator<Item = Vec<u8>>,
        honour_credit: bool,
        report: Option<std::sync::mpsc::Sender<u64>>,
    ) -> u64 {
        hello(&mut peer);
        let open = frame(&mut peer).unwrap();
        assert!(matches!(open.op, SessionOp::Open(_)), "{open:?}");
        let id = open.session;
        event(&mut peer, id, SessionEvent::Started { pid: 42 });
        let mut credit: u64 = 256 * 1024;
        let mut sent = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            if pending.is_empty() {
                match archive.next() {
                    Some(chunk) => pending = chunk,
                    None => break,
                }
            }
            while honour_credit && credit == 0 {
                match frame(&mut peer) {
                    Some(SessionRequest {
                        op: SessionOp::Credit(granted),
                        ..
                    }) => credit += granted.stdout,
                    Some(SessionRequest {
                        op: SessionOp::Close,
                        ..
                    })
                    | None => return sent,
                    Some(_) => {}
                }
            }
            let mut n = pending.len().min(MAX_CHUNK_BYTES);
            if honour_credit {
                n = n.min(credit as usize);
                credit -= n as u64;
            }
            let rest = pending.split_off(n);
            let data = std::mem::replace(&mut pending, rest);
            sent += n as u64;
            let output = SessionEvent::Output(OutputData {
                stream: Stream::Stdout,
                data,
            });
            if !event(&mut peer, id, output) {
                return sent;
            }
        }
        event(&mut peer, id, SessionEvent::Exited(ExitStatus::exited(0)));
        if let Some(report) = report {
            let _ = report.send(sent);
        }
        // Keep the link until the host has read the end.
        while frame(&mut peer).is_some() {}
        sent
    }

    /// [`serve`], telling `sent` how much went out before it waits for
    /// the host to end the link.
    pub fn serve_then(
        peer: Peer,
        archive: impl Iterator<Item = Vec<u8>>,
        honour_credit: bool,
        sent: std::sync::mpsc::Sender<u64>,
    ) -> u64 {
        serve_reporting(peer, archive, honour_credit, Some(sent))
    }

    /// Copy out of a fake guest playing `archive` into `dest`.
    pub async fn copy_from(
        archive: Vec<Vec<u8>>,
        dest: &Path,
        limits: Limits,
    ) -> Result<vmkeep::session::copy_out::CopiedOut, CopyOutError> {
        let (_dir, path, guest) = fake_guest(move |peer| serve(peer, archive.into_iter(), true));
        let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
        let session = link.open_session(OpenSession::default()).unwrap();
        let result = copy_out(&session, dest, limits, |_| {}).await;
        drop(session);
        drop(link);
        joined(guest).await;
        result
    }

    /// The fake guest's end, while the runtime goes on (the host's last
    /// frames are sent by its tasks).
    pub async fn joined<T: Send + 'static>(guest: JoinHandle<T>) -> T {
        tokio::task::spawn_blocking(move || guest.join().unwrap())
            .await
            .unwrap()
    }

    /// What `dir` holds, as paths relative to it.
    pub fn contents(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                found.push(path.strip_prefix(root).unwrap().display().to_string());
                if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                    walk(root, &path, found);
                }
            }
        }
        walk(dir, dir, &mut found);
        found.sort();
        found
    }
}

use hostile_copy::{contents, copy_from, end, entry, joined};
use vmkeep::session::copy_out::{CopyOutError, Limits};
use vmkeep_protocol::archive::MAGIC;

#[tokio::test]
async fn a_copy_from_a_guest_writes_only_below_its_destination() {
    let scratch = tempfile::tempdir().unwrap();
    let outside = scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "host data\n").unwrap();
    let dest = scratch.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let target = outside.to_str().unwrap().as_bytes().to_vec();
    let file = |path: &[u8], content: &[u8]| {
        let mut bytes = entry(b'f', 0o644, content.len() as u64, path, b"");
        bytes.extend_from_slice(content);
        bytes
    };
    let archive = |records: Vec<Vec<u8>>, entries: u64, bytes: u64| {
        let mut all = vec![MAGIC.to_vec()];
        all.extend(records);
        all.push(end(entries, bytes));
        all
    };
    // Names that climb out, absolute names, and a path through a symlink
    // the archive itself made: each is refused, the copy breaks off, and
    // nothing appears outside the destination.
    let attacks: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "dot-dot",
            archive(vec![file(b"../outside/victim", b"pwned\n")], 1, 6),
        ),
        (
            "deep dot-dot",
            archive(
                vec![
                    entry(b'd', 0o755, 0, b"d", b""),
                    file(b"d/../../outside/victim", b"pwned\n"),
                ],
                2,
                6,
            ),
        ),
        (
            "absolute",
            archive(
                vec![file(
                    format!("{}/victim", outside.display()).as_bytes(),
                    b"pwned\n",
                )],
                1,
                6,
            ),
        ),
        (
            "through a symlink",
            archive(
                vec![
                    entry(b'd', 0o755, 0, b"d", b""),
                    entry(b'l', 0o777, 0, b"d/link", &target),
                    file(b"d/link/victim", b"pwned\n"),
                ],
                3,
                6,
            ),
        ),
    ];
    for (what, records) in attacks {
        let result = copy_from(records, &dest, Limits::default()).await;
        assert!(
            matches!(result, Err(CopyOutError::Broke(_))),
            "{what}: {result:?}"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "host data\n",
            "{what}"
        );
        assert_eq!(contents(&outside), ["victim"], "{what}");
    }
    // A symlink the guest sent is made as a symlink (never followed), and
    // a file of the same name later replaces the link, not its target; a
    // setuid file loses the bit.
    let records = archive(
        vec![
            entry(b'l', 0o777, 0, b"link", &target),
            entry(b'f', 0o4755, 5, b"suid", b""),
            b"#!/x\n".to_vec(),
        ],
        2,
        5,
    );
    let done = copy_from(records, &dest, Limits::default()).await.unwrap();
    assert!(!done.warnings.is_empty(), "the setuid bit's drop is said");
    assert!(
        std::fs::symlink_metadata(dest.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dest.join("suid")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o755);
    let records = archive(vec![file(b"link", b"replaced\n")], 1, 9);
    copy_from(records, &dest, Limits::default()).await.unwrap();
    assert!(
        std::fs::symlink_metadata(dest.join("link"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "host data\n"
    );
    assert_eq!(contents(&outside), ["victim"]);
}

/// An archive that never ends: one file of an enormous size, its data
/// forever.
fn endless_file(name: &[u8]) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let mut head = MAGIC.to_vec();
    head.extend(entry(b'f', 0o644, u64::MAX / 2, name, b""));
    std::iter::once(head).chain(std::iter::repeat(vec![0x41; 64 * 1024]))
}

#[tokio::test]
async fn a_guest_sending_endless_data_is_stopped_at_the_limit_and_leaves_no_half_file() {
    let scratch = tempfile::tempdir().unwrap();
    let dest = scratch.path().join("big");
    let (_dir, path, guest) =
        fake_guest(move |peer| hostile_copy::serve(peer, endless_file(b"big"), true));
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let session = link
        .open_session(vmkeep_protocol::session::OpenSession::default())
        .unwrap();
    let peak = HostPeak::start();
    let limits = Limits {
        max_bytes: Some(16 * MIB as u64),
    };
    let result = vmkeep::session::copy_out::copy_out(&session, &dest, limits, |_| {}).await;
    let held = peak.bytes();
    drop(session);
    drop(link);
    let sent = joined(guest).await;
    assert!(
        matches!(result, Err(CopyOutError::TooLarge { .. })),
        "{result:?}"
    );
    assert!(result.unwrap_err().to_string().contains("limit"));
    assert!(
        sent < 32 * MIB as u64,
        "the host stopped reading: {sent} bytes sent"
    );
    assert_eq!(
        contents(scratch.path()),
        Vec::<String>::new(),
        "no half-written file"
    );
    assert!(held < 4 * MIB, "the host side held {held} bytes");
}

#[tokio::test]
async fn a_guest_sending_beyond_its_credit_breaks_the_session_holding_little() {
    // The host takes nothing until the guest has sent 4 MiB without
    // waiting for credit: what it holds is the credit it gave, the session
    // is broken, and the guest is told to close it.
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let (_dir, path, guest) = fake_guest(move |peer| {
        hostile_copy::serve_then(peer, endless_file(b"big").take(64), false, sent_tx)
    });
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let peak = HostPeak::start();
    let session = link
        .open_session(vmkeep_protocol::session::OpenSession::default())
        .unwrap();
    let sent = tokio::task::spawn_blocking(move || sent_rx.recv().unwrap())
        .await
        .unwrap();
    assert!(sent >= 3 * MIB as u64, "the guest sent {sent} bytes");
    // Nothing is granted while the updates are taken: past the first 256
    // KiB, the guest is out of credit.
    let mut held = 0;
    let end = loop {
        match session.next_update().await {
            vmkeep::session::Update::Output { data, .. } => held += data.len(),
            vmkeep::session::Update::End(end) => break end,
            _ => {}
        }
    };
    let peak = peak.bytes();
    assert!(
        matches!(&end, vmkeep::session::End::Broken(why) if why.contains("protocol")),
        "{end:?}"
    );
    assert!(held <= 256 * 1024, "{held} bytes of output were kept");
    assert!(peak < 2 * MIB, "the host side held {peak} bytes");
    drop(session);
    drop(link);
    joined(guest).await;
}

#[tokio::test]
async fn a_guest_cannot_fill_the_hosts_disk_through_a_copy() {
    if !common::host_user::running_as_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let env = common::TestEnv::on_small_tmpfs(96);
    let dest = env.home().join("big");
    let (_dir, path, guest) =
        fake_guest(move |peer| hostile_copy::serve(peer, endless_file(b"big"), true));
    let (link, _hello, _events) = GuestLink::connect(&path, T).await.unwrap();
    let session = link
        .open_session(vmkeep_protocol::session::OpenSession::default())
        .unwrap();
    let result =
        vmkeep::session::copy_out::copy_out(&session, &dest, Limits::default(), |_| {}).await;
    drop(session);
    drop(link);
    joined(guest).await;
    let Err(CopyOutError::NoRoom { free, reserve, .. }) = &result else {
        panic!("{result:?}");
    };
    assert_eq!(*reserve, 64 * MIB as u64);
    assert!(*free >= 60 * MIB as u64, "stopped with {free} bytes free");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("removed"), "{message}");
    assert_eq!(
        contents(env.home()),
        Vec::<String>::new(),
        "no half-written file"
    );
    let (_, free_now) = vmkeep::os::fs::space_of(env.home()).unwrap();
    assert!(free_now > 90 * MIB as u64, "the space is back: {free_now}");
}
