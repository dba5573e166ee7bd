//! End to end: build the tiny image with `vmkeep::image::tiny::ensure`, boot
//! it with raw QEMU (TCG), and drive the guest agent through the real
//! protocol over its virtio-serial socket, and the power button through QMP.
//!
//! The image cache lives in cargo's per-target scratch directory
//! (`target/tmp/tiny-image-cache`), so the kernel is downloaded once per
//! target directory, not on every run; a changed guest agent still rebuilds
//! the initramfs (its digest is part of the cache key).
//!
//! Only one QEMU runs at a time (the machine's cores are shared): the tests
//! take a process-wide lock. Each QEMU is SIGKILLed by a drop guard if a test
//! fails midway. Waits poll against deadlines; the only fixed wait is the
//! 5 s during which a guest must *not* react to the power button.
//!
//! Run with `--nocapture` to see the timings.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmkeep::image::tiny::{self, TinyImage};
use vmkeep_protocol::{
    DataDisk, ExecRequest, ExecResult, FromGuest, GuestInfo, Op, Reply, Request, kernel_flags,
};

fn one_qemu_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn image() -> &'static TinyImage {
    static IMAGE: OnceLock<TinyImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache");
        let started = Instant::now();
        let image = tiny::ensure(&cache, None, &mut |message| {
            eprintln!("tiny image: {message}")
        })
        .expect("build the tiny image");
        let size = std::fs::metadata(&image.initrd)
            .map(|m| m.len())
            .unwrap_or(0);
        eprintln!(
            "tiny image: ready in {:?}; initramfs {} KiB; kernel {}",
            started.elapsed(),
            size / 1024,
            image.kernel_release
        );
        image
    })
}

fn create_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("run qemu-img (install qemu-utils)");
    assert!(status.success(), "qemu-img create failed");
    disk
}

/// A running QEMU; SIGKILLed (by its pid, which we still own as its
/// unreaped parent) when dropped.
struct Vm {
    child: Child,
    dir: PathBuf,
    launched: Instant,
}

