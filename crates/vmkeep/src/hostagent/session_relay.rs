//! One API client's session, relayed between its connection and the guest
//! link (the frames are `session_api`'s). What the guest sends goes to the
//! client, and the guest gets output credit back only once it is written to
//! the client's connection; what the client sends goes to the guest within
//! the stdin credit the client was told of. The client's end of the
//! connection ends the session (the guest hangs the command up). A guest
//! that QEMU paused for a while under a session is said to the client (a
//! notice: the command goes on once the guest runs again).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use vmkeep_protocol::session::Signal;

use super::server::{PAUSED_EXEC_GRACE, paused_for};
use super::session_api::{AgentFrame, ClientFrame};
use crate::instance::pause::PauseReason;
use crate::link::guest_link::GuestSession;
use crate::session::{SessionError, Update};

/// Relay `session` and the client's connection `io` until the session ends
/// or the client goes.
pub async fn relay<IO>(
    session: GuestSession,
    io: IO,
    mut pause: watch::Receiver<Option<PauseReason>>,
    instance: String,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let id = session.id();
    let session = Arc::new(session);
    let (mut from_client, mut to_client) = tokio::io::split(io);
    let mut client = tokio::spawn({
        let session = Arc::clone(&session);
        async move {
            loop {
                match ClientFrame::read(&mut from_client).await {
                    Ok(Some(frame)) => {
                        if let Err(why) = apply(&session, frame) {
                            return Some(why);
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some(format!("a bad frame from the client: {e}")),
                }
            }
        }
    });
    let mut told_paused = false;
    let mut resumed = pause.clone();
    let broken = loop {
        tokio::select! {
            reason = paused_for(&mut pause, PAUSED_EXEC_GRACE), if !told_paused => {
                told_paused = true;
                let notice = format!(
                    "{instance} is paused: {}; the command goes on once it runs again ({})",
                    reason.message(),
                    reason.hint().replace("NAME", &instance)
                );
                if write(&mut to_client, &AgentFrame::Notice(notice)).await.is_err() {
                    break None;
                }
            }
            _ = async { resumed.wait_for(Option::is_none).await.is_ok() }, if told_paused => {
                told_paused = false;
            }
            ended = &mut client => {
                match ended.ok().flatten() {
                    Some(why) => break Some(why),
                    None => {
                        tracing::debug!(session = id, "the client went away: closing the session");
                        break None;
                    }
                }
            }
            update = session.next_update() => {
                let output = match &update {
                    Update::Output { stream, data } => Some((*stream, data.len())),
                    _ => None,
                };
                let last = matches!(update, Update::End(_));
                let written = write(&mut to_client, &AgentFrame::of(update)).await;
                if written.is_err() {
                    tracing::debug!(session = id, "the client's connection failed: closing the session");
                    break None;
                }
                if let Some((stream, bytes)) = output {
                    session.grant(stream, bytes);
                }
                if last {
                    break None;
                }
            }
        }
    };
    if let Some(why) = broken {
        tracing::warn!(session = id, "{why}; closing the session");
        let _ = write(&mut to_client, &AgentFrame::Broken(why)).await;
    }
    client.abort();
    let _ = client.await;
    let _ = to_client.shutdown().await;
    // The last handle goes here: an unfinished session is closed.
    drop(session);
}

async fn write<W: AsyncWrite + Unpin>(to: &mut W, frame: &AgentFrame) -> std::io::Result<()> {
    to.write_all(&frame.encode()).await?;
    to.flush().await
}

/// Carry out one frame of the client's.
fn apply(session: &GuestSession, frame: ClientFrame) -> Result<(), String> {
    let sent = match frame {
        ClientFrame::Stdin(data) => {
            if data.len() as u64 > session.stdin_credit() {
                return Err(format!(
                    "the client sent {} bytes of stdin beyond its credit",
                    data.len()
                ));
            }
            session.send_stdin(data, false)
        }
        ClientFrame::StdinEof => session.send_stdin(Vec::new(), true),
        ClientFrame::Signal(name) => {
            session.signal(Signal::Name(name));
            Ok(())
        }
        ClientFrame::Resize(size) => {
            session.resize(size);
            Ok(())
        }
    };
    match sent {
        // The session ended meanwhile: its end reaches the client anyway.
        Ok(()) | Err(SessionError::Over(_)) => Ok(()),
        Err(SessionError::Refused(why)) => {
            Err(format!("the client broke the session's rules: {why}"))
        }
    }
}
