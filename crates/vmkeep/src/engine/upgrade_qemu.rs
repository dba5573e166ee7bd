//! `upgrade --qemu`: move a running VM onto the QEMU installed now (the one
//! a start would launch: `VMKEEP_QEMU`, else PATH) through the suspend
//! path: its state is saved, the old QEMU ends, and the start that follows
//! resumes the state in the new QEMU. The guest is paused only for that
//! and keeps its boot.
//!
//! Refused before anything is touched (the VM runs on) when it cannot be
//! done safely: the VM is not running, the QEMU installed now is older than
//! the one that runs it (a saved state loads only into the same QEMU or a
//! newer one) or its version cannot be told. What the suspend itself
//! refuses (not enough room for the state, a shared directory QEMU cannot
//! carry) leaves the VM running too, and the user's wish that it runs is
//! kept. A resume that fails leaves the state saved: nothing is lost, and
//! `vmkeep start NAME` tries again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::start::{StartOptions, start};
use super::suspend::{SuspendOptions, suspend};
use super::{EngineError, Notice, describe};
use crate::driver::qemu::binary::{self, QemuBinary};
use crate::driver::qemu::qmp::types::QemuVersion;
use crate::instance::desired::{self, Desired};
use crate::instance::journal::{self, Event, Journal, Record};
use crate::instance::{Home, InstanceName, Status, status};

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It runs the QEMU installed now.
    AlreadyCurrent,
    /// Move it.
    Move,
    /// It cannot move safely; why.
    Refuse(String),
}

/// Whether a VM running QEMU `running` should move onto the `installed` one
/// (`None`: the version could not be told); `replaced`: the binary it runs
/// was replaced on disk since it started. Pure.
pub fn decide(
    running: Option<QemuVersion>,
    installed: Option<QemuVersion>,
    replaced: bool,
) -> Verdict {
    let Some(installed) = installed else {
        return Verdict::Refuse(
            "the version of the QEMU installed now cannot be told (its --version failed)".into(),
        );
    };
    let Some(running) = running else {
        return Verdict::Refuse("the version of the QEMU that runs it cannot be told".into());
    };
    if !replaced && running == installed {
        return Verdict::AlreadyCurrent;
    }
    if installed < running {
        return Verdict::Refuse(format!(
            "QEMU {installed}, the one installed now, is older than QEMU {running}, which runs it: \
             a state saved by a QEMU loads only into the same QEMU or a newer one"
        ));
    }
    Verdict::Move
}

/// How an `upgrade --qemu` of one VM ended.
#[derive(Debug, Clone, PartialEq)]
pub enum QemuUpgrade {
    /// It already runs the QEMU installed now.
    AlreadyCurrent { version: QemuVersion },
    /// It runs on the new QEMU now.
    Moved {
        from: QemuVersion,
        to: QemuVersion,
        binary: PathBuf,
        qemu_pid: Option<u32>,
        /// How long the guest was paused, from the journal: from the old
        /// agent's `suspending` (the guest paused) to the new one's
        /// `resumed` (it runs again). `None` when they cannot be read.
        paused: Option<Duration>,
        /// From the suspend's request to the resumed guest answering.
        took: Duration,
    },
}

