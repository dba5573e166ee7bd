//! The data disk of a tiny-image instance (`disk.qcow2`, `/data` in the
//! guest), as the host sees it.
//!
//! Guest data is sacred: the guest formats the disk only when the host says
//! it is new, and the host says so only when it knows: vmkeep created the
//! disk and nothing was ever written to it. `create` leaves a marker,
//! `data-disk.new` (a state file, not a runtime file), holding a random
//! token; the host agent passes `vmkeep.format_data=TOKEN` while the marker
//! exists, and removes the marker only once the guest reported the disk
//! formatted and mounted (the format synced). A format cut short by a crash
//! leaves the marker, so the next start formats again: nothing of the
//! user's was on it. An instance made before the marker existed counts as
//! new only if its image holds no allocated data at all (`qemu-img map`).
//!
//! A disk the guest cannot mount is never formatted: the start fails with a
//! [`DataDiskProblem`] naming the cause and the ways out, and `list` shows it
//! (the journal's `data-disk` event, through `instance::status`).

use std::io;
use std::path::Path;

use serde::Deserialize;

use super::layout::InstanceDir;
use crate::os;
use crate::os::tool::{Tool, ToolError};
use vmkeep_protocol::kernel_flags;
pub use vmkeep_protocol::{DataDisk, FsckRun};

/// A "this disk is new" decision: 16 lowercase hex digits, passed to the
/// guest with the format flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatToken(String);

impl FormatToken {
    /// A fresh random token.
    pub fn generate() -> io::Result<FormatToken> {
        let bytes: [u8; kernel_flags::FORMAT_TOKEN_LEN / 2] = os::fs::random_bytes()?;
        Ok(FormatToken(hex::encode(bytes)))
    }

