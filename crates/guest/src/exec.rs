//! Running commands: fork/exec by hand (so that the one reaper thread owns
//! every `waitpid`), pipes for stdin/stdout/stderr, output capped in memory.
//!
//! std's `Command` is not used: it waits for failed children itself, which
//! races with a PID 1 reaper that collects every child.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vmkeep_protocol::ExecResult;

use crate::reaper::{Reaper, WaitStatus};
use crate::sys;

/// Largest stdout (and, separately, stderr) kept for a reply; the rest is
/// read and discarded so that the command never blocks on a full pipe.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// PATH used when the environment has none.
pub const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// Why a command could not be started.
#[derive(Debug)]
pub enum SpawnError {
    EmptyArgv,
    NoSuchCommand(String),
    NulByte(String),
    Chdir {
        dir: String,
        source: io::Error,
    },
    Exec {
        program: String,
        source: io::Error,
    },
    Io {
        action: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::EmptyArgv => write!(f, "empty argv: nothing to run"),
            SpawnError::NoSuchCommand(program) => write!(f, "no such command: {program}"),
            SpawnError::NulByte(what) => {
                write!(f, "argument or environment contains a NUL byte: {what:?}")
            }
            SpawnError::Chdir { dir, source } => {
                write!(f, "cannot change directory to {dir}: {source}")
            }
            SpawnError::Exec { program, source } => write!(f, "cannot execute {program}: {source}"),
            SpawnError::Io { action, source } => write!(f, "cannot {action}: {source}"),
        }
    }
}

/// What to run.
pub struct Spec<'a> {
    pub argv: &'a [String],
    /// The complete environment of the command.
    pub env: Vec<(String, String)>,
    pub cwd: Option<&'a str>,
    pub stdin: &'a [u8],
}

/// `base` with `extra` applied on top (a later value wins for the same key).
pub fn merge_env(base: &[(String, String)], extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base.to_vec();
    for (key, value) in extra {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    env
}

/// Find `program` as a shell would: a name with a slash is used as is,
/// anything else is looked up in `path_var`.
pub fn resolve_program(program: &str, path_var: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        // Used as is: a relative path is relative to the command's own
        // directory, which only exists after the fork. A missing file shows
        // up as ENOENT from execve.
        return Some(PathBuf::from(program));
    }
    path_var
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                Path::new(".")
            } else {
                Path::new(dir)
            }
        })
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Io {
            action: "create a pipe",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Stages reported by a child that failed before its program started.
const STAGE_CHDIR: u8 = 0;
const STAGE_EXEC: u8 = 1;
const STAGE_SETUP: u8 = 2;

/// Runs in the forked child: only async-signal-safe calls, no allocation.
///
/// # Safety
/// Must be called in a freshly forked child; all pointers must be valid
/// NUL-terminated strings / NULL-terminated arrays prepared before the fork.
unsafe fn child_after_fork(
    fds: [libc::c_int; 3],
    report: libc::c_int,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
) -> ! {
    unsafe {
        let fail = |stage: u8| -> ! {
            let errno = *libc::__errno_location();
            let mut message = [stage, 0, 0, 0, 0];
            message[1..].copy_from_slice(&errno.to_le_bytes());
            libc::write(report, message.as_ptr().cast(), message.len());
            libc::_exit(127)
        };
        for (target, fd) in fds.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(STAGE_SETUP);
            }
        }
        // Rust ignores SIGPIPE in the agent; the command gets the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setsid();
        if !cwd.is_null() && libc::chdir(cwd) != 0 {
            fail(STAGE_CHDIR);
        }
        libc::execve(program, argv, envp);
        fail(STAGE_EXEC)
    }
}

