//! QMP client: QEMU's machine protocol over its unix socket.
//!
//! QEMU greets a new connection with `{"QMP": {...}}`, accepts commands only
//! after `qmp_capabilities`, answers each command with `{"return": ...}` or
//! `{"error": {"class", "desc"}}` carrying the command's `id`, and sends
//! events (`{"event", "data", "timestamp"}`) at any time, even before the
//! greeting. The mechanism (ids, one reader, long lines, bounds) is
//! [`crate::link::line_rpc`]; this module knows the QMP message shapes.
//!
//! Every event is logged by name when it arrives, whether vmkeep has a
//! variant for it or not ([`QmpEvent::Unknown`] keeps the name and data), and
//! whether or not anyone takes it from [`QmpEvents`]; a flood of one event
//! name is logged thinly.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::link::line_rpc::{
    CloseReason, Connection, Events, Incoming, Limits, LineRpcError, MalformedLine,
};
use crate::link::untrusted::{self, LogBudget, SHOWN_BYTES};

/// Longest QMP line accepted while no command is in flight: the greeting
/// and events, which are small (QEMU's longest, `BLOCK_IO_ERROR` with its
/// reason, is well under a KiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Longest reply to a command accepted. `query-qmp-schema` is the longest
/// QEMU has (207 KB on QEMU 7.2); this leaves ample room.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// What QEMU may make the host hold on one connection.
pub const LIMITS: Limits = Limits {
    line_bytes: MAX_MESSAGE_BYTES,
    // Events pile up only while the host agent is busy (a stop), for seconds.
    queued_event_bytes: 4 * MAX_MESSAGE_BYTES,
};

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

/// A QAPI enum: its known values, and `Other` for a name this client does
/// not know (a newer QEMU's), kept as QEMU spelled it.
macro_rules! qapi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this client does not know.
            Other(String),
        }

        impl $name {
            /// Every known value with its QAPI name.
            pub const NAMES: &'static [(&'static str, $name)] = &[$(($text, $name::$variant)),+];

            /// Parse QEMU's name for a value.
            pub fn from_qapi(name: &str) -> $name {
                match name {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }

            /// QEMU's name for this value.
            pub fn as_qapi(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(name) => name,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&untrusted::shown(self.as_qapi(), SHOWN_BYTES))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                String::deserialize(deserializer).map(|name| $name::from_qapi(&name))
            }
        }
    };
}

qapi_enum! {
    /// QEMU's run state (`query-status`), per the QAPI `RunState` enum.
    pub enum RunState {
        Debug = "debug",
        InMigrate = "inmigrate",
        InternalError = "internal-error",
        /// Paused after a disk error (a `BLOCK_IO_ERROR` with action `stop`).
        IoError = "io-error",
        Paused = "paused",
        PostMigrate = "postmigrate",
        /// Started with `-S`, never run yet.
        Prelaunch = "prelaunch",
        FinishMigrate = "finish-migrate",
        RestoreVm = "restore-vm",
        Running = "running",
        SaveVm = "save-vm",
        Shutdown = "shutdown",
        Suspended = "suspended",
        Watchdog = "watchdog",
        GuestPanicked = "guest-panicked",
        Colo = "colo",
    }
}

impl RunState {
    /// Whether guest CPUs are executing.
    pub fn is_running(&self) -> bool {
        *self == RunState::Running
    }
}

qapi_enum! {
    /// What a failed disk request was (QAPI `IoOperationType`).
    pub enum IoOperation {
        Read = "read",
        Write = "write",
    }
}

qapi_enum! {
    /// What QEMU did about a disk error (QAPI `BlockErrorAction`).
    pub enum BlockErrorAction {
        /// The error was ignored; the guest carries on as if it succeeded.
        Ignore = "ignore",
        /// The error was passed to the guest.
        Report = "report",
        /// The VM was paused (run state `io-error`); `cont` retries.
        Stop = "stop",
    }
}

qapi_enum! {
    /// What QEMU does after a guest panic (QAPI `GuestPanicAction`).
    pub enum GuestPanicAction {
        /// The VM is paused (run state `guest-panicked`).
        Pause = "pause",
        /// QEMU powers the VM off.
        Poweroff = "poweroff",
        /// The VM keeps running (it may reboot itself).
        Run = "run",
    }
}

