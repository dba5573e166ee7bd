//! Processes: spawning, identity, signals and exit detection, all through
//! pidfds (on macOS, kqueues: see `os::exit_watch`).
//!
//! A [`ProcessHandle`] holds a pidfd, so a signal sent through it reaches the
//! process it was opened for or nobody: a pid that was recycled in between
//! cannot be hit. Handles to processes we did not spawn are only opened for
//! the holder of a liveness lock ([`open_lock_holder`]), never from a pid
//! written in a file. Signals go to one process, never to a group.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
#[cfg(test)]
use rustix::process::Pid;
use rustix::process::Signal;

use super::exit_watch::{ExitWatch, Reaped};
use super::lock;

/// How a process ended, as far as we can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Gone, but not our child, so its status went to its parent.
    Unknown,
}

impl ExitOutcome {
    pub fn success(self) -> bool {
        self == ExitOutcome::Exited(0)
    }
}

impl std::fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitOutcome::Exited(code) => write!(f, "exit code {code}"),
            ExitOutcome::Signaled(signal) => write!(f, "killed by signal {signal}"),
            ExitOutcome::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// One live (or just exited) process, held by pidfd.
#[derive(Debug)]
pub struct ProcessHandle {
    watch: ExitWatch,
    is_child: bool,
    /// The exit, once seen (a child can be reaped only once).
    outcome: std::sync::OnceLock<ExitOutcome>,
}

impl ProcessHandle {
    fn open(pid: u32, is_child: bool) -> io::Result<ProcessHandle> {
        Ok(ProcessHandle {
            watch: ExitWatch::open(pid)?,
            is_child,
            outcome: std::sync::OnceLock::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.watch.pid()
    }

    pub fn is_child(&self) -> bool {
        self.is_child
    }

    /// Send `signal` to this process only. A process that already exited is
    /// not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        match self.watch.signal(signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn kill(&self) -> io::Result<()> {
        self.signal(Signal::KILL)
    }

    pub fn terminate(&self) -> io::Result<()> {
        self.signal(Signal::TERM)
    }

    /// Whether the process has exited (a pidfd becomes readable then).
    pub fn has_exited(&self) -> bool {
        self.wait_timeout(Duration::ZERO)
    }

    /// Block until the process exits or `timeout` passes; true if it exited.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let spec = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as _,
            };
            let fd = self.watch.fd();
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&spec)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return true,
            }
        }
    }

    /// Wait for the exit without blocking the runtime, then reap it if it is
    /// our child. Can be awaited any number of times.
    pub async fn exited(&self) -> ExitOutcome {
        if let Some(outcome) = self.outcome.get() {
            return *outcome;
        }
        // SAFETY: the AsyncFd owns a fresh duplicate of the pidfd, which
        // nothing else closes or replaces while it is registered.
        let registered = self.watch.try_clone_fd().ok().and_then(|fd| {
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .ok()
        });
        if let Some(async_fd) = registered {
            let _ = async_fd.readable().await;
        } else {
            while !self.has_exited() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.reap()
    }

    /// Collect the exit status of an exited child; `Unknown` for others or
    /// when it has not exited.
    pub fn reap(&self) -> ExitOutcome {
        if let Some(outcome) = self.outcome.get() {
            return *outcome;
        }
        if !self.is_child {
            if self.has_exited() {
                let _ = self.outcome.set(ExitOutcome::Unknown);
            }
            return ExitOutcome::Unknown;
        }
        let outcome = match self.watch.reap_child() {
            Some(Reaped::Exited(code)) => ExitOutcome::Exited(code),
            Some(Reaped::Signaled(signal)) => ExitOutcome::Signaled(signal),
            Some(Reaped::Other) => ExitOutcome::Unknown,
            None => return ExitOutcome::Unknown,
        };
        let _ = self.outcome.set(outcome);
        outcome
    }
}

