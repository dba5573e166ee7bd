//! The QMP client: connect (events may come before the greeting),
//! negotiate, run commands by id over [`crate::link::line_rpc`], and hand
//! out the events in order.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::event::{EventLog, QmpEvent, StampedEvent, parse_event};
use super::types::{
    MigrationInfo, MigrationStatus, QemuVersion, QmpTimestamp, StatusInfo, parse_status,
};
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

/// A command's outcome as QEMU reported it.
pub(crate) type Reply = Result<Value, ErrorBody>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorBody {
    pub(super) class: String,
    pub(super) desc: String,
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
