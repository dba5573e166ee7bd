//! The host agent's `copyToHost` (`instance::copy_to_host` resolves the
//! entries): once the guest is ready and before `start` returns, each guest
//! file is copied to the host through a session of the guest agent's
//! copy-out mode (`session::copy_out`, with all its rules: nothing written
//! outside the named path, no symlink followed on the host, no special
//! bits, the host disk's reserve kept), as root in the guest (as Lima's
//! `sudo cat` does), and at most `MAX_COPY_BYTES`.
//!
//! - A guest path that is a symlink is resolved in the guest (the copy is
//!   of what it points to, as `cat` would read it); a fifo, socket or
//!   device (or a directory) is refused with a message: never read, never
//!   made on the host.
//! - A copy the guest reports incomplete (a file that changed while it
//!   was read) leaves no copy on the host.
//! - A guest file that does not exist fails the start, unless
//!   `skipIfMissing`; any other failure fails it too (for a guest this
//!   agent booted; an adopted one runs on, and the problem is logged).
//! - `deleteOnStop`: the host's copy is removed once the VM is stopped (not
//!   when it is suspended: the guest lives on in its saved state).

use std::path::Path;

use vmkeep_protocol::copy::copy_out_argv;
use vmkeep_protocol::session::OpenSession;

use crate::instance::copy_to_host::{CopyRule, MAX_COPY_BYTES};
use crate::link::guest_link::GuestLink;
use crate::session::copy_out::{self, CopyOutError, Limits};

/// Why a `copyToHost` entry was not copied.
#[derive(Debug, thiserror::Error)]
#[error("copyToHost: {guest} -> {}: {problem}", host.display())]
pub struct CopyToHostError {
    pub guest: String,
    pub host: std::path::PathBuf,
    pub problem: String,
}

/// Copy every entry; the first that fails ends it.
pub async fn copy_all(link: &GuestLink, rules: &[CopyRule]) -> Result<(), CopyToHostError> {
    for rule in rules {
        copy_one(link, rule).await?;
    }
    Ok(())
}

async fn copy_one(link: &GuestLink, rule: &CopyRule) -> Result<(), CopyToHostError> {
    let fail = |problem: String| CopyToHostError {
        guest: rule.guest.clone(),
        host: rule.host.clone(),
        problem,
    };
    // Lima makes the directories (0700); what exists is left as it is.
    if let Some(parent) = rule.host.parent()
        && !parent.is_dir()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| fail(format!("cannot make {}: {e}", parent.display())))?;
    }
    let open = OpenSession {
        argv: copy_out_argv(std::slice::from_ref(&rule.guest), false, true),
        ..OpenSession::default()
    };
    let session = link.open_session(open).map_err(|e| fail(e.to_string()))?;
    let limits = Limits {
        max_bytes: Some(MAX_COPY_BYTES),
    };
    match copy_out::copy_out(&session, &rule.host, limits, |_| {}).await {
        Ok(done) => {
            for warning in done.warnings {
                tracing::warn!("copyToHost: {}: {warning}", rule.guest);
            }
            tracing::info!(
                "copied {} (guest) to {} ({} bytes)",
                rule.guest,
                rule.host.display(),
                done.bytes
            );
            Ok(())
        }
        Err(CopyOutError::Missing { .. }) if rule.skip_if_missing => {
            tracing::info!(
                "copyToHost: {} does not exist in the guest; skipped (skipIfMissing)",
                rule.guest
            );
            Ok(())
        }
        Err(CopyOutError::Missing { .. }) => Err(fail(
            "it does not exist in the guest; set skipIfMissing: true to start without it".into(),
        )),
        Err(CopyOutError::Incomplete { problems }) => {
            // What the guest sent for it is not to be trusted as whole: the
            // host keeps no copy of it.
            let _ = remove_copy(&rule.host);
            Err(fail(format!(
                "not copied: {} (copyToHost copies regular files; a symlink is followed in the guest, a fifo, socket, device or directory is refused)",
                problems.join("; ")
            )))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Remove the host copies of the `deleteOnStop` entries (a file or a
/// symlink; never what a directory holds).
pub fn delete_on_stop(rules: &[CopyRule]) {
    for rule in rules.iter().filter(|r| r.delete_on_stop) {
        match remove_copy(&rule.host) {
            Ok(true) => tracing::info!("deleted {} (deleteOnStop)", rule.host.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("deleting {} (deleteOnStop): {e}", rule.host.display()),
        }
    }
}

fn remove_copy(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "a directory is there now; left as it is",
        )),
        Ok(_) => std::fs::remove_file(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
