//! Streaming sessions: commands with live stdin, stdout and stderr (or a
//! pty), multiplexed over the guest agent's one channel.
//!
//! # Frames
//!
//! The host sends [`SessionRequest`] lines, `{"session":ID,"op":...}`; they
//! are one-way (never answered with a [`crate::Reply`]) and travel beside
//! the request/reply [`crate::Request`]s on the same channel. The guest
//! answers with [`crate::FromGuest::Session`] events,
//! `{"session":{"id":ID,"event":...}}`, unsolicited. `ID` is chosen by the
//! host, a fresh one for every session of a connection (a counter): never
//! reuse one, not even once its session ended, since events of a closed
//! session may still be on their way. The guest refuses an `open` for an id
//! it has open (an `error` event; the session it has goes on).
//!
//! # Lifecycle
//!
//! 1. The host sends [`SessionOp::Open`]. It may send `stdin`, `credit`,
//!    `signal`, `resize` and `close` for that id right after it, without
//!    waiting (they are queued until the command runs).
//! 2. The guest answers [`SessionEvent::Started`] (the command runs) or
//!    [`SessionEvent::Failed`] (it could not be started: the session is
//!    over, the id is free).
//! 3. While it runs: [`SessionEvent::Output`] (within the output credit),
//!    [`SessionEvent::StdinCredit`] (as the command takes its input),
//!    [`SessionEvent::StdinClosed`] (it stopped reading), and
//!    [`SessionEvent::Error`] (the guest refused a frame of the host's).
//! 4. The end: [`SessionEvent::Exited`], after every byte of output the
//!    command wrote. Nothing follows for that id; the id is free.
//!
//! [`SessionOp::Close`] (the client went away) ends a session at once on
//! the host's side: the guest hangs the command up (SIGHUP, as sshd does
//! when a connection drops; what the user started with `nohup` or `setsid`
//! lives on), releases everything and sends nothing more for that id. The
//! host must ignore events already in flight for an id it closed.
//!
//! **When the host link drops** (the host agent's end of the virtio-serial
//! port closes, or a write to it fails), the guest closes every session as if
//! the host had sent `close`. A host agent that restarts has lost the clients
//! of those sessions with its own process (each `vmkeep shell` was connected
//! to it), so nobody could resume them; keeping them would only leave
//! commands blocked on credit that nobody will grant, holding session slots.
//!
//! # Flow control
//!
//! Both directions use credits, counted in raw bytes (before base64):
//!
//! - **Output.** Each output stream (stdout and stderr; a pty has only
//!   stdout) starts with [`INITIAL_OUTPUT_CREDIT`]; [`SessionOp::Credit`]
//!   adds to it. The guest never sends more than the credit; out of credit
//!   it stops reading that pipe (or the pty), so the command blocks on its
//!   next write. A host grants what it has consumed, so what it holds per
//!   stream is bounded by what it granted.
//! - **Stdin.** The host may send at most [`STDIN_WINDOW`] bytes that the
//!   guest has not yet granted back with [`SessionEvent::StdinCredit`]; the
//!   guest grants back what the command has taken (written into its pipe
//!   or pty), so it never holds more than [`STDIN_WINDOW`] of one session's
//!   input. Credit is counted from the `open`: stdin sent before `started`
//!   counts against the same window.
//!
//! Every chunk of data (either way) is at most [`MAX_CHUNK_BYTES`], so each
//! line stays far below [`crate::MAX_MESSAGE_BYTES`] and a ping or a
//! power-off waits behind at most one such line.
//!
//! # What the guest enforces
//!
//! At most [`MAX_SESSIONS`] sessions at once (more: `failed` with
//! [`FailReason::TooManySessions`]). A `stdin` frame over
//! [`MAX_CHUNK_BYTES`], beyond the stdin credit, after an `eof`, or that
//! cannot be parsed breaks the session's input: the guest reports it with
//! [`SessionEvent::Error`], hangs the command up, and sends `exited` when it
//! ends. Other bad frames (an unknown signal, a resize without a pty) get an
//! `error` and are otherwise ignored. Frames for an id that is not open
//! (it ended, failed, was closed, or never was) are dropped silently: they
//! are the normal race of a host that had not yet read the end.
//!
//! # What the host must check
//!
//! The guest is untrusted: [`SessionState`] does all of this, and a host
//! should drive each session through it. Events must name a session the host
//! opened and that has not ended; `started` or `failed` first, then nothing
//! after `exited`/`failed`; an output chunk is at most [`MAX_CHUNK_BYTES`]
//! and never beyond the credit the host granted (stderr never on a pty);
//! stdin credit never lifts what the host may send above [`STDIN_WINDOW`];
//! messages are at most [`MAX_EVENT_MESSAGE_BYTES`] (and untrusted text: show
//! them escaped); an exit is a code 0..=255 or a signal 1..=64. The host
//! maps a signal N to exit code 128+N ([`ExitStatus::shell_code`]).
//!
//! # Users, shells, environment
//!
//! See [`OpenSession`].

