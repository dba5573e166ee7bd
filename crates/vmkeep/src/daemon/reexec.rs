//! The daemon's in-place upgrade: become the binary it was started from
//! (now the installed one) by `execve`, same pid, its lock kept open across
//! the exec so that no other daemon can take the home in between. The
//! arguments are its own plus the lock's descriptor and the next
//! generation (`engine::upgrade_daemon::next_args`), which is how `vmkeep
//! upgrade` sees the move. Its VMs' host agents are not its children (they
//! live in scopes of their own, or were adopted), so they run on; the new
//! image watches them again as a restarted daemon does.

use std::path::Path;

use crate::engine::upgrade_daemon::next_args;
use crate::os;
use crate::os::lock::HeldLock;

/// Exec `exe` with the daemon's `args` (without the program); returns only
/// on failure, the lock closed on exec again.
pub(super) fn exec(
    exe: &Path,
    args: &[String],
    lock: &HeldLock,
    generation: u64,
) -> std::io::Error {
    let fd = match lock.keep_across_exec(true) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let args = next_args(args, fd, generation);
    let error = os::process::exec_replace(exe, &args);
    let _ = lock.keep_across_exec(false);
    error
}