    pub fn parse(text: &str) -> Option<FormatToken> {
        let text = text.trim();
        (text.len() == kernel_flags::FORMAT_TOKEN_LEN
            && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| FormatToken(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the host knows about the disk before a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Knowledge {
    /// `data-disk.new` is there: vmkeep made the disk and no format
    /// completed (or an older vmkeep made it and it holds no data at all).
    Marked(FormatToken),
    /// No marker: the disk has been in use, it is the user's.
    InUse,
}

/// What the host tells the guest to do with the disk at this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// Mount the file system that is there, or report why it cannot.
    Mount,
    /// The disk is new: format it (under this token) and mount it.
    Format(FormatToken),
    /// `e2fsck -f -y` on it, then mount it (`start --repair-data`).
    Repair,
}

impl Instruction {
    /// The words to add to the guest's kernel command line (with a leading
    /// space), empty for a plain mount.
    pub fn kernel_flags(&self) -> String {
        match self {
            Instruction::Mount => String::new(),
            Instruction::Format(token) => {
                format!(" {}{}", kernel_flags::FORMAT_DATA_PREFIX, token.as_str())
            }
            Instruction::Repair => format!(" {}", kernel_flags::REPAIR_DATA),
        }
    }
}

/// The decision. A new disk is formatted whatever else was asked (a repair
/// of it would find nothing of the user's); a repair only when asked.
pub fn instruction(knowledge: &Knowledge, repair: bool) -> Instruction {
    match (knowledge, repair) {
        (Knowledge::Marked(token), _) => Instruction::Format(token.clone()),
        (Knowledge::InUse, true) => Instruction::Repair,
        (Knowledge::InUse, false) => Instruction::Mount,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read the data-disk marker {path}: {source}")]
    ReadMarker { path: String, source: io::Error },
    #[error("cannot write the data-disk marker {path}: {source}")]
    WriteMarker { path: String, source: io::Error },
    #[error("cannot tell whether the data disk was ever written: {0}")]
    Map(#[from] ToolError),
    #[error(
        "cannot tell whether the data disk was ever written: `qemu-img map` printed something unexpected: {0}"
    )]
    MapOutput(String),
}

/// Write a new marker (with a fresh token) at `path`, atomically.
pub fn write_new_marker(path: &Path) -> io::Result<FormatToken> {
    let token = FormatToken::generate()?;
    os::fs::write_atomic(path, format!("{}\n", token.as_str()).as_bytes(), 0o600)?;
    Ok(token)
}

/// What the host knows about the disk of `dir`, and the instruction for
/// this boot.
pub fn prepare(dir: &InstanceDir, repair: bool) -> Result<(Knowledge, Instruction), PrepareError> {
    let marker = dir.data_disk_new();
    let marker_text = |e: io::Error| PrepareError::ReadMarker {
        path: marker.display().to_string(),
        source: e,
    };
    let marked = match os::fs::read_if_exists(&marker).map_err(marker_text)? {
        Some(text) => FormatToken::parse(&String::from_utf8_lossy(&text)),
        None => None,
    };
    // A marker with a garbled token still says "new", and so does an
    // unmarked image with no data at all (made by an older vmkeep, never
    // booted): mark it now, so that a crash from here on keeps it new.
    let knowledge = match marked {
        Some(token) => Knowledge::Marked(token),
        None if marker.exists() || (!repair && never_written(&dir.disk())?) => {
            let token = write_new_marker(&marker).map_err(|source| PrepareError::WriteMarker {
                path: marker.display().to_string(),
                source,
            })?;
            Knowledge::Marked(token)
        }
        None => Knowledge::InUse,
    };
    let instruction = instruction(&knowledge, repair);
    Ok((knowledge, instruction))
}

/// The guest reported the disk mounted: from now on it may hold the user's
/// files, so it is new no more. Returns whether a marker was removed.
pub fn mark_in_use(dir: &InstanceDir) -> io::Result<bool> {
    let removed = os::fs::remove_file_if_exists(&dir.data_disk_new())?;
    if removed {
        os::fs::sync_dir(dir.dir())?;
    }
    Ok(removed)
}

/// Whether the qcow2 image at `disk` holds no allocated data at all.
fn never_written(disk: &Path) -> Result<bool, PrepareError> {
    let map = Tool::new("qemu-img", "install it: sudo apt-get install qemu-utils")
        .args(["map", "--output=json"])
        .arg(disk)
        .output()?;
    map_has_no_data(&map).map_err(PrepareError::MapOutput)
}

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Deserialize)]
struct Extent {
    data: bool,
}

/// Whether `qemu-img map --output=json` output lists no extent with data.
pub fn map_has_no_data(json: &[u8]) -> Result<bool, String> {
    let extents: Vec<Extent> = serde_json::from_slice(json).map_err(|e| {
        format!(
            "{e}: {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        )
    })?;
    Ok(extents.iter().all(|extent| !extent.data))
}

/// Why an instance's `/data` is not usable, for the user: the guest's report
/// (or its absence) with a message and the ways out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct DataDiskProblem {
    /// What the guest reported; `None` when it said nothing about the disk.
    pub state: Option<DataDisk>,
}

/// How `start --repair-data` works, for hints.
const REPAIR_HINT: &str = "`vmkeep start NAME --repair-data` runs `e2fsck -f -y` on it in the guest \
     before mounting: it answers yes to every fix, restoring the superblock from a backup copy \
     if needed; files it cannot place go to /data/lost+found (copy disk.qcow2 first to keep the \
     disk as it is now)";
/// Starting over, for hints.
const START_OVER_HINT: &str = "or start over with an empty disk, losing its files: `vmkeep delete NAME && vmkeep create NAME`";

impl DataDiskProblem {
    /// The problem in a guest's report, if it reports one. `None` for a
    /// mounted disk; a report without the state means an unmounted `/data`
    /// unless the older `data_mount` field names it.
    pub fn in_report(data_disk: Option<&DataDisk>, data_mount: Option<&str>) -> Option<Self> {
        match (data_disk, data_mount) {
            (Some(state), _) if state.is_mounted() => None,
            (Some(state), _) => Some(DataDiskProblem {
                state: Some(state.clone()),
            }),
            (None, Some(_)) => None,
            (None, None) => Some(DataDiskProblem { state: None }),
        }
    }

