//! Spawning a helper daemon that must be identifiable and confined without
//! its cooperation (virtiofsd), in two stages.
//!
//! **Holding**, between fork and exec of whatever we spawn (the daemon, or
//! `systemd-run` that becomes it): the child takes a POSIX lock on a file
//! of ours and keeps that descriptor open. Record locks survive `execve`,
//! so the daemon itself holds the lock for its whole life, and the kernel
//! names it as the holder (`F_GETLK`), as QEMU's own pid file does (see
//! `os::lock`). Liveness and identity come from that lock, never from a pid
//! written somewhere. Only async-signal-safe calls run there; every path is
//! a C string made before the fork.
//!
//! **Sandbox**, applied by the `vmkeep` binary beside the host agent run as
//! a shim (`vmkeep --sandboxed ... -- PROGRAM ARGS`, handled before the
//! command-line parser) right before it becomes the daemon, after any
//! wrapper (`systemd-run --scope`) has done its part as the user who runs
//! vmkeep. It is `vmkeep`, not the agent, because the agent may be a static
//! musl build, whose user database is /etc/passwd and /etc/group alone, and
//! the shim looks up a share owner's groups through the host C library's
//! NSS (LDAP, sssd, systemd-homed). In this order:
//!
//! 1. optionally, a mount namespace of the daemon's own in which one
//!    directory tree is bind-mounted onto itself **read-only**, recursively
//!    (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`): every write the
//!    daemon makes below it fails with `EROFS` in the kernel, whatever it is
//!    asked to do. As root the namespace is a plain mount namespace; as any
//!    other user it is inside a user namespace of our own that maps only
//!    this user to itself (so nothing gains a privilege on the host). The
//!    daemon's own sandbox (virtiofsd makes mount namespaces of its own)
//!    inherits the mount locked read-only: a namespace made by a less
//!    privileged owner cannot remount it;
//! 2. optionally, a switch to another identity (uid, gid, supplementary
//!    groups), from root only: a root-run VM's shares are served as an
//!    unprivileged user (see `instance::shares::ShareOwner`);
//! 3. optionally, the system-call filter of `os::seccomp`: no setuid or
//!    setgid file, no device node, whatever the daemon is asked.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::child_fds::{self, ChildFds};
use super::process::{ProcessHandle, Program};

/// What the child does before it becomes the program (or its wrapper).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holding {
    /// Locked (created 0600 if missing) and held by the program.
    pub lock_file: Option<PathBuf>,
    /// A descriptor of ours the program inherits (its close-on-exec flag
    /// cleared in the child only), under the same number.
    pub inherit_fd: Option<std::os::fd::RawFd>,
}

/// An identity to run as: set from root only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one may be among them).
    pub groups: Groups,
}

/// The supplementary groups of an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// These.
    These(Vec<u32>),
    /// The user database's, looked up by the shim: those of the user with
    /// the identity's uid when its primary group is the identity's gid,
    /// else that gid alone. The shim asks, not the host agent: a lookup
    /// loads the C library's NSS modules into the process that makes it
    /// for the rest of its life (~0.5 MiB resident, docs/memory.md), and
    /// the shim becomes the daemon while the agent lives on.
    OfTheUser,
}

/// How [`Groups::OfTheUser`] reads on the shim's command line.
const GROUPS_OF_THE_USER: &str = "@user";

impl Identity {
    /// The supplementary groups to set (asking the user database for
    /// [`Groups::OfTheUser`]).
    #[cfg(target_os = "linux")]
    fn groups_to_set(&self) -> Vec<u32> {
        match &self.groups {
            Groups::These(groups) => groups.clone(),
            Groups::OfTheUser => match super::identity::user_by_uid(self.uid) {
                Ok(Some(user)) if user.gid == self.gid => {
                    super::identity::groups_of(&user.name, self.gid)
                }
                _ => vec![self.gid],
            },
        }
    }
}

/// What the shim does right before it becomes the program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sandbox {
    /// Made read-only, recursively, in a mount namespace of the program's own.
    pub read_only_tree: Option<PathBuf>,
    /// Who the program runs as (from root only).
    pub identity: Option<Identity>,
    /// The program may make no setuid/setgid file and no device node.
    pub no_privileged_files: bool,
}

/// The shim's first argument.
pub const SHIM_FLAG: &str = "--sandboxed";
const READ_ONLY: &str = "--read-only-tree=";
const RUN_AS: &str = "--as=";
const NO_PRIVILEGED_FILES: &str = "--no-privileged-files";

