//! `autostart.json` in the instance directory: what `enable` registered, so
//! that `status`, `start`, `stop` and `delete` know without asking the
//! service manager. Written atomically; unknown fields are tolerated.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Condition, Domain, Manager};
use crate::formats;
use crate::instance::InstanceDir;
use crate::text::versioned_json;

pub const FILE: &str = "autostart.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Which manager runs it (absent in records of vmkeep 0.1 before domains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    pub manager: Manager,
    pub condition: Condition,
    pub keep_alive: bool,
    /// systemd unit name (`vmkeep-dev.service`) or launchd label.
    pub service: String,
    /// Where the definition was written.
    pub path: PathBuf,
    /// The user the service runs as.
    pub user: String,
    /// Whether the service manager was asked to enable (load) it; false for
    /// `--write-only`.
    pub loaded: bool,
    /// RFC 3339.
    pub enabled_at: String,
}

impl Record {
    /// The domain; for older records, told by where the definition is.
    pub fn domain(&self) -> Domain {
        self.domain.unwrap_or(match (self.manager, self.condition) {
            (Manager::Systemd, _) if self.path.starts_with("/etc/") => Domain::SystemdSystem,
            (Manager::Systemd, _) => Domain::SystemdUser,
            (Manager::Launchd, Condition::Login) => Domain::LaunchAgent,
            (Manager::Launchd, Condition::Boot) => Domain::LaunchDaemon,
        })
    }
}

pub fn path(dir: &InstanceDir) -> PathBuf {
    dir.dir().join(FILE)
}

/// The record, if autostart is enabled for this instance.
pub fn load(dir: &InstanceDir) -> io::Result<Option<Record>> {
    load_from(&path(dir))
}

fn load_from(path: &Path) -> io::Result<Option<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            // A newer format is refused, never misread.
            versioned_json::check(formats::AUTOSTART, path, &bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            parse(path, &bytes).map(Some)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> io::Result<Record> {
    {
        serde_json::from_slice(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid autostart record: {e}", path.display()),
            )
        })
    }
}

/// Write the record with its format version (atomically).
pub fn save(dir: &InstanceDir, record: &Record) -> io::Result<()> {
    let mut bytes = versioned_json::to_vec(formats::AUTOSTART, record).map_err(io::Error::other)?;
    bytes.push(b'\n');
    crate::os::fs::write_atomic(&path(dir), &bytes, 0o600)
}

pub fn remove(dir: &InstanceDir) -> io::Result<()> {
    crate::os::fs::remove_file_if_exists(&path(dir)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_tolerates_unknown_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(tmp.path(), "dev".parse().unwrap()).unwrap();
        std::fs::create_dir(dir.dir()).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        let record = Record {
            domain: Some(Domain::SystemdSystem),
            manager: Manager::Systemd,
            condition: Condition::Boot,
            keep_alive: false,
            service: "vmkeep-ann-dev.service".into(),
            path: "/etc/systemd/system/vmkeep-ann-dev.service".into(),
            user: "ann".into(),
            loaded: true,
            enabled_at: "2025-01-01T00:00:00Z".into(),
        };
        save(&dir, &record).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(record.clone()));
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(&dir)).unwrap()).unwrap();
        json["added_later"] = 1.into();
        std::fs::write(path(&dir), json.to_string()).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(record));
        remove(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
    }

    #[test]
    fn a_record_states_its_format_and_a_newer_one_is_refused_not_misread() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(tmp.path(), "dev".parse().unwrap()).unwrap();
        std::fs::create_dir(dir.dir()).unwrap();
        let record = Record {
            domain: None,
            manager: Manager::Systemd,
            condition: Condition::Login,
            keep_alive: true,
            service: "vmkeep-dev.service".into(),
            path: "/home/ann/.config/systemd/user/vmkeep-dev.service".into(),
            user: "ann".into(),
            loaded: true,
            enabled_at: "2025-01-01T00:00:00Z".into(),
        };
        save(&dir, &record).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(&dir)).unwrap()).unwrap();
        assert_eq!(json["format"], 1);
        // Written before versions: version 1.
        json.as_object_mut().unwrap().remove("format");
        std::fs::write(path(&dir), json.to_string()).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(record));
        json["format"] = 2.into();
        std::fs::write(path(&dir), json.to_string()).unwrap();
        let refused = load(&dir).unwrap_err().to_string();
        assert!(refused.contains("autostart.json version 2"), "{refused}");
        assert!(refused.contains("this vmkeep is older"), "{refused}");
    }
}
