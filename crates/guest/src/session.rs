//! Streaming sessions (see `vmkeep_protocol::session` for the protocol).
//!
//! The channel's reader thread hands every session frame to
//! [`Sessions::handle`], which never blocks on a command: it queues what
//! the frame says in the session's inbox (stdin bounded by the window it
//! granted) and wakes the session's thread through an eventfd. Each session
//! has one thread, which starts the command and then polls its pipes (or
//! pty) and the eventfd: it writes queued stdin, grants stdin credit back,
//! reads output only while it has credit (so a command whose output is not
//! consumed blocks), delivers signals and window sizes, and reports the exit
//! once the output is over. The reaper thread learns the exit and puts it in
//! the inbox. What one session holds is bounded: its stdin window and one
//! output chunk.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmkeep_protocol::FromGuest;
use vmkeep_protocol::session::{
    self as proto, ExitStatus, FailReason, INITIAL_OUTPUT_CREDIT, MAX_CHUNK_BYTES,
    MAX_EVENT_MESSAGE_BYTES, MAX_PENDING_SIGNALS, MAX_SESSIONS, MAX_TERM_BYTES,
    MAX_TRAILING_OUTPUT, OpenSession, OutputData, STDIN_WINDOW, SessionEvent, SessionOp,
    SessionRequest, StartFailure, Stream, TRAILING_QUIET_MS, WindowSize,
};

use crate::exec;
use crate::pty;
use crate::reaper::{Reaper, WaitStatus};
use crate::spawn::{self, Identity, LaunchError, Program, Stage, Stdio};
use crate::sys;
use crate::users::{self, User};

/// Where session events go: the channel, or a test's fake host.
pub trait Outbox: Send + Sync {
    /// Send one message; `false` if it could not be sent (no host).
    fn send(&self, message: &FromGuest) -> bool;
}

/// What sessions need to know about the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent's environment (for `PATH`, `LANG`, ...).
    pub base_env: Vec<(String, String)>,
    /// Init mode: the tiny image (sessions start in `/`, a login shell gets
    /// a prompt).
    pub tiny_image: bool,
    pub passwd: PathBuf,
    pub group: PathBuf,
}

/// Stdin written to a command is granted back in batches of at least this
/// much (or when the queue empties).
const GRANT_BATCH: u64 = 16 * 1024;
/// `TERM` of a pty whose request names none.
const DEFAULT_TERM: &str = "xterm-256color";
/// A tiny-image login shell's prompt (busybox sh: user@host:dir#).
const TINY_PS1: &str = "\\u@\\h:\\w\\$ ";

/// A session as both threads see it.
struct Shared {
    inbox: Mutex<Inbox>,
    wake: Wake,
}

/// What the host asked for and the session thread has not acted on yet.
#[derive(Default)]
struct Inbox {
    pty: bool,
    stdin: VecDeque<u8>,
    stdin_eof: bool,
    /// Bytes the host may still send: the window less what it sent that
    /// the command has not taken yet.
    stdin_allowed: u64,
    /// The command closed its input: what comes is dropped.
    stdin_dropping: bool,
    /// Output credit granted and not yet taken by the session thread.
    credit: [u64; 2],
    /// Signals and window sizes, in the order they came, each after the
    /// stdin bytes the host sent before it.
    controls: VecDeque<Pending>,
    /// The host closed the session (or the link is gone).
    closed: bool,
    /// The host broke the input stream: hang the command up.
    broken: bool,
    /// Why, for the session thread to report (before the exit it causes).
    broken_message: Option<String>,
    exit: Option<WaitStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A signal or a window size the host sent, to be applied once the stdin
/// it sent before it has been written: a resize then a command typed in
/// the new size reach the pty in that order.
struct Pending {
    /// Queued stdin bytes that go before it.
    ahead: usize,
    control: Control,
}

enum Control {
    Signal(i32),
    Resize(WindowSize),
}

/// An eventfd that wakes a session's thread.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this descriptor.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        // A full counter (never in practice) still wakes the reader.
        let _ = sys::write(self.0.as_raw_fd(), &1u64.to_ne_bytes());
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = sys::read(self.0.as_raw_fd(), &mut buf);
    }
}

