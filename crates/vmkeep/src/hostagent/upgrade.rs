//! Moving a running host agent onto a new build in place (`vmkeep upgrade`,
//! `POST /v1/upgrade`).
//!
//! The old build checks the new binary (a file, executable, and its
//! `--check-formats` reads every format this build writes), answers the
//! request, stops serving its API, keeps its instance lock's descriptor
//! open across the exec (a POSIX lock belongs to the process, which an exec
//! keeps: there is no moment another agent could take it), and re-executes
//! itself as the new binary with [`FLAG`] and a [`Handover`]. Same pid, so
//! a service manager's main pid is kept; QEMU, its child, runs on untouched
//! (its QMP socket sees a client leave and a new one come). The new build
//! takes the lock from the descriptor, adopts QEMU and the virtiofsds as
//! after an agent's death (`adopt.rs`), reconnects the guest agent, starts
//! its keepers (clock, forwards, mounts) and journals `upgraded` with the
//! step times in place of `running`.
//!
//! What does not survive: the API's connections (sessions in flight break;
//! the socket is re-bound by the new build) and the agent's own socket
//! forwards' connections (re-bound at once). QEMU's port forwards are
//! QEMU's and keep listening.
//!
//! A failure before the exec leaves the old build running as it was (the
//! request is refused with why); an exec that fails is journaled
//! (`upgrade-failed`) and the old build serves its API again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::api::{BuildInfo, ErrorCode, Refusal, UpgradeAccepted};
use super::{Agent, binary, now_rfc3339};
use crate::formats::Spoken;
use crate::instance::journal::{Event, UpgradeSteps};
use crate::os;

/// The new build's command-line flag, followed by the [`Handover`] as JSON.
pub const FLAG: &str = "--upgraded";

/// `vmkeep-hostagent --check-formats`: print the build's [`Spoken`] formats.
pub const CHECK_FLAG: &str = "--check-formats";

/// How long the new binary's `--check-formats` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the old build hands the new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// The descriptor of the instance lock, kept open across the exec.
    pub lock_fd: i32,
    pub from: BuildInfo,
    pub to: BuildInfo,
    /// How long the old build's check of the new binary took.
    pub checked_secs: f64,
    /// When the exec was about to be made (Unix time, seconds).
    pub exec_at_unix: f64,
}

/// What the new build knows of its upgrade while it takes over.
#[derive(Debug, Clone)]
pub(super) struct TakingOver {
    pub handover: Handover,
    /// When this build started.
    pub started: SystemTime,
    /// When it had adopted QEMU.
    pub adopted: Option<SystemTime>,
}

impl TakingOver {
    pub fn new(handover: Handover) -> TakingOver {
        TakingOver {
            handover,
            started: SystemTime::now(),
            adopted: None,
        }
    }

    /// The journal's record of the finished upgrade.
    pub fn upgraded(&self, qemu_pid: u32, guest_boot_id: Option<String>) -> Event {
        let secs = |from: SystemTime, to: SystemTime| {
            to.duration_since(from)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let now = SystemTime::now();
        let adopted = self.adopted.unwrap_or(now);
        let exec_at = SystemTime::UNIX_EPOCH
            + Duration::try_from_secs_f64(self.handover.exec_at_unix).unwrap_or_default();
        Event::Upgraded {
            from: self.handover.from.to_string(),
            to: BuildInfo::this_build().to_string(),
            qemu_pid,
            guest_boot_id,
            steps: UpgradeSteps {
                checked_secs: self.handover.checked_secs,
                exec_secs: secs(exec_at, self.started),
                adopted_secs: secs(self.started, adopted),
                ready_secs: secs(adopted, now),
            },
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Check that `binary` is a host agent this build can move onto: an
/// executable file whose `--check-formats` reads every format this build
/// writes. Returns its build and how long the check took.
pub async fn check_binary(binary: &Path) -> Result<(BuildInfo, Duration), String> {
    use std::os::unix::fs::PermissionsExt;
    let began = tokio::time::Instant::now();
    if !binary.is_absolute() {
        return Err(format!("{} is not an absolute path", binary.display()));
    }
    let meta = std::fs::metadata(binary)
        .map_err(|e| format!("the new host agent binary {}: {e}", binary.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", binary.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", binary.display()));
    }
    let program = binary.to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        os::tool::Tool::new(&program, "install vmkeep's binaries side by side")
            .arg(CHECK_FLAG)
            .output()
    });
    let output = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Err(_) => {
            return Err(format!(
                "`{} {CHECK_FLAG}` did not answer within {} s",
                binary.display(),
                CHECK_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("checking {}: {e}", binary.display())),
        Ok(Ok(Err(e))) => return Err(format!("the new binary fails its self-check: {e}")),
        Ok(Ok(Ok(output))) => output,
    };
    let spoken: Spoken = serde_json::from_slice(&output).map_err(|e| {
        format!(
            "the new binary fails its self-check: `{} {CHECK_FLAG}` printed no format list ({e})",
            binary.display()
        )
    })?;
    spoken.reads_ours().map_err(|why| {
        format!(
            "the new binary {} ({} {}) cannot take this agent over: {why}",
            binary.display(),
            spoken.version,
            spoken.commit
        )
    })?;
    Ok((
        BuildInfo {
            version: spoken.version,
            commit: spoken.commit,
        },
        began.elapsed(),
    ))
}

/// What `POST /v1/upgrade` hands the agent's main loop once the new binary
/// passed its check.
#[derive(Debug)]
pub struct Asked {
    pub binary: PathBuf,
    pub to: BuildInfo,
    pub checked: Duration,
    pub answer: oneshot::Sender<Result<UpgradeAccepted, Refusal>>,
}

impl Agent<'_, '_> {
    /// Move onto `asked.binary` by exec. Returns only if the exec failed
    /// (journaled; the API is served again and the VM runs on).
    pub(super) async fn move_onto(&mut self, asked: Asked) {
        let Asked {
            binary,
            to,
            checked,
            answer,
        } = asked;
        let accepted = UpgradeAccepted {
            from: BuildInfo::this_build(),
            to: to.clone(),
            accepted_at: now_rfc3339(),
        };
        if answer.send(Ok(accepted)).is_err() {
            tracing::warn!("the upgrade's requester left before its answer");
        }
        // Let the answer out, then no more requests: the new build serves.
        self.stop_serving().await;
        let error = match os::lock::keep_across_exec(self.lock_fd, true) {
            Ok(()) => {
                let handover = Handover {
                    lock_fd: self.lock_fd,
                    from: BuildInfo::this_build(),
                    to: to.clone(),
                    checked_secs: checked.as_secs_f64(),
                    exec_at_unix: unix_now(),
                };
                let mut args = binary::args(self.dir.name(), self.foreground);
                args.push(FLAG.into());
                args.push(serde_json::to_string(&handover).unwrap_or_default());
                tracing::info!("upgrading in place: {} -> {to}", handover.from);
                let error = os::process::exec_replace(&binary, &args);
                let _ = os::lock::keep_across_exec(self.lock_fd, false);
                error
            }
            Err(e) => e,
        };
        let error = format!("cannot execute {}: {error}", binary.display());
        tracing::warn!("upgrade failed, running on: {error}");
        self.record(Event::UpgradeFailed {
            to: to.to_string(),
            error,
        });
        if let Err(e) = self.serve_api() {
            tracing::error!("cannot serve the API again after a failed upgrade: {e}");
        }
    }
}

/// Why an agent in `state` will not move now.
pub(super) fn refusal_while(what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::WrongState,
        format!("the VM is {what}; upgrade it once it runs"),
    )
}
