//! Saving a running VM: pause, stream the device state into the instance
//! directory while the guest's RAM (a memfd) is copied by its data extents
//! into a sparse `guest-ram` beside it, make everything durable, commit the
//! record, end QEMU. Any failure before the commit lets the guest run on
//! and leaves no state.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use super::record::{self, DeviceState, MachineShape, QemuBuild, RamOfQemu, StateRecord};
use crate::driver::qemu::QemuVm;
use crate::driver::qemu::capabilities::Capabilities;
use crate::driver::qemu::qmp::{MigrationStatus, QemuVersion, QmpError};
use crate::instance::InstanceDir;
use crate::instance::config::ByteSize;
use crate::os;
use crate::os::process::{self, ExitOutcome};

/// How long one QMP command of the save may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the migration's state is asked for.
const POLL: Duration = Duration::from_millis(2);
/// How long QEMU gets to exit after `quit` before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// How a save is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// The whole save, from the pause to a durable state, must end within
    /// this; past it the save is abandoned and the guest runs on.
    pub deadline: Duration,
    /// Free space the device state may take. Checked before the guest is
    /// paused, beyond what the RAM's copy takes (the memfd's allocated
    /// bytes: the pages the guest touched).
    pub reserve_bytes: u64,
    /// Whether free space is checked before the pause at all (only a test
    /// of a disk that fills during the save turns it off).
    pub check_space: bool,
}

impl SaveOptions {
    /// What the device state of a VM with its RAM out of the stream takes,
    /// with a wide margin: the tiny guest writes ~400 KiB (device registers and the
    /// firmware's ROMs, which are not shared RAM).
    pub const DEFAULT_RESERVE: u64 = 32 << 20;

    pub fn new(deadline: Duration) -> SaveOptions {
        SaveOptions {
            deadline,
            reserve_bytes: SaveOptions::DEFAULT_RESERVE,
            check_space: true,
        }
    }
}

/// A completed save.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub record: StateRecord,
    /// Bytes of device state written.
    pub state_bytes: u64,
    /// Size of the RAM file kept.
    pub ram_bytes: u64,
    /// Bytes of RAM written to it (the data the guest had touched; 0 for a
    /// QEMU whose RAM already was in the file).
    pub ram_written: u64,
    /// From the pause to the committed state.
    pub elapsed: Duration,
    /// How QEMU ended after the commit.
    pub qemu_exit: ExitOutcome,
}

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveFailure {
    #[error(
        "saving the state needs {needed} free on {} (where {} is), and only {available} is free; \
         free some space there and suspend again",
        mount_point.display(), dir.display(),
        needed = ByteSize(*needed).approx(), available = ByteSize(*available).approx()
    )]
    NotEnoughSpace {
        mount_point: PathBuf,
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error(
        "this QEMU keeps the guest's RAM where no save can reach it (neither a memfd it inherited \
         nor {}: it was started by another vmkeep or by hand), so its state cannot be saved; stop \
         and start the instance once, then suspend it",
        ram_file.display()
    )]
    RamNotInFile { ram_file: PathBuf },
    #[error("cannot reach the guest's RAM")]
    RamUnreachable(#[source] os::memfd::OpenError),
    #[error(
        "this VM shares {count} host director{} (mounts:), and its QEMU {qemu} cannot save a virtio-fs device (QEMU 8.2 and later can), so it cannot be suspended; stop it instead (`vmkeep stop`), or run it on QEMU 8.2 or later (install one, or point VMKEEP_QEMU at one, and restart the VM), or remove mounts from its config and restart it",
        if *count == 1 { "y" } else { "ies" }
    )]
    SharedDirectories { count: u32, qemu: QemuVersion },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {step} failed")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("QEMU did not say its version in its QMP greeting")]
    NoVersion,
    #[error("QEMU gave up the migration: {}", error.as_deref().unwrap_or("no reason given"))]
    MigrationFailed { error: Option<String> },
    #[error("the save did not finish within {after:?} ({written} bytes written)")]
    Timeout { after: Duration, written: u64 },
    #[error("QEMU exited during the save ({outcome})")]
    QemuExited { outcome: ExitOutcome },
}