impl Sandbox {
    /// Whether there is anything to do (else the program runs as it is).
    pub fn is_empty(&self) -> bool {
        self == &Sandbox::default()
    }

    /// `program` run through the shim at `shim` (the `vmkeep` binary).
    pub fn wrap(&self, shim: &Path, program: &Program) -> Program {
        let mut args: Vec<OsString> = vec![SHIM_FLAG.into()];
        if let Some(tree) = &self.read_only_tree {
            let mut arg = OsString::from(READ_ONLY);
            arg.push(tree);
            args.push(arg);
        }
        if let Some(id) = &self.identity {
            let groups = match &id.groups {
                Groups::These(groups) => {
                    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
                    groups.join(",")
                }
                Groups::OfTheUser => GROUPS_OF_THE_USER.to_owned(),
            };
            args.push(format!("{RUN_AS}{}:{}:{groups}", id.uid, id.gid).into());
        }
        if self.no_privileged_files {
            args.push(NO_PRIVILEGED_FILES.into());
        }
        args.push("--".into());
        args.push(program.path.clone().into_os_string());
        args.extend(program.args.iter().cloned());
        Program {
            path: shim.to_path_buf(),
            args,
            env: program.env.clone(),
        }
    }

    /// The shim's command line (after [`SHIM_FLAG`]): the sandbox and the
    /// program it runs.
    pub fn parse(args: &[OsString]) -> Result<(Sandbox, Program), String> {
        let mut sandbox = Sandbox::default();
        let mut rest = args.iter();
        for arg in rest.by_ref() {
            let bytes = arg.as_bytes();
            if bytes == b"--" {
                break;
            } else if let Some(tree) = bytes.strip_prefix(READ_ONLY.as_bytes()) {
                let tree = PathBuf::from(OsStr::from_bytes(tree));
                if !tree.is_absolute() {
                    return Err(format!("{READ_ONLY} needs an absolute path"));
                }
                sandbox.read_only_tree = Some(tree);
            } else if let Some(id) = bytes.strip_prefix(RUN_AS.as_bytes()) {
                sandbox.identity = Some(parse_identity(&String::from_utf8_lossy(id))?);
            } else if bytes == NO_PRIVILEGED_FILES.as_bytes() {
                sandbox.no_privileged_files = true;
            } else {
                return Err(format!("unknown option {}", arg.to_string_lossy()));
            }
        }
        let mut program = rest.cloned();
        let path = program.next().ok_or("no program to run after --")?;
        Ok((
            sandbox,
            Program {
                path: PathBuf::from(path),
                args: program.collect(),
                env: Vec::new(),
            },
        ))
    }

