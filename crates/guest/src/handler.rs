//! What to do with one request line: pure decisions, acted on by the agent.

use vmkeep_protocol::host_changes::HostChanges;
use vmkeep_protocol::{
    ClockAdjustment, ExecRequest, Exposure, GuestInfo, HostMessage, MountRequest, Op, Reply,
    ShareLost,
};

use crate::flags::Flags;

/// The agent's response to a request.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer at once.
    Reply(Reply),
    /// Run a command (in its own thread) and answer with its result.
    Exec(ExecRequest),
    /// Answer `PoweroffAccepted`, then power off unless `honoured` is false.
    Poweroff { honoured: bool },
    /// Read the wall clock and answer `Time`.
    ReadClock,
    /// Step the wall clock and answer `ClockAdjusted` (or the error).
    AdjustClock(ClockAdjustment),
    /// Mount a virtio-fs share (in its own thread) and answer `Mounted`.
    Mount(MountRequest),
    /// Remember that a share is gone, and answer `ShareLost`.
    ShareLost(ShareLost),
    /// Answer `Ports` now, then report changes to this connection.
    WatchPorts,
    /// Relay exactly these loopback ports, and answer `Exposed`.
    Expose(Exposure),
    /// Touch what changed on the host side of a share (in its own thread),
    /// and answer `Raised`.
    RaiseHostChanges(HostChanges),
}

/// Decide how to answer `op`. `info` is only called when the answer needs it.
pub fn plan(op: Op, ready: bool, flags: Flags, info: impl FnOnce() -> GuestInfo) -> Action {
    match op {
        Op::Hello => Action::Reply(Reply::Hello {
            ready,
            info: info(),
        }),
        Op::Ping => Action::Reply(Reply::Pong),
        Op::Info => Action::Reply(Reply::Info(info())),
        Op::Exec(request) if request.argv.is_empty() => Action::Reply(Reply::Error {
            message: "exec: argv is empty".into(),
        }),
        Op::Exec(request) => Action::Exec(request),
        Op::Poweroff => Action::Poweroff {
            honoured: !flags.ignore_poweroff_request,
        },
        Op::Time => Action::ReadClock,
        Op::AdjustClock(adjustment) => Action::AdjustClock(adjustment),
        Op::Mount(request) => Action::Mount(request),
        Op::ShareLost(lost) => Action::ShareLost(lost),
        Op::WatchPorts => Action::WatchPorts,
        Op::Expose(exposure) => Action::Expose(exposure),
        Op::HostChanges(changes) => Action::RaiseHostChanges(changes),
    }
}

/// A line that is not a valid message; `id` (a request's) or `session` (a
/// session frame's, with its op) is known when the line had one.
#[derive(Debug, PartialEq)]
pub struct BadRequest {
    pub id: Option<u64>,
    pub session: Option<u64>,
    pub op: Option<String>,
    pub message: String,
}