/// The sessions of the agent.
pub struct Sessions {
    reaper: &'static Reaper,
    outbox: Arc<dyn Outbox>,
    settings: Settings,
    table: Mutex<HashMap<u64, Arc<Shared>>>,
}

impl Sessions {
    pub fn new(reaper: &'static Reaper, outbox: Arc<dyn Outbox>, settings: Settings) -> Arc<Self> {
        Arc::new(Sessions {
            reaper,
            outbox,
            settings,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<u64, Arc<Shared>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: u64) -> Option<Arc<Shared>> {
        self.table().get(&id).cloned()
    }

    fn send(&self, id: u64, event: SessionEvent) -> bool {
        self.outbox.send(&FromGuest::Session { id, event })
    }

    fn error(&self, id: u64, message: String) {
        let message = proto::truncate_message(message, MAX_EVENT_MESSAGE_BYTES);
        self.send(id, SessionEvent::Error { message });
    }

    /// How many sessions are open.
    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// Act on one frame from the host (on the reader thread: never blocks
    /// on a command).
    pub fn handle(self: &Arc<Self>, request: SessionRequest) {
        let id = request.session;
        match request.op {
            SessionOp::Open(open) => self.open(id, open),
            SessionOp::Close => {
                let removed = self.table().remove(&id);
                if let Some(shared) = removed {
                    shared.lock().closed = true;
                    shared.wake.wake();
                }
            }
            op => {
                let Some(shared) = self.get(id) else {
                    // Ended, failed, closed or never opened: the normal race
                    // of a host that has not read the end yet.
                    return;
                };
                let problem = {
                    let mut inbox = shared.lock();
                    match op {
                        SessionOp::Stdin(stdin) => {
                            // Reported by the session thread, ahead of the exit.
                            if let Some(message) = take_stdin(&mut inbox, stdin) {
                                inbox.broken_message = Some(message);
                            }
                            None
                        }
                        SessionOp::Credit(credit) => {
                            inbox.credit[0] = inbox.credit[0].saturating_add(credit.stdout);
                            inbox.credit[1] = inbox.credit[1].saturating_add(credit.stderr);
                            None
                        }
                        SessionOp::Signal(request) => match request.signal.number() {
                            None => Some(format!("unknown signal {:?}", request.signal)),
                            Some(_)
                                if inbox
                                    .controls
                                    .iter()
                                    .filter(|p| matches!(p.control, Control::Signal(_)))
                                    .count()
                                    >= MAX_PENDING_SIGNALS =>
                            {
                                Some(format!(
                                    "more than {MAX_PENDING_SIGNALS} signals pending; dropped"
                                ))
                            }
                            Some(number) => {
                                let ahead = inbox.stdin.len();
                                inbox.controls.push_back(Pending {
                                    ahead,
                                    control: Control::Signal(number),
                                });
                                None
                            }
                        },
                        SessionOp::Resize(size) if inbox.pty => {
                            // A newer size makes an older one not yet
                            // applied moot only if no stdin lies between.
                            let ahead = inbox.stdin.len();
                            if let Some(last) = inbox.controls.back_mut()
                                && last.ahead == ahead
                                && matches!(last.control, Control::Resize(_))
                            {
                                last.control = Control::Resize(size);
                            } else if inbox.controls.len() < 2 * MAX_PENDING_SIGNALS {
                                inbox.controls.push_back(Pending {
                                    ahead,
                                    control: Control::Resize(size),
                                });
                            }
                            None
                        }
                        SessionOp::Resize(_) => Some("resize: the session has no pty".to_string()),
                        SessionOp::Open(_) | SessionOp::Close => None,
                    }
                };
                shared.wake.wake();
                if let Some(message) = problem {
                    self.error(id, message);
                }
            }
        }
    }

    /// A session frame that could not be parsed. A broken `stdin` frame
    /// breaks the input stream (bytes were lost); anything else is only
    /// refused.
    pub fn bad_frame(&self, id: u64, op: Option<&str>, message: String) {
        let Some(shared) = self.get(id) else {
            return;
        };
        if op == Some("stdin") {
            let mut inbox = shared.lock();
            if !inbox.broken {
                inbox.broken = true;
                inbox.broken_message = Some(format!("{message}; the input is broken: hanging up"));
            }
            drop(inbox);
            shared.wake.wake();
        } else {
            self.error(id, message);
        }
    }

    /// The host link is gone: close every session.
    pub fn hang_up_all(&self) {
        let sessions: Vec<Arc<Shared>> = self.table().drain().map(|(_, s)| s).collect();
        for shared in sessions {
            shared.lock().closed = true;
            shared.wake.wake();
        }
    }

    fn fail(&self, id: u64, reason: FailReason, message: String) {
        let message = proto::truncate_message(message, MAX_EVENT_MESSAGE_BYTES);
        self.send(id, SessionEvent::Failed(StartFailure { reason, message }));
    }

    fn open(self: &Arc<Self>, id: u64, open: OpenSession) {
        let mut table = self.table();
        if table.contains_key(&id) {
            drop(table);
            return self.error(id, format!("open: session {id} is already open"));
        }
        if table.len() >= MAX_SESSIONS {
            drop(table);
            return self.fail(
                id,
                FailReason::TooManySessions,
                format!("{MAX_SESSIONS} sessions are open already"),
            );
        }
        let wake = match Wake::new() {
            Ok(wake) => wake,
            Err(e) => {
                drop(table);
                return self.fail(
                    id,
                    FailReason::Resources,
                    format!("cannot make an eventfd: {e}"),
                );
            }
        };
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                pty: open.pty.is_some(),
                stdin_allowed: STDIN_WINDOW,
                ..Inbox::default()
            }),
            wake,
        });
        table.insert(id, shared.clone());
        drop(table);
        let sessions = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("session-{id}"))
            .spawn(move || sessions.run(id, shared, open));
        if let Err(e) = spawned {
            self.forget(id, None);
            self.fail(
                id,
                FailReason::Resources,
                format!("cannot start a thread: {e}"),
            );
        }
    }

    /// Drop `id` from the table, if it is still this session (a closed id
    /// may have been opened again).
    fn forget(&self, id: u64, shared: Option<&Arc<Shared>>) {
        let mut table = self.table();
        if let Some(current) = table.get(&id)
            && shared.is_none_or(|s| Arc::ptr_eq(s, current))
        {
            table.remove(&id);
        }
    }

    /// The session's thread.
    fn run(self: Arc<Self>, id: u64, shared: Arc<Shared>, open: OpenSession) {
        let started = match self.start(&shared, &open) {
            Ok(started) => started,
            Err(failure) => {
                self.forget(id, Some(&shared));
                if !shared.lock().closed {
                    self.fail(id, failure.reason, failure.message);
                }
                return;
            }
        };
        let pid = started.pid;
        if shared.lock().closed {
            let mut running = Running::new(self.clone(), id, shared, started);
            running.hang_up();
            return;
        }
        if !self.send(id, SessionEvent::Started { pid }) {
            let mut running = Running::new(self.clone(), id, shared.clone(), started);
            running.hang_up();
            self.forget(id, Some(&shared));
            return;
        }
        Running::new(self.clone(), id, shared, started).serve();
    }

    /// Prepare and start the command.
    fn start(&self, shared: &Arc<Shared>, open: &OpenSession) -> Result<Started, StartFailure> {
        let prepared = prepare(&self.settings, open)?;
        let (stdio, ends) = match &open.pty {
            Some(request) => {
                let size = WindowSize {
                    rows: request.rows,
                    cols: request.cols,
                };
                let owner = prepared.identity.as_ref().map(|identity| {
                    let tty = users::read_database(&self.settings.group)
                        .ok()
                        .and_then(|text| users::group_id(&text, "tty"));
                    (identity.uid, tty.unwrap_or(identity.gid))
                });
                let pty = pty::open(size, owner).map_err(|e| StartFailure {
                    reason: FailReason::PtyUnavailable,
                    message: format!("cannot open a pty: {e}"),
                })?;
                let reader = pty.master.try_clone().map_err(resources)?;
                (
                    Stdio::Pty(pty.slave),
                    Ends {
                        stdin: Some(pty.master),
                        output: [Some(reader), None],
                    },
                )
            }
            None => {
                let (stdin_r, stdin_w) = spawn::pipe().map_err(resources)?;
                let (stdout_r, stdout_w) = spawn::pipe().map_err(resources)?;
                let (stderr_r, stderr_w) = spawn::pipe().map_err(resources)?;
                (
                    Stdio::Pipes([stdin_r, stdout_w, stderr_w]),
                    Ends {
                        stdin: Some(stdin_w),
                        output: [Some(stdout_r), Some(stderr_r)],
                    },
                )
            }
        };
        for fd in ends.stdin.iter().chain(ends.output.iter().flatten()) {
            sys::set_nonblocking(fd.as_raw_fd()).map_err(resources)?;
        }
        let on_exit_shared = shared.clone();
        let on_exit = Box::new(move |status: WaitStatus| {
            on_exit_shared.lock().exit = Some(status);
            on_exit_shared.wake.wake();
        });
        let pid = spawn::launch(self.reaper, &prepared.program, stdio, on_exit)
            .map_err(|e| launch_failure(e, &prepared, open.pty.is_some()))?;
        Ok(Started {
            pid,
            pty: open.pty.is_some(),
            ends,
        })
    }
}

