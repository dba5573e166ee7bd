//! One thread reaps every child (and, as PID 1, every orphan) with
//! `waitpid(-1)`, and hands each exit status to whoever registered its pid.
//!
//! A child is registered while the waiter map is locked across the fork, so a
//! child that exits at once is still dispatched to its waiter: the reaper
//! cannot look the pid up before the registration is in the map.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::log::log;

/// A raw wait status as returned by waitpid(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStatus(pub libc::c_int);

impl WaitStatus {
    /// Exit code as a shell reports it: 128 + signal when killed by a signal.
    pub fn exit_code(self) -> i32 {
        let status = self.0;
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            255
        }
    }

    /// The status as a session's `exited` event says it.
    pub fn exit_status(self) -> vmkeep_protocol::session::ExitStatus {
        use vmkeep_protocol::session::ExitStatus;
        let status = self.0;
        if libc::WIFEXITED(status) {
            ExitStatus::exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::killed(libc::WTERMSIG(status), libc::WCOREDUMP(status))
        } else {
            ExitStatus::exited(255)
        }
    }
}

/// Told a child's exit status, on the reaper thread (so it must be quick).
pub type OnExit = Box<dyn FnOnce(WaitStatus) + Send>;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, OnExit>,
    /// Bumped on every spawn, so the reaper knows a child may exist now.
    spawned: u64,
}

pub struct Reaper {
    state: Mutex<State>,
    child_spawned: Condvar,
}

impl Reaper {
    /// The process's reaper, started on first use. There must be only one:
    /// two threads calling `waitpid(-1)` would steal each other's children.
    pub fn global() -> io::Result<&'static Reaper> {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        static STARTED: Mutex<bool> = Mutex::new(false);
        let reaper: &'static Reaper = REAPER.get_or_init(|| Reaper {
            state: Mutex::new(State::default()),
            child_spawned: Condvar::new(),
        });
        let mut started = STARTED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*started {
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.run())?;
            *started = true;
        }
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The release build aborts on panic, so the lock is never poisoned in
        // practice; recover the data if it ever is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Create a child with `fork` (which returns its pid) while the waiter
    /// map is locked, and register it. The receiver gets its exit status.
    pub fn spawn_registered<F>(&self, fork: F) -> io::Result<(i32, Receiver<WaitStatus>)>
    where
        F: FnOnce() -> io::Result<i32>,
    {
        let (tx, rx) = mpsc::channel::<WaitStatus>();
        let pid = self.spawn_with(
            fork,
            Box::new(move |status| {
                // The waiter may have given up; that is fine.
                let _ = tx.send(status);
            }),
        )?;
        Ok((pid, rx))
    }

    /// Like [`Reaper::spawn_registered`], but `on_exit` is called (on the
    /// reaper thread) with the exit status.
    pub fn spawn_with<F>(&self, fork: F, on_exit: OnExit) -> io::Result<i32>
    where
        F: FnOnce() -> io::Result<i32>,
    {
        let mut state = self.lock();
        let pid = fork()?;
        state.waiters.insert(pid, on_exit);
        state.spawned = state.spawned.wrapping_add(1);
        drop(state);
        self.child_spawned.notify_all();
        Ok(pid)
    }

    fn run(&self) {
        loop {
            let spawned_before = self.lock().spawned;
            let mut status: libc::c_int = 0;
            // SAFETY: status is a valid, writable int.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let waiter = self.lock().waiters.remove(&pid);
                if let Some(waiter) = waiter {
                    waiter(WaitStatus(status));
                }
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    // No children now: sleep until one is spawned. Orphans
                    // can only appear while some child exists, so nothing
                    // is missed; the timeout is a safety net.
                    let state = self.lock();
                    if state.spawned == spawned_before {
                        let _ = self
                            .child_spawned
                            .wait_timeout(state, Duration::from_secs(1));
                    }
                }
                _ => {
                    log!("waitpid failed: {err}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkeep_protocol::session::ExitStatus;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        // Encoded as the kernel does: exit code in bits 8..16, signal in 0..7.
        assert_eq!(WaitStatus(3 << 8).exit_code(), 3);
        assert_eq!(WaitStatus(0).exit_code(), 0);
        assert_eq!(WaitStatus(libc::SIGKILL).exit_code(), 128 + 9);
        assert_eq!(
            WaitStatus(libc::SIGTERM | 0x80).exit_code(),
            128 + 15,
            "core dump bit"
        );
        assert_eq!(WaitStatus(3 << 8).exit_status(), ExitStatus::exited(3));
        assert_eq!(
            WaitStatus(libc::SIGSEGV | 0x80).exit_status(),
            ExitStatus::killed(libc::SIGSEGV, true)
        );
        assert_eq!(
            WaitStatus(libc::SIGKILL).exit_status(),
            ExitStatus::killed(9, false)
        );
    }
}