    pub fn message(&self) -> String {
        let Some(state) = &self.state else {
            return "the guest agent did not report /data as mounted".into();
        };
        match state {
            DataDisk::NoFileSystem { device } => format!(
                "the data disk (disk.qcow2, {device} in the guest) holds no file system vmkeep \
                 recognises: its ext2 superblock is damaged, or it holds another file system; \
                 vmkeep formats only a disk it created that was never written, so it left it untouched"
            ),
            DataDisk::MountFailed { device, error } => format!(
                "the guest cannot mount the data disk (disk.qcow2, {device}) on /data: {error}; \
                 it was left untouched"
            ),
            DataDisk::DeviceMissing { device, error } => {
                format!("the guest has no usable data disk device {device}: {error}")
            }
            DataDisk::NotAttached => "the guest sees no data disk (disk.qcow2)".into(),
            DataDisk::FormatFailed { device, error } => {
                format!("formatting the new data disk ({device}) failed: {error}")
            }
            DataDisk::NoRepairTool { .. } => {
                "cannot repair the data disk: this tiny image has no e2fsck".into()
            }
            DataDisk::RepairFailed { fsck, .. } => format!(
                "e2fsck could not repair the data disk (exit code {}): {}",
                fsck.exit_code,
                last_lines(&fsck.output, 3)
            ),
            DataDisk::Mounted { .. } => "the data disk is mounted".into(),
            DataDisk::Unknown => {
                "the guest reported a data-disk state this vmkeep does not know".into()
            }
        }
    }

