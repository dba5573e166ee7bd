//! The QMP client against a real QEMU started with `-S` (no guest needed).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use vmkeep::driver::qemu::qmp::{Qmp, QmpError, QmpEvent, RunState};

const QEMU: &str = "qemu-system-x86_64";
const STEP: Duration = Duration::from_secs(10);

/// Kills the QEMU this test started (by its pid, via `Child`) unless it has
/// already been reaped.
struct QemuGuard {
    child: Option<Child>,
}

impl QemuGuard {
    fn start(dir: &Path) -> QemuGuard {
        let qmp = dir.join("qmp.sock");
        let pidfile = dir.join("qemu.pid");
        let child = Command::new(QEMU)
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-machine", "q35", "-accel", "tcg", "-m", "64", "-S"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU} (is qemu-system-x86 installed?): {e}"));
        QemuGuard { child: Some(child) }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("QEMU not reaped yet")
    }

    /// Wait for QEMU to exit by itself, polling until `deadline`.
    async fn wait_exit(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "QEMU did not exit in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connect once the socket exists, retrying until `deadline`.
async fn connect_when_listening(path: &Path, guard: &mut QemuGuard, deadline: Instant) -> Qmp {
    loop {
        match Qmp::connect(path, STEP).await {
            Ok((qmp, _events)) => return qmp,
            Err(QmpError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                if let Some(status) = guard.child().try_wait().expect("try_wait") {
                    panic!("QEMU exited before listening: {status}");
                }
                assert!(
                    Instant::now() < deadline,
                    "QMP socket never appeared: {source}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("QMP connect failed: {other}"),
        }
    }
}

#[tokio::test]
async fn status_cont_and_quit_against_real_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let mut qemu = QemuGuard::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);

    let qmp = connect_when_listening(&socket, &mut qemu, deadline).await;
    let version = qmp.qemu_version().expect("greeting names a version");
    assert!(version.major >= 7, "{version:?}");

    assert_eq!(qmp.query_status(STEP).await.unwrap(), RunState::Prelaunch);

    // A second connection sees the same machine, and its events. QEMU's QMP
    // socket serves one client at a time, so drop the first one.
    drop(qmp);
    let (qmp, mut events) = loop {
        match Qmp::connect(&socket, STEP).await {
            Ok(pair) => break pair,
            Err(e) => {
                assert!(Instant::now() < deadline, "reconnect failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    qmp.execute("cont", None, STEP).await.unwrap();
    assert_eq!(qmp.query_status(STEP).await.unwrap(), RunState::Running);
    let resumed = tokio::time::timeout_at(deadline, events.next())
        .await
        .expect("RESUME in time");
    assert_eq!(resumed, Some(QmpEvent::Resume));

    match qmp.execute("no-such-command", None, STEP).await {
        Err(QmpError::CommandFailed { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandFailed, got {other:?}"),
    }

    qmp.quit(STEP).await.unwrap();
    let status = qemu.wait_exit(deadline).await;
    assert!(status.success(), "QEMU exit status after quit: {status}");
    // QEMU announces the power cut before the connection ends.
    let mut saw_shutdown = false;
    while let Some(event) = tokio::time::timeout_at(deadline, events.next())
        .await
        .expect("events end")
    {
        if let QmpEvent::Shutdown { guest, reason } = event {
            assert!(!guest);
            assert_eq!(reason, "host-qmp-quit");
            saw_shutdown = true;
        }
    }
    assert!(saw_shutdown, "no SHUTDOWN event after quit");
}
