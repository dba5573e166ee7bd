//! virtiofsd, the vhost-user daemon behind each shared directory: one per
//! directory, started before QEMU (which connects to its socket at launch),
//! ended with it (virtiofsd exits when QEMU's connection closes).
//!
//! Two virtiofsds exist, told apart by what `--version` prints (never by
//! their path):
//!
//! - **the Rust virtiofsd** (virtio-fs/virtiofsd; Debian 13's `virtiofsd`
//!   package, Fedora's, or `cargo install virtiofsd`, which
//!   `scripts/setup-host` does): vmkeep's choice for every share. It runs as
//!   a normal user, sandboxed in a user namespace of its own, and maps the
//!   guest's users (`--translate-uid`/`--translate-gid`): whatever uid and
//!   gid the guest asks for, a file it creates belongs to the share's owner
//!   (`instance::share_owner`), and the owner's files appear in the guest as
//!   the guest user's. vmkeep run as root serves a share as that owner (the
//!   identity switch of `os::confine`), never as root for a writable one;
//! - **QEMU 7.2's C virtiofsd** (`/usr/lib/qemu/virtiofsd`, Debian 12's
//!   qemu-system-common): runs only as root and creates files with the
//!   guest's own uid and gid, so a guest's root could plant setuid-root files
//!   and device nodes through it. vmkeep uses it only for **read-only**
//!   shares run by root, when no Rust virtiofsd is installed; a writable
//!   share is then refused, naming the fix.
//!
//! Whichever runs, it runs through vmkeep's sandbox (`os::confine`):
//!
//! - **no privileged files**: a system-call filter (`os::seccomp`) refuses
//!   every setuid or setgid mode and every device node, so nothing the
//!   guest sends can make one on the host. Extended attributes are off (no
//!   `--xattr`), so `security.capability` and ACLs cannot be set either;
//! - **read-only in the kernel**: `writable: false` runs virtiofsd in a
//!   mount namespace where the directory is a recursive read-only bind
//!   mount of itself, so any write the guest asks for fails with `EROFS`
//!   in the host kernel, also from a guest that remounted its side
//!   read-write (the Rust virtiofsd is also given `--readonly`);
//! - **its socket is ours**: the host agent binds and listens on `fsN.sock`
//!   itself and hands virtiofsd the descriptor (`--fd`). virtiofsd would
//!   otherwise bind it in its read-only namespace, which fails whenever the
//!   instance directory is inside a read-only share (Lima's default mount
//!   of the home directory, with `~/.vmkeep` in it). The socket is 0600.
//! - it holds the lock on `fsN.pid` that vmkeep's child took before exec
//!   (see `os::confine`): that lock, not a pid, tells whether it lives, and
//!   who it is, to a host agent adopting the VM and to `vmkeep list`.
//! - which virtiofsd goes with which QEMU, and whether a VM with shares can
//!   be suspended, is `capabilities`' decision: QEMU 7.2 cannot migrate a
//!   vhost-user-fs device ("State blocked by non-migratable device"), so
//!   there a VM with shared directories cannot be suspended
//!   (`snapshot::save` refuses first); QEMU 8.2 and later migrate it with
//!   the Rust virtiofsd's state in the stream (`--migration-mode`
//!   find-paths, its default: the paths of what the guest holds open), and
//!   the resumed QEMU connects to a fresh virtiofsd on the same directory.
//!   The C virtiofsd serves only beside the QEMU that shipped it (before
//!   8.0). A vhost-user-fs device does not reconnect: a virtiofsd that dies
//!   leaves its mount dead until the VM restarts (shown in `list`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::capabilities::Capabilities;
use crate::instance::InstanceDir;
use crate::instance::share_owner::{self, Ids, MountOwner, OwnerFacts, ShareOwner};
use crate::instance::shares::SharedDir;
use crate::os::cgroup::{self, Placement, Scope};
use crate::os::confine::{self, Groups, Holding, Identity, Sandbox};
use crate::os::identity;
use crate::os::process::{self, ProcessHandle, Program};