fn resources(e: io::Error) -> StartFailure {
    StartFailure {
        reason: FailReason::Resources,
        message: format!("cannot set up the command's streams: {e}"),
    }
}

/// Queue a stdin frame. A frame that breaks the rules breaks the input
/// (the session is hung up): the message says so.
fn take_stdin(inbox: &mut Inbox, stdin: proto::StdinData) -> Option<String> {
    if inbox.broken {
        return None;
    }
    let len = stdin.data.len();
    let problem = if inbox.stdin_eof && (len > 0 || !stdin.eof) {
        Some("stdin after its end".to_string())
    } else if len > MAX_CHUNK_BYTES {
        Some(format!(
            "a stdin chunk of {len} bytes (at most {MAX_CHUNK_BYTES})"
        ))
    } else if len as u64 > inbox.stdin_allowed {
        Some(format!(
            "{len} bytes of stdin beyond the credit of {} bytes",
            inbox.stdin_allowed
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        inbox.broken = true;
        return Some(format!("{problem}; the input is broken: hanging up"));
    }
    inbox.stdin_allowed -= len as u64;
    if !inbox.stdin_dropping {
        inbox.stdin.extend(stdin.data);
        #[cfg(test)]
        tests::STDIN_PEAK.fetch_max(inbox.stdin.len(), std::sync::atomic::Ordering::Relaxed);
    }
    inbox.stdin_eof |= stdin.eof;
    None
}

/// What the command runs as, with what.
struct Prepared {
    program: Program,
    identity: Option<Identity>,
    /// For messages: what was executed and where.
    shown_program: String,
    shown_cwd: String,
    explicit_cwd: bool,
}

fn invalid(message: String) -> StartFailure {
    StartFailure {
        reason: FailReason::InvalidRequest,
        message,
    }
}

fn c_string(text: &str, what: &str) -> Result<CString, StartFailure> {
    CString::new(text).map_err(|_| invalid(format!("{what} contains a NUL byte: {text:?}")))
}

/// The user a session runs as: the one named, or the agent's own.
fn session_user(settings: &Settings, spec: Option<&str>) -> Result<User, StartFailure> {
    let passwd = match users::read_database(&settings.passwd) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(StartFailure {
                reason: FailReason::NoSuchUser,
                message: format!("cannot read {}: {e}", settings.passwd.display()),
            });
        }
    };
    match spec {
        Some(spec) => users::find_user(&passwd, spec).ok_or_else(|| StartFailure {
            reason: FailReason::NoSuchUser,
            message: format!("no user {spec:?} in {}", settings.passwd.display()),
        }),
        None => {
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            Ok(users::find_uid(&passwd, uid).unwrap_or_else(|| {
                let root = uid == 0;
                User {
                    name: if root { "root".into() } else { uid.to_string() },
                    uid,
                    gid,
                    home: if root && std::path::Path::new("/root").is_dir() {
                        "/root".into()
                    } else {
                        "/".into()
                    },
                    shell: "/bin/sh".into(),
                }
            }))
        }
    }
}

