//! Builds the guest agent as a static executable for every guest
//! architecture vmkeep boots, and hands their paths to the vmkeep crate, which
//! embeds them in the built-in tiny image and the cloud-init seed.
//!
//! The guest agent runs as PID 1 of a guest with no C library, and the guest
//! is Linux whatever the host is (a macOS host runs aarch64 Linux guests; an
//! x86_64 host may run aarch64 guests under emulation). So each agent is
//! built for `<arch>-unknown-linux-musl`, static, and linked by the Rust
//! toolchain's own `rust-lld` with musl's self-contained C runtime: no C
//! toolchain of any target is needed, only the two rustup targets
//! (scripts/setup-host adds them): see static_musl.rs. The agents get their
//! own target directory so they never wait on the lock of the build that
//! runs this script.

#[path = "static_musl.rs"]
mod static_musl;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest architectures (as `std::env::consts::ARCH` and QEMU name them)
/// and the environment variable each agent's path is handed over in.
const GUEST_ARCHES: [(&str, &str); 2] = [("x86_64", "X86_64"), ("aarch64", "AARCH64")];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let target_dir = workspace.join("target").join("guest-agent");

    for watched in [
        "crates/guest/src",
        "crates/guest/Cargo.toml",
        "crates/protocol/src",
        "crates/protocol/Cargo.toml",
        "Cargo.lock",
        "crates/vmkeep/static_musl.rs",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    git_commit(&workspace);
    for (arch, env_suffix) in GUEST_ARCHES {
        let target = format!("{arch}-unknown-linux-musl");
        build_agent(&workspace, &target_dir, &target);
        let binary = target_dir
            .join(&target)
            .join("release")
            .join("vmkeep-guest");
        let bytes =
            std::fs::read(&binary).unwrap_or_else(|e| panic!("read {}: {e}", binary.display()));
        let out = PathBuf::from(env("OUT_DIR")).join(format!("vmkeep-guest-{arch}"));
        write_if_changed(&out, &bytes);
        println!(
            "cargo:rustc-env=VMKEEP_GUEST_AGENT_{env_suffix}={}",
            out.display()
        );
        println!(
            "cargo:rustc-env=VMKEEP_GUEST_AGENT_DIGEST_{env_suffix}={:016x}",
            fnv1a(&bytes)
        );
    }
}

fn build_agent(workspace: &Path, target_dir: &Path, target: &str) {
    let status = static_musl::cargo_build(
        &env("CARGO"),
        workspace,
        target_dir,
        target,
        &["--release", "--locked", "-p", "vmkeep-guest"],
    )
    .status()
    .expect("run cargo to build the guest agent");
    assert!(
        status.success(),
        "building the static guest agent for {target} failed (see the output above); \
         if the target is missing, `rustup target add {target}` (scripts/setup-host does it)"
    );
}

/// The commit this build is of, for `--version` and the journal's
/// `upgraded` records (`VMKEEP_GIT_COMMIT`): `git rev-parse` (uncommitted
/// changes are not told); `unknown` outside a git checkout. Rebuilt when
/// HEAD moves (the checkout's HEAD and the branch it names).
fn git_commit(workspace: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(common).join(branch).display()
            );
        }
    }
    let text = commit.unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VMKEEP_GIT_COMMIT={text}");
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key} for build scripts"))
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// A content fingerprint for cache keys (not a security digest).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
