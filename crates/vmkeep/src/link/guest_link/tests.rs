//! The guest link against a fake guest agent: connecting, readiness,
//! exec, and the checks of what a hostile guest says.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;
use vmkeep_protocol::{
    ExecRequest, ExecResult, Exposed, FromGuest, GuestInfo, Listening, MAX_LISTENING, Op, Reply,
    Request,
};

use super::reports::{MAX_MOUNT_BYTES, MAX_RELAY_ERROR_BYTES};
use super::*;
use crate::link::line_rpc::{Connection, Incoming};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use vmkeep_protocol::{decode_line, encode_line};

const T: Duration = Duration::from_secs(5);

fn info() -> GuestInfo {
    GuestInfo {
        kernel: "6.1.0-test".into(),
        boot_id: "b00t".into(),
        uptime_secs: 2.5,
        agent_version: "0.1.0".into(),
        data_mount: None,
        data_disk: None,
    }
}

/// The guest end of the socket.
struct FakeGuest {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl FakeGuest {
    fn new(stream: UnixStream) -> FakeGuest {
        let (r, w) = stream.into_split();
        FakeGuest {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The next request, or `None` at end of stream.
    async fn recv(&mut self) -> Option<Request> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).await.unwrap();
        (n > 0).then(|| decode_line(&line).unwrap())
    }

    async fn send(&mut self, message: &FromGuest) {
        self.writer.write_all(&encode_line(message)).await.unwrap();
    }

    async fn answer(&mut self, request: &Request, body: Reply) {
        self.send(&FromGuest::Reply {
            id: request.id,
            body,
        })
        .await;
    }
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ga.sock")
}

#[tokio::test]
async fn connect_says_hello_and_reports_later_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let listener = UnixListener::bind(&path).unwrap();
    let guest = tokio::spawn(async move {
        let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
        let hello = guest.recv().await.unwrap();
        assert_eq!(hello.op, Op::Hello);
        guest
            .answer(
                &hello,
                Reply::Hello {
                    ready: false,
                    info: info(),
                },
            )
            .await;
        let ping = guest.recv().await.unwrap();
        assert_eq!(ping.op, Op::Ping);
        assert_ne!(ping.id, hello.id);
        guest.send(&FromGuest::Ready(info())).await;
        guest.answer(&ping, Reply::Pong).await;
        let request = guest.recv().await.unwrap();
        assert_eq!(request.op, Op::Info);
        guest.answer(&request, Reply::Info(info())).await;
        // Stays until the host hangs up.
        assert!(guest.recv().await.is_none());
    });

    let (link, hello, mut events) = GuestLink::connect(&path, T).await.unwrap();
    assert_eq!(
        hello,
        Hello {
            ready: false,
            info: info()
        }
    );
    link.ping(T).await.unwrap();
    assert_eq!(events.next().await, Some(info()));
    assert_eq!(link.info(T).await.unwrap(), info());
    drop(link);
    guest.await.unwrap();
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn exec_round_trips_binary_output_and_guest_errors() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let all_bytes: Vec<u8> = (0..=255).collect();
    let expected_stdout = all_bytes.clone();
    let guest = tokio::spawn(async move {
        let mut guest = FakeGuest::new(theirs);
        let request = guest.recv().await.unwrap();
        let Op::Exec(exec) = &request.op else {
            panic!("expected exec, got {request:?}")
        };
        assert_eq!(exec.argv, ["cat"]);
        assert_eq!(exec.stdin, all_bytes);
        let result = ExecResult {
            exit_code: 3,
            stdout: exec.stdin.clone(),
            stderr: b"warn\n".to_vec(),
        };
        guest.answer(&request, Reply::Exec(result)).await;
        let request = guest.recv().await.unwrap();
        guest
            .answer(
                &request,
                Reply::Error {
                    message: "no such file: nope".into(),
                },
            )
            .await;
        let request = guest.recv().await.unwrap();
        assert_eq!(request.op, Op::Poweroff);
        guest.answer(&request, Reply::Pong).await;
        let request = guest.recv().await.unwrap();
        guest.answer(&request, Reply::PoweroffAccepted).await;
    });
    let (conn, _rx) = Connection::new(ours, LIMITS, sort_line);
    let link = GuestLink {
        conn,
        ports: watch::channel(None).1,
        sessions: Default::default(),
    };

