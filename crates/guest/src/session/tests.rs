//! The session machinery on this machine: real commands, real pipes, a
//! real pty, driven by a fake host that speaks the protocol's lines and
//! holds the guest to the rules with `SessionState`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use vmkeep_protocol::session::{
    ExitStatus, OutputCredit, PtyRequest, SessionState, Signal, SignalRequest, StdinData,
};
use vmkeep_protocol::{HostMessage, decode_line, encode_line};

use super::*;
use crate::handler;

/// Most stdin any session of these tests queued at once.
pub(super) static STDIN_PEAK: AtomicUsize = AtomicUsize::new(0);

/// The guest's side of the channel: every event goes through its line, as
/// on the wire.
struct FakeChannel(Mutex<Sender<(u64, SessionEvent)>>);

impl Outbox for FakeChannel {
    fn send(&self, message: &FromGuest) -> bool {
        let line = encode_line(message);
        assert!(
            line.len() <= vmkeep_protocol::session::MAX_DATA_LINE_BYTES
                || !matches!(
                    message,
                    FromGuest::Session {
                        event: SessionEvent::Output(_),
                        ..
                    }
                ),
            "an output line of {} bytes",
            line.len()
        );
        match decode_line::<FromGuest>(&line) {
            Ok(FromGuest::Session { id, event }) => {
                let _ = self.0.lock().unwrap().send((id, event));
                true
            }
            other => panic!("the guest sent {other:?}"),
        }
    }
}

const WAIT: Duration = Duration::from_secs(20);

struct Host {
    sessions: Arc<Sessions>,
    events: Receiver<(u64, SessionEvent)>,
    queued: HashMap<u64, VecDeque<SessionEvent>>,
}

