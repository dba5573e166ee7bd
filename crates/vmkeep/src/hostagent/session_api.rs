//! The streaming half of the host agent's API: a session in the guest,
//! relayed to a client over its own connection, for server and client
//! alike (the route itself is [`super::api::SESSION`]).
//!
//! # Opening
//!
//! `POST /v1/session` with `Connection: upgrade`, `Upgrade:`
//! [`UPGRADE_PROTOCOL`] and a JSON [`SessionOpen`] body. The agent answers
//! an error (JSON [`super::api::ApiErrorBody`], as every route) when it
//! cannot open it now (the guest is paused, its agent away, too many
//! sessions), else `101 Switching Protocols`; from then on the connection
//! carries frames both ways.
//!
//! # Frames
//!
//! `tag: u8, length: u32 (big-endian), payload` (at most
//! [`MAX_FRAME_PAYLOAD`]). From the client ([`ClientFrame`]): `i` stdin
//! bytes, `e` end of stdin, `s` a signal (its name), `w` a window size
//! (rows, cols: u16 each). From the agent ([`AgentFrame`]): `S` started
//! (pid: i32), `o`/`r` stdout/stderr bytes, `c` stdin credit (u64), `C`
//! stdin closed, `n` a notice (the guest refused a frame), and one last
//! frame: `x` exited or `f` failed to start (JSON of the protocol's
//! `ExitStatus` / `StartFailure`), or `b` broken (a message). The
//! connection ends after it.
//!
//! # Flow control
//!
//! The agent grants the guest output credit for what it has written to this
//! connection, so a client that reads slowly slows the command down and
//! nothing piles up in between. Stdin: the client starts with
//! `vmkeep_protocol::session::STDIN_WINDOW` of credit and gets more with
//! each `c` frame; stdin beyond its credit ends the session (`b`). A
//! client that closes the connection closes the session: the guest hangs
//! the command up (SIGHUP).

use std::io;
use std::path::Path;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use vmkeep_protocol::session::{
    ExitStatus, MAX_CHUNK_BYTES, MAX_EVENT_MESSAGE_BYTES, OpenSession, StartFailure, WindowSize,
};

use super::api::{ApiError, ApiErrorBody, ErrorCode, SESSION};
use crate::session::{End, SessionError, SessionStream, Stream, Update};

/// The `Upgrade:` protocol of a session connection.
pub const UPGRADE_PROTOCOL: &str = "vmkeep-session/1";

/// The largest frame payload either side accepts.
pub const MAX_FRAME_PAYLOAD: usize = MAX_CHUNK_BYTES + 8 * 1024;

/// Longest signal name a client may send.
const MAX_SIGNAL_NAME: usize = 16;

/// The body of `POST /v1/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    pub open: OpenSession,
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Stdin(Vec<u8>),
    StdinEof,
    /// A signal by name (`INT`, `TERM`, ...).
    Signal(String),
    Resize(WindowSize),
}

/// A frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFrame {
    Started(i32),
    Output(Stream, Vec<u8>),
    StdinCredit(u64),
    StdinClosed,
    Notice(String),
    Exited(ExitStatus),
    Failed(StartFailure),
    Broken(String),
}

/// A frame that is not one.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes (at most {MAX_FRAME_PAYLOAD})")]
    TooLong(usize),
    #[error("an unknown frame {0:#04x}")]
    UnknownTag(u8),
    #[error("a bad {0} frame")]
    Bad(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(5 + payload.len());
    bytes.push(tag);
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The next frame's tag and payload; `None` at a clean end (between frames).
async fn read_raw<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let mut header = [0u8; 5];
    match reader.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut header[1..]).await?,
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

fn text(payload: Vec<u8>, what: &'static str, max: usize) -> Result<String, FrameError> {
    if payload.len() > max {
        return Err(FrameError::Bad(what));
    }
    String::from_utf8(payload).map_err(|_| FrameError::Bad(what))
}

impl ClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientFrame::Stdin(data) => frame(b'i', data),
            ClientFrame::StdinEof => frame(b'e', &[]),
            ClientFrame::Signal(name) => frame(b's', name.as_bytes()),
            ClientFrame::Resize(size) => {
                let mut payload = size.rows.to_be_bytes().to_vec();
                payload.extend_from_slice(&size.cols.to_be_bytes());
                frame(b'w', &payload)
            }
        }
    }

    /// The next frame from a client; `None` once it closed the connection.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Self>, FrameError> {
        let Some((tag, payload)) = read_raw(reader).await? else {
            return Ok(None);
        };
        Ok(Some(match tag {
            b'i' if payload.len() <= MAX_CHUNK_BYTES => ClientFrame::Stdin(payload),
            b'i' => return Err(FrameError::Bad("stdin")),
            b'e' => ClientFrame::StdinEof,
            b's' => ClientFrame::Signal(text(payload, "signal", MAX_SIGNAL_NAME)?),
            b'w' => match payload[..] {
                [r0, r1, c0, c1] => ClientFrame::Resize(WindowSize {
                    rows: u16::from_be_bytes([r0, r1]),
                    cols: u16::from_be_bytes([c0, c1]),
                }),
                _ => return Err(FrameError::Bad("resize")),
            },
            other => return Err(FrameError::UnknownTag(other)),
        }))
    }
}

