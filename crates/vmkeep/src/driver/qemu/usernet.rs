//! QEMU's user network (slirp) forwards, changed while the VM runs through
//! the human monitor (`hostfwd_add`, `hostfwd_remove`, `info usernet`, over
//! QMP's `human-monitor-command`): what QEMU really has is read back from
//! `info usernet`, so a host agent that adopts a running QEMU learns its
//! forwards from QEMU itself.
//!
//! HMP answers in text: an empty answer is success, anything else is QEMU
//! saying why not ("Could not set up host forwarding rule ..." when the host
//! port is taken).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use super::qmp::{Qmp, QmpError};
use crate::forwards::{Forward, Transport};
use crate::link::untrusted;

/// The netdev id vmkeep gives the user network (`-netdev user,id=net0`).
pub const NETDEV: &str = "net0";

/// How long one monitor command may take.
const HMP_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest `info usernet` answer read (one line per socket of the guest's
/// connections: thousands of lines at most).
pub const MAX_USERNET_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UsernetError {
    #[error("QMP human-monitor-command {command:?} failed")]
    Qmp {
        command: String,
        #[source]
        source: QmpError,
    },
    /// QEMU refused (the host port is taken, ...); its words, cut.
    #[error("QEMU refused `{command}`: {said}")]
    Refused { command: String, said: String },
    #[error("QEMU's answer to `{command}` is not text")]
    NotText { command: String },
}

impl UsernetError {
    /// QEMU refused the command (rather than QMP failing).
    pub fn is_refusal(&self) -> bool {
        matches!(self, UsernetError::Refused { .. })
    }
}

async fn hmp(qmp: &Qmp, command: String) -> Result<String, UsernetError> {
    let reply = qmp
        .execute(
            "human-monitor-command",
            Some(json!({ "command-line": command })),
            HMP_TIMEOUT,
        )
        .await
        .map_err(|source| UsernetError::Qmp {
            command: command.clone(),
            source,
        })?;
    match reply.as_str() {
        Some(text) => Ok(text.to_owned()),
        None => Err(UsernetError::NotText { command }),
    }
}

fn refused_unless_empty(command: String, said: String) -> Result<(), UsernetError> {
    if said.trim().is_empty() {
        Ok(())
    } else {
        Err(UsernetError::Refused {
            command,
            said: untrusted::shown(said.trim(), 300),
        })
    }
}

/// The `hostfwd_add` argument for a forward.
pub fn rule_text(forward: &Forward) -> String {
    format!(
        "{}:{}:{}-{}:{}",
        forward.proto.as_str(),
        forward.host_ip,
        forward.host_port,
        vmkeep_protocol::GUEST_ADDRESS,
        forward.guest_port
    )
}

/// Add a forward.
pub async fn add(qmp: &Qmp, forward: &Forward) -> Result<(), UsernetError> {
    let command = format!("hostfwd_add {NETDEV} {}", rule_text(forward));
    let said = hmp(qmp, command.clone()).await?;
    refused_unless_empty(command, said)
}

/// Remove a forward (by its host endpoint).
pub async fn remove(qmp: &Qmp, forward: &Forward) -> Result<(), UsernetError> {
    let command = format!(
        "hostfwd_remove {NETDEV} {}:{}:{}",
        forward.proto.as_str(),
        forward.host_ip,
        forward.host_port
    );
    let said = hmp(qmp, command.clone()).await?;
    // Success is said in words here.
    if said.contains(" removed") {
        Ok(())
    } else {
        refused_unless_empty(command, said)
    }
}

/// The forwards QEMU has now.
pub async fn present(qmp: &Qmp) -> Result<BTreeSet<Forward>, UsernetError> {
    let text = hmp(qmp, "info usernet".into()).await?;
    Ok(parse_info_usernet(&text))
}

/// The host forwards in `info usernet`'s table, e.g.
/// `  TCP[HOST_FORWARD]  13       127.0.0.1 40022       10.0.2.15    22     0     0`
/// (a wildcard source address shows as `*` or `0.0.0.0`). Other lines, and
/// anything past [`MAX_USERNET_BYTES`], are skipped.
pub fn parse_info_usernet(text: &str) -> BTreeSet<Forward> {
    let text = &text.as_bytes()[..text.len().min(MAX_USERNET_BYTES)];
    let text = String::from_utf8_lossy(text);
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let proto = match *fields.first()? {
                "TCP[HOST_FORWARD]" => Transport::Tcp,
                "UDP[HOST_FORWARD]" => Transport::Udp,
                _ => return None,
            };
            // proto fd src-addr src-port dst-addr dst-port recvq sendq
            let host_ip = match *fields.get(2)? {
                "*" => Ipv4Addr::UNSPECIFIED,
                other => other.parse().ok()?,
            };
            Some(Forward {
                proto,
                host_ip,
                host_port: fields.get(3)?.parse().ok()?,
                guest_port: fields.get(5)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 7.2 answered here (`info usernet` over QMP).
    const QEMU_72: &str = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 18098       10.0.2.15    80     0     0\r\n  TCP[HOST_FORWARD]   3       127.0.0.1 18022       10.0.2.15    22     0     0\r\n  UDP[HOST_FORWARD]  12       127.0.0.1 18097       10.0.2.15    53     0     0\r\n  TCP[ESTABLISHED]   21       10.0.2.15 40112    93.184.216.34   443     0     0\r\n  TCP[HOST_FORWARD]   9               * 18000       10.0.2.15  8000     0     0\r\n";

    #[test]
    fn host_forwards_are_read_from_info_usernet() {
        let found: Vec<Forward> = parse_info_usernet(QEMU_72).into_iter().collect();
        let f = |proto, host_ip: [u8; 4], host_port, guest_port| Forward {
            proto,
            host_ip: host_ip.into(),
            host_port,
            guest_port,
        };
        assert_eq!(
            found,
            [
                f(Transport::Tcp, [0, 0, 0, 0], 18000, 8000),
                f(Transport::Tcp, [127, 0, 0, 1], 18022, 22),
                f(Transport::Tcp, [127, 0, 0, 1], 18098, 80),
                f(Transport::Udp, [127, 0, 0, 1], 18097, 53),
            ]
        );
        assert!(parse_info_usernet("").is_empty());
        assert!(parse_info_usernet("TCP[HOST_FORWARD] x y z\n").is_empty());
    }

    #[test]
    fn rules_are_written_as_hostfwd_add_takes_them() {
        let forward = Forward {
            proto: Transport::Udp,
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 10053,
            guest_port: 53,
        };
        assert_eq!(rule_text(&forward), "udp:0.0.0.0:10053-10.0.2.15:53");
        assert!(refused_unless_empty("c".into(), "\r\n".into()).is_ok());
        let refused = refused_unless_empty(
            "c".into(),
            "Could not set up host forwarding rule 'tcp:127.0.0.1:1-10.0.2.15:1'\r\n".into(),
        )
        .unwrap_err();
        assert!(refused.is_refusal() && refused.to_string().contains("Could not set up"));
    }
}
