//! QMP client: QEMU's machine protocol over its unix socket.
//!
//! QEMU greets a new connection with `{"QMP": {...}}`, accepts commands only
//! after `qmp_capabilities`, answers each command with `{"return": ...}` or
//! `{"error": {"class", "desc"}}` carrying the command's `id`, and sends
//! events (`{"event", "data", "timestamp"}`) at any time, even before the
//! greeting. The mechanism (ids, one reader, long lines) is
//! [`crate::line_rpc`]; this module knows the QMP message shapes.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::line_rpc::{CloseReason, Connection, Incoming, LineRpcError, MalformedLine};

/// Longest QMP line accepted. Replies such as `query-qmp-schema` run to
/// hundreds of KiB; this leaves ample room.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The QMP socket could not be connected.
    #[error("cannot connect to QMP socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// QEMU sent no greeting in time.
    #[error("no QMP greeting on {} within {after:?}", path.display())]
    NoGreeting { path: PathBuf, after: Duration },
    /// The connection ended before QEMU greeted.
    #[error("QMP socket {} closed before the greeting", path.display())]
    ClosedBeforeGreeting {
        path: PathBuf,
        #[source]
        reason: Option<Arc<CloseReason>>,
    },
    /// A command got no reply in time.
    #[error("QMP command {command} was not answered within {after:?}")]
    Timeout { command: String, after: Duration },
    /// The connection ended before the command was answered.
    #[error("QMP connection closed before {command} was answered")]
    Closed {
        command: String,
        #[source]
        reason: Arc<CloseReason>,
    },
    /// QEMU rejected the command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    CommandFailed {
        command: String,
        class: String,
        desc: String,
    },
    /// QEMU's reply did not have the expected shape.
    #[error("unexpected QMP reply to {command}: {message}")]
    Protocol { command: String, message: String },
}

/// QEMU's version, from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// When QEMU emitted an event (host wall clock, since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    /// The guest shut down (or QEMU was asked to); `guest` tells whether the
    /// guest initiated it; `reason` is QEMU's `ShutdownCause`.
    Shutdown { guest: bool, reason: String },
    /// `system_powerdown` pressed the virtual power button.
    Powerdown,
    /// The machine reset.
    Reset { guest: bool, reason: String },
    /// The VM stopped (paused).
    Stop,
    /// The VM resumed.
    Resume,
    /// The guest reported a panic.
    GuestPanicked,
    /// Any other event, or a known one whose data did not parse.
    Unknown { name: String, data: Value },
}

/// An event with the time QEMU stamped on it.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedEvent {
    pub event: QmpEvent,
    pub timestamp: Option<QmpTimestamp>,
}

/// QEMU's run state (`query-status`), per the QAPI `RunState` enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Debug,
    InMigrate,
    InternalError,
    IoError,
    Paused,
    PostMigrate,
    /// Started with `-S`, never run yet.
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    /// A state this client does not know.
    Other(String),
}

impl RunState {
    const NAMES: [(&'static str, RunState); 16] = [
        ("debug", RunState::Debug),
        ("inmigrate", RunState::InMigrate),
        ("internal-error", RunState::InternalError),
        ("io-error", RunState::IoError),
        ("paused", RunState::Paused),
        ("postmigrate", RunState::PostMigrate),
        ("prelaunch", RunState::Prelaunch),
        ("finish-migrate", RunState::FinishMigrate),
        ("restore-vm", RunState::RestoreVm),
        ("running", RunState::Running),
        ("save-vm", RunState::SaveVm),
        ("shutdown", RunState::Shutdown),
        ("suspended", RunState::Suspended),
        ("watchdog", RunState::Watchdog),
        ("guest-panicked", RunState::GuestPanicked),
        ("colo", RunState::Colo),
    ];

    /// Parse QEMU's name for a run state.
    pub fn from_qapi(name: &str) -> RunState {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, state)| state.clone())
            .unwrap_or_else(|| RunState::Other(name.to_owned()))
    }

    /// QEMU's name for this run state.
    pub fn as_qapi(&self) -> &str {
        match self {
            RunState::Other(name) => name,
            known => Self::NAMES
                .iter()
                .find(|(_, state)| state == known)
                .map(|(name, _)| *name)
                .unwrap_or("unknown"),
        }
    }

    /// Whether guest CPUs are executing.
    pub fn is_running(&self) -> bool {
        *self == RunState::Running
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The state of a migration (`query-migrate`), per the QAPI
/// `MigrationStatus` enum; only the states vmkeep acts on are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration was started.
    None,
    Setup,
    Active,
    /// Saving the device state (the last phase).
    Device,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    /// Any other state (postcopy, colo, ...).
    Other(String),
}

