//! The descriptor table a long-lived child (the host agent, QEMU, a
//! virtiofsd) starts with: only the descriptors its spawn hands it, in a
//! table already as large as its life needs.
//!
//! Two things a plain fork and exec gets wrong:
//! - Descriptors that whoever ran `vmkeep` left open without close-on-exec
//!   (a shell's, a CI harness's pipe) would stay open in the host agent and
//!   in QEMU for as long as the VM runs; the reader of such a pipe never
//!   sees its end.
//! - Linux grows a descriptor table by doubling it (64 slots at first, a
//!   fork copies only up to the highest open descriptor), and a process
//!   with threads waits for an RCU grace period each time
//!   (`expand_fdtable`). QEMU passes its 64th descriptor at its first
//!   `cont` (the virtio queues' event notifiers): that wait, 10-22 ms on
//!   this machine, sat in every resume and in every boot (`cont` measured
//!   at 0.7 ms with a larger table). The child grows its table while it has
//!   one thread, before exec, which keeps the table.

use std::io;
use std::os::fd::RawFd;

/// The slots QEMU and virtiofsd start with (QEMU holds ~90 descriptors
/// for the tiny guest, more with more CPUs and shares; a virtiofsd holds
/// one per open guest file). 8 KiB of the kernel's memory each.
pub const SERVER_SLOTS: u32 = 1024;
/// The slots the host agent starts with (two per forwarded connection or
/// session, a few per share).
pub const AGENT_SLOTS: u32 = 256;

/// Scanned one by one where the kernel cannot mark a range close-on-exec.
const SCAN_LIMIT: u64 = 65_536;

/// What the child does with its descriptors, prepared before the fork (the
/// child only makes system calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFds {
    /// The descriptor number that sizes the table (its slot is used once).
    top: Option<RawFd>,
    /// One past the highest descriptor the child can hold.
    limit: RawFd,
}

impl ChildFds {
    /// A table of at least `slots` slots (within the open-files limit).
    pub fn with_slots(slots: u32) -> ChildFds {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let top = u64::from(slots)
            .min(limit)
            .min(RawFd::MAX as u64)
            .saturating_sub(1);
        ChildFds {
            // A table of 64 slots is what every process has anyway.
            top: (top >= 64).then_some(top as RawFd),
            limit: limit.min(SCAN_LIMIT) as RawFd,
        }
    }

    /// In the child, after the standard streams are in place and before
    /// the spawn opens or passes anything else: every inherited descriptor
    /// above the standard streams is closed at exec, and the table grown.
    /// Only async-signal-safe system calls.
    pub fn apply(&self) -> io::Result<()> {
        self.close_inherited_at_exec()?;
        if let Some(top) = self.top {
            // SAFETY: duplicating our stdin to the lowest free number from
            // `top` on and closing the copy touches no memory; a failure
            // (a lower limit than asked) only leaves the table as it was.
            unsafe {
                let copy = libc::fcntl(0, libc::F_DUPFD, top);
                if copy >= 0 {
                    libc::close(copy);
                }
            }
        }
        Ok(())
    }

    fn close_inherited_at_exec(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            // SAFETY: close_range(2) with the close-on-exec flag only marks
            // descriptors; no memory is passed.
            let marked = unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                )
            };
            if marked == 0 {
                return Ok(());
            }
            // Linux before 5.11: one by one.
        }
        for fd in 3..self.limit {
            // SAFETY: fcntl(F_GETFD/F_SETFD) on a number; a closed one
            // answers EBADF, which is skipped.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0
                    && flags & libc::FD_CLOEXEC == 0
                    && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// `/proc/self/status` and the descriptors of a shell spawned with
    /// `fds` applied, while we hold `leaked` open without close-on-exec.
    fn child_view(fds: ChildFds, leaked: RawFd) -> (String, String) {
        // Builtins only: a command the shell forks would have a table of
        // its own.
        let script = format!(
            "while read -r key value; do [ \"$key\" = FDSize: ] && echo \"$key $value\"; done < /proc/self/status; \
             [ -e /proc/self/fd/{leaked} ] && echo leaked || echo closed"
        );
        let mut command = Command::new("/bin/sh");
        command.args(["-c", &script]);
        // SAFETY: apply makes only async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || fds.apply());
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        (
            lines.next().unwrap_or_default().to_owned(),
            lines.next().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn an_inherited_descriptor_is_not_passed_on_and_the_table_is_grown() {
        let file = std::fs::File::open("/dev/null").unwrap();
        // Not close-on-exec, as a caller's shell leaves its descriptors.
        let leaked = rustix::io::dup(&file).unwrap();
        assert_eq!(
            rustix::io::fcntl_getfd(&leaked).unwrap(),
            rustix::io::FdFlags::empty()
        );
        let (size, fate) = child_view(ChildFds::with_slots(SERVER_SLOTS), leaked.as_raw_fd());
        assert_eq!(fate, "closed");
        let slots: u32 = size.trim_start_matches("FDSize:").trim().parse().unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(
            u64::from(slots) >= u64::from(SERVER_SLOTS).min(limit),
            "{size}"
        );
    }

    #[test]
    fn without_it_the_child_keeps_the_leak_and_a_small_table() {
        // What the test above would see without `apply`: it can fail.
        let file = std::fs::File::open("/dev/null").unwrap();
        let leaked = rustix::io::dup(&file).unwrap();
        let out = Command::new("/bin/sh")
            .args([
                "-c",
                &format!("[ -e /proc/self/fd/{} ] && echo leaked", leaked.as_raw_fd()),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "leaked");
    }

    #[test]
    fn the_table_is_sized_by_its_top_slot_within_the_open_files_limit() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        // Every process has 64 slots: nothing to grow.
        assert_eq!(ChildFds::with_slots(64).top, None);
        if limit >= 128 {
            assert_eq!(ChildFds::with_slots(128).top, Some(127));
        }
        let widest = ChildFds::with_slots(u32::MAX).top.unwrap() as u64;
        assert_eq!(
            widest + 1,
            limit.min(u64::from(u32::MAX)).min(RawFd::MAX as u64)
        );
    }
}
