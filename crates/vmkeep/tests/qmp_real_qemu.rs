//! The QMP client against a real QEMU: started with `-S` (no guest needed),
//! and booting the tiny image on a disk that runs out of space.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use vmkeep::driver::qemu::qmp::{
    BlockErrorAction, IoOperation, Qmp, QmpError, QmpEvent, QmpEvents, RunState, StatusInfo,
};

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
async fn vm_status_cont_and_quit_against_real_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let mut qemu = QemuGuard::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);

    let qmp = connect_when_listening(&socket, &mut qemu, deadline).await;
    let version = qmp.qemu_version().expect("greeting names a version");
    assert!(version.major >= 7, "{version:?}");

    assert_eq!(
        qmp.query_status(STEP).await.unwrap(),
        StatusInfo {
            running: false,
            status: RunState::Prelaunch
        }
    );

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
    let next = async |events: &mut QmpEvents| {
        tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("an event in time")
    };
    let running = StatusInfo {
        running: true,
        status: RunState::Running,
    };
    qmp.cont(STEP).await.unwrap();
    assert_eq!(qmp.query_status(STEP).await.unwrap(), running);
    assert_eq!(next(&mut events).await, Some(QmpEvent::Resume));

    // `stop` pauses, `cont` resumes, each announced by its event.
    qmp.pause(STEP).await.unwrap();
    assert_eq!(next(&mut events).await, Some(QmpEvent::Stop));
    assert_eq!(
        qmp.query_status(STEP).await.unwrap(),
        StatusInfo {
            running: false,
            status: RunState::Paused
        }
    );
    qmp.cont(STEP).await.unwrap();
    assert_eq!(next(&mut events).await, Some(QmpEvent::Resume));
    assert_eq!(qmp.query_status(STEP).await.unwrap(), running);

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

/// The tiny image's guest agent formats its data disk on first boot; here
/// every write to that disk fails with ENOSPC (QEMU's blkdebug driver), as on
/// a host whose disk is full. QEMU's default for virtio-blk, `werror=enospc`,
/// pauses the VM: vmkeep sees a typed `BLOCK_IO_ERROR` and the run state
/// `io-error`, and `cont` retries (and fails again, while the disk is full).
#[tokio::test]
async fn vm_a_disk_out_of_space_pauses_the_vm_with_a_typed_block_io_error() {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache");
    let image = vmkeep::image::tiny::ensure(&cache, None, &mut |message| {
        eprintln!("tiny image: {message}")
    })
    .expect("build the tiny image");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("run qemu-img (install qemu-utils)");
    assert!(created.success());
    let rules = dir.path().join("blkdebug.conf");
    // Every data write of the qcow2 image fails as if the host disk were full.
    std::fs::write(
        &rules,
        "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\n",
    )
    .unwrap();
    let qmp_socket = dir.path().join("qmp.sock");
    let child = Command::new(QEMU)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        // A new disk: the guest formats it, and its first write fails.
        .args([
            "-append",
            &format!(
                "{} {}0123456789abcdef",
                image.base_cmdline(),
                vmkeep_protocol::kernel_flags::FORMAT_DATA_PREFIX
            ),
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("serial.log").display()))
        .arg("-drive")
        .arg(format!(
            "if=none,id=data,format=qcow2,file=blkdebug:{}:{}",
            rules.display(),
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=data"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
    let mut qemu = QemuGuard { child: Some(child) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let qmp = connect_when_listening(&qmp_socket, &mut qemu, deadline).await;
    drop(qmp);
    let (qmp, mut events) = Qmp::connect(&qmp_socket, STEP).await.unwrap();
    let serial = || std::fs::read_to_string(dir.path().join("serial.log")).unwrap_or_default();

    // Boot until the first write to the disk.
    let error = loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(QmpEvent::BlockIoError(error))) => break error,
            Ok(Some(_other)) => {}
            Ok(None) => panic!("QMP closed; serial log:\n{}", serial()),
            Err(_) => panic!("no BLOCK_IO_ERROR in time; serial log:\n{}", serial()),
        }
    };
    assert_eq!(error.device, "data");
    assert_eq!(error.operation, IoOperation::Write);
    assert_eq!(error.action, BlockErrorAction::Stop);
    assert!(error.nospace, "{error:?}");
    assert_eq!(error.reason, "No space left on device");
    // QEMU reports the error, then stops the VM.
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(QmpEvent::Stop)) => break,
            Ok(Some(QmpEvent::BlockIoError(_))) => {}
            other => panic!("expected STOP, got {other:?}"),
        }
    }
    assert_eq!(
        qmp.query_status(STEP).await.unwrap(),
        StatusInfo {
            running: false,
            status: RunState::IoError,
        }
    );

    // `cont` retries the write, which fails again: paused again. (Requests
    // that were in flight at the stop may report their errors after it.)
    qmp.cont(STEP).await.unwrap();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(QmpEvent::Resume)) => break,
            Ok(Some(QmpEvent::BlockIoError(_))) => {}
            other => panic!("expected RESUME, got {other:?}"),
        }
    }
    let again = match tokio::time::timeout_at(deadline, events.next()).await {
        Ok(Some(QmpEvent::BlockIoError(error))) => error,
        other => panic!("expected another BLOCK_IO_ERROR, got {other:?}"),
    };
    assert!(again.nospace);
    qmp.quit(STEP).await.unwrap();
    assert!(qemu.wait_exit(deadline).await.success());
}