/// Parse one line from the host: a request or a session frame. For an
/// invalid one that still carries an id, the id is recovered so that the
/// host hears of it. A session frame longer than an `open` may be is
/// refused (only a legacy exec request carries more).
pub fn parse(line: &[u8]) -> Result<HostMessage, BadRequest> {
    match vmkeep_protocol::decode_host_line(line) {
        Ok(HostMessage::Session(frame))
            if line.len() > vmkeep_protocol::session::MAX_OPEN_LINE_BYTES =>
        {
            Err(BadRequest {
                id: None,
                session: Some(frame.session),
                op: None,
                message: format!(
                    "a session frame of {} bytes (at most {})",
                    line.len(),
                    vmkeep_protocol::session::MAX_OPEN_LINE_BYTES
                ),
            })
        }
        Ok(message) => Ok(message),
        Err(bad) => Err(BadRequest {
            id: bad.id,
            session: bad.session,
            message: if bad.session.is_some() {
                format!("invalid session frame: {}", bad.error)
            } else {
                format!("invalid request: {}", bad.error)
            },
            op: bad.op,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> GuestInfo {
        GuestInfo {
            kernel: "6.1".into(),
            agent_version: "0.1.0".into(),
            ..GuestInfo::default()
        }
    }

    #[test]
    fn hello_reports_readiness_and_info() {
        assert_eq!(
            plan(Op::Hello, false, Flags::default(), info),
            Action::Reply(Reply::Hello {
                ready: false,
                info: info()
            })
        );
        assert_eq!(
            plan(Op::Hello, true, Flags::default(), info),
            Action::Reply(Reply::Hello {
                ready: true,
                info: info()
            })
        );
        assert_eq!(
            plan(Op::Info, true, Flags::default(), info),
            Action::Reply(Reply::Info(info()))
        );
    }

    #[test]
    fn ping_does_not_gather_info() {
        let action = plan(Op::Ping, true, Flags::default(), || {
            panic!("info not needed")
        });
        assert_eq!(action, Action::Reply(Reply::Pong));
    }

    #[test]
    fn exec_is_run_unless_argv_is_empty() {
        let request = ExecRequest {
            argv: vec!["true".into()],
            stdin: vec![],
            env: vec![],
            cwd: None,
        };
        assert_eq!(
            plan(Op::Exec(request.clone()), true, Flags::default(), info),
            Action::Exec(request)
        );
        let empty = ExecRequest {
            argv: vec![],
            stdin: vec![],
            env: vec![],
            cwd: None,
        };
        assert!(matches!(
            plan(Op::Exec(empty), true, Flags::default(), info),
            Action::Reply(Reply::Error { .. })
        ));
    }

    #[test]
    fn poweroff_is_accepted_and_honoured_unless_the_flag_says_otherwise() {
        assert_eq!(
            plan(Op::Poweroff, true, Flags::default(), info),
            Action::Poweroff { honoured: true }
        );
        let flags = Flags {
            ignore_poweroff_request: true,
            ..Flags::default()
        };
        assert_eq!(
            plan(Op::Poweroff, true, flags, info),
            Action::Poweroff { honoured: false }
        );
    }

    #[test]
    fn clock_requests_are_acted_on_without_gathering_info() {
        let no_info = || -> GuestInfo { panic!("info not needed") };
        assert_eq!(
            plan(Op::Time, false, Flags::default(), no_info),
            Action::ReadClock
        );
        let step = ClockAdjustment { delta_ns: -42 };
        assert_eq!(
            plan(Op::AdjustClock(step), true, Flags::default(), no_info),
            Action::AdjustClock(step)
        );
    }

    #[test]
    fn shares_and_ports_are_acted_on_without_gathering_info() {
        let no_info = || -> GuestInfo { panic!("info not needed") };
        let mount = MountRequest {
            tag: "fs0".into(),
            mount_point: "/mnt".into(),
            read_only: true,
        };
        assert_eq!(
            plan(Op::Mount(mount.clone()), true, Flags::default(), no_info),
            Action::Mount(mount)
        );
        assert_eq!(
            plan(Op::WatchPorts, false, Flags::default(), no_info),
            Action::WatchPorts
        );
        assert_eq!(
            plan(
                Op::Expose(Exposure::default()),
                true,
                Flags::default(),
                no_info
            ),
            Action::Expose(Exposure::default())
        );
    }

    #[test]
    fn invalid_requests_keep_their_id_when_they_have_one() {
        assert!(matches!(
            parse(b"{\"id\":5,\"op\":\"ping\"}\n"),
            Ok(HostMessage::Request(vmkeep_protocol::Request {
                id: 5,
                op: Op::Ping
            }))
        ));
        let bad = parse(b"{\"id\":9,\"op\":\"dance\"}").unwrap_err();
        assert_eq!((bad.id, bad.session), (Some(9), None));
        assert!(
            bad.message.starts_with("invalid request"),
            "{}",
            bad.message
        );
        assert_eq!(parse(b"not json").unwrap_err().id, None);
    }

    #[test]
    fn session_frames_are_told_from_requests_and_keep_their_session_when_bad() {
        assert!(matches!(
            parse(b"{\"session\":3,\"op\":\"close\"}"),
            Ok(HostMessage::Session(
                vmkeep_protocol::session::SessionRequest {
                    session: 3,
                    op: vmkeep_protocol::session::SessionOp::Close
                }
            ))
        ));
        let bad = parse(b"{\"session\":4,\"op\":{\"stdin\":{\"data\":\"%%%\"}}}").unwrap_err();
        assert_eq!(
            (bad.id, bad.session, bad.op.as_deref()),
            (None, Some(4), Some("stdin"))
        );
        assert!(
            bad.message.starts_with("invalid session frame"),
            "{}",
            bad.message
        );
        let mut huge = b"{\"session\":5,\"op\":{\"stdin\":{\"data\":\"".to_vec();
        huge.extend(std::iter::repeat_n(
            b'A',
            vmkeep_protocol::session::MAX_OPEN_LINE_BYTES,
        ));
        huge.extend_from_slice(b"\"}}}");
        let bad = parse(&huge).unwrap_err();
        assert_eq!(bad.session, Some(5));
        assert!(bad.message.contains("bytes (at most"), "{}", bad.message);
    }
}
