//! `shell`: a command (or a login shell) in the guest, as a streaming
//! session through the host agent: what runs, as whom and where
//! ([`open_request`]: Lima's habits), and the pump between the session and
//! the caller's terminal or pipes ([`pump`]). The front end sets the
//! terminal up (raw mode, signals) and prints the end.
//!
//! - The command: `argv` as given, run through the user's login shell (so
//!   that its profile sets the environment up, as an ssh login does); none:
//!   the user's interactive login shell. `--shell X`: X instead (`X -l`,
//!   or `X -l -c 'exec "$@"' X ARGS...`).
//! - As whom: the instance's user in a cloud image, root in the tiny one.
//! - Where: `--workdir`; else, as Lima does, the same path in the guest
//!   when the host's current directory is inside a shared directory (under
//!   its mount point), else the user's home (the tiny image: `/`). A
//!   directory found by Lima's rule that cannot be entered in the guest
//!   falls back to the home, as Lima's `cd DIR || cd HOME` does.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use vmkeep_protocol::session::{FailReason, OpenSession, PtyRequest, WindowSize};

use super::EngineError;
use super::guest::AgentAccess;
use crate::hostagent::api::SessionClient;
use crate::instance::shares::SharedDir;
use crate::session::{End, SessionStream, StdinCredit, Stream, Update};

/// What the user asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellRequest {
    /// The command and its arguments; empty: a login shell.
    pub command: Vec<String>,
    /// A pty, with the terminal's size and type.
    pub pty: Option<PtyRequest>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// The host's current directory (for Lima's rule).
    pub host_cwd: Option<PathBuf>,
    /// `--shell`.
    pub shell: Option<String>,
}

/// Where the session's directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CwdSource {
    /// `--workdir`: it must be entered.
    Given,
    /// Lima's rule: the home instead when it cannot be entered.
    HostCwd,
    /// The user's home.
    Home,
}

/// The guest directory for the host's current directory `cwd`: the same
/// path under the mount point of the innermost shared directory holding it.
pub fn guest_dir_for(cwd: &Path, shares: &[SharedDir]) -> Option<String> {
    shares
        .iter()
        .filter_map(|share| {
            let rest = cwd.strip_prefix(&share.location).ok()?;
            Some((share.location.components().count(), share, rest))
        })
        .max_by_key(|(depth, _, _)| *depth)
        .map(|(_, share, rest)| {
            let base = share.mount_point.trim_end_matches('/');
            match rest.as_os_str().is_empty() {
                true if base.is_empty() => "/".to_string(),
                true => base.to_string(),
                false => format!("{base}/{}", rest.display()),
            }
        })
}

/// The session that runs `request` (and where its directory came from).
pub fn open_request(access: &AgentAccess, request: &ShellRequest) -> (OpenSession, CwdSource) {
    let (cwd, source) = match (&request.workdir, &request.host_cwd) {
        (Some(dir), _) => (Some(dir.clone()), CwdSource::Given),
        (None, Some(host)) => match guest_dir_for(host, &access.shares) {
            Some(dir) => (Some(dir), CwdSource::HostCwd),
            None => (None, CwdSource::Home),
        },
        (None, None) => (None, CwdSource::Home),
    };
    let (argv, login) = match &request.shell {
        None => (request.command.clone(), true),
        Some(shell) if request.command.is_empty() => (vec![shell.clone(), "-l".into()], false),
        Some(shell) => {
            let mut argv = vec![
                shell.clone(),
                "-l".into(),
                "-c".into(),
                "exec \"$@\"".into(),
                shell.clone(),
            ];
            argv.extend(request.command.iter().cloned());
            (argv, false)
        }
    };
    let open = OpenSession {
        argv,
        env: Vec::new(),
        cwd,
        user: access.user_name(),
        login,
        pty: request.pty.clone(),
    };
    (open, source)
}

/// A session opened, with its first update (already taken, to see whether
/// it started).
pub struct Opened {
    pub session: SessionClient,
    pub first: Update,
}

/// Open the session for `request`; a directory from Lima's rule that the
/// guest cannot enter falls back to the home.
pub async fn open(access: &AgentAccess, request: &ShellRequest) -> Result<Opened, EngineError> {
    let (open, source) = open_request(access, request);
    let session = access.session(open.clone()).await?;
    let first = session.next().await;
    let bad_cwd = matches!(&first, Update::End(End::Failed(f)) if f.reason == FailReason::BadCwd);
    if !(bad_cwd && source == CwdSource::HostCwd) {
        return Ok(Opened { session, first });
    }
    let session = access.session(OpenSession { cwd: None, ..open }).await?;
    let first = session.next().await;
    Ok(Opened { session, first })
}

/// What the front end passes on to the command besides stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A signal vmkeep received, by its name (`INT`, `TERM`, `HUP`, ...).
    Signal(&'static str),
    /// The terminal's new size.
    Resize(WindowSize),
}

