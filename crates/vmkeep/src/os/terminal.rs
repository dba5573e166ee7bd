//! The user's terminal: whether stdin is one, its size, and raw mode for an
//! interactive session (every key goes to the guest's pty, which does the
//! echoing, line editing and Ctrl-C itself), restored on every way out: the
//! guard's drop, and a panic (the release build aborts, so no drop runs
//! then).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use rustix::termios::{self, OptionalActions, Termios};

/// The settings to put back, while raw mode is on.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    termios::isatty(stdin_fd())
}

/// The terminal's size (rows, columns): of stdin, else stdout, else stderr.
pub fn window_size() -> Option<(u16, u16)> {
    [0, 1, 2].into_iter().find_map(|fd| {
        // SAFETY: fds 0-2 stay open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_row > 0 && w.ws_col > 0)
            .map(|w| (w.ws_row, w.ws_col))
    })
}

/// Raw mode on stdin while this lives.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Put stdin (a terminal) in raw mode.
    pub fn enter() -> io::Result<RawMode> {
        let saved = termios::tcgetattr(stdin_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        install_panic_restore();
        termios::tcsetattr(stdin_fd(), OptionalActions::Now, &raw)?;
        Ok(RawMode(()))
    }
}

/// Put the saved settings back (idempotent).
fn restore() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = termios::tcsetattr(stdin_fd(), OptionalActions::Now, &saved);
    }
}

fn install_panic_restore() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Stdin, read on a thread of its own in chunks of at most `chunk` bytes,
/// at most two chunks ahead of the receiver (the thread blocks meanwhile);
/// the channel ends at the end of stdin (or a read error). The thread may
/// stay blocked in a read when the receiver is dropped: the process's exit
/// ends it.
pub fn stdin_chunks(chunk: usize) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; chunk];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    rx
}