qapi_enum! {
    /// What QEMU does when the guest's watchdog fires (QAPI `WatchdogAction`).
    pub enum WatchdogAction {
        Reset = "reset",
        Shutdown = "shutdown",
        Poweroff = "poweroff",
        Pause = "pause",
        Debug = "debug",
        None = "none",
        InjectNmi = "inject-nmi",
    }
}

/// A disk error (`BLOCK_IO_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockIoError {
    /// The drive's id (empty for a `-blockdev` node without one).
    pub device: String,
    /// The block node, when QEMU names it.
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    pub operation: IoOperation,
    pub action: BlockErrorAction,
    /// The host ran out of space (false when QEMU does not say).
    #[serde(default)]
    pub nospace: bool,
    /// QEMU's description of the error (the host's `strerror`).
    pub reason: String,
}

/// An asynchronous QMP event. Those that change what a user should see
/// (whether the guest runs, and why not) have their own variant.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    /// The guest shut down (or QEMU was asked to); `guest` tells whether the
    /// guest initiated it; `reason` is QEMU's `ShutdownCause`.
    Shutdown { guest: bool, reason: String },
    /// `system_powerdown` pressed the virtual power button.
    Powerdown,
    /// The machine reset.
    Reset { guest: bool, reason: String },
    /// The VM stopped (paused): by `stop`, a disk error, a panic, ...
    Stop,
    /// The VM resumed.
    Resume,
    /// The guest went to sleep (ACPI S3); run state `suspended`.
    Suspend,
    /// The guest hibernated (ACPI S4); QEMU then shuts down.
    SuspendDisk,
    /// The guest woke up from sleep.
    Wakeup,
    /// A disk request failed; with action `stop` the VM is paused.
    BlockIoError(BlockIoError),
    /// The guest reported a panic (pvpanic, Hyper-V, s390).
    GuestPanicked { action: GuestPanicAction },
    /// The guest's watchdog fired.
    Watchdog { action: WatchdogAction },
    /// Any other event, or a known one whose data did not parse; the name
    /// is QEMU's.
    Unknown { name: String, data: Value },
}

impl QmpEvent {
    /// QEMU's name for this event (`SHUTDOWN`, `BLOCK_IO_ERROR`, ...).
    pub fn name(&self) -> &str {
        match self {
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Powerdown => "POWERDOWN",
            QmpEvent::Reset { .. } => "RESET",
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Suspend => "SUSPEND",
            QmpEvent::SuspendDisk => "SUSPEND_DISK",
            QmpEvent::Wakeup => "WAKEUP",
            QmpEvent::BlockIoError(_) => "BLOCK_IO_ERROR",
            QmpEvent::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEvent::Watchdog { .. } => "WATCHDOG",
            QmpEvent::Unknown { name, .. } => name,
        }
    }
}

/// The event's name and what matters in its data, as safe to log or show.
impl fmt::Display for QmpEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |text: &str| untrusted::shown(text, SHOWN_BYTES);
        f.write_str(&shown(self.name()))?;
        match self {
            QmpEvent::Shutdown { guest, reason } | QmpEvent::Reset { guest, reason } => {
                write!(f, " (guest: {guest}, reason: {})", shown(reason))
            }
            QmpEvent::BlockIoError(error) => {
                write!(
                    f,
                    " ({} error on {}",
                    error.operation,
                    shown(if error.device.is_empty() {
                        error.node_name.as_deref().unwrap_or("")
                    } else {
                        &error.device
                    })
                )?;
                write!(f, ": {}; action: {}", shown(&error.reason), error.action)?;
                if error.nospace {
                    f.write_str("; the host is out of space")?;
                }
                f.write_str(")")
            }
            QmpEvent::GuestPanicked { action } => write!(f, " (action: {action})"),
            QmpEvent::Watchdog { action } => write!(f, " (action: {action})"),
            QmpEvent::Unknown { data, .. } if !data.is_null() => {
                write!(f, " {}", untrusted::shown_json(data, SHOWN_BYTES))
            }
            _ => Ok(()),
        }
    }
}

