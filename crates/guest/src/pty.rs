//! Pseudo-terminals for interactive sessions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vmkeep_protocol::session::WindowSize;

/// A new pty: the master stays with the agent, the slave goes to the command.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Open a pty of `size`. With `owner` (uid, gid), the slave is given to
/// that user, mode 0620, as login programs do.
pub fn open(size: WindowSize, owner: Option<(u32, u32)>) -> io::Result<Pty> {
    // SAFETY: posix_openpt has no memory preconditions.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: posix_openpt just returned this descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the descriptor is an open pty master.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0
        || unsafe { libc::unlockpt(master.as_raw_fd()) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: name is writable for its length.
    let failed = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if failed != 0 {
        return Err(io::Error::from_raw_os_error(failed));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    set_size(&master, size)?;
    if let Some((uid, gid)) = owner {
        // SAFETY: the descriptor is open.
        if unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) } != 0
            || unsafe { libc::fchmod(slave.as_raw_fd(), 0o620) } != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Pty { master, slave })
}

/// Set the terminal's size (the kernel sends SIGWINCH to its foreground
/// process group when it changes).
pub fn set_size(master: &OwnedFd, size: WindowSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: winsize is a valid struct for TIOCSWINSZ.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pty's foreground process group, if it has one.
pub fn foreground_group(master: &OwnedFd) -> Option<i32> {
    // SAFETY: tcgetpgrp on an open descriptor.
    let group = unsafe { libc::tcgetpgrp(master.as_raw_fd()) };
    (group > 0).then_some(group)
}
