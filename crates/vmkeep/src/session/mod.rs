//! The host side of streaming sessions (`vmkeep_protocol::session`),
//! whatever carries them: what a session says ([`Update`], [`End`]), the
//! little a user of one does with it ([`SessionStream`]), and the work done
//! over one, written once: a copy out of the guest into a host directory
//! ([`copy_out`]), a copy of host paths into the guest ([`copy_in`]), and
//! a byte stream relayed to a command in the guest ([`pipe`], the
//! connections of a forwarded socket).
//!
//! Two things carry a session: the guest link itself, inside the host agent
//! (`link::guest_link::GuestSession`), and the host agent's API, for the
//! CLI (`hostagent::session_api::SessionClient`). Both hold what the guest
//! sent only within the credit the session granted, and grant more only as
//! the user of the session takes it ([`SessionStream::next`] then
//! [`SessionStream::consumed`]), so whatever the size of a stream, what is
//! held in between is bounded.

pub mod copy_in;
pub mod copy_out;
pub mod pipe;

use std::future::Future;

pub use vmkeep_protocol::session::{
    ExitStatus, FailReason, MAX_CHUNK_BYTES, STDIN_WINDOW, StartFailure, Stream,
};

/// What a session says next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The command runs (the guest's pid).
    Started { pid: i32 },
    /// Output (at most [`MAX_CHUNK_BYTES`]); give it back with
    /// [`SessionStream::consumed`] once it is handled.
    Output { stream: Stream, data: Vec<u8> },
    /// The command may be sent this many more bytes of stdin.
    StdinCredit(u64),
    /// The command no longer reads its input.
    StdinClosed,
    /// The guest refused a frame (its text, escaped and cut).
    Notice(String),
    /// The last update of the session.
    End(End),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The command ended, after all its output.
    Exited(ExitStatus),
    /// The command could not be started (the message is the guest's,
    /// escaped and cut).
    Failed(StartFailure),
    /// The session broke before the command's end was known: the guest link
    /// was lost, the guest broke the protocol, the host agent went away. The
    /// message says which; the command was hung up (or is gone).
    Broken(String),
}

impl End {
    /// The exit code a shell would give: the command's, 128 + N for signal N;
    /// for a command that did not start, 127 (not found) or 126 (not
    /// executable) as shells give, else 1 (as `cd DIR || exit 1` would);
    /// `broken` when the session broke.
    pub fn shell_code(&self, broken: i32) -> i32 {
        match self {
            End::Exited(status) => status.shell_code(),
            End::Failed(failure) => match failure.reason {
                FailReason::NoSuchCommand => 127,
                FailReason::NotExecutable => 126,
                _ => 1,
            },
            End::Broken(_) => broken,
        }
    }
}

/// A session as its user drives it. Methods take `&self`, so that one task
/// may wait for the next update while another sends stdin; `next` is
/// cancel-safe (nothing is lost when its future is dropped).
pub trait SessionStream: Sync {
    /// The next update; after [`Update::End`], `End(Broken)` again.
    fn next(&self) -> impl Future<Output = Update> + Send;
    /// `bytes` of `stream` were handled: the guest may send as much more.
    fn consumed(&self, stream: Stream, bytes: usize) -> impl Future<Output = ()> + Send;
    /// Send stdin (at most [`MAX_CHUNK_BYTES`], within the credit the
    /// updates granted: [`STDIN_WINDOW`] at the start, then each
    /// [`Update::StdinCredit`]); `eof` closes it after `data`.
    fn stdin(
        &self,
        data: Vec<u8>,
        eof: bool,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;
}

/// A session could not be used as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session is over (or its carrier is gone).
    #[error("the session is over: {0}")]
    Over(String),
    /// What was asked breaks the session's rules (a bug of the caller).
    #[error("{0}")]
    Refused(String),
}

/// A guest's text as it may be shown (in a message, a log line): control
/// characters and invalid bytes escaped, cut to `max` bytes.
pub(crate) fn shown(bytes: &[u8], max: usize) -> String {
    vmkeep_protocol::session::truncate_message(vmkeep_protocol::archive::shown(bytes), max)
}

/// What a session's stdin may still take, as its user counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdinCredit(u64);

impl Default for StdinCredit {
    fn default() -> Self {
        StdinCredit(STDIN_WINDOW)
    }
}

impl StdinCredit {
    pub fn available(&self) -> u64 {
        self.0
    }
    pub fn grant(&mut self, bytes: u64) {
        self.0 = self.0.saturating_add(bytes);
    }
    /// How much of `len` bytes may go now (within a chunk too).
    pub fn take(&mut self, len: usize) -> usize {
        let n = len.min(MAX_CHUNK_BYTES).min(self.0 as usize);
        self.0 -= n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_map_to_shell_codes() {
        assert_eq!(End::Exited(ExitStatus::exited(3)).shell_code(255), 3);
        assert_eq!(
            End::Exited(ExitStatus::killed(15, false)).shell_code(255),
            143
        );
        let failed = |reason| {
            End::Failed(StartFailure {
                reason,
                message: "m".into(),
            })
        };
        assert_eq!(failed(FailReason::NoSuchCommand).shell_code(255), 127);
        assert_eq!(failed(FailReason::NotExecutable).shell_code(255), 126);
        assert_eq!(failed(FailReason::BadCwd).shell_code(255), 1);
        assert_eq!(End::Broken("x".into()).shell_code(255), 255);
    }

    #[test]
    fn stdin_credit_is_taken_within_a_chunk_and_the_window() {
        let mut credit = StdinCredit::default();
        assert_eq!(credit.take(10 * MAX_CHUNK_BYTES), MAX_CHUNK_BYTES);
        assert_eq!(credit.available(), STDIN_WINDOW - MAX_CHUNK_BYTES as u64);
        let mut low = StdinCredit(5);
        assert_eq!(low.take(100), 5);
        assert_eq!(low.take(100), 0);
        low.grant(7);
        assert_eq!(low.take(100), 7);
    }
}