/// Where a virtiofsd may be installed, looked at in this order (each one
/// asked for its version): `VMKEEP_VIRTIOFSD` first when set.
pub const CANDIDATES: [&str; 6] = [
    "/usr/libexec/virtiofsd",
    "/usr/local/libexec/virtiofsd",
    "/usr/local/bin/virtiofsd",
    "/usr/bin/virtiofsd",
    "/usr/lib/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];

/// The environment variable naming the virtiofsd to use.
pub const OVERRIDE_VAR: &str = "VMKEEP_VIRTIOFSD";

/// The oldest Rust virtiofsd that can map the guest's users
/// (`--translate-uid`, 1.11).
const RUST_MINIMUM: (u32, u32) = (1, 11);

/// How long a virtiofsd may take to get ready (to say, in its log, that
/// it waits for QEMU's connection).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// What both virtiofsds log once they accept on their socket.
const READY_LINE: &str = "Waiting for vhost-user socket connection";

/// Which virtiofsd a binary is, from its `--version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// The Rust one, with its version (`1.14.0`).
    Rust { version: String },
    /// QEMU's C one (QEMU 7.2 and older), with QEMU's version.
    C { version: String },
}

/// A virtiofsd found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    pub path: PathBuf,
    pub flavour: Flavour,
}

impl Virtiofsd {
    fn is_rust(&self) -> bool {
        matches!(self.flavour, Flavour::Rust { .. })
    }
}

/// What `virtiofsd --version` printed, read (pure): the Rust one prints
/// `virtiofsd 1.14.0`, the C one `virtiofsd version 7.2.22 (Debian ...)`.
pub fn flavour_of(version_output: &str) -> Option<Flavour> {
    let first = version_output.lines().next()?.trim();
    let rest = first.strip_prefix("virtiofsd ")?;
    if let Some(qemu) = rest.strip_prefix("version ") {
        let version = qemu.split_whitespace().next()?.to_string();
        return Some(Flavour::C { version });
    }
    let version = rest.split_whitespace().next()?;
    version
        .split('.')
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .then(|| Flavour::Rust {
            version: version.to_string(),
        })
}

/// Whether a Rust virtiofsd's version is at least [`RUST_MINIMUM`].
fn recent_enough(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= RUST_MINIMUM
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error(
        "mounts: sharing host directories as a normal user needs the Rust virtiofsd, and this host has only QEMU {qemu}'s C one, which runs only as root; install the Rust one (scripts/setup-host does, or: apt-get install virtiofsd on Debian 13, cargo install virtiofsd), or remove mounts from {config}"
    )]
    NotRoot { qemu: String, config: PathBuf },
    #[error(
        "mounts[{index}] ({location}) is writable, but the only virtiofsd here is QEMU {qemu}'s C one, which would let the guest's root create root-owned and setuid files and device nodes on this host; install the Rust virtiofsd (scripts/setup-host does, or: apt-get install virtiofsd on Debian 13, cargo install virtiofsd), or make the mount read-only in {config}",
        location = location.display()
    )]
    UnsafeWritable {
        index: usize,
        location: PathBuf,
        qemu: String,
        config: PathBuf,
    },
    #[error(
        "mounts: the Rust virtiofsd {path} is version {version}; vmkeep needs {}.{} or later to map the guest's users; update it (cargo install virtiofsd)",
        RUST_MINIMUM.0, RUST_MINIMUM.1,
        path = path.display()
    )]
    TooOld { path: PathBuf, version: String },
    /// virtiofsd is Linux only (vhost-user, namespaces, seccomp).
    #[error(
        "mounts: sharing host directories needs virtiofsd, which runs on Linux only: vmkeep cannot share directories on this host yet; remove mounts from {}",
        config.display()
    )]
    NotOnThisHost { config: PathBuf },
    #[error(
        "mounts: no virtiofsd was found (looked for {} and ${OVERRIDE_VAR}); install the Rust virtiofsd: scripts/setup-host does, or apt-get install virtiofsd (Debian 13 and later), or cargo install virtiofsd",
        CANDIDATES.join(", ")
    )]
    Missing,
    #[error(
        "mounts: the only virtiofsd here is QEMU {c}'s C one, which does not go with QEMU {qemu} (QEMU 8.0 dropped it, and it cannot be suspended with a VM); install the Rust virtiofsd (scripts/setup-host does, or: apt-get install virtiofsd on Debian 13, cargo install virtiofsd)"
    )]
    CBesideNewQemu {
        c: String,
        qemu: crate::driver::qemu::qmp::QemuVersion,
    },
    #[error("{OVERRIDE_VAR}={}: {problem}", path.display())]
    Override { path: PathBuf, problem: String },
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
    #[error("mounts[{index}] ({}) {source}; fix it in {config}", location.display())]
    Owner {
        index: usize,
        location: PathBuf,
        source: share_owner::OwnerError,
        config: PathBuf,
    },
    #[error("mountOwner: {owner}: {problem}; fix it in {config}")]
    UnknownOwner {
        owner: String,
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

/// One share, ready to be served: by which virtiofsd, as whom, and who the
/// owner's files are in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub share: SharedDir,
    pub daemon: Virtiofsd,
    pub owner: ShareOwner,
    /// The guest user the owner's files belong to in the guest.
    pub guest: Ids,
    /// Who runs vmkeep.
    pub running_as: Ids,
}