/// A handle to the live process holding the lock on `lock_path`, or `None`
/// if no live process holds it. The holder is re-checked after the pidfd is
/// open, so the handle cannot refer to a process that merely reused the pid.
pub fn open_lock_holder(lock_path: &Path) -> io::Result<Option<ProcessHandle>> {
    for _ in 0..3 {
        let Some(pid) = lock::holder(lock_path)? else {
            return Ok(None);
        };
        let pid = pid.as_raw_nonzero().get() as u32;
        let handle = match ProcessHandle::open(pid, false) {
            Ok(handle) => handle,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(e),
        };
        // While a process holds the lock it is alive, so its pid cannot have
        // been reused: if it still holds it now, the pidfd is that process.
        if lock::holder(lock_path)?.map(|p| p.as_raw_nonzero().get() as u32) == Some(pid) {
            return Ok(Some(handle));
        }
    }
    Ok(None)
}

/// Whether a process with this pid exists now. Never a reason to signal it
/// (the pid may be recycled): only used to keep a file a writer may still
/// need (see `instance::runtime`).
pub fn pid_exists(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    return Path::new(&format!("/proc/{pid}")).exists();
    // Signal 0 checks only; EPERM means it exists but is not ours.
    #[cfg(not(target_os = "linux"))]
    return rustix::process::Pid::from_raw(pid as i32).is_some_and(|pid| {
        !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        )
    });
}

/// The path of the program process `pid` runs, when that path no longer
/// holds the file the process was started from: it was replaced on disk (a
/// package upgrade writes a new file and renames it over the old one) or
/// removed. `None` when it still does, or when it cannot be told (no
/// `/proc`, the process is gone or is another user's).
///
/// `/proc/PID/exe` names the running file (the kernel appends
/// ` (deleted)` once its name is gone) and `stat` through it gives that
/// file's device and inode, whatever its name points at now.
pub fn program_replaced(pid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let named = std::fs::read_link(&exe).ok()?;
    let running = std::fs::metadata(&exe).ok()?;
    let text = named.to_string_lossy();
    let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
    let same = match std::fs::metadata(&path) {
        Ok(now) => (now.dev(), now.ino()) == (running.dev(), running.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => return None,
    };
    (!same).then_some(path)
}

/// The path process `pid` was started from (`/proc/PID/exe`, less the
/// ` (deleted)` the kernel appends once that name is gone): where its
/// program is installed, whatever file is there now. `None` without /proc.
pub fn program_path(pid: u32) -> Option<PathBuf> {
    let named = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = named.to_string_lossy();
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text),
    ))
}

/// Whether process `pid` catches SIGHUP (a handler is installed: the
/// `SigCgt` mask of `/proc/PID/status`); `None` when that cannot be read
/// (no such process, or no /proc: macOS).
pub fn catches_hangup(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    caught_mask_has(&status, libc::SIGHUP)
}

/// Whether the `SigCgt:` mask of a `/proc/PID/status` text has `signal`.
fn caught_mask_has(status: &str, signal: i32) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))?
        .trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    Some(mask & (1u64 << (signal - 1)) != 0)
}

/// Whether the process is stopped (SIGSTOP, a debugger): its state in
/// `/proc/PID/stat` is `T` or `t`. A stopped process answers nothing until
/// it is continued.
pub fn is_stopped(pid: u32) -> bool {
    // Without /proc (macOS) a stopped agent is not told apart: it is seen
    // as an agent that does not answer.
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
    #[cfg(not(target_os = "linux"))]
    return false;
    #[cfg(target_os = "linux")]
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| matches!(state, 'T' | 't'))
}

/// The command line of a live process (for identity checks), or `None`.
pub fn command_line(pid: u32) -> Option<Vec<String>> {
    let raw = raw_command_line(pid)?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The NUL-separated arguments of a live process, from `/proc`.
#[cfg(target_os = "linux")]
fn raw_command_line(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// The NUL-separated arguments of a live process, from the kernel's
/// `KERN_PROCARGS2` (argc, the executable's path, then argv).
#[cfg(target_os = "macos")]
fn raw_command_line(pid: u32) -> Option<Vec<u8>> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, pid as libc::c_int];
    let mut size: libc::size_t = 0;
    // SAFETY: a size query (no buffer) for a valid mib.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || size < 4 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: the buffer has room for `size` bytes, which sysctl updates.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || size < 4 {
        return None;
    }
    buf.truncate(size);
    let argc = i32::from_ne_bytes(buf[..4].try_into().ok()?).max(0) as usize;
    // After argc: the executable's path, NUL padding, then argv.
    let rest = &buf[4..];
    let path_end = rest.iter().position(|b| *b == 0)?;
    let argv_start = path_end + rest[path_end..].iter().position(|b| *b != 0)?;
    let mut out = Vec::new();
    for arg in rest[argv_start..].split(|b| *b == 0).take(argc) {
        out.extend_from_slice(arg);
        out.push(0);
    }
    Some(out)
}

