//! The data disk: `/dev/vda`, mounted at `/data`; formatted only when the
//! host says it is new, repaired only when the host asks.
//!
//! The guest never guesses "blank" from what it reads: a disk without a
//! recognisable file system may be a damaged one full of the user's files.
//! [`plan`] is the decision, a pure function; `boot::mount_data_disk` acts.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use vmkeep_protocol::DataDisk;

use crate::flags::FormatToken;

/// The data disk's device in the tiny image (the first virtio disk).
pub const DEVICE: &str = "/dev/vda";
/// Where the image builder puts the static e2fsck.
pub const E2FSCK: &str = "/sbin/e2fsck";
/// Written in a freshly made file system once the format completed: it
/// holds the token of the host's "this disk is new" decision, so that a
/// reboot in the same QEMU (same kernel command line) mounts the disk
/// instead of formatting it again.
pub const FORMAT_TOKEN_FILE: &str = ".vmkeep-formatted";

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

/// The size an ext2/3/4 superblock gives its file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtSize {
    pub blocks: u64,
    pub block_size: u64,
}

impl ExtSize {
    pub fn bytes(self) -> u64 {
        self.blocks * self.block_size
    }
}

/// The file system's size from the start of its disk (`head`, see
/// [`read_head`]): `s_blocks_count` (with its high half on a 64-bit file
/// system) and `s_log_block_size`.
pub fn ext_size(head: &[u8]) -> Option<ExtSize> {
    if !has_ext_superblock(head) {
        return None;
    }
    let superblock = head.get(1024..2048)?;
    let u32_at = |at: usize| u32::from_le_bytes(superblock[at..at + 4].try_into().unwrap());
    let log = u32_at(24);
    if log > 6 {
        return None;
    }
    let incompat_64bit = u32_at(0x60) & 0x80 != 0;
    let high = if incompat_64bit { u32_at(0x150) } else { 0 };
    Some(ExtSize {
        blocks: (u64::from(high) << 32) | u64::from(u32_at(4)),
        block_size: 1024 << log,
    })
}

/// The block count to grow a file system to so that it fills a device of
/// `device_bytes`; `None` when it fills it already (a partial block at the
/// end cannot be used).
pub fn grow_target(size: ExtSize, device_bytes: u64) -> Option<u64> {
    let fits = device_bytes / size.block_size;
    (fits > size.blocks).then_some(fits)
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

/// What the guest found before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No virtio block device exists.
    NotAttached,
    /// A virtio block device exists but its node did not appear or cannot be read.
    DeviceMissing { error: String },
    /// The start of the disk was read.
    Head { ext_superblock: bool },
}

/// What the host told the guest (kernel flags) and what the image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub format: Option<FormatToken>,
    pub repair: bool,
    pub have_e2fsck: bool,
}

/// What to do with the data disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing can be done: report this state.
    Report(DataDisk),
    /// Mount the file system that is there.
    Mount,
    /// `e2fsck -f -y`, then mount.
    RepairThenMount,
    /// The host says the disk is new: format it and mount it. When
    /// `may_be_done`, a file system is there already: first check (read-only)
    /// whether a format under `token` completed, and mount that instead.
    Format {
        token: FormatToken,
        may_be_done: bool,
    },
}

/// The decision table. Only the host's word makes a format; a repair needs
/// the host's word and an e2fsck; anything else not mountable is reported
/// and left as it is.
pub fn plan(found: &Found, told: Told) -> Plan {
    let device = DEVICE.to_string();
    match (found, told.format, told.repair) {
        (Found::NotAttached, _, _) => Plan::Report(DataDisk::NotAttached),
        (Found::DeviceMissing { error }, _, _) => Plan::Report(DataDisk::DeviceMissing {
            device,
            error: error.clone(),
        }),
        (Found::Head { ext_superblock }, Some(token), _) => Plan::Format {
            token,
            may_be_done: *ext_superblock,
        },
        (Found::Head { .. }, None, true) if !told.have_e2fsck => {
            Plan::Report(DataDisk::NoRepairTool { device })
        }
        (Found::Head { .. }, None, true) => Plan::RepairThenMount,
        (
            Found::Head {
                ext_superblock: true,
            },
            None,
            false,
        ) => Plan::Mount,
        (
            Found::Head {
                ext_superblock: false,
            },
            None,
            false,
        ) => Plan::Report(DataDisk::NoFileSystem { device }),
    }
}