    let request = ExecRequest {
        argv: vec!["cat".into()],
        stdin: (0..=255).collect(),
        env: vec![],
        cwd: None,
    };
    let result = link.exec(request, T).await.unwrap();
    assert_eq!(result.exit_code, 3);
    assert_eq!(result.stdout, expected_stdout);
    assert_eq!(result.stderr, b"warn\n");

    let nope = ExecRequest {
        argv: vec!["nope".into()],
        stdin: vec![],
        env: vec![],
        cwd: None,
    };
    match link.exec(nope, T).await {
        Err(GuestLinkError::Refused {
            op: GuestOp::Exec,
            message,
        }) => {
            assert_eq!(message, "no such file: nope")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    match link.poweroff(T).await {
        Err(
            error @ GuestLinkError::UnexpectedReply {
                op: GuestOp::Poweroff,
                reply: "pong",
            },
        ) => {
            assert_eq!(
                error.to_string(),
                "the guest agent answered poweroff with a pong reply"
            )
        }
        other => panic!("expected UnexpectedReply, got {other:?}"),
    }
    link.poweroff(T).await.unwrap();
    guest.await.unwrap();
}

#[tokio::test]
async fn wait_ready_survives_missing_socket_silent_port_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let server_path = path.clone();
    let server = tokio::spawn(async move {
        // QEMU has not created the socket yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = UnixListener::bind(&server_path).unwrap();

        // 1st connection: the guest has not opened its port; QEMU
        // accepts and never answers. Hold it until the host gives up.
        let mut silent = FakeGuest::new(listener.accept().await.unwrap().0);
        counter.fetch_add(1, Ordering::SeqCst);
        let mut unanswered = 0;
        while silent.recv().await.is_some() {
            unanswered += 1;
        }
        assert_eq!(unanswered, 1, "one Hello per connection");

        // 2nd connection: answered, not ready, then dropped.
        let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
        counter.fetch_add(1, Ordering::SeqCst);
        let hello = guest.recv().await.unwrap();
        guest
            .answer(
                &hello,
                Reply::Hello {
                    ready: false,
                    info: info(),
                },
            )
            .await;
        drop(guest);

        // 3rd connection: not ready, then Ready.
        let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
        counter.fetch_add(1, Ordering::SeqCst);
        let hello = guest.recv().await.unwrap();
        assert_eq!(hello.op, Op::Hello);
        guest
            .answer(
                &hello,
                Reply::Hello {
                    ready: false,
                    info: info(),
                },
            )
            .await;
        let ready = GuestInfo {
            uptime_secs: 9.0,
            ..info()
        };
        guest.send(&FromGuest::Ready(ready)).await;
        // The host keeps using this connection.
        let ping = guest.recv().await.unwrap();
        guest.answer(&ping, Reply::Pong).await;
        assert!(guest.recv().await.is_none());
    });

    let started = Instant::now();
    let (link, ready_info) = wait_ready(&path, started + Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(ready_info.uptime_secs, 9.0);
    assert!(
        started.elapsed() >= HELLO_RETRY,
        "the silent connection was given its second"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    link.ping(T).await.unwrap();
    drop(link);
    server.await.unwrap();
}

#[tokio::test]
async fn wait_ready_returns_at_once_when_the_guest_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let listener = UnixListener::bind(&path).unwrap();
    let guest = tokio::spawn(async move {
        let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
        let hello = guest.recv().await.unwrap();
        guest
            .answer(
                &hello,
                Reply::Hello {
                    ready: true,
                    info: info(),
                },
            )
            .await;
        assert!(guest.recv().await.is_none());
    });
    let (link, got) = wait_ready(&path, Instant::now() + T).await.unwrap();
    assert_eq!(got, info());
    drop(link);
    guest.await.unwrap();
}

#[tokio::test]
async fn wait_ready_gives_up_at_the_deadline_with_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(400);
    match wait_ready(&path, deadline).await {
        Err(GuestLinkError::NotReady { path: p, last }) => {
            assert_eq!(p, path);
            match last.as_deref() {
                Some(GuestLinkError::Connect { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::NotFound)
                }
                other => panic!("expected a Connect error, got {other:?}"),
            }
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn a_second_readiness_on_one_connection_means_the_guest_started_afresh() {
    let line = |message: &FromGuest| {
        let mut line = encode_line(message);
        line.pop();
        line
    };
    let ready = line(&FromGuest::Ready(info()));
    let hello = |ready| {
        line(&FromGuest::Reply {
            id: 1,
            body: Reply::Hello {
                ready,
                info: info(),
            },
        })
    };
    let is_restart =
        |incoming: Incoming<Reply, GuestEvent>| matches!(incoming, Incoming::PeerRestarted);

    // Booting: "not ready", then the announcement, then a reboot.
    let mut booting = Readiness::default();
    assert!(!is_restart(booting.classify(&hello(false)).unwrap()));
    assert!(matches!(
        booting.classify(&ready).unwrap(),
        Incoming::Event(_)
    ));
    assert!(!is_restart(booting.classify(&hello(true)).unwrap()));
    assert!(is_restart(booting.classify(&ready).unwrap()));

    // Connected to a guest that was ready already: its next
    // announcement is a new boot's.
    let mut connected_late = Readiness::default();
    assert!(!is_restart(connected_late.classify(&hello(true)).unwrap()));
    assert!(is_restart(connected_late.classify(&ready).unwrap()));
}

#[test]
fn port_reports_are_checked_and_do_not_count_as_readiness() {
    use vmkeep_protocol::{ListenSocket, Proto};
    let line = |message: &FromGuest| {
        let mut line = encode_line(message);
        line.pop();
        line
    };
    let socket = |ip: &str, port| ListenSocket {
        proto: Proto::Tcp,
        ip: ip.into(),
        port,
    };
    let good = Listening {
        sockets: vec![socket("127.0.0.1", 8080), socket("::", 3000)],
        truncated: false,
    };
    let mut readiness = Readiness::default();
    assert!(matches!(
        readiness.classify(&line(&FromGuest::Ports(good.clone()))).unwrap(),
        Incoming::Event(GuestEvent::Ports(got)) if got == good
    ));
    // A report after readiness is no new boot.
    readiness
        .classify(&line(&FromGuest::Ready(info())))
        .unwrap();
    assert!(matches!(
        readiness.classify(&line(&FromGuest::Ports(good))).unwrap(),
        Incoming::Event(GuestEvent::Ports(_))
    ));
    for bad in [
        Listening {
            sockets: vec![socket("\x1b[2J", 1)],
            truncated: false,
        },
        Listening {
            sockets: vec![socket("0.0.0.0", 0)],
            truncated: false,
        },
        Listening {
            sockets: (1..=MAX_LISTENING as u16 + 1)
                .map(|p| socket("0.0.0.0", p))
                .collect(),
            truncated: false,
        },
    ] {
        assert!(check_listening(&bad).is_err(), "{bad:?}");
        let error = sort_line(&line(&FromGuest::Ports(bad.clone()))).unwrap_err();
        assert!(error.message.starts_with("the guest's ports"), "{error}");
        let reply = sort_line(&line(&FromGuest::Reply {
            id: 3,
            body: Reply::Ports(bad),
        }))
        .unwrap_err();
        assert_eq!(reply.id, Some(3));
    }
    let exposed = Exposed {
        failed: vec![vmkeep_protocol::RelayFailure {
            port: 1,
            error: "x".repeat(MAX_RELAY_ERROR_BYTES + 1),
        }],
    };
    assert!(check_exposed(&exposed).is_err());
}

#[test]
fn malformed_replies_name_their_request_when_possible() {
    let bad = sort_line(br#"{"reply": {"id": 9, "body": "no-such-reply"}}"#).unwrap_err();
    assert_eq!(bad.id, Some(9));
    let worse = sort_line(b"garbage").unwrap_err();
    assert_eq!(worse.id, None);
}

#[test]
fn what_the_guest_says_about_itself_is_checked() {
    assert_eq!(check_guest_info(&info()), Ok(()));
    let real = GuestInfo {
        kernel: "6.1.0-31-cloud-amd64".into(),
        boot_id: "0f5e7b1c-2b1e-4d4a-9a57-3a3c1d9f2e10".into(),
        uptime_secs: 0.0,
        agent_version: "0.1.0".into(),
        data_mount: Some("/data".into()),
        data_disk: Some(vmkeep_protocol::DataDisk::Mounted {
            mount: "/data".into(),
            formatted: false,
            repaired: None,
            grown: None,
        }),
    };
    assert_eq!(check_guest_info(&real), Ok(()));
    let mut hostile = real.clone();
    hostile.data_disk = Some(vmkeep_protocol::DataDisk::MountFailed {
        device: "/dev/vda".into(),
        error: "\x1b[2Jcleared".into(),
    });
    assert!(
        check_guest_info(&hostile).is_err(),
        "an escape in a disk error"
    );
    hostile.data_disk = Some(vmkeep_protocol::DataDisk::NoFileSystem {
        device: "d".repeat(MAX_MOUNT_BYTES + 1),
    });
    assert!(
        check_guest_info(&hostile).is_err(),
        "an oversized device name"
    );
    let bad = |change: fn(&mut GuestInfo)| {
        let mut info = real.clone();
        change(&mut info);
        check_guest_info(&info).unwrap_err()
    };
    assert_eq!(
        bad(|i| i.kernel = "\x1b]0;owned\x07".into()),
        "kernel \\u{1b}]0;owned\\u{7} contains control characters"
    );
    assert_eq!(
        bad(|i| i.boot_id = "b".repeat(1 << 20)),
        "boot_id is 1048576 bytes long; at most 64 are accepted"
    );
    assert!(bad(|i| i.boot_id = "a b".into()).contains("not letters, digits and '-'"));
    assert!(bad(|i| i.boot_id = String::new()).contains("not letters"));
    assert!(bad(|i| i.agent_version = "v\n".into()).contains("agent_version"));
    assert!(bad(|i| i.data_mount = Some("/d\u{9b}".into())).contains("data_mount"));
    assert!(bad(|i| i.uptime_secs = -1.0).contains("uptime_secs"));
}

#[test]
fn a_hostile_info_fails_its_request_and_a_hostile_ready_is_skipped() {
    let hostile = GuestInfo {
        kernel: "\x1b[2J".into(),
        ..info()
    };
    let line = |message: &FromGuest| {
        let mut line = encode_line(message);
        line.pop();
        line
    };
    let reply = sort_line(&line(&FromGuest::Reply {
        id: 4,
        body: Reply::Info(hostile.clone()),
    }))
    .unwrap_err();
    assert_eq!(reply.id, Some(4));
    assert!(
        reply.message.contains("the guest's info: kernel"),
        "{}",
        reply.message
    );
    let ready = sort_line(&line(&FromGuest::Ready(hostile))).unwrap_err();
    assert_eq!(ready.id, None);
}

#[tokio::test]
async fn a_port_report_sent_before_a_watchs_answer_never_wins_over_it() {
    use vmkeep_protocol::{ListenSocket, Proto};
    let listening = |ports: &[u16]| Listening {
        sockets: ports
            .iter()
            .map(|&port| ListenSocket {
                proto: Proto::Tcp,
                ip: "0.0.0.0".into(),
                port,
            })
            .collect(),
        truncated: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let listener = UnixListener::bind(&path).unwrap();
    let (newer_tx, newer_rx) = tokio::sync::oneshot::channel::<()>();
    let guest = tokio::spawn(async move {
        let mut guest = FakeGuest::new(listener.accept().await.unwrap().0);
        let hello = guest.recv().await.unwrap();
        guest
            .answer(
                &hello,
                Reply::Hello {
                    ready: true,
                    info: info(),
                },
            )
            .await;
        let watch = guest.recv().await.unwrap();
        assert_eq!(watch.op, Op::WatchPorts);
        // Queued before the watch was read (as across a resume): older.
        guest.send(&FromGuest::Ports(listening(&[]))).await;
        guest.answer(&watch, Reply::Ports(listening(&[8080]))).await;
        newer_rx.await.unwrap();
        guest
            .send(&FromGuest::Ports(listening(&[8080, 9090])))
            .await;
        assert!(guest.recv().await.is_none());
    });

    let (link, _, _events) = GuestLink::connect(&path, T).await.unwrap();
    let mut reports = link.port_reports();
    assert_eq!(link.watch_ports(T).await.unwrap(), listening(&[8080]));
    assert_eq!(
        reports.borrow_and_update().clone(),
        Some(listening(&[8080])),
        "the newest the host knows is the watch's answer, not the report before it"
    );
    newer_tx.send(()).unwrap();
    reports.changed().await.unwrap();
    assert_eq!(
        reports.borrow_and_update().clone(),
        Some(listening(&[8080, 9090])),
        "a report after the answer is newer"
    );
    drop(link);
    guest.await.unwrap();
}
