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

/// A TCP port on 127.0.0.1 that is free now (the kernel picks it). Another
/// process may take it before it is used; the caller reports that clearly.
pub fn free_loopback_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a given loopback port can be bound now (for a fixed
/// `ssh.localPort`); the error says why not.
pub fn check_loopback_port_free(port: u16) -> io::Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port)).map(drop)
}
