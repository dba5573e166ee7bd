//! The guest-agent protocol: one JSON object per line over a virtio-serial port.
//!
//! The host sends [`Request`]s, each with an id it chooses; the guest answers
//! each with a [`FromGuest::Reply`] carrying the same id, and volunteers
//! [`FromGuest::Ready`] when it becomes ready. Because the host may connect
//! after the guest announced readiness (the announcement is then lost), a host
//! starts every connection with [`Op::Hello`], whose reply says whether the
//! guest is ready already.
//!
//! Beside requests, the host opens streaming sessions (commands with live
//! input and output, or a pty): see [`session`]. Their frames are one-way
//! lines of their own ([`session::SessionRequest`]), and the guest's events
//! come as [`FromGuest::Session`]. Files are copied through a session that
//! runs the agent's own copy mode, in the [`archive`] format.
//!
//! Both sides use this crate, so a message is defined exactly once.

pub mod archive;
#[cfg(unix)]
pub mod copy;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod host_changes;
pub mod session;
#[cfg(unix)]
pub mod unix_relay;

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
    /// `vmkeep.format_data=TOKEN`: the host knows the data disk is new
    /// (vmkeep created it and nothing of the user's was ever on it), so the
    /// guest formats it, unless it holds a file system that a format under
    /// this same TOKEN completed (a reboot inside the same QEMU keeps the
    /// command line). Without this flag the guest never formats.
    pub const FORMAT_DATA_PREFIX: &str = "vmkeep.format_data=";
    /// Length of a format token: hex digits.
    pub const FORMAT_TOKEN_LEN: usize = 16;
    /// The user asked to repair the data disk: the guest runs
    /// `e2fsck -f -y` on it before mounting.
    pub const REPAIR_DATA: &str = "vmkeep.repair_data=1";
    /// Kernel message printed on the serial console when the guest is ready.
    pub const READY_MARKER: &str = "vmkeep-guest: ready";
    /// `vmkeep.hostname=NAME`: the tiny guest names itself NAME (a valid
    /// hostname, see [`crate::valid_hostname`]; anything else is ignored).
    pub const HOSTNAME_PREFIX: &str = "vmkeep.hostname=";

    /// The hostname flag for an instance (see [`crate::hostname_for`]).
    pub fn hostname(instance: &str) -> Option<String> {
        crate::hostname_for(instance).map(|name| format!("{HOSTNAME_PREFIX}{name}"))
    }
}

/// Longest hostname the guest takes (the kernel's limit is 64 bytes).
pub const MAX_HOSTNAME_BYTES: usize = 63;

/// Whether `name` is a hostname (RFC 1123): dot-separated labels of 1 to 63
/// ASCII letters, digits and `-`, no label starting or ending with `-`, at
/// most [`MAX_HOSTNAME_BYTES`] in all.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_BYTES
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The hostname for an instance name, as Lima makes it: `_` and `.` become
/// `-`, cut to [`MAX_HOSTNAME_BYTES`]. `None` if nothing valid is left.
pub fn hostname_for(instance: &str) -> Option<String> {
    let mapped: String = instance
        .chars()
        .map(|c| if c == '_' || c == '.' { '-' } else { c })
        .take(MAX_HOSTNAME_BYTES)
        .collect();
    let name = mapped.trim_matches('-');
    valid_hostname(name).then(|| name.to_string())
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
    /// The guest's wall clock (`CLOCK_REALTIME`), answered with
    /// [`Reply::Time`]. A guest agent older than this op answers
    /// [`Reply::Error`] (it cannot parse the request).
    Time,
    /// Step the guest's wall clock by a signed amount, answered with
    /// [`Reply::ClockAdjusted`]. Relative, not absolute, so that the time the
    /// request spends on its way does not add to the error.
    AdjustClock(ClockAdjustment),
    /// Mount a host directory shared over virtio-fs (its `tag`) at
    /// `mount_point`, answered with [`Reply::Mounted`]. Idempotent: a tag
    /// already mounted there is answered `already: true`.
    Mount(MountRequest),
    /// Report the guest's listening sockets: answered at once with
    /// [`Reply::Ports`], then [`FromGuest::Ports`] whenever the set changes,
    /// to this host connection only (a host that reconnects asks again).
    WatchPorts,
    /// A shared directory's host side (its virtiofsd) is gone. Linux's
    /// virtio-fs cannot abort such a connection (no fusectl entry, no forced
    /// unmount), so what touches the mount blocks until the VM restarts; the
    /// guest agent leaves it out of its power-off (no sync, no unmount of
    /// it, either of which would block). Answered with [`Reply::ShareLost`].
    ShareLost(ShareLost),
    /// Make these TCP ports of the guest's loopback reachable on the guest's
    /// user-network address ([`GUEST_ADDRESS`]), where QEMU's port forwards
    /// arrive: the guest agent relays each connection to the loopback
    /// listener. The full set each time (ports not named stop being
    /// relayed); answered with [`Reply::Exposed`].
    Expose(Exposure),
    /// Files changed on the host side of a writable share (Lima's
    /// `mountInotify`, see [`host_changes`]): the guest agent touches each
    /// one through its mount so that the guest's inotify sees it. Answered
    /// with [`Reply::Raised`]; a guest agent older than this op answers
    /// [`Reply::Error`].
    HostChanges(host_changes::HostChanges),
}