/// The virtiofsd command line for one share, listening on the inherited
/// descriptor `socket_fd` (pure).
pub fn program(plan: &Plan, socket_fd: std::os::fd::RawFd) -> Program {
    let share = &plan.share;
    let args: Vec<String> = match &plan.daemon.flavour {
        Flavour::C { .. } => vec![
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
        Flavour::Rust { .. } => {
            let (owner, guest) = (plan.owner.ids, plan.guest);
            let mut args = vec![
                format!("--fd={socket_fd}"),
                format!("--shared-dir={}", share.location.display()),
                "--cache=auto".into(),
                "--sandbox=namespace".into(),
                "--announce-submounts".into(),
                // Every uid and gid the guest names becomes the owner's...
                format!("--translate-uid=squash-guest:0:{}:4294967295", owner.uid),
                format!("--translate-gid=squash-guest:0:{}:4294967295", owner.gid),
                // ...and the owner's files are the guest user's.
                format!("--translate-uid=host:{}:{}:1", owner.uid, guest.uid),
                format!("--translate-gid=host:{}:{}:1", owner.gid, guest.gid),
                // A suspend (QEMU 8.2 and later) carries the paths of what
                // the guest holds open into the saved state; one the host
                // removed meanwhile fails that one file in the guest
                // (EIO) instead of the whole resume.
                "--migration-on-error=guest-error".into(),
            ];
            if !share.writable {
                args.push("--readonly".into());
            }
            args
        }
    };
    Program::new(&plan.daemon.path, &args)
}

/// What runs around virtiofsd (pure): the filter always, the read-only
/// namespace for a read-only share, the owner's identity when vmkeep runs
/// as root and the owner is not root (with the owner's groups, which the
/// shim looks up: see [`Groups::OfTheUser`]).
pub fn sandbox(plan: &Plan) -> Sandbox {
    let owner = plan.owner.ids;
    let switch = plan.running_as.is_root() && !owner.is_root();
    Sandbox {
        read_only_tree: (!plan.share.writable).then(|| plan.share.location.clone()),
        identity: switch.then_some(Identity {
            uid: owner.uid,
            gid: owner.gid,
            groups: Groups::OfTheUser,
        }),
        no_privileged_files: true,
    }
}

/// The version a binary reports, if it is a virtiofsd.
fn probe(path: &Path) -> Option<Virtiofsd> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let flavour = flavour_of(&String::from_utf8_lossy(&out.stdout))?;
    Some(Virtiofsd {
        path: path.to_path_buf(),
        flavour,
    })
}

/// The virtiofsds installed: `VMKEEP_VIRTIOFSD` alone when set, else every
/// candidate that answers as one, the Rust ones first.
pub fn find_installed() -> Result<Vec<Virtiofsd>, VirtiofsError> {
    if let Some(path) = std::env::var_os(OVERRIDE_VAR).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return probe(&path)
            .map(|found| vec![found])
            .ok_or_else(|| VirtiofsError::Override {
                problem: "is not a virtiofsd (its --version says nothing known)".into(),
                path,
            });
    }
    let mut found: Vec<Virtiofsd> = CANDIDATES
        .iter()
        .map(Path::new)
        .filter(|p| p.is_file())
        .filter_map(probe)
        .collect();
    found.sort_by_key(|d| !d.is_rust());
    if found.is_empty() {
        return Err(VirtiofsError::Missing);
    }
    Ok(found)
}

