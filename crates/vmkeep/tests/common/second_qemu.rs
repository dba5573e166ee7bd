//! The second QEMU of the test tiers: QEMU 10 (Debian 13's, from Debian's
//! bookworm-backports), unpacked beside the host's by `scripts/fetch-qemu`
//! into a cache directory (`target/qemu-10`, or `$FETCH_QEMU_DIR`), never
//! installed. `scripts/setup-host` fetches it before the suite; a test
//! that needs it and cannot have it (no network on a fresh machine) fails,
//! saying why: it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The major version of the second QEMU.
pub const MAJOR: u32 = 10;

/// The QEMU 10 wrapper (`.../bin/qemu-system-x86_64`), fetched if the
/// cache does not hold a working one yet. Panics, loudly, when it cannot.
pub fn qemu10() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(repo.join("scripts/fetch-qemu"))
        .arg(MAJOR.to_string())
        .output()
        .expect("run scripts/fetch-qemu");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "this test runs vmkeep on QEMU {MAJOR}, and scripts/fetch-qemu {MAJOR} could not provide it \
         (it needs Debian's archive once; scripts/setup-host fetches it): {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let wrapper = PathBuf::from(lines.next().expect("fetch-qemu prints the wrapper's path"));
    let version = lines.next().unwrap_or_default();
    assert!(
        version.starts_with(&format!("QEMU emulator version {MAJOR}.")),
        "{} is not QEMU {MAJOR}: {version}",
        wrapper.display()
    );
    wrapper
}

/// The major version of the QEMU in PATH (the host's).
pub fn host_qemu_major() -> u32 {
    let output = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .expect("run qemu-system-x86_64 --version");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("version ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// The binary a running QEMU process executes (`/proc/PID/exe`).
pub fn executable_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

/// A running QEMU's command line.
pub fn command_line_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("read /proc/PID/cmdline")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
