//! Where vmkeep keeps instances (`VMKEEP_HOME`) and caches
//! (`VMKEEP_CACHE_DIR`): the one [`Home`] of every front end, the engine
//! and the host agent, and the lookup of an instance in it.

use std::io;
use std::path::{Path, PathBuf};

use super::layout::{InstanceDir, SocketPathTooLong, instance_names};
use super::name::InstanceName;
use super::ownership::{self, Foreign, Ownership};

/// Environment variable naming the directory that holds all instances.
pub const HOME_ENV: &str = "VMKEEP_HOME";
/// Environment variable naming the download/build cache.
pub const CACHE_ENV: &str = "VMKEEP_CACHE_DIR";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(
        "cannot tell where to keep instances: neither {HOME_ENV} nor HOME is set; set {HOME_ENV}=/some/dir"
    )]
    NoHome,
    #[error("{HOME_ENV} must be an absolute path, got {0:?}; set it to an absolute directory")]
    Relative(PathBuf),
}

/// Why an instance cannot be looked up in a home.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(
        "there is no instance {name}; create it with `vmkeep create {name}` (or see `vmkeep list`)"
    )]
    NotFound { name: InstanceName },

    #[error(
        "{} is not a vmkeep instance: it is {what}; vmkeep leaves it alone \
         (move it out of the instances' directory, or `vmkeep delete --force {name}` to delete it with everything in it)",
        dir.display()
    )]
    Foreign {
        name: InstanceName,
        dir: PathBuf,
        what: String,
    },

    #[error(transparent)]
    SocketPath(#[from] SocketPathTooLong),

    #[error("cannot read {}: {source}", dir.display())]
    Read { dir: PathBuf, source: io::Error },
}

/// Where instances live (`$VMKEEP_HOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// The home of this process's environment.
    pub fn from_env() -> Result<Home, HomeError> {
        Ok(Home {
            root: instances_root()?,
        })
    }

    pub fn at(root: &Path) -> Home {
        Home {
            root: root.to_path_buf(),
        }
    }

    /// The layout of an instance, existing or not. A directory of that name
    /// that vmkeep did not make (a Lima instance, say) is refused here, so
    /// that no verb acts on it: only `delete --force` removes it.
    pub fn layout(&self, name: &InstanceName) -> Result<InstanceDir, LookupError> {
        let dir = self.layout_any(name)?;
        if let Some(foreign) = foreign(&dir)? {
            return Err(LookupError::Foreign {
                dir: dir.dir().to_path_buf(),
                what: foreign.describe(),
                name: name.clone(),
            });
        }
        Ok(dir)
    }

    /// The layout of `name`, whoever made its directory.
    pub fn layout_any(&self, name: &InstanceName) -> Result<InstanceDir, SocketPathTooLong> {
        InstanceDir::new(&self.root, name.clone())
    }

    /// The layout of an existing instance, or [`LookupError::NotFound`].
    pub fn existing(&self, name: &InstanceName) -> Result<InstanceDir, LookupError> {
        let dir = self.layout(name)?;
        if !dir.dir().is_dir() {
            return Err(LookupError::NotFound { name: name.clone() });
        }
        Ok(dir)
    }

    /// The names of the instances in it, sorted.
    pub fn instance_names(&self) -> Vec<InstanceName> {
        instance_names(&self.root)
    }
}

/// What the directory of `dir` is when vmkeep did not make it (`None` when
/// it is vmkeep's, or does not exist).
pub fn foreign(dir: &InstanceDir) -> Result<Option<Foreign>, LookupError> {
    if !dir.dir().is_dir() {
        return Ok(None);
    }
    match ownership::inspect(dir.dir()).map_err(|source| LookupError::Read {
        dir: dir.dir().to_path_buf(),
        source,
    })? {
        Ownership::Vmkeep => Ok(None),
        Ownership::Foreign(foreign) => Ok(Some(foreign)),
    }
}

/// The directory holding one subdirectory per instance: `$VMKEEP_HOME`, else
/// `~/.vmkeep`.
pub fn instances_root() -> Result<PathBuf, HomeError> {
    absolute_from_env(HOME_ENV).unwrap_or_else(|| user_home().map(|h| h.join(".vmkeep")))
}

/// The cache: `$VMKEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/vmkeep`, else
/// `~/.cache/vmkeep`.
pub fn cache_root() -> Result<PathBuf, HomeError> {
    if let Some(dir) = absolute_from_env(CACHE_ENV) {
        return dir;
    }
    if let Some(Ok(xdg)) = absolute_from_env("XDG_CACHE_HOME") {
        return Ok(xdg.join("vmkeep"));
    }
    user_home().map(|h| h.join(".cache").join("vmkeep"))
}

fn absolute_from_env(key: &str) -> Option<Result<PathBuf, HomeError>> {
    let value = std::env::var_os(key).filter(|v| !v.is_empty())?;
    let path = PathBuf::from(value);
    Some(if path.is_absolute() {
        Ok(path)
    } else {
        Err(HomeError::Relative(path))
    })
}

fn user_home() -> Result<PathBuf, HomeError> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(HomeError::NoHome)
}
