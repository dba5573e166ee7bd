//! Lima's `copyToHost`: guest files copied to the host once the guest is
//! ready, before `start` returns (`hostagent/copy_to_host.rs` copies them).
//! This file resolves the entries: the guest path through the guest's
//! template variables (an absolute path), the host path through the host's
//! (relative paths are in the instance directory, as Lima's are).

use std::path::{Path, PathBuf};

use super::config::Config;
use super::vars::{ExpandError, GuestUser, guest_values, host_values};
use crate::text::gotmpl;

/// The most a `copyToHost` entry may copy: these are small files
/// (kubeconfigs, certificates); a guest that sends more is cut off there
/// (and the start fails, saying so), so that it cannot fill the host's
/// disk through this path. `vmkeep copy` has no such limit.
pub const MAX_COPY_BYTES: u64 = 64 * 1024 * 1024;

/// One entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRule {
    /// An absolute path in the guest.
    pub guest: String,
    /// An absolute path on the host.
    pub host: PathBuf,
    pub delete_on_stop: bool,
    pub skip_if_missing: bool,
}

/// The `copyToHost` entries of `config`, resolved for instance `instance`
/// (directory `dir`, guest user `user`).
pub fn resolve(
    config: &Config,
    instance: &str,
    dir: &Path,
    user: &GuestUser,
) -> Result<Vec<CopyRule>, ExpandError> {
    let entries = config.raw.copy_to_host.clone().unwrap_or_default();
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let guest = guest_values(config, instance, dir, user);
    let host = host_values(config, instance, dir);
    let mut rules = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let render = |field: &str, text: &str, values| {
            gotmpl::render(text, values).map_err(|e| ExpandError {
                field: format!("copyToHost[{i}].{field}"),
                error: e.to_string(),
            })
        };
        let guest_path = render("guest", &entry.guest, &guest)?;
        if !guest_path.starts_with('/') {
            return Err(ExpandError {
                field: format!("copyToHost[{i}].guest"),
                error: format!("{guest_path:?} is not an absolute path in the guest"),
            });
        }
        let host_path = PathBuf::from(render("host", &entry.host, &host)?);
        if host_path.as_os_str().is_empty() {
            return Err(ExpandError {
                field: format!("copyToHost[{i}].host"),
                error: "an empty path".into(),
            });
        }
        rules.push(CopyRule {
            guest: guest_path,
            host: dir.join(host_path),
            delete_on_stop: entry.delete_on_stop == Some(true),
            skip_if_missing: entry.skip_if_missing == Some(true),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expand_limas_variables_on_each_side() {
        let config = Config::parse(
            "copyToHost:\n- guest: /etc/rancher/k3s/k3s.yaml\n  host: \"{{.Dir}}/copied-from-guest/kubeconfig.yaml\"\n  deleteOnStop: true\n\
             - guest: \"{{.Home}}/.kube/config\"\n  host: relative/{{.Name}}.yaml\n  skipIfMissing: true\n",
        )
        .unwrap();
        let user = GuestUser {
            name: "ann".into(),
            uid: 1000,
            home: "/home/ann.linux".into(),
            shell: "/bin/bash".into(),
            comment: None,
        };
        let rules = resolve(&config, "k3s", Path::new("/h/.vmkeep/k3s"), &user).unwrap();
        assert_eq!(
            rules,
            [
                CopyRule {
                    guest: "/etc/rancher/k3s/k3s.yaml".into(),
                    host: "/h/.vmkeep/k3s/copied-from-guest/kubeconfig.yaml".into(),
                    delete_on_stop: true,
                    skip_if_missing: false,
                },
                CopyRule {
                    guest: "/home/ann.linux/.kube/config".into(),
                    host: "/h/.vmkeep/k3s/relative/k3s.yaml".into(),
                    delete_on_stop: false,
                    skip_if_missing: true,
                },
            ]
        );
        let relative = Config::parse("copyToHost:\n- guest: etc/x\n  host: x\n").unwrap();
        let err = resolve(&relative, "k", Path::new("/d"), &user).unwrap_err();
        assert!(err.to_string().contains("copyToHost[0].guest"), "{err}");
        let unknown = Config::parse("copyToHost:\n- guest: /x\n  host: \"{{.Nope}}\"\n").unwrap();
        assert!(resolve(&unknown, "k", Path::new("/d"), &user).is_err());
        let typo = Config::parse("copyToHost:\n- guest: /x\n  hots: y\n");
        assert!(typo.is_err(), "unknown fields are refused");
    }
}
