//! Every format version vmkeep writes and reads, in one place: the files of
//! an instance directory and of the image cache that another vmkeep (older
//! or newer) may read, and the host agent's API.
//!
//! Rules (docs/upgrade.md):
//! - A file (or journal line, or API answer) without a version is version 1:
//!   what vmkeep wrote before versions were written. It reads as before.
//! - A version above what this build knows is refused with [`TooNew`] (the
//!   file, both versions and the fix), never misread; `list` shows such an
//!   instance as Broken with that reason.
//! - A change a reader of the current version would misread bumps the
//!   version here. Fields added with defaults, which older readers ignore,
//!   do not.
//! - The commit that last changed this file is the base of the upgrade
//!   tests (tests/common/upgrade_base.rs): the oldest build a running VM
//!   is promised to move from in place. So this file changes only with a
//!   version.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One versioned format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// What it is, as a user finds it (`events.jsonl`).
    pub name: &'static str,
    /// The version this build writes, and the highest it reads.
    pub current: u32,
}

/// `events.jsonl`: each line's `v`.
pub const JOURNAL: Format = Format {
    name: "events.jsonl",
    current: 1,
};
/// `desired-state`: its `format N` line.
pub const DESIRED_STATE: Format = Format {
    name: "desired-state",
    current: 1,
};
/// `autostart.json`: its `format` field.
pub const AUTOSTART: Format = Format {
    name: "autostart.json",
    current: 1,
};
/// `saved-state.json` (`driver::qemu::snapshot::record`): its `format` field.
pub const SAVED_STATE: Format = Format {
    name: "saved-state.json",
    current: 1,
};
/// `image.json`, the cloud image an instance was made from: its `format`.
pub const IMAGE_RECORD: Format = Format {
    name: "image.json",
    current: 1,
};
/// The host agent's API on `ha.sock`: `api_version` in `GET /v1/info`.
/// 2 added `POST /v1/upgrade` (version 1, without it, cannot move in place).
pub const AGENT_API: Format = Format {
    name: "the host agent's API",
    current: 2,
};
// The guest protocol (`vmkeep_protocol`) is not versioned: both ends are of
// one build (the guest agent is embedded in the image the host agent boots),
// and an upgrade in place keeps the guest agent that runs, which the new
// host agent talks to with the same messages (tests: vm_upgrade_*).

/// Every format, for `vmkeep-hostagent --check-formats` and `--version`.
pub const ALL: [Format; 6] = [
    JOURNAL,
    DESIRED_STATE,
    AUTOSTART,
    SAVED_STATE,
    IMAGE_RECORD,
    AGENT_API,
];

/// The version of what carries none.
pub const UNVERSIONED: u32 = 1;

/// For `#[serde(default = ...)]`: an absent version is version 1.
pub fn unversioned() -> u32 {
    UNVERSIONED
}

/// This build: the package version and the commit it was built from (`git
/// rev-parse`, by build.rs; `unknown` outside a git checkout).
pub const BUILD: Build = Build {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("VMKEEP_GIT_COMMIT"),
};

/// A build of vmkeep, as `--version` prints it and the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    pub version: &'static str,
    pub commit: &'static str,
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.commit)
    }
}

/// What `vmkeep --version` prints after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("VMKEEP_GIT_COMMIT"),
    ")"
);

/// The versions a build speaks, as `vmkeep-hostagent --check-formats` prints
/// them (one JSON object): what `vmkeep upgrade` checks of a new agent
/// binary before the running agent moves onto it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spoken {
    pub version: String,
    pub commit: String,
    /// Format name -> version.
    pub formats: std::collections::BTreeMap<String, u32>,
}

impl Spoken {
    pub fn this_build() -> Spoken {
        Spoken {
            version: BUILD.version.into(),
            commit: BUILD.commit.into(),
            formats: ALL
                .iter()
                .map(|f| (f.name.to_string(), f.current))
                .collect(),
        }
    }

    /// Whether a build speaking `self` reads what this build writes: every
    /// format this build knows, at this build's version or above.
    pub fn reads_ours(&self) -> Result<(), String> {
        for format in ALL {
            match self.formats.get(format.name) {
                Some(&version) if version >= format.current => {}
                Some(&version) => {
                    return Err(format!(
                        "it reads {} up to version {version}; this vmkeep writes version {}",
                        format.name, format.current
                    ));
                }
                None => return Err(format!("it does not say which {} it reads", format.name)),
            }
        }
        Ok(())
    }
}

/// A file written in a format version newer than this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TooNew {
    pub format: Format,
    /// The file (or socket) that said it.
    pub path: PathBuf,
    pub found: u32,
}

impl fmt::Display for TooNew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is in {} version {}, and this vmkeep {} reads up to version {}: \
             this vmkeep is older than the one that wrote it; install that vmkeep or a newer one \
             (one whose `vmkeep-hostagent --check-formats` says {} {} or more)",
            self.path.display(),
            self.format.name,
            self.found,
            BUILD,
            self.format.current,
            self.format.name,
            self.found,
        )
    }
}

impl Format {
    /// `found` (None: the file states no version, so 1) is readable by this
    /// build, or the error that says why not.
    pub fn check(self, path: &Path, found: Option<u32>) -> Result<(), TooNew> {
        let found = found.unwrap_or(UNVERSIONED);
        if found > self.current {
            return Err(TooNew {
                format: self,
                path: path.to_path_buf(),
                found,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_version_is_version_one_and_a_newer_one_is_refused_with_the_fix() {
        let path = Path::new("/h/dev/autostart.json");
        assert_eq!(AUTOSTART.check(path, None), Ok(()));
        assert_eq!(AUTOSTART.check(path, Some(AUTOSTART.current)), Ok(()));
        let refused = AUTOSTART
            .check(path, Some(AUTOSTART.current + 1))
            .unwrap_err();
        let message = refused.to_string();
        for said in [
            "/h/dev/autostart.json",
            "autostart.json version 2",
            "reads up to version 1",
            "older than the one that wrote it",
            "install",
        ] {
            assert!(message.contains(said), "{said:?} not in {message}");
        }
    }

    #[test]
    fn format_names_are_unique_and_a_build_reads_its_own_formats() {
        let mut names: Vec<_> = ALL.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(Spoken::this_build().reads_ours(), Ok(()));
        let mut older = Spoken::this_build();
        older.formats.insert(AGENT_API.name.into(), 1);
        let refused = older.reads_ours().unwrap_err();
        assert!(
            refused.contains("the host agent's API up to version 1"),
            "{refused}"
        );
        older.formats.remove(AGENT_API.name);
        assert!(older.reads_ours().is_err());
    }
}
