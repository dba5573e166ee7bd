//! Telling the service manager that started this process how it is doing:
//! the sd_notify(3) datagrams behind systemd's `Type=notify` (`READY=1`,
//! `STOPPING=1`, `STATUS=...`). Without `NOTIFY_SOCKET` in the environment
//! (not started by such a manager) every call does nothing.
//!
//! Only the process a manager started may speak to it: [`FOR_CHILDREN`] is
//! removed from every child's environment (QEMU, detached host agents).

use sd_notify::NotifyState;

/// The variable naming the manager's socket.
pub const FOR_CHILDREN: &str = "NOTIFY_SOCKET";

/// Startup is finished: the guest is ready.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// A line for `systemctl status` (a start step, an error).
pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// The VM is being stopped; the process exits once it is gone.
pub fn stopping(status: &str) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
    ]);
}

/// A status line: one line, as the protocol separates fields by newlines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn send(states: &[NotifyState<'_>]) {
    // A manager that went away is no reason to disturb the VM.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(
            one_line("did not start: no kvm\n  host agent log: /x/ha.log"),
            "did not start: no kvm host agent log: /x/ha.log"
        );
    }
}