use serde::{Deserialize, Serialize};

/// Most sessions a guest runs at once.
pub const MAX_SESSIONS: usize = 64;
/// Largest chunk of data in one `stdin` frame or `output` event (raw bytes).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Output credit of each stream when a session opens.
pub const INITIAL_OUTPUT_CREDIT: u64 = 256 * 1024;
/// Stdin a host may send beyond what the guest granted back.
pub const STDIN_WINDOW: u64 = 256 * 1024;
/// Longest `error`/`failed` message a guest sends (and a host accepts).
pub const MAX_EVENT_MESSAGE_BYTES: usize = 4096;
/// Longest `term` of a pty.
pub const MAX_TERM_BYTES: usize = 64;
/// Longest line carrying a data chunk (a `stdin` frame or an `output`
/// event): the base64 of [`MAX_CHUNK_BYTES`] and its envelope.
pub const MAX_DATA_LINE_BYTES: usize = MAX_CHUNK_BYTES.div_ceil(3) * 4 + 256;
/// Longest `open` line the guest accepts (argv and env included).
pub const MAX_OPEN_LINE_BYTES: usize = crate::MAX_MESSAGE_BYTES;
/// Signals the guest queues for one session before refusing more (a
/// command that does not die of them is not helped by a thousand more).
pub const MAX_PENDING_SIGNALS: usize = 32;
/// After the command exits, output that a background process keeps
/// writing to its pipes (or pty) is forwarded up to this much per stream,
/// then the guest stops reading ([`ExitStatus::output_open`]). The command's
/// own output still in the pipe is always well within it (a pipe holds at
/// most 1 MiB).
pub const MAX_TRAILING_OUTPUT: u64 = 2 * 1024 * 1024;
/// After the command exits, pipes that a background process holds open but
/// that stay empty this long (in milliseconds) are let go.
pub const TRAILING_QUIET_MS: u64 = 100;

/// One frame of a session, from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub session: u64,
    pub op: SessionOp,
}

/// What the host asks of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionOp {
    /// Start the command.
    Open(OpenSession),
    /// Bytes for the command's standard input (or typed on its pty).
    Stdin(StdinData),
    /// More output credit.
    Credit(OutputCredit),
    /// Deliver a signal: without a pty to the command's process group
    /// (the command is a session and process-group leader), with a pty to
    /// the pty's foreground process group.
    Signal(SignalRequest),
    /// The terminal's new size (pty sessions only): the kernel sends
    /// SIGWINCH to the foreground process group.
    Resize(WindowSize),
    /// The client went away: hang the command up (SIGHUP to its process
    /// group; with a pty, the pty is hung up) and forget the session.
    Close,
}

