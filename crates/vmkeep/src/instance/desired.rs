//! The desired state: whether the user last asked an instance to run
//! (`vmkeep start`) or to stop (`vmkeep stop`). `vmkeep daemon` reconciles
//! towards it; without a daemon it is simply a record.

use std::io;

use super::layout::InstanceDir;
use crate::formats;
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

/// The line that states the file's format version (`format 1`), after the
/// word; a file of one word (what vmkeep wrote before versions) is version 1.
const VERSION_PREFIX: &str = "format ";

/// What was last asked; `None` if never (or the file is unreadable garbage,
/// or of a newer format: [`too_new`] says so).
pub fn read(dir: &InstanceDir) -> Option<Desired> {
    let text = std::fs::read_to_string(dir.desired_state()).ok()?;
    if version_of(&text) > formats::DESIRED_STATE.current {
        return None;
    }
    match text.lines().next()?.trim() {
        "running" => Some(Desired::Running),
        "stopped" => Some(Desired::Stopped),
        "suspended" => Some(Desired::Suspended),
        _ => None,
    }
}

/// The file is of a newer format version than this build reads.
pub fn too_new(dir: &InstanceDir) -> Option<formats::TooNew> {
    let text = std::fs::read_to_string(dir.desired_state()).ok()?;
    formats::DESIRED_STATE
        .check(&dir.desired_state(), Some(version_of(&text)))
        .err()
}

fn version_of(text: &str) -> u32 {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(VERSION_PREFIX))
        .map(|n| n.trim().parse().unwrap_or(u32::MAX))
        .unwrap_or(formats::UNVERSIONED)
}

/// Record what was asked (atomically). On a host filesystem too full for
/// the atomic write's temporary, an existing record is overwritten in place
/// instead: the words are a few bytes in a file's one block, so no new
/// block is needed.
pub fn write(dir: &InstanceDir, desired: Desired) -> io::Result<()> {
    let text = format!(
        "{}\n{VERSION_PREFIX}{}\n",
        desired.as_str(),
        formats::DESIRED_STATE.current
    );
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

    #[test]
    fn it_states_its_version_reads_the_unversioned_and_refuses_a_newer_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "d".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        write(&dir, Desired::Running).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.desired_state()).unwrap(),
            "running\nformat 1\n"
        );
        assert_eq!(too_new(&dir), None);
        // What vmkeep wrote before versions: version 1.
        std::fs::write(dir.desired_state(), "stopped\n").unwrap();
        assert_eq!(read(&dir), Some(Desired::Stopped));
        assert_eq!(too_new(&dir), None);
        std::fs::write(dir.desired_state(), "stopped\nformat 2\n").unwrap();
        assert_eq!(read(&dir), None, "never misread");
        let refused = too_new(&dir).unwrap().to_string();
        assert!(refused.contains("desired-state version 2"), "{refused}");
        assert!(refused.contains(&dir.desired_state().display().to_string()));
    }
}
