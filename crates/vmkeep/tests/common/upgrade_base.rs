//! The base build of the upgrade tests: the binaries of the last commit that
//! changed a wire or disk format, which is the last commit that touched
//! `src/formats.rs` (every format version lives there, and the file changes
//! only with a version: see its module doc). Built once from git and cached
//! in `target/upgrade-base/<commit>/bin`: only the two binaries are kept
//! once built, the build's checkout and target directory are removed.
//!
//! The build: a `git clone --shared` of the repository checked out at the
//! commit (read-only on the repository), then `cargo build --bins -p vmkeep`
//! in a target directory of its own. Seeded with a copy of this checkout's
//! `target/debug` and `target/guest-agent` when there is no build yet, so
//! only the workspace's own crates are compiled (3.4 min here, the machine
//! shared); a cold build takes longer. Concurrent tests wait for one another's build
//! (a lock file beside it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The base commit: the last one that touched `src/formats.rs`.
pub fn commit() -> String {
    git(
        &crate_dir(),
        &["log", "-1", "--format=%H", "--", "src/formats.rs"],
    )
}

/// The last commit before upgrades in place: the parent of the commit that
/// added `src/formats.rs` (its agents have no upgrade route).
pub fn before_upgrades() -> String {
    let added = git(
        &crate_dir(),
        &[
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "src/formats.rs",
        ],
    );
    let first = added.lines().last().expect("a commit added src/formats.rs");
    git(&crate_dir(), &["rev-parse", &format!("{first}^")])
}

/// The directory holding the base's `vmkeep` and `vmkeep-hostagent`,
/// built if not cached yet.
pub fn binaries() -> PathBuf {
    binaries_of(&commit())
}

/// The binaries of `commit`, built into `target/upgrade-base/<commit>` if
/// not cached yet.
pub fn binaries_of(commit: &str) -> PathBuf {
    let toplevel = PathBuf::from(git(&crate_dir(), &["rev-parse", "--show-toplevel"]));
    let target = toplevel.join("target");
    let root = target.join("upgrade-base").join(commit);
    let bin = root.join("bin");
    let ready = |bin: &Path| bin.join("vmkeep").is_file() && bin.join("vmkeep-hostagent").is_file();
    if ready(&bin) {
        return bin;
    }
    std::fs::create_dir_all(&root).expect("make target/upgrade-base");
    let _lock = vmkeep::os::lock::FileLock::exclusive(
        &root.with_extension("lock"),
        Duration::from_secs(3600),
    )
    .expect("lock the base build")
    .expect("the base build's lock within an hour");
    if ready(&bin) {
        return bin;
    }
    let src = root.join("src");
    if !src.join("Cargo.toml").is_file() {
        let _ = std::fs::remove_dir_all(&src);
        git(
            &toplevel,
            &[
                "clone",
                "--quiet",
                "--shared",
                "--no-checkout",
                toplevel.to_str().expect("a UTF-8 path"),
                src.to_str().expect("a UTF-8 path"),
            ],
        );
        git(&src, &["checkout", "--quiet", "--detach", commit]);
    }
    let base_target = root.join("target");
    seed(&target.join("debug"), &base_target.join("debug"));
    seed(
        &target.join("guest-agent"),
        &src.join("target").join("guest-agent"),
    );
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(&src)
        .args(["build", "--bins", "-p", "vmkeep", "--locked"])
        .env("CARGO_TARGET_DIR", &base_target);
    for inherited in ["RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WRAPPER"] {
        build.env_remove(inherited);
    }
    let status = build.status().expect("run cargo for the base build");
    assert!(status.success(), "building the base {commit} failed");
    let staged = root.join("bin.new");
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(&staged).unwrap();
    for name in ["vmkeep", "vmkeep-hostagent"] {
        std::fs::copy(base_target.join("debug").join(name), staged.join(name))
            .expect("copy a base binary");
    }
    std::fs::rename(&staged, &bin).expect("put the base binaries in place");
    // Only the two binaries are kept: the build's target directory (a copy
    // of this checkout's, 5-7 GiB) and the checkout would otherwise stay on
    // the disk for good, once per base, and a suite run on a nearly full
    // disk would fail building for want of that space.
    for built in [&base_target, &src] {
        if let Err(e) = std::fs::remove_dir_all(built) {
            eprintln!("removing {} after the base build: {e}", built.display());
        }
    }
    bin
}

/// Copy a built target directory to `to` unless it exists (a head start:
/// cargo reuses what did not change).
fn seed(from: &Path, to: &Path) {
    if to.exists() || !from.is_dir() {
        return;
    }
    std::fs::create_dir_all(to.parent().expect("a parent")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    if !status.success() {
        // Only a head start: a file that went away while it was copied (a
        // build writing the directory meanwhile) costs a longer build, not
        // the test. What was copied is dropped, so that cargo sees nothing
        // half made.
        eprintln!(
            "seeding {} from {} failed; building from scratch",
            to.display(),
            from.display()
        );
        let _ = std::fs::remove_dir_all(to);
    }
}
