//! A copy out of the guest: the session runs the guest agent's copy-out
//! mode (`vmkeep_protocol::copy::copy_out_argv`), its stdout is an archive,
//! and [`copy_out`] writes it under a host destination with
//! `vmkeep_protocol::copy::unpack`.
//!
//! The guest is untrusted, and what it sends decides what is written, so:
//!
//! - nothing is written outside the destination the host user named: the
//!   archive's paths are relative and checked (no `..`, no absolute names),
//!   every path is opened component by component with `O_NOFOLLOW`, so a
//!   symlink the guest sent (or one already there) is never followed;
//! - no setuid, setgid or sticky bits ([`unpack`]'s default drops them, and
//!   says so), no device nodes, fifos or sockets (the archive cannot carry
//!   them), and every file belongs to whoever runs the copy;
//! - a guest cannot fill the host's disk: before each MiB the free space of
//!   the destination's file system is read, and the copy stops while the
//!   [`reserve`] would still be left free ([`CopyOutError::NoRoom`]); a
//!   [`Limits::max_bytes`] (copyToHost's) stops it at a size too. A copy
//!   that stops leaves no half-written file (the file being written is
//!   removed; what was written in full stays, and the error says so).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmkeep_protocol::copy::{self, Notice, UnpackError, UnpackOptions, Unpacked};

use super::{End, SessionStream, Stream, Update};

const MIB: u64 = 1024 * 1024;
/// How often (in bytes of archive) the free space is read again.
const SPACE_CHECK_EVERY: u64 = MIB;
/// Chunks of archive between the session and the unpacking thread.
const PIPE_CHUNKS: usize = 4;
/// What is kept of the guest's stderr (its copy mode's messages).
const MAX_GUEST_MESSAGES_BYTES: usize = 16 * 1024;
/// Problems kept for the report (more are counted).
const MAX_PROBLEMS_KEPT: usize = 50;

/// The free space a copy out of a guest leaves on the destination's file
/// system: 1% of its size, at least 64 MiB (what a `start` needs to be
/// allowed, and more than a paused guest needs to run on), at most 1 GiB.
pub fn reserve(total_bytes: u64) -> u64 {
    (total_bytes / 100).clamp(64 * MIB, 1024 * MIB)
}

/// What a copy out may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Stop once the archive is larger than this.
    pub max_bytes: Option<u64>,
}

/// What a copy out did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiedOut {
    /// Files, directories and symlinks written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Warnings (special bits dropped), for the user.
    pub warnings: Vec<String>,
}

/// Why a copy out did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyOutError {
    /// A source does not exist (the guest said so); the others were copied.
    #[error("{}", messages.join("\n"))]
    Missing { messages: Vec<String> },
    /// Some entries were not copied; the rest were.
    #[error("some entries were not copied:\n{}", problems.join("\n"))]
    Incomplete { problems: Vec<String> },
    /// The destination cannot be written as asked.
    #[error("{0}")]
    Destination(String),
    /// The destination's file system would fall below its reserve.
    #[error(
        "the copy stopped: the file system of {} has {} free, and a copy out of a guest leaves {} free; \
         the file being written was removed, the files copied in full before it are kept",
        dest.display(), mib(*free), mib(*reserve)
    )]
    NoRoom {
        dest: PathBuf,
        free: u64,
        reserve: u64,
    },
    /// More than [`Limits::max_bytes`] came.
    #[error(
        "the copy stopped at its limit of {}: the guest sent more; the file being written was removed",
        mib(*limit)
    )]
    TooLarge { limit: u64 },
    /// The copy could not start in the guest.
    #[error("the copy did not start in the guest: {0}")]
    NotStarted(String),
    /// The copy broke off (the guest's archive was bad or cut short, the
    /// session broke, the guest's copy mode failed).
    #[error("the copy broke off: {0}")]
    Broke(String),
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Why the reader stopped the archive, beyond what `unpack` knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    NoRoom { free: u64, reserve: u64 },
    TooLarge { limit: u64 },
}

