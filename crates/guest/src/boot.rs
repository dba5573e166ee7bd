//! Init mode's boot steps: mounts, busybox applets, kernel modules, the
//! power button and the data disk. Every failure is logged and boot goes on
//! (a data disk that cannot be mounted is reported to the host, which fails
//! the start).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{Agent, DATA_MOUNT};
use vmkeep_protocol::{DataDisk, FsckRun};

use crate::disk;
use crate::flags::{FormatToken, Hostname};
use crate::input;
use crate::log::log;
use crate::sys;

/// Where the image builder puts the modules and their load order.
pub const MODULES_DIR: &str = "/lib/modules/vmkeep";

/// Make sure file descriptors 0, 1 and 2 are open (on the console if it
/// exists), so that no file the agent opens later becomes "stderr".
pub fn ensure_std_fds() {
    if (0..3).all(sys::fd_is_open) {
        return;
    }
    for candidate in [c"/dev/console", c"/dev/null"] {
        // SAFETY: candidate is a valid NUL-terminated path.
        let fd = unsafe { libc::open(candidate.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if fd < 0 {
            continue;
        }
        for target in 0..3 {
            if target != fd && !sys::fd_is_open(target) {
                // SAFETY: both are valid descriptor numbers.
                unsafe { libc::dup2(fd, target) };
            }
        }
        if fd > 2 {
            // SAFETY: fd was opened above and is not one of 0..2.
            unsafe { libc::close(fd) };
        }
        return;
    }
}

/// Mount the pseudo file systems PID 1 needs.
pub fn mount_early() {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        ("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        // For the ptys of interactive sessions (devtmpfs's /dev/ptmx
        // opens the instance mounted at /dev/pts).
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let target = Path::new(target);
        if let Err(e) = std::fs::create_dir_all(target) {
            log!("cannot create {}: {e}", target.display());
        }
        match sys::mount(source, target, fstype, flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => log!("cannot mount {fstype} on {}: {e}", target.display()),
        }
    }
}

/// Name the machine after the host's `vmkeep.hostname=` flag (without it,
/// or with a malformed one, the kernel's `(none)` stays).
pub fn set_hostname(hostname: Option<Hostname>) {
    let Some(name) = hostname else {
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline")
            && cmdline
                .split_ascii_whitespace()
                .any(|w| w.starts_with(vmkeep_protocol::kernel_flags::HOSTNAME_PREFIX))
        {
            log!(
                "ignoring a malformed {}",
                vmkeep_protocol::kernel_flags::HOSTNAME_PREFIX
            );
        }
        return;
    };
    if let Err(e) = sys::sethostname(name.as_str()) {
        log!("cannot set the hostname to {}: {e}", name.as_str());
    }
}

/// `/etc/passwd` and `/etc/group` of the tiny image (it has only root),
/// unless the image brings its own: `id`, `ls -l`, a shell's `~` and the
/// agent's sessions read them.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\ntty:x:5:\n";

pub fn write_user_database() {
    for (path, text) in [(crate::users::PASSWD, PASSWD), (crate::users::GROUP, GROUP)] {
        if Path::new(path).exists() {
            continue;
        }
        if let Err(e) = std::fs::write(path, text) {
            log!("cannot write {path}: {e}");
        }
    }
}

/// `busybox --install -s /bin`, so that commands find sh, ls, ...
pub fn install_busybox(agent: &Agent) {
    match agent.run_tool(&["/bin/busybox", "--install", "-s", "/bin"]) {
        Ok(result) if result.exit_code == 0 => {}
        Ok(result) => log!(
            "busybox --install exited with {}: {}",
            result.exit_code,
            String::from_utf8_lossy(&result.stderr).trim()
        ),
        Err(e) => log!("cannot run busybox --install: {e}"),
    }
}

/// The module file names listed in an `order` file, in order.
pub fn parse_module_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// Load the modules listed in `MODULES_DIR/order`, in order.
pub fn load_modules() {
    let dir = Path::new(MODULES_DIR);
    let order = match std::fs::read_to_string(dir.join("order")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log!("cannot read {}/order: {e}", dir.display());
            return;
        }
    };
    let started = Instant::now();
    let mut loaded = 0;
    for name in parse_module_order(&order) {
        let path = dir.join(name);
        let result = File::open(&path).and_then(|file| sys::finit_module(&file));
        match result {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log!("cannot load module {}: {e}", path.display()),
        }
    }
    log!(
        "loaded {loaded} kernel modules in {} ms",
        started.elapsed().as_millis()
    );
}

/// Open the power button and watch it. Returns only once the device is open
/// (a press before that would be lost), or after giving up on it.
pub fn watch_power_button(agent: &'static Agent) {
    let buttons = input::open_power_buttons(Duration::from_secs(3));
    if buttons.is_empty() {
        log!("no power button found; ACPI shutdown will not work");
    }
    for (path, device) in buttons {
        if let Err(e) = input::watch(path.clone(), device, move || agent.power_button_pressed()) {
            log!("cannot start watching {}: {e}", path.display());
        }
    }
}

/// Find the data disk and mount it, formatting it only when the host said
/// it is new and checking it only when the host asked (see `disk::plan`).
/// Returns what became of it, for the host.
pub fn mount_data_disk(agent: &Agent) -> DataDisk {
    let found = find_data_disk();
    let told = disk::Told {
        format: agent.flags.format_data,
        repair: agent.flags.repair_data,
        have_e2fsck: Path::new(disk::E2FSCK).exists(),
    };
    let device = disk::DEVICE;
    let state = match disk::plan(&found, told) {
        disk::Plan::Report(state) => state,
        disk::Plan::Mount => mount_rw(device, false, None),
        disk::Plan::RepairThenMount => {
            log!("checking {device} with e2fsck -f -y (asked by the host)");
            let fsck = run_e2fsck(agent, device);
            log!(
                "e2fsck exited with {}: {}",
                fsck.exit_code,
                fsck.output
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if disk::fsck_repaired(fsck.exit_code) {
                mount_rw(device, false, Some(fsck))
            } else {
                DataDisk::RepairFailed {
                    device: device.into(),
                    fsck,
                }
            }
        }
        disk::Plan::Format { token, may_be_done } => {
            if may_be_done && formatted_under(device, token) {
                log!("{device} was formatted for this instance in an earlier boot; mounting it");
                mount_rw(device, false, None)
            } else {
                format_and_mount(agent, device, token)
            }
        }
    };
    match &state {
        DataDisk::Mounted { .. } => {}
        DataDisk::NotAttached => log!("no data disk attached"),
        problem => log!("{DATA_MOUNT} is not mounted: {problem:?}"),
    }
    state
}

fn find_data_disk() -> disk::Found {
    // Wait for /dev/vda only when a virtio disk exists at all, so that a
    // machine without one does not spend the whole timeout.
    if !disk::virtio_device_present(Path::new(disk::SYS_VIRTIO_DEVICES), disk::VIRTIO_ID_BLOCK) {
        return disk::Found::NotAttached;
    }
    let device = Path::new(disk::DEVICE);
    if !disk::wait_for(device, Duration::from_secs(5)) {
        return disk::Found::DeviceMissing {
            error: "a virtio disk is attached but its device did not appear within 5 s".into(),
        };
    }
    match disk::read_head(device) {
        Ok(head) => disk::Found::Head {
            ext_superblock: disk::has_ext_superblock(&head),
        },
        Err(e) => disk::Found::DeviceMissing {
            error: format!("cannot read it: {e}"),
        },
    }
}

fn mount_rw(device: &str, formatted: bool, repaired: Option<FsckRun>) -> DataDisk {
    let target = Path::new(DATA_MOUNT);
    if let Err(e) = std::fs::create_dir_all(target) {
        log!("cannot create {DATA_MOUNT}: {e}");
    }
    match sys::mount(device, target, "ext4", libc::MS_NOATIME, "") {
        Ok(()) => DataDisk::Mounted {
            mount: DATA_MOUNT.into(),
            formatted,
            repaired,
            grown: grow_to_fill(device, target),
        },
        Err(e) => DataDisk::MountFailed {
            device: device.into(),
            error: sys::error_text(&e),
        },
    }
}

/// Grow the file system just mounted at `target` to fill `device`, when the
/// host made the disk larger (`disk:` raised): online, by the kernel, so
/// nothing is unmounted and a failure leaves it whole at its old size.
/// `None` when it fills the disk already.
fn grow_to_fill(device: &str, target: &Path) -> Option<Box<vmkeep_protocol::Grown>> {
    let size = disk::read_head(Path::new(device))
        .ok()
        .and_then(|head| disk::ext_size(&head))?;
    let device_bytes = File::open(device)
        .and_then(|file| sys::block_device_size(&file))
        .ok()?;
    let blocks = disk::grow_target(size, device_bytes)?;
    log!(
        "{device} is {device_bytes} bytes, its file system {}: growing it",
        size.bytes()
    );
    let grown = File::open(target).and_then(|dir| sys::ext4_resize(&dir, blocks));
    let after = disk::read_head(Path::new(device))
        .ok()
        .and_then(|head| disk::ext_size(&head))
        .unwrap_or(size);
    match grown {
        Ok(()) => {
            log!(
                "grew the file system on {device} to {} bytes",
                after.bytes()
            );
            Some(Box::new(vmkeep_protocol::Grown {
                from_bytes: size.bytes(),
                to_bytes: after.bytes(),
                error: None,
            }))
        }
        Err(e) => {
            log!("cannot grow the file system on {device}: {e}");
            Some(Box::new(vmkeep_protocol::Grown {
                from_bytes: size.bytes(),
                to_bytes: size.bytes(),
                error: Some(sys::error_text(&e)),
            }))
        }
    }
}

/// Whether `device` holds a completed format made under `token`: mounted
/// read-only (nothing is written), its token file read, unmounted.
fn formatted_under(device: &str, token: FormatToken) -> bool {
    let target = Path::new(DATA_MOUNT);
    let _ = std::fs::create_dir_all(target);
    if sys::mount(device, target, "ext4", libc::MS_RDONLY, "").is_err() {
        return false;
    }
    let found = std::fs::read_to_string(target.join(disk::FORMAT_TOKEN_FILE))
        .is_ok_and(|text| text.trim() == token.as_str());
    if let Err(e) = sys::umount(target, 0) {
        log!("cannot unmount the read-only {DATA_MOUNT}: {e}");
        let _ = sys::umount(target, libc::MNT_DETACH);
    }
    found
}

/// Make a file system on a disk the host says is new, mount it, and record
/// the token once everything is on the disk.
fn format_and_mount(agent: &Agent, device: &str, token: FormatToken) -> DataDisk {
    // busybox's mke2fs makes ext2; the ext4 driver mounts it.
    log!("{device} is new (the host says so); formatting it (ext2)");
    let failed = |error: String| DataDisk::FormatFailed {
        device: device.into(),
        error,
    };
    match agent.run_tool(&["/bin/busybox", "mke2fs", "-L", "vmkeep-data", device]) {
        Ok(result) if result.exit_code == 0 => {}
        Ok(result) => {
            return failed(format!(
                "mke2fs exited with {}: {}",
                result.exit_code,
                String::from_utf8_lossy(&result.stderr).trim()
            ));
        }
        Err(e) => return failed(format!("cannot run mke2fs: {e}")),
    }
    sys::sync();
    let state = mount_rw(device, true, None);
    if state.is_mounted() {
        let path = Path::new(DATA_MOUNT).join(disk::FORMAT_TOKEN_FILE);
        let written = File::create(&path).and_then(|mut file| {
            file.write_all(format!("{}\n", token.as_str()).as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written {
            // Harmless: a reboot in this QEMU would format the (empty) disk again.
            log!("cannot write {}: {e}", path.display());
        }
        sys::sync();
    }
    state
}

fn run_e2fsck(agent: &Agent, device: &str) -> FsckRun {
    match agent.run_tool(&[disk::E2FSCK, "-f", "-y", device]) {
        Ok(result) => {
            let mut text = String::from_utf8_lossy(&result.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&result.stderr));
            FsckRun {
                exit_code: result.exit_code,
                output: disk::output_tail(&text, 2000),
            }
        }
        Err(e) => FsckRun {
            exit_code: -1,
            output: format!("cannot run {}: {e}", disk::E2FSCK),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_skips_blank_lines_and_comments() {
        let text = "virtio_ring.ko\n\n# built in: virtio\n virtio_pci.ko \n";
        assert_eq!(
            parse_module_order(text),
            vec!["virtio_ring.ko", "virtio_pci.ko"]
        );
    }
}
