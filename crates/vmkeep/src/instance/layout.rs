//! Where an instance keeps its files. One place names every file, so no path
//! is spelled twice.
//!
//! ```text
//! $VMKEEP_HOME/NAME/        mode 0700
//!   vmkeep.yaml             config (user-editable)
//!   disk.qcow2              data disk
//!   data-disk.new           the data disk is new: made by vmkeep, never formatted
//!                           (holds the format token; see instance::data_disk)
//!   events.jsonl            append-only event journal (rotated: see instance::journal)
//!   events.jsonl.1          its part before the last rotation
//!   events.jsonl.lock       its writers' lock (shared to append, exclusive to rotate)
//!   ha.log                  host agent log (every log: cut by the host agent past
//!   ha.log.1                its bound, the newest quarter kept in FILE.1; see
//!                           hostagent::bounded_logs)
//!   autostart.log           a service unit's output (the agent's log under it)
//!   qemu.log                QEMU's own output
//!   serial.log              guest serial console (bounded by the host agent)
//!   serial.log.1            its newest output before it was last cut
//!   ha.pid      runtime     host agent lock (POSIX lock held for the agent's life)
//!   ha.sock     runtime     host agent API
//!   qemu.pid    runtime     QEMU's own pid file (QEMU holds a lock on it)
//!   qmp.sock    runtime     QMP
//!   ga.sock     runtime     guest agent channel
//!   mig.sock    runtime     QEMU's migration stream while saving or resuming
//!   guest-ram               a suspended VM's RAM: the pages its guest touched
//!                           (a sparse file; a running guest's RAM is a memfd,
//!                           see driver::qemu::args), part of a saved state
//!   saved-state.json        a suspended VM's state record (its presence is
//!                           what makes a saved state; see driver::qemu::snapshot)
//!   saved-state.bin         a suspended VM's device state (QEMU's migration stream)
//!   image.json              cloud images: the base image and boot files used
//!   cidata.img              cloud images: the cloud-init seed (rewritten at start)
//!   ssh.config              cloud images: the ssh config `shell` uses
//!   ssh.port    runtime     cloud images: the loopback port forwarded to ssh
//!   fsN.sock    runtime     virtiofsd of shared directory N (`mounts[N]`): its
//!                           vhost-user socket, which QEMU connects to
//!   fsN.pid     runtime     that virtiofsd's liveness lock (held by it; it
//!                           names the directory and its mount point)
//!   fsN.log                 that virtiofsd's output
//!   base.img                imported or cloned cloud images: the base disk,
//!   kernel, initrd          and boot files, copied into the instance
//!   vmkeep.yaml.rejected    the text of the last `vmkeep edit` the config refused
//! ```
//! Runtime files are recognised by suffix (`.pid`, `.sock`, `.port`), and
//! unfinished atomic writes by their `.tmp-` infix (see `instance::runtime`).

use std::path::{Path, PathBuf};

use super::name::InstanceName;

/// The files an instance may own in place of the image cache's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnFile {
    BaseDisk,
    Kernel,
    Initrd,
}

/// Unix socket paths must fit `sun_path` (108 bytes on Linux, 104 on macOS,
/// including the terminating NUL). We hold every platform to the smaller.
pub const MAX_SOCKET_PATH: usize = 103;