    /// Apply the sandbox to this process (the shim: one thread, nothing
    /// else to disturb), in the order the module documents.
    #[cfg(not(target_os = "linux"))]
    pub fn enter(&self) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the sandbox of shared-directory daemons (namespaces, seccomp) needs Linux",
        ))
    }

    /// Apply the sandbox to this process (the shim: one thread, nothing
    /// else to disturb), in the order the module documents.
    #[cfg(target_os = "linux")]
    pub fn enter(&self) -> io::Result<()> {
        // Everything is prepared before the first step changes anything.
        let filter = if self.no_privileged_files {
            Some(super::seccomp::no_privileged_files().map_err(io::Error::other)?)
        } else {
            None
        };
        let identity = self.identity.as_ref().map(|id| (id, id.groups_to_set()));
        if let Some(tree) = &self.read_only_tree {
            let tree = c_path(tree)?;
            let uid = rustix::process::geteuid();
            if !uid.is_root() {
                own_user_namespace(uid.as_raw(), rustix::process::getegid().as_raw())?;
            }
            read_only_mount_namespace(&tree, has_mounts_below(self.read_only_tree.as_deref()))?;
        }
        if let Some((id, groups)) = &identity {
            switch_identity(id, groups)?;
        }
        if let Some(filter) = &filter {
            super::seccomp::install(filter).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

fn parse_identity(text: &str) -> Result<Identity, String> {
    let bad = || {
        format!("{RUN_AS}{text}: expected UID:GID:GROUP,GROUP... or UID:GID:{GROUPS_OF_THE_USER}")
    };
    let mut parts = text.splitn(3, ':');
    let number = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok()).ok_or_else(bad);
    let uid = number(parts.next())?;
    let gid = number(parts.next())?;
    let groups = match parts.next() {
        None | Some("") => Groups::These(Vec::new()),
        Some(GROUPS_OF_THE_USER) => Groups::OfTheUser,
        Some(list) => Groups::These(
            list.split(',')
                .map(|g| g.parse::<u32>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Identity { uid, gid, groups })
}

/// The shim: apply the sandbox and become the program; returns only on
/// failure (the process exit code; the reason is on stderr, which is the
/// daemon's log).
pub fn run_shim(args: &[OsString]) -> i32 {
    let (sandbox, program) = match Sandbox::parse(args) {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("vmkeep sandbox: {problem}");
            return 2;
        }
    };
    if let Err(e) = sandbox.enter() {
        eprintln!(
            "vmkeep sandbox: cannot confine {}: {e}",
            program.path.display()
        );
        return 126;
    }
    let e = program.command().exec();
    eprintln!("vmkeep sandbox: cannot run {}: {e}", program.path.display());
    127
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

fn check(result: libc::c_long) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
/// A user namespace in which this (unprivileged) user is itself, and
/// nobody else exists: enough to own a mount namespace, nothing more.
fn own_user_namespace(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: unshare has no memory arguments.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot make a user namespace: {e}")))?;
    // Without "deny", an unprivileged process may not write its gid_map.
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

#[cfg(target_os = "linux")]
/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[cfg(target_os = "linux")]
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[cfg(target_os = "linux")]
/// A mount namespace where `tree` is bind-mounted onto itself read-only,
/// recursively (refused on a kernel that could make only its top mount
/// read-only while mounts lie below it).
fn read_only_mount_namespace(tree: &CString, mounts_below: bool) -> io::Result<()> {
    if mounts_below && !has_mount_setattr() {
        return Err(io::Error::other(
            "this kernel cannot make a directory with mounts below it read-only (mount_setattr needs Linux 5.12)",
        ));
    }
    // SAFETY: unshare and mount take valid C strings or null where the call
    // allows it.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(
            libc::mount(
                tree.as_ptr(),
                tree.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
            .into(),
        )?;
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid C string and a mount_attr of the size given.
    let recursive = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            tree.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if recursive < 0 {
        let error = io::Error::last_os_error();
        // Before Linux 5.12: the top mount only (nothing is mounted below,
        // checked above).
        if error.raw_os_error() != Some(libc::ENOSYS) {
            return Err(error);
        }
        // SAFETY: as above.
        check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    tree.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                )
            }
            .into(),
        )?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
/// Become `id` for good (real, effective and saved ids), groups first.
fn switch_identity(id: &Identity, groups: &[u32]) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: groups points to groups.len() gids; the id calls take numbers.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()).into())?;
        check(libc::setresgid(id.gid, id.gid, id.gid).into())?;
        check(libc::setresuid(id.uid, id.uid, id.uid).into())?;
    }
    if rustix::process::geteuid().as_raw() != id.uid
        || rustix::process::getegid().as_raw() != id.gid
    {
        return Err(io::Error::other("the identity switch did not take"));
    }
    Ok(())
}

