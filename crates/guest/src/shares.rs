//! Host directories shared over virtio-fs: mounting a tag where the host
//! asks (idempotently), and unmounting them all before the machine ends.

use std::path::Path;

use vmkeep_protocol::{MountRequest, Mounted};

use crate::log::log;
use crate::sys;

/// The file system type of a virtio-fs mount.
pub const FSTYPE: &str = "virtiofs";

/// One line of `/proc/self/mountinfo`, the fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device, `major:minor` (a FUSE mount's minor is its connection).
    pub dev: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    pub read_only: bool,
}

/// Undo the kernel's octal escapes in mountinfo paths (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/self/mountinfo`; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let dev = fields.get(2)?.to_string();
            let mount_point = unescape(fields.get(4)?);
            let options = fields.get(5)?;
            let mut rest = after.split(' ');
            let fstype = rest.next()?.to_string();
            let source = unescape(rest.next()?);
            Some(MountEntry {
                dev,
                mount_point,
                fstype,
                source,
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// What to do for a mount request, given the current mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The tag is mounted there already, as asked.
    Already,
    Mount,
    /// Something else is mounted there.
    Occupied {
        what: String,
    },
}

/// Decide (pure). The last mount on a mount point is the one that shows.
pub fn plan(request: &MountRequest, mounts: &[MountEntry]) -> Plan {
    let Some(top) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == request.mount_point)
    else {
        return Plan::Mount;
    };
    // The same share, read-only or not: the host enforces a read-only one
    // whatever the guest's mount says, and a writable one the guest chose
    // to remount read-only is its own business.
    if top.fstype == FSTYPE && top.source == request.tag {
        return Plan::Already;
    }
    Plan::Occupied {
        what: format!("{} ({})", top.source, top.fstype),
    }
}

/// Carry out a mount request.
pub fn mount(request: &MountRequest) -> Result<Mounted, String> {
    if !request.mount_point.starts_with('/') || request.mount_point == "/" {
        return Err(format!(
            "the mount point {:?} is not an absolute path below /",
            request.mount_point
        ));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    match plan(request, &mounts) {
        Plan::Already => return Ok(Mounted { already: true }),
        Plan::Occupied { what } => {
            return Err(format!(
                "{} is already a mount point of {what}",
                request.mount_point
            ));
        }
        Plan::Mount => {}
    }
    let target = Path::new(&request.mount_point);
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let flags = if request.read_only {
        libc::MS_RDONLY
    } else {
        0
    };
    sys::mount(&request.tag, target, FSTYPE, flags, "").map_err(|e| {
        format!(
            "cannot mount the share {} on {}: {e}",
            request.tag,
            target.display()
        )
    })?;
    log!(
        "mounted the host's {} on {}{}",
        request.tag,
        target.display(),
        if request.read_only {
            " (read-only)"
        } else {
            ""
        }
    );
    Ok(Mounted { already: false })
}

/// How many mounts of share `tag` there are (mountinfo only: nothing that
/// would wait on the share itself).
pub fn mounts_of(tag: &str) -> u32 {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| {
            parse_mountinfo(&text)
                .iter()
                .filter(|m| m.fstype == FSTYPE && m.source == tag)
                .count() as u32
        })
        .unwrap_or(0)
}

/// Unmount every virtio-fs mount (before the machine ends), deepest first,
/// except those of `lost` shares: their unmount would wait for a daemon
/// that is gone.
pub fn unmount_all(lost: &std::collections::BTreeSet<String>) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for entry in parse_mountinfo(&text).iter().rev() {
        if entry.fstype == FSTYPE
            && !lost.contains(&entry.source)
            && let Err(e) = sys::umount(Path::new(&entry.mount_point), libc::MNT_DETACH)
        {
            log!("cannot detach {}: {e}", entry.mount_point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:20 / / rw,relatime - rootfs rootfs rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
30 22 254:0 / /data rw,noatime - ext4 /dev/vda rw
31 22 0:40 / /mnt/my\\040src ro,relatime - virtiofs fs0 rw
32 22 0:41 / /tmp/lima rw,relatime - virtiofs fs1 rw
";

    fn request(tag: &str, mount_point: &str, read_only: bool) -> MountRequest {
        MountRequest {
            tag: tag.into(),
            mount_point: mount_point.into(),
            read_only,
        }
    }

    #[test]
    fn mountinfo_lines_are_read_with_their_escapes() {
        let mounts = parse_mountinfo(INFO);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[3],
            MountEntry {
                dev: "0:40".into(),
                mount_point: "/mnt/my src".into(),
                fstype: "virtiofs".into(),
                source: "fs0".into(),
                read_only: true,
            }
        );
        assert!(!mounts[4].read_only);
        assert!(parse_mountinfo("garbage\n").is_empty());
    }

    #[test]
    fn a_mount_is_made_once_and_never_over_something_else() {
        let mounts = parse_mountinfo(INFO);
        assert_eq!(
            plan(&request("fs0", "/mnt/my src", true), &mounts),
            Plan::Already
        );
        assert_eq!(
            plan(&request("fs2", "/home/u", false), &mounts),
            Plan::Mount
        );
        assert!(matches!(
            plan(&request("fs2", "/data", false), &mounts),
            Plan::Occupied { what } if what.contains("ext4")
        ));
        assert_eq!(
            plan(&request("fs1", "/tmp/lima", true), &mounts),
            Plan::Already,
            "remounted by the guest: still the share"
        );
        assert!(matches!(
            plan(&request("fs0", "/tmp/lima", false), &mounts),
            Plan::Occupied { .. }
        ));
        // The root file system is no obstacle to a mount on "/x".
        assert_eq!(plan(&request("fs3", "/x", false), &mounts), Plan::Mount);
    }
}
