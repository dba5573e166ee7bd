//! The API server: parses requests into typed commands for the agent's main
//! loop, answers queries from shared state, forwards `exec` to the guest.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::api::{
    self, AgentInfo, ApiErrorBody, ErrorCode, ExecRequest, Refusal, StopAccepted, StopRequest,
    SuspendCause, SuspendDone, SuspendFallback, SuspendRequest,
};
use super::session_api;
use crate::instance::pause::PauseReason;
use crate::instance::status::Phase;
use crate::link::guest_link::GuestLink;
use crate::text::chain::error_chain;

/// What the API asks the agent's main loop to do.
#[derive(Debug)]
pub enum Command {
    Stop {
        deadline: Duration,
        force: bool,
    },
    /// Let a paused guest run on; `answer` hears whether it was paused, or
    /// why it cannot go on yet.
    Continue {
        answer: oneshot::Sender<Result<api::Continued, Refusal>>,
    },
    /// Save the VM's state and end; the outcome goes to `answer` (a
    /// refusal is for the API's caller).
    Suspend {
        deadline: Duration,
        fallback: SuspendFallback,
        cause: SuspendCause,
        answer: oneshot::Sender<Result<SuspendDone, Refusal>>,
    },
    /// Move onto a new build in place (its binary checked already).
    Upgrade(super::upgrade::Asked),
}

/// The longest deadline a request may ask for (the CLI allows an hour).
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A request's `timeout_secs` (`default` when absent): a positive number of
/// seconds, at most [`MAX_DEADLINE`].
fn deadline_of(secs: Option<f64>, default: Duration) -> Result<Duration, String> {
    match secs {
        None => Ok(default),
        Some(secs) if secs > MAX_DEADLINE.as_secs_f64() => Err(format!(
            "timeout_secs {secs} is longer than the {} s a deadline may be",
            MAX_DEADLINE.as_secs()
        )),
        Some(secs) if secs > 0.0 => Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("timeout_secs {secs} is not a number of seconds a deadline can hold")
        }),
        Some(secs) => Err(format!("timeout_secs must be positive, got {secs}")),
    }
}

/// State the server reads and the agent writes.
pub struct Shared {
    pub info: Mutex<AgentInfo>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub guest: watch::Receiver<Option<GuestLink>>,
    /// Why QEMU paused the guest, while it is paused.
    pub pause: watch::Receiver<Option<PauseReason>>,
    pub default_stop_timeout: Duration,
}

/// Longest a single `exec` may run before the API gives up on it.
const EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long a command waits for the guest agent of a running instance to
/// come back (its guest is rebooting) before it is refused.
const GUEST_RETURN_WAIT: Duration = Duration::from_secs(120);

/// The guest agent's link for a command: at once when connected; while the
/// instance is Running but the guest is away (rebooting), once it is back.
async fn connected_guest(shared: &Shared) -> Option<GuestLink> {
    let usable = |link: &Option<GuestLink>| link.as_ref().is_some_and(|l| !l.is_closed());
    let mut guest = shared.guest.clone();
    let current = guest.borrow().clone();
    if usable(&current) {
        return current;
    }
    let running = shared
        .info
        .lock()
        .map(|info| info.phase == crate::instance::status::Phase::Running)
        .unwrap_or(false);
    if !running {
        return None;
    }
    let back = tokio::time::timeout(GUEST_RETURN_WAIT, guest.wait_for(usable)).await;
    match back {
        Ok(Ok(link)) => link.clone(),
        _ => None,
    }
}

/// How long a command in flight waits for a guest that QEMU paused meanwhile
/// before its caller hears why it does not finish.
pub(super) const PAUSED_EXEC_GRACE: Duration = Duration::from_secs(5);

/// Why a command cannot run now in a paused guest.
pub(super) fn paused_refusal(shared: &Shared, reason: &PauseReason) -> String {
    let name = shared
        .info
        .lock()
        .map(|info| info.name.clone())
        .unwrap_or_default();
    format!(
        "{name} is paused: {}; {}",
        reason.message(),
        reason.hint().replace("NAME", &name)
    )
}

