//! The virtio-serial channel to the host agent.
//!
//! The port's device is opened once, non-blocking, for the life of the agent.
//! While no host is connected, read() returns 0 and poll() reports POLLHUP;
//! the host connects and disconnects at will, any number of times. Writes go
//! through one lock; a write that finds no host drops the message and is
//! logged once per disconnection.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vmkeep_protocol::FromGuest;

use crate::log::log;
use crate::sys;

/// Where the kernel lists virtio-serial ports.
pub const SYS_PORTS: &str = "/sys/class/virtio-ports";

/// While no host is connected the port's poll() says POLLHUP at once, so it
/// cannot be waited on: it is looked at again after a pause. Short at first
/// (a host that comes back, as after a resume, is heard within 5 ms), then
/// longer, so that a guest left without its host for long (an orphaned QEMU)
/// spends almost nothing on it.
fn no_host_pause(since: Instant) -> Duration {
    if since.elapsed() < Duration::from_secs(2) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    }
}

/// A write that makes no progress for this long is abandoned.
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The device name (`vport0p1`, ...) of the port called `name`, if listed.
pub fn find_port(sys_ports: &Path, name: &str) -> Option<String> {
    let entries = std::fs::read_dir(sys_ports).ok()?;
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("name"))
                .map(|n| n.trim_end() == name)
                .unwrap_or(false)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Wait up to `timeout` until the port called `name` is listed and its
/// device node exists.
pub fn wait_for_port(name: &str, timeout: Duration) -> Option<PathBuf> {
    let started = Instant::now();
    loop {
        if let Some(device) = find_port(Path::new(SYS_PORTS), name) {
            let path = Path::new("/dev").join(device);
            if path.exists() {
                return Some(path);
            }
        }
        if started.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One complete line, or the news that a line was too long and was dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    Line(Vec<u8>),
    TooLong,
}

/// Splits a byte stream into lines of at most `max` bytes.
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Inside a too-long line: drop bytes up to the next newline.
    discarding: bool,
    max: usize,
}

impl LineBuffer {
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer {
            pending: Vec::new(),
            discarding: false,
            max,
        }
    }

    /// Forget a partial line (the host that was sending it went away).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.discarding = false;
    }

    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<LineEvent> {
        let mut events = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (chunk, rest, complete) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            bytes = rest;
            if !self.discarding {
                if self.pending.len() + chunk.len() > self.max {
                    self.pending.clear();
                    self.discarding = true;
                    events.push(LineEvent::TooLong);
                } else {
                    self.pending.extend_from_slice(chunk);
                }
            }
            if complete {
                if self.discarding {
                    self.discarding = false;
                } else {
                    let line = std::mem::take(&mut self.pending);
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        events.push(LineEvent::Line(line));
                    }
                }
            }
        }
        events
    }
}

/// The open port.
pub struct Channel {
    file: File,
    path: PathBuf,
    write_lock: Mutex<()>,
    /// A failed write was logged since the host last connected.
    failure_logged: AtomicBool,
    /// Counts host connections: it moves on when a host sends after the
    /// guest found none connected (see [`Channel::generation`]).
    generation: AtomicU64,
    /// Senders of control messages waiting for the write lock: bulk
    /// senders (session output) let them go first, so that a reply waits
    /// behind at most the one line being written.
    urgent: AtomicUsize,
}

enum WriteFailure {
    HostGone,
    Stalled,
    Io(io::Error),
}

