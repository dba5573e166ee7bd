//! Where vmkeep keeps instances (`VMKEEP_HOME`) and caches (`VMKEEP_CACHE_DIR`).

use std::path::PathBuf;

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
