//! The QEMU driver: launch (command line, accelerator), adopt a running QEMU
//! left by a dead host agent, and control it over QMP.

pub mod accel;
pub mod args;
pub mod binary;
pub mod capabilities;
pub mod disk_image;
pub mod pause;
pub mod qmp;
pub mod snapshot;
pub mod usernet;
pub mod virtiofs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use self::args::LaunchSpec;
use self::binary::QemuBinary;
use self::qmp::{Qmp, QmpEvents};
use super::{DriverError, Vm};
use crate::instance::InstanceDir;
use crate::os::cgroup::{self, Placement, Scope};
use crate::os::process::{self, ExitOutcome, ProcessHandle, Program};

/// How long QMP commands of the stop ladder may take.
const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a launched QEMU may take to open its QMP socket.
const QMP_APPEAR_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a launched QEMU's QMP socket is tried until it answers: a
/// resume waits for it (at 5 ms, 2.5 ms of a ~120 ms resume on average).
const QMP_APPEAR_POLL: Duration = Duration::from_millis(1);
/// How long an existing QEMU may take to answer QMP before it counts as hung.
const QMP_ADOPT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "{binary} was not found in PATH; install it (Debian/Ubuntu: sudo apt-get install {package}; macOS: brew install qemu), or point VMKEEP_QEMU at one"
    )]
    Missing {
        binary: String,
        package: &'static str,
    },
    /// The guest's architecture boots through a firmware that is not installed.
    #[error(
        "an {arch} guest boots through UEFI firmware, and none is installed (looked for {}); install it \
         (Debian/Ubuntu: sudo apt-get install {package}; Fedora: edk2-aarch64; macOS: Homebrew's qemu ships it)",
        candidates.join(", ")
    )]
    FirmwareMissing {
        arch: crate::guest_arch::GuestArch,
        candidates: &'static [&'static str],
        package: &'static str,
    },
    /// `VMKEEP_QEMU` names no usable QEMU.
    #[error("VMKEEP_QEMU={}: {problem}; set it to the path of a qemu-system binary, or unset it to use the one in PATH", path.display())]
    Override { path: PathBuf, problem: String },
    #[error("cannot tell the version of {}: {problem}", binary.display())]
    Version { binary: PathBuf, problem: String },
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("QEMU exited right after launch ({outcome}); its log {log} says:\n{log_tail}")]
    ExitedAtLaunch {
        outcome: ExitOutcome,
        log: PathBuf,
        log_tail: String,
    },
    #[error("cannot open QEMU's log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    /// systemd-run could not give QEMU its own scope; QEMU never ran.
    #[error("systemd could not give QEMU a cgroup of its own: {message}")]
    NoScope { message: String },
    #[error("QEMU did not open its QMP socket within {QMP_APPEAR_TIMEOUT:?}: {error}")]
    NoQmp { error: String },
    #[error(
        "{path} is locked by pid {pid}, which is not this instance's QEMU (its command line does not name {qmp}); \
         find out what it is before removing the file"
    )]
    ForeignLockHolder {
        path: PathBuf,
        pid: u32,
        qmp: PathBuf,
    },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A QEMU that vmkeep launched or adopted.
pub struct QemuVm {
    process: ProcessHandle,
    qmp: Qmp,
    qmp_ok: AtomicBool,
}

/// A QEMU that holds its pid-file lock but does not answer QMP.
pub struct Unresponsive {
    pub process: ProcessHandle,
    pub error: String,
}

impl QemuVm {
    pub fn is_child(&self) -> bool {
        self.process.is_child()
    }

    /// Its QMP connection (shared; for port forwards and the like).
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// QEMU's run state (`query-status`): running, or why not.
    pub async fn run_state(&self) -> Result<qmp::RunState, DriverError> {
        self.note(self.qmp.query_status(QMP_COMMAND_TIMEOUT).await)
            .map(|info| info.status)
    }

    /// Let a guest that QEMU paused run on (`cont`): one paused by a disk
    /// error retries the request that failed.
    pub async fn continue_running(&self) -> Result<(), DriverError> {
        self.note(self.qmp.cont(QMP_COMMAND_TIMEOUT).await)
    }

    fn note<T>(&self, result: Result<T, qmp::QmpError>) -> Result<T, DriverError> {
        if let Err(qmp::QmpError::Closed { .. } | qmp::QmpError::Timeout { .. }) = &result {
            self.qmp_ok.store(false, Ordering::Relaxed);
        }
        result.map_err(DriverError::from)
    }
}

impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn hypervisor_reachable(&self) -> bool {
        self.qmp_ok.load(Ordering::Relaxed)
    }

    async fn request_stop(&self) -> Result<(), DriverError> {
        self.note(self.qmp.system_powerdown(QMP_COMMAND_TIMEOUT).await)
    }

    async fn hard_stop(&self) -> Result<(), DriverError> {
        self.note(self.qmp.quit(QMP_COMMAND_TIMEOUT).await)
    }

    fn kill(&self) -> std::io::Result<()> {
        self.process.kill()
    }

    async fn exited(&self) -> ExitOutcome {
        self.process.exited().await
    }
}