/// Once the guest has been paused for `grace` without a break: why.
pub(super) async fn paused_for(
    pause: &mut watch::Receiver<Option<PauseReason>>,
    grace: Duration,
) -> PauseReason {
    loop {
        let reason = match pause.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        let Some(reason) = reason else {
            return std::future::pending().await;
        };
        let ran_again = tokio::time::timeout(grace, async {
            pause.wait_for(Option::is_none).await.is_ok()
        })
        .await;
        match ran_again {
            Err(_) => return reason,
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
        }
    }
}

/// How long, at the agent's exit, connections may take to finish what they
/// answer (the reply to the suspend that ends the agent, say).
pub const DRAIN: Duration = Duration::from_secs(1);

/// Serve until `shutdown` turns true, then stop accepting and give the open
/// connections up to [`DRAIN`] to finish.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let Some(route) = api::ROUTES.iter().find(|r| r.path == path) else {
        let known: Vec<_> = api::ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        return Ok(error(
            StatusCode::NOT_FOUND,
            ErrorCode::NoRoute,
            format!("no route {method} {path}; routes: {}", known.join(", ")),
        ));
    };
    if route.method != method {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::WrongMethod,
            format!("{path} takes {}", route.method),
        ));
    }
    if *route == api::SESSION {
        return Ok(open_session(&shared, request).await);
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("reading the request body: {e}"),
            ));
        }
    };
    Ok(match *route {
        api::INFO => {
            let info = shared
                .info
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json(StatusCode::OK, &info)
        }
        api::STOP => {
            let stop: StopRequest = match parse_or_default(&body) {
                Ok(stop) => stop,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e)),
            };
            let deadline = match deadline_of(stop.timeout_secs, shared.default_stop_timeout) {
                Ok(deadline) => deadline,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e)),
            };
            if shared
                .commands
                .send(Command::Stop {
                    deadline,
                    force: stop.force,
                })
                .is_err()
            {
                return Ok(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Exiting,
                    "the host agent is exiting".into(),
                ));
            }
            json(
                StatusCode::ACCEPTED,
                &StopAccepted {
                    deadline_secs: deadline.as_secs_f64(),
                },
            )
        }
        api::SUSPEND => {
            let suspend: SuspendRequest = match parse_or_default(&body) {
                Ok(suspend) => suspend,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e)),
            };
            let deadline = match deadline_of(suspend.timeout_secs, api::DEFAULT_SUSPEND_TIMEOUT) {
                Ok(deadline) => deadline,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e)),
            };
            let phase = shared
                .info
                .lock()
                .map(|info| info.phase)
                .unwrap_or(Phase::Stopping);
            if phase != Phase::Running {
                return Ok(error(
                    StatusCode::CONFLICT,
                    ErrorCode::WrongState,
                    format!(
                        "the instance is {}; only a running VM can be suspended",
                        match phase {
                            Phase::Starting => "starting",
                            Phase::Running => "running",
                            Phase::Paused => "paused by QEMU (`vmkeep start` lets it run on)",
                            Phase::Stopping => "stopping",
                        }
                    ),
                ));
            }
            ask_main_loop(&shared, |answer| Command::Suspend {
                deadline,
                fallback: suspend.fallback,
                cause: suspend.cause,
                answer,
            })
            .await
        }
        api::CONTINUE => ask_main_loop(&shared, |answer| Command::Continue { answer }).await,
        api::UPGRADE => {
            let asked: api::UpgradeRequest = match serde_json::from_slice(&body) {
                Ok(asked) => asked,
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        format!("invalid upgrade request: {e}"),
                    ));
                }
            };
            // Checked here, so that the main loop goes on meanwhile.
            match super::upgrade::check_binary(&asked.binary).await {
                Err(why) => error(StatusCode::CONFLICT, ErrorCode::Failed, why),
                Ok((to, checked)) => {
                    ask_main_loop(&shared, |answer| {
                        Command::Upgrade(super::upgrade::Asked {
                            binary: asked.binary.clone(),
                            to,
                            checked,
                            answer,
                        })
                    })
                    .await
                }
            }
        }
        api::EXEC => {
            let exec: ExecRequest = match serde_json::from_slice(&body) {
                Ok(exec) => exec,
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        format!("invalid exec request: {e}"),
                    ));
                }
            };
            if exec.argv.is_empty() {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "exec needs a command".into(),
                ));
            }
            if let Some(reason) = shared.pause.borrow().clone() {
                return Ok(error(
                    StatusCode::CONFLICT,
                    ErrorCode::WrongState,
                    paused_refusal(&shared, &reason),
                ));
            }
            match connected_guest(&shared).await {
                None => error(
                    StatusCode::CONFLICT,
                    ErrorCode::WrongState,
                    GUEST_AWAY.into(),
                ),
                Some(link) => {
                    let mut pause = shared.pause.clone();
                    tokio::select! {
                        result = link.exec(exec, EXEC_TIMEOUT) => match result {
                            Ok(result) => json(StatusCode::OK, &result),
                            Err(e) => error(StatusCode::BAD_GATEWAY, ErrorCode::GuestFailed, error_chain(&e)),
                        },
                        reason = paused_for(&mut pause, PAUSED_EXEC_GRACE) => error(
                            StatusCode::CONFLICT,
                            ErrorCode::WrongState,
                            format!(
                                "{}; the command may still finish in the guest once it runs again",
                                paused_refusal(&shared, &reason)
                            ),
                        ),
                    }
                }
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NoRoute,
            format!("no handler for {path}"),
        ),
    })
}

