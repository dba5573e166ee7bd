//! `upgrade` of the daemon: move the running `vmkeep daemon` of a home onto
//! the `vmkeep` installed now, in place. The daemon is asked by SIGHUP
//! (what `systemctl reload` of its unit sends through `ExecReload=`); it
//! checks the binary it was started from, keeps its lock across an
//! `execve` of it (same pid: a service manager's main pid is kept) and
//! counts the move in its command line (`--generation N`), which is how the
//! outcome is seen here. Its VMs' host agents live on their own: nothing of
//! theirs is touched. A daemon that cannot move logs why and runs on.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::instance::Home;
use crate::os;

/// The daemon's lock (and pid) file, in the instances root.
pub const DAEMON_LOCK: &str = "daemon.pid";
/// The daemon's log, in the instances root (see `daemon::unit`).
pub const DAEMON_LOG: &str = "daemon.log";

/// The argument that carries the daemon's lock descriptor across its exec.
pub const INHERITED_LOCK_ARG: &str = "--inherited-lock";
/// The argument that counts the daemon's moves (absent: 0).
pub const GENERATION_ARG: &str = "--generation";

/// How long a daemon may take to move (its binary's check, then the exec).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// How the daemon's move went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonUpgraded {
    pub pid: u32,
    pub generation: u64,
}

/// Why the daemon did not move; it runs on, on its old code.
#[derive(Debug, thiserror::Error)]
#[error("the daemon (pid {pid}) was not upgraded: {reason}; it runs on unchanged")]
pub struct DaemonNotUpgraded {
    pub pid: u32,
    pub reason: String,
}

/// How many times the daemon of `cmdline` moved (its `--generation`).
pub fn generation_of<S: AsRef<str>>(cmdline: &[S]) -> u64 {
    cmdline
        .windows(2)
        .rev()
        .find(|w| w[0].as_ref() == GENERATION_ARG)
        .and_then(|w| w[1].as_ref().parse().ok())
        .unwrap_or(0)
}

/// The daemon's arguments for its next image: `args` (its own, without the
/// program) less what a previous move added, then the lock's descriptor
/// and the next generation.
pub fn next_args<S: AsRef<str>>(args: &[S], lock_fd: i32, generation: u64) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip = false;
    for arg in args {
        let arg = arg.as_ref();
        if skip {
            skip = false;
            continue;
        }
        if arg == INHERITED_LOCK_ARG || arg == GENERATION_ARG {
            skip = true;
            continue;
        }
        kept.push(arg.to_string());
    }
    kept.extend([
        INHERITED_LOCK_ARG.to_string(),
        lock_fd.to_string(),
        GENERATION_ARG.to_string(),
        (generation + 1).to_string(),
    ]);
    kept
}

/// Move the running daemon of `home` onto the installed `vmkeep`, if one
/// runs (`None`: no daemon).
pub fn upgrade_daemon(home: &Home) -> Result<Option<DaemonUpgraded>, DaemonNotUpgraded> {
    let lock = home.root.join(DAEMON_LOCK);
    let handle = match os::process::open_lock_holder(&lock) {
        Ok(Some(handle)) => handle,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(DaemonNotUpgraded {
                pid: 0,
                reason: format!("cannot tell who holds {}: {e}", lock.display()),
            });
        }
    };
    let pid = handle.pid();
    let failed = |reason: String| DaemonNotUpgraded { pid, reason };
    // A daemon of a build before in-place upgrades does not catch SIGHUP:
    // it would die of it. Seen from its signal mask, never guessed.
    match os::process::catches_hangup(pid) {
        Some(true) => {}
        Some(false) => {
            return Err(failed(
                "it is of a build from before in-place upgrades (it does not handle SIGHUP); \
                 restart it instead (`systemctl --user restart vmkeep-daemon` keeps its VMs running)"
                    .into(),
            ));
        }
        None => return Err(failed("cannot read its signal handling".into())),
    }
    // The binary it will become is the one installed where it was started
    // from: checked here first, so that a broken one is refused at once
    // (the daemon checks it again before its exec).
    let Some(installed) = os::process::program_path(pid) else {
        return Err(failed("cannot tell which binary it runs".into()));
    };
    check_binary(&installed).map_err(&failed)?;
    let Some(before) = os::process::command_line_of_live(&handle) else {
        return Err(failed("cannot read its command line".into()));
    };
    let before = generation_of(&before);
    handle
        .signal(rustix::process::Signal::HUP)
        .map_err(|e| failed(format!("cannot signal it: {e}")))?;
    let deadline = Instant::now() + DAEMON_TIMEOUT;
    loop {
        if handle.has_exited() {
            return Err(failed("it ended while moving (see daemon.log)".into()));
        }
        if let Some(now) = os::process::command_line_of_live(&handle) {
            let generation = generation_of(&now);
            if generation > before {
                return Ok(Some(DaemonUpgraded { pid, generation }));
            }
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "it did not move within {}s; why is in its log ({})",
                DAEMON_TIMEOUT.as_secs(),
                home.root.join(DAEMON_LOG).display()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether `exe` runs and says its version: what the daemon checks of the
/// binary it is about to become.
pub fn check_binary(exe: &Path) -> Result<String, String> {
    let out = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({})",
            exe.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_image_gets_the_lock_and_one_more_generation_and_nothing_twice() {
        let first = next_args(&["daemon", "--restart-delay", "2s"], 5, 0);
        assert_eq!(
            first,
            [
                "daemon",
                "--restart-delay",
                "2s",
                "--inherited-lock",
                "5",
                "--generation",
                "1"
            ]
        );
        assert_eq!(generation_of(&first), 1);
        let second = next_args(&first, 7, generation_of(&first));
        assert_eq!(
            second,
            [
                "daemon",
                "--restart-delay",
                "2s",
                "--inherited-lock",
                "7",
                "--generation",
                "2"
            ]
        );
        assert_eq!(generation_of(&second), 2);
        assert_eq!(generation_of(&["vmkeep", "daemon"]), 0);
        assert_eq!(generation_of(&["daemon", "--generation", "x"]), 0);
    }
}
