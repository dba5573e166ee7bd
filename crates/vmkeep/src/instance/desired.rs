//! The desired state: whether the user last asked an instance to run
//! (`vmkeep start`) or to stop (`vmkeep stop`). `vmkeep daemon` reconciles
//! towards it; without a daemon it is simply a record.

use std::io;

use super::layout::InstanceDir;
use crate::os;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
    /// `vmkeep suspend`: kept suspended until `vmkeep start`.
    Suspended,
}

impl Desired {
    fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Suspended => "suspended",
        }
    }
}

/// What was last asked; `None` if never (or the file is unreadable garbage).
pub fn read(dir: &InstanceDir) -> Option<Desired> {
    match std::fs::read_to_string(dir.desired_state()).ok()?.trim() {
        "running" => Some(Desired::Running),
        "stopped" => Some(Desired::Stopped),
        "suspended" => Some(Desired::Suspended),
        _ => None,
    }
}

/// Record what was asked (atomically). On a host filesystem too full for
/// the atomic write's temporary, an existing record is overwritten in place
/// instead: the words are a few bytes in a file's one block, so no new
/// block is needed.
pub fn write(dir: &InstanceDir, desired: Desired) -> io::Result<()> {
    let text = format!("{}\n", desired.as_str());
    match os::fs::write_atomic(&dir.desired_state(), text.as_bytes(), 0o600) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && dir.desired_state().exists() => {
            os::fs::overwrite_in_place(&dir.desired_state(), text.as_bytes())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::InstanceName;

    #[test]
    fn round_trips_and_garbage_reads_as_never_asked() {
        let root = tempfile::tempdir().unwrap();
        let name: InstanceName = "d".parse().unwrap();
        let dir = InstanceDir::new(root.path(), name).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        assert_eq!(read(&dir), None);
        write(&dir, Desired::Running).unwrap();
        assert_eq!(read(&dir), Some(Desired::Running));
        write(&dir, Desired::Stopped).unwrap();
        assert_eq!(read(&dir), Some(Desired::Stopped));
        std::fs::write(dir.desired_state(), "maybe").unwrap();
        assert_eq!(read(&dir), None);
        write(&dir, Desired::Suspended).unwrap();
        assert_eq!(read(&dir), Some(Desired::Suspended));
    }
}