impl AgentFrame {
    /// The frame that tells the client `update`.
    pub fn of(update: Update) -> AgentFrame {
        match update {
            Update::Started { pid } => AgentFrame::Started(pid),
            Update::Output { stream, data } => AgentFrame::Output(stream, data),
            Update::StdinCredit(bytes) => AgentFrame::StdinCredit(bytes),
            Update::StdinClosed => AgentFrame::StdinClosed,
            Update::Notice(text) => AgentFrame::Notice(text),
            Update::End(End::Exited(status)) => AgentFrame::Exited(status),
            Update::End(End::Failed(failure)) => AgentFrame::Failed(failure),
            Update::End(End::Broken(why)) => AgentFrame::Broken(why),
        }
    }

    /// What the frame tells.
    pub fn update(self) -> Update {
        match self {
            AgentFrame::Started(pid) => Update::Started { pid },
            AgentFrame::Output(stream, data) => Update::Output { stream, data },
            AgentFrame::StdinCredit(bytes) => Update::StdinCredit(bytes),
            AgentFrame::StdinClosed => Update::StdinClosed,
            AgentFrame::Notice(text) => Update::Notice(text),
            AgentFrame::Exited(status) => Update::End(End::Exited(status)),
            AgentFrame::Failed(failure) => Update::End(End::Failed(failure)),
            AgentFrame::Broken(why) => Update::End(End::Broken(why)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            AgentFrame::Started(pid) => frame(b'S', &pid.to_be_bytes()),
            AgentFrame::Output(Stream::Stdout, data) => frame(b'o', data),
            AgentFrame::Output(Stream::Stderr, data) => frame(b'r', data),
            AgentFrame::StdinCredit(bytes) => frame(b'c', &bytes.to_be_bytes()),
            AgentFrame::StdinClosed => frame(b'C', &[]),
            AgentFrame::Notice(text) => frame(b'n', text.as_bytes()),
            AgentFrame::Exited(status) => frame(b'x', &json(status)),
            AgentFrame::Failed(failure) => frame(b'f', &json(failure)),
            AgentFrame::Broken(why) => frame(b'b', why.as_bytes()),
        }
    }

    /// The next frame from the agent; `None` once it closed the connection.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Self>, FrameError> {
        let Some((tag, payload)) = read_raw(reader).await? else {
            return Ok(None);
        };
        let number = |payload: &[u8]| -> Result<u64, FrameError> {
            payload
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| FrameError::Bad("credit"))
        };
        let message_max = MAX_EVENT_MESSAGE_BYTES * 2;
        Ok(Some(match tag {
            b'S' => AgentFrame::Started(
                payload[..]
                    .try_into()
                    .map(i32::from_be_bytes)
                    .map_err(|_| FrameError::Bad("started"))?,
            ),
            b'o' => AgentFrame::Output(Stream::Stdout, payload),
            b'r' => AgentFrame::Output(Stream::Stderr, payload),
            b'c' => AgentFrame::StdinCredit(number(&payload)?),
            b'C' => AgentFrame::StdinClosed,
            b'n' => AgentFrame::Notice(text(payload, "notice", message_max)?),
            b'x' => AgentFrame::Exited(
                serde_json::from_slice(&payload).map_err(|_| FrameError::Bad("exited"))?,
            ),
            b'f' => AgentFrame::Failed(
                serde_json::from_slice(&payload).map_err(|_| FrameError::Bad("failed"))?,
            ),
            b'b' => AgentFrame::Broken(text(payload, "broken", message_max)?),
            other => return Err(FrameError::UnknownTag(other)),
        }))
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Updates a client has read ahead and not taken (bounded: a client that
/// does not take them stops reading the connection).
const READ_AHEAD: usize = 2;

/// A session through the host agent's API, for the CLI.
pub struct SessionClient {
    updates: Mutex<mpsc::Receiver<Update>>,
    writer: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    reader: tokio::task::AbortHandle,
}

impl std::fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionClient").finish_non_exhaustive()
    }
}

/// The update a client gets when the agent's connection ends early.
fn agent_gone(why: &str) -> Update {
    Update::End(End::Broken(format!(
        "the host agent's connection ended before the command did ({why})"
    )))
}

impl SessionClient {
    /// Open a session through the agent on `socket`; `timeout` bounds the
    /// opening, not the session.
    pub async fn open(
        socket: &Path,
        open: OpenSession,
        timeout: Duration,
    ) -> Result<SessionClient, ApiError> {
        tokio::time::timeout(timeout, Self::open_inner(socket, open))
            .await
            .map_err(|_| ApiError::Timeout {
                path: SESSION.path,
                timeout,
            })?
    }

