//! Thin, checked wrappers over the system calls the agent needs.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A C string from a path or text; interior NUL bytes are an error.
pub fn cstring(text: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(text.as_ref().to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_encoded_bytes())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = path_cstring(target)?;
    let fstype = cstring(fstype)?;
    let data = cstring(data)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = path_cstring(target)?;
    // SAFETY: target is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// finit_module(2) with no parameters.
pub fn finit_module(module: &File) -> io::Result<()> {
    let params = c"";
    // SAFETY: the fd is open for the duration of the call, params is NUL-terminated.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            params.as_ptr(),
            0,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// kill(2); "no such process" is reported as an error like any other.
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) })
}

pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// syncfs(2) of the file system holding `path`; failures are ignored (a
/// power-off goes on).
pub fn syncfs(path: &Path) {
    if let Ok(file) = File::open(path) {
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe { libc::syncfs(file.as_raw_fd()) };
    }
}

/// The size in bytes of the block device open as `device` (BLKGETSIZE64).
pub fn block_device_size(device: &File) -> io::Result<u64> {
    const BLKGETSIZE64: u32 = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the descriptor is open; the ioctl writes one u64 into `size`.
    check(unsafe { libc::ioctl(device.as_raw_fd(), BLKGETSIZE64 as libc::Ioctl, &mut size) })?;
    Ok(size)
}

/// Grow the mounted ext2/3/4 file system whose mount point is open as
/// `mount` to `blocks` blocks, online (EXT4_IOC_RESIZE_FS, as resize2fs
/// does it; the kernel adds the block groups and their metadata).
pub fn ext4_resize(mount: &File, blocks: u64) -> io::Result<()> {
    const EXT4_IOC_RESIZE_FS: u32 = 0x4008_6610;
    // SAFETY: the descriptor is open; the ioctl reads one u64 from `blocks`.
    check(unsafe {
        libc::ioctl(
            mount.as_raw_fd(),
            EXT4_IOC_RESIZE_FS as libc::Ioctl,
            &blocks,
        )
    })
}

/// reboot(RB_POWER_OFF): only returns on failure.
pub fn power_off_now() -> io::Error {
    // SAFETY: reboot has no memory-safety preconditions.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// reboot(RB_AUTOBOOT): only returns on failure.
pub fn reboot_now() -> io::Error {
    // SAFETY: reboot has no memory-safety preconditions.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether file descriptor `fd` is open.
pub fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Make `fd` non-blocking.
pub fn set_nonblocking(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// poll(2) on one descriptor; returns the received events (0 on timeout).
pub fn poll_one(
    fd: libc::c_int,
    events: libc::c_short,
    timeout_ms: libc::c_int,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n >= 0 {
            return Ok(if n == 0 { 0 } else { pfd.revents });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// read(2) into `buf`.
pub fn read(fd: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// write(2) from `buf`.
pub fn write(fd: libc::c_int, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> io::Result<i64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    check(unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) })?;
    Ok(now.tv_sec * 1_000_000_000 + now.tv_nsec)
}

/// Step `CLOCK_REALTIME` by `delta_ns` (read, add, set: the two calls are
/// microseconds apart, far below what the host can measure over the
/// channel). Returns the new time.
pub fn step_realtime(delta_ns: i64) -> io::Result<i64> {
    let target = realtime_ns()?
        .checked_add(delta_ns)
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the clock would leave its range",
            )
        })?;
    let when = libc::timespec {
        tv_sec: (target / 1_000_000_000) as _,
        tv_nsec: (target % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec through a valid pointer.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &when) })?;
    Ok(target)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: name is valid for name.len() bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// A directory below `root` (`path` relative to it, `.` for `root`
/// itself), opened `O_PATH`, resolved by the kernel beneath `root` only:
/// no `..` out of it, no symlink, no other mount on the way (openat2(2)
/// with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`).
pub fn open_dir_beneath(
    root: &std::os::fd::OwnedFd,
    path: &str,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let path = cstring(path)?;
    // SAFETY: open_how is plain old data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: the path is NUL-terminated and `how` is valid for its size;
    // the descriptor returned is ours alone.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Set the modification time of `name` in directory `dir` (never following
/// a symlink: a link is touched itself) to what it is on the file system
/// now, read afresh (`AT_STATX_FORCE_SYNC`: a network file system such as
/// virtio-fs asks its server). Nothing but the times' change remains; the
/// kernel raises `IN_MODIFY` for it (a change of the modification time
/// alone). `name` is one path component, or empty for `dir` itself.
pub fn touch_mtime(dir: &std::os::fd::OwnedFd, name: &str) -> io::Result<()> {
    let (name, flags) = match name {
        "" => (cstring("")?, libc::AT_EMPTY_PATH),
        name => (cstring(name)?, libc::AT_SYMLINK_NOFOLLOW),
    };
    // SAFETY: statx is plain old data, filled by the call.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated; stat is a valid, writable statx.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_MTIME,
            &mut stat,
        )
    })?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: stat.stx_mtime.tv_sec as _,
            tv_nsec: stat.stx_mtime.tv_nsec as libc::c_long,
        },
    ];
    // SAFETY: name is NUL-terminated and times holds two timespecs.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
}

/// An error as the host is told of it: the C library's text, except for the
/// Linux errnos that musl (the agent's C library) has no text for, which it
/// would call "No error information" (a damaged ext4 gives `EUCLEAN`).
pub fn error_text(error: &io::Error) -> String {
    let linux_text = match error.raw_os_error() {
        Some(libc::EUCLEAN) => "Structure needs cleaning",
        Some(libc::EREMOTEIO) => "Remote I/O error",
        Some(libc::EMEDIUMTYPE) => "Wrong medium type",
        Some(libc::ENOMEDIUM) => "No medium found",
        _ => return error.to_string(),
    };
    let code = error.raw_os_error().unwrap_or_default();
    format!("{linux_text} (os error {code})")
}

#[cfg(test)]
mod error_text_tests {
    use super::*;

    #[test]
    fn a_damaged_file_system_is_named_whatever_the_c_library() {
        let unclean = io::Error::from_raw_os_error(libc::EUCLEAN);
        assert_eq!(
            error_text(&unclean),
            "Structure needs cleaning (os error 117)"
        );
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(error_text(&missing), missing.to_string());
    }
}