impl MigrationStatus {
    fn from_qapi(name: &str) -> MigrationStatus {
        match name {
            "none" => MigrationStatus::None,
            "setup" => MigrationStatus::Setup,
            "active" => MigrationStatus::Active,
            "device" => MigrationStatus::Device,
            "completed" => MigrationStatus::Completed,
            "failed" => MigrationStatus::Failed,
            "cancelling" => MigrationStatus::Cancelling,
            "cancelled" => MigrationStatus::Cancelled,
            other => MigrationStatus::Other(other.to_owned()),
        }
    }

    /// Whether the migration is over, one way or the other.
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// What `query-migrate` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub status: MigrationStatus,
    /// RAM bytes sent so far (RAM the migration skips is not counted).
    pub ram_transferred: Option<u64>,
    /// QEMU's reason when it failed.
    pub error: Option<String>,
}

/// A command's outcome as QEMU reported it.
type Reply = Result<Value, ErrorBody>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// Unsolicited messages from the reader.
#[derive(Debug, Clone, PartialEq)]
enum Unsolicited {
    Greeting(Value),
    Event(StampedEvent),
}

/// A connected QMP client: a cheap handle; clones share the connection.
#[derive(Debug, Clone)]
pub struct Qmp {
    conn: Connection<Reply>,
    version: Option<QemuVersion>,
}

/// The events QEMU sends, in order, including those that came before the
/// greeting. Ends when the connection ends.
#[derive(Debug)]
pub struct QmpEvents {
    early: VecDeque<StampedEvent>,
    rx: mpsc::UnboundedReceiver<Unsolicited>,
}

impl QmpEvents {
    /// The next event, or `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<QmpEvent> {
        self.next_stamped().await.map(|stamped| stamped.event)
    }

    /// The next event with its timestamp, or `None` once the connection has
    /// ended.
    pub async fn next_stamped(&mut self) -> Option<StampedEvent> {
        if let Some(event) = self.early.pop_front() {
            return Some(event);
        }
        loop {
            match self.rx.recv().await? {
                Unsolicited::Event(event) => return Some(event),
                Unsolicited::Greeting(_) => tracing::warn!("ignoring a second QMP greeting"),
            }
        }
    }
}

