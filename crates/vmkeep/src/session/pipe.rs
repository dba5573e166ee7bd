//! A byte stream relayed to a command in the guest: what the stream's peer
//! writes goes to the command's stdin (within the guest's credit: the
//! stream is read only while there is some), the command's stdout goes to
//! the stream (and is granted back once written), its stderr is kept (a
//! little) for the log. The connections of a forwarded unix socket are
//! relayed this way to the guest agent's relay mode
//! (`vmkeep_protocol::unix_relay`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{End, MAX_CHUNK_BYTES, SessionStream, StdinCredit, Stream, Update};

/// What is kept of the command's stderr.
const MAX_STDERR_BYTES: usize = 4096;

/// How a relay ended: the session's end, what the command said on stderr
/// (escaped), and whether the stream went away first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piped {
    pub end: Option<End>,
    pub stderr: String,
    /// The stream's peer stopped reading (or the stream failed) before the
    /// command ended; the session is closed by dropping it.
    pub stream_gone: bool,
}

/// Relay `stream` and `session` until the command ends or the stream's
/// peer is gone for good.
pub async fn pipe<S, IO>(session: &S, stream: IO) -> Piped
where
    S: SessionStream,
    IO: AsyncRead + AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut credit = StdinCredit::default();
    let mut reading = true;
    let mut stderr: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    let shown = |stderr: &[u8]| super::shown(stderr, MAX_STDERR_BYTES);
    loop {
        let can_read = reading && credit.available() > 0;
        let want = (credit.available() as usize).min(MAX_CHUNK_BYTES);
        tokio::select! {
            read = reader.read(&mut buf[..want.max(1)]), if can_read => {
                let (data, eof) = match read {
                    Ok(0) | Err(_) => (Vec::new(), true),
                    Ok(n) => {
                        credit.take(n);
                        (buf[..n].to_vec(), false)
                    }
                };
                if eof {
                    reading = false;
                }
                if session.stdin(data, eof).await.is_err() {
                    reading = false;
                }
            }
            update = session.next() => match update {
                Update::Output { stream: Stream::Stdout, data } => {
                    let written = writer.write_all(&data).await;
                    let written = match written {
                        Ok(()) => writer.flush().await,
                        Err(e) => Err(e),
                    };
                    if written.is_err() {
                        return Piped { end: None, stderr: shown(&stderr), stream_gone: true };
                    }
                    session.consumed(Stream::Stdout, data.len()).await;
                }
                Update::Output { stream: Stream::Stderr, data } => {
                    let room = MAX_STDERR_BYTES.saturating_sub(stderr.len());
                    stderr.extend_from_slice(&data[..data.len().min(room)]);
                    session.consumed(Stream::Stderr, data.len()).await;
                }
                Update::StdinCredit(bytes) => credit.grant(bytes),
                Update::StdinClosed => reading = false,
                Update::Started { .. } | Update::Notice(_) => {}
                Update::End(end) => {
                    let _ = writer.shutdown().await;
                    return Piped { end: Some(end), stderr: shown(&stderr), stream_gone: false };
                }
            },
        }
    }
}
