//! virtiofsd, the vhost-user daemon behind each shared directory: one per
//! directory, started before QEMU (which connects to its socket at launch),
//! ended with it (virtiofsd exits when QEMU's connection closes).
//!
//! QEMU 7.2 ships the C virtiofsd (`/usr/lib/qemu/virtiofsd`, Debian's
//! qemu-system-common). What it needs and does, as measured here:
//!
//! - **root**: it creates its own pid file under `/var/run/virtiofsd` and
//!   sandboxes itself (mount, pid and network namespaces, `pivot_root` into
//!   the shared directory); as another user, even in a user namespace, it
//!   stops at once ("Could not create '/var/run/virtiofsd/...': Permission
//!   denied"). So `mounts:` need vmkeep to run as root ([`VirtiofsError::NotRoot`]).
//! - **no read-only option**: `writable: false` is enforced under it: it
//!   runs in a mount namespace where the directory is a recursive
//!   read-only bind mount of itself (`os::confine`), so any write the guest
//!   asks for fails with `EROFS` in the host kernel, also from a guest that
//!   remounted its side read-write. What a hostile guest can still do with a
//!   read-only share: read everything in that tree that root can read on
//!   the host (virtiofsd reads as root), and follow nothing out of it (it is
//!   pivot_root'ed there).
//! - **a writable share is root's**: virtiofsd creates files with the
//!   guest's uid and gid, so a guest's root can create root-owned files in
//!   a writable share, setuid ones included. Share writable only what you
//!   would let the guest's root own.
//! - **its socket is ours**: the host agent binds and listens on `fsN.sock`
//!   itself and hands virtiofsd the descriptor (`--fd`). virtiofsd would
//!   otherwise bind it in its read-only namespace, which fails whenever the
//!   instance directory is inside a read-only share (Lima's default mount
//!   of the home directory, with `~/.vmkeep` in it). The socket is 0600.
//! - it holds the lock on `fsN.pid` that vmkeep's child took before exec
//!   (see `os::confine`): that lock, not a pid, tells whether it lives, and
//!   who it is, to a host agent adopting the VM and to `vmkeep list`.
//! - QEMU 7.2 cannot migrate a vhost-user-fs device ("State blocked by
//!   non-migratable device"), so a VM with shared directories cannot be
//!   suspended (`snapshot::save` refuses first), and a vhost-user-fs device
//!   does not reconnect: a virtiofsd that dies leaves its mount dead until
//!   the VM restarts (shown in `list`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::instance::InstanceDir;
use crate::instance::shares::SharedDir;
use crate::os::cgroup::{self, Placement, Scope};
use crate::os::confine::{self, Confinement};
use crate::os::process::{self, ProcessHandle, Program};

/// Where the C virtiofsd is installed: Debian's qemu-system-common, then
/// the libexec path other distributions use.
pub const CANDIDATES: [&str; 2] = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];