impl Qmp {
    /// Connect, read the greeting (events may arrive before it), negotiate
    /// `qmp_capabilities`. `timeout` bounds the whole exchange.
    ///
    /// QEMU serves one client per QMP socket at a time: while another client
    /// is connected, a new one is accepted but not greeted, and this returns
    /// [`QmpError::NoGreeting`].
    pub async fn connect(path: &Path, timeout: Duration) -> Result<(Qmp, QmpEvents), QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(QmpError::Connect {
                    path: path.to_owned(),
                    source,
                });
            }
            Err(_elapsed) => {
                return Err(QmpError::Connect {
                    path: path.to_owned(),
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
        };
        let (conn, rx) = Connection::new(stream, MAX_LINE_BYTES, classify);
        let mut events = QmpEvents {
            early: VecDeque::new(),
            rx,
        };

        let greeting = loop {
            match tokio::time::timeout_at(deadline, events.rx.recv()).await {
                Err(_elapsed) => {
                    return Err(QmpError::NoGreeting {
                        path: path.to_owned(),
                        after: timeout,
                    });
                }
                Ok(None) => {
                    return Err(QmpError::ClosedBeforeGreeting {
                        path: path.to_owned(),
                        reason: conn.close_reason(),
                    });
                }
                Ok(Some(Unsolicited::Greeting(greeting))) => break greeting,
                Ok(Some(Unsolicited::Event(event))) => events.early.push_back(event),
            }
        };
        let version = greeting
            .pointer("/version/qemu")
            .and_then(|v| QemuVersion::deserialize(v).ok());
        tracing::debug!(?version, path = %path.display(), "QMP greeting");

        let qmp = Qmp { conn, version };
        let remaining = deadline.saturating_duration_since(Instant::now());
        qmp.execute("qmp_capabilities", None, remaining).await?;
        Ok((qmp, events))
    }

    /// QEMU's version from the greeting, if it had one.
    pub fn qemu_version(&self) -> Option<QemuVersion> {
        self.version
    }

    /// Run one command and return its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let encode = |id: u64| {
            let mut request = Map::new();
            request.insert("execute".into(), Value::from(command));
            if let Some(arguments) = arguments {
                request.insert("arguments".into(), arguments);
            }
            request.insert("id".into(), Value::from(id));
            Value::Object(request).to_string().into_bytes()
        };
        let command_name = || command.to_owned();
        match self.conn.request(encode, timeout).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ErrorBody { class, desc })) => Err(QmpError::CommandFailed {
                command: command_name(),
                class,
                desc,
            }),
            Err(LineRpcError::Timeout { after, .. }) => Err(QmpError::Timeout {
                command: command_name(),
                after,
            }),
            Err(LineRpcError::Closed { reason, .. }) => Err(QmpError::Closed {
                command: command_name(),
                reason,
            }),
            Err(LineRpcError::Malformed { source, .. }) => Err(QmpError::Protocol {
                command: command_name(),
                message: source.message,
            }),
        }
    }

    /// Press the virtual power button (ACPI). The guest decides what to do.
    pub async fn system_powerdown(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("system_powerdown", None, timeout)
            .await
            .map(drop)
    }

    /// Make QEMU exit at once (a power cut for the guest). A connection that
    /// closes before the reply counts as success: QEMU is exiting.
    pub async fn quit(&self, timeout: Duration) -> Result<(), QmpError> {
        match self.execute("quit", None, timeout).await {
            Ok(_) => Ok(()),
            Err(QmpError::Closed { reason, .. }) => {
                tracing::debug!(%reason, "QMP connection closed in answer to quit");
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Pause the guest's CPUs (`stop`).
    pub async fn stop(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("stop", None, timeout).await.map(drop)
    }

    /// Let the guest's CPUs run (`cont`).
    pub async fn cont(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("cont", None, timeout).await.map(drop)
    }

    /// Turn one migration capability on or off.
    pub async fn set_migration_capability(
        &self,
        capability: &str,
        state: bool,
        timeout: Duration,
    ) -> Result<(), QmpError> {
        let arguments = serde_json::json!({
            "capabilities": [{"capability": capability, "state": state}]
        });
        self.execute("migrate-set-capabilities", Some(arguments), timeout)
            .await
            .map(drop)
    }

    /// Start sending the machine's state to `uri`; returns once started
    /// (see [`Qmp::query_migrate`]).
    pub async fn migrate(&self, uri: &str, timeout: Duration) -> Result<(), QmpError> {
        let arguments = serde_json::json!({ "uri": uri });
        self.execute("migrate", Some(arguments), timeout)
            .await
            .map(drop)
    }

    /// Abandon the outgoing migration.
    pub async fn migrate_cancel(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("migrate_cancel", None, timeout)
            .await
            .map(drop)
    }

    /// Start receiving the machine's state from `uri` (QEMU was started
    /// with `-incoming defer`); returns once QEMU listens.
    pub async fn migrate_incoming(&self, uri: &str, timeout: Duration) -> Result<(), QmpError> {
        let arguments = serde_json::json!({ "uri": uri });
        self.execute("migrate-incoming", Some(arguments), timeout)
            .await
            .map(drop)
    }

    /// The state of the current (or last) migration.
    pub async fn query_migrate(&self, timeout: Duration) -> Result<MigrationInfo, QmpError> {
        let reply = self.execute("query-migrate", None, timeout).await?;
        Ok(MigrationInfo {
            status: reply
                .get("status")
                .and_then(Value::as_str)
                .map(MigrationStatus::from_qapi)
                .unwrap_or(MigrationStatus::None),
            ram_transferred: reply.pointer("/ram/transferred").and_then(Value::as_u64),
            error: reply
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// The machine type QEMU runs, resolved (`pc-q35-7.2`, not the alias
    /// `q35`).
    pub async fn machine_type(&self, timeout: Duration) -> Result<String, QmpError> {
        let arguments = serde_json::json!({"path": "/machine", "property": "type"});
        let reply = self.execute("qom-get", Some(arguments), timeout).await?;
        match reply.as_str() {
            Some(name) => Ok(name.strip_suffix("-machine").unwrap_or(name).to_owned()),
            None => Err(QmpError::Protocol {
                command: "qom-get".into(),
                message: format!("the machine type is not a string: {reply}"),
            }),
        }
    }

    /// QEMU's current run state.
    pub async fn query_status(&self, timeout: Duration) -> Result<RunState, QmpError> {
        let reply = self.execute("query-status", None, timeout).await?;
        match reply.get("status").and_then(Value::as_str) {
            Some(status) => Ok(RunState::from_qapi(status)),
            None => Err(QmpError::Protocol {
                command: "query-status".into(),
                message: format!("no status string in {reply}"),
            }),
        }
    }
}

/// Sort one QMP line into greeting, event or reply.
fn classify(line: &[u8]) -> Result<Incoming<Reply, Unsolicited>, MalformedLine> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| MalformedLine::new(format!("not JSON: {e}")))?;
    let Value::Object(mut message) = value else {
        return Err(MalformedLine::new(format!("not a JSON object: {value}")));
    };
    if let Some(greeting) = message.remove("QMP") {
        return Ok(Incoming::Event(Unsolicited::Greeting(greeting)));
    }
    if let Some(name) = message.remove("event") {
        let Value::String(name) = name else {
            return Err(MalformedLine::new(format!(
                "event name is not a string: {name}"
            )));
        };
        let data = message.remove("data").unwrap_or(Value::Null);
        let timestamp = message
            .get("timestamp")
            .and_then(|t| QmpTimestamp::deserialize(t).ok());
        let event = parse_event(name, data);
        return Ok(Incoming::Event(Unsolicited::Event(StampedEvent {
            event,
            timestamp,
        })));
    }
    let id = message.get("id").and_then(Value::as_u64);
    let outcome = if let Some(value) = message.remove("return") {
        Ok(value)
    } else if let Some(error) = message.remove("error") {
        match ErrorBody::deserialize(&error) {
            Ok(body) => Err(body),
            Err(e) => {
                return Err(MalformedLine {
                    id,
                    message: format!("bad error object {error}: {e}"),
                });
            }
        }
    } else {
        return Err(MalformedLine {
            id,
            message: "neither greeting, event nor reply".into(),
        });
    };
    match id {
        Some(id) => Ok(Incoming::Response {
            id,
            payload: outcome,
        }),
        // QEMU answers input it cannot parse with an error without id.
        None => Err(MalformedLine::new(format!(
            "reply without a request id: {outcome:?}"
        ))),
    }
}

fn parse_event(name: String, data: Value) -> QmpEvent {
    #[derive(Deserialize)]
    struct GuestReason {
        guest: bool,
        reason: String,
    }
    let guest_reason = || GuestReason::deserialize(&data);
    let parsed = match name.as_str() {
        "SHUTDOWN" => guest_reason().map(|d| QmpEvent::Shutdown {
            guest: d.guest,
            reason: d.reason,
        }),
        "RESET" => guest_reason().map(|d| QmpEvent::Reset {
            guest: d.guest,
            reason: d.reason,
        }),
        "POWERDOWN" => Ok(QmpEvent::Powerdown),
        "STOP" => Ok(QmpEvent::Stop),
        "RESUME" => Ok(QmpEvent::Resume),
        "GUEST_PANICKED" => Ok(QmpEvent::GuestPanicked),
        _ => return QmpEvent::Unknown { name, data },
    };
    parsed.unwrap_or_else(|error| {
        tracing::warn!(%name, %error, "QMP event data did not parse; keeping it as unknown");
        QmpEvent::Unknown { name, data }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

    const T: Duration = Duration::from_secs(5);
    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;

    /// The QEMU end of a QMP socket.
    struct FakeQemu {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeQemu {
        async fn recv(&mut self) -> Value {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            assert!(n > 0, "client closed the connection");
            serde_json::from_str(&line).unwrap()
        }

        /// QEMU ends lines with CRLF.
        async fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).await.unwrap();
            self.writer.write_all(b"\r\n").await.unwrap();
        }

        async fn reply(&mut self, request: &Value, value: Value) {
            self.send(&json!({"return": value, "id": request["id"]}).to_string())
                .await;
        }

        /// Greet and accept capabilities negotiation.
        async fn handshake(&mut self) {
            self.send(GREETING).await;
            let request = self.recv().await;
            assert_eq!(request["execute"], "qmp_capabilities");
            self.reply(&request, json!({})).await;
        }
    }

    /// A listener in a temp dir; `peer` plays QEMU on the first connection.
    async fn with_fake_qemu<F, Fut, C, CFut, T>(peer: F, client: C) -> T
    where
        F: FnOnce(FakeQemu) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        C: FnOnce(PathBuf) -> CFut,
        CFut: Future<Output = T>,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, w) = stream.into_split();
            peer(FakeQemu {
                reader: BufReader::new(r),
                writer: w,
            })
            .await;
        });
        let result = client(path).await;
        server.await.unwrap();
        result
    }

    fn event_line(name: &str, data: Value) -> String {
        json!({"event": name, "data": data, "timestamp": {"seconds": 1700000000, "microseconds": 12}})
            .to_string()
    }

    #[tokio::test]
    async fn connect_reads_greeting_negotiates_and_keeps_early_events() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.send(&event_line("STOP", json!({}))).await;
                qemu.send(GREETING).await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "qmp_capabilities");
                assert!(request.get("arguments").is_none());
                assert!(request["id"].is_u64());
                qemu.send(&event_line("RESUME", json!({}))).await;
                qemu.reply(&request, json!({})).await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "query-status");
                qemu.reply(&request, json!({"status": "prelaunch", "running": false}))
                    .await;
            },
            |path| async move {
                let (qmp, mut events) = Qmp::connect(&path, T).await.unwrap();
                assert_eq!(
                    qmp.qemu_version(),
                    Some(QemuVersion {
                        major: 7,
                        minor: 2,
                        micro: 22
                    })
                );
                assert_eq!(qmp.query_status(T).await.unwrap(), RunState::Prelaunch);
                let first = events.next_stamped().await.unwrap();
                assert_eq!(first.event, QmpEvent::Stop);
                assert_eq!(
                    first.timestamp,
                    Some(QmpTimestamp {
                        seconds: 1700000000,
                        microseconds: 12
                    })
                );
                assert_eq!(events.next().await, Some(QmpEvent::Resume));
                drop(qmp);
                assert_eq!(events.next().await, None);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn execute_passes_arguments_and_maps_errors() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "human-monitor-command");
                assert_eq!(request["arguments"], json!({"command-line": "info version"}));
                qemu.reply(&request, json!("7.2.22\r\n")).await;
                let request = qemu.recv().await;
                qemu.send(
                    &json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": request["id"]})
                        .to_string(),
                )
                .await;
            },
            |path| async move {
                let (qmp, _events) = Qmp::connect(&path, T).await.unwrap();
                let args = json!({"command-line": "info version"});
                let out = qmp.execute("human-monitor-command", Some(args), T).await.unwrap();
                assert_eq!(out, json!("7.2.22\r\n"));
                match qmp.execute("nope", None, T).await {
                    Err(QmpError::CommandFailed { command, class, desc }) => {
                        assert_eq!(command, "nope");
                        assert_eq!(class, "CommandNotFound");
                        assert_eq!(desc, "The command nope has not been found");
                    }
                    other => panic!("expected CommandFailed, got {other:?}"),
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn quit_tolerates_the_connection_closing_before_the_reply() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "quit");
                drop(qemu);
            },
            |path| async move {
                let (qmp, mut events) = Qmp::connect(&path, T).await.unwrap();
                qmp.quit(T).await.unwrap();
                assert_eq!(events.next().await, None);
                // Other commands do report the closed connection.
                assert!(matches!(
                    qmp.system_powerdown(T).await,
                    Err(QmpError::Closed { command, .. }) if command == "system_powerdown"
                ));
            },
        )
        .await;
    }

    #[tokio::test]
    async fn quit_with_a_reply_succeeds_too() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let request = qemu.recv().await;
                qemu.reply(&request, json!({})).await;
                qemu.send(&event_line(
                    "SHUTDOWN",
                    json!({"guest": false, "reason": "host-qmp-quit"}),
                ))
                .await;
            },
            |path| async move {
                let (qmp, mut events) = Qmp::connect(&path, T).await.unwrap();
                qmp.quit(T).await.unwrap();
                assert_eq!(
                    events.next().await,
                    Some(QmpEvent::Shutdown {
                        guest: false,
                        reason: "host-qmp-quit".into()
                    })
                );
            },
        )
        .await;
    }

    #[tokio::test]
    async fn missing_greeting_and_command_timeouts_are_reported() {
        with_fake_qemu(
            |qemu| async move {
                // Accept and say nothing until the client gives up (holding
                // the whole socket, not only its read half).
                let mut qemu = qemu;
                let mut line = String::new();
                let _ = qemu.reader.read_line(&mut line).await;
            },
            |path| async move {
                let short = Duration::from_millis(200);
                match Qmp::connect(&path, short).await {
                    Err(QmpError::NoGreeting { after, .. }) => assert_eq!(after, short),
                    other => panic!("expected NoGreeting, got {other:?}"),
                }
            },
        )
        .await;
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let _ignored = qemu.recv().await;
                let mut line = String::new();
                let _ = qemu.reader.read_line(&mut line).await;
            },
            |path| async move {
                let (qmp, _events) = Qmp::connect(&path, T).await.unwrap();
                let short = Duration::from_millis(100);
                match qmp.system_powerdown(short).await {
                    Err(QmpError::Timeout { command, after }) => {
                        assert_eq!(command, "system_powerdown");
                        assert_eq!(after, short);
                    }
                    other => panic!("expected Timeout, got {other:?}"),
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn migration_commands_send_their_arguments_and_parse_the_answers() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "migrate-set-capabilities");
                assert_eq!(
                    request["arguments"],
                    json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
                );
                qemu.reply(&request, json!({})).await;
                let request = qemu.recv().await;
                assert_eq!(request["arguments"], json!({"uri": "unix:/s/mig.sock"}));
                qemu.reply(&request, json!({})).await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "query-migrate");
                qemu.reply(
                    &request,
                    json!({"status": "active", "ram": {"transferred": 4096, "total": 1}}),
                )
                .await;
                let request = qemu.recv().await;
                qemu.reply(
                    &request,
                    json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}),
                )
                .await;
                let request = qemu.recv().await;
                qemu.reply(&request, json!({})).await;
                let request = qemu.recv().await;
                assert_eq!(request["execute"], "qom-get");
                qemu.reply(&request, json!("pc-q35-7.2-machine")).await;
            },
            |path| async move {
                let (qmp, _events) = Qmp::connect(&path, T).await.unwrap();
                qmp.set_migration_capability("x-ignore-shared", true, T)
                    .await
                    .unwrap();
                qmp.migrate("unix:/s/mig.sock", T).await.unwrap();
                let active = qmp.query_migrate(T).await.unwrap();
                assert_eq!(active.status, MigrationStatus::Active);
                assert_eq!(active.ram_transferred, Some(4096));
                assert!(!active.status.is_over());
                let failed = qmp.query_migrate(T).await.unwrap();
                assert!(failed.status.is_over());
                assert_eq!(
                    failed.error.as_deref(),
                    Some("Unable to write to socket: Broken pipe")
                );
                // A QEMU that never migrated answers with an empty object.
                assert_eq!(
                    qmp.query_migrate(T).await.unwrap().status,
                    MigrationStatus::None
                );
                assert_eq!(qmp.machine_type(T).await.unwrap(), "pc-q35-7.2");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        match Qmp::connect(&path, T).await {
            Err(QmpError::Connect { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_very_long_reply_arrives_whole() {
        with_fake_qemu(
            |mut qemu| async move {
                qemu.handshake().await;
                let request = qemu.recv().await;
                let schema: Vec<Value> = (0..60_000)
                    .map(|i| json!({"name": format!("type-{i}"), "meta-type": "object"}))
                    .collect();
                qemu.reply(&request, Value::Array(schema)).await;
            },
            |path| async move {
                let (qmp, _events) = Qmp::connect(&path, T).await.unwrap();
                let schema = qmp.execute("query-qmp-schema", None, T).await.unwrap();
                assert_eq!(schema.as_array().unwrap().len(), 60_000);
            },
        )
        .await;
    }

    fn classify_event(line: &str) -> StampedEvent {
        match classify(line.as_bytes()) {
            Ok(Incoming::Event(Unsolicited::Event(event))) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn events_parse_into_the_enum_with_unknown_fallback() {
        let cases = [
            (
                event_line(
                    "SHUTDOWN",
                    json!({"guest": true, "reason": "guest-shutdown"}),
                ),
                QmpEvent::Shutdown {
                    guest: true,
                    reason: "guest-shutdown".into(),
                },
            ),
            (
                event_line(
                    "RESET",
                    json!({"guest": false, "reason": "host-qmp-system-reset"}),
                ),
                QmpEvent::Reset {
                    guest: false,
                    reason: "host-qmp-system-reset".into(),
                },
            ),
            (event_line("POWERDOWN", json!({})), QmpEvent::Powerdown),
            (event_line("STOP", json!({})), QmpEvent::Stop),
            (event_line("RESUME", json!({})), QmpEvent::Resume),
            (
                event_line("GUEST_PANICKED", json!({"action": "pause"})),
                QmpEvent::GuestPanicked,
            ),
            (
                event_line("NIC_RX_FILTER_CHANGED", json!({"path": "/machine/net0"})),
                QmpEvent::Unknown {
                    name: "NIC_RX_FILTER_CHANGED".into(),
                    data: json!({"path": "/machine/net0"}),
                },
            ),
            // A known event with unexpected data is kept, not dropped.
            (
                event_line("SHUTDOWN", json!({"why": 1})),
                QmpEvent::Unknown {
                    name: "SHUTDOWN".into(),
                    data: json!({"why": 1}),
                },
            ),
        ];
        for (line, expected) in cases {
            let stamped = classify_event(&line);
            assert_eq!(stamped.event, expected, "{line}");
            assert_eq!(
                stamped.timestamp,
                Some(QmpTimestamp {
                    seconds: 1700000000,
                    microseconds: 12
                })
            );
        }
        // An event without data or timestamp still parses.
        let bare = classify_event(r#"{"event": "STOP"}"#);
        assert_eq!(
            bare,
            StampedEvent {
                event: QmpEvent::Stop,
                timestamp: None
            }
        );
    }

    #[test]
    fn replies_and_malformed_lines_are_classified() {
        assert_eq!(
            classify(br#"{"return": {}, "id": 4}"#).unwrap(),
            Incoming::Response {
                id: 4,
                payload: Ok(json!({}))
            }
        );
        assert_eq!(
            classify(br#"{"error": {"class": "GenericError", "desc": "no"}, "id": 5}"#).unwrap(),
            Incoming::Response {
                id: 5,
                payload: Err(ErrorBody {
                    class: "GenericError".into(),
                    desc: "no".into()
                })
            }
        );
        let no_id =
            classify(br#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#);
        assert_eq!(no_id.unwrap_err().id, None);
        let odd = classify(br#"{"something": 1, "id": 6}"#).unwrap_err();
        assert_eq!(odd.id, Some(6));
        assert!(classify(b"[1, 2]").is_err());
        assert!(classify(b"{nope").is_err());
    }

    #[test]
    fn run_states_round_trip_their_names() {
        for (name, state) in RunState::NAMES {
            assert_eq!(RunState::from_qapi(name), state);
            assert_eq!(state.as_qapi(), name);
        }
        let other = RunState::from_qapi("something-new");
        assert_eq!(other, RunState::Other("something-new".into()));
        assert_eq!(other.as_qapi(), "something-new");
        assert!(RunState::Running.is_running());
        assert!(!RunState::Prelaunch.is_running());
    }
}
