//! Root in a guest gains nothing on the host through a writable share, with
//! real QEMU (TCG), the tiny image and the real virtiofsd, run by root (the
//! share served as its directory's owner, a normal user) and by a normal
//! user: the guest plants setuid-root and setgid files, a setgid
//! directory, device nodes with the host disk's numbers, files of other
//! owners, and a hard link to a host file it cannot read; then the host is
//! checked. Also, as a normal user: Lima's everyday mounts work both ways,
//! and a read-only share refuses writes in the host's kernel.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::TestEnv;
use common::host_user::{self, HostUser};

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

fn mounts_yaml(dir: &Path) -> String {
    format!(
        "stopTimeout: 20s\nmounts:\n  - location: {0}\n    mountPoint: /mnt/rw\n    writable: true\n  - location: {0}\n    mountPoint: /mnt/ro\n",
        dir.display()
    )
}

/// What a hostile guest root tries in `/mnt/rw`; each step echoes its exit
/// status.
const ATTACK: &str = "cd /mnt/rw; \
    cp /bin/busybox x; chown 0:0 x; chmod 4755 x; echo suid=$?; \
    chmod 2755 x; echo sgid=$?; \
    mkdir d; chmod 2775 d; echo sgid-dir=$?; \
    mknod -m 666 disk b 254 0; echo block=$?; \
    mknod -m 666 tty c 4 1; echo char=$?; \
    touch y; chown 1234:1234 y; echo chown=$?; \
    ln secret hard; echo link=$?; \
    cat secret >/dev/null 2>&1; echo read=$?; \
    mknod fifo p; echo fifo=$?; \
    ls -ln /mnt/rw";

/// Every entry below `dir` (not following symlinks).
fn walk(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        found.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(&path, found);
        }
    }
}

/// Boot a VM sharing `src` (owned by `owner`), let its root attack, check
/// the host.
fn guest_root_plants_nothing(env: &TestEnv, src: &Path, owner: &HostUser) {
    // A host file the guest must not read nor link to: root's, 0600.
    let secret = src.join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(&secret, Some(0), Some(0)).unwrap();

    env.create("g", &mounts_yaml(src));
    env.run_within(&["start", "g"], BOOT);
    assert_eq!(env.status("g"), "Running");
    let said = env.shell("g", ATTACK);
    eprintln!("the guest's attempts:\n{said}");
    for refused in ["suid", "sgid", "sgid-dir", "block", "char", "link", "read"] {
        assert!(
            !said.contains(&format!("{refused}=0")),
            "{refused} should have failed in the guest:\n{said}"
        );
    }
    // What is harmless works: a FIFO, and a chown (to the owner, whatever
    // the guest named).
    assert!(
        said.contains("fifo=0") && said.contains("chown=0"),
        "{said}"
    );

    let mut entries = Vec::new();
    walk(src, &mut entries);
    for path in &entries {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let kind = meta.file_type();
        assert!(
            !kind.is_block_device() && !kind.is_char_device(),
            "{} is a device node",
            path.display()
        );
        assert_eq!(
            meta.permissions().mode() & 0o6000,
            0,
            "{} is setuid or setgid: {:o}",
            path.display(),
            meta.permissions().mode()
        );
        if *path != secret {
            assert_eq!(
                meta.uid(),
                owner.uid,
                "{} belongs to uid {}, not the share's owner",
                path.display(),
                meta.uid()
            );
            assert_eq!(meta.gid(), owner.gid, "{}", path.display());
        }
    }
    assert!(src.join("x").is_file(), "the copy itself was allowed");
    assert!(!src.join("hard").exists() && !src.join("disk").exists());
    let kept = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (kept.uid(), kept.nlink()),
        (0, 1),
        "the host's file untouched"
    );

    env.run_within(&["stop", "g"], SHORT);
    assert_eq!(env.status("g"), "Stopped");
    let left = env.wait_no_processes(SHORT);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn vm_run_by_root_a_guest_root_plants_nothing_privileged_in_a_users_share() {
    skip_unless_root!();
    let env = TestEnv::new();
    let (_guard, src) = common::shared_dir(&env);
    guest_root_plants_nothing(&env, &src, &host_user::test_user());
}

#[test]
fn vm_run_by_a_normal_user_a_guest_root_plants_nothing_privileged() {
    skip_unless_root!();
    let user = host_user::test_user();
    let env = TestEnv::as_user(&user);
    let (_guard, src) = common::shared_dir(&env);
    guest_root_plants_nothing(&env, &src, &user);
}

#[test]
fn vm_a_normal_users_mounts_work_both_ways_and_read_only_is_the_kernels() {
    skip_unless_root!();
    let user = host_user::test_user();
    let env = TestEnv::as_user(&user);
    let (_guard, src) = common::shared_dir(&env);
    std::fs::write(src.join("from-host"), "hello from the host\n").unwrap();
    host_user::give(&src.join("from-host"), &user);
    env.create("u", &mounts_yaml(&src));
    env.run_within(&["start", "u"], BOOT);
    assert_eq!(env.status("u"), "Running");
    assert_eq!(
        env.shell("u", "cat /mnt/rw/from-host /mnt/ro/from-host"),
        "hello from the host\nhello from the host"
    );
    env.shell(
        "u",
        "echo hello from the guest > /mnt/rw/from-guest && sync",
    );
    let written = src.join("from-guest");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "hello from the guest\n"
    );
    assert_eq!(host_user::owner(&written), user.uid);
    // The user's files are root's in the tiny guest.
    assert_eq!(env.shell("u", "stat -c %u:%g /mnt/rw/from-host"), "0:0");
    let run = env.run(&[
        "shell",
        "u",
        "--",
        "sh",
        "-c",
        "mount -o remount,rw /mnt/ro; echo no > /mnt/ro/refused",
    ]);
    assert_ne!(run.code(), Some(0), "{}", run.describe());
    assert!(
        run.stderr().contains("Read-only file system"),
        "{}",
        run.describe()
    );
    assert!(!src.join("refused").exists());
    // The agent, QEMU and virtiofsd all run as the user.
    for (pid, what) in env.processes() {
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| m.uid())
            .unwrap_or(user.uid);
        assert_eq!(uid, user.uid, "{what} runs as uid {uid}");
    }
    env.run_within(&["stop", "u"], SHORT);
    assert_eq!(env.status("u"), "Stopped");
    let left = env.wait_no_processes(SHORT);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