/// The steps run in the child of a spawn. No allocation, no locks.
fn hold(lock: Option<&CString>, inherit: Option<std::os::fd::RawFd>) -> io::Result<()> {
    if let Some(fd) = inherit {
        // SAFETY: fcntl(F_SETFD) on a descriptor the parent keeps open
        // until the spawn returned; async-signal-safe.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }.into())?;
    }
    if let Some(lock) = lock {
        // SAFETY: a valid C string; open(2) is async-signal-safe. The
        // descriptor is deliberately not close-on-exec: the program keeps it
        // (and so the lock).
        let fd = unsafe { libc::open(lock.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        check(fd.into())?;
        // SAFETY: flock is plain old data.
        let mut request: libc::flock = unsafe { std::mem::zeroed() };
        request.l_type = libc::F_WRLCK as libc::c_short;
        request.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl(F_SETLK) with a valid flock on our descriptor.
        check(unsafe { libc::fcntl(fd, libc::F_SETLK, &request) }.into())?;
    }
    Ok(())
}

/// Spawn `program` as our child in its own process group (as
/// `process::spawn_in_own_group` does for QEMU), holding what `holding`
/// says, its output appended to `log`, nothing else of ours or of our
/// caller's, in a descriptor table grown for its life (`child_fds`).
pub fn spawn_in_own_group(
    program: &Program,
    log: File,
    holding: &Holding,
) -> io::Result<ProcessHandle> {
    let lock = holding.lock_file.as_deref().map(c_path).transpose()?;
    let mut command = program.command();
    let stderr = log.try_clone()?;
    command.stdout(log).stderr(stderr).process_group(0);
    let fds = ChildFds::with_slots(child_fds::SERVER_SLOTS);
    // SAFETY: the closure only makes async-signal-safe system calls on
    // memory prepared before the fork.
    unsafe {
        let inherit = holding.inherit_fd;
        command.pre_exec(move || {
            // First: what `hold` passes on is not closed at exec.
            fds.apply()?;
            hold(lock.as_ref(), inherit)
        });
    }
    let child = command.spawn()?;
    super::process::handle_of_child(child.id())
}

#[cfg(target_os = "linux")]
/// Whether anything is mounted below `tree` (from `/proc/self/mountinfo`).
fn has_mounts_below(tree: Option<&Path>) -> bool {
    let Some(tree) = tree else { return false };
    let prefix = format!("{}/", tree.display().to_string().trim_end_matches('/'));
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|mount_point| mount_point.starts_with(&prefix))
        })
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
/// Whether the kernel has `mount_setattr(2)` (Linux 5.12).
fn has_mount_setattr() -> bool {
    // SAFETY: an invalid call (flags out of range) that only tells whether
    // the system call exists.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<MountAttr>(),
            0,
        )
    };
    !(result < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_program_holds_the_lock_for_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("d.pid");
        let log = super::super::fs::open_append(&dir.path().join("log")).unwrap();
        let child = spawn_in_own_group(
            &Program::new(Path::new("/bin/sleep"), &["30"]),
            log,
            &Holding {
                lock_file: Some(lock.clone()),
                ..Holding::default()
            },
        )
        .unwrap();
        let holder = super::super::lock::holder(&lock).unwrap();
        assert_eq!(
            holder.map(|p| p.as_raw_nonzero().get() as u32),
            Some(child.pid()),
            "the exec'd program is the holder"
        );
        child.kill().unwrap();
        assert!(child.wait_timeout(Duration::from_secs(5)));
        child.reap();
        assert_eq!(super::super::lock::holder(&lock).unwrap(), None);
    }

    #[test]
    fn the_shim_command_line_round_trips() {
        let sandbox = Sandbox {
            read_only_tree: Some("/home/a b/src".into()),
            identity: Some(Identity {
                uid: 1000,
                gid: 100,
                groups: Groups::These(vec![100, 27]),
            }),
            no_privileged_files: true,
        };
        let program = Program::new(Path::new("/usr/libexec/virtiofsd"), &["--fd=3", "--"]);
        let wrapped = sandbox.wrap(Path::new("/opt/vmkeep-hostagent"), &program);
        assert_eq!(wrapped.path, Path::new("/opt/vmkeep-hostagent"));
        assert_eq!(wrapped.args[0], SHIM_FLAG);
        let (parsed, inner) = Sandbox::parse(&wrapped.args[1..]).unwrap();
        assert_eq!(parsed, sandbox);
        let of_the_user = Sandbox {
            identity: Some(Identity {
                uid: 1000,
                gid: 100,
                groups: Groups::OfTheUser,
            }),
            ..sandbox.clone()
        };
        let wrapped_for_user = of_the_user.wrap(Path::new("/s"), &program);
        let (parsed, _) = Sandbox::parse(&wrapped_for_user.args[1..]).unwrap();
        assert_eq!(parsed, of_the_user, "the groups left to the shim");
        assert_eq!(inner.path, program.path);
        assert_eq!(inner.args, program.args, "a -- of the program's is its own");
        let empty = Sandbox::default();
        assert!(empty.is_empty());
        let (parsed, _) = Sandbox::parse(&empty.wrap(Path::new("/s"), &program).args[1..]).unwrap();
        assert!(parsed.is_empty());
    }

    #[test]
    fn a_bad_shim_command_line_is_refused() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        for (bad, problem) in [
            (args(&["--"]), "no program"),
            (args(&["--read-only-tree=rel", "--", "x"]), "absolute"),
            (args(&["--as=1000", "--", "x"]), "UID:GID"),
            (args(&["--as=a:b:", "--", "x"]), "UID:GID"),
            (args(&["--as=1:2:x", "--", "x"]), "UID:GID"),
            (args(&["--frobnicate", "--", "x"]), "unknown option"),
        ] {
            let err = Sandbox::parse(&bad).unwrap_err();
            assert!(err.contains(problem), "{bad:?}: {err}");
        }
        let (sandbox, _) = Sandbox::parse(&args(&["--as=5:6:", "--", "x"])).unwrap();
        assert_eq!(sandbox.identity.unwrap().groups, Groups::These(Vec::new()));
    }
}