fn settings() -> Settings {
    Settings {
        base_env: vec![
            ("PATH".into(), exec::DEFAULT_PATH.into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("SECRET_OF_THE_AGENT".into(), "x".into()),
        ],
        tiny_image: false,
        passwd: users::PASSWD.into(),
        group: users::GROUP.into(),
    }
}

impl Host {
    fn new() -> Host {
        let (tx, rx) = mpsc::channel();
        let reaper = Reaper::global().unwrap();
        Host {
            sessions: Sessions::new(reaper, Arc::new(FakeChannel(Mutex::new(tx))), settings()),
            events: rx,
            queued: HashMap::new(),
        }
    }

    /// Send a frame as its line, through the agent's parser.
    fn send(&self, id: u64, op: SessionOp) {
        let line = encode_line(&SessionRequest { session: id, op });
        match handler::parse(&line) {
            Ok(HostMessage::Session(frame)) => self.sessions.handle(frame),
            other => panic!("{other:?}"),
        }
    }

    fn try_next(&mut self, id: u64, timeout: Duration) -> Option<SessionEvent> {
        if let Some(event) = self.queued.get_mut(&id).and_then(VecDeque::pop_front) {
            return Some(event);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((got, event)) if got == id => return Some(event),
                Ok((got, event)) => self.queued.entry(got).or_default().push_back(event),
                Err(_) => return None,
            }
        }
    }

    fn next(&mut self, id: u64) -> SessionEvent {
        self.try_next(id, WAIT)
            .unwrap_or_else(|| panic!("session {id}: no event within {WAIT:?}"))
    }

    fn open(&mut self, id: u64, open: OpenSession) -> Client {
        let state = SessionState::new(&open);
        self.send(id, SessionOp::Open(open));
        Client {
            id,
            state,
            out: [Vec::new(), Vec::new()],
            pid: 0,
            exit: None,
            grant: true,
            events: Vec::new(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Whatever a failed test left running is hung up (and then killed).
        self.sessions.hang_up_all();
    }
}

fn command(script: &str) -> OpenSession {
    OpenSession {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..OpenSession::default()
    }
}

/// One session as the host follows it.
struct Client {
    id: u64,
    state: SessionState,
    out: [Vec<u8>; 2],
    pid: i32,
    exit: Option<ExitStatus>,
    /// Grant output credit back as output is consumed.
    grant: bool,
    /// Every event but output, in order.
    events: Vec<SessionEvent>,
}

impl Client {
    /// Take one event: check it against the rules, keep what it says.
    fn take(&mut self, host: &Host, event: SessionEvent) {
        if let Err(violation) = self.state.accept(&event) {
            panic!(
                "session {}: the guest broke the rules: {violation}: {event:?}",
                self.id
            );
        }
        match &event {
            SessionEvent::Started { pid } => self.pid = *pid,
            SessionEvent::Output(output) => {
                let i = output.stream.index();
                self.out[i].extend_from_slice(&output.data);
                if self.grant {
                    let len = output.data.len() as u64;
                    host.send(
                        self.id,
                        self.state.grant(OutputCredit::of(output.stream, len)),
                    );
                }
                return;
            }
            SessionEvent::Exited(status) => self.exit = Some(*status),
            _ => {}
        }
        self.events.push(event);
    }

    fn step(&mut self, host: &mut Host) {
        let Some(event) = host.try_next(self.id, WAIT) else {
            panic!(
                "session {}: no event within {WAIT:?}; stdout {:?}, stderr {:?}, events {:?}",
                self.id,
                self.text(0),
                self.text(1),
                self.events
            );
        };
        self.take(host, event);
    }

    fn started(&mut self, host: &mut Host) -> i32 {
        self.step(host);
        assert!(self.pid > 0, "{:?}", self.events);
        self.pid
    }

    /// Run until `out[stream]` contains `needle`.
    fn until_output(&mut self, host: &mut Host, stream: usize, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !String::from_utf8_lossy(&self.out[stream]).contains(needle) {
            assert!(
                Instant::now() < deadline && self.exit.is_none(),
                "no {needle:?} in {:?} ({:?})",
                String::from_utf8_lossy(&self.out[stream]),
                self.events
            );
            self.step(host);
        }
    }

    fn until_exit(&mut self, host: &mut Host) -> ExitStatus {
        while self.exit.is_none() {
            self.step(host);
        }
        self.exit.unwrap()
    }

    /// Send stdin within the credit, waiting for more credit as needed.
    fn write(&mut self, host: &mut Host, mut data: &[u8], eof: bool) {
        loop {
            let credit = self.state.stdin_credit() as usize;
            if credit == 0 && !(data.is_empty() && eof) {
                self.step(host);
                continue;
            }
            let n = data.len().min(credit).min(MAX_CHUNK_BYTES);
            let last = n == data.len();
            let op = self
                .state
                .stdin(data[..n].to_vec(), eof && last)
                .expect("within the rules");
            host.send(self.id, op);
            data = &data[n..];
            if last {
                return;
            }
            // Take what came meanwhile, without waiting.
            while let Some(event) = host.try_next(self.id, Duration::ZERO) {
                self.take(host, event);
            }
        }
    }

    fn text(&self, stream: usize) -> String {
        String::from_utf8_lossy(&self.out[stream]).into_owned()
    }
}

fn alive(pid: i32) -> bool {
    // Zombies count as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn scratch_file(name: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("vmkeep-session-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_command_streams_its_output_and_exit_code() {
    let mut host = Host::new();
    let mut client = host.open(1, command("echo out; echo err >&2; exit 3"));
    client.started(&mut host);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(3));
    assert_eq!(
        (client.text(0), client.text(1)),
        ("out\n".into(), "err\n".into())
    );
    assert_eq!(host.sessions.count(), 0, "the id is free");
}

#[test]
fn the_environment_is_a_fresh_login_environment_with_the_extras() {
    let mut host = Host::new();
    let mut open =
        command("echo $HOME:$USER:$LOGNAME:$SHELL:$LANG:${SECRET_OF_THE_AGENT-unset}:$EXTRA; pwd");
    open.env = vec![("EXTRA".into(), "yes".into())];
    let mut client = host.open(1, open);
    client.started(&mut host);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    let passwd = users::read_database(std::path::Path::new(users::PASSWD)).unwrap();
    // SAFETY: getuid has no preconditions.
    let me = users::find_uid(&passwd, unsafe { libc::getuid() }).unwrap();
    let home_exists = std::path::Path::new(&me.home).is_dir();
    assert_eq!(
        client.text(0),
        format!(
            "{}:{}:{}:{}:C.UTF-8:unset:yes\n{}\n",
            me.home,
            me.name,
            me.name,
            me.shell,
            if home_exists { me.home.as_str() } else { "/" }
        )
    );
}

#[test]
fn a_hundred_mebibytes_pass_both_ways_byte_exact_within_the_windows() {
    const SIZE: usize = 100 * 1024 * 1024;
    let mut host = Host::new();
    // Out: a command's output, checked against its pattern.
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let mut client = host.open(
        1,
        command(&format!(
            "yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c {SIZE}"
        )),
    );
    client.started(&mut host);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    assert_eq!(client.out[0].len(), SIZE);
    assert!(
        client.out[0]
            .chunks(line.len())
            .all(|chunk| line.starts_with(chunk)),
        "the output differs from its pattern"
    );
    // In and back out: what `cat` gets is what it gives back.
    let input: Vec<u8> = (0..SIZE as u32).map(|i| (i % 251) as u8).collect();
    let mut client = host.open(2, command("cat"));
    client.started(&mut host);
    client.write(&mut host, &input, true);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    assert!(
        client.out[0] == input,
        "cat's output differs from its input"
    );
    let peak = STDIN_PEAK.load(Ordering::Relaxed);
    assert!(
        peak as u64 <= STDIN_WINDOW,
        "the guest queued {peak} bytes of stdin"
    );
}

#[test]
fn output_waits_for_credit_and_the_command_blocks_meanwhile() {
    let mut host = Host::new();
    let mut client = host.open(1, command("head -c 1000000 /dev/zero; echo done >&2"));
    client.grant = false;
    let pid = client.started(&mut host);
    let deadline = Instant::now() + WAIT;
    while (client.out[0].len() as u64) < INITIAL_OUTPUT_CREDIT {
        assert!(Instant::now() < deadline);
        client.step(&mut host);
    }
    // Out of credit: nothing more comes, and the command waits.
    assert!(host.try_next(1, Duration::from_millis(300)).is_none());
    assert_eq!(client.out[0].len() as u64, INITIAL_OUTPUT_CREDIT);
    assert!(alive(pid), "the command should be blocked, not gone");
    assert!(client.out[1].is_empty());
    client.grant = true;
    let credit = OutputCredit {
        stdout: 1_000_000,
        stderr: 0,
    };
    host.send(1, client.state.grant(credit));
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    assert_eq!(
        (client.out[0].len(), client.text(1)),
        (1_000_000, "done\n".into())
    );
}

#[test]
fn stdin_is_answered_line_by_line() {
    let mut host = Host::new();
    let mut client = host.open(
        1,
        command("while read line; do echo \"got $line\"; done; echo bye"),
    );
    client.started(&mut host);
    for i in 0..20 {
        client.write(&mut host, format!("line {i}\n").as_bytes(), false);
        // The answer comes before the next line is sent.
        client.until_output(&mut host, 0, &format!("got line {i}\n"));
    }
    client.write(&mut host, b"", true);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    assert!(client.text(0).ends_with("got line 19\nbye\n"));
    // Credit came back as the lines were taken.
    assert!(
        client
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::StdinCredit { .. })),
        "{:?}",
        client.events
    );
}