const CONFIG: &str = "vmkeep.yaml";
const DISK: &str = "disk.qcow2";
const DATA_DISK_NEW: &str = "data-disk.new";
const JOURNAL: &str = "events.jsonl";
const AGENT_LOG: &str = "ha.log";
/// A service unit's output (`StandardOutput=append:`): see `autostart`.
pub const AUTOSTART_LOG: &str = "autostart.log";
const SERIAL_LOG: &str = "serial.log";
const SERIAL_LOG_PREVIOUS: &str = "serial.log.1";
const QEMU_LOG: &str = "qemu.log";
const AGENT_LOCK: &str = "ha.pid";
const API_SOCKET: &str = "ha.sock";
const QEMU_PID: &str = "qemu.pid";
const QMP_SOCKET: &str = "qmp.sock";
const GUEST_SOCKET: &str = "ga.sock";
const IMAGE_RECORD: &str = "image.json";
const SEED: &str = "cidata.img";
const SSH_CONFIG: &str = "ssh.config";
const SSH_PORT: &str = "ssh.port";
const MIGRATION_SOCKET: &str = "mig.sock";
const GUEST_RAM: &str = "guest-ram";
const SAVED_STATE_RECORD: &str = "saved-state.json";
const SAVED_DEVICE_STATE: &str = "saved-state.bin";
/// The longest name a shared directory's socket gets (at most
/// `instance::shares::MAX_SHARES`, so `fs9.sock`: no longer than QMP's).
const LONGEST_SHARE_SOCKET: &str = "fs9.sock";
const SOCKETS: [&str; 5] = [
    API_SOCKET,
    QMP_SOCKET,
    GUEST_SOCKET,
    MIGRATION_SOCKET,
    LONGEST_SHARE_SOCKET,
];

#[derive(Debug, thiserror::Error)]
#[error(
    "the socket path {path} is {len} bytes long, more than the {MAX_SOCKET_PATH} a unix socket allows; \
     use a shorter instance name or a shorter VMKEEP_HOME"
)]
pub struct SocketPathTooLong {
    pub path: PathBuf,
    pub len: usize,
}

/// The directory of one instance and the names of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDir {
    name: InstanceName,
    dir: PathBuf,
}

impl InstanceDir {
    /// The layout of `name` under `root`; refuses a layout whose socket paths
    /// would not fit `sun_path`, so that no instance is created that could
    /// never start.
    pub fn new(root: &Path, name: InstanceName) -> Result<Self, SocketPathTooLong> {
        let layout = InstanceDir {
            dir: root.join(name.as_str()),
            name,
        };
        for socket in SOCKETS {
            let path = layout.dir.join(socket);
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(SocketPathTooLong { path, len });
            }
        }
        Ok(layout)
    }

    pub fn name(&self) -> &InstanceName {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }
    /// The copy of the config `vmkeep edit` opens in the editor (a
    /// temporary of this process, so an abandoned one is swept).
    pub fn config_edit_copy(&self) -> PathBuf {
        self.dir
            .join(format!("{CONFIG}.tmp-{}-edit.yaml", std::process::id()))
    }
    /// Where the text of an edit the config refused is kept.
    pub fn config_rejected(&self) -> PathBuf {
        self.dir.join(format!("{CONFIG}.rejected"))
    }
    /// A base disk (or boot file) of the instance's own: an imported or
    /// cloned cloud image's, copied in rather than shared from the cache.
    pub fn own_file(&self, name: OwnFile) -> PathBuf {
        self.dir.join(match name {
            OwnFile::BaseDisk => "base.img",
            OwnFile::Kernel => "kernel",
            OwnFile::Initrd => "initrd",
        })
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    /// Present while the data disk is new (see `instance::data_disk`).
    pub fn data_disk_new(&self) -> PathBuf {
        self.dir.join(DATA_DISK_NEW)
    }
    pub fn journal(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join(AGENT_LOG)
    }
    /// What a service unit running the agent writes (its stdout and stderr).
    pub fn autostart_log(&self) -> PathBuf {
        self.dir.join(AUTOSTART_LOG)
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join(SERIAL_LOG)
    }
    /// The newest output of `serial.log` before the host agent last cut it
    /// (see `hostagent::serial_log`).
    pub fn serial_log_previous(&self) -> PathBuf {
        self.dir.join(SERIAL_LOG_PREVIOUS)
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join(QEMU_LOG)
    }
    /// Whether the user last asked for the instance to run (`start`) or not
    /// (`stop`): what the daemon reconciles towards.
    pub fn desired_state(&self) -> PathBuf {
        self.dir.join("desired-state")
    }
    pub fn agent_lock(&self) -> PathBuf {
        self.dir.join(AGENT_LOCK)
    }
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join(API_SOCKET)
    }
    pub fn qemu_pid(&self) -> PathBuf {
        self.dir.join(QEMU_PID)
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join(QMP_SOCKET)
    }
    pub fn guest_socket(&self) -> PathBuf {
        self.dir.join(GUEST_SOCKET)
    }
    /// The socket QEMU streams its state through while saving or resuming.
    pub fn migration_socket(&self) -> PathBuf {
        self.dir.join(MIGRATION_SOCKET)
    }
    /// A saved state's copy of the guest's RAM (QEMU's memory backend
    /// file for a QEMU of an older vmkeep).
    pub fn guest_ram(&self) -> PathBuf {
        self.dir.join(GUEST_RAM)
    }
    /// The record of a saved (suspended) state; written last, so a state
    /// exists exactly when this file does.
    pub fn saved_state_record(&self) -> PathBuf {
        self.dir.join(SAVED_STATE_RECORD)
    }
    /// Whether a saved state waits to be resumed (its record is there).
    pub fn has_saved_state(&self) -> bool {
        self.saved_state_record().exists()
    }
    /// The device state of a saved (suspended) VM.
    pub fn saved_device_state(&self) -> PathBuf {
        self.dir.join(SAVED_DEVICE_STATE)
    }
    pub fn image_record(&self) -> PathBuf {
        self.dir.join(IMAGE_RECORD)
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join(SEED)
    }
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join(SSH_CONFIG)
    }
    pub fn ssh_port(&self) -> PathBuf {
        self.dir.join(SSH_PORT)
    }
    /// The vhost-user socket of shared directory `index`'s virtiofsd.
    pub fn share_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("fs{index}.sock"))
    }
    /// The liveness lock that virtiofsd holds.
    pub fn share_lock(&self, index: usize) -> PathBuf {
        self.dir.join(format!("fs{index}.pid"))
    }
    /// That virtiofsd's output.
    pub fn share_log(&self, index: usize) -> PathBuf {
        self.dir.join(format!("fs{index}.log"))
    }
    /// The shared-directory locks present (`fsN.pid`), by index, sorted.
    pub fn share_locks(&self) -> Vec<(usize, PathBuf)> {
        let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let index = share_lock_index(&entry.file_name().to_string_lossy())?;
                Some((index, entry.path()))
            })
            .collect();
        found.sort();
        found
    }
}