/// An event with the time QEMU stamped on it.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedEvent {
    pub event: QmpEvent,
    pub timestamp: Option<QmpTimestamp>,
}

/// The result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether guest CPUs are executing.
    pub running: bool,
    /// Why (not): `running`, `paused`, `io-error`, `prelaunch`, ...
    pub status: RunState,
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
pub(crate) type Reply = Result<Value, ErrorBody>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorBody {
    class: String,
    desc: String,
}

/// One QMP line, sorted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    Greeting(Value),
    Event {
        event: StampedEvent,
        /// Why a known event's data did not parse (it became `Unknown`).
        problem: Option<String>,
    },
    Reply {
        id: u64,
        outcome: Reply,
    },
}

/// A connected QMP client: a cheap handle; clones share the connection.
#[derive(Debug, Clone)]
pub struct Qmp {
    conn: Connection<Reply>,
    version: Option<QemuVersion>,
}

/// The events QEMU sends, in order, including those that came before the
/// greeting. Ends when the connection ends. Events nobody takes are held up
/// to [`LIMITS`]' `queued_event_bytes`, then dropped (they are logged when
/// they arrive, all the same).
#[derive(Debug)]
pub struct QmpEvents {
    rx: Events<StampedEvent>,
}

impl QmpEvents {
    /// The next event, or `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<QmpEvent> {
        self.next_stamped().await.map(|stamped| stamped.event)
    }

    /// The next event with its timestamp, or `None` once the connection has
    /// ended.
    pub async fn next_stamped(&mut self) -> Option<StampedEvent> {
        self.rx.recv().await
    }
}

/// The reader's state: where the greeting goes, and how often each event
/// name was logged.
struct Reader {
    greeting: Option<oneshot::Sender<Value>>,
    log: EventLog,
    surplus_greetings: LogBudget,
}

impl Reader {
    fn classify(&mut self, line: &[u8]) -> Result<Incoming<Reply, StampedEvent>, MalformedLine> {
        match parse_line(line)? {
            Message::Greeting(greeting) => {
                match self.greeting.take() {
                    Some(tx) => drop(tx.send(greeting)),
                    None => {
                        if let Some(count) = self.surplus_greetings.tick() {
                            tracing::warn!(count, "ignoring a second QMP greeting");
                        }
                    }
                }
                Ok(Incoming::Ignore)
            }
            Message::Event { event, problem } => {
                self.log.note(&event.event, problem.as_deref());
                Ok(Incoming::Event(event))
            }
            Message::Reply { id, outcome } => Ok(Incoming::Response {
                id,
                payload: outcome,
            }),
        }
    }
}

/// Logs every event by name, thinly when one name floods.
#[derive(Default)]
struct EventLog {
    budgets: HashMap<String, LogBudget>,
    /// For names beyond [`EventLog::MAX_NAMES`] distinct ones.
    others: LogBudget,
}

impl EventLog {
    /// Distinct event names counted on their own (QEMU 7.2 has about 60).
    const MAX_NAMES: usize = 128;

