//! The ssh key pair vmkeep uses for cloud-image instances: one ed25519 pair
//! per vmkeep home (`$VMKEEP_HOME/.ssh/id_ed25519`, mode 0600), generated on
//! first use. The public half is derived from the private key file, so the
//! two can never disagree.

use std::io;
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, LineEnding, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("cannot write the ssh key {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the ssh key {path}: {message}; delete it to have vmkeep make a new one")]
    Read { path: PathBuf, message: String },
    #[error("cannot generate an ssh key: {0}")]
    Generate(String),
}

/// vmkeep's key pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file (what `ssh -i` takes).
    pub private_key: PathBuf,
    /// The public key as an OpenSSH `authorized_keys` line.
    pub public_key: String,
}

/// The key file of the vmkeep home `root`.
pub fn key_path(root: &Path) -> PathBuf {
    root.join(".ssh").join("id_ed25519")
}

/// The key pair of the vmkeep home `root`, generated if there is none.
pub fn ensure(root: &Path) -> Result<KeyPair, SshKeyError> {
    let path = key_path(root);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SshKeyError::Write { path, source }
    };
    if !path.exists() {
        let dir = path.parent().unwrap_or(root);
        crate::os::fs::create_private_dir_all(dir).map_err(write_err(dir))?;
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| SshKeyError::Generate(e.to_string()))?;
        key.set_comment("vmkeep");
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| SshKeyError::Generate(e.to_string()))?;
        // Written aside, then hard-linked into place: if two processes race,
        // the first link wins and both use its key.
        let tmp = crate::os::fs::temp_sibling(&path);
        crate::os::fs::write_atomic(&tmp, text.as_bytes(), 0o600).map_err(write_err(&tmp))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(write_err(&path)(e)),
        }
    }
    let key = PrivateKey::read_openssh_file(&path).map_err(|e| SshKeyError::Read {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| SshKeyError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(KeyPair {
        private_key: path,
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_private_key_per_home_kept_across_calls() {
        let root = tempfile::tempdir().unwrap();
        let first = ensure(root.path()).unwrap();
        assert!(
            first.public_key.starts_with("ssh-ed25519 "),
            "{}",
            first.public_key
        );
        assert!(first.public_key.ends_with(" vmkeep"));
        let mode = std::fs::metadata(&first.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = ensure(root.path()).unwrap();
        assert_eq!(first.public_key, second.public_key);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(ensure(other.path()).unwrap().public_key, first.public_key);
        let text = std::fs::read_to_string(&first.private_key).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let names: Vec<_> = std::fs::read_dir(root.path().join(".ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["id_ed25519"]);
    }
}
