//! Which QEMU runs, resolved in this one place: `VMKEEP_QEMU` (a path to
//! the qemu-system binary) when set, else the first in `PATH`; and its
//! version, asked from the binary itself (`--version`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::QemuError;
use super::capabilities::{self, Capabilities};
use crate::os::tool::Tool;

/// The environment variable naming the QEMU to run.
pub const OVERRIDE_VAR: &str = "VMKEEP_QEMU";

/// A QEMU binary found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBinary {
    pub path: PathBuf,
}

/// `VMKEEP_QEMU`, when set (for what runs vmkeep later: service units).
pub fn override_path() -> Option<PathBuf> {
    std::env::var_os(OVERRIDE_VAR)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The QEMU to run for a guest of `arch` (`qemu-system-x86_64`), from this
/// process's environment.
pub fn resolve(arch: crate::guest_arch::GuestArch) -> Result<QemuBinary, QemuError> {
    resolve_from(
        override_path().map(PathBuf::into_os_string),
        std::env::var_os("PATH"),
        arch.qemu_binary(),
        arch.qemu_package(),
    )
}

/// [`resolve`] from given values of `VMKEEP_QEMU` and `PATH`.
pub fn resolve_from(
    override_path: Option<OsString>,
    path_var: Option<OsString>,
    name: &str,
    package: &'static str,
) -> Result<QemuBinary, QemuError> {
    if let Some(path) = override_path.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(QemuError::Override {
                path,
                problem: "is not an absolute path".into(),
            });
        }
        if !is_executable(&path) {
            return Err(QemuError::Override {
                path,
                problem: "is not an executable file".into(),
            });
        }
        return Ok(QemuBinary { path });
    }
    find_in(path_var.as_deref(), name)
        .map(|path| QemuBinary { path })
        .ok_or_else(|| QemuError::Missing {
            binary: name.into(),
            package,
        })
}

/// The first executable `name` in the directories of `path_var`.
pub fn find_in(path_var: Option<&std::ffi::OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl QemuBinary {
    /// What this QEMU can do, from its `--version` (one short process).
    pub fn capabilities(&self) -> Result<Capabilities, QemuError> {
        let output = Tool::new(&self.path, "install QEMU, or point VMKEEP_QEMU at one")
            .arg("--version")
            .output()
            .map_err(|e| QemuError::Version {
                binary: self.path.clone(),
                problem: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&output);
        capabilities::parse_version_output(&text)
            .map(Capabilities::of)
            .ok_or_else(|| QemuError::Version {
                binary: self.path.clone(),
                problem: format!(
                    "its --version printed no QEMU version: {}",
                    crate::link::untrusted::shown(text.trim(), 120)
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_override_wins_else_the_first_in_path() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("qemu-system-x86_64"), "not executable").unwrap();
        let in_b = executable(&b, "qemu-system-x86_64");
        let other = executable(root.path(), "my-qemu");
        let path = std::env::join_paths([&a, &b]).unwrap();
        let found = |over: Option<&Path>| {
            resolve_from(
                over.map(|p| p.as_os_str().to_owned()),
                Some(path.clone()),
                "qemu-system-x86_64",
                "qemu-system-x86",
            )
        };
        assert_eq!(found(None).unwrap().path, in_b);
        assert_eq!(found(Some(&other)).unwrap().path, other);
        // Set but empty: as if unset.
        assert_eq!(
            resolve_from(
                Some("".into()),
                Some(path.clone()),
                "qemu-system-x86_64",
                "qemu-system-x86"
            )
            .unwrap()
            .path,
            in_b
        );
    }

    #[test]
    fn a_bad_override_or_no_qemu_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("nope");
        for (over, problem) in [
            (missing.as_os_str().to_owned(), "is not an executable file"),
            (
                root.path().as_os_str().to_owned(),
                "is not an executable file",
            ),
            (
                OsString::from("qemu-system-x86_64"),
                "is not an absolute path",
            ),
        ] {
            let error = resolve_from(
                Some(over.clone()),
                None,
                "qemu-system-x86_64",
                "qemu-system-x86",
            )
            .unwrap_err();
            let text = error.to_string();
            assert!(
                text.starts_with(&format!("VMKEEP_QEMU={}", over.to_string_lossy()))
                    && text.contains(problem),
                "{text}"
            );
        }
        let error = resolve_from(
            None,
            Some(root.path().into()),
            "qemu-system-x86_64",
            "qemu-system-x86",
        )
        .unwrap_err();
        assert!(matches!(error, QemuError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("VMKEEP_QEMU"), "{error}");
    }
}