impl Channel {
    pub fn open(path: &Path) -> io::Result<Channel> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Channel {
            file,
            path: path.to_path_buf(),
            write_lock: Mutex::new(()),
            failure_logged: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            urgent: AtomicUsize::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    /// Which host connection the requests read now came from: a request
    /// that subscribes to something (ports) remembers it, and what it
    /// subscribed to stops when a later connection starts.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a host has the other end open right now.
    pub fn host_connected(&self) -> bool {
        matches!(sys::poll_one(self.fd(), libc::POLLOUT, 0), Ok(events) if events & libc::POLLHUP == 0)
    }

    /// Send one message ahead of bulk ones; failures are logged (once per
    /// disconnection) and otherwise ignored. Returns whether the message
    /// was sent.
    pub fn send(&self, message: &FromGuest) -> bool {
        let line = vmkeep_protocol::encode_line(message);
        self.urgent.fetch_add(1, Ordering::SeqCst);
        let guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.urgent.fetch_sub(1, Ordering::SeqCst);
        self.write_line(&line, guard)
    }

    /// Send a message of a stream (session events): like [`Channel::send`],
    /// but after any control message waiting to be sent.
    pub fn send_bulk(&self, message: &FromGuest) -> bool {
        let line = vmkeep_protocol::encode_line(message);
        loop {
            while self.urgent.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let guard = self
                .write_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.urgent.load(Ordering::SeqCst) == 0 {
                return self.write_line(&line, guard);
            }
        }
    }

    fn write_line(&self, line: &[u8], _guard: std::sync::MutexGuard<'_, ()>) -> bool {
        match self.write_all(line) {
            Ok(()) => true,
            Err(failure) => {
                if !self.failure_logged.swap(true, Ordering::Relaxed) {
                    match failure {
                        WriteFailure::HostGone => {
                            log!("host is not connected; dropping messages until it reconnects")
                        }
                        WriteFailure::Stalled => log!(
                            "host stopped reading for {WRITE_STALL_LIMIT:?}; dropping a message"
                        ),
                        WriteFailure::Io(e) => log!("cannot write to {}: {e}", self.path.display()),
                    }
                }
                false
            }
        }
    }

    fn write_all(&self, mut bytes: &[u8]) -> Result<(), WriteFailure> {
        let mut progress_at = Instant::now();
        while !bytes.is_empty() {
            match sys::write(self.fd(), bytes) {
                Ok(n) => {
                    bytes = &bytes[n..];
                    progress_at = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let events =
                        sys::poll_one(self.fd(), libc::POLLOUT, 500).map_err(WriteFailure::Io)?;
                    if events & libc::POLLHUP != 0 && events & libc::POLLOUT == 0 {
                        return Err(WriteFailure::HostGone);
                    }
                    if events == 0 && progress_at.elapsed() > WRITE_STALL_LIMIT {
                        return Err(WriteFailure::Stalled);
                    }
                }
                Err(e) => return Err(WriteFailure::Io(e)),
            }
        }
        Ok(())
    }

    /// Read requests forever, calling `on_line` for every complete line,
    /// `on_too_long` for every line over the size limit, and `on_host_lost`
    /// each time the host is found gone (its end of the port closed).
    pub fn serve(
        &self,
        mut on_line: impl FnMut(&[u8]),
        mut on_too_long: impl FnMut(),
        mut on_host_lost: impl FnMut(),
    ) -> ! {
        let mut lines = LineBuffer::new(vmkeep_protocol::MAX_LINE_BYTES);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut error_logged = false;
        // Since when no host has been connected, if none is.
        let mut alone_since: Option<Instant> = None;
        // No host was connected at some point since the last read.
        let lost_host = AtomicBool::new(false);
        let mut pause_alone = |lines: &mut LineBuffer, alone_since: &mut Option<Instant>| {
            // Whatever half line we had is stale.
            lines.reset();
            if !lost_host.swap(true, Ordering::Relaxed) {
                on_host_lost();
            }
            let since = *alone_since.get_or_insert_with(Instant::now);
            std::thread::sleep(no_host_pause(since));
        };
        loop {
            match sys::read(self.fd(), &mut chunk) {
                Ok(0) => pause_alone(&mut lines, &mut alone_since),
                Ok(n) => {
                    alone_since = None;
                    if lost_host.swap(false, Ordering::Relaxed) {
                        self.generation.fetch_add(1, Ordering::SeqCst);
                    }
                    self.failure_logged.store(false, Ordering::Relaxed);
                    error_logged = false;
                    for event in lines.push(&chunk[..n]) {
                        match event {
                            LineEvent::Line(line) => on_line(&line),
                            LineEvent::TooLong => on_too_long(),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::poll_one(self.fd(), libc::POLLIN, 1000) {
                        Ok(events) if events & libc::POLLHUP != 0 && events & libc::POLLIN == 0 => {
                            pause_alone(&mut lines, &mut alone_since)
                        }
                        Ok(_) => alone_since = None,
                        Err(e) => {
                            log!("cannot poll {}: {e}", self.path.display());
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                Err(e) => {
                    if !error_logged {
                        log!("cannot read {}: {e}", self.path.display());
                        error_logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LineEvent {
        LineEvent::Line(text.as_bytes().to_vec())
    }

    #[test]
    fn a_host_that_went_away_is_looked_for_often_at_first_then_rarely() {
        assert_eq!(no_host_pause(Instant::now()), Duration::from_millis(5));
        let long_ago = Instant::now() - Duration::from_secs(3);
        assert_eq!(no_host_pause(long_ago), Duration::from_millis(50));
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut buffer = LineBuffer::new(100);
        assert_eq!(buffer.push(b"{\"id\":1"), vec![]);
        assert_eq!(
            buffer.push(b"}\n{\"id\":2}\n{\"id"),
            vec![line("{\"id\":1}"), line("{\"id\":2}")]
        );
        buffer.reset();
        assert_eq!(
            buffer.push(b"3}\n"),
            vec![line("3}")],
            "a reset drops the partial line"
        );
    }

    #[test]
    fn blank_lines_are_skipped() {
        let mut buffer = LineBuffer::new(100);
        assert_eq!(buffer.push(b"\n \r\nx\n"), vec![line("x")]);
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_skipped() {
        let mut buffer = LineBuffer::new(4);
        assert_eq!(buffer.push(b"abc"), vec![]);
        assert_eq!(buffer.push(b"defgh"), vec![LineEvent::TooLong]);
        assert_eq!(buffer.push(b"ijk\nok\n"), vec![line("ok")]);
        assert_eq!(
            buffer.push(b"abcd\n"),
            vec![line("abcd")],
            "exactly the limit is fine"
        );
    }

    #[test]
    fn ports_are_found_by_name() {
        let dir = std::env::temp_dir().join(format!("vmkeep-guest-ports-{}", std::process::id()));
        for (port, name) in [
            ("vport0p1", "org.other\n"),
            ("vport1p1", "org.vmkeep.guest.0\n"),
        ] {
            std::fs::create_dir_all(dir.join(port)).unwrap();
            std::fs::write(dir.join(port).join("name"), name).unwrap();
        }
        assert_eq!(
            find_port(&dir, vmkeep_protocol::PORT_NAME).as_deref(),
            Some("vport1p1")
        );
        assert_eq!(find_port(&dir, "org.missing"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