#[test]
fn signals_reach_the_command_by_name_or_number() {
    let mut host = Host::new();
    for (id, signal, number) in [
        (1, Signal::Name("TERM".into()), libc::SIGTERM),
        (2, Signal::Name("sigint".into()), libc::SIGINT),
        (3, Signal::Number(9), libc::SIGKILL),
    ] {
        let mut client = host.open(id, command("echo ready; exec sleep 30"));
        client.started(&mut host);
        client.until_output(&mut host, 0, "ready");
        host.send(id, SessionOp::Signal(SignalRequest { signal }));
        assert_eq!(
            client.until_exit(&mut host),
            ExitStatus::killed(number, false),
            "{id}"
        );
        assert_eq!(client.exit.unwrap().shell_code(), 128 + number);
    }
    // An unknown signal is refused and changes nothing.
    let mut client = host.open(4, command("read x; echo still here"));
    client.started(&mut host);
    host.send(
        4,
        SessionOp::Signal(SignalRequest {
            signal: Signal::Name("NOPE".into()),
        }),
    );
    client.step(&mut host);
    assert!(matches!(
        client.events.last(),
        Some(SessionEvent::Error { .. })
    ));
    client.write(&mut host, b"\n", true);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
    assert_eq!(client.text(0), "still here\n");
}