/// The virtiofsd to serve `share` with (pure): the first Rust one, else the
/// C one for a read-only share run by root, else the refusal naming the fix.
pub fn choose(
    installed: &[Virtiofsd],
    share: &SharedDir,
    running_as: Ids,
    qemu: Capabilities,
    config: &Path,
) -> Result<Virtiofsd, VirtiofsError> {
    if let Some(rust) = installed.iter().find(|d| d.is_rust()) {
        if let Flavour::Rust { version } = &rust.flavour
            && !recent_enough(version)
        {
            return Err(VirtiofsError::TooOld {
                path: rust.path.clone(),
                version: version.clone(),
            });
        }
        return Ok(rust.clone());
    }
    let Some(c) = installed.first() else {
        return Err(VirtiofsError::Missing);
    };
    let Flavour::C { version } = &c.flavour else {
        unreachable!("no Rust virtiofsd among them");
    };
    if !qemu.accepts_c_virtiofsd() {
        return Err(VirtiofsError::CBesideNewQemu {
            c: version.clone(),
            qemu: qemu.version(),
        });
    }
    if !running_as.is_root() {
        return Err(VirtiofsError::NotRoot {
            qemu: version.clone(),
            config: config.to_path_buf(),
        });
    }
    if share.writable {
        return Err(VirtiofsError::UnsafeWritable {
            index: share.index,
            location: share.location.clone(),
            qemu: version.clone(),
            config: config.to_path_buf(),
        });
    }
    Ok(c.clone())
}

/// The ids of `mountOwner:`, from the user and group databases.
fn resolve_owner(owner: &MountOwner, config: &Path) -> Result<Ids, VirtiofsError> {
    use share_owner::NameOrId;
    let unknown = |problem: String| VirtiofsError::UnknownOwner {
        owner: owner.to_string(),
        problem,
        config: config.to_path_buf(),
    };
    let user = match &owner.user {
        NameOrId::Name(name) => identity::user_by_name(name)
            .map_err(|e| unknown(e.to_string()))?
            .ok_or_else(|| unknown(format!("no user {name} on this host")))?,
        NameOrId::Id(uid) => {
            match identity::user_by_uid(*uid).map_err(|e| unknown(e.to_string()))? {
                Some(user) => user,
                None if owner.group.is_some() => identity::User {
                    name: String::new(),
                    uid: *uid,
                    gid: u32::MAX,
                    home: PathBuf::new(),
                },
                None => return Err(unknown(format!("no user has uid {uid}; write UID:GID"))),
            }
        }
    };
    let gid = match &owner.group {
        None => user.gid,
        Some(NameOrId::Id(gid)) => *gid,
        Some(NameOrId::Name(name)) => identity::group_by_name(name)
            .map_err(|e| unknown(e.to_string()))?
            .ok_or_else(|| unknown(format!("no group {name} on this host")))?,
    };
    Ok(Ids { uid: user.uid, gid })
}