/// Where a failed save left the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateAfterFailure {
    /// The guest runs on as before (it was paused for a moment, or never).
    Running,
    /// QEMU is gone.
    Gone { outcome: ExitOutcome },
    /// QEMU lives but would not let the guest run again.
    Paused { error: String },
}

impl std::fmt::Display for StateAfterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateAfterFailure::Running => f.write_str("the VM runs on; nothing was saved"),
            StateAfterFailure::Gone { outcome } => {
                write!(f, "QEMU is gone ({outcome}); nothing was saved")
            }
            StateAfterFailure::Paused { error } => write!(
                f,
                "QEMU stays paused (continuing it failed: {error}); nothing was saved"
            ),
        }
    }
}

/// A failed save: why (with its causes, in `failure`), and where it left
/// the VM. Displayed as one sentence with the causes inline (`no space
/// left...`) and the VM's state last.
#[derive(Debug)]
pub struct SaveError {
    pub failure: SaveFailure,
    pub after: StateAfterFailure,
}

impl std::fmt::Display for SaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.failure)?;
        let mut cause = std::error::Error::source(&self.failure);
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        write!(f, "; {}", self.after)
    }
}

impl std::error::Error for SaveError {}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SaveFailure {
    let path = path.to_path_buf();
    move |source| SaveFailure::Io {
        action,
        path,
        source,
    }
}

fn qmp_error(step: &'static str) -> impl FnOnce(QmpError) -> SaveFailure {
    move |source| SaveFailure::Qmp { step, source }
}

/// Save the running VM's state into `dir` and end QEMU. On success the
/// state is committed (see the module docs) and QEMU is gone; on failure no
/// state exists and, if QEMU still lives, the guest runs on.
pub async fn save(
    vm: &QemuVm,
    dir: &InstanceDir,
    options: &SaveOptions,
) -> Result<Saved, SaveError> {
    let started = Instant::now();
    let running = |failure| SaveError {
        failure,
        after: StateAfterFailure::Running,
    };
    let Some(args) = process::command_line_of_live(&vm.process) else {
        let outcome = vm.process.exited().await;
        return Err(SaveError {
            failure: SaveFailure::QemuExited { outcome },
            after: StateAfterFailure::Gone { outcome },
        });
    };
    let version = vm
        .qmp
        .qemu_version()
        .ok_or_else(|| running(SaveFailure::NoVersion))?;
    let capabilities = Capabilities::of(version);
    let shared_dirs = MachineShape::of_args(&args).shared_dirs;
    if shared_dirs > 0 && !capabilities.virtio_fs_migrates() {
        return Err(running(SaveFailure::SharedDirectories {
            count: shared_dirs,
            qemu: version,
        }));
    }
    let ram_file = dir.guest_ram();
    let ram = match record::ram_of_args(&args, &ram_file) {
        Some(RamOfQemu::Memfd(fd)) => RamToSave::Memfd(
            os::memfd::open_of_process(crate::driver::Vm::pid(vm), fd)
                .map_err(|e| running(SaveFailure::RamUnreachable(e)))?,
        ),
        Some(RamOfQemu::File) => RamToSave::File,
        None => return Err(running(SaveFailure::RamNotInFile { ram_file })),
    };
    if options.check_space {
        check_space(dir, &ram, options.reserve_bytes).map_err(running)?;
    }
    let machine_type = vm
        .qmp
        .machine_type(QMP_TIMEOUT)
        .await
        .map_err(|e| running(qmp_error("qom-get /machine type")(e)))?;
    let binary = PathBuf::from(args.first().cloned().unwrap_or_default());
    let prepared = Prepared {
        qemu: QemuBuild {
            binary_id: os::fs::file_id(&binary).ok().flatten(),
            binary,
            version,
        },
        machine_type,
        machine: MachineShape::of_args(&args),
        kernel_cmdline: record::kernel_cmdline_of_args(&args),
        deadline: started + options.deadline,
        options: *options,
        capabilities,
    };
    let socket = dir.migration_socket();
    let listener = os::socket::bind_private(&socket)
        .map_err(|e| running(io_error("listen on", &socket)(e)))?;
    let mut attempt = Attempt {
        vm,
        dir,
        temp: os::fs::temp_sibling(&dir.saved_device_state()),
        ram_temp: os::fs::temp_sibling(&dir.guest_ram()),
        ram: Some(ram),
        ram_placed: false,
        cancel: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        ram_copy: None,
        paused: false,
        migrating: false,
        placed: false,
    };
    let outcome = attempt.run(&prepared, listener).await;
    let _ = os::fs::remove_file_if_exists(&socket);
    let (record, state_bytes, ram_written) = match outcome {
        Ok(done) => done,
        Err(failure) => return Err(attempt.recover(failure).await),
    };
    let elapsed = started.elapsed();
    // Committed: the guest must never run again in this QEMU.
    let qemu_exit = end_qemu(vm).await;
    Ok(Saved {
        ram_bytes: record.ram.size,
        ram_written,
        record,
        state_bytes,
        elapsed,
        qemu_exit,
    })
}

