//! End to end: a guest of the other architecture, emulated. On these x86_64
//! machines that is an aarch64 tiny guest (`arch: aarch64`: QEMU's `virt`
//! under TCG, booted through AAVMF, Debian's arm64 kernel and busybox, the
//! guest agent built for aarch64); on an aarch64 host the same test boots
//! an x86_64 guest. One VM goes through the lifecycle a user relies on:
//! start, shell, a port forward, the host agent SIGKILLed and the VM
//! adopted, suspend and resume, stop by the power button, its data kept
//! across a cold restart.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TestEnv, free_port, wait_until};
use vmkeep::guest_arch::GuestArch;

/// Emulated boots are slow on two loaded cores (about 10 s idle).
const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);

/// The architecture that is not the host's.
fn foreign() -> GuestArch {
    match GuestArch::HOST {
        GuestArch::X86_64 => GuestArch::Aarch64,
        GuestArch::Aarch64 => GuestArch::X86_64,
    }
}

/// What a connection to the host's `port` reads until the guest closes it.
fn read_forwarded(port: u16) -> Option<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// Wait until the host's `port` reads `expected` from the guest.
fn forwarded_reads(port: u16, expected: &str) {
    let started = Instant::now();
    wait_until(SHORT, || {
        (read_forwarded(port).as_deref() == Some(expected)).then_some(())
    })
    .unwrap_or_else(|| panic!("host port {port} did not read {expected:?} within {SHORT:?}"));
    eprintln!("port forward reads after {:?}", started.elapsed());
}

#[test]
fn vm_foreign_arch_guest_starts_forwards_is_adopted_suspends_and_stops_by_its_power_button() {
    let env = TestEnv::new();
    let arch = foreign();
    let port = free_port();
    env.create(
        "arm",
        &format!(
            "arch: {arch}\ncpus: 1\nmemory: 256MiB\nportForwards:\n  - guestPort: 8080\n    hostPort: {port}\n"
        ),
    );

    let started = Instant::now();
    let start = env.run_within(&["start", "arm"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    eprintln!("{arch} cold start -> ready: {:?}", started.elapsed());
    assert!(
        start.stderr().contains("tcg: an ") && start.stderr().contains("is emulated"),
        "emulated, saying why: {}",
        start.describe()
    );
    assert_eq!(env.status("arm"), "Running");
    assert_eq!(env.shell("arm", "uname -m"), arch.name());
    assert_eq!(
        env.shell("arm", "cat /sys/class/input/event*/device/name"),
        "Power Button",
        "the power button reached the guest"
    );
    env.shell("arm", "echo kept-across-restarts > /data/proof && sync");

    // A port forward: the guest serves one line per connection.
    env.shell(
        "arm",
        "(while true; do echo served | nc -l -p 8080; done) </dev/null >/dev/null 2>&1 &",
    );
    forwarded_reads(port, "served");
    let boot_id = env.boot_id("arm");

    // The host agent SIGKILLed: QEMU runs on, and the next start adopts it.
    let qemu = env.qemu("arm").unwrap().pid();
    env.agent("arm").unwrap().kill().unwrap();
    env.wait_status("arm", "Broken", SHORT);
    let adopt = env.run_within(&["start", "arm"], SHORT);
    assert_eq!(adopt.code(), Some(0), "{}", adopt.describe());
    assert_eq!(
        env.qemu("arm").unwrap().pid(),
        qemu,
        "adopted, not rebooted"
    );
    assert_eq!(env.boot_id("arm"), boot_id);
    forwarded_reads(port, "served");

    // Suspended and resumed: the same boot, its background server still up.
    let suspend = env.run_within(&["suspend", "arm"], SHORT);
    assert_eq!(suspend.code(), Some(0), "{}", suspend.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_ne!(env.status("arm"), "Running");
    let resumed = Instant::now();
    let resume = env.run_within(&["start", "arm"], SHORT);
    assert_eq!(resume.code(), Some(0), "{}", resume.describe());
    assert!(
        resume.stderr().contains("resuming the state saved at"),
        "{}",
        resume.describe()
    );
    eprintln!("{arch} resume -> ready: {:?}", resumed.elapsed());
    assert_eq!(env.boot_id("arm"), boot_id, "resumed, not rebooted");
    forwarded_reads(port, "served");

    // Stopped by the first step of the ladder: the power button.
    let stop = env.run_within(&["stop", "arm"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert_eq!(env.last_stopped("arm")["by"], "power-button");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files("arm"), Vec::<String>::new());

    // A cold restart: a new boot, the data disk's file still there.
    env.run_within(&["start", "arm"], BOOT);
    assert_ne!(env.boot_id("arm"), boot_id);
    assert_eq!(env.shell("arm", "cat /data/proof"), "kept-across-restarts");
    env.run_within(&["stop", "arm"], SHORT);
    assert_eq!(env.last_stopped("arm")["by"], "power-button");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}
