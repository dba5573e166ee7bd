//! Resuming a saved state: check it against what would be launched (before
//! launching), then load it into a QEMU started with `-incoming defer -S`,
//! retire the state, and let the guest run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::Steps;
use super::record::{self, DeviceState, MachineShape, Mismatch, Present, StateRecord};
use super::{CHOICES, StateError, discard, sha256_hex};
use crate::driver::qemu::args::LaunchSpec;
use crate::driver::qemu::binary::QemuBinary;
use crate::driver::qemu::capabilities::Capabilities;
use crate::driver::qemu::qmp::{MigrationStatus, QemuVersion, QmpError, RunState};
use crate::driver::qemu::{QemuVm, tail};
use crate::instance::InstanceDir;
use crate::os;
use crate::os::process::ExitOutcome;

/// How long one QMP command of the resume may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the load's progress is asked for.
const POLL: Duration = Duration::from_millis(1);

/// A loaded state: the guest runs again, and the state is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    pub record: StateRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Checked before launching: the state is kept.
    #[error(
        "the saved state of {name} (suspended at {saved_at}) cannot be resumed: {}; the state is kept in {}; {CHOICES}",
        mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "),
        dir.display()
    )]
    Incompatible {
        name: String,
        saved_at: String,
        dir: PathBuf,
        mismatches: Vec<Mismatch>,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused the state (it exited, or said the load failed); the
    /// state is kept.
    #[error(
        "QEMU could not load the saved state of {name} ({why}); the state is kept; {CHOICES}. QEMU's log {} ends with:\n{log_tail}",
        log.display()
    )]
    Refused {
        name: String,
        why: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("QMP {step} failed while resuming; the state is kept")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("cannot stream the saved state into QEMU through {}; the state is kept", path.display())]
    Stream {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU did not load the saved state within {after:?}; the state is kept")]
    Timeout { after: Duration },
    /// The state could not be retired before the guest ran: it was not let
    /// run, so the state still matches.
    #[error("cannot retire the saved state before the guest runs again")]
    Retire(#[source] StateError),
    /// The state was loaded and retired, but the guest could not be let
    /// run: the state is gone (the disk is as the save left it).
    #[error("QEMU loaded the saved state but would not let the guest run")]
    NotContinued(#[source] QmpError),
}

/// Check a saved state against the launch `spec` would make with the QEMU
/// at `qemu_binary`, before anything is launched. On success returns the
/// device state to load (read once, its digest checked).
pub fn check_resumable(
    dir: &InstanceDir,
    saved: &StateRecord,
    spec: &LaunchSpec,
    qemu_binary: &Path,
) -> Result<Vec<u8>, ResumeError> {
    let read = |path: PathBuf| {
        move |source| ResumeError::Read {
            path: path.clone(),
            source,
        }
    };
    let id = |path: PathBuf| os::fs::file_id(&path).map_err(read(path));
    let state_path = dir.saved_device_state();
    let device_state = os::fs::read_if_exists(&state_path).map_err(read(state_path))?;
    let present = Present {
        machine: MachineShape::of(spec),
        qemu_version: version_of(saved, qemu_binary),
        ram: id(dir.guest_ram())?,
        disk: id(dir.disk())?,
        device_state: device_state.as_ref().map(|bytes| DeviceState {
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }),
    };
    let mismatches = record::check(saved, &present);
    match device_state {
        Some(bytes) if mismatches.is_empty() => Ok(bytes),
        _ => Err(ResumeError::Incompatible {
            name: dir.name().to_string(),
            saved_at: saved.saved_at.clone(),
            dir: dir.dir().to_path_buf(),
            mismatches,
        }),
    }
}

/// The version of the QEMU at `binary`: the recorded one when it is the
/// very file that saved the state (asking QEMU costs a process start),
/// else what `--version` says.
fn version_of(saved: &StateRecord, binary: &Path) -> Option<QemuVersion> {
    let now = os::fs::file_id(binary).ok().flatten();
    let unchanged = match (&saved.qemu.binary_id, &now) {
        (Some(then), Some(now)) => {
            saved.qemu.binary == binary
                && then.ino == now.ino
                && then.size == now.size
                && then.mtime_ns == now.mtime_ns
        }
        _ => false,
    };
    if unchanged {
        return Some(saved.qemu.version);
    }
    QemuBinary {
        path: binary.to_path_buf(),
    }
    .capabilities()
    .ok()
    .map(|caps| caps.version())
}

/// Load `device_state` into `vm` (launched from the checked spec with
/// `incoming`), retire the state, and let the guest run. On error the
/// state is kept (unless [`ResumeError::Retire`] says otherwise) and the
/// caller ends the QEMU.
pub async fn load_into(
    vm: &QemuVm,
    dir: &InstanceDir,
    saved: &StateRecord,
    device_state: &[u8],
    deadline: Duration,
    log: &Path,
    steps: &mut Steps,
) -> Result<Resumed, ResumeError> {
    let until = Instant::now() + deadline;
    let qmp = &vm.qmp;
    let refused = |why: String| ResumeError::Refused {
        name: dir.name().to_string(),
        why,
        log: log.to_path_buf(),
        log_tail: tail(log, 8),
    };
    let qmp_error = |step| move |source| ResumeError::Qmp { step, source };
    let now = qmp.qemu_version().map(Capabilities::of);
    let Some(now) = now.filter(|now| now.loads_state_of(saved.qemu.version)) else {
        return Err(ResumeError::Incompatible {
            name: dir.name().to_string(),
            saved_at: saved.saved_at.clone(),
            dir: dir.dir().to_path_buf(),
            mismatches: vec![Mismatch::QemuVersion {
                saved: saved.qemu.version,
                now: qmp.qemu_version(),
            }],
        });
    };
    for capability in now.save_capabilities() {
        qmp.set_migration_capability(capability, true, QMP_TIMEOUT)
            .await
            .map_err(qmp_error("migrate-set-capabilities"))?;
    }
    steps.ended("capabilities set");
    let socket = dir.migration_socket();
    let stream_error = |source| ResumeError::Stream {
        path: socket.clone(),
        source,
    };
    os::fs::remove_file_if_exists(&socket).map_err(stream_error)?;
    qmp.migrate_incoming(&format!("unix:{}", socket.display()), QMP_TIMEOUT)
        .await
        .map_err(qmp_error("migrate-incoming"))?;
    steps.ended("incoming");

    let loading = async {
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(stream_error)?;
        stream.write_all(device_state).await.map_err(stream_error)?;
        stream.shutdown().await.map_err(stream_error)?;
        let streamed = Instant::now();
        loop {
            let state = qmp
                .query_status(QMP_TIMEOUT)
                .await
                .map_err(qmp_error("query-status"))?
                .status;
            if state != RunState::InMigrate {
                break Ok::<(RunState, Instant), ResumeError>((state, streamed));
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let (state, streamed) = tokio::select! {
        state = loading => state?,
        outcome = vm.process.exited() => return Err(refused(exit_words(outcome))),
        () = tokio::time::sleep_until(until) => return Err(ResumeError::Timeout { after: deadline }),
    };
    steps.ended_at("device state streamed", streamed);
    steps.ended("loaded");
    let _ = os::fs::remove_file_if_exists(&socket);
    let migration = qmp
        .query_migrate(QMP_TIMEOUT)
        .await
        .map_err(qmp_error("query-migrate"))?;
    if migration.status != MigrationStatus::Completed || state != RunState::Paused {
        return Err(refused(format!(
            "the load ended as {:?} with QEMU {}{}",
            migration.status,
            state.as_qapi(),
            migration
                .error
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    let machine_type = qmp
        .machine_type(QMP_TIMEOUT)
        .await
        .map_err(qmp_error("qom-get /machine type"))?;
    if machine_type != saved.machine_type {
        return Err(ResumeError::Incompatible {
            name: dir.name().to_string(),
            saved_at: saved.saved_at.clone(),
            dir: dir.dir().to_path_buf(),
            mismatches: vec![Mismatch::Machine {
                what: "machine type",
                saved: saved.machine_type.clone(),
                now: machine_type,
            }],
        });
    }
    // From the first guest instruction on, RAM and disk change: the state
    // goes first, so that no crash can leave a stale one behind.
    steps.ended("load checked");
    discard(dir, true).map_err(ResumeError::Retire)?;
    steps.ended("state retired");
    qmp.cont(QMP_TIMEOUT)
        .await
        .map_err(ResumeError::NotContinued)?;
    steps.ended("cont");
    // The saved RAM is no state's any more (the new memfd holds the RAM):
    // the caller removes it with [`remove_saved_ram`] once the guest is
    // ready (freeing its pages takes CPU the guest's first steps need);
    // left behind by a crash, `remove_unclaimed` sweeps it.
    Ok(Resumed {
        record: saved.clone(),
    })
}

/// Remove the saved RAM of a resumed state, in the background.
pub fn remove_saved_ram(dir: &InstanceDir) {
    let saved_ram = dir.guest_ram();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = os::fs::remove_file_if_exists(&saved_ram) {
            tracing::warn!("cannot remove {}: {e}", saved_ram.display());
        }
    });
}

fn exit_words(outcome: ExitOutcome) -> String {
    format!("QEMU exited: {outcome}")
}