fn c_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<CString>, SpawnError> {
    items
        .into_iter()
        .map(|item| sys::cstring(item).map_err(|_| SpawnError::NulByte(item.to_string())))
        .collect()
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Run a command to completion and collect its output.
pub fn run(reaper: &Reaper, spec: &Spec<'_>) -> Result<ExecResult, SpawnError> {
    let program = spec.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let resolved = resolve_program(program, path_var)
        .ok_or_else(|| SpawnError::NoSuchCommand(program.clone()))?;

    // Everything the child needs is prepared before the fork.
    let program_c = sys::cstring(resolved.as_os_str().as_encoded_bytes())
        .map_err(|_| SpawnError::NulByte(program.clone()))?;
    let argv_c = c_strings(spec.argv.iter().map(String::as_str))?;
    let env_lines: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_c = c_strings(env_lines.iter().map(String::as_str))?;
    let cwd_c = spec
        .cwd
        .map(|dir| sys::cstring(dir).map_err(|_| SpawnError::NulByte(dir.to_string())))
        .transpose()?;
    let argv_ptrs = null_terminated(&argv_c);
    let env_ptrs = null_terminated(&env_c);
    let cwd_ptr = cwd_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());

    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let child_fds = [
        stdin_r.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
    ];
    let report_fd = report_w.as_raw_fd();

    let (_pid, exit) = reaper
        .spawn_registered(|| {
            // SAFETY: fork has no preconditions; the child only runs
            // async-signal-safe code on data prepared above.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: we are the freshly forked child; the pointers are valid.
                unsafe {
                    child_after_fork(
                        child_fds,
                        report_fd,
                        program_c.as_ptr(),
                        argv_ptrs.as_ptr(),
                        env_ptrs.as_ptr(),
                        cwd_ptr,
                    )
                }
            }
            if pid < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(pid)
            }
        })
        .map_err(|source| SpawnError::Io {
            action: "fork",
            source,
        })?;
    drop((stdin_r, stdout_w, stderr_w, report_w));

    // The report pipe closes on a successful exec (close-on-exec), or
    // carries the stage and errno of a failure.
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match sys::read(report_r.as_raw_fd(), &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SpawnError::Io {
                    action: "read the child's start report",
                    source,
                });
            }
        }
    }
    if got == report.len() {
        let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
        let source = io::Error::from_raw_os_error(errno);
        return Err(match report[0] {
            STAGE_CHDIR => SpawnError::Chdir {
                dir: spec.cwd.unwrap_or_default().to_string(),
                source,
            },
            STAGE_EXEC if errno == libc::ENOENT => SpawnError::NoSuchCommand(program.clone()),
            STAGE_EXEC => SpawnError::Exec {
                program: resolved.display().to_string(),
                source,
            },
            _ => SpawnError::Io {
                action: "set up the child's standard streams",
                source,
            },
        });
    }

    let status = pump(stdin_w, spec.stdin, stdout_r, stderr_r, &exit)?;
    let (status, stdout, stderr) = status;
    let status = match status {
        Some(status) => status,
        None => exit.recv().map_err(|_| SpawnError::Io {
            action: "learn the command's exit status",
            source: io::Error::other("the reaper dropped the child"),
        })?,
    };
    Ok(ExecResult {
        exit_code: status.exit_code(),
        stdout,
        stderr,
    })
}

/// Output of one stream, capped.
struct Capture {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
}

impl Capture {
    fn new(fd: OwnedFd) -> Capture {
        Capture {
            fd: Some(fd),
            data: Vec::new(),
        }
    }

    /// Read what is available; closes the stream at end of file.
    fn drain(&mut self, buf: &mut [u8]) {
        while let Some(fd) = &self.fd {
            match sys::read(fd.as_raw_fd(), buf) {
                Ok(0) => self.fd = None,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(self.data.len());
                    self.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.fd = None,
            }
        }
    }
}

type Pumped = (Option<WaitStatus>, Vec<u8>, Vec<u8>);