/// Start a command.
///
/// **User.** `user` (a name, or a numeric uid, looked up in the guest's
/// `/etc/passwd`, read directly: the agent is static, no NSS); absent, the
/// agent's own user (root). The command runs with that user's primary group
/// and its supplementary groups from `/etc/group` (setgroups, setgid, then
/// setuid). A user not found: `failed` with [`FailReason::NoSuchUser`].
///
/// **Command.** `argv` as given, the program looked up in `PATH` (that of
/// `env` if it sets one). `login: true` runs it through the user's shell
/// (its `/etc/passwd` field, `/bin/sh` if empty) as a login shell, so that
/// the shell's profile sets the environment up: argv0 `-bash` (a dash and
/// the shell's name), `-c 'exec "$@"'`, then `argv`. An empty `argv` is the
/// user's interactive login shell (argv0 `-bash`, no arguments), whatever
/// `login` says.
///
/// **Environment** (a fresh one, as a login gives): `PATH` (the agent's),
/// `HOME`, `USER`, `LOGNAME`, `SHELL` of the user, `TERM` with a pty, `LANG`,
/// `LC_*` and `TZ` from the agent's environment; then `env` on top. In the
/// tiny image, `PATH=/bin:/sbin:/usr/bin:/usr/sbin`, `HOME=/root`,
/// `SHELL=/bin/sh` (busybox), and a login shell also gets
/// `PS1='\u@\h:\w\$ '` (there is no `/etc/profile`; no `ENV` file).
///
/// **Directory.** `cwd` (failing that: `failed`, [`FailReason::BadCwd`]);
/// absent, the user's home (`/` if it cannot be entered), except in the
/// tiny image, whose sessions start in `/`. Entered after the user switch,
/// so the user's own permissions apply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpenSession {
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub login: bool,
    /// Run on a new pty (the command a session leader with the pty as its
    /// controlling terminal) instead of pipes. Its output is the single
    /// `stdout` stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtyRequest>,
}

/// A pty's initial size and terminal type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyRequest {
    pub rows: u16,
    pub cols: u16,
    /// `TERM` (printable ASCII, at most [`MAX_TERM_BYTES`]);
    /// `xterm-256color` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// Input bytes (at most [`MAX_CHUNK_BYTES`]); `eof` closes the command's
/// standard input after them (ignored with a pty: type the terminal's EOF
/// character, 0x04, instead).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StdinData {
    #[serde(default, with = "crate::b64", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
}

/// Output credit to add, per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputCredit {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stdout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stderr: u64,
}

impl OutputCredit {
    /// `bytes` more for `stream` alone.
    pub fn of(stream: Stream, bytes: u64) -> OutputCredit {
        match stream {
            Stream::Stdout => OutputCredit {
                stdout: bytes,
                stderr: 0,
            },
            Stream::Stderr => OutputCredit {
                stdout: 0,
                stderr: bytes,
            },
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Which signal to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: Signal,
}

/// A signal by name (`"INT"`, `"SIGINT"`, any case) or by its Linux
/// number. Prefer names: a host's own numbers may differ (macOS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Signal {
    Number(i32),
    Name(String),
}

/// The standard Linux signals (x86, arm, riscv numbering), by number.
const LINUX_SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Highest signal number on Linux (`SIGRTMAX`).
pub const MAX_SIGNAL: i32 = 64;

/// The Linux name of signal `number` without `SIG` (`9` -> `"KILL"`).
pub fn signal_name(number: i32) -> Option<&'static str> {
    usize::try_from(number)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| LINUX_SIGNALS.get(i))
        .copied()
}

impl Signal {
    /// The Linux signal number, if this names one (1..=64).
    pub fn number(&self) -> Option<i32> {
        match self {
            Signal::Number(n) => (1..=MAX_SIGNAL).contains(n).then_some(*n),
            Signal::Name(name) => {
                let upper = name.to_ascii_uppercase();
                let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
                match bare {
                    "IOT" => Some(6),
                    "POLL" => Some(29),
                    _ => LINUX_SIGNALS
                        .iter()
                        .position(|known| *known == bare)
                        .map(|i| i as i32 + 1),
                }
            }
        }
    }
}