/// The guest's address on QEMU's user-mode network (slirp's default).
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The host as the guest sees it on QEMU's user-mode network.
pub const GATEWAY_ADDRESS: &str = "10.0.2.2";
/// QEMU's user-mode DNS forwarder.
pub const DNS_ADDRESS: &str = "10.0.2.3";

/// Most listening sockets a guest reports (and a host accepts) at once.
pub const MAX_LISTENING: usize = 1024;

/// A virtio-fs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// The virtio-fs tag QEMU gives the shared directory.
    pub tag: String,
    /// An absolute path in the guest; made if missing.
    pub mount_point: String,
    /// Mount it read-only (the host enforces it too).
    #[serde(default)]
    pub read_only: bool,
}

/// Which share is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareLost {
    pub tag: String,
}

/// What the guest did about a [`MountRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mounted {
    /// The tag was mounted there already (by an earlier request, or at boot
    /// by cloud-init).
    #[serde(default)]
    pub already: bool,
}

/// A socket's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// A protocol this version does not know (from a newer guest agent).
    #[serde(other)]
    Unknown,
}

/// One listening socket of the guest: a TCP socket in `LISTEN`, or an
/// unconnected bound UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenSocket {
    pub proto: Proto,
    /// The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub ip: String,
    pub port: u16,
}

/// The guest's listening sockets, sorted, at most [`MAX_LISTENING`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Listening {
    pub sockets: Vec<ListenSocket>,
    /// More sockets listened than were reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The loopback listeners to relay from [`GUEST_ADDRESS`] (see [`Op::Expose`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exposure {
    pub tcp: Vec<Relay>,
}

/// One relay: connections to `GUEST_ADDRESS:port` go to `to:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Relay {
    pub port: u16,
    /// The loopback address the guest's listener is bound to.
    pub to: String,
}

/// The relays that could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exposed {
    #[serde(default)]
    pub failed: Vec<RelayFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayFailure {
    pub port: u16,
    pub error: String,
}

/// How far to move the guest's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockAdjustment {
    /// Nanoseconds to add (negative: set it back).
    pub delta_ns: i64,
}

/// A reading of the guest's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTime {
    /// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
    pub realtime_ns: i64,
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
    /// The guest is ready: the power button is watched and the data disk
    /// was dealt with ([`GuestInfo::data_disk`] says how).
    Ready(GuestInfo),
    /// The guest's listening sockets changed (only after [`Op::WatchPorts`]
    /// on this connection).
    Ports(Listening),
    /// An event of the streaming session `id` (see [`session`]).
    Session {
        id: u64,
        event: session::SessionEvent,
    },
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Hello {
        ready: bool,
        info: GuestInfo,
    },
    Pong,
    Info(GuestInfo),
    Exec(ExecResult),
    PoweroffAccepted,
    /// The guest's wall clock when it handled the request.
    Time(GuestTime),
    /// The guest's wall clock right after the step.
    ClockAdjusted(GuestTime),
    Mounted(Mounted),
    /// How many mounts of that share the guest has.
    ShareLost {
        mounts: u32,
    },
    /// The listening sockets now.
    Ports(Listening),
    Exposed(Exposed),
    Raised(host_changes::Raised),
    Error {
        message: String,
    },
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
    /// What became of the data disk at boot. `None` from a guest agent that
    /// has no data disk to look after (service mode in a cloud image) or
    /// that predates this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<DataDisk>,
}