/// Where the RAM to save is.
enum RamToSave {
    /// The guest's memfd (opened through QEMU's descriptor): copied out.
    Memfd(std::fs::File),
    /// Already in `guest-ram` (a QEMU of an older vmkeep): synced only.
    File,
}

/// Refuse before pausing anything when the state might not fit: the
/// device state's reserve and what the RAM's copy takes.
fn check_space(dir: &InstanceDir, ram: &RamToSave, reserve: u64) -> Result<(), SaveFailure> {
    let ram_file = dir.guest_ram();
    let ram_needs = match ram {
        RamToSave::Memfd(memfd) => {
            os::memfd::allocated_bytes(memfd).map_err(io_error("inspect", &ram_file))?
        }
        RamToSave::File => {
            os::fs::unallocated_bytes(&ram_file).map_err(io_error("inspect", &ram_file))?
        }
    };
    let space = os::fs::free_space(dir.dir()).map_err(io_error("inspect", dir.dir()))?;
    let needed = reserve.saturating_add(ram_needs);
    if space.available_bytes < needed {
        return Err(SaveFailure::NotEnoughSpace {
            mount_point: space.mount_point,
            dir: dir.dir().to_path_buf(),
            needed,
            available: space.available_bytes,
        });
    }
    Ok(())
}

/// What the record takes from the QEMU before it is paused.
struct Prepared {
    qemu: QemuBuild,
    machine_type: String,
    machine: MachineShape,
    kernel_cmdline: Option<String>,
    deadline: Instant,
    options: SaveOptions,
    capabilities: Capabilities,
}

/// One save in progress, and what it must undo if it fails.
struct Attempt<'a> {
    vm: &'a QemuVm,
    dir: &'a InstanceDir,
    /// The device state while it is written.
    temp: PathBuf,
    /// The RAM's copy while it is written.
    ram_temp: PathBuf,
    /// The RAM to save (taken by the copy once it starts).
    ram: Option<RamToSave>,
    /// The RAM's copy was moved to `guest-ram`.
    ram_placed: bool,
    /// Tells a RAM copy still running that the save was abandoned.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The RAM copy, while it runs.
    ram_copy: Option<tokio::task::JoinHandle<std::io::Result<os::memfd::Copied>>>,
    paused: bool,
    /// A migration was started and may not be over.
    migrating: bool,
    /// The device state (and maybe the record) were moved into place.
    placed: bool,
}