impl Vm {
    fn boot(dir: &Path, image: &TinyImage, extra_cmdline: &str) -> Vm {
        for stale in ["serial.log", "ga.sock", "qmp.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let path = |name: &str| dir.join(name).display().to_string();
        let cmdline = format!("{} {extra_cmdline}", image.base_cmdline());
        let launched = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "256",
                "-smp",
                "1",
            ])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &cmdline])
            .args(["-serial", &format!("file:{}", path("serial.log"))])
            .args([
                "-drive",
                &format!("if=none,id=data,file={},format=qcow2", path("disk.qcow2")),
            ])
            .args(["-device", "virtio-blk-pci,drive=data"])
            .args(["-device", "virtio-serial-pci"])
            .args([
                "-chardev",
                &format!("socket,id=ga,path={},server=on,wait=off", path("ga.sock")),
            ])
            .args([
                "-device",
                &format!(
                    "virtserialport,chardev=ga,name={}",
                    vmkeep_protocol::PORT_NAME
                ),
            ])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", path("qmp.sock")),
            ])
            .args(["-pidfile", &path("qemu.pid")])
            .stdin(Stdio::null())
            .spawn()
            .expect("run qemu-system-x86_64 (install qemu-system-x86)");
        Vm {
            child,
            dir: dir.to_path_buf(),
            launched,
        }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for `text` on the serial console; time since launch.
    fn wait_serial(&mut self, text: &str, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().contains(text) {
                return self.launched.elapsed();
            }
            assert!(
                self.running(),
                "QEMU exited before {text:?} appeared; serial log:\n{}",
                self.serial()
            );
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {timeout:?}; serial log:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for QEMU to exit; how long it took.
    fn wait_exit(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for QEMU") {
                assert!(status.success(), "QEMU exited with {status}");
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "QEMU still running after {timeout:?}; serial log:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn qmp(&self, command: &str) {
        qmp(&self.dir.join("qmp.sock"), command);
    }

    fn agent(&self) -> AgentClient {
        AgentClient::connect(&self.dir.join("ga.sock"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Read one `\n`-terminated line from `stream` into `pending`'s front.
fn read_line(stream: &mut UnixStream, pending: &mut Vec<u8>, deadline: Instant) -> Vec<u8> {
    loop {
        if let Some(at) = pending.iter().position(|b| *b == b'\n') {
            return pending.drain(..=at).collect();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for a line");
        stream
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed while waiting for a line"),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn connect_unix(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return stream,
            Err(e) => assert!(Instant::now() < deadline, "connect {}: {e}", path.display()),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send one QMP command (after the greeting and capabilities negotiation).
fn qmp(socket: &Path, command: &str) {
    let mut stream = connect_unix(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = Vec::new();
    let execute = |stream: &mut UnixStream, pending: &mut Vec<u8>, name: &str| {
        stream
            .write_all(format!("{{\"execute\":\"{name}\"}}\n").as_bytes())
            .expect("write to QMP");
        loop {
            let line = read_line(stream, pending, deadline);
            let value: serde_json::Value = serde_json::from_slice(&line).expect("QMP sends JSON");
            if value.get("return").is_some() {
                return;
            }
            assert!(value.get("error").is_none(), "QMP {name} failed: {value}");
        }
    };
    let greeting: serde_json::Value =
        serde_json::from_slice(&read_line(&mut stream, &mut pending, deadline))
            .expect("QMP greeting");
    assert!(
        greeting.get("QMP").is_some(),
        "not a QMP greeting: {greeting}"
    );
    execute(&mut stream, &mut pending, "qmp_capabilities");
    execute(&mut stream, &mut pending, command);
}

/// A small synchronous guest-agent client.
struct AgentClient {
    stream: UnixStream,
    pending: Vec<u8>,
    next_id: u64,
}

impl AgentClient {
    fn connect(socket: &Path) -> AgentClient {
        AgentClient {
            stream: connect_unix(socket),
            pending: Vec::new(),
            next_id: 1,
        }
    }

    /// Send `op` and wait for its reply (skipping `Ready` announcements);
    /// `None` on timeout.
    fn request(&mut self, op: Op, timeout: Duration) -> Option<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&vmkeep_protocol::encode_line(&Request { id, op }))
            .expect("write to the guest agent");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                match vmkeep_protocol::decode_line::<FromGuest>(&line)
                    .expect("the guest sends valid messages")
                {
                    FromGuest::Reply { id: reply_id, body } if reply_id == id => return Some(body),
                    FromGuest::Reply { .. }
                    | FromGuest::Ready(_)
                    | FromGuest::Ports(_)
                    | FromGuest::Session { .. } => continue,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the guest-agent socket closed"),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read from the guest agent: {e}"),
            }
        }
    }

    /// Say Hello until the guest reports ready.
    fn wait_ready(&mut self, timeout: Duration) -> GuestInfo {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Reply::Hello { ready: true, info }) =
                self.request(Op::Hello, Duration::from_secs(2))
            {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "the guest agent did not report ready within {timeout:?}"
            );
        }
    }

    fn exec(&mut self, argv: &[&str], stdin: &[u8]) -> Result<ExecResult, String> {
        let request = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.to_vec(),
            env: vec![],
            cwd: None,
        };
        match self.request(Op::Exec(request), Duration::from_secs(60)) {
            Some(Reply::Exec(result)) => Ok(result),
            Some(Reply::Error { message }) => Err(message),
            other => panic!("unexpected reply to exec {argv:?}: {other:?}"),
        }
    }
}

#[test]
fn vm_tiny_image_boots_runs_commands_keeps_data_and_powers_off() {
    let image = image();
    let _only_one = one_qemu_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    create_disk(dir.path());

    // First boot: the host says the data disk is new, so it gets formatted.
    let new_disk = format!("{}0123456789abcdef", kernel_flags::FORMAT_DATA_PREFIX);
    let mut vm = Vm::boot(dir.path(), image, &new_disk);
    let ready_after = vm.wait_serial(kernel_flags::READY_MARKER, Duration::from_secs(60));
    let mut agent = vm.agent();
    let info = agent.wait_ready(Duration::from_secs(30));
    assert_eq!(info.kernel, image.kernel_release);
    assert_eq!(info.data_mount.as_deref(), Some("/data"));
    assert_eq!(
        info.data_disk,
        Some(DataDisk::Mounted {
            mount: "/data".into(),
            formatted: true,
            repaired: None,
            grown: None
        })
    );
    assert!(
        !info.boot_id.is_empty() && info.uptime_secs > 0.0,
        "{info:?}"
    );

    let uname = agent.exec(&["uname", "-r"], b"").expect("exec uname");
    assert_eq!(
        (
            uname.exit_code,
            String::from_utf8_lossy(&uname.stdout).trim()
        ),
        (0, image.kernel_release.as_str())
    );
    assert_eq!(
        agent
            .exec(&["sh", "-c", "exit 3"], b"")
            .expect("exec sh")
            .exit_code,
        3
    );
    let cat = agent.exec(&["cat"], b"from stdin").expect("exec cat");
    assert_eq!(cat.stdout, b"from stdin");
    let missing = agent
        .exec(&["vmkeep-no-such-command"], b"")
        .expect_err("a missing command is an error");
    assert!(missing.contains("no such command"), "{missing}");
    assert_eq!(
        agent.request(Op::Ping, Duration::from_secs(10)),
        Some(Reply::Pong)
    );
    // A reply far larger than the port's buffers (the guest waits for room).
    let sent = Instant::now();
    let big = agent
        .exec(&["head", "-c", "4000000", "/dev/zero"], b"")
        .expect("exec head");
    assert_eq!(big.stdout.len(), 4_000_000);
    let big_reply = sent.elapsed();
    let written = agent
        .exec(&["sh", "-c", "echo kept > /data/file && sync"], b"")
        .expect("write to /data");
    assert_eq!(
        written.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    drop(agent);

    // The power button (ACPI) powers the guest off cleanly.
    let asked = Instant::now();
    vm.qmp("system_powerdown");
    vm.wait_exit(Duration::from_secs(20));
    let powerdown_exit = asked.elapsed();
    assert!(
        vm.serial().contains("powering off (power-button)"),
        "{}",
        vm.serial()
    );
    drop(vm);

    // Second boot: the file is still there; a reconnecting host is served.
    let mut vm = Vm::boot(dir.path(), image, "");
    let second_ready_after = vm.wait_serial(kernel_flags::READY_MARKER, Duration::from_secs(60));
    let mut agent = vm.agent();
    let second = agent.wait_ready(Duration::from_secs(30));
    assert_ne!(second.boot_id, info.boot_id, "a new boot has a new boot id");
    assert!(
        matches!(
            second.data_disk,
            Some(DataDisk::Mounted {
                formatted: false,
                ..
            })
        ),
        "mounted, not formatted: {second:?}"
    );
    let cat = agent
        .exec(&["cat", "/data/file"], b"")
        .expect("read /data/file");
    assert_eq!((cat.exit_code, cat.stdout.as_slice()), (0, &b"kept\n"[..]));
    drop(agent);
    let mut agent = vm.agent();
    assert_eq!(
        agent.request(Op::Ping, Duration::from_secs(10)),
        Some(Reply::Pong),
        "after a reconnect"
    );

    // A power-off request from the host agent.
    let asked = Instant::now();
    assert_eq!(
        agent.request(Op::Poweroff, Duration::from_secs(10)),
        Some(Reply::PoweroffAccepted)
    );
    vm.wait_exit(Duration::from_secs(20));
    let request_exit = asked.elapsed();
    assert!(
        vm.serial().contains("powering off (host-request)"),
        "{}",
        vm.serial()
    );

    let initramfs = std::fs::metadata(&image.initrd)
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "timings: launch -> ready marker {:.2?} (fresh disk, formats it) / {:.2?} (second boot); \
         system_powerdown -> exit {:.3?}; poweroff request -> exit {:.3?}; initramfs {} KiB; \
         4 MB exec reply {:.2?}",
        ready_after,
        second_ready_after,
        powerdown_exit,
        request_exit,
        initramfs / 1024,
        big_reply
    );
}

#[test]
fn vm_ignore_flags_make_the_guest_ignore_the_power_button_and_poweroff_requests() {
    let image = image();
    let _only_one = one_qemu_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    create_disk(dir.path());
    let flags = format!(
        "{} {}",
        kernel_flags::IGNORE_POWER_BUTTON,
        kernel_flags::IGNORE_POWEROFF_REQUEST
    );
    let mut vm = Vm::boot(dir.path(), image, &flags);
    vm.wait_serial(kernel_flags::READY_MARKER, Duration::from_secs(60));
    let mut agent = vm.agent();
    agent.wait_ready(Duration::from_secs(30));

    vm.qmp("system_powerdown");
    // The press reaches the guest, which logs it and does nothing else.
    vm.wait_serial("power button pressed; ignored", Duration::from_secs(5));
    assert_eq!(
        agent.request(Op::Poweroff, Duration::from_secs(10)),
        Some(Reply::PoweroffAccepted)
    );
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert!(
            vm.running(),
            "the guest powered off although told to ignore; serial log:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        agent.request(Op::Ping, Duration::from_secs(10)),
        Some(Reply::Pong),
        "still serving"
    );

    vm.qmp("quit");
    vm.wait_exit(Duration::from_secs(10));
}

#[test]
fn vm_poweroff_at_boot_flag_powers_off_before_ready() {
    let image = image();
    let _only_one = one_qemu_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    create_disk(dir.path());
    let mut vm = Vm::boot(dir.path(), image, kernel_flags::POWEROFF_AT_BOOT);
    vm.wait_exit(Duration::from_secs(60));
    let serial = vm.serial();
    assert!(
        serial.contains("powering off (poweroff-at-boot)"),
        "{serial}"
    );
    assert!(!serial.contains(kernel_flags::READY_MARKER), "{serial}");
}

#[test]
fn a_cached_image_costs_no_work() {
    let built = image();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache");
    let mut messages = Vec::new();
    let started = Instant::now();
    let again = tiny::ensure(&cache, None, &mut |message| {
        messages.push(message.to_string())
    })
    .expect("cached image");
    let took = started.elapsed();
    eprintln!("timings: cached ensure {took:?}");
    assert_eq!(&again, built);
    assert!(
        messages.is_empty(),
        "a cached image reports no work: {messages:?}"
    );
}

#[test]
fn concurrent_builds_from_a_kernel_override_agree_and_leave_no_temporaries() {
    let built = image();
    // The Debian kernel unpacked in the shared cache, used as an override.
    let release_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache/kernels");
    let package = std::fs::read_dir(&release_dir)
        .expect("the shared cache has kernels")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .expect("an unpacked kernel");
    let over = tiny::KernelOverride {
        kernel: package
            .join("boot")
            .join(format!("vmlinuz-{}", built.kernel_release)),
        modules_dir: Some(package.join("lib/modules").join(&built.kernel_release)),
    };
    let cache = tempfile::tempdir().expect("temp dir");
    let images: Vec<TinyImage> = std::thread::scope(|scope| {
        let builders: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| tiny::ensure(cache.path(), Some(&over), &mut |_| {}).expect("build"))
            })
            .collect();
        builders
            .into_iter()
            .map(|b| b.join().expect("builder thread"))
            .collect()
    });
    assert_eq!(images[0], images[1]);
    assert_eq!(
        images[0].kernel_release, built.kernel_release,
        "release read from the bzImage header"
    );
    let entries: Vec<String> = std::fs::read_dir(cache.path().join("tiny"))
        .expect("tiny dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "one image, no temporaries: {entries:?}");
    let members = tiny::list_initramfs(&std::fs::read(&images[0].initrd).expect("read initrd"))
        .expect("list initrd");
    let order = members
        .iter()
        .find(|m| m.name == "lib/modules/vmkeep/order")
        .expect("order file");
    assert!(order.size > 0);
    assert!(
        members
            .iter()
            .any(|m| m.name == "sbin/e2fsck" && m.size > 1_000_000),
        "the static e2fsck (for --repair-data) is in the image"
    );
    for module in [
        "virtio_console.ko",
        "virtio_blk.ko",
        "evdev.ko",
        "button.ko",
    ] {
        assert!(
            members
                .iter()
                .any(|m| m.name == format!("lib/modules/vmkeep/{module}")),
            "{module} missing"
        );
    }
}
