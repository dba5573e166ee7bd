//! Builds the guest agent as a static executable and hands its path to the
//! vmkeep crate, which embeds it in the built-in tiny image.
//!
//! The guest agent runs as PID 1 of a guest with no C library, so it is built
//! for the same gnu target with `+crt-static`. Passing `--target` explicitly
//! keeps that flag away from build scripts and proc macros, which cannot be
//! static. It gets its own target directory so it never waits on the lock of
//! the build that runs this script.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let target = env("TARGET");
    let target_dir = workspace.join("target").join("guest-agent");

    for watched in [
        "crates/guest/src",
        "crates/guest/Cargo.toml",
        "crates/protocol/src",
        "crates/protocol/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let mut build = Command::new(env("CARGO"));
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "vmkeep-guest",
            "--target",
            &target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    for inherited in [
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(inherited);
    }
    let status = build.status().expect("run cargo to build the guest agent");
    assert!(
        status.success(),
        "building the static guest agent failed (see the output above)"
    );

    let binary = target_dir
        .join(&target)
        .join("release")
        .join("vmkeep-guest");
    let bytes = std::fs::read(&binary).unwrap_or_else(|e| panic!("read {}: {e}", binary.display()));
    let out = PathBuf::from(env("OUT_DIR")).join("vmkeep-guest");
    write_if_changed(&out, &bytes);
    println!("cargo:rustc-env=VMKEEP_GUEST_AGENT={}", out.display());
    println!(
        "cargo:rustc-env=VMKEEP_GUEST_AGENT_DIGEST={:016x}",
        fnv1a(&bytes)
    );
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
