//! The QMP client against a fake QEMU, and the parsing of its lines.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::client::{ErrorBody, Message};
use super::*;
use crate::link::line_rpc::MalformedLine;
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
    let no_id = parse_line(br#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#);
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
