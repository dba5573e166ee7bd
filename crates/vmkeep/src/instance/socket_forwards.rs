//! Lima's unix socket forwards (`portForwards` entries with `guestSocket`
//! and `hostSocket`): a socket vmkeep makes on the host, each connection to
//! it relayed to the guest's socket (`hostagent/socket_forwards.rs` does
//! it). This file resolves the entries: the guest socket through the
//! guest's template variables (an absolute path), the host socket through
//! the host's (relative paths are in the instance directory, as Lima's
//! are: `{{.Dir}}/sock/docker.sock` in Lima's docker template).

use std::path::{Path, PathBuf};

use super::config::Config;
use super::lima::PortForward;
use super::vars::{ExpandError, GuestUser, guest_values, host_values};
use crate::text::gotmpl;

/// One forward, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketForward {
    /// The socket in the guest.
    pub guest: String,
    /// The socket vmkeep makes on the host.
    pub host: PathBuf,
}

/// The socket forwards of `config` (those not `reverse`, which are noted
/// as not applied at create).
pub fn resolve(
    config: &Config,
    instance: &str,
    dir: &Path,
    user: &GuestUser,
) -> Result<Vec<SocketForward>, ExpandError> {
    let rules: Vec<(usize, &str, &str)> = config
        .raw
        .port_forwards
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| match rule {
            PortForward::Socket {
                guest_socket,
                host_socket,
                reverse: false,
            } => Some((i, guest_socket.as_str(), host_socket.as_str())),
            _ => None,
        })
        .collect();
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let guest = guest_values(config, instance, dir, user);
    let host = host_values(config, instance, dir);
    let mut forwards = Vec::with_capacity(rules.len());
    for (i, guest_socket, host_socket) in rules {
        let fail = |field: &str, error: String| ExpandError {
            field: format!("portForwards[{i}].{field}"),
            error,
        };
        let guest_path =
            gotmpl::render(guest_socket, &guest).map_err(|e| fail("guestSocket", e.to_string()))?;
        if !guest_path.starts_with('/') {
            return Err(fail(
                "guestSocket",
                format!("{guest_path:?} is not an absolute path in the guest"),
            ));
        }
        let host_path =
            gotmpl::render(host_socket, &host).map_err(|e| fail("hostSocket", e.to_string()))?;
        if host_path.is_empty() {
            return Err(fail(
                "hostSocket",
                "a socket forward needs both guestSocket and hostSocket".into(),
            ));
        }
        forwards.push(SocketForward {
            guest: guest_path,
            host: dir.join(host_path),
        });
    }
    Ok(forwards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limas_docker_forward_resolves_into_the_instance_directory() {
        let config = Config::parse(
            "portForwards:\n- guestSocket: \"/run/user/{{.UID}}/docker.sock\"\n  hostSocket: \"{{.Dir}}/sock/docker.sock\"\n\
             - guestSocket: /var/run/podman.sock\n  hostSocket: podman.sock\n\
             - guestSocket: /x\n  hostSocket: /tmp/x\n  reverse: true\n- guestPort: 80\n",
        )
        .unwrap();
        let user = GuestUser {
            name: "ann".into(),
            uid: 1001,
            home: "/home/ann".into(),
            shell: "/bin/bash".into(),
            comment: None,
        };
        let forwards = resolve(&config, "docker", Path::new("/h/docker"), &user).unwrap();
        assert_eq!(
            forwards,
            [
                SocketForward {
                    guest: "/run/user/1001/docker.sock".into(),
                    host: "/h/docker/sock/docker.sock".into(),
                },
                SocketForward {
                    guest: "/var/run/podman.sock".into(),
                    host: "/h/docker/podman.sock".into(),
                },
            ]
        );
        let half = Config::parse("portForwards:\n- guestSocket: /x\n").unwrap();
        let err = resolve(&half, "d", Path::new("/h"), &user).unwrap_err();
        assert!(err.to_string().contains("hostSocket"), "{err}");
    }
}
