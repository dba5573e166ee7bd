//! The kernel object that stands for one process in [`super::process`]: a
//! descriptor that becomes readable when the process exits, through which
//! it is signalled and (if it is our child) reaped.
//!
//! On Linux that is a pidfd: a signal through it reaches the process it was
//! opened for or nobody. macOS has no pidfd; there it is a kqueue watching
//! the process for its exit (`EVFILT_PROC`, `NOTE_EXIT`): readable once the
//! process is gone, and a signal goes by pid only while the kqueue says the
//! process has not exited (a pid is reused only after the process it named
//! has exited and been reaped, which the kqueue sees first).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::Signal;

/// A process's exit, watched.
#[derive(Debug)]
pub struct ExitWatch {
    pid: u32,
    fd: OwnedFd,
}

/// How a reaped child ended: its exit code or the signal that killed it.
pub enum Reaped {
    Exited(i32),
    Signaled(i32),
    Other,
}

impl ExitWatch {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The descriptor that becomes readable when the process exits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second descriptor of the same watch (for an async registration).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use rustix::process::{
        Pid, PidfdFlags, WaitId, WaitIdOptions, pidfd_open, pidfd_send_signal, waitid,
    };

    impl ExitWatch {
        pub fn open(pid: u32) -> io::Result<ExitWatch> {
            let raw = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
            let fd = pidfd_open(raw, PidfdFlags::empty())?;
            Ok(ExitWatch { pid, fd })
        }

        /// Send `signal` to this process only; `ESRCH` once it is gone.
        pub fn signal(&self, signal: Signal) -> Result<(), rustix::io::Errno> {
            pidfd_send_signal(&self.fd, signal)
        }

        /// Reap our exited child; `None` when it has not exited (or is
        /// not ours, or was reaped already).
        pub fn reap_child(&self) -> Option<Reaped> {
            match waitid(
                WaitId::PidFd(self.fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(status)) => Some(if let Some(code) = status.exit_status() {
                    Reaped::Exited(code)
                } else if let Some(signal) = status.terminating_signal() {
                    Reaped::Signaled(signal)
                } else {
                    Reaped::Other
                }),
                _ => None,
            }
        }
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn change(kq: &OwnedFd, event: libc::kevent) -> io::Result<()> {
        // SAFETY: one change, no event list, a valid kqueue descriptor.
        check(unsafe {
            libc::kevent(
                kq.as_raw_fd(),
                &event,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        })
        .map(drop)
    }

    fn event(ident: usize, filter: i16, flags: u16, fflags: u32) -> libc::kevent {
        libc::kevent {
            ident,
            filter,
            flags,
            fflags,
            data: 0,
            udata: std::ptr::null_mut(),
        }
    }

    impl ExitWatch {
        pub fn open(pid: u32) -> io::Result<ExitWatch> {
            // SAFETY: kqueue takes no arguments; its result is checked.
            let raw = check(unsafe { libc::kqueue() })?;
            // SAFETY: a fresh descriptor owned by nothing else.
            let kq = unsafe { OwnedFd::from_raw_fd(raw) };
            rustix::io::fcntl_setfd(&kq, rustix::io::FdFlags::CLOEXEC)?;
            let exit = event(
                pid as usize,
                libc::EVFILT_PROC,
                libc::EV_ADD,
                libc::NOTE_EXIT,
            );
            match change(&kq, exit) {
                Ok(()) => {}
                // A child that exited already (a zombie) cannot be watched:
                // the watch is made readable at once.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && is_zombie_child(pid) => {
                    change(
                        &kq,
                        event(0, libc::EVFILT_USER, libc::EV_ADD | libc::EV_CLEAR, 0),
                    )?;
                    change(&kq, event(0, libc::EVFILT_USER, 0, libc::NOTE_TRIGGER))?;
                }
                Err(e) => return Err(e),
            }
            Ok(ExitWatch { pid, fd: kq })
        }

        fn has_exited(&self) -> bool {
            let mut poll = [rustix::event::PollFd::new(
                &self.fd,
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut poll, Some(&zero)).map_or(true, |n| n > 0)
        }

        /// Send `signal` to the process while the kqueue has not seen it
        /// exit; `ESRCH` once it is gone.
        pub fn signal(&self, signal: Signal) -> Result<(), rustix::io::Errno> {
            if self.has_exited() {
                return Err(rustix::io::Errno::SRCH);
            }
            let pid =
                rustix::process::Pid::from_raw(self.pid as i32).ok_or(rustix::io::Errno::SRCH)?;
            rustix::process::kill_process(pid, signal)
        }

        pub fn reap_child(&self) -> Option<Reaped> {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes one int through a valid pointer.
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if rc != self.pid as libc::pid_t {
                return None;
            }
            Some(if libc::WIFEXITED(status) {
                Reaped::Exited(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                Reaped::Signaled(libc::WTERMSIG(status))
            } else {
                Reaped::Other
            })
        }
    }

    /// Whether `pid` is our child that has exited and waits to be reaped.
    fn is_zombie_child(pid: u32) -> bool {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes one siginfo_t; WNOWAIT leaves the child unreaped.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        rc == 0 && unsafe { info.si_pid() } == pid as libc::pid_t
    }
}
