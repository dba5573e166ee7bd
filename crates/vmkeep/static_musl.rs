//! The cargo command of a static build for `<arch>-unknown-linux-musl`:
//! `+crt-static`, linked by the Rust toolchain's own `rust-lld` with musl's
//! self-contained C runtime, so no C toolchain of any target is needed,
//! only the rustup target (scripts/setup-host adds it). Passing `--target`
//! explicitly keeps the flags away from build scripts and proc macros; the
//! build gets a target directory of its own, so that it never waits on the
//! lock of the build that runs it. Shared by build.rs (the guest agent) and
//! tests/common/static_agent.rs (the static host agent); scripts/install
//! runs the same command in shell.

use std::path::Path;
use std::process::Command;

/// `cargo build ARGS --target TARGET --target-dir TARGET_DIR` in
/// `workspace`, with the static flags and without what the calling build
/// would pass on (its own flags, target directory, target, wrappers).
pub fn cargo_build(
    cargo: &str,
    workspace: &Path,
    target_dir: &Path,
    target: &str,
    args: &[&str],
) -> Command {
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .arg("build")
        .args(args)
        .args(["--target", target])
        .arg("--target-dir")
        .arg(target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "-Ctarget-feature=+crt-static",
                "-Clinker=rust-lld",
                "-Clinker-flavor=ld.lld",
            ]
            .join("\x1f"),
        );
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
    build
}
