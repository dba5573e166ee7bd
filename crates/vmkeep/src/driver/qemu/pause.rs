//! What QEMU's run state says of a pause: the facts QMP gives (its run
//! state, the last disk error it reported) and the host's free space turn
//! into the model's [`PauseReason`], or into none for a state the agent
//! brought about itself. Pure; the host agent observes and acts.

use super::qmp::{BlockIoError, IoOperation, RunState};
use crate::instance::pause::PauseReason;

/// What is known when QEMU says the guest stopped: its run state, the last
/// disk error it reported, and the free space of the filesystem holding the
/// disk (`mount point`, bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct PauseFacts<'a> {
    pub run_state: RunState,
    pub last_io_error: Option<&'a BlockIoError>,
    pub free: Option<(String, u64)>,
}

/// Why the guest is paused, or `None` when it is not paused by itself:
/// it runs, or it is in a state the agent itself brought about (a save, a
/// load, a shutdown).
pub fn reason(facts: &PauseFacts<'_>) -> Option<PauseReason> {
    let reason = match facts.run_state {
        RunState::Running
        | RunState::InMigrate
        | RunState::PostMigrate
        | RunState::FinishMigrate
        | RunState::Prelaunch
        | RunState::RestoreVm
        | RunState::SaveVm
        | RunState::Shutdown
        | RunState::Colo => return None,
        RunState::IoError => match facts.last_io_error {
            Some(error) if error.nospace => {
                let (mount_point, available_bytes) =
                    facts.free.clone().unwrap_or_else(|| ("the host".into(), 0));
                PauseReason::HostDiskFull {
                    mount_point,
                    available_bytes,
                }
            }
            Some(error) => PauseReason::IoError {
                device: match error.device.as_str() {
                    "" => error.node_name.clone().unwrap_or_else(|| "a disk".into()),
                    device => device.to_string(),
                },
                operation: match error.operation {
                    IoOperation::Read => "read".into(),
                    IoOperation::Write => "write".into(),
                    IoOperation::Other(ref other) => other.clone(),
                },
                error: error.reason.clone(),
            },
            None => PauseReason::IoError {
                device: "a disk".into(),
                operation: "request".into(),
                error: "QEMU did not say which".into(),
            },
        },
        RunState::GuestPanicked => PauseReason::GuestPanicked,
        RunState::Watchdog => PauseReason::Watchdog,
        RunState::InternalError => PauseReason::InternalError,
        RunState::Paused | RunState::Debug | RunState::Suspended => PauseReason::Other {
            run_state: facts.run_state.to_string(),
        },
        RunState::Other(ref other) => PauseReason::Other {
            run_state: other.clone(),
        },
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::qemu::qmp::BlockErrorAction;
    use crate::instance::pause::MIN_FREE_TO_CONTINUE;

    fn io_error(nospace: bool) -> BlockIoError {
        BlockIoError {
            device: "data".into(),
            node_name: None,
            operation: IoOperation::Write,
            action: BlockErrorAction::Stop,
            nospace,
            reason: "No space left on device".into(),
        }
    }

    fn facts(run_state: RunState, error: Option<&BlockIoError>) -> PauseFacts<'_> {
        PauseFacts {
            run_state,
            last_io_error: error,
            free: Some(("/home".into(), 4096)),
        }
    }

    #[test]
    fn a_full_host_disk_is_named_with_its_filesystem_and_continues_only_with_room() {
        let error = io_error(true);
        let reason = reason(&facts(RunState::IoError, Some(&error))).unwrap();
        assert_eq!(
            reason,
            PauseReason::HostDiskFull {
                mount_point: "/home".into(),
                available_bytes: 4096,
            }
        );
        assert_eq!(reason.code(), "host-disk-full");
        assert!(
            reason
                .message()
                .starts_with("host disk full on /home (4 KiB free)"),
            "{}",
            reason.message()
        );
        assert!(reason.hint().contains("free at least 32.0 MiB on /home"));
        assert!(!reason.continues_with_room(MIN_FREE_TO_CONTINUE - 1));
        assert!(reason.continues_with_room(MIN_FREE_TO_CONTINUE));
    }

    #[test]
    fn other_pauses_are_named_and_wait_for_a_human() {
        let error = io_error(false);
        let cases = [
            (
                RunState::IoError,
                Some(&error),
                "io-error",
                "a disk write on data failed",
            ),
            (
                RunState::IoError,
                None,
                "io-error",
                "QEMU did not say which",
            ),
            (
                RunState::GuestPanicked,
                None,
                "guest-panicked",
                "the guest panicked",
            ),
            (RunState::Watchdog, None, "watchdog", "watchdog fired"),
            (
                RunState::InternalError,
                None,
                "internal-error",
                "internal error",
            ),
            (RunState::Paused, None, "paused", "QEMU paused it (paused)"),
            (
                RunState::Other("from-the-future".into()),
                None,
                "paused",
                "(from-the-future)",
            ),
        ];
        for (run_state, error, code, says) in cases {
            let reason = reason(&facts(run_state.clone(), error)).unwrap();
            assert_eq!(reason.code(), code, "{run_state:?}");
            assert!(reason.message().contains(says), "{}", reason.message());
            assert!(!reason.continues_with_room(u64::MAX), "{run_state:?}");
        }
    }

    #[test]
    fn states_the_agent_brings_about_itself_are_no_pause() {
        for run_state in [
            RunState::Running,
            RunState::FinishMigrate,
            RunState::PostMigrate,
            RunState::InMigrate,
            RunState::Prelaunch,
            RunState::Shutdown,
        ] {
            assert_eq!(
                reason(&facts(run_state.clone(), None)),
                None,
                "{run_state:?}"
            );
        }
    }
}