/// A session event, from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionEvent {
    /// The command runs (`pid` is the guest's).
    Started { pid: i32 },
    /// Output, within the credit.
    Output(OutputData),
    /// The host may send this many more bytes of stdin.
    StdinCredit { bytes: u64 },
    /// The command no longer reads its input (its pipe closed): stdin sent
    /// from now on is dropped; stop sending.
    StdinClosed,
    /// How the command ended; the last event of the session.
    Exited(ExitStatus),
    /// The command could not be started; the last event of the session.
    Failed(StartFailure),
    /// The guest refused a frame of the host's (see the module docs for
    /// which errors end the session).
    Error { message: String },
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output, or everything a pty shows.
    Stdout,
    Stderr,
}

impl Stream {
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// A chunk of output (at most [`MAX_CHUNK_BYTES`], never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputData {
    pub stream: Stream,
    #[serde(with = "crate::b64")]
    pub data: Vec<u8>,
}

/// How a command ended: `code` (it exited) or `signal` (a signal killed
/// it), exactly one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The signal dumped core.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub core_dumped: bool,
    /// When the command exited, a process it left behind still held its
    /// output open: what that process wrote within [`TRAILING_QUIET_MS`] of
    /// quiet and [`MAX_TRAILING_OUTPUT`] was forwarded, anything later is not
    /// (the command's own output always is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_open: bool,
}

impl ExitStatus {
    pub fn exited(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            ..ExitStatus::default()
        }
    }

    pub fn killed(signal: i32, core_dumped: bool) -> ExitStatus {
        ExitStatus {
            signal: Some(signal),
            core_dumped,
            ..ExitStatus::default()
        }
    }

    /// The exit code as a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }

    /// Exactly one of `code` (0..=255) and `signal` (1..=64); no core
    /// without a signal.
    pub fn check(&self) -> Result<(), String> {
        match (self.code, self.signal) {
            (Some(code), None) if (0..=255).contains(&code) && !self.core_dumped => Ok(()),
            (None, Some(signal)) if (1..=MAX_SIGNAL).contains(&signal) => Ok(()),
            _ => Err(format!(
                "an exit status needs a code 0..=255 or a signal 1..={MAX_SIGNAL}: {self:?}"
            )),
        }
    }
}

/// Why a command could not be started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartFailure {
    pub reason: FailReason,
    /// For people (at most [`MAX_EVENT_MESSAGE_BYTES`]).
    pub message: String,
}

/// The kinds of start failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailReason {
    /// The program is not in `PATH`, or its path does not exist.
    NoSuchCommand,
    /// The program exists but cannot be executed (permissions, format).
    NotExecutable,
    /// `cwd` does not exist or cannot be entered.
    BadCwd,
    /// `user` is not in the guest's `/etc/passwd`.
    NoSuchUser,
    /// Switching to the user failed (the agent does not run as root).
    CannotSwitchUser,
    /// [`MAX_SESSIONS`] are running.
    TooManySessions,
    /// No pty could be made.
    PtyUnavailable,
    /// The request cannot be run as given (a NUL byte in an argument, a
    /// bad `term`, ...).
    InvalidRequest,
    /// The guest is short of something (processes, descriptors, memory).
    Resources,
    /// Any other failure of the exec itself.
    ExecFailed,
    /// A reason this version does not know (from a newer guest agent).
    #[serde(other)]
    Unknown,
}

/// A session's rules, followed from the host's side: what the host may send
/// and whether what the guest sends keeps to the protocol. One per open
/// session; feed it every event of that session and ask it before sending
/// stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    phase: Phase,
    pty: bool,
    output_credit: [u64; 2],
    stdin_credit: u64,
    stdin_eof: bool,
    stdin_closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Running,
    Ended,
}

/// A guest event that breaks the session rules (the guest misbehaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

