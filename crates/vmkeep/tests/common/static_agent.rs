//! The static host agent, as `scripts/install` builds it on Linux
//! (`vmkeep-hostagent` for `<arch>-unknown-linux-musl`, static, linked by
//! rust-lld with musl's own C runtime, without the download client), built
//! once for the tests that install it. The profile is `static-test` (the
//! dev profile without debuginfo, see the workspace's Cargo.toml), in a
//! target directory of its own (`target/static-agent`), so that it never
//! waits on the lock of the build that made the tests. Built once per
//! machine and kept, like the upgrade base: 2 min 55 s cold here (the
//! machine shared), 55 s after a change of the vmkeep crate. Concurrent tests wait for
//! one another's build (cargo's lock on the target directory).

#[path = "../../static_musl.rs"]
mod static_musl;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

/// The rustup target of the static agent on this host.
pub fn target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// The static agent's path, built (or brought up to date) on first use.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.join("../..");
    let target_dir = workspace.join("target").join("static-agent");
    let target = target();
    let began = Instant::now();
    let mut build = static_musl::cargo_build(
        env!("CARGO"),
        &workspace,
        &target_dir,
        &target,
        &[
            "--locked",
            "--profile",
            "static-test",
            "-p",
            "vmkeep",
            "--bin",
            "vmkeep-hostagent",
            "--no-default-features",
        ],
    );
    let status = build.status().expect("run cargo for the static agent");
    assert!(
        status.success(),
        "building the static host agent for {target} failed (see above); \
         if the target is missing, `rustup target add {target}` (scripts/setup-host does it)"
    );
    eprintln!(
        "the static host agent built (or found up to date) in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    target_dir
        .join(&target)
        .join("static-test")
        .join("vmkeep-hostagent")
}