/// The command line of `process`, or `None` once it has exited. A process
/// that is exiting has already lost its memory (so its command line reads
/// empty) while it still holds its files and locks for a moment: wait for
/// it to finish exiting rather than mistake it for a stranger.
pub fn command_line_of_live(process: &ProcessHandle) -> Option<Vec<String>> {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match command_line(process.pid()) {
            Some(args) if !args.is_empty() && !process.has_exited() => return Some(args),
            _ if process.has_exited() => return None,
            _ if std::time::Instant::now() >= until => return Some(Vec::new()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Where a spawned process's standard output goes.
pub enum Output {
    Null,
    File(File),
    Pipe(OwnedFd),
}

impl From<Output> for Stdio {
    fn from(output: Output) -> Stdio {
        match output {
            Output::Null => Stdio::null(),
            Output::File(file) => file.into(),
            Output::Pipe(fd) => fd.into(),
        }
    }
}

/// A program to run: its path, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: std::path::PathBuf,
    pub args: Vec<OsString>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(OsString, OsString)>,
}

impl Program {
    pub fn new<S: AsRef<OsStr>>(path: &Path, args: &[S]) -> Program {
        Program {
            path: path.to_path_buf(),
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
        }
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.path.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(super) fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove(super::service_notify::FOR_CHILDREN)
            .stdin(Stdio::null());
        command
    }
}

/// Spawn a hypervisor as our child in its own process group, so that a
/// terminal's Ctrl-C or a service manager's SIGTERM meant for the host agent
/// never reaches it. Its output goes to `log`.
pub fn spawn_in_own_group(program: &Program, log: File) -> io::Result<ProcessHandle> {
    let stderr = log.try_clone()?;
    let child = program
        .command()
        .stdout(log)
        .stderr(stderr)
        .process_group(0)
        .spawn()?;
    // Our unreaped child cannot vanish or be replaced, so its pid is safe to
    // open. The std handle is dropped without waiting: the pidfd reaps it.
    ProcessHandle::open(child.id(), true)
}

/// A handle to a child just spawned (`std::process::Child::id`): an
/// unreaped child cannot vanish or be replaced, so its pid is safe to open.
pub(super) fn handle_of_child(pid: u32) -> io::Result<ProcessHandle> {
    ProcessHandle::open(pid, true)
}

/// Spawn `program` detached from our terminal: its own session, stdin from
/// /dev/null, stdout to `stdout`, stderr appended to `log`, nothing else of
/// its caller's (see `child_fds`). Returns its handle;
/// it stays our child until we exit.
pub fn spawn_detached(program: &Program, stdout: Output, log: File) -> io::Result<ProcessHandle> {
    let mut command = program.command();
    command.stdout(stdout).stderr(log);
    let fds = super::child_fds::ChildFds::with_slots(super::child_fds::AGENT_SLOTS);
    // SAFETY: setsid and `apply` are async-signal-safe and touch no memory
    // of ours.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid().map_err(io::Error::from)?;
            fds.apply()
        });
    }
    let child = command.spawn()?;
    ProcessHandle::open(child.id(), true)
}

/// A pipe whose ends close on exec (the write end is handed to a child
/// explicitly as its stdout).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(target_os = "linux")]
    return Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?);
    // No pipe2 on macOS: the flags are set right after, so a child that
    // another thread spawns in between may inherit these ends (it holds the
    // pipe open longer; nothing else).
    #[cfg(not(target_os = "linux"))]
    {
        let (read, write) = rustix::pipe::pipe()?;
        for end in [&read, &write] {
            rustix::io::fcntl_setfd(end, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok((read, write))
    }
}

/// Point our own stdout at /dev/null (after a detached agent has reported its
/// start, so that the waiting CLI sees end-of-file).
pub fn silence_stdout() -> io::Result<()> {
    let null = File::options().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

/// Run `program` on our terminal (stdin, stdout and stderr inherited: an
/// editor) and wait for it.
pub fn run_on_terminal(program: &Program) -> io::Result<ExitOutcome> {
    use std::os::unix::process::ExitStatusExt;
    let status = program.command().stdin(Stdio::inherit()).status()?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitOutcome::Exited(code),
        (None, Some(signal)) => ExitOutcome::Signaled(signal),
        (None, None) => ExitOutcome::Unknown,
    })
}