impl SessionState {
    /// The state right after sending `open`.
    pub fn new(open: &OpenSession) -> SessionState {
        SessionState {
            phase: Phase::Opening,
            pty: open.pty.is_some(),
            output_credit: [INITIAL_OUTPUT_CREDIT; 2],
            stdin_credit: STDIN_WINDOW,
            stdin_eof: false,
            stdin_closed: false,
        }
    }

    /// Whether the session is over (`exited` or `failed` was accepted).
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Bytes of stdin the host may send now.
    pub fn stdin_credit(&self) -> u64 {
        if self.stdin_eof || self.stdin_closed {
            0
        } else {
            self.stdin_credit
        }
    }

    /// Whether the command stopped reading its input.
    pub fn stdin_closed(&self) -> bool {
        self.stdin_closed
    }

    /// The output credit the guest still has on `stream`.
    pub fn output_credit(&self, stream: Stream) -> u64 {
        self.output_credit[stream.index()]
    }

    /// The frame that sends `data` (and `eof`), if the rules allow it:
    /// within the credit, at most [`MAX_CHUNK_BYTES`], nothing after an eof.
    pub fn stdin(&mut self, data: Vec<u8>, eof: bool) -> Result<SessionOp, String> {
        if self.stdin_eof {
            return Err("stdin after its end".into());
        }
        if data.len() > MAX_CHUNK_BYTES {
            return Err(format!(
                "a stdin chunk of {} bytes (at most {MAX_CHUNK_BYTES})",
                data.len()
            ));
        }
        let len = data.len() as u64;
        if len > self.stdin_credit {
            return Err(format!(
                "{len} bytes of stdin with {} bytes of credit",
                self.stdin_credit
            ));
        }
        self.stdin_credit -= len;
        self.stdin_eof = eof;
        Ok(SessionOp::Stdin(StdinData { data, eof }))
    }

    /// The frame that grants more output credit (saturating).
    pub fn grant(&mut self, credit: OutputCredit) -> SessionOp {
        self.output_credit[0] = self.output_credit[0].saturating_add(credit.stdout);
        self.output_credit[1] = self.output_credit[1].saturating_add(credit.stderr);
        SessionOp::Credit(credit)
    }

    /// Check one event of this session and account for it.
    pub fn accept(&mut self, event: &SessionEvent) -> Result<(), Violation> {
        let phase = self.phase;
        let bad = |what: String| Err(Violation(what));
        match event {
            _ if phase == Phase::Ended => bad("an event after the session ended".into()),
            SessionEvent::Started { pid } => {
                if phase != Phase::Opening {
                    return bad("`started` twice".into());
                }
                if *pid <= 0 {
                    return bad(format!("`started` with pid {pid}"));
                }
                self.phase = Phase::Running;
                Ok(())
            }
            SessionEvent::Failed(failure) => {
                if phase != Phase::Opening {
                    return bad("`failed` after `started`".into());
                }
                check_message(&failure.message)?;
                self.phase = Phase::Ended;
                Ok(())
            }
            SessionEvent::Error { message } => check_message(message),
            _ if phase == Phase::Opening => bad("an event before `started`".into()),
            SessionEvent::Output(output) => {
                let len = output.data.len();
                if len == 0 || len > MAX_CHUNK_BYTES {
                    return bad(format!(
                        "an output chunk of {len} bytes (1 to {MAX_CHUNK_BYTES})"
                    ));
                }
                if self.pty && output.stream == Stream::Stderr {
                    return bad("stderr output from a pty session".into());
                }
                let credit = &mut self.output_credit[output.stream.index()];
                if len as u64 > *credit {
                    return bad(format!(
                        "{len} bytes of output with {} bytes of credit",
                        *credit
                    ));
                }
                *credit -= len as u64;
                Ok(())
            }
            SessionEvent::StdinCredit { bytes } => {
                if *bytes == 0 {
                    return bad("a stdin credit of 0 bytes".into());
                }
                match self.stdin_credit.checked_add(*bytes) {
                    Some(credit) if credit <= STDIN_WINDOW => {
                        self.stdin_credit = credit;
                        Ok(())
                    }
                    _ => bad(format!(
                        "a stdin credit of {bytes} bytes beyond the window of {STDIN_WINDOW}"
                    )),
                }
            }
            SessionEvent::StdinClosed => {
                self.stdin_closed = true;
                Ok(())
            }
            SessionEvent::Exited(status) => {
                status.check().map_err(Violation)?;
                self.phase = Phase::Ended;
                Ok(())
            }
        }
    }
}