/// Feed stdin and collect stdout/stderr until both close, or until the
/// command has exited and its pipes stay quiet (a daemon it started may keep
/// them open forever).
fn pump(
    stdin: OwnedFd,
    input: &[u8],
    stdout: OwnedFd,
    stderr: OwnedFd,
    exit: &std::sync::mpsc::Receiver<WaitStatus>,
) -> Result<Pumped, SpawnError> {
    for fd in [&stdin, &stdout, &stderr] {
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|source| SpawnError::Io {
            action: "make a pipe non-blocking",
            source,
        })?;
    }
    let mut stdin = if input.is_empty() { None } else { Some(stdin) };
    let mut written = 0;
    let mut out = Capture::new(stdout);
    let mut err = Capture::new(stderr);
    let mut status = None;
    let mut buf = vec![0u8; 64 * 1024];
    while out.fd.is_some() || err.fd.is_some() {
        let mut pfds = Vec::with_capacity(3);
        for capture in [&out, &err] {
            if let Some(fd) = &capture.fd {
                pfds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if let Some(fd) = &stdin {
            pfds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        let timeout = if status.is_some() { 100 } else { 250 };
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SpawnError::Io {
                action: "poll the command's pipes",
                source: e,
            });
        }
        if ready == 0 && status.is_some() {
            break;
        }
        out.drain(&mut buf);
        err.drain(&mut buf);
        if let Some(fd) = &stdin {
            loop {
                match sys::write(fd.as_raw_fd(), &input[written..]) {
                    Ok(n) => {
                        written += n;
                        if written == input.len() {
                            stdin = None;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // EPIPE: the command stopped reading.
                        stdin = None;
                        break;
                    }
                }
            }
        }
        if let (None, Ok(exited)) = (status, exit.try_recv()) {
            status = Some(exited);
            stdin = None;
        }
    }
    Ok((status, out.data, err.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_env_values_win_and_new_keys_are_added() {
        let base = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("HOME".to_string(), "/".to_string()),
        ];
        let extra = vec![
            ("HOME".to_string(), "/root".to_string()),
            ("A".to_string(), "b".to_string()),
        ];
        let merged = merge_env(&base, &extra);
        assert_eq!(
            merged,
            vec![
                ("PATH".into(), "/bin".into()),
                ("HOME".into(), "/root".into()),
                ("A".into(), "b".into())
            ]
        );
    }

    #[test]
    fn programs_are_found_in_path_and_missing_ones_are_not() {
        assert_eq!(
            resolve_program("sh", "/nonexistent:/bin:/usr/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("vmkeep-no-such-command", "/bin:/usr/bin"),
            None
        );
        assert_eq!(
            resolve_program("/bin/sh", ""),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("./run", ""),
            Some(PathBuf::from("./run")),
            "checked by execve, after chdir"
        );
        assert_eq!(resolve_program("", "/bin"), None);
    }

    #[test]
    fn run_collects_output_exit_code_stdin_env_and_cwd() {
        let reaper = Reaper::global().unwrap();
        let argv: Vec<String> = ["sh", "-c", "cat; echo \"$GREETING\" >&2; pwd; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = merge_env(
            &[("PATH".into(), DEFAULT_PATH.into())],
            &[("GREETING".into(), "hi".into())],
        );
        let result = run(
            reaper,
            &Spec {
                argv: &argv,
                env,
                cwd: Some("/tmp"),
                stdin: b"in\n",
            },
        )
        .unwrap();
        assert_eq!(result.exit_code, 3);
        assert_eq!(result.stdout, b"in\n/tmp\n");
        assert_eq!(result.stderr, b"hi\n");
    }

    #[test]
    fn run_reports_signals_missing_commands_and_bad_directories() {
        let reaper = Reaper::global().unwrap();
        let env = vec![("PATH".to_string(), DEFAULT_PATH.to_string())];
        let argv: Vec<String> = ["sh", "-c", "kill -9 $$"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let result = run(
            reaper,
            &Spec {
                argv: &argv,
                env: env.clone(),
                cwd: None,
                stdin: b"",
            },
        )
        .unwrap();
        assert_eq!(result.exit_code, 128 + 9);

        let argv = vec!["vmkeep-no-such-command".to_string()];
        let err = run(
            reaper,
            &Spec {
                argv: &argv,
                env: env.clone(),
                cwd: None,
                stdin: b"",
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no such command: vmkeep-no-such-command");

        let argv = vec!["/nonexistent/vmkeep-cmd".to_string()];
        let err = run(
            reaper,
            &Spec {
                argv: &argv,
                env: env.clone(),
                cwd: None,
                stdin: b"",
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no such command: /nonexistent/vmkeep-cmd");

        let argv = vec!["true".to_string()];
        let err = run(
            reaper,
            &Spec {
                argv: &argv,
                env,
                cwd: Some("/nonexistent-dir"),
                stdin: b"",
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot change directory to /nonexistent-dir"),
            "{err}"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_drained_and_dropped() {
        let reaper = Reaper::global().unwrap();
        let script = format!("head -c {} /dev/zero; echo done >&2", OUTPUT_CAP + 12345);
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), script];
        let env = vec![("PATH".to_string(), DEFAULT_PATH.to_string())];
        let result = run(
            reaper,
            &Spec {
                argv: &argv,
                env,
                cwd: None,
                stdin: b"",
            },
        )
        .unwrap();
        assert_eq!(
            (
                result.exit_code,
                result.stdout.len(),
                result.stderr.as_slice()
            ),
            (0, OUTPUT_CAP, &b"done\n"[..])
        );
    }

    #[test]
    fn a_background_child_holding_the_pipes_does_not_hang_exec() {
        let reaper = Reaper::global().unwrap();
        let argv: Vec<String> = ["sh", "-c", "sleep 5 & echo started"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = vec![("PATH".to_string(), DEFAULT_PATH.to_string())];
        let started = std::time::Instant::now();
        let result = run(
            reaper,
            &Spec {
                argv: &argv,
                env,
                cwd: None,
                stdin: b"",
            },
        )
        .unwrap();
        assert_eq!(
            (result.exit_code, result.stdout.as_slice()),
            (0, &b"started\n"[..])
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