/// The data disk (`/dev/vda` of the tiny image) as the guest found it at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DataDisk {
    /// Mounted read-write at `mount`.
    Mounted {
        mount: String,
        /// The guest made the file system in this boot (the host said the
        /// disk was new).
        #[serde(default)]
        formatted: bool,
        /// `e2fsck -f -y` ran first (the host asked for a repair).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repaired: Option<FsckRun>,
        /// The disk was larger than its file system (the host grew it): the
        /// file system was grown to fill it, online, or the attempt failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grown: Option<Box<Grown>>,
    },
    /// No virtio disk is attached.
    NotAttached,
    /// A virtio disk is attached but its device did not appear or cannot be read.
    DeviceMissing { device: String, error: String },
    /// The disk holds no ext2/3/4 superblock (damaged, or another file
    /// system), and the host did not say it was new: left untouched.
    NoFileSystem { device: String },
    /// Formatting a new disk failed.
    FormatFailed { device: String, error: String },
    /// The kernel refused to mount the file system (`error` is its reason,
    /// such as "Structure needs cleaning").
    MountFailed { device: String, error: String },
    /// A repair was asked for, but the image has no `e2fsck`.
    NoRepairTool { device: String },
    /// `e2fsck` ran and could not repair the file system.
    RepairFailed { device: String, fsck: FsckRun },
    /// A state this version does not know (from a newer guest agent).
    #[serde(other)]
    Unknown,
}

impl DataDisk {
    /// Whether `/data` is usable.
    pub fn is_mounted(&self) -> bool {
        matches!(self, DataDisk::Mounted { .. })
    }
}

/// A file system grown to fill its disk at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grown {
    /// Its size before and after, in bytes (`to_bytes` equals `from_bytes`
    /// when the growth failed).
    pub from_bytes: u64,
    pub to_bytes: u64,
    /// Why it could not grow (the file system is intact and mounted at its
    /// old size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One run of `e2fsck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckRun {
    /// e2fsck's exit code: 0 nothing to fix, 1 fixed, 2 fixed (reboot
    /// advised), 4 left uncorrected, 8 operational error, ...; -1 if it
    /// could not be run.
    pub exit_code: i32,
    /// The end of what it printed.
    pub output: String,
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

/// A line from the host: a request, or a frame of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    Request(Request),
    Session(session::SessionRequest),
}

/// A line from the host that is not a valid message; `id` or `session` is
/// known when the line had one, so that the right party hears of it.
#[derive(Debug)]
pub struct BadHostLine {
    pub id: Option<u64>,
    pub session: Option<u64>,
    /// The op's name, when the line had one (`"stdin"`, ...).
    pub op: Option<String>,
    pub error: serde_json::Error,
}

/// Parse one line from the host: an object with a `session` key is a
/// session frame, anything else a request.
pub fn decode_host_line(line: &[u8]) -> Result<HostMessage, BadHostLine> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    // One parse: the value is then taken apart without copying its strings.
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|error| BadHostLine {
        id: None,
        session: None,
        op: None,
        error,
    })?;
    let hint = bad_hint(&value);
    if value.get("session").is_some() {
        serde_json::from_value(value)
            .map(HostMessage::Session)
            .map_err(hint)
    } else {
        serde_json::from_value(value)
            .map(HostMessage::Request)
            .map_err(hint)
    }
}

/// What a bad line said about itself (its ids and op), kept before the
/// value is consumed.
fn bad_hint(value: &serde_json::Value) -> impl FnOnce(serde_json::Error) -> BadHostLine + use<> {
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let session = value.get("session").and_then(serde_json::Value::as_u64);
    let op = value.get("op").and_then(|op| match op {
        serde_json::Value::String(name) => Some(name.clone()),
        serde_json::Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
        _ => None,
    });
    move |error| BadHostLine {
        id,
        session,
        op,
        error,
    }
}