/// The largest body of a session's opening (its argv and environment).
const MAX_OPEN_BODY: usize = vmkeep_protocol::session::MAX_OPEN_LINE_BYTES;

/// `POST /v1/session`: open a session in the guest and, once the client's
/// connection is upgraded, relay it (`session_relay`).
async fn open_session(shared: &Shared, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_upgrade = request
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(session_api::UPGRADE_PROTOCOL));
    if !wants_upgrade {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "a session needs `Connection: upgrade` and `Upgrade: {}`",
                session_api::UPGRADE_PROTOCOL
            ),
        );
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let body = match http_body_util::Limited::new(request.body_mut(), MAX_OPEN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("reading the session request: {e}"),
            );
        }
    };
    let opening: api::SessionOpen = match serde_json::from_slice(&body) {
        Ok(opening) => opening,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("invalid session request: {e}"),
            );
        }
    };
    if let Some(reason) = shared.pause.borrow().clone() {
        return error(
            StatusCode::CONFLICT,
            ErrorCode::WrongState,
            paused_refusal(shared, &reason),
        );
    }
    let Some(link) = connected_guest(shared).await else {
        return error(
            StatusCode::CONFLICT,
            ErrorCode::WrongState,
            GUEST_AWAY.into(),
        );
    };
    let session = match link.open_session(opening.open) {
        Ok(session) => session,
        Err(e) => {
            return error(StatusCode::CONFLICT, ErrorCode::WrongState, e.to_string());
        }
    };
    let pause = shared.pause.clone();
    let name = shared
        .info
        .lock()
        .map(|info| info.name.clone())
        .unwrap_or_default();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                super::session_relay::relay(session, io, pause, name).await
            }
            Err(e) => tracing::warn!("a session's connection was not upgraded: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, session_api::UPGRADE_PROTOCOL)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Why a command cannot reach the guest agent now.
const GUEST_AWAY: &str = "the guest agent is not connected (the instance is starting, stopping or stopped, or its guest did not come back from a reboot)";

/// Hand the agent's main loop a command and answer with what it decides:
/// 200 with the outcome, 409 with its refusal.
async fn ask_main_loop<T: serde::Serialize>(
    shared: &Shared,
    command: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> Response<Full<Bytes>> {
    let (answer, answered) = oneshot::channel();
    if shared.commands.send(command(answer)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Exiting,
            "the host agent is exiting".into(),
        );
    }
    match answered.await {
        Ok(Ok(done)) => json(StatusCode::OK, &done),
        Ok(Err(refusal)) => error(StatusCode::CONFLICT, refusal.code, refusal.message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Exiting,
            "the host agent ended before it answered".into(),
        ),
    }
}

fn parse_or_default<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body =
        serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        &ApiErrorBody {
            error: message,
            code,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_deadline_is_positive_and_bounded() {
        let default = Duration::from_secs(30);
        assert_eq!(deadline_of(None, default), Ok(default));
        assert_eq!(
            deadline_of(Some(12.5), default),
            Ok(Duration::from_millis(12_500))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30, 86_401.0] {
            assert!(deadline_of(Some(bad), default).is_err(), "{bad}");
        }
    }
}
