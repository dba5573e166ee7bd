//! The data disk: `/dev/vda`, formatted on first use, mounted at `/data`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Offset of `s_magic` in an ext2/3/4 file system: the superblock starts at
/// byte 1024 and the magic is at offset 56 in it.
pub const EXT_MAGIC_OFFSET: usize = 1080;
pub const EXT_MAGIC: u16 = 0xEF53;

/// virtio device id of a block device (in `/sys/bus/virtio/devices/*/device`).
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const SYS_VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";

/// Whether `head` (the first bytes of a disk) holds an ext2/3/4 superblock.
pub fn has_ext_superblock(head: &[u8]) -> bool {
    head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2)
        .is_some_and(|magic| u16::from_le_bytes([magic[0], magic[1]]) == EXT_MAGIC)
}

/// Whether any virtio device with the given device id is present.
pub fn virtio_device_present(sys_devices: &Path, device_id: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(sys_devices) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("device"))
            .ok()
            .and_then(|text| u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok())
            == Some(device_id)
    })
}

/// Wait up to `timeout` for `path` to exist.
pub fn wait_for(path: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Read the start of a block device (enough to see an ext superblock).
pub fn read_head(device: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; 2048];
    let mut file = File::open(device)?;
    file.read_exact(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_ext_magic_at_its_offset() {
        let mut head = vec![0u8; 2048];
        assert!(!has_ext_superblock(&head), "blank disk");
        head[EXT_MAGIC_OFFSET] = 0x53;
        head[EXT_MAGIC_OFFSET + 1] = 0xEF;
        assert!(has_ext_superblock(&head));
        head[EXT_MAGIC_OFFSET] = 0xEF;
        head[EXT_MAGIC_OFFSET + 1] = 0x53;
        assert!(!has_ext_superblock(&head), "wrong byte order");
        assert!(!has_ext_superblock(&head[..1081]), "short buffer");
    }

    #[test]
    fn virtio_devices_are_matched_by_id() {
        let dir = std::env::temp_dir().join(format!("vmkeep-guest-virtio-{}", std::process::id()));
        for (dev, id) in [("virtio0", "0x0003\n"), ("virtio1", "0x0001\n")] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("device"), id).unwrap();
        }
        assert!(!virtio_device_present(&dir, VIRTIO_ID_BLOCK));
        assert!(virtio_device_present(&dir, 3));
        std::fs::create_dir_all(dir.join("virtio2")).unwrap();
        std::fs::write(dir.join("virtio2/device"), "0x0002\n").unwrap();
        assert!(virtio_device_present(&dir, VIRTIO_ID_BLOCK));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
