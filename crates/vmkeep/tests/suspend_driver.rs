//! The save itself (driver level, real QEMU with the tiny image, TCG) when
//! the disk fills up in the middle of writing the state: the host agent's
//! free-space check refuses a save that would not fit before it starts
//! (tests/suspend.rs), so only a disk that fills meanwhile (another writer)
//! gets here. Skipping that check is what makes it happen here on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use vmkeep::driver::qemu::accel::Accel;
use vmkeep::driver::qemu::args::LaunchSpec;
use vmkeep::driver::qemu::snapshot::{self, SaveFailure, SaveOptions, StateAfterFailure};
use vmkeep::driver::qemu::{self, QemuVm};
use vmkeep::image::tiny;
use vmkeep::instance::InstanceDir;
use vmkeep::link::guest_link;
use vmkeep::os;

/// A tmpfs mounted on a temporary directory; unmounted when dropped (after
/// the QEMU guard, declared later, has killed its QEMU).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("vkd")
            .tempdir_in("/tmp")
            .unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.path()).status();
        if !matches!(status, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// Kills the QEMU (by pidfd) unless the test ended it.
struct QemuGuard<'a>(&'a QemuVm);

impl Drop for QemuGuard<'_> {
    fn drop(&mut self) {
        use vmkeep::driver::Vm;
        let _ = self.0.kill();
    }
}

fn state_files(dir: &InstanceDir) -> Vec<String> {
    common::names(dir.dir())
        .into_iter()
        .filter(|n| n.contains("saved-state"))
        .collect()
}

#[tokio::test]
async fn vm_save_cut_short_by_a_full_disk_leaves_no_state_and_the_guest_runs_on() {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache");
    let image = tiny::ensure(&cache, None, &mut |m| eprintln!("tiny image: {m}")).unwrap();
    let tmpfs = Tmpfs::mount(300);
    let dir = InstanceDir::new(tmpfs.path(), "d".parse().unwrap()).unwrap();
    os::fs::create_private_dir_all(dir.dir()).unwrap();
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.disk())
        .arg("64M")
        .status()
        .expect("run qemu-img");
    assert!(status.success());
    let mut spec = LaunchSpec::for_instance(
        &dir,
        Accel::Tcg,
        1,
        256,
        image.kernel.clone(),
        image.initrd.clone(),
        image.base_cmdline(),
    );
    // The guest's RAM: a memfd QEMU inherits (as the host agent makes it).
    let ram = os::memfd::create_guest_ram(256 << 20).unwrap();
    spec.ram_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&ram));
    let binary = qemu::binary::resolve(vmkeep::guest_arch::GuestArch::HOST).expect("QEMU in PATH");
    let (vm, _events) = qemu::launch(&binary, &spec, &dir.qemu_log(), None)
        .await
        .expect("launch QEMU");
    drop(ram);
    let _guard = QemuGuard(&vm);
    let (link, _) = guest_link::wait_ready(
        &dir.guest_socket(),
        Instant::now() + Duration::from_secs(120),
    )
    .await
    .expect("the guest becomes ready");

    // Leave less room than the device state takes (~400 KiB).
    let filler: PathBuf = tmpfs.path().join("filler");
    let stat = rustix::fs::statvfs(tmpfs.path()).unwrap();
    let available = stat.f_bavail * stat.f_frsize;
    os::fs::create_reserved(&filler, available - (64 << 10), 0o600).unwrap();

    let no_check = SaveOptions {
        deadline: Duration::from_secs(20),
        reserve_bytes: 0,
        check_space: false,
    };
    let failed = snapshot::save(&vm, &dir, &no_check)
        .await
        .expect_err("the device state cannot fit");
    eprintln!("the save failed as it should: {failed}");
    assert!(
        failed.to_string().contains("No space left on device")
            && failed
                .to_string()
                .ends_with("the VM runs on; nothing was saved"),
        "{failed}"
    );
    match &failed.failure {
        SaveFailure::Io { action, source, .. } => {
            assert_eq!(*action, "write");
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{source}");
        }
        other => panic!("expected the write to fail for lack of space, got {other}"),
    }
    assert_eq!(failed.after, StateAfterFailure::Running);
    assert_eq!(
        state_files(&dir),
        Vec::<String>::new(),
        "no part of a state is left"
    );
    assert!(!snapshot::exists(&dir));
    // The guest runs on: its agent answers, its clock goes on.
    let before = link.time(Duration::from_secs(5)).await.unwrap();
    link.ping(Duration::from_secs(5)).await.unwrap();
    let after = link.time(Duration::from_secs(5)).await.unwrap();
    assert!(after > before, "the guest's clock runs");

    // With room again the same VM saves, and QEMU ends.
    std::fs::remove_file(&filler).unwrap();
    let saved = snapshot::save(&vm, &dir, &SaveOptions::new(Duration::from_secs(20)))
        .await
        .expect("the save succeeds with room");
    eprintln!(
        "then saved {} KiB in {:?}",
        saved.state_bytes / 1024,
        saved.elapsed
    );
    assert!(snapshot::exists(&dir));
    assert_eq!(state_files(&dir), ["saved-state.bin", "saved-state.json"]);
    assert!(vm.is_child());
    use vmkeep::driver::Vm;
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.exited())
        .await
        .expect("QEMU is gone after a save");
    eprintln!("QEMU ended: {exit}");
}