#[test]
fn a_core_dump_is_reported() {
    let mut host = Host::new();
    // ulimit -c may be 0: then no core, still the signal.
    let mut client = host.open(1, command("kill -SEGV $$"));
    client.started(&mut host);
    let status = client.until_exit(&mut host);
    assert_eq!(status.signal, Some(libc::SIGSEGV), "{status:?}");
}

#[test]
fn close_hangs_the_command_up_and_what_was_put_in_the_background_lives_on() {
    let mut host = Host::new();
    let marker = scratch_file("hup");
    let script = format!(
        "nohup sleep 30 >/dev/null 2>&1 & echo bg $!; \
         trap 'echo hup > {}; exit 0' HUP; sleep 30 & wait",
        marker.display()
    );
    let mut client = host.open(1, command(&script));
    let pid = client.started(&mut host);
    client.until_output(&mut host, 0, "\n");
    let background: i32 = client
        .text(0)
        .trim()
        .strip_prefix("bg ")
        .unwrap()
        .parse()
        .unwrap();
    // Only once nohup has made itself deaf to SIGHUP and run sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{background}/comm"))
        .ok()
        .as_deref()
        != Some("sleep\n")
    {
        assert!(Instant::now() < deadline, "nohup never ran sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    host.send(1, SessionOp::Close);
    assert!(wait_gone(pid), "the command outlived its close");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "hup\n",
        "no SIGHUP"
    );
    assert!(alive(background), "the nohup'd process died");
    let _ = sys::kill(background, libc::SIGKILL);
    let _ = std::fs::remove_file(&marker);
    // Nothing more is said about a closed session.
    assert!(host.try_next(1, Duration::from_millis(200)).is_none());
    assert_eq!(host.sessions.count(), 0);
}

#[test]
fn a_lost_host_hangs_every_session_up() {
    let mut host = Host::new();
    let mut pids = Vec::new();
    for id in 1..=3 {
        let mut client = host.open(id, command("exec sleep 30"));
        pids.push(client.started(&mut host));
    }
    host.sessions.hang_up_all();
    for pid in pids {
        assert!(wait_gone(pid), "{pid} outlived the host");
    }
    assert_eq!(host.sessions.count(), 0);
}

#[test]
fn start_failures_are_typed() {
    let mut host = Host::new();
    let not_executable = scratch_file("not-executable");
    std::fs::write(&not_executable, "echo hi\n").unwrap();
    let cases = [
        (
            OpenSession {
                argv: vec!["vmkeep-no-such-command".into()],
                ..OpenSession::default()
            },
            FailReason::NoSuchCommand,
        ),
        (
            OpenSession {
                argv: vec!["/nonexistent/cmd".into()],
                ..OpenSession::default()
            },
            FailReason::NoSuchCommand,
        ),
        (
            OpenSession {
                argv: vec![not_executable.display().to_string()],
                ..OpenSession::default()
            },
            FailReason::NotExecutable,
        ),
        (
            OpenSession {
                cwd: Some("/nonexistent-dir".into()),
                ..command("true")
            },
            FailReason::BadCwd,
        ),
        (
            OpenSession {
                user: Some("vmkeep-no-such-user".into()),
                ..command("true")
            },
            FailReason::NoSuchUser,
        ),
        (
            OpenSession {
                argv: vec!["echo".into(), "a\0b".into()],
                ..OpenSession::default()
            },
            FailReason::InvalidRequest,
        ),
        (
            OpenSession {
                pty: Some(PtyRequest {
                    rows: 1,
                    cols: 1,
                    term: Some("bad term\n".into()),
                }),
                ..command("true")
            },
            FailReason::InvalidRequest,
        ),
    ];
    for (id, (open, reason)) in cases.into_iter().enumerate() {
        let id = id as u64 + 1;
        let mut client = host.open(id, open);
        client.step(&mut host);
        match client.events.last() {
            Some(SessionEvent::Failed(failure)) => {
                assert_eq!(failure.reason, reason, "{id}: {}", failure.message)
            }
            other => panic!("{id}: {other:?}"),
        }
        assert!(client.state.ended());
    }
    let _ = std::fs::remove_file(&not_executable);
    assert_eq!(host.sessions.count(), 0);
}

#[test]
fn sessions_are_bounded_and_ids_are_unique() {
    let mut host = Host::new();
    let mut clients = Vec::new();
    for id in 0..MAX_SESSIONS as u64 {
        let mut client = host.open(id, command("exec sleep 30"));
        client.started(&mut host);
        clients.push(client);
    }
    let mut extra = host.open(1000, command("true"));
    extra.step(&mut host);
    assert!(
        matches!(extra.events.last(), Some(SessionEvent::Failed(f)) if f.reason == FailReason::TooManySessions),
        "{:?}",
        extra.events
    );
    // An id in use is refused without touching its session.
    host.send(5, SessionOp::Open(command("true")));
    assert!(matches!(host.next(5), SessionEvent::Error { .. }));
    for client in &clients {
        host.send(client.id, SessionOp::Close);
    }
    for client in &clients {
        assert!(wait_gone(client.pid));
    }
    assert_eq!(host.sessions.count(), 0);
}

/// The stdin frames of a host that ignores the rules, and the error that
/// ends the session.
fn broken_by(host: &mut Host, id: u64, script: &str, frames: Vec<StdinData>, error: &str) {
    let mut client = host.open(id, command(script));
    client.started(host);
    client.until_output(host, 0, "ready");
    for frame in frames {
        host.send(id, SessionOp::Stdin(frame));
    }
    let mut errors = 0;
    loop {
        match host.next(id) {
            SessionEvent::Error { message } => {
                assert!(message.contains(error), "{message}");
                assert!(message.contains("hanging up"), "{message}");
                errors += 1;
            }
            SessionEvent::Exited(status) => {
                assert_eq!(status, ExitStatus::killed(libc::SIGHUP, false), "{error}");
                break;
            }
            SessionEvent::StdinClosed | SessionEvent::StdinCredit { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(errors, 1, "{error}");
}

#[test]
fn a_host_breaking_the_stdin_rules_breaks_the_session() {
    let mut host = Host::new();
    let chunk = |len: usize, eof: bool| StdinData {
        data: vec![b'x'; len],
        eof,
    };
    // A command that reads nothing: none of its window comes back.
    let mut frames: Vec<StdinData> = (0..STDIN_WINDOW as usize / MAX_CHUNK_BYTES)
        .map(|_| chunk(MAX_CHUNK_BYTES, false))
        .collect();
    frames.push(chunk(1, false));
    broken_by(
        &mut host,
        1,
        "exec 0<&-; echo ready; exec sleep 30",
        frames,
        "beyond the credit",
    );
    broken_by(
        &mut host,
        2,
        "echo ready; exec sleep 30",
        vec![chunk(MAX_CHUNK_BYTES + 1, false)],
        "a stdin chunk of 65537 bytes",
    );
    broken_by(
        &mut host,
        3,
        "echo ready; exec sleep 30",
        vec![chunk(1, true), chunk(1, false)],
        "stdin after its end",
    );
    // A garbled stdin frame: bytes were lost.
    let mut client = host.open(4, command("echo ready; exec sleep 30"));
    client.started(&mut host);
    client.until_output(&mut host, 0, "ready");
    let line = br#"{"session":4,"op":{"stdin":{"data":"%%%"}}}"#;
    match handler::parse(line) {
        Err(bad) => host.sessions.bad_frame(4, bad.op.as_deref(), bad.message),
        other => panic!("{other:?}"),
    }
    assert!(matches!(host.next(4), SessionEvent::Error { .. }));
    assert!(matches!(
        host.next(4),
        SessionEvent::Exited(status) if status == ExitStatus::killed(libc::SIGHUP, false)
    ));
}

#[test]
fn a_command_that_stops_reading_says_so() {
    let mut host = Host::new();
    let mut client = host.open(1, command("exec 0<&-; echo closed; sleep 1"));
    client.started(&mut host);
    client.until_output(&mut host, 0, "closed");
    client.write(&mut host, b"ignored\n", false);
    let deadline = Instant::now() + WAIT;
    while !client.state.stdin_closed() {
        assert!(Instant::now() < deadline, "{:?}", client.events);
        client.step(&mut host);
    }
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
}

#[test]
fn a_background_process_holding_the_output_does_not_hold_the_session() {
    let mut host = Host::new();
    let started = Instant::now();
    let mut client = host.open(1, command("sleep 5 & echo started"));
    client.started(&mut host);
    let status = client.until_exit(&mut host);
    assert_eq!(
        status,
        ExitStatus {
            output_open: true,
            ..ExitStatus::exited(0)
        }
    );
    assert_eq!(client.text(0), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_user_gets_its_ids_groups_home_and_login_shell() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let passwd = users::read_database(std::path::Path::new(users::PASSWD)).unwrap();
    let Some(nobody) = users::find_user(&passwd, "nobody") else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let mut host = Host::new();
    let mut open = command("id -u; id -g; id -G; echo $HOME $USER");
    open.user = Some("nobody".into());
    open.cwd = Some("/".into());
    let mut client = host.open(1, open);
    client.started(&mut host);
    assert_eq!(
        client.until_exit(&mut host),
        ExitStatus::exited(0),
        "{}",
        client.text(1)
    );
    let group = users::read_database(std::path::Path::new(users::GROUP)).unwrap();
    let groups = users::groups_of(&group, "nobody", nobody.gid);
    let mut shown: Vec<String> = groups.iter().map(u32::to_string).collect();
    shown.sort();
    let text = client.text(0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string());
    let mut got: Vec<&str> = lines[2].split(' ').collect();
    got.sort();
    assert_eq!(got, shown);
    assert_eq!(lines[3], format!("{} nobody", nobody.home));
    // Through the user's login shell (`-c 'exec "$@"'`): $0 of the shell.
    let mut open = OpenSession {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo $0 $1".into(),
            "zero".into(),
            "one".into(),
        ],
        login: true,
        ..OpenSession::default()
    };
    open.cwd = Some("/".into());
    let mut client = host.open(2, open);
    client.started(&mut host);
    assert_eq!(
        client.until_exit(&mut host),
        ExitStatus::exited(0),
        "{}",
        client.text(1)
    );
    assert_eq!(client.text(0), "zero one\n");
}

fn pty_open(argv: &[&str]) -> OpenSession {
    OpenSession {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        pty: Some(PtyRequest {
            rows: 24,
            cols: 80,
            term: Some("vt100".into()),
        }),
        cwd: Some("/".into()),
        env: vec![("PS1".into(), "$ ".into()), ("ENV".into(), "".into())],
        ..OpenSession::default()
    }
}

#[test]
fn a_pty_session_has_a_size_job_control_ctrl_c_and_an_exit_code() {
    let mut host = Host::new();
    let mut client = host.open(1, pty_open(&["sh", "-i"]));
    client.started(&mut host);
    client.write(&mut host, b"tty; echo TERM=$TERM; stty size\n", false);
    client.until_output(&mut host, 0, "24 80");
    assert!(client.text(0).contains("/dev/pts/"), "{}", client.text(0));
    assert!(client.text(0).contains("TERM=vt100"), "{}", client.text(0));
    // A resize is seen.
    host.send(
        1,
        SessionOp::Resize(WindowSize {
            rows: 40,
            cols: 100,
        }),
    );
    client.write(&mut host, b"stty size\n", false);
    client.until_output(&mut host, 0, "40 100");
    // Ctrl-C interrupts a sleep in the foreground.
    client.write(&mut host, b"sleep 30; echo after=$?\n", false);
    client.until_output(&mut host, 0, "sleep 30; echo after=$?");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    client.write(&mut host, b"\x03", false);
    client.write(&mut host, b"echo rc=$?\n", false);
    client.until_output(&mut host, 0, "rc=130");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Job control: Ctrl-Z stops the foreground job.
    client.write(&mut host, b"sleep 30\n", false);
    std::thread::sleep(Duration::from_millis(300));
    client.write(&mut host, b"\x1a", false);
    client.until_output(&mut host, 0, "Stopped");
    // ... and `fg` brings it back, for Ctrl-C to end.
    let stopped_at = client.out[0].len();
    client.write(&mut host, b"fg\n", false);
    while !String::from_utf8_lossy(&client.out[0][stopped_at..]).contains("sleep 30\r\n") {
        client.step(&mut host);
    }
    std::thread::sleep(Duration::from_millis(300));
    client.write(&mut host, b"\x03", false);
    client.write(&mut host, b"echo fg=$?; exit 7\n", false);
    client.until_output(&mut host, 0, "fg=130");
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(7));
    assert!(client.out[1].is_empty(), "a pty has no stderr stream");
}

#[test]
fn a_command_sent_right_after_a_resize_sees_the_new_size() {
    // The resize and the command arrive together (sent without waiting):
    // the size is set before the command's bytes reach the pty, so the
    // command cannot run in the old size (it did, now and then, when the
    // session thread wrote the stdin it found first).
    let mut host = Host::new();
    let mut client = host.open(1, pty_open(&["sh", "-i"]));
    client.started(&mut host);
    for i in 0..20u16 {
        let (rows, cols) = (10 + i, 50 + i);
        host.send(1, SessionOp::Resize(WindowSize { rows, cols }));
        client.write(&mut host, b"stty size\n", false);
        client.until_output(&mut host, 0, &format!("{rows} {cols}\r\n"));
    }
    host.send(1, SessionOp::Close);
}

#[test]
fn a_signal_to_a_pty_session_reaches_its_foreground_job() {
    let mut host = Host::new();
    let mut client = host.open(1, pty_open(&["sh", "-i"]));
    client.started(&mut host);
    client.write(&mut host, b"sleep 30\n", false);
    client.until_output(&mut host, 0, "sleep 30\r\n");
    std::thread::sleep(Duration::from_millis(300));
    host.send(
        1,
        SessionOp::Signal(SignalRequest {
            signal: Signal::Name("INT".into()),
        }),
    );
    client.write(&mut host, b"echo rc=$?\n", false);
    client.until_output(&mut host, 0, "rc=130");
    host.send(1, SessionOp::Close);
    assert!(wait_gone(client.pid), "the shell outlived the hangup");
}

#[test]
fn an_empty_argv_is_the_users_login_shell_on_the_pty() {
    let mut host = Host::new();
    let mut open = pty_open(&[]);
    open.env.clear();
    let mut client = host.open(1, open);
    client.started(&mut host);
    client.write(&mut host, b"echo zero=$0; exit 3\n", false);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(3));
    let passwd = users::read_database(std::path::Path::new(users::PASSWD)).unwrap();
    // SAFETY: getuid has no preconditions.
    let me = users::find_uid(&passwd, unsafe { libc::getuid() }).unwrap();
    let name = me.shell.rsplit('/').next().unwrap();
    assert!(
        client.text(0).contains(&format!("zero=-{name}")),
        "{}",
        client.text(0)
    );
}

#[test]
fn resizing_a_session_without_a_pty_is_refused() {
    let mut host = Host::new();
    let mut client = host.open(1, command("read x"));
    client.started(&mut host);
    host.send(1, SessionOp::Resize(WindowSize { rows: 1, cols: 1 }));
    client.step(&mut host);
    assert!(matches!(
        client.events.last(),
        Some(SessionEvent::Error { .. })
    ));
    client.write(&mut host, b"\n", true);
    assert_eq!(client.until_exit(&mut host), ExitStatus::exited(0));
}