pub fn upgrade_qemu(
    home: &Home,
    name: &InstanceName,
    notice: &dyn Notice,
) -> Result<QemuUpgrade, EngineError> {
    let dir = home.existing(name)?;
    let (seen, config) =
        super::observe_with_config(&dir).map_err(EngineError::io("inspect", dir.dir()))?;
    let status = status::derive(&seen);
    let (Status::Running, Some(qemu_pid), Some(config)) = (&status, seen.qemu_pid, config) else {
        return Err(EngineError::WrongState {
            name: name.clone(),
            message: format!(
                "{name} is {}: only a running VM moves onto another QEMU",
                describe(&status)
            ),
        });
    };
    let installed = binary::resolve(config.arch).map_err(|source| EngineError::Driver {
        name: name.clone(),
        source,
    })?;
    let version = |binary: &QemuBinary| binary.capabilities().ok().map(|c| c.version());
    // The running binary, even when its name is gone (the kernel keeps it).
    let running = version(&QemuBinary {
        path: PathBuf::from(format!("/proc/{qemu_pid}/exe")),
    });
    let now = version(&installed);
    match decide(running, now, seen.qemu_replaced.is_some()) {
        Verdict::AlreadyCurrent => {
            return Ok(QemuUpgrade::AlreadyCurrent {
                version: running.expect("decided on a known version"),
            });
        }
        Verdict::Refuse(reason) => {
            return Err(EngineError::QemuNotUpgraded {
                name: name.clone(),
                reason,
            });
        }
        Verdict::Move => {}
    }
    let (from, to) = (
        running.expect("decided on a known version"),
        now.expect("decided on a known version"),
    );
    notice.step(&format!(
        "moving from QEMU {from} onto QEMU {to} ({}): suspend, then resume",
        installed.path.display()
    ));
    let began = Instant::now();
    if let Err(e) = suspend(&dir, &SuspendOptions::default(), notice) {
        // It runs on (the error says so): the user still wants it running.
        if !dir.has_saved_state() {
            let _ = desired::write(&dir, Desired::Running);
        }
        return Err(e);
    }
    let journaled = Journal::open(&dir.journal()).and_then(|mut journal| {
        journal.record(Event::QemuUpgrade {
            from: from.to_string(),
            to: to.to_string(),
            binary: installed.path.display().to_string(),
        })
    });
    if let Err(e) = journaled {
        notice.warn(&format!("cannot write the journal: {e}"));
    }
    let options = StartOptions {
        through_service_manager: true,
        ..StartOptions::default()
    };
    let started = start(home, name, &options, notice).map_err(|e| EngineError::QemuNotUpgraded {
        name: name.clone(),
        reason: format!(
            "its state is saved, and resuming it on QEMU {to} failed: {e}; `vmkeep start {name}` tries again"
        ),
    })?;
    let qemu_pid = match started.started {
        super::start::Started::Running { qemu_pid, .. } => qemu_pid,
        _ => None,
    };
    Ok(QemuUpgrade::Moved {
        from,
        to,
        binary: installed.path,
        qemu_pid,
        paused: journal::tail(&dir.journal(), journal::LAST_RUN_BYTES)
            .ok()
            .and_then(|records| guest_paused(&records)),
        took: began.elapsed(),
    })
}

/// How long the guest was paused by the last suspend and the resume that
/// followed it: from the `suspending` record to the `resumed` one after it.
fn guest_paused(records: &[Record]) -> Option<Duration> {
    let resumed = records
        .iter()
        .rposition(|r| matches!(r.event, Event::Resumed { .. }))?;
    let suspending = records[..resumed]
        .iter()
        .rev()
        .find(|r| matches!(r.event, Event::Suspending { .. }))?;
    let at = |record: &Record| humantime::parse_rfc3339(&record.ts).ok();
    at(&records[resumed])?.duration_since(at(suspending)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn v(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    #[test]
    fn the_pause_runs_from_the_suspending_record_to_the_resumed_one() {
        let record = |ts: &str, event: Event| Record {
            ts: ts.into(),
            pid: 1,
            event,
        };
        let suspending = || Event::Suspending {
            deadline_secs: 30.0,
            cause: Default::default(),
        };
        let resumed = || Event::Resumed {
            qemu_pid: 2,
            secs: 0.2,
        };
        let records = [
            record("2026-12-07T07:00:00.000Z", suspending()),
            record("2026-12-07T07:00:09.000Z", resumed()),
            record("2026-12-07T07:10:00.100Z", suspending()),
            record(
                "2026-12-07T07:10:00.500Z",
                Event::StateDiscarded { reason: "x".into() },
            ),
            record("2026-12-07T07:10:00.512Z", resumed()),
        ];
        assert_eq!(guest_paused(&records), Some(Duration::from_millis(412)));
        assert_eq!(guest_paused(&records[..1]), None, "not resumed");
        assert_eq!(guest_paused(&records[1..2]), None, "no suspend before");
    }

    #[test]
    fn a_vm_moves_only_onto_the_same_qemu_or_a_newer_one() {
        let (v72, v10) = (Some(v(7, 2, 19)), Some(v(10, 0, 2)));
        let refused = |verdict: Verdict| matches!(verdict, Verdict::Refuse(_));
        // (running, installed, replaced on disk) -> verdict
        assert_eq!(decide(v72, v72, false), Verdict::AlreadyCurrent);
        assert_eq!(decide(v72, v10, true), Verdict::Move);
        // Another binary chosen (VMKEEP_QEMU), not replaced: still a move.
        assert_eq!(decide(v72, v10, false), Verdict::Move);
        // The same version reinstalled (a rebuild): moved onto the new file.
        assert_eq!(decide(v72, v72, true), Verdict::Move);
        let older = decide(v10, v72, true);
        assert!(
            matches!(&older, Verdict::Refuse(why) if why.contains("older")),
            "{older:?}"
        );
        assert!(refused(decide(v72, None, true)));
        assert!(refused(decide(None, v10, true)));
    }
}
