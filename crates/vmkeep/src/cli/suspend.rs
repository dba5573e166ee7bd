//! `vmkeep suspend NAME [--timeout D] [--or-stop]`
//!
//! MINIMAL, FOR THE SUSPEND TESTS (tests/suspend.rs): asks the host agent to
//! save the VM's state and waits for it to end. The lead's engine layer
//! replaces this with the real verb (statuses, daemon and autostart
//! integration); nothing else calls it.

use std::time::Duration;

use anyhow::bail;

use super::SuspendArgs;
use super::util;
use crate::driver::qemu::snapshot;
use crate::hostagent::api::{
    ApiClient, ApiError, DEFAULT_SUSPEND_TIMEOUT, SuspendFallback, SuspendRequest,
};
use crate::os::process;

/// Beyond the save's own deadline: the agent's answer and its exit.
const MARGIN: Duration = Duration::from_secs(10);

pub fn run(args: SuspendArgs) -> anyhow::Result<i32> {
    let dir = crate::engine::Home::from_env()?.existing(&args.name)?;
    let name = dir.name();
    let Some(agent) = process::open_lock_holder(&dir.agent_lock())? else {
        bail!("{name} is not running; only a running VM can be suspended");
    };
    let deadline = args.timeout.unwrap_or(DEFAULT_SUSPEND_TIMEOUT);
    let request = SuspendRequest {
        timeout_secs: Some(deadline.as_secs_f64()),
        fallback: if args.or_stop {
            SuspendFallback::Stop
        } else {
            SuspendFallback::KeepRunning
        },
    };
    let client = ApiClient::new(&dir.api_socket());
    let answer = util::runtime()?.block_on(client.suspend(&request, deadline + MARGIN));
    let done = match answer {
        Ok(done) => Some(done),
        Err(ApiError::Refused { message, .. }) => bail!("{name} was not suspended: {message}"),
        // The agent may end before its answer is out: the directory tells.
        Err(other) => {
            tracing::debug!("no answer to the suspend: {other}");
            None
        }
    };
    if !agent.wait_timeout(MARGIN) {
        bail!("the host agent of {name} did not exit after the suspend");
    }
    if !snapshot::exists(&dir) {
        bail!(
            "{name} was not suspended; see `vmkeep events {name}` and {}",
            dir.agent_log().display()
        );
    }
    match done {
        Some(done) => println!(
            "suspended {name}: {} KiB of device state in {:.0} ms; `vmkeep start {name}` resumes it",
            done.state_bytes / 1024,
            done.secs * 1000.0
        ),
        None => println!("suspended {name}; `vmkeep start {name}` resumes it"),
    }
    Ok(0)
}