    fn note(&mut self, event: &QmpEvent, problem: Option<&str>) {
        let name = event.name();
        let budget = if let Some(budget) = self.budgets.get_mut(name) {
            budget
        } else if self.budgets.len() < Self::MAX_NAMES {
            self.budgets.entry(name.to_owned()).or_default()
        } else {
            &mut self.others
        };
        let Some(count) = budget.tick() else { return };
        let name = untrusted::shown(name, SHOWN_BYTES);
        match (event, problem) {
            (_, Some(problem)) => tracing::warn!(
                event = %name,
                count,
                problem = %untrusted::shown(problem, SHOWN_BYTES),
                "QMP event whose data did not parse; kept as unknown: {event}"
            ),
            (QmpEvent::Unknown { .. }, None) => {
                tracing::info!(event = %name, count, "QMP event vmkeep does not handle: {event}")
            }
            _ => tracing::info!(event = %name, count, "QMP event: {event}"),
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
        let (greeting_tx, greeting_rx) = oneshot::channel();
        let mut reader = Reader {
            greeting: Some(greeting_tx),
            log: EventLog::default(),
            surplus_greetings: LogBudget::default(),
        };
        let (conn, rx) = Connection::new(stream, LIMITS, move |line: &[u8]| reader.classify(line));
        // Events before the greeting wait in the (bounded) event queue.
        let events = QmpEvents { rx };
        let greeting = match tokio::time::timeout_at(deadline, greeting_rx).await {
            Err(_elapsed) => {
                return Err(QmpError::NoGreeting {
                    path: path.to_owned(),
                    after: timeout,
                });
            }
            // The reader stopped: the connection ended.
            Ok(Err(_closed)) => {
                return Err(QmpError::ClosedBeforeGreeting {
                    path: path.to_owned(),
                    reason: conn.close_reason(),
                });
            }
            Ok(Ok(greeting)) => greeting,
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

    /// Run one command and return its `return` value (which may be up to
    /// [`MAX_REPLY_BYTES`] long).
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
        match self
            .conn
            .request_with_reply_limit(encode, timeout, MAX_REPLY_BYTES)
            .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ErrorBody { class, desc })) => Err(QmpError::CommandFailed {
                command: command_name(),
                class: untrusted::shown(&class, SHOWN_BYTES),
                desc: untrusted::shown(&desc, MalformedLine::MAX_MESSAGE_BYTES),
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

    /// Pause the guest's CPUs (QMP `stop`); QEMU sends `STOP`.
    pub async fn pause(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("stop", None, timeout).await.map(drop)
    }

    /// Resume the guest's CPUs (QMP `cont`): after `-S`, a pause, or a disk
    /// error that stopped the VM (the failed request is retried); QEMU sends
    /// `RESUME`.
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
    pub async fn query_status(&self, timeout: Duration) -> Result<StatusInfo, QmpError> {
        let reply = self.execute("query-status", None, timeout).await?;
        parse_status(&reply).map_err(|message| QmpError::Protocol {
            command: "query-status".into(),
            message,
        })
    }
}

/// Read a `query-status` reply.
pub(crate) fn parse_status(reply: &Value) -> Result<StatusInfo, String> {
    StatusInfo::deserialize(reply)
        .map_err(|e| format!("{e} in {}", untrusted::shown_json(reply, SHOWN_BYTES)))
}

/// Sort one QMP line into greeting, event or reply.
pub(crate) fn parse_line(line: &[u8]) -> Result<Message, MalformedLine> {
    let quoted = || untrusted::shown_bytes(line, SHOWN_BYTES);
    let value: Value =
        serde_json::from_slice(line).map_err(|e| MalformedLine::new(format!("not JSON: {e}")))?;
    let Value::Object(mut message) = value else {
        return Err(MalformedLine::new(format!(
            "not a JSON object: {}",
            quoted()
        )));
    };
    if let Some(greeting) = message.remove("QMP") {
        return Ok(Message::Greeting(greeting));
    }
    if let Some(name) = message.remove("event") {
        let Value::String(name) = name else {
            return Err(MalformedLine::new(format!(
                "event name is not a string: {}",
                quoted()
            )));
        };
        let data = message.remove("data").unwrap_or(Value::Null);
        let timestamp = message
            .get("timestamp")
            .and_then(|t| QmpTimestamp::deserialize(t).ok());
        let (event, problem) = parse_event(name, data);
        return Ok(Message::Event {
            event: StampedEvent { event, timestamp },
            problem,
        });
    }
    let id = message.get("id").and_then(Value::as_u64);
    let outcome = if let Some(value) = message.remove("return") {
        Ok(value)
    } else if let Some(error) = message.remove("error") {
        match ErrorBody::deserialize(&error) {
            Ok(body) => Err(body),
            Err(e) => {
                return Err(MalformedLine::answering(
                    id,
                    format!("bad error object ({e}): {}", quoted()),
                ));
            }
        }
    } else {
        return Err(MalformedLine::answering(
            id,
            format!("neither greeting, event nor reply: {}", quoted()),
        ));
    };
    match id {
        Some(id) => Ok(Message::Reply { id, outcome }),
        // QEMU answers input it cannot parse with an error without id.
        None => Err(MalformedLine::new(format!(
            "reply without a request id: {}",
            quoted()
        ))),
    }
}

/// The typed event for `name`, or `Unknown` with why a known name's data
/// did not parse.
fn parse_event(name: String, data: Value) -> (QmpEvent, Option<String>) {
    #[derive(Deserialize)]
    struct GuestReason {
        guest: bool,
        reason: String,
    }
    #[derive(Deserialize)]
    struct PanicData {
        action: GuestPanicAction,
    }
    #[derive(Deserialize)]
    struct WatchdogData {
        action: WatchdogAction,
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
        "SUSPEND" => Ok(QmpEvent::Suspend),
        "SUSPEND_DISK" => Ok(QmpEvent::SuspendDisk),
        "WAKEUP" => Ok(QmpEvent::Wakeup),
        "BLOCK_IO_ERROR" => BlockIoError::deserialize(&data).map(QmpEvent::BlockIoError),
        "GUEST_PANICKED" => {
            PanicData::deserialize(&data).map(|d| QmpEvent::GuestPanicked { action: d.action })
        }
        "WATCHDOG" => {
            WatchdogData::deserialize(&data).map(|d| QmpEvent::Watchdog { action: d.action })
        }
        _ => return (QmpEvent::Unknown { name, data }, None),
    };
    match parsed {
        Ok(event) => (event, None),
        Err(error) => (QmpEvent::Unknown { name, data }, Some(error.to_string())),
    }
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
                assert_eq!(
                    qmp.query_status(T).await.unwrap(),
                    StatusInfo {
                        running: false,
                        status: RunState::Prelaunch
                    }
                );
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
        match parse_line(line.as_bytes()) {
            Ok(Message::Event { event, .. }) => event,
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
            (event_line("SUSPEND", json!({})), QmpEvent::Suspend),
            (event_line("SUSPEND_DISK", json!({})), QmpEvent::SuspendDisk),
            (event_line("WAKEUP", json!({})), QmpEvent::Wakeup),
            (
                event_line("GUEST_PANICKED", json!({"action": "pause"})),
                QmpEvent::GuestPanicked {
                    action: GuestPanicAction::Pause,
                },
            ),
            (
                // Hyper-V crash parameters come along; only the action is kept.
                event_line(
                    "GUEST_PANICKED",
                    json!({"action": "run", "info": {"type": "hyper-v", "arg1": 1}}),
                ),
                QmpEvent::GuestPanicked {
                    action: GuestPanicAction::Run,
                },
            ),
            (
                event_line("WATCHDOG", json!({"action": "inject-nmi"})),
                QmpEvent::Watchdog {
                    action: WatchdogAction::InjectNmi,
                },
            ),
            (
                // QEMU 7.2's shape for a -drive disk that ran out of host space.
                event_line(
                    "BLOCK_IO_ERROR",
                    json!({"device": "data", "node-name": "#block143", "operation": "write",
                           "action": "stop", "nospace": true, "reason": "No space left on device"}),
                ),
                QmpEvent::BlockIoError(BlockIoError {
                    device: "data".into(),
                    node_name: Some("#block143".into()),
                    operation: IoOperation::Write,
                    action: BlockErrorAction::Stop,
                    nospace: true,
                    reason: "No space left on device".into(),
                }),
            ),
            (
                // Without the optional fields, and with values from a newer QEMU.
                event_line(
                    "BLOCK_IO_ERROR",
                    json!({"device": "", "operation": "zone-append", "action": "retry",
                           "reason": "Input/output error"}),
                ),
                QmpEvent::BlockIoError(BlockIoError {
                    device: "".into(),
                    node_name: None,
                    operation: IoOperation::Other("zone-append".into()),
                    action: BlockErrorAction::Other("retry".into()),
                    nospace: false,
                    reason: "Input/output error".into(),
                }),
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
            (
                event_line("BLOCK_IO_ERROR", json!({"device": "data"})),
                QmpEvent::Unknown {
                    name: "BLOCK_IO_ERROR".into(),
                    data: json!({"device": "data"}),
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
    fn events_show_their_name_and_what_matters() {
        let shown = |line: String| classify_event(&line).event.to_string();
        assert_eq!(
            shown(event_line(
                "BLOCK_IO_ERROR",
                json!({"device": "data", "operation": "write", "action": "stop",
                       "nospace": true, "reason": "No space left on device"}),
            )),
            "BLOCK_IO_ERROR (write error on data: No space left on device; action: stop; \
             the host is out of space)"
        );
        assert_eq!(
            shown(event_line(
                "SHUTDOWN",
                json!({"guest": true, "reason": "guest-shutdown"})
            )),
            "SHUTDOWN (guest: true, reason: guest-shutdown)"
        );
        assert_eq!(
            shown(event_line("GUEST_PANICKED", json!({"action": "pause"}))),
            "GUEST_PANICKED (action: pause)"
        );
        // An event vmkeep does not know keeps its name, and a short view of
        // its data.
        assert_eq!(
            shown(event_line("RTC_CHANGE", json!({"offset": 3}))),
            r#"RTC_CHANGE {"offset":3}"#
        );
        let huge = shown(event_line(
            "X_FLOOD",
            json!({"blob": "\u{1b}".repeat(100_000)}),
        ));
        assert!(huge.starts_with(r#"X_FLOOD {"blob":"\u001b"#), "{huge}");
        assert!(huge.len() < 400, "{}", huge.len());
        assert_eq!(shown(r#"{"event": "STOP"}"#.into()), "STOP");
    }

    #[test]
    fn replies_and_malformed_lines_are_classified() {
        assert_eq!(
            parse_line(br#"{"return": {}, "id": 4}"#).unwrap(),
            Message::Reply {
                id: 4,
                outcome: Ok(json!({}))
            }
        );
        assert_eq!(
            parse_line(br#"{"error": {"class": "GenericError", "desc": "no"}, "id": 5}"#).unwrap(),
            Message::Reply {
                id: 5,
                outcome: Err(ErrorBody {
                    class: "GenericError".into(),
                    desc: "no".into()
                })
            }
        );
        let no_id =
            parse_line(br#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#);
        assert_eq!(no_id.unwrap_err().id, None);
        let odd = parse_line(br#"{"something": 1, "id": 6}"#).unwrap_err();
        assert_eq!(odd.id, Some(6));
        assert!(parse_line(b"[1, 2]").is_err());
        assert!(parse_line(b"{nope").is_err());
        // What a malformed line quotes is short, whatever its length.
        let long = format!("[{}]", "1,".repeat(500_000) + "1");
        let message = parse_line(long.as_bytes()).unwrap_err().message;
        assert!(
            message.len() <= MalformedLine::MAX_MESSAGE_BYTES + 40,
            "{message}"
        );
    }

    #[test]
    fn run_states_round_trip_their_names() {
        for (name, state) in RunState::NAMES {
            assert_eq!(&RunState::from_qapi(name), state);
            assert_eq!(state.as_qapi(), *name);
        }
        assert_eq!(RunState::NAMES.len(), 16);
        let other = RunState::from_qapi("something-new");
        assert_eq!(other, RunState::Other("something-new".into()));
        assert_eq!(other.as_qapi(), "something-new");
        assert!(RunState::Running.is_running());
        assert!(!RunState::Prelaunch.is_running());
    }

    #[test]
    fn query_status_replies_parse_with_unknown_states_kept() {
        let parse = |reply: Value| parse_status(&reply);
        assert_eq!(
            parse(json!({"status": "io-error", "singlestep": false, "running": false})),
            Ok(StatusInfo {
                running: false,
                status: RunState::IoError
            })
        );
        assert_eq!(
            parse(json!({"status": "from-the-future", "running": true})),
            Ok(StatusInfo {
                running: true,
                status: RunState::Other("from-the-future".into())
            })
        );
        let missing = parse(json!({"status": "running"})).unwrap_err();
        assert!(missing.contains("missing field `running`"), "{missing}");
    }
}
