//! The host agent's HTTP/JSON API on `ha.sock`: routes and message types,
//! defined once for the server and the client, and the client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use super::session_api::{SessionClient, SessionOpen};
pub use crate::instance::journal::{SuspendCause, SuspendFallback};
use crate::instance::status::Phase;
pub use vmkeep_protocol::{ExecRequest, ExecResult, GuestInfo};

/// One endpoint: method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

/// `GET` -> [`AgentInfo`].
pub const INFO: Route = Route {
    method: "GET",
    path: "/v1/info",
};
/// `POST` [`StopRequest`] -> [`StopAccepted`]; the agent exits when QEMU is gone.
pub const STOP: Route = Route {
    method: "POST",
    path: "/v1/stop",
};
/// `POST` [`ExecRequest`] -> [`ExecResult`]: run a command in the guest.
pub const EXEC: Route = Route {
    method: "POST",
    path: "/v1/exec",
};

/// `POST` [`SuspendRequest`] -> [`SuspendDone`] once the VM's state is saved
/// in the instance directory (QEMU is gone and the agent exits); an error
/// answer (409) when it was not saved, the VM then running on or being
/// stopped as the request's `fallback` says.
pub const SUSPEND: Route = Route {
    method: "POST",
    path: "/v1/suspend",
};

/// `POST` (no body) -> [`Continued`]: let a guest that QEMU paused run on;
/// an error answer (409) while the cause lasts (the host disk still full).
pub const CONTINUE: Route = Route {
    method: "POST",
    path: "/v1/continue",
};

/// `POST` [`SessionOpen`] with an HTTP/1.1 upgrade ->
/// `101 Switching Protocols`, then a streaming session in the guest over
/// the connection: see [`super::session_api`] for the frames.
pub const SESSION: Route = Route {
    method: "POST",
    path: "/v1/session",
};

/// `POST` [`UpgradeRequest`] -> [`UpgradeAccepted`]: the agent checked the
/// new binary and re-executes itself as it (same pid, QEMU untouched); the
/// journal's `upgraded` (or `upgrade-failed`) record by the agent's pid says
/// how it went. An error answer (409) when it will not move; it then runs
/// on as it was. Since API version 2 (`crate::formats::AGENT_API`).
pub const UPGRADE: Route = Route {
    method: "POST",
    path: "/v1/upgrade",
};

pub const ROUTES: [Route; 7] = [INFO, STOP, EXEC, SUSPEND, CONTINUE, SESSION, UPGRADE];

/// A build of vmkeep, as the API and the journal say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
}

impl BuildInfo {
    pub fn this_build() -> BuildInfo {
        BuildInfo {
            version: crate::formats::BUILD.version.into(),
            commit: crate::formats::BUILD.commit.into(),
        }
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.commit)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The `vmkeep-hostagent` binary to move onto (absolute).
    pub binary: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeAccepted {
    /// The build that runs now.
    pub from: BuildInfo,
    /// The build of the binary it moves onto (as its `--check-formats` said).
    pub to: BuildInfo,
    /// When it was accepted (RFC 3339, the journal's clock): the outcome is
    /// the first `upgraded` or `upgrade-failed` record of the agent's pid
    /// from then.
    pub accepted_at: String,
}

/// The answer to [`CONTINUE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continued {
    /// It was paused (false: it ran already).
    pub was_paused: bool,
}

/// What the agent knows about its instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub agent_pid: u32,
    pub phase: Phase,
    #[serde(default)]
    pub qemu_pid: Option<u32>,
    #[serde(default)]
    pub accel: Option<String>,
    pub foreground: bool,
    pub started_at: String,
    #[serde(default)]
    pub ready_at: Option<String>,
    #[serde(default)]
    pub guest: Option<GuestInfo>,
    /// The API version it speaks (`crate::formats::AGENT_API`; absent: 1).
    #[serde(default = "crate::formats::unversioned")]
    pub api_version: u32,
    /// The build it runs (absent from agents of API version 1).
    #[serde(default)]
    pub build: Option<BuildInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StopRequest {
    /// Graceful-stop deadline; the instance's `stopTimeout` when absent.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Skip to the hard stop.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopAccepted {
    pub deadline_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SuspendRequest {
    /// How long the save may take; [`DEFAULT_SUSPEND_TIMEOUT`] when absent.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// What a failed save does with the VM (default: it runs on).
    #[serde(default)]
    pub fallback: SuspendFallback,
    /// Why it is asked (journaled; default: a request).
    #[serde(default)]
    pub cause: SuspendCause,
}

/// How long a save may take unless the request says otherwise: far more
/// than a VM with its RAM in a file needs (milliseconds), little enough to
/// fall back to a stop in time at a host shutdown.
pub const DEFAULT_SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspendDone {
    /// Bytes of device state written.
    pub state_bytes: u64,
    /// Size of the RAM file kept with it.
    pub ram_bytes: u64,
    /// From the guest's pause to a durable state.
    pub secs: f64,
}

/// What kind of refusal an error answer is, for a machine to act on (the
/// message beside it is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No such route.
    NoRoute,
    /// The route takes another method.
    WrongMethod,
    /// The request is malformed: its body, or a deadline out of bounds.
    BadRequest,
    /// The VM's state does not allow it now (starting, stopping, paused, a
    /// guest agent away, a cause of a pause that lasts).
    WrongState,
    /// The agent tried and it failed (a save, QEMU refusing to go on).
    Failed,
    /// The guest agent did not carry the command out.
    GuestFailed,
    /// The agent is exiting.
    Exiting,
    /// A code this client does not know, or none (an older agent).
    #[default]
    #[serde(other)]
    Unknown,
}