/// The session's environment (see `OpenSession`'s docs).
fn session_env(
    settings: &Settings,
    user: &User,
    term: Option<&str>,
    login_shell: bool,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let base = &settings.base_env;
    let path = base
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| exec::DEFAULT_PATH.to_string());
    let mut env = vec![
        ("PATH".to_string(), path),
        ("HOME".to_string(), user.home.clone()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
        ("SHELL".to_string(), user.shell.clone()),
    ];
    if let Some(term) = term {
        env.push(("TERM".to_string(), term.to_string()));
    }
    for (key, value) in base {
        if key == "LANG" || key == "TZ" || key.starts_with("LC_") {
            env.push((key.clone(), value.clone()));
        }
    }
    if settings.tiny_image && login_shell {
        env.push(("PS1".to_string(), TINY_PS1.to_string()));
    }
    exec::merge_env(&env, extra)
}

fn prepare(settings: &Settings, open: &OpenSession) -> Result<Prepared, StartFailure> {
    let user = session_user(settings, open.user.as_deref())?;
    let term = match &open.pty {
        Some(pty) => {
            let term = pty.term.as_deref().unwrap_or(DEFAULT_TERM);
            if term.is_empty()
                || term.len() > MAX_TERM_BYTES
                || !term.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(format!("a bad terminal type {term:?}")));
            }
            Some(term)
        }
        None => None,
    };
    let shell_argv0 = || {
        let name = user.shell.rsplit('/').next().unwrap_or("sh");
        format!("-{name}")
    };
    let login_shell = open.argv.is_empty();
    let env = session_env(settings, &user, term, login_shell, &open.env);
    let (program, argv): (String, Vec<String>) = if login_shell {
        (user.shell.clone(), vec![shell_argv0()])
    } else if open.login {
        let mut argv = vec![
            shell_argv0(),
            "-c".to_string(),
            "exec \"$@\"".to_string(),
            shell_argv0(),
        ];
        argv.extend(open.argv.iter().cloned());
        (user.shell.clone(), argv)
    } else {
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(exec::DEFAULT_PATH);
        let name = &open.argv[0];
        let resolved = exec::resolve_program(name, path_var).ok_or_else(|| StartFailure {
            reason: FailReason::NoSuchCommand,
            message: format!("no such command: {name}"),
        })?;
        (resolved.display().to_string(), open.argv.clone())
    };
    let (cwd, explicit_cwd) = match &open.cwd {
        Some(cwd) => (cwd.clone(), true),
        None if settings.tiny_image => ("/".to_string(), false),
        None => (user.home.clone(), false),
    };
    let mut c_env = Vec::with_capacity(env.len());
    for (key, value) in &env {
        if key.is_empty() || key.contains('=') {
            return Err(invalid(format!("a bad environment variable name {key:?}")));
        }
        c_env.push(c_string(&format!("{key}={value}"), "the environment")?);
    }
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let identity = if euid != 0 && user.uid == euid && user.gid == egid {
        // Already that user, without the right to set groups.
        None
    } else {
        let groups = users::read_database(&settings.group)
            .map(|text| users::groups_of(&text, &user.name, user.gid))
            .unwrap_or_else(|_| vec![user.gid]);
        Some(Identity {
            uid: user.uid,
            gid: user.gid,
            groups,
        })
    };
    let program_c = c_string(&program, "the program")?;
    let argv_c = argv
        .iter()
        .map(|arg| c_string(arg, "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        program: Program {
            path: program_c,
            argv: argv_c,
            env: c_env,
            cwd: c_string(&cwd, "the directory")?,
            cwd_fallback: !explicit_cwd,
            identity: identity.clone(),
        },
        identity,
        shown_program: program,
        shown_cwd: cwd,
        explicit_cwd,
    })
}