/// Replace this process with `program`, keeping our pid, terminal and
/// descriptors: its exit code becomes ours (ssh for `vmkeep ssh`, the host
/// agent for `vmkeep start --foreground`). Returns only on failure.
pub fn exec_replace<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(program).args(args).exec()
}

/// The path of the running executable (absolute), to re-run ourselves.
pub fn current_exe() -> io::Result<std::path::PathBuf> {
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_signal_is_read_from_the_sigcgt_mask() {
        let status = "Name:\tvmkeep\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180004003\n";
        assert_eq!(caught_mask_has(status, libc::SIGHUP), Some(true));
        assert_eq!(caught_mask_has(status, libc::SIGINT), Some(true));
        assert_eq!(caught_mask_has(status, libc::SIGTERM), Some(true));
        assert_eq!(caught_mask_has(status, libc::SIGQUIT), Some(false));
        assert_eq!(caught_mask_has("Name:\tx\n", libc::SIGHUP), None);
        assert!(catches_hangup(std::process::id()).is_some());
    }

    #[test]
    fn a_program_renamed_over_while_it_runs_is_seen_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("sleep");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = Command::new(&program).arg("30").spawn().unwrap();
        let pid = child.id();
        let seen_before = program_replaced(pid);
        // What a package upgrade does: a new file renamed over the old name.
        let new = dir.path().join(".sleep.new");
        std::fs::copy("/bin/sleep", &new).unwrap();
        std::fs::rename(&new, &program).unwrap();
        let seen_after = program_replaced(pid);
        std::fs::remove_file(&program).unwrap();
        let seen_removed = program_replaced(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(seen_before, None, "the file it started from is in place");
        assert_eq!(seen_after.as_deref(), Some(program.as_path()));
        assert_eq!(seen_removed.as_deref(), Some(program.as_path()));
    }

    #[test]
    fn a_child_in_its_own_group_is_killed_and_reaped_through_its_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::super::fs::open_append(&dir.path().join("log")).unwrap();
        let child = spawn_in_own_group(
            &Program::new(Path::new("/bin/sh"), &["-c", "echo hi; sleep 30"]),
            log,
        )
        .unwrap();
        assert!(!child.has_exited());
        let pgid = rustix::process::getpgid(Pid::from_raw(child.pid() as i32)).unwrap();
        assert_eq!(
            pgid.as_raw_nonzero().get() as u32,
            child.pid(),
            "own process group"
        );
        child.kill().unwrap();
        assert!(child.wait_timeout(Duration::from_secs(5)));
        assert_eq!(child.reap(), ExitOutcome::Signaled(libc::SIGKILL));
        // Signalling a reaped process through its pidfd is harmless.
        child.kill().unwrap();
    }

    #[test]
    fn a_live_process_has_a_command_line_and_an_exited_one_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::super::fs::open_append(&dir.path().join("log")).unwrap();
        let child =
            spawn_in_own_group(&Program::new(Path::new("/bin/sleep"), &["30"]), log).unwrap();
        assert_eq!(
            command_line_of_live(&child),
            Some(vec!["/bin/sleep".to_string(), "30".to_string()])
        );
        child.kill().unwrap();
        // Unreaped (a zombie: no memory, no command line): not alive.
        assert!(child.wait_timeout(Duration::from_secs(5)));
        assert_eq!(command_line_of_live(&child), None);
        child.reap();
    }

    #[test]
    fn exit_codes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::super::fs::open_append(&dir.path().join("log")).unwrap();
        let child = spawn_in_own_group(&Program::new(Path::new("/bin/sh"), &["-c", "exit 7"]), log)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(child.exited()), ExitOutcome::Exited(7));
    }

    #[test]
    fn no_handle_for_an_unlocked_pid_file_even_if_its_pid_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("qemu.pid");
        // A stale pid file naming a live process that is not the holder.
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        assert!(open_lock_holder(&pid_file).unwrap().is_none());
    }
}