/// Byte buffers travel as base64 strings.
pub(crate) mod b64 {
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
            data_disk: Some(DataDisk::Mounted {
                mount: "/data".into(),
                formatted: false,
                repaired: Some(FsckRun {
                    exit_code: 1,
                    output: "FILE SYSTEM WAS MODIFIED".into(),
                }),
                grown: Some(Box::new(Grown {
                    from_bytes: 1 << 30,
                    to_bytes: 2 << 30,
                    error: None,
                })),
            }),
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

    #[test]
    fn clock_ops_have_a_stable_wire_form() {
        let line = encode_line(&Request {
            id: 3,
            op: Op::Time,
        });
        assert_eq!(line, b"{\"id\":3,\"op\":\"time\"}\n");
        let adjust = Request {
            id: 4,
            op: Op::AdjustClock(ClockAdjustment { delta_ns: -1_500 }),
        };
        let line = encode_line(&adjust);
        assert_eq!(
            line,
            b"{\"id\":4,\"op\":{\"adjust-clock\":{\"delta_ns\":-1500}}}\n"
        );
        assert_eq!(decode_line::<Request>(&line).unwrap(), adjust);
        for body in [
            Reply::Time(GuestTime { realtime_ns: 1 }),
            Reply::ClockAdjusted(GuestTime { realtime_ns: 2 }),
        ] {
            let message = FromGuest::Reply { id: 9, body };
            assert_eq!(
                decode_line::<FromGuest>(&encode_line(&message)).unwrap(),
                message
            );
        }
    }