fn launch_failure(error: LaunchError, prepared: &Prepared, pty: bool) -> StartFailure {
    let program = &prepared.shown_program;
    match error {
        LaunchError::Spawn(e) => StartFailure {
            reason: FailReason::Resources,
            message: format!("cannot start {program}: {e}"),
        },
        LaunchError::Child { stage, error } => {
            let (reason, message) = match stage {
                Stage::Setup if pty => (
                    FailReason::PtyUnavailable,
                    format!("cannot make the pty the controlling terminal: {error}"),
                ),
                Stage::Setup => (
                    FailReason::Resources,
                    format!("cannot set up the standard streams: {error}"),
                ),
                Stage::Identity => (
                    FailReason::CannotSwitchUser,
                    format!("cannot switch to the user: {error}"),
                ),
                Stage::Chdir => (
                    FailReason::BadCwd,
                    format!(
                        "cannot change directory to {}{}: {error}",
                        prepared.shown_cwd,
                        if prepared.explicit_cwd {
                            ""
                        } else {
                            " (nor /)"
                        }
                    ),
                ),
                Stage::Exec => match error.raw_os_error() {
                    Some(libc::ENOENT) => (
                        FailReason::NoSuchCommand,
                        format!("no such command: {program}"),
                    ),
                    Some(
                        libc::EACCES | libc::ENOEXEC | libc::EPERM | libc::EISDIR | libc::ETXTBSY,
                    ) => (
                        FailReason::NotExecutable,
                        format!("cannot execute {program}: {error}"),
                    ),
                    _ => (
                        FailReason::ExecFailed,
                        format!("cannot execute {program}: {error}"),
                    ),
                },
            };
            StartFailure { reason, message }
        }
    }
}