fn check_message(message: &str) -> Result<(), Violation> {
    if message.len() > MAX_EVENT_MESSAGE_BYTES {
        Err(Violation(format!(
            "a message of {} bytes (at most {MAX_EVENT_MESSAGE_BYTES})",
            message.len()
        )))
    } else {
        Ok(())
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate_message(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stream: Stream, len: usize) -> SessionEvent {
        SessionEvent::Output(OutputData {
            stream,
            data: vec![b'x'; len],
        })
    }

    #[test]
    fn signals_are_known_by_name_any_case_or_by_number() {
        for (name, number) in [
            ("INT", 2),
            ("SIGINT", 2),
            ("sigterm", 15),
            ("Kill", 9),
            ("WINCH", 28),
            ("IOT", 6),
        ] {
            assert_eq!(Signal::Name(name.into()).number(), Some(number), "{name}");
        }
        assert_eq!(Signal::Number(64).number(), Some(64));
        for bad in [Signal::Number(0), Signal::Number(65), Signal::Number(-9)] {
            assert_eq!(bad.number(), None, "{bad:?}");
        }
        assert_eq!(Signal::Name("SIGNOPE".into()).number(), None);
        assert_eq!(Signal::Name(String::new()).number(), None);
        assert_eq!(signal_name(9), Some("KILL"));
        assert_eq!(signal_name(31), Some("SYS"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(40), None);
    }

    #[test]
    fn exit_statuses_map_to_shell_codes_and_are_checked() {
        assert_eq!(ExitStatus::exited(3).shell_code(), 3);
        assert_eq!(ExitStatus::killed(9, false).shell_code(), 137);
        assert!(ExitStatus::exited(255).check().is_ok());
        assert!(ExitStatus::killed(64, true).check().is_ok());
        for bad in [
            ExitStatus::default(),
            ExitStatus::exited(256),
            ExitStatus::exited(-1),
            ExitStatus::killed(0, false),
            ExitStatus::killed(65, false),
            ExitStatus {
                code: Some(1),
                signal: Some(2),
                ..ExitStatus::default()
            },
            ExitStatus {
                core_dumped: true,
                ..ExitStatus::exited(0)
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_host_state_enforces_the_order_of_events() {
        let mut state = SessionState::new(&OpenSession::default());
        assert!(
            state.accept(&output(Stream::Stdout, 1)).is_err(),
            "before started"
        );
        let mut state = SessionState::new(&OpenSession::default());
        assert!(state.accept(&SessionEvent::Started { pid: 0 }).is_err());
        let mut state = SessionState::new(&OpenSession::default());
        state.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        assert!(state.accept(&SessionEvent::Started { pid: 5 }).is_err());
        let mut state = SessionState::new(&OpenSession::default());
        state.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        state
            .accept(&SessionEvent::Exited(ExitStatus::exited(0)))
            .unwrap();
        assert!(state.ended());
        assert!(
            state.accept(&output(Stream::Stdout, 1)).is_err(),
            "after exited"
        );
        let mut state = SessionState::new(&OpenSession::default());
        state
            .accept(&SessionEvent::Failed(StartFailure {
                reason: FailReason::BadCwd,
                message: "m".into(),
            }))
            .unwrap();
        assert!(state.ended());
        let mut state = SessionState::new(&OpenSession::default());
        state.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        assert!(
            state
                .accept(&SessionEvent::Failed(StartFailure {
                    reason: FailReason::BadCwd,
                    message: "m".into(),
                }))
                .is_err()
        );
        assert!(
            state
                .accept(&SessionEvent::Error {
                    message: "x".repeat(MAX_EVENT_MESSAGE_BYTES + 1)
                })
                .is_err()
        );
        assert!(
            state
                .accept(&SessionEvent::Exited(ExitStatus::default()))
                .is_err()
        );
    }

    #[test]
    fn the_host_state_holds_the_guest_to_its_output_credit() {
        let mut state = SessionState::new(&OpenSession::default());
        state.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        let chunks = INITIAL_OUTPUT_CREDIT as usize / MAX_CHUNK_BYTES;
        for _ in 0..chunks {
            state
                .accept(&output(Stream::Stdout, MAX_CHUNK_BYTES))
                .unwrap();
        }
        assert_eq!(state.output_credit(Stream::Stdout), 0);
        assert!(
            state.accept(&output(Stream::Stdout, 1)).is_err(),
            "beyond the credit"
        );
        state.accept(&output(Stream::Stderr, 1)).unwrap();
        state.grant(OutputCredit {
            stdout: 10,
            stderr: 0,
        });
        assert!(state.accept(&output(Stream::Stdout, 11)).is_err());
        state.accept(&output(Stream::Stdout, 10)).unwrap();
        assert!(state.accept(&output(Stream::Stderr, 0)).is_err(), "empty");
        state.grant(OutputCredit {
            stdout: u64::MAX,
            stderr: u64::MAX,
        });
        assert!(
            state
                .accept(&output(Stream::Stdout, MAX_CHUNK_BYTES + 1))
                .is_err(),
            "too big a chunk"
        );
        let mut pty = SessionState::new(&OpenSession {
            pty: Some(PtyRequest {
                rows: 1,
                cols: 1,
                term: None,
            }),
            ..OpenSession::default()
        });
        pty.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        assert!(pty.accept(&output(Stream::Stderr, 1)).is_err());
    }

    #[test]
    fn the_host_state_keeps_stdin_within_its_window() {
        let mut state = SessionState::new(&OpenSession::default());
        assert_eq!(state.stdin_credit(), STDIN_WINDOW);
        assert!(state.stdin(vec![0; MAX_CHUNK_BYTES + 1], false).is_err());
        let chunks = STDIN_WINDOW as usize / MAX_CHUNK_BYTES;
        for _ in 0..chunks {
            state.stdin(vec![0; MAX_CHUNK_BYTES], false).unwrap();
        }
        assert_eq!(state.stdin_credit(), 0);
        assert!(state.stdin(vec![0], false).is_err());
        state.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        state
            .accept(&SessionEvent::StdinCredit { bytes: 100 })
            .unwrap();
        assert_eq!(state.stdin_credit(), 100);
        assert!(
            state
                .accept(&SessionEvent::StdinCredit {
                    bytes: STDIN_WINDOW
                })
                .is_err(),
            "beyond the window"
        );
        assert!(
            state
                .accept(&SessionEvent::StdinCredit { bytes: 0 })
                .is_err()
        );
        assert_eq!(
            state.stdin(b"ab".to_vec(), true).unwrap(),
            SessionOp::Stdin(StdinData {
                data: b"ab".to_vec(),
                eof: true
            })
        );
        assert_eq!(state.stdin_credit(), 0, "after the end");
        assert!(state.stdin(vec![], false).is_err());
        let mut closed = SessionState::new(&OpenSession::default());
        closed.accept(&SessionEvent::Started { pid: 5 }).unwrap();
        closed.accept(&SessionEvent::StdinClosed).unwrap();
        assert!(closed.stdin_closed());
        assert_eq!(closed.stdin_credit(), 0);
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_message("héllo".into(), 2), "h");
        assert_eq!(truncate_message("héllo".into(), 3), "hé");
        assert_eq!(truncate_message("abc".into(), 10), "abc");
    }
}
