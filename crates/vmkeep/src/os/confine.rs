//! Spawning a helper daemon that must be identifiable and confined without
//! its cooperation (virtiofsd): between fork and exec the child
//!
//! 1. takes a POSIX lock on a file of ours and keeps that descriptor open:
//!    record locks survive `execve`, so the daemon itself holds the lock for
//!    its whole life, and the kernel names it as the holder (`F_GETLK`), as
//!    QEMU's own pid file does (see `os::lock`). Liveness and identity come
//!    from that lock, never from a pid written somewhere;
//! 2. optionally enters a mount namespace of its own in which one directory
//!    tree is bind-mounted onto itself **read-only**, recursively
//!    (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`). Everything the
//!    daemon opens below it is then on a read-only mount: the kernel refuses
//!    every write with `EROFS`, whatever the daemon is asked to do. (The C
//!    virtiofsd then bind-mounts the tree again inside its own sandbox; a
//!    bind mount keeps the read-only flag, and the daemon drops
//!    `CAP_SYS_ADMIN`, so it cannot remount it writable.)
//!
//! Only async-signal-safe system calls run in the child; every path is
//! turned into a C string before the fork.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::process::{ProcessHandle, Program};

/// What the child does before it becomes the program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// Locked (created 0600 if missing) and held by the program.
    pub lock_file: Option<PathBuf>,
    /// Made read-only, recursively, in a mount namespace of the program's own.
    pub read_only_tree: Option<PathBuf>,
    /// A descriptor of ours the program inherits (its close-on-exec flag
    /// cleared in the child only), under the same number.
    pub inherit_fd: Option<std::os::fd::RawFd>,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

fn check(result: libc::c_long) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The steps run in the child. No allocation, no locks.
fn in_child(
    lock: Option<&CString>,
    tree: Option<&CString>,
    inherit: Option<std::os::fd::RawFd>,
) -> io::Result<()> {
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
    if let Some(tree) = tree {
        // SAFETY: unshare and mount are async-signal-safe system calls; every
        // pointer is a valid C string or null where the call allows it.
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
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let recursive = libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                tree.as_ptr(),
                libc::AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            );
            if recursive < 0 {
                // Before Linux 5.12: the top mount only (a mount inside the
                // tree would stay writable, so refuse rather than pretend).
                if *libc::__errno_location() != libc::ENOSYS {
                    return Err(io::Error::last_os_error());
                }
                check(
                    libc::mount(
                        std::ptr::null(),
                        tree.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    )
                    .into(),
                )?;
            }
        }
    }
    Ok(())
}

/// Spawn `program` as our child in its own process group (as
/// `process::spawn_in_own_group` does for QEMU), confined as `confinement`
/// says, its output appended to `log`.
pub fn spawn_in_own_group(
    program: &Program,
    log: File,
    confinement: &Confinement,
) -> io::Result<ProcessHandle> {
    let lock = confinement.lock_file.as_deref().map(c_path).transpose()?;
    let tree = confinement
        .read_only_tree
        .as_deref()
        .map(c_path)
        .transpose()?;
    if tree.is_some()
        && has_mounts_below(confinement.read_only_tree.as_deref())
        && !has_mount_setattr()
    {
        return Err(io::Error::other(
            "this kernel cannot make a directory with mounts below it read-only (mount_setattr needs Linux 5.12)",
        ));
    }
    let mut command = program.command();
    let stderr = log.try_clone()?;
    command.stdout(log).stderr(stderr).process_group(0);
    // SAFETY: the closure only makes async-signal-safe system calls on
    // memory prepared before the fork.
    unsafe {
        let inherit = confinement.inherit_fd;
        command.pre_exec(move || in_child(lock.as_ref(), tree.as_ref(), inherit));
    }
    let child = command.spawn()?;
    super::process::handle_of_child(child.id())
}

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

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn the_program_holds_the_lock_for_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("d.pid");
        let log = super::super::fs::open_append(&dir.path().join("log")).unwrap();
        let child = spawn_in_own_group(
            &Program::new(Path::new("/bin/sleep"), &["30"]),
            log,
            &Confinement {
                lock_file: Some(lock.clone()),
                ..Confinement::default()
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
    fn a_read_only_tree_refuses_writes_to_the_program_only() {
        if !root() {
            eprintln!("not root: mount namespaces need CAP_SYS_ADMIN; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("kept"), "host").unwrap();
        let out = dir.path().join("out");
        let log = super::super::fs::open_append(&out).unwrap();
        let script = format!(
            "echo guest > {0}/kept; echo $? ; touch {0}/new; echo $?; cat {0}/kept",
            tree.display()
        );
        let child = spawn_in_own_group(
            &Program::new(Path::new("/bin/sh"), &["-c", &script]),
            log,
            &Confinement {
                read_only_tree: Some(tree.clone()),
                ..Confinement::default()
            },
        )
        .unwrap();
        assert!(child.wait_timeout(Duration::from_secs(10)));
        child.reap();
        let said = std::fs::read_to_string(&out).unwrap();
        assert!(said.contains("Read-only file system"), "{said}");
        // sh's failed redirection is status 2, touch's failure 1.
        let lines: Vec<&str> = said.lines().collect();
        assert!(
            lines.contains(&"2") && lines.ends_with(&["1", "host"]),
            "{said:?}"
        );
        assert!(!tree.join("new").exists());
        // Outside the program's namespace the tree stays writable.
        std::fs::write(tree.join("kept"), "still mine").unwrap();
    }
}