impl Attempt<'_> {
    /// Everything up to and including the commit.
    async fn run(
        &mut self,
        prepared: &Prepared,
        listener: UnixListener,
    ) -> Result<(StateRecord, u64, u64), SaveFailure> {
        let qmp = &self.vm.qmp;
        self.paused = true;
        qmp.pause(QMP_TIMEOUT).await.map_err(qmp_error("stop"))?;
        // From the pause on the RAM stays as it is (shared RAM is out of
        // the migration stream): its copy runs beside the device state's.
        if let Some(RamToSave::Memfd(memfd)) = self.ram.take() {
            let temp = self.ram_temp.clone();
            let cancel = self.cancel.clone();
            self.ram_copy = Some(tokio::task::spawn_blocking(move || {
                copy_ram(&memfd, &temp, &cancel)
            }));
        }
        for capability in prepared.capabilities.save_capabilities() {
            qmp.set_migration_capability(capability, true, QMP_TIMEOUT)
                .await
                .map_err(qmp_error("migrate-set-capabilities"))?;
        }
        let uri = format!("unix:{}", self.dir.migration_socket().display());
        self.migrating = true;
        qmp.migrate(&uri, QMP_TIMEOUT)
            .await
            .map_err(qmp_error("migrate"))?;

        let stream = self
            .race(prepared, 0, async {
                tokio::select! {
                    accepted = listener.accept() => accepted
                        .map(|(stream, _)| stream)
                        .map_err(io_error("accept on", &self.dir.migration_socket())),
                    failed = self.migration_failure() => Err(failed),
                }
            })
            .await?;
        drop(listener);
        let mut file =
            os::fs::create_private(&self.temp).map_err(io_error("create", &self.temp))?;
        let (bytes, sha256) = self
            .race(prepared, 0, copy_stream(stream, &mut file, &self.temp))
            .await?;
        self.race(prepared, bytes, self.migration_completed())
            .await?;
        self.migrating = false;
        tracing::info!(bytes, "device state received");

        // Durable before the record names it: device state, RAM, disk.
        file.sync_all().map_err(io_error("sync", &self.temp))?;
        drop(file);
        let ram_file = self.dir.guest_ram();
        let disk = self.dir.disk();
        os::fs::sync_file(&disk).map_err(io_error("sync", &disk))?;
        let ram_written = match self.ram_copy.take() {
            Some(mut copy) => {
                let copied = self
                    .race(prepared, bytes, async {
                        Ok((&mut copy)
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e))))
                    })
                    .await;
                if copied.is_err() {
                    // Still running: `recover` stops it and waits.
                    self.ram_copy = Some(copy);
                }
                let copied = copied?;
                let copied = copied.map_err(io_error("write", &self.ram_temp))?;
                self.ram_placed = true;
                os::fs::rename(&self.ram_temp, &ram_file)
                    .map_err(io_error("move into place", &ram_file))?;
                tracing::info!(
                    read = copied.read,
                    written = copied.written,
                    "guest RAM copied"
                );
                copied.written
            }
            None => {
                os::fs::sync_file(&ram_file).map_err(io_error("sync", &ram_file))?;
                0
            }
        };
        let identity = |path: &Path| {
            os::fs::file_id(path)
                .map_err(io_error("inspect", path))?
                .ok_or_else(|| io_error("inspect", path)(std::io::ErrorKind::NotFound.into()))
        };
        let ram = identity(&ram_file)?;
        let disk_id = identity(&disk)?;
        let state_path = self.dir.saved_device_state();
        self.placed = true;
        os::fs::rename(&self.temp, &state_path)
            .map_err(io_error("move into place", &state_path))?;
        os::fs::sync_dir(self.dir.dir()).map_err(io_error("sync", self.dir.dir()))?;

        let record = StateRecord {
            format: record::FORMAT_VERSION,
            saved_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            vmkeep_version: env!("CARGO_PKG_VERSION").to_string(),
            qemu: prepared.qemu.clone(),
            machine_type: prepared.machine_type.clone(),
            machine: prepared.machine.clone(),
            kernel_cmdline: prepared.kernel_cmdline.clone(),
            ram,
            disk: disk_id,
            device_state: DeviceState { bytes, sha256 },
            guest_boot_id: None,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| {
            io_error("write", &self.dir.saved_state_record())(std::io::Error::other(e))
        })?;
        let record_path = self.dir.saved_state_record();
        os::fs::write_atomic(&record_path, &json, 0o600)
            .map_err(io_error("write", &record_path))?;
        Ok((record, bytes, ram_written))
    }

    /// Run `work` until it ends, QEMU exits, or the deadline passes.
    async fn race<T>(
        &self,
        prepared: &Prepared,
        written: u64,
        work: impl Future<Output = Result<T, SaveFailure>>,
    ) -> Result<T, SaveFailure> {
        tokio::select! {
            result = work => result,
            outcome = self.vm.process.exited() => Err(SaveFailure::QemuExited { outcome }),
            () = tokio::time::sleep_until(prepared.deadline) => Err(SaveFailure::Timeout {
                after: prepared.options.deadline,
                written,
            }),
        }
    }

    /// Resolves once QEMU reports the migration failed (never otherwise).
    async fn migration_failure(&self) -> SaveFailure {
        loop {
            match self.vm.qmp.query_migrate(QMP_TIMEOUT).await {
                Ok(info) if info.status.is_over() && info.status != MigrationStatus::Completed => {
                    return SaveFailure::MigrationFailed { error: info.error };
                }
                Ok(_) => {}
                Err(e) => return qmp_error("query-migrate")(e),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resolves once the migration is over: Ok if it completed.
    async fn migration_completed(&self) -> Result<(), SaveFailure> {
        loop {
            let info = self
                .vm
                .qmp
                .query_migrate(QMP_TIMEOUT)
                .await
                .map_err(qmp_error("query-migrate"))?;
            match info.status {
                MigrationStatus::Completed => return Ok(()),
                status if status.is_over() => {
                    return Err(SaveFailure::MigrationFailed { error: info.error });
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Undo a failed attempt: no state is left, and the guest runs on if
    /// QEMU still lives.
    async fn recover(&mut self, failure: SaveFailure) -> SaveError {
        tracing::warn!(error = %failure, "the save failed; undoing it");
        let mut after = StateAfterFailure::Running;
        if self.vm.process.has_exited() {
            after = StateAfterFailure::Gone {
                outcome: self.vm.process.exited().await,
            };
        } else if self.paused {
            let qmp = &self.vm.qmp;
            if self.migrating {
                let _ = qmp.migrate_cancel(QMP_TIMEOUT).await;
                let until = Instant::now() + QMP_TIMEOUT;
                while Instant::now() < until {
                    match qmp.query_migrate(QMP_TIMEOUT).await {
                        Ok(info) if !info.status.is_over() => tokio::time::sleep(POLL).await,
                        _ => break,
                    }
                }
            }
            if let Err(e) = qmp.cont(QMP_TIMEOUT).await {
                after = match self.vm.process.has_exited() {
                    true => StateAfterFailure::Gone {
                        outcome: self.vm.process.exited().await,
                    },
                    false => StateAfterFailure::Paused {
                        error: e.to_string(),
                    },
                };
            }
        }
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(copy) = self.ram_copy.take() {
            // It stops at its next block; then its file can go.
            let _ = copy.await;
        }
        let mut leftovers = vec![self.temp.clone(), self.ram_temp.clone()];
        if self.ram_placed {
            leftovers.push(self.dir.guest_ram());
        }
        if self.placed {
            // The record first: without it the rest is no state.
            leftovers.insert(0, self.dir.saved_state_record());
            leftovers.push(self.dir.saved_device_state());
        }
        for path in leftovers {
            if let Err(e) = os::fs::remove_file_if_exists(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        let _ = os::fs::sync_dir(self.dir.dir());
        SaveError { failure, after }
    }
}

/// Copy the guest's RAM (paused) into a new sparse file `temp` of its
/// size, by data extents, and make it durable.
fn copy_ram(
    memfd: &std::fs::File,
    temp: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<os::memfd::Copied> {
    let len = memfd.metadata()?.len();
    let file = os::fs::create_private(temp)?;
    file.set_len(len)?;
    let copied = os::memfd::copy_extents(memfd, &file, len, cancel)?;
    file.sync_all()?;
    Ok(copied)
}

/// Copy the migration stream into `file` until QEMU closes it; returns the
/// bytes and their SHA-256.
async fn copy_stream(
    mut stream: UnixStream,
    file: &mut std::fs::File,
    path: &Path,
) -> Result<(u64, String), SaveFailure> {
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(io_error("read the migration stream for", path))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])
            .map_err(io_error("write", path))?;
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// End QEMU after a commit: `quit`, then SIGKILL if it lingers. A process
/// that got SIGKILL never runs guest code again, so the state is safe even
/// if it is slow to go.
async fn end_qemu(vm: &QemuVm) -> ExitOutcome {
    let _ = vm.qmp.quit(QMP_TIMEOUT).await;
    if let Ok(outcome) = tokio::time::timeout(QUIT_GRACE, vm.process.exited()).await {
        return outcome;
    }
    tracing::warn!("QEMU did not exit after quit; killing it");
    let _ = vm.process.kill();
    match tokio::time::timeout(QUIT_GRACE, vm.process.exited()).await {
        Ok(outcome) => outcome,
        Err(_) => ExitOutcome::Unknown,
    }
}