/// Who runs vmkeep.
fn running_as() -> Ids {
    Ids {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

/// What can be checked before anything is started: the virtiofsd, each
/// location (made if missing, as Lima does, then a directory), who serves
/// each share. `guest`: whom the owner's files belong to in the guest.
pub fn preflight(
    shares: &[SharedDir],
    config: &Path,
    mount_owner: Option<&MountOwner>,
    guest: Ids,
    qemu: Capabilities,
) -> Result<Vec<Plan>, VirtiofsError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    if !cfg!(target_os = "linux") {
        return Err(VirtiofsError::NotOnThisHost {
            config: config.to_path_buf(),
        });
    }
    let installed = find_installed()?;
    let running_as = running_as();
    let configured = mount_owner
        .map(|owner| resolve_owner(owner, config))
        .transpose()?;
    let mut plans = Vec::new();
    for share in shares {
        let problem = |problem: String| VirtiofsError::Location {
            index: share.index,
            location: share.location.clone(),
            problem,
            config: config.to_path_buf(),
        };
        let daemon = choose(&installed, share, running_as, qemu, config)?;
        if !share.location.exists() {
            std::fs::create_dir_all(&share.location)
                .map_err(|e| problem(format!("does not exist and cannot be created ({e})")))?;
            // Made by root for a configured owner: the owner's.
            if let Some(owner) = configured.filter(|_| running_as.is_root()) {
                std::os::unix::fs::chown(&share.location, Some(owner.uid), Some(owner.gid))
                    .map_err(|e| {
                        problem(format!("was made but cannot be given to its owner ({e})"))
                    })?;
            }
        }
        if !share.location.is_dir() {
            return Err(problem("is not a directory".into()));
        }
        let (uid, gid) = identity::owner_of(&share.location)
            .map_err(|e| problem(format!("cannot be inspected ({e})")))?;
        let owner = share_owner::decide(&OwnerFacts {
            running_as,
            configured,
            location_owner: Ids { uid, gid },
            writable: share.writable,
        })
        .map_err(|source| VirtiofsError::Owner {
            index: share.index,
            location: share.location.clone(),
            source,
            config: config.to_path_buf(),
        })?;
        plans.push(Plan {
            share: share.clone(),
            daemon,
            owner,
            guest,
            running_as,
        });
    }
    Ok(plans)
}

/// Start the virtiofsd of `plan` through the sandbox shim at `shim` (the
/// `vmkeep` binary beside the host agent: see `os::confine`), in its own
/// process group and, under systemd, its own scope, so that it outlives the
/// host agent as QEMU does, and wait until it listens.
pub fn start(
    plan: &Plan,
    dir: &InstanceDir,
    scope: Option<(&Placement, &Scope)>,
    shim: &Path,
) -> Result<ProcessHandle, VirtiofsError> {
    let share = &plan.share;
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
    let mut program = sandbox(plan).wrap(shim, &program(plan, listener.as_raw_fd()));
    if let Some((placement, scope)) = scope {
        program = cgroup::wrap(placement, scope, &program);
    }
    let holding = Holding {
        lock_file: Some(lock),
        inherit_fd: Some(listener.as_raw_fd()),
    };
    let process = confine::spawn_in_own_group(&program, log, &holding).map_err(spawn_err)?;
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

    fn share(writable: bool) -> SharedDir {
        SharedDir {
            index: 1,
            location: "/home/a,b".into(),
            mount_point: "/src".into(),
            writable,
        }
    }

    fn rust() -> Virtiofsd {
        Virtiofsd {
            path: "/usr/libexec/virtiofsd".into(),
            flavour: Flavour::Rust {
                version: "1.14.0".into(),
            },
        }
    }

    fn c() -> Virtiofsd {
        Virtiofsd {
            path: "/usr/lib/qemu/virtiofsd".into(),
            flavour: Flavour::C {
                version: "7.2.22".into(),
            },
        }
    }

    fn q72() -> Capabilities {
        Capabilities::of(crate::driver::qemu::qmp::QemuVersion {
            major: 7,
            minor: 2,
            micro: 22,
        })
    }

    const ALICE: Ids = Ids {
        uid: 1000,
        gid: 1000,
    };

    fn plan(daemon: Virtiofsd, writable: bool, running_as: Ids, guest: Ids) -> Plan {
        Plan {
            share: share(writable),
            daemon,
            owner: ShareOwner {
                ids: ALICE,
                reason: share_owner::OwnerReason::DirectoryOwner,
            },
            guest,
            running_as,
        }
    }

    fn args(program: &Program) -> Vec<String> {
        program
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_rust_virtiofsd_squashes_every_guest_id_to_the_owner() {
        let program = program(&plan(rust(), true, Ids::ROOT, Ids::ROOT), 7);
        assert_eq!(program.path, Path::new("/usr/libexec/virtiofsd"));
        assert_eq!(
            args(&program),
            [
                "--fd=7",
                "--shared-dir=/home/a,b",
                "--cache=auto",
                "--sandbox=namespace",
                "--announce-submounts",
                "--translate-uid=squash-guest:0:1000:4294967295",
                "--translate-gid=squash-guest:0:1000:4294967295",
                "--translate-uid=host:1000:0:1",
                "--translate-gid=host:1000:0:1",
                "--migration-on-error=guest-error",
            ]
        );
        let guest_user = Ids {
            uid: 1001,
            gid: 1001,
        };
        let read_only = args(&program_of(&plan(rust(), false, ALICE, guest_user)));
        assert!(read_only.contains(&"--translate-uid=host:1000:1001:1".to_string()));
        assert_eq!(read_only.last().unwrap(), "--readonly");
        assert!(!read_only.iter().any(|a| a.contains("xattr")), "no xattrs");
    }

    fn program_of(plan: &Plan) -> Program {
        program(plan, 3)
    }

    #[test]
    fn the_c_virtiofsd_is_given_the_share_its_socket_and_its_sandbox() {
        assert_eq!(
            args(&program(&plan(c(), false, Ids::ROOT, Ids::ROOT), 7)),
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
    fn the_sandbox_filters_always_drops_root_and_is_read_only_when_asked() {
        let as_root = sandbox(&plan(rust(), true, Ids::ROOT, Ids::ROOT));
        assert!(as_root.no_privileged_files);
        assert_eq!(as_root.read_only_tree, None);
        assert_eq!(
            as_root.identity,
            Some(Identity {
                uid: 1000,
                gid: 1000,
                groups: Groups::OfTheUser
            })
        );
        let as_alice = sandbox(&plan(rust(), false, ALICE, Ids::ROOT));
        assert_eq!(as_alice.identity, None, "no switch for a normal user");
        assert_eq!(as_alice.read_only_tree, Some("/home/a,b".into()));
        let mut root_owned = plan(c(), false, Ids::ROOT, Ids::ROOT);
        root_owned.owner.ids = Ids::ROOT;
        assert_eq!(sandbox(&root_owned).identity, None);
    }

    #[test]
    fn versions_tell_the_two_virtiofsds_apart() {
        assert_eq!(
            flavour_of("virtiofsd 1.14.0\n"),
            Some(Flavour::Rust {
                version: "1.14.0".into()
            })
        );
        assert_eq!(
            flavour_of(
                "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022\n"
            ),
            Some(Flavour::C {
                version: "7.2.22".into()
            })
        );
        for other in [
            "",
            "qemu-img version 7.2",
            "virtiofsd",
            "virtiofsd banana\n",
        ] {
            assert_eq!(flavour_of(other), None, "{other:?}");
        }
        assert!(recent_enough("1.14.0") && recent_enough("1.11.1") && recent_enough("2.0"));
        assert!(!recent_enough("1.10.1") && !recent_enough("0.9"));
    }

    #[test]
    fn the_rust_virtiofsd_is_chosen_and_the_c_one_only_for_root_read_only() {
        let config = Path::new("/h/vm/vmkeep.yaml");
        let both = [c(), rust()];
        for writable in [false, true] {
            for running in [Ids::ROOT, ALICE] {
                assert_eq!(
                    choose(&both, &share(writable), running, q72(), config).unwrap(),
                    rust()
                );
            }
        }
        let only_c = [c()];
        assert_eq!(
            choose(&only_c, &share(false), Ids::ROOT, q72(), config).unwrap(),
            c()
        );
        let err = choose(&only_c, &share(true), Ids::ROOT, q72(), config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mounts[1] (/home/a,b) is writable")
                && err.contains("setuid")
                && err.contains("install the Rust virtiofsd"),
            "{err}"
        );
        let err = choose(&only_c, &share(false), ALICE, q72(), config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("as a normal user needs the Rust virtiofsd"),
            "{err}"
        );
        let old = Virtiofsd {
            flavour: Flavour::Rust {
                version: "1.10.1".into(),
            },
            ..rust()
        };
        let err = choose(&[old], &share(false), ALICE, q72(), config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1.10.1") && err.contains("1.11 or later"),
            "{err}"
        );
        assert!(matches!(
            choose(&[], &share(false), ALICE, q72(), config),
            Err(VirtiofsError::Missing)
        ));
        // Beside QEMU 8 and later only the Rust one serves.
        let q10 = Capabilities::of(crate::driver::qemu::qmp::QemuVersion {
            major: 10,
            minor: 0,
            micro: 2,
        });
        assert_eq!(
            choose(&both, &share(false), Ids::ROOT, q10, config).unwrap(),
            rust()
        );
        let err = choose(&only_c, &share(false), Ids::ROOT, q10, config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("QEMU 7.2.22's C one, which does not go with QEMU 10.0.2")
                && err.contains("install the Rust virtiofsd"),
            "{err}"
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
        let none = preflight(&[], Path::new("/c"), None, Ids::ROOT, q72()).unwrap();
        assert!(none.is_empty());
        if find_installed().is_err() {
            eprintln!("no virtiofsd here; skipping the location checks");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let share = SharedDir {
            index: 0,
            location: dir.path().join("made/here"),
            mount_point: "/m".into(),
            writable: false,
        };
        match preflight(
            std::slice::from_ref(&share),
            Path::new("/c"),
            None,
            Ids::ROOT,
            q72(),
        ) {
            Ok(plans) => assert_eq!(plans[0].share, share),
            // Only the C virtiofsd, and not root: refused before anything.
            Err(VirtiofsError::NotRoot { .. }) => return,
            Err(e) => panic!("{e}"),
        }
        assert!(share.location.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let not_dir = SharedDir {
            location: file,
            ..share
        };
        let err = preflight(&[not_dir], Path::new("/c"), None, Ids::ROOT, q72())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
