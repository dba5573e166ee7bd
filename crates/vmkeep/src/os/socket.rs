//! Unix sockets the agent serves on.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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

/// Bind a listening socket at `path` that only its owner can connect to,
/// with no moment at which anyone else could: it is bound in a fresh 0700
/// directory beside `path`, made 0600 there, and renamed into place. The
/// directories leading to `path` are made (0700) if missing, and left as
/// they are if not. A socket
/// already at `path` (one a previous run left) is replaced; anything else
/// there is refused, and a symlink is never followed.
pub fn bind_owner_only(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Missing directories are made private; existing ones are left as they are.
    if !parent.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or name another hostSocket",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let staging = parent.join(format!(
        ".vmkeep-sock-{}",
        hex::encode(super::fs::random_bytes::<4>()?)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", staging.display())))?;
    let bound = (|| {
        let inside = staging.join("s");
        let listener = tokio::net::UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Remove the socket at `path` if it is one (never anything else).
pub fn remove_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn an_owner_only_socket_is_0600_in_a_private_directory_and_replaces_only_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock/docker.sock");
        let listener = bind_owner_only(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_stream, _) = listener.accept().await.unwrap();
        drop(listener);
        // A stale socket is replaced; nothing is left in the directory but it.
        let _again = bind_owner_only(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["docker.sock"]);
        // A file or a symlink in the way is refused and left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind_owner_only(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind_owner_only(&link).is_err());
        remove_socket(&file).unwrap();
        assert!(file.exists(), "only sockets are removed");
        remove_socket(&path).unwrap();
        assert!(!path.exists());
    }
}