/// Find a program in PATH.
pub fn find_in_path(binary: &str) -> Option<PathBuf> {
    self::binary::find_in(std::env::var_os("PATH").as_deref(), binary)
}

/// Launch QEMU as our child in its own process group and connect QMP.
/// QEMU's own output is appended to `log_path`. With a `scope`, QEMU runs in
/// a cgroup of its own (see [`crate::os::cgroup`]), so that it outlives the
/// unit of the host agent.
pub async fn launch(
    binary: &QemuBinary,
    spec: &LaunchSpec,
    log_path: &Path,
    scope: Option<(&Placement, &Scope)>,
) -> Result<(QemuVm, QmpEvents), QemuError> {
    let path = &binary.path;
    let firmware = spec.arch.firmware();
    if let crate::guest_arch::Firmware::Uefi {
        candidates,
        package,
    } = firmware
        && !firmware.is_installed()
    {
        return Err(QemuError::FirmwareMissing {
            arch: spec.arch,
            candidates,
            package,
        });
    }
    let log = crate::os::fs::open_append(log_path).map_err(|source| QemuError::Log {
        path: log_path.into(),
        source,
    })?;
    let log_start = crate::os::fs::len_of(log_path);
    let mut program = Program::new(path, &args::build(spec));
    if let Some((placement, scope)) = scope {
        program = cgroup::wrap(placement, scope, &program);
    }
    // The guest's RAM descriptor goes to QEMU under its number (the spec
    // names it `/proc/self/fd/N`); nothing else of ours does.
    let holding = crate::os::confine::Holding {
        inherit_fd: spec.ram_fd,
        ..Default::default()
    };
    let process =
        crate::os::confine::spawn_in_own_group(&program, log, &holding).map_err(|source| {
            QemuError::Spawn {
                binary: program.path.to_string_lossy().into_owned(),
                source,
            }
        })?;
    let started = Instant::now();
    loop {
        if process.has_exited() {
            let outcome = process.reap();
            let log_tail = tail(log_path, 12);
            if scope.is_some()
                && let Some(message) =
                    cgroup::scope_failure(&crate::os::fs::appended_since(log_path, log_start, 4096))
            {
                return Err(QemuError::NoScope { message });
            }
            return Err(QemuError::ExitedAtLaunch {
                outcome,
                log: log_path.into(),
                log_tail,
            });
        }
        match Qmp::connect(&spec.qmp_socket, QMP_COMMAND_TIMEOUT).await {
            Ok((qmp, events)) => {
                return Ok((
                    QemuVm {
                        process,
                        qmp,
                        qmp_ok: AtomicBool::new(true),
                    },
                    events,
                ));
            }
            Err(error) if started.elapsed() > QMP_APPEAR_TIMEOUT => {
                let _ = process.kill();
                return Err(QemuError::NoQmp {
                    error: error.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(QMP_APPEAR_POLL).await,
        }
    }
}

/// This instance's QEMU, if one runs: the holder of its pid-file lock whose
/// command line names this instance's QMP socket. A holder that is not this
/// instance's is an error (it is never touched); one that exits while it is
/// looked at is none.
pub fn find_running(dir: &InstanceDir) -> Result<Option<ProcessHandle>, QemuError> {
    let pid_file = dir.qemu_pid();
    let process = process::open_lock_holder(&pid_file).map_err(|source| QemuError::Inspect {
        path: pid_file.clone(),
        source,
    })?;
    let Some(process) = process else {
        return Ok(None);
    };
    let qmp_path = dir.qmp_socket();
    let Some(command_line) = process::command_line_of_live(&process) else {
        // It was exiting (its memory, command line included, goes before its
        // files and locks): nothing runs once it is gone.
        return Ok(None);
    };
    let names_our_socket = command_line
        .iter()
        .any(|arg| arg.contains(&*qmp_path.to_string_lossy()));
    if !names_our_socket {
        return Err(QemuError::ForeignLockHolder {
            path: pid_file,
            pid: process.pid(),
            qmp: qmp_path,
        });
    }
    Ok(Some(process))
}

/// Find this instance's QEMU if one runs without a host agent ([`find_running`])
/// and connect QMP. `Ok(Err(..))` is a QEMU of ours that does not answer QMP.
pub async fn adopt(
    dir: &InstanceDir,
) -> Result<Option<Result<(QemuVm, QmpEvents), Unresponsive>>, QemuError> {
    let Some(process) = find_running(dir)? else {
        return Ok(None);
    };
    Ok(Some(
        match Qmp::connect(&dir.qmp_socket(), QMP_ADOPT_TIMEOUT).await {
            Ok((qmp, events)) => Ok((
                QemuVm {
                    process,
                    qmp,
                    qmp_ok: AtomicBool::new(true),
                },
                events,
            )),
            Err(error) => Err(Unresponsive {
                process,
                error: error.to_string(),
            }),
        },
    ))
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