/// How long a virtiofsd may take to get ready (to say, in its log, that
/// it waits for QEMU's connection).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// What the C virtiofsd logs once it accepts on its socket.
const READY_LINE: &str = "Waiting for vhost-user socket connection";

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error(
        "mounts: sharing host directories needs root on this host: QEMU {qemu}'s virtiofsd runs only as root (it sandboxes itself in namespaces and keeps its pid file in /var/run/virtiofsd); run vmkeep as root, or remove mounts from {config}"
    )]
    NotRoot { qemu: &'static str, config: PathBuf },
    #[error(
        "mounts: virtiofsd was not found (looked for {}); install it: apt-get install qemu-system-common (Debian 12) or virtiofsd (Debian 13 and later)",
        CANDIDATES.join(", ")
    )]
    Missing,
    #[error(
        "mounts[{index}].location: {} {problem}; create it or fix the location in {config}",
        location.display()
    )]
    Location {
        index: usize,
        location: PathBuf,
        problem: String,
        config: PathBuf,
    },
    #[error("cannot start virtiofsd for {share}: {source}")]
    Spawn {
        share: String,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd for {share} exited at once; its log {} says:\n{log_tail}", log.display())]
    Exited {
        share: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("cannot make the socket {} for virtiofsd: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The C virtiofsd's `-o` options are split at commas; escape them.
fn option_value(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(',', "\\,")
}

/// The virtiofsd command line for one share, listening on the inherited
/// descriptor `socket_fd` (pure).
pub fn program(binary: &Path, socket_fd: std::os::fd::RawFd, share: &SharedDir) -> Program {
    Program::new(
        binary,
        &[
            format!("--fd={socket_fd}"),
            "-o".into(),
            format!("source={}", option_value(&share.location)),
            "-o".into(),
            "cache=auto".into(),
            "-o".into(),
            "sandbox=namespace".into(),
            "-o".into(),
            "announce_submounts".into(),
        ],
    )
}

/// The installed virtiofsd.
pub fn find_binary() -> Result<PathBuf, VirtiofsError> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(VirtiofsError::Missing)
}

/// What can be checked before anything is started: root, the binary, each
/// location (made if missing, as Lima does, then a directory).
pub fn preflight(shares: &[SharedDir], config: &Path) -> Result<Option<PathBuf>, VirtiofsError> {
    if shares.is_empty() {
        return Ok(None);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(VirtiofsError::NotRoot {
            qemu: "7.2",
            config: config.to_path_buf(),
        });
    }
    let binary = find_binary()?;
    for share in shares {
        let problem = |problem: String| VirtiofsError::Location {
            index: share.index,
            location: share.location.clone(),
            problem,
            config: config.to_path_buf(),
        };
        if !share.location.exists() {
            std::fs::create_dir_all(&share.location)
                .map_err(|e| problem(format!("does not exist and cannot be created ({e})")))?;
        }
        if !share.location.is_dir() {
            return Err(problem("is not a directory".into()));
        }
    }
    Ok(Some(binary))
}

/// Start the virtiofsd of `share` (in its own process group and, under
/// systemd, its own scope, so that it outlives the host agent as QEMU
/// does), and wait until its socket exists.
pub fn start(
    binary: &Path,
    dir: &InstanceDir,
    share: &SharedDir,
    scope: Option<(&Placement, &Scope)>,
) -> Result<ProcessHandle, VirtiofsError> {
    let socket = dir.share_socket(share.index);
    let lock = dir.share_lock(share.index);
    let log_path = dir.share_log(share.index);
    let describe = share.describe();
    let spawn_err = |source| VirtiofsError::Spawn {
        share: describe.clone(),
        source,
    };
    // The lock file says what it guards, for humans and `list`.
    crate::os::fs::write_atomic(&lock, format!("{describe}\n").as_bytes(), 0o600)
        .map_err(spawn_err)?;
    let listener = listen(&socket)?;
    let log = crate::os::fs::open_append(&log_path).map_err(spawn_err)?;
    let logged_before = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut program = program(binary, listener.as_raw_fd(), share);
    if let Some((placement, scope)) = scope {
        program = cgroup::wrap(placement, scope, &program);
    }
    let confinement = Confinement {
        lock_file: Some(lock),
        read_only_tree: (!share.writable).then(|| share.location.clone()),
        inherit_fd: Some(listener.as_raw_fd()),
    };
    let process = confine::spawn_in_own_group(&program, log, &confinement).map_err(spawn_err)?;
    // virtiofsd has its copy; QEMU's connection waits in its backlog.
    drop(listener);
    let started = Instant::now();
    loop {
        if process.has_exited() {
            process.reap();
            return Err(VirtiofsError::Exited {
                share: describe,
                log_tail: super::tail(&log_path, 8),
                log: log_path,
            });
        }
        if says_ready(&log_path, logged_before) {
            return Ok(process);
        }
        if started.elapsed() > READY_TIMEOUT {
            // Another build of virtiofsd may say nothing: it runs, and a
            // QEMU that cannot talk to it fails its launch, naming it.
            tracing::warn!(
                "virtiofsd for {describe} did not say it is ready within {READY_TIMEOUT:?}; going on"
            );
            return Ok(process);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Bind and listen on `socket` (replacing a stale one), mode 0600.
fn listen(socket: &Path) -> Result<std::os::unix::net::UnixListener, VirtiofsError> {
    let err = |source| VirtiofsError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    crate::os::fs::remove_file_if_exists(socket).map_err(err)?;
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(err)?;
    Ok(listener)
}

/// Whether the log, past `offset`, says virtiofsd waits for QEMU.
fn says_ready(log: &Path, offset: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return false;
    };
    let mut text = String::new();
    file.seek(SeekFrom::Start(offset)).is_ok()
        && file.take(64 * 1024).read_to_string(&mut text).is_ok()
        && text.contains(READY_LINE)
}

/// The live virtiofsd of share `index`: the holder of its lock (a file in
/// the instance directory, mode 0700, that only our spawn opens) that is a
/// virtiofsd (anything else holding the lock is left alone).
pub fn find_running(
    dir: &InstanceDir,
    index: usize,
) -> Result<Option<ProcessHandle>, VirtiofsError> {
    let lock = dir.share_lock(index);
    let process = process::open_lock_holder(&lock).map_err(|source| VirtiofsError::Inspect {
        path: lock.clone(),
        source,
    })?;
    let Some(process) = process else {
        return Ok(None);
    };
    let ours = process::command_line_of_live(&process)
        .is_some_and(|args| args.iter().any(|a| a.ends_with("virtiofsd")));
    Ok(ours.then_some(process))
}

/// The QEMU arguments that attach share `index` (its chardev and device).
pub fn qemu_args(socket: &Path, tag: &str) -> [String; 4] {
    let id = format!("{tag}-chr");
    [
        "-chardev".into(),
        format!(
            "socket,id={id},path={}",
            socket.to_string_lossy().replace(',', ",,")
        ),
        "-device".into(),
        format!("vhost-user-fs-pci,chardev={id},tag={tag},queue-size=1024"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_given_the_share_its_socket_and_the_sandbox() {
        let share = SharedDir {
            index: 1,
            location: "/home/a,b".into(),
            mount_point: "/src".into(),
            writable: false,
        };
        let program = program(Path::new("/usr/lib/qemu/virtiofsd"), 7, &share);
        let args: Vec<String> = program
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--fd=7",
                "-o",
                "source=/home/a\\,b",
                "-o",
                "cache=auto",
                "-o",
                "sandbox=namespace",
                "-o",
                "announce_submounts"
            ]
        );
        assert_eq!(
            qemu_args(Path::new("/h/x/fs1.sock"), "fs1"),
            [
                "-chardev",
                "socket,id=fs1-chr,path=/h/x/fs1.sock",
                "-device",
                "vhost-user-fs-pci,chardev=fs1-chr,tag=fs1,queue-size=1024"
            ]
        );
    }

    #[test]
    fn ready_is_what_virtiofsd_logged_since_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fs0.log");
        assert!(!says_ready(&log, 0), "no log yet");
        std::fs::write(&log, format!("virtio_session_mount: {READY_LINE}...\n")).unwrap();
        let earlier = std::fs::metadata(&log).unwrap().len();
        assert!(says_ready(&log, 0));
        // An earlier run's line does not count for this one.
        assert!(!says_ready(&log, earlier));
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, b"fuse: something else\n").unwrap();
        assert!(!says_ready(&log, earlier));
        std::io::Write::write_all(&mut file, format!("x: {READY_LINE}\n").as_bytes()).unwrap();
        assert!(says_ready(&log, earlier));
    }

    #[test]
    fn its_socket_is_bound_by_us_mode_0600_replacing_a_stale_one() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fs0.sock");
        std::fs::write(&socket, "stale").unwrap();
        let listener = listen(&socket).unwrap();
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(&socket).expect("it listens");
        drop(listener);
    }

    #[test]
    fn nothing_is_needed_without_shares_and_a_missing_location_is_made() {
        assert!(preflight(&[], Path::new("/c")).unwrap().is_none());
        if !rustix::process::geteuid().is_root() {
            let share = SharedDir {
                index: 0,
                location: "/tmp".into(),
                mount_point: "/tmp".into(),
                writable: true,
            };
            let err = preflight(&[share], Path::new("/h/vm/vmkeep.yaml")).unwrap_err();
            assert!(err.to_string().contains("needs root"), "{err}");
            return;
        }
        if find_binary().is_err() {
            eprintln!("no virtiofsd here; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let share = SharedDir {
            index: 0,
            location: dir.path().join("made/here"),
            mount_point: "/m".into(),
            writable: true,
        };
        preflight(std::slice::from_ref(&share), Path::new("/c")).unwrap();
        assert!(share.location.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let not_dir = SharedDir {
            location: file,
            ..share
        };
        let err = preflight(&[not_dir], Path::new("/c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
