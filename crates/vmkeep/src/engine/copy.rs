//! `copy`: files and directories between the host and a running guest,
//! through the guest agent's copy mode in a session (`session::copy_in`,
//! `session::copy_out`), for every image: as the instance's user in a cloud
//! image, as root in the tiny one. Relative guest paths are relative to the
//! user's home (the tiny image: `/`). Where things land follows `scp -r`
//! and `cp -r` (`vmkeep_protocol::copy`); modes and mtimes are kept
//! (setuid, setgid and sticky bits are dropped, and said); nothing limits
//! the size, but a copy out of a guest stops while it would still leave the
//! host file system's reserve free (`session::copy_out::reserve`).

use std::path::PathBuf;

use vmkeep_protocol::copy::{copy_in_argv, copy_out_argv};
use vmkeep_protocol::session::OpenSession;

use super::EngineError;
use super::guest::{self, AgentAccess};
use crate::instance::{Home, InstanceName};
use crate::session::copy_in::{self, CopiedIn};
use crate::session::copy_out::{self, CopiedOut, Limits};

/// Which way, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Host paths into the guest's `dest`.
    In { sources: Vec<PathBuf>, dest: String },
    /// Guest paths into the host's `dest`.
    Out { sources: Vec<String>, dest: PathBuf },
}

/// A copy as the command line asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub name: InstanceName,
    pub direction: Direction,
    pub recursive: bool,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    In(CopiedIn),
    Out(CopiedOut),
}

/// How a copy is going, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of archive moved so far.
    pub bytes: u64,
    /// How many there will be, when known (copies into the guest).
    pub total: Option<u64>,
}

/// Copy as `plan` says; `progress` hears how it goes.
pub fn copy(
    home: &Home,
    plan: &CopyPlan,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<Copied, EngineError> {
    let access = guest::access(home, &plan.name)?;
    let name = plan.name.clone();
    match &plan.direction {
        Direction::In { sources, dest } => {
            let total = host_sources_size(sources, plan.recursive)?;
            let open = session_as_user(&access, copy_in_argv(dest, false));
            let recursive = plan.recursive;
            super::runtime()?.block_on(async {
                let session = access.session(open).await?;
                let mut moved = 0;
                copy_in::copy_in(&session, sources.clone(), recursive, |bytes| {
                    moved += bytes;
                    progress(Progress {
                        bytes: moved,
                        total: Some(total),
                    })
                })
                .await
                .map(Copied::In)
                .map_err(|source| EngineError::CopyIn { name, source })
            })
        }
        Direction::Out { sources, dest } => {
            let open = session_as_user(&access, copy_out_argv(sources, plan.recursive, false));
            super::runtime()?.block_on(async {
                let session = access.session(open).await?;
                let mut moved = 0;
                copy_out::copy_out(&session, dest, Limits::default(), |bytes| {
                    moved += bytes;
                    progress(Progress {
                        bytes: moved,
                        total: None,
                    })
                })
                .await
                .map(Copied::Out)
                .map_err(|source| EngineError::CopyOut { name, source })
            })
        }
    }
}

/// A session of the agent's own copy mode, as the instance's user, in the
/// user's home.
fn session_as_user(access: &AgentAccess, argv: Vec<String>) -> OpenSession {
    OpenSession {
        argv,
        user: access.user_name(),
        ..OpenSession::default()
    }
}

/// The bytes of the host's sources (what a progress bar counts up to); a
/// source that does not exist, or a directory without `-r`, is refused
/// here, before anything is sent.
fn host_sources_size(sources: &[PathBuf], recursive: bool) -> Result<u64, EngineError> {
    fn walk(path: &std::path::Path, total: &mut u64) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_file() {
            *total += meta.len();
        } else if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            for entry in entries.flatten() {
                walk(&entry.path(), total);
            }
        }
    }
    let mut total = 0;
    for source in sources {
        let follows = source.as_os_str().as_encoded_bytes().ends_with(b"/");
        let meta = match follows {
            true => std::fs::metadata(source),
            false => std::fs::symlink_metadata(source),
        };
        match meta {
            Err(e) => {
                return Err(EngineError::HostPath {
                    path: source.clone(),
                    source: e,
                });
            }
            Ok(meta) if meta.is_dir() && !recursive => {
                return Err(EngineError::Usage {
                    message: format!("{} is a directory; copy it with -r", source.display()),
                });
            }
            Ok(_) => walk(source, &mut total),
        }
    }
    Ok(total)
}