/// The share index of a virtiofsd lock file's name (`fsN.pid`), pure.
pub fn share_lock_index(file_name: &str) -> Option<usize> {
    file_name
        .strip_prefix("fs")?
        .strip_suffix(".pid")?
        .parse()
        .ok()
}

/// The instances under `root`: its directories named like an instance,
/// sorted. Staging directories of unfinished creates (`.NAME.tmp-*`) are not
/// valid names, so they are left out. A missing root has none.
pub fn instance_names(root: &Path) -> Vec<InstanceName> {
    let mut names: Vec<InstanceName> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> InstanceName {
        s.parse().unwrap()
    }

    #[test]
    fn files_live_in_the_instance_directory() {
        let layout = InstanceDir::new(Path::new("/home/u/.vmkeep"), name("dev")).unwrap();
        assert_eq!(
            layout.qmp_socket(),
            Path::new("/home/u/.vmkeep/dev/qmp.sock")
        );
        assert_eq!(
            layout.config(),
            Path::new("/home/u/.vmkeep/dev/vmkeep.yaml")
        );
    }

    #[test]
    fn refuses_socket_paths_longer_than_sun_path() {
        let root = PathBuf::from("/").join("r".repeat(80));
        let err = InstanceDir::new(&root, name(&"n".repeat(20))).unwrap_err();
        assert!(err.len > MAX_SOCKET_PATH);
        assert!(err.to_string().contains("shorter"), "{err}");
        // One byte shorter fits: "/" + 80 + "/" + 12 + "/qmp.sock" = 103.
        assert!(InstanceDir::new(&root, name(&"n".repeat(12))).is_ok());
        assert!(InstanceDir::new(&root, name(&"n".repeat(13))).is_err());
    }
}
