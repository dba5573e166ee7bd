//! `vmkeep shell NAME [COMMAND...]` (and `lima [COMMAND...]`): a command,
//! or an interactive login shell, in the guest, streamed through the guest
//! agent for every image (`engine::shell`). This file sets the terminal up
//! and prints the end:
//!
//! - a pty when no command is given and stdin is a terminal (`-t` forces
//!   one, `-T` refuses it, as ssh and docker do); the terminal is then in
//!   raw mode until the session ends, whatever way it ends;
//! - SIGINT, SIGTERM, SIGHUP and SIGQUIT to `vmkeep shell` go to the
//!   guest command (with a pty: to its foreground process group), SIGWINCH
//!   sends the new window size;
//! - the exit code is the command's, 128 + N when signal N killed it, 127
//!   and 126 when it could not be found or run; a session that broke (the
//!   guest link lost, the host agent gone) says so on stderr and exits
//!   [`BROKEN_SESSION`], as ssh does for its own failures.

use std::io::IsTerminal;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use vmkeep_protocol::session::{MAX_CHUNK_BYTES, PtyRequest, WindowSize};

use super::{CliError, ShellArgs};
use crate::engine;
use crate::engine::shell::{Control, ShellRequest};
use crate::instance::Home;
use crate::os::terminal::{self, RawMode};
use crate::session::End;

/// The exit code of a session that broke before its command's end was
/// known (ssh's for its own errors, so scripts that know ssh know it).
pub const BROKEN_SESSION: i32 = 255;

/// The size of a pty when there is no terminal to take it from.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

pub fn run(args: ShellArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let access = engine::guest::access(&home, &args.name)?;
    let stdin_terminal = terminal::stdin_is_terminal();
    let pty = match (args.tty, args.no_tty) {
        (true, _) => true,
        (_, true) => false,
        _ => args.command.is_empty() && stdin_terminal,
    };
    let (rows, cols) = terminal::window_size().unwrap_or(DEFAULT_SIZE);
    let request = ShellRequest {
        command: args.command.clone(),
        pty: pty.then(|| PtyRequest {
            rows,
            cols,
            term: std::env::var("TERM").ok().filter(|t| !t.is_empty()),
        }),
        workdir: args.workdir.clone(),
        host_cwd: std::env::current_dir().ok(),
        shell: args.shell.clone(),
    };
    let runtime = engine::runtime()?;
    let end = runtime.block_on(async {
        let opened = engine::shell::open(&access, &request).await?;
        let controls = forward_signals(pty)?;
        // Raw only once the session runs: a refusal prints normally.
        let raw = match pty && stdin_terminal {
            true => Some(RawMode::enter().map_err(CliError::Terminal)?),
            false => None,
        };
        let line_end = if raw.is_some() { "\r\n" } else { "\n" };
        let end = engine::shell::pump(
            opened,
            terminal::stdin_chunks(MAX_CHUNK_BYTES),
            &mut tokio::io::stdout(),
            &mut tokio::io::stderr(),
            controls,
            |notice| eprint!("vmkeep: {notice}{line_end}"),
        )
        .await;
        drop(raw);
        Ok::<End, CliError>(end)
    })?;
    match &end {
        End::Exited(_) => {}
        End::Failed(failure) => eprintln!("vmkeep: {}", failure.message),
        End::Broken(why) => eprintln!("vmkeep: the session broke: {why}"),
    }
    if std::io::stderr().is_terminal() && matches!(end, End::Broken(_)) {
        eprintln!("vmkeep: `vmkeep list` shows the instance's state");
    }
    Ok(end.shell_code(BROKEN_SESSION))
}

/// The signals `vmkeep shell` passes on to the guest command, and window
/// size changes (with a pty).
fn forward_signals(pty: bool) -> Result<mpsc::UnboundedReceiver<Control>, CliError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let kinds = [
        (SignalKind::interrupt(), "INT"),
        (SignalKind::terminate(), "TERM"),
        (SignalKind::hangup(), "HUP"),
        (SignalKind::quit(), "QUIT"),
    ];
    for (kind, name) in kinds {
        let mut incoming = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while incoming.recv().await.is_some() {
                if tx.send(Control::Signal(name)).is_err() {
                    return;
                }
            }
        });
    }
    if pty {
        let mut resized = signal(SignalKind::window_change())?;
        tokio::spawn(async move {
            while resized.recv().await.is_some() {
                let (rows, cols) = terminal::window_size().unwrap_or(DEFAULT_SIZE);
                if tx.send(Control::Resize(WindowSize { rows, cols })).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