/// Whether an e2fsck exit code means the file system is now consistent
/// (0: clean, 1: errors fixed, 2: fixed, reboot advised; higher codes are
/// bit flags of failures).
pub fn fsck_repaired(exit_code: i32) -> bool {
    (0..=2).contains(&exit_code)
}

/// The last `max` bytes of a tool's output, at a character boundary.
pub fn output_tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> FormatToken {
        FormatToken::parse("00112233445566aa").unwrap()
    }

    #[test]
    fn the_decision_table() {
        let head = |ext_superblock| Found::Head { ext_superblock };
        let told = |format: Option<FormatToken>, repair, have_e2fsck| Told {
            format,
            repair,
            have_e2fsck,
        };
        let dev = || DEVICE.to_string();
        let missing = Found::DeviceMissing {
            error: "timed out".into(),
        };
        let cases: Vec<(&str, Found, Told, Plan)> = vec![
            (
                "no disk",
                Found::NotAttached,
                told(Some(token()), true, true),
                Plan::Report(DataDisk::NotAttached),
            ),
            (
                "device never appeared, even for a new disk",
                missing.clone(),
                told(Some(token()), false, true),
                Plan::Report(DataDisk::DeviceMissing {
                    device: dev(),
                    error: "timed out".into(),
                }),
            ),
            (
                "a file system, nothing said: mount it",
                head(true),
                told(None, false, true),
                Plan::Mount,
            ),
            (
                "no file system, nothing said: never format",
                head(false),
                told(None, false, true),
                Plan::Report(DataDisk::NoFileSystem { device: dev() }),
            ),
            (
                "new disk, blank",
                head(false),
                told(Some(token()), false, true),
                Plan::Format {
                    token: token(),
                    may_be_done: false,
                },
            ),
            (
                "new disk with a file system: an interrupted format or a reboot after one",
                head(true),
                told(Some(token()), false, true),
                Plan::Format {
                    token: token(),
                    may_be_done: true,
                },
            ),
            (
                "repair of a damaged superblock (e2fsck finds the backups)",
                head(false),
                told(None, true, true),
                Plan::RepairThenMount,
            ),
            (
                "repair of a file system the kernel refuses",
                head(true),
                told(None, true, true),
                Plan::RepairThenMount,
            ),
            (
                "repair without an e2fsck in the image",
                head(false),
                told(None, true, false),
                Plan::Report(DataDisk::NoRepairTool { device: dev() }),
            ),
        ];
        for (what, found, told, expected) in cases {
            assert_eq!(plan(&found, told), expected, "{what}");
        }
    }

    #[test]
    fn only_exit_codes_up_to_two_are_a_repaired_file_system() {
        let repaired: Vec<i32> = (0..=16).filter(|c| fsck_repaired(*c)).collect();
        assert_eq!(repaired, [0, 1, 2]);
        assert!(!fsck_repaired(-1));
    }

    #[test]
    fn output_tail_keeps_the_end_on_a_character_boundary() {
        assert_eq!(output_tail("  abc\n", 10), "abc");
        assert_eq!(output_tail("abcdef", 3), "def");
        assert_eq!(output_tail("aé", 1), "");
        assert_eq!(output_tail("aéb", 2), "b");
    }

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
    fn the_size_comes_from_the_superblock_and_grows_to_whole_blocks() {
        let mut head = vec![0u8; 2048];
        assert_eq!(ext_size(&head), None, "no file system");
        head[EXT_MAGIC_OFFSET] = 0x53;
        head[EXT_MAGIC_OFFSET + 1] = 0xEF;
        head[1024 + 4..1024 + 8].copy_from_slice(&524_288u32.to_le_bytes());
        head[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
        let size = ext_size(&head).unwrap();
        assert_eq!(
            size,
            ExtSize {
                blocks: 524_288,
                block_size: 4096
            }
        );
        assert_eq!(size.bytes(), 2 << 30);
        assert_eq!(grow_target(size, 2 << 30), None, "fills it");
        assert_eq!(grow_target(size, (2 << 30) + 4095), None, "a partial block");
        assert_eq!(grow_target(size, 3 << 30), Some(786_432));
        // A 64-bit file system's high half.
        head[1024 + 0x60] = 0x80;
        head[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext_size(&head).unwrap().blocks, (1 << 32) + 524_288);
        // A block size no ext file system has.
        head[1024 + 24] = 9;
        assert_eq!(ext_size(&head), None);
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