/// The archive as the unpacking thread reads it: chunks from the session,
/// with the free space and the size checked as they go.
struct GuardedReader {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    /// Where the free space is read (the destination, or its parent).
    space_of: PathBuf,
    read: u64,
    next_check: u64,
    limits: Limits,
    stop: Arc<Mutex<Option<Stop>>>,
}

impl GuardedReader {
    fn check(&mut self) -> io::Result<()> {
        if let Some(limit) = self.limits.max_bytes
            && self.read > limit
        {
            return Err(self.stopped(Stop::TooLarge { limit }));
        }
        if self.read >= self.next_check {
            self.next_check = self.read + SPACE_CHECK_EVERY;
            let (total, free) = crate::os::fs::space_of(&self.space_of)?;
            let reserve = reserve(total);
            if free < reserve.saturating_add(SPACE_CHECK_EVERY) {
                return Err(self.stopped(Stop::NoRoom { free, reserve }));
            }
        }
        Ok(())
    }

    fn stopped(&self, stop: Stop) -> io::Error {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
        io::Error::other("the copy was stopped")
    }
}

impl Read for GuardedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        self.read += n as u64;
        self.check()?;
        Ok(n)
    }
}

/// The guest's messages (stderr and refusals), kept up to a bound.
#[derive(Debug, Default)]
struct GuestMessages {
    text: Vec<u8>,
}

impl GuestMessages {
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_GUEST_MESSAGES_BYTES.saturating_sub(self.text.len());
        self.text.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// One line per message, escaped.
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.text)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let l = l.strip_prefix("vmkeep-guest: copy: ").unwrap_or(l);
                super::shown(l.as_bytes(), 1024)
            })
            .collect()
    }

    fn summary(&self) -> String {
        let lines = self.lines();
        if lines.is_empty() {
            "the guest said nothing more".into()
        } else {
            format!("the guest said: {}", lines.join("; "))
        }
    }
}

