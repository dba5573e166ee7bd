//! Starting a session's command: fork, then in the child only system calls
//! on data prepared before the fork (a new session, the standard streams or
//! the pty as controlling terminal, default signals, the user's groups and
//! ids, the directory, exec). A failure before exec is reported through a
//! close-on-exec pipe as the stage and errno.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::reaper::{OnExit, Reaper};
use crate::sys;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (setgroups).
    pub groups: Vec<libc::gid_t>,
}

/// What the command's standard streams are.
pub enum Stdio {
    /// The child's ends of three pipes: stdin's read end, stdout's and
    /// stderr's write ends.
    Pipes([OwnedFd; 3]),
    /// A pty's slave, which becomes the controlling terminal.
    Pty(OwnedFd),
}

/// Everything the child needs, as C strings.
pub struct Program {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    /// If `cwd` cannot be entered, go to `/` instead of failing.
    pub cwd_fallback: bool,
    pub identity: Option<Identity>,
}

/// Where a child failed before its program started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its streams or its controlling terminal.
    Setup,
    /// Switching to the user.
    Identity,
    Chdir,
    Exec,
}

/// Why a command did not start.
#[derive(Debug)]
pub enum LaunchError {
    /// No pipe or no fork.
    Spawn(io::Error),
    /// The child failed at `stage`.
    Child { stage: Stage, error: io::Error },
}

const STAGES: [Stage; 4] = [Stage::Setup, Stage::Identity, Stage::Chdir, Stage::Exec];

/// Signals the agent may have changed (ignored or handled) that a command
/// gets back at their defaults.
const RESET_SIGNALS: [libc::c_int; 10] = [
    libc::SIGPIPE,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGWINCH,
];

/// Runs in the forked child.
///
/// # Safety
/// Only in a freshly forked child; every pointer valid (prepared before the
/// fork); only async-signal-safe calls follow.
unsafe fn child(
    stdio: &Stdio,
    report: libc::c_int,
    program: &Program,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    unsafe {
        let fail = |stage: Stage| -> ! {
            let errno = *libc::__errno_location();
            let code = STAGES.iter().position(|s| *s == stage).unwrap_or(0) as u8;
            let mut message = [code, 0, 0, 0, 0];
            message[1..].copy_from_slice(&errno.to_le_bytes());
            libc::write(report, message.as_ptr().cast(), message.len());
            libc::_exit(127)
        };
        if libc::setsid() < 0 {
            fail(Stage::Setup);
        }
        match stdio {
            Stdio::Pipes(fds) => {
                for (target, fd) in fds.iter().enumerate() {
                    if libc::dup2(fd.as_raw_fd(), target as libc::c_int) < 0 {
                        fail(Stage::Setup);
                    }
                }
            }
            Stdio::Pty(slave) => {
                if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY as _, 0) < 0 {
                    fail(Stage::Setup);
                }
                for target in 0..3 {
                    if libc::dup2(slave.as_raw_fd(), target) < 0 {
                        fail(Stage::Setup);
                    }
                }
            }
        }
        for signal in RESET_SIGNALS {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if let Some(identity) = &program.identity {
            // Raw system calls: this is the child's only thread, and libc's
            // wrappers would try to reach the parent's other threads.
            if libc::syscall(
                libc::SYS_setgroups,
                identity.groups.len(),
                identity.groups.as_ptr(),
            ) != 0
                || libc::syscall(libc::SYS_setgid, identity.gid) != 0
                || libc::syscall(libc::SYS_setuid, identity.uid) != 0
            {
                fail(Stage::Identity);
            }
        }
        if libc::chdir(program.cwd.as_ptr()) != 0
            && (!program.cwd_fallback || libc::chdir(c"/".as_ptr()) != 0)
        {
            fail(Stage::Chdir);
        }
        libc::execve(program.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Stage::Exec)
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Start `program` with `stdio` (whose descriptors are closed here once the
/// child has them). `on_exit` gets its exit status. Returns its pid.
pub fn launch(
    reaper: &Reaper,
    program: &Program,
    stdio: Stdio,
    on_exit: OnExit,
) -> Result<i32, LaunchError> {
    let argv = null_terminated(&program.argv);
    let envp = null_terminated(&program.env);
    let (report_r, report_w) = pipe().map_err(LaunchError::Spawn)?;
    let report_fd = report_w.as_raw_fd();
    let pid = reaper
        .spawn_with(
            || {
                // SAFETY: fork has no preconditions; the child runs only
                // async-signal-safe code on data prepared above.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: the freshly forked child; pointers valid.
                    unsafe { child(&stdio, report_fd, program, &argv, &envp) }
                }
                if pid < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(pid)
                }
            },
            on_exit,
        )
        .map_err(LaunchError::Spawn)?;
    drop(stdio);
    drop(report_w);
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match sys::read(report_r.as_raw_fd(), &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LaunchError::Spawn(e)),
        }
    }
    if got == report.len() {
        let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
        let stage = STAGES
            .get(usize::from(report[0]))
            .copied()
            .unwrap_or(Stage::Setup);
        return Err(LaunchError::Child {
            stage,
            error: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(pid)
}