/// The agent's ends of the command's streams.
struct Ends {
    /// Stdin's write end, or the pty master.
    stdin: Option<OwnedFd>,
    /// Stdout's and stderr's read ends (a pty: a second descriptor of the
    /// master as stdout).
    output: [Option<OwnedFd>; 2],
}

struct Started {
    pid: i32,
    pty: bool,
    ends: Ends,
}

/// A running session, on its thread.
struct Running {
    sessions: Arc<Sessions>,
    id: u64,
    shared: Arc<Shared>,
    pid: i32,
    pty: bool,
    /// Kept for the pty's ioctls even once input is over.
    master: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    output: [Option<OwnedFd>; 2],
    credit: [u64; 2],
    exit: Option<WaitStatus>,
    /// Output forwarded since the exit, per stream.
    trailing: [u64; 2],
    /// A process left behind still held the output when it was let go.
    output_open: bool,
    /// When output last came (or the exit, if later).
    last_data: Instant,
    /// Stdin written and not yet granted back.
    to_grant: u64,
    hung_up: bool,
    buf: Vec<u8>,
}

impl Running {
    fn new(sessions: Arc<Sessions>, id: u64, shared: Arc<Shared>, started: Started) -> Running {
        let Started { pid, pty, ends } = started;
        let (master, stdin) = if pty {
            (ends.stdin, None)
        } else {
            (None, ends.stdin)
        };
        Running {
            sessions,
            id,
            shared,
            pid,
            pty,
            master,
            stdin,
            output: ends.output,
            credit: [INITIAL_OUTPUT_CREDIT; 2],
            exit: None,
            trailing: [0; 2],
            output_open: false,
            last_data: Instant::now(),
            to_grant: 0,
            hung_up: false,
            buf: vec![0u8; MAX_CHUNK_BYTES],
        }
    }

    /// Where stdin goes: the pipe, or the pty master.
    fn input_fd(&self) -> Option<&OwnedFd> {
        if self.pty {
            self.master.as_ref()
        } else {
            self.stdin.as_ref()
        }
    }

    fn send(&self, event: SessionEvent) -> bool {
        self.sessions.send(self.id, event)
    }

    /// Signal the command: its process group, or the pty's foreground one.
    fn signal(&self, signal: i32) {
        if self.exit.is_some() {
            return;
        }
        let group = self
            .master
            .as_ref()
            .and_then(pty::foreground_group)
            .unwrap_or(self.pid);
        let _ = sys::kill(-group, signal);
    }