    /// The ways out; `NAME` stands for the instance's name.
    pub fn hint(&self) -> String {
        let logs = "see serial.log and qemu.log in the instance directory";
        match &self.state {
            Some(DataDisk::NoFileSystem { .. } | DataDisk::MountFailed { .. }) => {
                format!("{REPAIR_HINT}; {START_OVER_HINT}")
            }
            Some(DataDisk::RepairFailed { .. }) => format!(
                "the disk is as e2fsck left it: copy disk.qcow2 elsewhere to inspect it on the host \
                 (`qemu-nbd`, `e2fsck`), {START_OVER_HINT}"
            ),
            Some(DataDisk::NoRepairTool { .. }) => format!(
                "vmkeep fetches Debian's e2fsck-static with `apt-get download` when it builds the \
                 image: make apt work (`apt-get update`) and run `vmkeep start NAME --repair-data` \
                 again, {START_OVER_HINT}"
            ),
            Some(DataDisk::FormatFailed { .. }) => format!(
                "nothing of yours was on the new disk, and the next `vmkeep start NAME` formats \
                 it again; {logs}"
            ),
            Some(
                DataDisk::DeviceMissing { .. }
                | DataDisk::NotAttached
                | DataDisk::Mounted { .. }
                | DataDisk::Unknown,
            )
            | None => format!("{logs}; `vmkeep start NAME` looks at the disk again"),
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with "; ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> FormatToken {
        FormatToken::parse("0123456789abcdef").unwrap()
    }

    #[test]
    fn only_a_marked_disk_is_formatted_and_only_an_asked_repair_runs() {
        let cases = [
            (
                Knowledge::Marked(token()),
                false,
                Instruction::Format(token()),
            ),
            (
                Knowledge::Marked(token()),
                true,
                Instruction::Format(token()),
            ),
            (Knowledge::InUse, false, Instruction::Mount),
            (Knowledge::InUse, true, Instruction::Repair),
        ];
        for (knowledge, repair, expected) in cases {
            assert_eq!(
                instruction(&knowledge, repair),
                expected,
                "{knowledge:?} repair={repair}"
            );
        }
    }

    #[test]
    fn the_kernel_flags_are_the_ones_the_guest_parses() {
        assert_eq!(Instruction::Mount.kernel_flags(), "");
        assert_eq!(
            Instruction::Format(token()).kernel_flags(),
            " vmkeep.format_data=0123456789abcdef"
        );
        assert_eq!(Instruction::Repair.kernel_flags(), " vmkeep.repair_data=1");
    }

    #[test]
    fn tokens_are_sixteen_lowercase_hex_digits() {
        let fresh = FormatToken::generate().unwrap();
        assert_eq!(FormatToken::parse(fresh.as_str()), Some(fresh.clone()));
        assert_ne!(fresh, FormatToken::generate().unwrap());
        assert_eq!(FormatToken::parse("0123456789abcdef\n"), Some(token()));
        for bad in [
            "",
            "0123",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            "0123456789abcdef0",
        ] {
            assert_eq!(FormatToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn qemu_img_map_tells_a_never_written_image() {
        let blank = br#"[{ "start": 0, "length": 10737418240, "depth": 0, "present": false, "zero": true, "data": false}]"#;
        assert_eq!(map_has_no_data(blank), Ok(true));
        let written = br#"[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680}]"#;
        assert_eq!(map_has_no_data(written), Ok(false));
        assert!(map_has_no_data(b"garbage").is_err());
    }

    #[test]
    fn prepare_marks_a_never_written_disk_and_leaves_a_written_one_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "d".parse().unwrap()).unwrap();
        std::fs::create_dir(dir.dir()).unwrap();
        let img = |args: &[&str]| {
            let ok = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{args:?}");
        };
        let disk = dir.disk().display().to_string();
        img(&["qemu-img", "create", "-q", "-f", "qcow2", &disk, "64M"]);

        // An older vmkeep's instance that never booted: marked, then formatted.
        let (knowledge, first) = prepare(&dir, false).unwrap();
        let Instruction::Format(token) = first else {
            panic!("{first:?}")
        };
        assert!(matches!(knowledge, Knowledge::Marked(_)));
        // The marker holds the token: a crash now formats again, same token.
        let (_, again) = prepare(&dir, false).unwrap();
        assert_eq!(again, Instruction::Format(token));
        assert!(mark_in_use(&dir).unwrap());
        assert!(!mark_in_use(&dir).unwrap());

        // Written, no marker: mounted (or repaired when asked), never formatted.
        img(&["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 4k", &disk]);
        assert_eq!(prepare(&dir, false).unwrap().1, Instruction::Mount);
        assert_eq!(prepare(&dir, true).unwrap().1, Instruction::Repair);
        assert!(!dir.data_disk_new().exists(), "nothing was marked");
    }

    #[test]
    fn every_problem_has_a_message_and_a_way_out() {
        let dev = || "/dev/vda".to_string();
        let states = [
            Some(DataDisk::NoFileSystem { device: dev() }),
            Some(DataDisk::MountFailed {
                device: dev(),
                error: "Structure needs cleaning (os error 117)".into(),
            }),
            Some(DataDisk::DeviceMissing {
                device: dev(),
                error: "did not appear".into(),
            }),
            Some(DataDisk::NotAttached),
            Some(DataDisk::FormatFailed {
                device: dev(),
                error: "mke2fs exited with 1".into(),
            }),
            Some(DataDisk::NoRepairTool { device: dev() }),
            Some(DataDisk::RepairFailed {
                device: dev(),
                fsck: FsckRun {
                    exit_code: 4,
                    output: "a\nb\n\nc\nd UNEXPECTED INCONSISTENCY".into(),
                },
            }),
            Some(DataDisk::Unknown),
            None,
        ];
        for state in states {
            let problem = DataDiskProblem { state };
            assert!(!problem.message().is_empty(), "{problem:?}");
            assert!(problem.hint().contains("NAME"), "{problem:?}");
        }
        let damaged = DataDiskProblem {
            state: Some(DataDisk::NoFileSystem { device: dev() }),
        };
        let hint = damaged.hint();
        assert!(
            hint.contains("--repair-data")
                && hint.contains("e2fsck -f -y")
                && hint.contains("vmkeep delete NAME && vmkeep create NAME"),
            "{hint}"
        );
        let failed = DataDiskProblem {
            state: Some(DataDisk::RepairFailed {
                device: dev(),
                fsck: FsckRun {
                    exit_code: 4,
                    output: "a\nb\n\nc\nd".into(),
                },
            }),
        };
        assert!(
            failed.message().ends_with("b; c; d"),
            "{}",
            failed.message()
        );
    }

    #[test]
    fn a_report_is_a_problem_unless_it_says_mounted() {
        let mounted = DataDisk::Mounted {
            mount: "/data".into(),
            formatted: true,
            repaired: None,
            grown: None,
        };
        assert_eq!(
            DataDiskProblem::in_report(Some(&mounted), Some("/data")),
            None
        );
        assert_eq!(
            DataDiskProblem::in_report(None, Some("/data")),
            None,
            "older guest, mounted"
        );
        assert_eq!(
            DataDiskProblem::in_report(None, None),
            Some(DataDiskProblem { state: None }),
            "older guest, not mounted"
        );
        let refused = DataDisk::NoFileSystem {
            device: "/dev/vda".into(),
        };
        assert_eq!(
            DataDiskProblem::in_report(Some(&refused), None),
            Some(DataDiskProblem {
                state: Some(refused)
            })
        );
    }
}
