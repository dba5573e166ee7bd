//! A copy into the guest: the session runs the guest agent's copy-in mode
//! (`vmkeep_protocol::copy::copy_in_argv`), and [`copy_in`] packs the host's
//! paths into its stdin (`vmkeep_protocol::copy::pack`: symlinks are never
//! followed, sockets and devices are skipped and said), within the stdin
//! credit the guest grants, so that what is held between the two is one
//! window whatever the size.

use std::io::{self, Write};
use std::path::PathBuf;

use vmkeep_protocol::copy::{self, Notice, PackOptions};

use super::{End, MAX_CHUNK_BYTES, SessionStream, StdinCredit, Stream, Update};

/// Chunks of archive between the packing thread and the session.
const PIPE_CHUNKS: usize = 4;
/// What is kept of the guest's stderr.
const MAX_GUEST_MESSAGES_BYTES: usize = 16 * 1024;
/// Host-side problems kept for the report (more are counted).
const MAX_PROBLEMS_KEPT: usize = 50;

/// What a copy in did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiedIn {
    /// Bytes of file content sent.
    pub bytes: u64,
    /// Entries sent.
    pub entries: u64,
}

/// Why a copy in did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyInError {
    /// Some entries were not copied (on the host: unreadable, skipped; in
    /// the guest: could not be written); the rest were.
    #[error("some entries were not copied:\n{}", problems.join("\n"))]
    Incomplete { problems: Vec<String> },
    #[error("the copy did not start in the guest: {0}")]
    NotStarted(String),
    #[error("the copy broke off: {0}")]
    Broke(String),
}

/// The archive's chunks, sent to the session side.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK_BYTES));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the guest stopped the copy"))
    }
}

/// Run a copy in to its end: `session` is a session of the guest agent's
/// copy-in mode; `sources` are packed into it. `progress` hears the
/// archive's bytes as they go.
pub async fn copy_in<S: SessionStream>(
    session: &S,
    sources: Vec<PathBuf>,
    recursive: bool,
    mut progress: impl FnMut(u64) + Send,
) -> Result<CopiedIn, CopyInError> {
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPE_CHUNKS);
    let packing = tokio::task::spawn_blocking(move || {
        let mut notices: Vec<Notice> = Vec::new();
        let mut dropped = 0usize;
        let writer = ChunkWriter {
            tx,
            buf: Vec::with_capacity(MAX_CHUNK_BYTES),
        };
        let paths: Vec<&std::path::Path> = sources.iter().map(PathBuf::as_path).collect();
        let result = copy::pack(&paths, PackOptions { recursive }, writer, |notice| {
            if notices.len() < MAX_PROBLEMS_KEPT {
                notices.push(notice);
            } else {
                dropped += 1;
            }
        })
        .and_then(|(mut writer, summary)| writer.flush().map(|()| summary));
        (result, notices, dropped)
    });

    let mut credit = StdinCredit::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut packed = false;
    let mut eof_sent = false;
    let mut messages: Vec<u8> = Vec::new();
    let keep = |messages: &mut Vec<u8>, bytes: &[u8]| {
        let room = MAX_GUEST_MESSAGES_BYTES.saturating_sub(messages.len());
        messages.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    let end = loop {
        // Send what the credit allows.
        if !pending.is_empty() && credit.available() > 0 {
            let n = credit.take(pending.len());
            let rest = pending.split_off(n);
            let chunk = std::mem::replace(&mut pending, rest);
            progress(chunk.len() as u64);
            if let Err(e) = session.stdin(chunk, false).await {
                break End::Broken(e.to_string());
            }
            continue;
        }
        if pending.is_empty() && packed && !eof_sent {
            eof_sent = true;
            if let Err(e) = session.stdin(Vec::new(), true).await {
                break End::Broken(e.to_string());
            }
            continue;
        }
        let want_chunk = pending.is_empty() && !packed;
        let update = tokio::select! {
            chunk = chunks.recv(), if want_chunk => {
                match chunk {
                    Some(chunk) => pending = chunk,
                    None => packed = true,
                }
                continue;
            }
            update = session.next() => update,
        };
        match update {
            Update::StdinCredit(bytes) => credit.grant(bytes),
            Update::Output { stream, data } => {
                if stream == Stream::Stderr {
                    keep(&mut messages, &data);
                }
                session.consumed(stream, data.len()).await;
            }
            Update::Notice(text) => {
                keep(&mut messages, text.as_bytes());
                keep(&mut messages, b"\n");
            }
            // The guest's copy stopped reading: it is ending (its exit says why).
            Update::StdinClosed => {
                chunks.close();
                packed = true;
                pending.clear();
                eof_sent = true;
            }
            Update::Started { .. } => {}
            Update::End(end) => break end,
        }
    };
    // Let the packing thread end, whatever it was doing.
    chunks.close();
    while chunks.recv().await.is_some() {}
    let (packed, notices, dropped) = packing
        .await
        .map_err(|e| CopyInError::Broke(format!("the host side of the copy failed: {e}")))?;
    let guest_lines: Vec<String> = String::from_utf8_lossy(&messages)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.strip_prefix("vmkeep-guest: copy: ").unwrap_or(l);
            super::shown(l.as_bytes(), 1024)
        })
        .collect();
    let mut problems: Vec<String> = notices
        .iter()
        .filter(|n| !n.warning)
        .map(|n| format!("{n} (on the host)"))
        .collect();
    if dropped > 0 {
        problems.push(format!("... and {dropped} more on the host"));
    }
    match end {
        End::Failed(failure) => Err(CopyInError::NotStarted(failure.message)),
        End::Broken(why) => Err(CopyInError::Broke(why)),
        End::Exited(status) => match (status.shell_code(), packed) {
            (copy::exit::COMPLETE, Ok(summary)) if summary.errors == 0 => Ok(CopiedIn {
                bytes: summary.bytes,
                entries: summary.entries,
            }),
            (copy::exit::COMPLETE | copy::exit::INCOMPLETE, Ok(_)) => {
                problems.extend(guest_lines);
                Err(CopyInError::Incomplete { problems })
            }
            (code, _) => {
                let said = if guest_lines.is_empty() {
                    "the guest said nothing more".to_string()
                } else {
                    format!("the guest said: {}", guest_lines.join("; "))
                };
                Err(CopyInError::Broke(format!(
                    "the guest's copy mode exited {code}; {said}"
                )))
            }
        },
    }
}