    /// Hang the command up, as a dropped connection does: SIGHUP (and
    /// SIGCONT, for a stopped one) to its process group and the pty's
    /// foreground group, and close everything (a pty master's close hangs
    /// the terminal up).
    fn hang_up(&mut self) {
        if !self.hung_up && self.exit.is_none() {
            let foreground = self.master.as_ref().and_then(pty::foreground_group);
            for group in std::iter::once(self.pid).chain(foreground.filter(|g| *g != self.pid)) {
                let _ = sys::kill(-group, libc::SIGHUP);
                let _ = sys::kill(-group, libc::SIGCONT);
            }
        }
        self.hung_up = true;
        self.stdin = None;
        self.output = [None, None];
        self.master = None;
    }

    fn serve(mut self) {
        loop {
            if !self.step() {
                return;
            }
        }
    }

    /// Take what the host sent, write the queued stdin and apply the
    /// signals and window sizes in their place among it. Returns whether
    /// the host closed the session and the events to send.
    fn take_inbox(&mut self) -> (bool, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut inbox = self.shared.lock();
        for (credit, granted) in self.credit.iter_mut().zip(inbox.credit.iter_mut()) {
            *credit = credit.saturating_add(std::mem::take(granted));
        }
        if self.exit.is_none() && inbox.exit.is_some() {
            self.exit = inbox.exit;
            self.last_data = Instant::now();
        }
        let closed = inbox.closed;
        if let Some(message) = inbox.broken_message.take() {
            let message = proto::truncate_message(message, MAX_EVENT_MESSAGE_BYTES);
            events.push(SessionEvent::Error { message });
        }
        if inbox.broken && !self.hung_up {
            drop(inbox);
            self.hang_up();
            inbox = self.shared.lock();
        }
        // Write what stdin is queued, each control when its turn comes.
        let mut stdin_gone = false;
        if let Some(fd) = self.input_fd() {
            let fd = fd.as_raw_fd();
            loop {
                while inbox.controls.front().is_some_and(|p| p.ahead == 0) {
                    if let Some(pending) = inbox.controls.pop_front() {
                        self.apply(pending.control);
                    }
                }
                if inbox.stdin.is_empty() {
                    break;
                }
                let limit = inbox.controls.front().map_or(usize::MAX, |p| p.ahead);
                let (front, _) = inbox.stdin.as_slices();
                let chunk = &front[..front.len().min(limit)];
                match sys::write(fd, chunk) {
                    Ok(n) => {
                        inbox.stdin.drain(..n);
                        for pending in inbox.controls.iter_mut() {
                            pending.ahead = pending.ahead.saturating_sub(n);
                        }
                        self.to_grant += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // EPIPE: the command closed its input.
                        stdin_gone = true;
                        break;
                    }
                }
            }
            if inbox.stdin.is_empty() && inbox.stdin_eof && !self.pty {
                self.stdin = None;
            }
        }
        // With no stdin left to write (none queued, or no way to write it),
        // nothing holds the controls back.
        if self.input_fd().is_none() || stdin_gone || inbox.stdin.is_empty() {
            while let Some(pending) = inbox.controls.pop_front() {
                self.apply(pending.control);
            }
        }
        if stdin_gone && !inbox.stdin_dropping {
            inbox.stdin.clear();
            inbox.stdin_dropping = true;
            self.stdin = None;
            self.to_grant = 0;
            events.push(SessionEvent::StdinClosed);
        }
        if self.to_grant > 0
            && !inbox.stdin_dropping
            && !inbox.stdin_eof
            && (self.to_grant >= GRANT_BATCH || inbox.stdin.is_empty())
        {
            // Raised before the host hears of it, so that its next frame
            // finds the room.
            inbox.stdin_allowed += self.to_grant;
            events.push(SessionEvent::StdinCredit {
                bytes: self.to_grant,
            });
            self.to_grant = 0;
        }
        (closed, events)
    }

    /// Deliver a signal or set the pty's size.
    fn apply(&self, control: Control) {
        match control {
            Control::Signal(signal) => self.signal(signal),
            Control::Resize(size) => {
                if let Some(master) = &self.master
                    && let Err(e) = pty::set_size(master, size)
                {
                    self.sessions.error(self.id, format!("resize: {e}"));
                }
            }
        }
    }

