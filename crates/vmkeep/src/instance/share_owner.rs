//! Who a shared directory is served as on the host: the user whose
//! permissions the guest's reads and writes get, and who owns every file
//! and directory the guest creates there (pure; the host facts are given).
//!
//! Root in a guest is the guest's to have and must gain nothing on the
//! host, so a writable share is never served as root:
//!
//! - vmkeep run by a normal user serves its shares as that user (no other
//!   identity is possible, and `mountOwner:` naming another is refused);
//! - vmkeep run as root (boot-level units, `sudo`) serves a share as
//!   `mountOwner:` when set, else as the owner of the shared directory
//!   itself (a project under /home/alice is served as alice). A writable
//!   share that would so be served as root is refused with the fix (set
//!   `mountOwner:`, or give the directory to that user); a read-only one of
//!   a root-owned directory is served as root, read-only in the host's
//!   kernel.
//!
//! Whatever the guest asks, a file it creates belongs to that owner (its
//! uid and gid are squashed to the owner's), and the owner's files appear
//! in the guest as the guest user's (root in the tiny image). Files of
//! other host users keep their owners and appear as `nobody`.

use std::fmt;
use std::str::FromStr;

/// A user or group as written: a name or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    Name(String),
    Id(u32),
}

impl fmt::Display for NameOrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrId::Name(name) => f.write_str(name),
            NameOrId::Id(id) => write!(f, "{id}"),
        }
    }
}

fn name_or_id(text: &str) -> Result<NameOrId, String> {
    if let Ok(id) = text.parse::<u32>() {
        return Ok(NameOrId::Id(id));
    }
    let valid = !text.is_empty()
        && text.len() <= 32
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(NameOrId::Name(text.to_string()))
    } else {
        Err(format!(
            "{text:?} is not a user or group name, nor a number"
        ))
    }
}

/// `mountOwner:` (vmkeep's own field): `USER` or `USER:GROUP`, each a name
/// or a number; without a group, the user's primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOwner {
    pub user: NameOrId,
    pub group: Option<NameOrId>,
}

impl FromStr for MountOwner {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        Ok(MountOwner {
            user: name_or_id(user)?,
            group: group.map(name_or_id).transpose()?,
        })
    }
}

impl fmt::Display for MountOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(group) => write!(f, "{}:{group}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

impl<'de> serde::Deserialize<'de> for MountOwner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::yaml_de::ScalarString::deserialize(d)?;
        text.0
            .parse()
            .map_err(|e: String| serde::de::Error::custom(format!("{e}; write USER or USER:GROUP")))
    }
}

/// A uid and a gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

impl Ids {
    pub const ROOT: Ids = Ids { uid: 0, gid: 0 };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// What the decision is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    /// Who runs vmkeep (its effective ids).
    pub running_as: Ids,
    /// `mountOwner:`, resolved in the user database.
    pub configured: Option<Ids>,
    /// Who owns the shared directory.
    pub location_owner: Ids,
    pub writable: bool,
}

/// Why a share is served as whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerReason {
    /// vmkeep runs as a normal user: that user.
    RunningUser,
    /// `mountOwner:` says so.
    Configured,
    /// vmkeep runs as root: the shared directory's owner.
    DirectoryOwner,
}

/// Who serves a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareOwner {
    pub ids: Ids,
    pub reason: OwnerReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "mountOwner: only root can serve shares as another user (vmkeep runs as uid {running}); remove mountOwner"
    )]
    NeedsRoot { running: u32 },
    #[error(
        "is writable and would be served as root (mountOwner: root): a guest could then plant root-owned files on this host; set mountOwner to an unprivileged user"
    )]
    ConfiguredRoot,
    #[error(
        "is writable and belongs to root: vmkeep never serves a guest's writes as root; set mountOwner: USER (who will own what the guest writes) and give that user the directory (chown USER DIR), or make the mount read-only"
    )]
    RootOwnedWritable,
}

/// Who serves a share (pure).
pub fn decide(facts: &OwnerFacts) -> Result<ShareOwner, OwnerError> {
    if !facts.running_as.is_root() {
        if facts
            .configured
            .is_some_and(|c| c.uid != facts.running_as.uid)
        {
            return Err(OwnerError::NeedsRoot {
                running: facts.running_as.uid,
            });
        }
        return Ok(ShareOwner {
            ids: facts.running_as,
            reason: OwnerReason::RunningUser,
        });
    }
    let owner = match facts.configured {
        Some(ids) => {
            if ids.is_root() && facts.writable {
                return Err(OwnerError::ConfiguredRoot);
            }
            ShareOwner {
                ids,
                reason: OwnerReason::Configured,
            }
        }
        None => {
            if facts.location_owner.is_root() && facts.writable {
                return Err(OwnerError::RootOwnedWritable);
            }
            ShareOwner {
                ids: facts.location_owner,
                reason: OwnerReason::DirectoryOwner,
            }
        }
    };
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Ids = Ids {
        uid: 1000,
        gid: 1000,
    };
    const BOB: Ids = Ids {
        uid: 1001,
        gid: 100,
    };

    fn facts(
        running_as: Ids,
        configured: Option<Ids>,
        location_owner: Ids,
        writable: bool,
    ) -> OwnerFacts {
        OwnerFacts {
            running_as,
            configured,
            location_owner,
            writable,
        }
    }

    #[test]
    fn the_owner_table() {
        use OwnerReason::*;
        let root = Ids::ROOT;
        for (facts, expected) in [
            // A normal user serves as itself, whoever owns the directory.
            (facts(ALICE, None, BOB, true), Ok((ALICE, RunningUser))),
            (facts(ALICE, None, root, true), Ok((ALICE, RunningUser))),
            (
                facts(ALICE, Some(ALICE), BOB, true),
                Ok((ALICE, RunningUser)),
            ),
            (
                facts(ALICE, Some(BOB), BOB, false),
                Err(OwnerError::NeedsRoot { running: 1000 }),
            ),
            // Root: mountOwner, else the directory's owner; never root for writes.
            (facts(root, Some(BOB), ALICE, true), Ok((BOB, Configured))),
            (facts(root, None, ALICE, true), Ok((ALICE, DirectoryOwner))),
            (
                facts(root, None, root, true),
                Err(OwnerError::RootOwnedWritable),
            ),
            (facts(root, None, root, false), Ok((root, DirectoryOwner))),
            (
                facts(root, Some(root), ALICE, true),
                Err(OwnerError::ConfiguredRoot),
            ),
            (
                facts(root, Some(root), ALICE, false),
                Ok((root, Configured)),
            ),
        ] {
            let got = decide(&facts).map(|o| (o.ids, o.reason));
            assert_eq!(got, expected, "{facts:?}");
        }
    }

    #[test]
    fn mount_owner_is_a_user_and_maybe_a_group() {
        let parsed = |t: &str| t.parse::<MountOwner>();
        assert_eq!(
            parsed("alice").unwrap(),
            MountOwner {
                user: NameOrId::Name("alice".into()),
                group: None
            }
        );
        assert_eq!(
            parsed("1000:100").unwrap(),
            MountOwner {
                user: NameOrId::Id(1000),
                group: Some(NameOrId::Id(100))
            }
        );
        assert_eq!(parsed("alice:staff").unwrap().to_string(), "alice:staff");
        for bad in ["", ":", "alice:", "-x", "a b", "al/ice"] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }
}
