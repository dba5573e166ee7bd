//! Unix sockets the agent serves on.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Bind a listening socket at `path`, replacing a stale socket file, readable
/// and writable by the owner only (0600). The caller must hold the lock that
/// makes it the only process serving there.
pub fn bind_private(path: &Path) -> io::Result<tokio::net::UnixListener> {
    super::fs::remove_file_if_exists(path)?;
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
