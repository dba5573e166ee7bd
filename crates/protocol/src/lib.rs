//! The guest-agent protocol: one JSON object per line over a virtio-serial port.
//!
//! The host sends [`Request`]s, each with an id it chooses; the guest answers
//! each with a [`FromGuest::Reply`] carrying the same id, and volunteers
//! [`FromGuest::Ready`] when it becomes ready. Because the host may connect
//! after the guest announced readiness (the announcement is then lost), a host
//! starts every connection with [`Op::Hello`], whose reply says whether the
//! guest is ready already.
//!
//! Both sides use this crate, so a message is defined exactly once.

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port the guest agent listens on.
pub const PORT_NAME: &str = "org.vmkeep.guest.0";

/// Largest line either side accepts; longer lines are a protocol error.
/// Only an exec carries this much: its request (stdin) and its reply (the
/// output, which the guest caps at 16 MiB per stream, base64-encoded).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Largest line of any other message (hello, info, ready, errors). The host
/// accepts a longer line from the guest only while an exec is in flight, so a
/// hostile guest cannot make the host allocate [`MAX_LINE_BYTES`] unasked.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Kernel command-line flags the guest agent honours. They exist so that the
/// stop ladder and crash handling can be tested with a real guest.
pub mod kernel_flags {
    /// The guest ignores the ACPI power button.
    pub const IGNORE_POWER_BUTTON: &str = "vmkeep.ignore_power_button=1";
    /// The guest ignores a power-off request from the host agent.
    pub const IGNORE_POWEROFF_REQUEST: &str = "vmkeep.ignore_poweroff_request=1";
    /// The guest powers itself off right after boot, before announcing ready.
    pub const POWEROFF_AT_BOOT: &str = "vmkeep.poweroff_at_boot=1";
    /// Kernel message printed on the serial console when the guest is ready.
    pub const READY_MARKER: &str = "vmkeep-guest: ready";
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// What the host asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// First message of every connection: answered with readiness and info.
    Hello,
    Ping,
    Info,
    Exec(ExecRequest),
    /// Sync, unmount and power off. Answered before the guest goes down.
    Poweroff,
}

/// Run a command in the guest and collect its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in the guest's PATH.
    pub argv: Vec<String>,
    /// Bytes fed to the command's standard input (closed afterwards).
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub stdin: Vec<u8>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Working directory; the guest's `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FromGuest {
    Reply {
        id: u64,
        body: Reply,
    },
    /// The guest is ready: the power button is watched and `/data` is mounted.
    Ready(GuestInfo),
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Hello { ready: bool, info: GuestInfo },
    Pong,
    Info(GuestInfo),
    Exec(ExecResult),
    PoweroffAccepted,
    Error { message: String },
}

/// Facts about the running guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GuestInfo {
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// The kernel's boot id: it changes on every boot, so a host can tell a
    /// guest that kept running from one that rebooted.
    pub boot_id: String,
    /// Seconds since the guest kernel booted.
    pub uptime_secs: f64,
    /// Version of the guest agent.
    pub agent_version: String,
    /// Where the instance's data disk is mounted, if it is.
    #[serde(default)]
    pub data_mount: Option<String>,
}

/// How a command ended, and what it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code; 128 + signal number when a signal ended it (as shells do).
    pub exit_code: i32,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
}

/// Serialize a message as one line (with the trailing newline).
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialize");
    line.push(b'\n');
    line
}

/// Parse one line (with or without its trailing newline).
pub fn decode_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line)
}

/// Byte buffers travel as base64 strings.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_round_trips_binary_stdin() {
        let request = Request {
            id: 7,
            op: Op::Exec(ExecRequest {
                argv: vec!["cat".into()],
                stdin: vec![0, 159, 146, 150, b'\n'],
                env: vec![("A".into(), "b".into())],
                cwd: Some("/data".into()),
            }),
        };
        let line = encode_line(&request);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        assert_eq!(decode_line::<Request>(&line).unwrap(), request);
    }

    #[test]
    fn replies_and_events_round_trip() {
        let info = GuestInfo {
            kernel: "6.1.0".into(),
            boot_id: "abc".into(),
            uptime_secs: 1.5,
            agent_version: "0.1.0".into(),
            data_mount: Some("/data".into()),
        };
        for message in [
            FromGuest::Ready(info.clone()),
            FromGuest::Reply {
                id: 1,
                body: Reply::Hello {
                    ready: false,
                    info: info.clone(),
                },
            },
            FromGuest::Reply {
                id: 2,
                body: Reply::Exec(ExecResult {
                    exit_code: 3,
                    stdout: b"out".to_vec(),
                    stderr: vec![],
                }),
            },
            FromGuest::Reply {
                id: 3,
                body: Reply::Error {
                    message: "no such file".into(),
                },
            },
        ] {
            let line = encode_line(&message);
            assert_eq!(decode_line::<FromGuest>(&line).unwrap(), message);
        }
    }

    #[test]
    fn simple_ops_have_readable_wire_form() {
        let line = encode_line(&Request {
            id: 1,
            op: Op::Poweroff,
        });
        assert_eq!(line, b"{\"id\":1,\"op\":\"poweroff\"}\n");
    }
}
