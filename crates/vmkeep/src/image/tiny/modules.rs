//! The kernel modules the guest needs, and finding them in a kernel's
//! modules directory.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Kernel modules the guest needs, in load order (dependencies first).
/// Modules that the kernel builds in are simply absent and skipped.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "evdev",
    "button",
    "failover",
    "net_failover",
    "virtio_net",
    // Host directories (`mounts:`): virtiofs needs fuse and virtio.
    "fuse",
    "virtiofs",
];

/// Which of the wanted modules a kernel has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModuleSelection {
    /// (module name, file), in the wanted order.
    pub found: Vec<(String, PathBuf)>,
    /// Names with no file (built in, or not configured).
    pub missing: Vec<String>,
}

/// Modules of `wanted` found under `root` (by file name `<name>.ko`, with
/// `-` and `_` equivalent), in the order of `wanted`, and the names missing.
pub fn select_modules(root: &Path, wanted: &[&str]) -> io::Result<ModuleSelection> {
    let mut available: HashMap<String, PathBuf> = HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if let Some(stem) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".ko"))
            {
                available.entry(stem.replace('-', "_")).or_insert(path);
            }
        }
    }
    let mut selection = ModuleSelection::default();
    for name in wanted {
        match available.get(&name.replace('-', "_")) {
            Some(path) => selection.found.push((name.to_string(), path.clone())),
            None => selection.missing.push(name.to_string()),
        }
    }
    Ok(selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_selected_by_name_in_the_wanted_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "drivers/virtio/virtio.ko",
            "drivers/virtio/virtio_ring.ko",
            "drivers/virtio/virtio_pci.ko",
            "drivers/char/hw_random/virtio-rng.ko",
            "drivers/input/evdev.ko",
            "drivers/net/net-failover.ko",
            "drivers/virtio/virtio_pci.ko.xz.sig",
        ];
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, file).unwrap();
        }
        let ModuleSelection { found, missing } = select_modules(
            dir.path(),
            &[
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "evdev",
                "net_failover",
            ],
        )
        .unwrap();
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "evdev",
                "net_failover"
            ]
        );
        assert!(
            found[4].1.ends_with("drivers/net/net-failover.ko"),
            "dash and underscore are the same"
        );
        assert_eq!(missing, ["virtio_blk"]);
    }
}