    #[test]
    fn mount_ports_and_expose_have_a_stable_wire_form() {
        let mount = Request {
            id: 5,
            op: Op::Mount(MountRequest {
                tag: "fs0".into(),
                mount_point: "/mnt/src".into(),
                read_only: true,
            }),
        };
        let line = encode_line(&mount);
        assert_eq!(
            line,
            b"{\"id\":5,\"op\":{\"mount\":{\"tag\":\"fs0\",\"mount_point\":\"/mnt/src\",\"read_only\":true}}}\n"
        );
        assert_eq!(decode_line::<Request>(&line).unwrap(), mount);
        assert_eq!(
            encode_line(&Request {
                id: 6,
                op: Op::WatchPorts
            }),
            b"{\"id\":6,\"op\":\"watch-ports\"}\n"
        );
        let listening = Listening {
            sockets: vec![ListenSocket {
                proto: Proto::Tcp,
                ip: "127.0.0.1".into(),
                port: 8080,
            }],
            truncated: false,
        };
        let event = FromGuest::Ports(listening.clone());
        let text = String::from_utf8(encode_line(&event)).unwrap();
        assert_eq!(
            text,
            "{\"ports\":{\"sockets\":[{\"proto\":\"tcp\",\"ip\":\"127.0.0.1\",\"port\":8080}]}}\n"
        );
        assert_eq!(decode_line::<FromGuest>(text.as_bytes()).unwrap(), event);
        for body in [
            Reply::Mounted(Mounted { already: true }),
            Reply::Ports(listening),
            Reply::Exposed(Exposed {
                failed: vec![RelayFailure {
                    port: 80,
                    error: "in use".into(),
                }],
            }),
        ] {
            let message = FromGuest::Reply { id: 1, body };
            assert_eq!(
                decode_line::<FromGuest>(&encode_line(&message)).unwrap(),
                message
            );
        }
        let expose = Request {
            id: 7,
            op: Op::Expose(Exposure {
                tcp: vec![Relay {
                    port: 3000,
                    to: "::1".into(),
                }],
            }),
        };
        assert_eq!(
            decode_line::<Request>(&encode_line(&expose)).unwrap(),
            expose
        );
        // A protocol a newer guest names is kept as unknown, not an error.
        let newer: ListenSocket =
            serde_json::from_str(r#"{"proto":"sctp","ip":"::","port":9}"#).unwrap();
        assert_eq!(newer.proto, Proto::Unknown);
    }

    #[test]
    fn guest_info_without_data_disk_state_still_parses() {
        // What a guest agent before the data-disk state sent.
        let old = br#"{"kernel":"6.1","boot_id":"b","uptime_secs":1.0,"agent_version":"0.1.0","data_mount":"/data"}"#;
        let info: GuestInfo = decode_line(old).unwrap();
        assert_eq!(info.data_disk, None);
        assert_eq!(info.data_mount.as_deref(), Some("/data"));
        let line = encode_line(&info);
        assert!(
            !String::from_utf8_lossy(&line).contains("data_disk"),
            "omitted when absent"
        );
    }

    #[test]
    fn data_disk_states_have_a_tagged_wire_form_and_unknown_ones_parse() {
        let state = DataDisk::MountFailed {
            device: "/dev/vda".into(),
            error: "Structure needs cleaning".into(),
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            r#"{"state":"mount-failed","device":"/dev/vda","error":"Structure needs cleaning"}"#
        );
        assert_eq!(serde_json::from_str::<DataDisk>(&text).unwrap(), state);
        let newer: DataDisk = serde_json::from_str(r#"{"state":"encrypted","x":1}"#).unwrap();
        assert_eq!(newer, DataDisk::Unknown);
        assert!(!newer.is_mounted());
        let mounted: DataDisk =
            serde_json::from_str(r#"{"state":"mounted","mount":"/data"}"#).unwrap();
        assert_eq!(
            mounted,
            DataDisk::Mounted {
                mount: "/data".into(),
                formatted: false,
                repaired: None,
                grown: None
            }
        );
    }

    #[test]
    fn session_frames_have_a_stable_wire_form() {
        use session::*;
        let cases: Vec<(SessionOp, &str)> = vec![
            (
                SessionOp::Open(OpenSession {
                    argv: vec!["sh".into(), "-c".into(), "id".into()],
                    env: vec![("A".into(), "b".into())],
                    cwd: Some("/tmp".into()),
                    user: Some("alice".into()),
                    login: true,
                    pty: Some(PtyRequest {
                        rows: 24,
                        cols: 80,
                        term: Some("xterm".into()),
                    }),
                }),
                r#"{"session":7,"op":{"open":{"argv":["sh","-c","id"],"env":[["A","b"]],"cwd":"/tmp","user":"alice","login":true,"pty":{"rows":24,"cols":80,"term":"xterm"}}}}"#,
            ),
            (
                SessionOp::Open(OpenSession::default()),
                r#"{"session":7,"op":{"open":{"argv":[]}}}"#,
            ),
            (
                SessionOp::Stdin(StdinData {
                    data: b"hi\n".to_vec(),
                    eof: false,
                }),
                r#"{"session":7,"op":{"stdin":{"data":"aGkK"}}}"#,
            ),
            (
                SessionOp::Stdin(StdinData {
                    data: vec![],
                    eof: true,
                }),
                r#"{"session":7,"op":{"stdin":{"eof":true}}}"#,
            ),
            (
                SessionOp::Credit(OutputCredit {
                    stdout: 65536,
                    stderr: 0,
                }),
                r#"{"session":7,"op":{"credit":{"stdout":65536}}}"#,
            ),
            (
                SessionOp::Signal(SignalRequest {
                    signal: Signal::Name("INT".into()),
                }),
                r#"{"session":7,"op":{"signal":{"signal":"INT"}}}"#,
            ),
            (
                SessionOp::Signal(SignalRequest {
                    signal: Signal::Number(15),
                }),
                r#"{"session":7,"op":{"signal":{"signal":15}}}"#,
            ),
            (
                SessionOp::Resize(WindowSize {
                    rows: 50,
                    cols: 132,
                }),
                r#"{"session":7,"op":{"resize":{"rows":50,"cols":132}}}"#,
            ),
            (SessionOp::Close, r#"{"session":7,"op":"close"}"#),
        ];
        for (op, wire) in cases {
            let frame = SessionRequest { session: 7, op };
            let line = encode_line(&frame);
            assert_eq!(String::from_utf8_lossy(&line), format!("{wire}\n"));
            match decode_host_line(&line) {
                Ok(HostMessage::Session(back)) => assert_eq!(back, frame),
                other => panic!("{wire} decoded as {other:?}"),
            }
        }
        // Requests are still requests.
        match decode_host_line(b"{\"id\":1,\"op\":\"ping\"}\n") {
            Ok(HostMessage::Request(Request {
                id: 1,
                op: Op::Ping,
            })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_events_have_a_stable_wire_form() {
        use session::*;
        let cases: Vec<(SessionEvent, &str)> = vec![
            (
                SessionEvent::Started { pid: 42 },
                r#"{"session":{"id":7,"event":{"started":{"pid":42}}}}"#,
            ),
            (
                SessionEvent::Output(OutputData {
                    stream: Stream::Stderr,
                    data: b"oops".to_vec(),
                }),
                r#"{"session":{"id":7,"event":{"output":{"stream":"stderr","data":"b29wcw=="}}}}"#,
            ),
            (
                SessionEvent::StdinCredit { bytes: 4096 },
                r#"{"session":{"id":7,"event":{"stdin-credit":{"bytes":4096}}}}"#,
            ),
            (
                SessionEvent::StdinClosed,
                r#"{"session":{"id":7,"event":"stdin-closed"}}"#,
            ),
            (
                SessionEvent::Exited(ExitStatus::exited(3)),
                r#"{"session":{"id":7,"event":{"exited":{"code":3}}}}"#,
            ),
            (
                SessionEvent::Exited(ExitStatus {
                    output_open: true,
                    ..ExitStatus::killed(11, true)
                }),
                r#"{"session":{"id":7,"event":{"exited":{"signal":11,"core_dumped":true,"output_open":true}}}}"#,
            ),
            (
                SessionEvent::Failed(StartFailure {
                    reason: FailReason::NoSuchCommand,
                    message: "no such command: x".into(),
                }),
                r#"{"session":{"id":7,"event":{"failed":{"reason":"no-such-command","message":"no such command: x"}}}}"#,
            ),
            (
                SessionEvent::Error {
                    message: "bad".into(),
                },
                r#"{"session":{"id":7,"event":{"error":{"message":"bad"}}}}"#,
            ),
        ];
        for (event, wire) in cases {
            let message = FromGuest::Session { id: 7, event };
            let line = encode_line(&message);
            assert_eq!(String::from_utf8_lossy(&line), format!("{wire}\n"));
            assert_eq!(decode_line::<FromGuest>(&line).unwrap(), message);
        }
        // A reason from a newer guest parses as unknown.
        let newer: FromGuest = decode_line(
            br#"{"session":{"id":1,"event":{"failed":{"reason":"quota","message":"m"}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            newer,
            FromGuest::Session {
                event: SessionEvent::Failed(StartFailure {
                    reason: FailReason::Unknown,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn a_bad_host_line_says_what_it_was_about() {
        let bad = decode_host_line(br#"{"session":9,"op":{"stdin":{"data":"*"}}}"#).unwrap_err();
        assert_eq!(
            (bad.id, bad.session, bad.op.as_deref()),
            (None, Some(9), Some("stdin"))
        );
        let bad = decode_host_line(br#"{"session":9,"op":"dance"}"#).unwrap_err();
        assert_eq!(bad.op.as_deref(), Some("dance"));
        let bad = decode_host_line(br#"{"id":4,"op":{"exec":{}}}"#).unwrap_err();
        assert_eq!(
            (bad.id, bad.session, bad.op.as_deref()),
            (Some(4), None, Some("exec"))
        );
        let bad = decode_host_line(b"{").unwrap_err();
        assert_eq!((bad.id, bad.session, bad.op), (None, None, None));
    }

    #[test]
    fn hostnames_are_checked_and_made_from_instance_names() {
        for good in ["default", "a", "dev-1", "ubuntu-24-04", "x.example", "A0"] {
            assert!(valid_hostname(good), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "é",
            long.as_str(),
            "a;reboot",
        ] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
        assert_eq!(
            hostname_for("ubuntu-24.04").as_deref(),
            Some("ubuntu-24-04")
        );
        assert_eq!(hostname_for("my_vm").as_deref(), Some("my-vm"));
        assert_eq!(hostname_for("x_").as_deref(), Some("x"));
        assert_eq!(hostname_for("_").as_deref(), None);
        assert_eq!(hostname_for(&"b".repeat(70)).map(|h| h.len()), Some(63));
        assert_eq!(
            kernel_flags::hostname("default").as_deref(),
            Some("vmkeep.hostname=default")
        );
    }
}