/// A refusal: its code, and its message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
    #[serde(default)]
    pub code: ErrorCode,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the host agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the host agent did not answer {path} within {timeout:?}")]
    Timeout {
        path: &'static str,
        timeout: Duration,
    },
    #[error("HTTP error talking to the host agent: {0}")]
    Http(#[from] hyper::Error),
    #[error("the host agent refused {path}: {message}")]
    Refused {
        path: &'static str,
        code: ErrorCode,
        message: String,
    },
    #[error("unexpected answer from the host agent on {path}: {message}")]
    BadAnswer { path: &'static str, message: String },
}

/// A client for one instance's host agent.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: &Path) -> ApiClient {
        ApiClient {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn info(&self, timeout: Duration) -> Result<AgentInfo, ApiError> {
        self.call(INFO, None::<&()>, timeout).await
    }

    pub async fn stop(
        &self,
        request: &StopRequest,
        timeout: Duration,
    ) -> Result<StopAccepted, ApiError> {
        self.call(STOP, Some(request), timeout).await
    }

    /// Ask for a suspend and wait for its outcome (`timeout` must cover the
    /// save). A connection that ends without an answer after a successful
    /// save is possible (the agent exits at once): callers confirm with the
    /// instance directory (`driver::qemu::snapshot::exists`).
    pub async fn suspend(
        &self,
        request: &SuspendRequest,
        timeout: Duration,
    ) -> Result<SuspendDone, ApiError> {
        self.call(SUSPEND, Some(request), timeout).await
    }

    /// Let a paused guest run on.
    pub async fn continue_running(&self, timeout: Duration) -> Result<Continued, ApiError> {
        self.call(CONTINUE, None::<&()>, timeout).await
    }

    /// Ask the agent to move onto `request.binary` in place.
    pub async fn upgrade(
        &self,
        request: &UpgradeRequest,
        timeout: Duration,
    ) -> Result<UpgradeAccepted, ApiError> {
        self.call(UPGRADE, Some(request), timeout).await
    }

    pub async fn exec(
        &self,
        request: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecResult, ApiError> {
        self.call(EXEC, Some(request), timeout).await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        route: Route,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R, ApiError> {
        tokio::time::timeout(timeout, self.call_inner(route, body))
            .await
            .map_err(|_| ApiError::Timeout {
                path: route.path,
                timeout,
            })?
    }

    async fn call_inner<B: Serialize, R: DeserializeOwned>(
        &self,
        route: Route,
        body: Option<&B>,
    ) -> Result<R, ApiError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| ApiError::BadAnswer {
                path: route.path,
                message: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let request = hyper::Request::builder()
            .method(route.method)
            .uri(route.path)
            .header(hyper::header::HOST, "vmkeep-hostagent")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ApiError::BadAnswer {
                path: route.path,
                message: e.to_string(),
            })?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&body) {
                Ok(body) => (body.code, body.error),
                Err(_) => (ErrorCode::Unknown, format!("HTTP {status}")),
            };
            return Err(ApiError::Refused {
                path: route.path,
                code,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer {
            path: route.path,
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_carries_its_code_and_one_without_reads_as_unknown() {
        let body = ApiErrorBody {
            error: "the instance is stopping".into(),
            code: ErrorCode::WrongState,
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"error":"the instance is stopping","code":"wrong-state"}"#
        );
        assert_eq!(serde_json::from_str::<ApiErrorBody>(&text).unwrap(), body);
        let old: ApiErrorBody = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(old.code, ErrorCode::Unknown);
        let newer: ApiErrorBody =
            serde_json::from_str(r#"{"error":"no","code":"from-the-future"}"#).unwrap();
        assert_eq!(newer.code, ErrorCode::Unknown);
    }
}