    fn stdin_pending(&self) -> bool {
        self.input_fd().is_some() && !self.shared.lock().stdin.is_empty()
    }

    /// One round; `false` when the session is over.
    fn step(&mut self) -> bool {
        let (closed, events) = self.take_inbox();
        if closed {
            self.hang_up();
            return false;
        }
        for event in events {
            if !self.send(event) {
                return self.lost();
            }
        }
        if self.exit.is_some() && self.output.iter().all(Option::is_none) {
            return self.finish();
        }

        // Wait for the command, the host, or (after the exit) quiet.
        let mut pfds = vec![libc::pollfd {
            fd: self.shared.wake.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut streams = Vec::with_capacity(2);
        for (index, fd) in self.output.iter().enumerate() {
            if let Some(fd) = fd
                && self.credit[index] > 0
            {
                streams.push((index, pfds.len()));
                pfds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if self.stdin_pending() {
            let fd = self.input_fd().map(|fd| fd.as_raw_fd()).unwrap_or(-1);
            pfds.push(libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        let quiet_deadline = (self.exit.is_some() && !streams.is_empty())
            .then(|| self.last_data + Duration::from_millis(TRAILING_QUIET_MS));
        let timeout = match quiet_deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as libc::c_int,
            None => -1,
        };
        // SAFETY: pfds is a valid array of pollfd.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                crate::log::log!("session {}: poll failed: {e}", self.id);
                std::thread::sleep(Duration::from_millis(10));
            }
            return true;
        }
        if pfds[0].revents != 0 {
            self.shared.wake.drain();
        }
        if ready == 0 && quiet_deadline.is_some_and(|d| Instant::now() >= d) {
            // The command is gone and what it left behind holds the output
            // open without writing: let it go.
            self.output = [None, None];
            self.output_open = true;
            return true;
        }
        for (index, slot) in streams {
            if pfds[slot].revents == 0 {
                continue;
            }
            if !self.read_output(index) {
                return self.lost();
            }
        }
        true
    }

    /// Read and forward one chunk of `index`'s output; `false` if the host
    /// could not be told.
    fn read_output(&mut self, index: usize) -> bool {
        let Some(fd) = &self.output[index] else {
            return true;
        };
        let want = self
            .buf
            .len()
            .min(usize::try_from(self.credit[index]).unwrap_or(usize::MAX));
        match sys::read(fd.as_raw_fd(), &mut self.buf[..want]) {
            Ok(0) => self.output[index] = None,
            Ok(n) => {
                self.credit[index] -= n as u64;
                self.last_data = Instant::now();
                let stream = if index == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                let event = SessionEvent::Output(OutputData {
                    stream,
                    data: self.buf[..n].to_vec(),
                });
                if !self.send(event) {
                    return false;
                }
                if self.exit.is_some() {
                    self.trailing[index] += n as u64;
                    if self.trailing[index] >= MAX_TRAILING_OUTPUT {
                        self.output[index] = None;
                        self.output_open = true;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // A pty whose every slave is closed.
            Err(e) if self.pty && e.raw_os_error() == Some(libc::EIO) => self.output[index] = None,
            Err(e) => {
                self.output[index] = None;
                self.sessions
                    .error(self.id, format!("cannot read the command's output: {e}"));
            }
        }
        true
    }

    /// Report the exit; the session is over.
    fn finish(&mut self) -> bool {
        let status = self.exit.map(WaitStatus::exit_status).unwrap_or_default();
        let status = ExitStatus {
            output_open: self.output_open,
            ..status
        };
        // Free the id first: a host that heard `exited` may open it again.
        self.sessions.forget(self.id, Some(&self.shared));
        self.stdin = None;
        self.master = None;
        self.send(SessionEvent::Exited(status));
        false
    }

    /// The host could not be told something: the link is gone.
    fn lost(&mut self) -> bool {
        self.hang_up();
        self.sessions.forget(self.id, Some(&self.shared));
        false
    }
}

#[cfg(test)]
mod tests;