/// Run the session to its end: `stdin` chunks (the channel's end is the end
/// of stdin) go to the command within its credit, its output to `stdout`
/// and `stderr` as it comes (written and flushed before more is read, so
/// the guest waits for a slow reader), `controls` to the command;
/// `notice` hears the guest's refusals. Returns how it ended.
pub async fn pump<O, E>(
    opened: Opened,
    mut stdin: mpsc::Receiver<Vec<u8>>,
    stdout: &mut O,
    stderr: &mut E,
    mut controls: mpsc::UnboundedReceiver<Control>,
    mut notice: impl FnMut(&str),
) -> End
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let Opened { session, first } = opened;
    let mut credit = StdinCredit::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut stdin_wanted = true;
    let mut controls_open = true;
    let mut next = Some(first);
    loop {
        if !pending.is_empty() && credit.available() > 0 {
            let n = credit.take(pending.len());
            let rest = pending.split_off(n);
            let chunk = std::mem::replace(&mut pending, rest);
            if let Err(e) = session.stdin(chunk, false).await {
                return End::Broken(e.to_string());
            }
            continue;
        }
        let update = match next.take() {
            Some(update) => update,
            None => {
                let want_stdin = stdin_open && stdin_wanted && pending.is_empty();
                tokio::select! {
                    chunk = stdin.recv(), if want_stdin => {
                        match chunk {
                            Some(chunk) => pending = chunk,
                            None => {
                                stdin_open = false;
                                let _ = session.stdin(Vec::new(), true).await;
                            }
                        }
                        continue;
                    }
                    control = controls.recv(), if controls_open => {
                        let sent = match control {
                            Some(Control::Signal(name)) => session.signal(name).await,
                            Some(Control::Resize(size)) => session.resize(size).await,
                            None => {
                                controls_open = false;
                                Ok(())
                            }
                        };
                        if let Err(e) = sent {
                            return End::Broken(e.to_string());
                        }
                        continue;
                    }
                    update = session.next() => update,
                }
            }
        };
        match update {
            Update::Output { stream, data } => {
                let written = match stream {
                    Stream::Stdout => write_flushed(stdout, &data).await,
                    Stream::Stderr => write_flushed(stderr, &data).await,
                };
                match written {
                    Ok(()) => {}
                    // Our own output's reader is gone (`| head`): end as a
                    // pipeline's member does, by SIGPIPE's code, quietly;
                    // the session closes and the guest hangs the command up.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return End::Exited(vmkeep_protocol::session::ExitStatus::killed(
                            libc::SIGPIPE,
                            false,
                        ));
                    }
                    Err(e) => {
                        return End::Broken(format!("cannot write the command's output here: {e}"));
                    }
                }
            }
            Update::StdinCredit(bytes) => credit.grant(bytes),
            Update::StdinClosed => {
                stdin_wanted = false;
                pending.clear();
            }
            Update::Notice(text) => notice(&text),
            Update::Started { .. } => {}
            Update::End(end) => return end,
        }
    }
}

async fn write_flushed<W: AsyncWrite + Unpin>(to: &mut W, data: &[u8]) -> std::io::Result<()> {
    to.write_all(data).await?;
    to.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(location: &str, mount_point: &str) -> SharedDir {
        SharedDir {
            index: 0,
            location: PathBuf::from(location),
            mount_point: mount_point.into(),
            writable: false,
        }
    }

    #[test]
    fn the_host_directory_maps_into_the_innermost_share() {
        let shares = [
            share("/home/ann", "/home/ann"),
            share("/home/ann/src", "/src"),
        ];
        let at = |dir: &str| guest_dir_for(Path::new(dir), &shares);
        assert_eq!(at("/home/ann").as_deref(), Some("/home/ann"));
        assert_eq!(at("/home/ann/docs/x").as_deref(), Some("/home/ann/docs/x"));
        assert_eq!(at("/home/ann/src").as_deref(), Some("/src"));
        assert_eq!(at("/home/ann/src/app").as_deref(), Some("/src/app"));
        assert_eq!(
            at("/home/annex"),
            None,
            "a prefix of a name is not a parent"
        );
        assert_eq!(at("/tmp"), None);
        assert_eq!(
            guest_dir_for(Path::new("/srv/a"), &[share("/srv", "/")]).as_deref(),
            Some("/a")
        );
    }

    fn access(user: Option<&str>) -> AgentAccess {
        let root = std::env::temp_dir();
        AgentAccess {
            dir: crate::instance::InstanceDir::new(&root, "default".parse().unwrap()).unwrap(),
            user: user.map(|name| crate::instance::vars::GuestUser {
                name: name.into(),
                uid: 1000,
                home: format!("/home/{name}"),
                shell: "/bin/bash".into(),
                comment: None,
            }),
            shares: vec![share("/home/ann/src", "/src")],
        }
    }

    #[test]
    fn the_request_runs_through_a_login_shell_as_the_user_where_lima_would() {
        let request = ShellRequest {
            command: vec!["uname".into(), "-a".into()],
            host_cwd: Some("/home/ann/src/app".into()),
            ..ShellRequest::default()
        };
        let (open, source) = open_request(&access(Some("ann")), &request);
        assert_eq!(open.argv, ["uname", "-a"]);
        assert!(open.login);
        assert_eq!(open.user.as_deref(), Some("ann"));
        assert_eq!(
            (open.cwd.as_deref(), source),
            (Some("/src/app"), CwdSource::HostCwd)
        );

        let outside = ShellRequest {
            host_cwd: Some("/tmp".into()),
            ..request.clone()
        };
        let (open, source) = open_request(&access(None), &outside);
        assert_eq!((open.cwd, source, open.user), (None, CwdSource::Home, None));

        let given = ShellRequest {
            workdir: Some("/etc".into()),
            ..request.clone()
        };
        assert_eq!(
            open_request(&access(None), &given).0.cwd.as_deref(),
            Some("/etc")
        );

        let shell = ShellRequest {
            shell: Some("/bin/zsh".into()),
            ..request.clone()
        };
        let (open, _) = open_request(&access(None), &shell);
        assert_eq!(
            open.argv,
            [
                "/bin/zsh",
                "-l",
                "-c",
                "exec \"$@\"",
                "/bin/zsh",
                "uname",
                "-a"
            ]
        );
        assert!(!open.login);
        let interactive = ShellRequest {
            shell: Some("/bin/zsh".into()),
            ..ShellRequest::default()
        };
        assert_eq!(
            open_request(&access(None), &interactive).0.argv,
            ["/bin/zsh", "-l"]
        );
    }
}
