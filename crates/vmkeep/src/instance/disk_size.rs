//! The instance disk against its `disk:` setting: grow it at the next
//! start, leave it, or refuse to shrink it (pure; `hostagent/disk_size.rs`
//! grows it, `engine::edit` and `engine::start` refuse a shrink before
//! anything is touched).
//!
//! A cloud image's disk is made at least as large as the image itself
//! (`image::cloud`), so a `disk:` smaller than the image is no shrink: the
//! disk keeps the image's size, as it always had.

use crate::instance::config::ByteSize;

/// QEMU sizes disks in 512-byte sectors, rounding a size up.
const SECTOR: u64 = 512;

/// What a start does with the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChange {
    /// It has the configured size.
    Keep,
    /// `disk:` is smaller than the image the disk was made from: the disk
    /// keeps the image's size.
    KeepImageSize { image: u64, configured: u64 },
    /// `disk:` is larger: grow the image, then its file system.
    Grow { from: u64, to: u64 },
    /// `disk:` is smaller than the disk: refused (no shrinking).
    Shrink { from: u64, to: u64 },
}

/// Decide from the configured size, the disk's virtual size now, and the
/// size of the image it was made from (0 for a disk of its own).
pub fn decide(configured: u64, current: u64, image: u64) -> DiskChange {
    let configured = configured.div_ceil(SECTOR) * SECTOR;
    match configured.cmp(&current) {
        std::cmp::Ordering::Equal => DiskChange::Keep,
        std::cmp::Ordering::Greater if configured <= image => {
            DiskChange::KeepImageSize { image, configured }
        }
        std::cmp::Ordering::Greater => DiskChange::Grow {
            from: current,
            to: configured,
        },
        std::cmp::Ordering::Less if current <= image => {
            DiskChange::KeepImageSize { image, configured }
        }
        std::cmp::Ordering::Less => DiskChange::Shrink {
            from: current,
            to: configured,
        },
    }
}

impl DiskChange {
    /// The refusal of a shrink, for the user (`None` for anything else).
    pub fn refusal(&self, name: &str) -> Option<String> {
        let DiskChange::Shrink { from, to } = *self else {
            return None;
        };
        Some(format!(
            "disk: {} is smaller than the disk of {name}, which is {}: vmkeep never shrinks a disk \
             (the guest's file system fills it); set disk: {} or more",
            ByteSize(to),
            ByteSize(from),
            ByteSize(from)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::config::GIB;

    #[test]
    fn the_decision_table() {
        let cases = [
            ("same", 2 * GIB, 2 * GIB, 0, DiskChange::Keep),
            (
                "larger",
                3 * GIB,
                2 * GIB,
                0,
                DiskChange::Grow {
                    from: 2 * GIB,
                    to: 3 * GIB,
                },
            ),
            (
                "smaller",
                GIB,
                2 * GIB,
                0,
                DiskChange::Shrink {
                    from: 2 * GIB,
                    to: GIB,
                },
            ),
            (
                "smaller than the image the disk was made at",
                GIB,
                10 * GIB,
                10 * GIB,
                DiskChange::KeepImageSize {
                    image: 10 * GIB,
                    configured: GIB,
                },
            ),
            (
                "larger, but not beyond the image",
                8 * GIB,
                10 * GIB,
                10 * GIB,
                DiskChange::KeepImageSize {
                    image: 10 * GIB,
                    configured: 8 * GIB,
                },
            ),
            (
                "beyond the image",
                12 * GIB,
                10 * GIB,
                10 * GIB,
                DiskChange::Grow {
                    from: 10 * GIB,
                    to: 12 * GIB,
                },
            ),
            (
                "grown before, then set lower again (but above the image)",
                4 * GIB,
                6 * GIB,
                2 * GIB,
                DiskChange::Shrink {
                    from: 6 * GIB,
                    to: 4 * GIB,
                },
            ),
            (
                "a size QEMU rounded up to whole sectors",
                GIB + 100,
                GIB + 512,
                0,
                DiskChange::Keep,
            ),
        ];
        for (what, configured, current, image, expected) in cases {
            assert_eq!(decide(configured, current, image), expected, "{what}");
        }
    }

    #[test]
    fn only_a_shrink_is_refused_and_the_refusal_names_both_sizes() {
        let refusal = decide(GIB, 2 * GIB, 0).refusal("dev").unwrap();
        assert!(
            refusal.contains("1GiB") && refusal.contains("2GiB") && refusal.contains("dev"),
            "{refusal}"
        );
        assert_eq!(decide(3 * GIB, 2 * GIB, 0).refusal("dev"), None);
    }
}