    async fn open_inner(socket: &Path, open: OpenSession) -> Result<SessionClient, ApiError> {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| ApiError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection.with_upgrades());
        let bad = |message: String| ApiError::BadAnswer {
            path: SESSION.path,
            message,
        };
        let body = serde_json::to_vec(&SessionOpen { open }).map_err(|e| bad(e.to_string()))?;
        let request = hyper::Request::builder()
            .method(SESSION.method)
            .uri(SESSION.path)
            .header(hyper::header::HOST, "vmkeep-hostagent")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, UPGRADE_PROTOCOL)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| bad(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let body = response.into_body().collect().await?.to_bytes();
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&body) {
                Ok(body) => (body.code, body.error),
                Err(_) => (ErrorCode::Unknown, format!("HTTP {status}")),
            };
            return Err(ApiError::Refused {
                path: SESSION.path,
                code,
                message,
            });
        }
        let upgraded = hyper::upgrade::on(response).await?;
        let (mut read_half, write_half) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let (tx, updates) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(async move {
            loop {
                let update = match AgentFrame::read(&mut read_half).await {
                    Ok(Some(frame)) => frame.update(),
                    Ok(None) => agent_gone("it closed the connection"),
                    Err(e) => agent_gone(&e.to_string()),
                };
                let last = matches!(update, Update::End(_));
                if tx.send(update).await.is_err() || last {
                    return;
                }
            }
        })
        .abort_handle();
        Ok(SessionClient {
            updates: Mutex::new(updates),
            writer: Mutex::new(Box::new(write_half)),
            reader,
        })
    }

    async fn send(&self, frame: ClientFrame) -> Result<(), SessionError> {
        let mut writer = self.writer.lock().await;
        let sent = writer.write_all(&frame.encode()).await;
        let sent = match sent {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| SessionError::Over(format!("the host agent's connection failed: {e}")))
    }

    /// Deliver a signal to the command (its name: `INT`, `TERM`, ...).
    pub async fn signal(&self, name: &str) -> Result<(), SessionError> {
        self.send(ClientFrame::Signal(name.to_string())).await
    }

    /// The terminal's new size.
    pub async fn resize(&self, size: WindowSize) -> Result<(), SessionError> {
        self.send(ClientFrame::Resize(size)).await
    }
}

impl Drop for SessionClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SessionStream for SessionClient {
    async fn next(&self) -> Update {
        let mut updates = self.updates.lock().await;
        updates
            .recv()
            .await
            .unwrap_or_else(|| agent_gone("the session is over"))
    }

    fn consumed(
        &self,
        _stream: Stream,
        _bytes: usize,
    ) -> impl std::future::Future<Output = ()> + Send {
        // The agent grants the guest credit once it wrote to this
        // connection: reading it is what gives credit.
        std::future::ready(())
    }

    async fn stdin(&self, data: Vec<u8>, eof: bool) -> Result<(), SessionError> {
        if !data.is_empty() {
            self.send(ClientFrame::Stdin(data)).await?;
        }
        if eof {
            self.send(ClientFrame::StdinEof).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let client = [
            ClientFrame::Stdin(b"hi\n".to_vec()),
            ClientFrame::StdinEof,
            ClientFrame::Signal("INT".into()),
            ClientFrame::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
        ];
        let mut bytes: Vec<u8> = client.iter().flat_map(ClientFrame::encode).collect();
        let mut reader = &bytes[..];
        for frame in &client {
            assert_eq!(
                ClientFrame::read(&mut reader).await.unwrap().as_ref(),
                Some(frame)
            );
        }
        assert!(ClientFrame::read(&mut reader).await.unwrap().is_none());
        let agent = [
            AgentFrame::Started(42),
            AgentFrame::Output(Stream::Stdout, vec![0, 1, 2]),
            AgentFrame::Output(Stream::Stderr, b"oops".to_vec()),
            AgentFrame::StdinCredit(65536),
            AgentFrame::StdinClosed,
            AgentFrame::Notice("refused".into()),
            AgentFrame::Exited(ExitStatus::killed(2, false)),
            AgentFrame::Failed(StartFailure {
                reason: vmkeep_protocol::session::FailReason::NoSuchCommand,
                message: "no such command: x".into(),
            }),
            AgentFrame::Broken("lost".into()),
        ];
        bytes = agent.iter().flat_map(AgentFrame::encode).collect();
        let mut reader = &bytes[..];
        for frame in &agent {
            assert_eq!(
                AgentFrame::read(&mut reader).await.unwrap().as_ref(),
                Some(frame)
            );
        }
        // Too long, unknown, cut short.
        let mut long = vec![b'i'];
        long.extend_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(
            ClientFrame::read(&mut &long[..]).await,
            Err(FrameError::TooLong(_))
        ));
        assert!(matches!(
            ClientFrame::read(&mut &frame(b'?', &[])[..]).await,
            Err(FrameError::UnknownTag(b'?'))
        ));
        let stdin = frame(b'i', &vec![0; MAX_CHUNK_BYTES + 1]);
        assert!(matches!(
            ClientFrame::read(&mut &stdin[..]).await,
            Err(FrameError::Bad("stdin"))
        ));
        let cut = &ClientFrame::Stdin(b"abc".to_vec()).encode()[..6];
        assert!(matches!(
            ClientFrame::read(&mut &cut[..]).await,
            Err(FrameError::Io(_))
        ));
    }
}