/// Run a copy out to its end: `session` is a session of the guest agent's
/// copy-out mode; its archive is written under `dest` (`vmkeep_protocol::copy`'s
/// rules for where). `progress` hears the archive's bytes as they arrive.
pub async fn copy_out<S: SessionStream>(
    session: &S,
    dest: &Path,
    limits: Limits,
    mut progress: impl FnMut(u64) + Send,
) -> Result<CopiedOut, CopyOutError> {
    let _ = session.stdin(Vec::new(), true).await;
    let (chunks_tx, chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPE_CHUNKS);
    let stop = Arc::new(Mutex::new(None));
    let space_of = if dest.exists() {
        dest.to_path_buf()
    } else {
        match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let reader = GuardedReader {
        chunks,
        current: Vec::new(),
        at: 0,
        space_of,
        read: 0,
        next_check: 0,
        limits,
        stop: Arc::clone(&stop),
    };
    let dest_owned = dest.to_path_buf();
    let unpacking = tokio::task::spawn_blocking(move || {
        let mut notices: Vec<Notice> = Vec::new();
        let mut dropped = 0usize;
        let result = copy::unpack(reader, &dest_owned, UnpackOptions::default(), |notice| {
            if notices.len() < MAX_PROBLEMS_KEPT {
                notices.push(notice);
            } else {
                dropped += 1;
            }
        });
        (result, notices, dropped)
    });

    let mut messages = GuestMessages::default();
    let mut chunks_tx = Some(chunks_tx);
    let end = loop {
        match session.next().await {
            Update::Output {
                stream: Stream::Stdout,
                data,
            } => {
                let len = data.len();
                progress(len as u64);
                let taken = match &chunks_tx {
                    Some(tx) => tx.send(data).await.is_ok(),
                    None => false,
                };
                if !taken {
                    // The unpacking stopped (its reason is in its result):
                    // the session is closed by our caller dropping it.
                    chunks_tx = None;
                    break None;
                }
                session.consumed(Stream::Stdout, len).await;
            }
            Update::Output {
                stream: Stream::Stderr,
                data,
            } => {
                messages.push(&data);
                session.consumed(Stream::Stderr, data.len()).await;
            }
            Update::Notice(text) => {
                messages.push(text.as_bytes());
                messages.push(b"\n");
            }
            Update::Started { .. } | Update::StdinCredit(_) | Update::StdinClosed => {}
            Update::End(end) => break Some(end),
        }
    };
    drop(chunks_tx);
    let (result, notices, dropped) = unpacking
        .await
        .map_err(|e| CopyOutError::Broke(format!("the host side of the copy failed: {e}")))?;
    let stopped = stop.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(stop) = stopped {
        return Err(match stop {
            Stop::NoRoom { free, reserve } => CopyOutError::NoRoom {
                dest: dest.to_path_buf(),
                free,
                reserve,
            },
            Stop::TooLarge { limit } => CopyOutError::TooLarge { limit },
        });
    }
    let problems = || {
        let mut lines: Vec<String> = notices
            .iter()
            .filter(|n| !n.warning)
            .map(|n| super::shown(n.to_string().as_bytes(), 1024))
            .collect();
        if dropped > 0 {
            lines.push(format!("... and {dropped} more"));
        }
        lines
    };
    match (end, result) {
        (_, Err(UnpackError::Destination(message))) => Err(CopyOutError::Destination(message)),
        (Some(End::Failed(failure)), _) => Err(CopyOutError::NotStarted(failure.message)),
        (Some(End::Broken(why)), _) => Err(CopyOutError::Broke(why)),
        (None, Err(e)) => Err(CopyOutError::Broke(e.to_string())),
        (Some(End::Exited(status)), result) => {
            let code = status.shell_code();
            match result {
                Err(e) => Err(CopyOutError::Broke(match code {
                    copy::exit::COMPLETE => format!("{e} (from the guest)"),
                    _ => format!("{e}; {}", messages.summary()),
                })),
                Ok(done) => done_by_code(code, done, &notices, problems(), &messages),
            }
        }
        (None, Ok(_)) => Err(CopyOutError::Broke(
            "the copy ended before the guest's archive did".into(),
        )),
    }
}

/// A complete archive: what the guest's exit code says of it.
fn done_by_code(
    code: i32,
    done: Unpacked,
    notices: &[Notice],
    problems: Vec<String>,
    messages: &GuestMessages,
) -> Result<CopiedOut, CopyOutError> {
    let warnings = notices
        .iter()
        .filter(|n| n.warning)
        .map(|n| super::shown(n.to_string().as_bytes(), 1024))
        .collect();
    let copied = CopiedOut {
        entries: done.written,
        bytes: done.bytes,
        warnings,
    };
    match code {
        copy::exit::COMPLETE if done.problems == 0 => Ok(copied),
        copy::exit::COMPLETE | copy::exit::INCOMPLETE => Err(CopyOutError::Incomplete { problems }),
        copy::exit::MISSING if done.problems == 0 => Err(CopyOutError::Missing {
            messages: messages.lines(),
        }),
        copy::exit::MISSING => Err(CopyOutError::Incomplete {
            problems: problems.into_iter().chain(messages.lines()).collect(),
        }),
        other => Err(CopyOutError::Broke(format!(
            "the guest's copy mode exited {other}; {}",
            messages.summary()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_one_percent_within_64_mib_and_1_gib() {
        assert_eq!(reserve(0), 64 * MIB);
        assert_eq!(reserve(1024 * MIB), 64 * MIB);
        assert_eq!(reserve(10_000 * MIB), 100 * MIB);
        assert_eq!(reserve(10_000_000 * MIB), 1024 * MIB);
    }

    #[test]
    fn the_guests_messages_are_bounded_escaped_and_one_per_line() {
        let mut messages = GuestMessages::default();
        messages.push(b"vmkeep-guest: copy: /x: no such file or directory\n\x1b[2J\n");
        assert_eq!(
            messages.lines(),
            ["/x: no such file or directory", "\\u{1b}[2J"]
        );
        messages.push(&vec![b'a'; 10 * MAX_GUEST_MESSAGES_BYTES]);
        assert_eq!(messages.text.len(), MAX_GUEST_MESSAGES_BYTES);
    }
}
