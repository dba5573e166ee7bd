//! Init mode's boot steps: mounts, busybox applets, kernel modules, the
//! power button and the data disk. Every failure is logged and boot goes on.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{Agent, DATA_MOUNT};
use crate::disk;
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
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 5] = [
        ("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
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

/// Find, format on first use and mount the data disk. Returns whether
/// `/data` is mounted.
pub fn mount_data_disk(agent: &Agent) -> bool {
    // Wait for /dev/vda only when a virtio disk exists at all, so that a
    // machine without one does not spend the whole timeout.
    if !disk::virtio_device_present(Path::new(disk::SYS_VIRTIO_DEVICES), disk::VIRTIO_ID_BLOCK) {
        log!("no data disk attached");
        return false;
    }
    let device = Path::new("/dev/vda");
    if !disk::wait_for(device, Duration::from_secs(5)) {
        log!(
            "a virtio disk exists but {} did not appear; continuing without {DATA_MOUNT}",
            device.display()
        );
        return false;
    }
    let head = match disk::read_head(device) {
        Ok(head) => head,
        Err(e) => {
            log!(
                "cannot read {}: {e}; continuing without {DATA_MOUNT}",
                device.display()
            );
            return false;
        }
    };
    if !disk::has_ext_superblock(&head) {
        // busybox's mke2fs makes ext2; the ext4 driver mounts it.
        log!(
            "{} has no file system; formatting it (ext2)",
            device.display()
        );
        match agent.run_tool(&["/bin/busybox", "mke2fs", "-L", "vmkeep-data", "/dev/vda"]) {
            Ok(result) if result.exit_code == 0 => {}
            Ok(result) => {
                log!(
                    "mke2fs exited with {}: {}",
                    result.exit_code,
                    String::from_utf8_lossy(&result.stderr).trim()
                );
                return false;
            }
            Err(e) => {
                log!("cannot run mke2fs: {e}");
                return false;
            }
        }
    }
    let target = Path::new(DATA_MOUNT);
    if let Err(e) = std::fs::create_dir_all(target) {
        log!("cannot create {DATA_MOUNT}: {e}");
    }
    match sys::mount("/dev/vda", target, "ext4", libc::MS_NOATIME, "") {
        Ok(()) => {
            agent.set_data_mounted();
            true
        }
        Err(e) => {
            log!("cannot mount /dev/vda on {DATA_MOUNT}: {e}");
            false
        }
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
