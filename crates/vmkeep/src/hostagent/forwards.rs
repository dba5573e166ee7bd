//! The host agent's port forwards: while the VM runs, the guest agent
//! reports its listening sockets (polled every 200 ms in the guest, sent
//! when they change); the agent turns them into forwards by Lima's rules
//! (`crate::forwards`), asks the guest to relay loopback-only listeners, and
//! adds and removes QEMU's forwards to match (`driver::qemu::usernet`).
//!
//! What QEMU has is read back from QEMU (`info usernet`) before each change,
//! so a host agent that adopted a running QEMU carries on from the forwards
//! its predecessor made, and nothing is kept in a file.
//!
//! The guest is untrusted: a report holds at most `MAX_LISTENING` sockets,
//! only the newest report is kept however fast the guest sends, changes are
//! made at most every [`MIN_INTERVAL`], at most `MAX_FORWARDS` forwards
//! exist, and problems are logged once per host port (`ha.log`), not
//! journaled; a port the guest opens and closes again and again is logged
//! a few times a window (`link::repeats`, one key per forward for its
//! adding and its removal).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use vmkeep_protocol::{Exposure, Listening, Relay};

use crate::driver::qemu::qmp::Qmp;
use crate::driver::qemu::usernet;
use crate::forwards::{self, Transport};
use crate::instance::Config;
use crate::instance::lima::PortRule;
use crate::link::guest_link::{GuestLink, GuestLinkError};
use crate::link::repeats;

/// The shortest time between two rounds of changes.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often forwards QEMU refused (a host port taken) are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How long one guest request may take.
const GUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the forwards of one VM follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub rules: Vec<PortRule>,
    /// Host ports never touched (the ssh forward on QEMU's command line).
    pub reserved: Vec<u16>,
}

impl Setup {
    /// Lima's rules for `config`, with the ssh port of a cloud image.
    pub fn of(config: &Config, ssh_port: Option<u16>) -> Setup {
        Setup {
            rules: forwards::default_rules(
                &config.raw.port_forwards.clone().unwrap_or_default(),
                ssh_port,
            ),
            reserved: ssh_port.into_iter().collect(),
        }
    }
}

/// What one round left to remember.
#[derive(Debug, Default)]
struct State {
    relays_sent: Option<Exposure>,
    /// Host endpoints QEMU refused, already logged.
    refused: BTreeSet<(Transport, std::net::Ipv4Addr, u16)>,
    /// Listeners said to be unreachable, already logged.
    unreachable_logged: BTreeSet<(u16, String)>,
    /// Privileged ports said to be left unforwarded, already logged.
    privileged_logged: BTreeSet<(vmkeep_protocol::Proto, u16)>,
}

/// Keep QEMU's forwards on what the guest listens on, for as long as the
/// agent runs (a new guest-agent connection, after a guest reboot or a
/// reconnect, starts a new report).
pub async fn keep(mut guest: watch::Receiver<Option<GuestLink>>, qmp: Qmp, setup: Setup) {
    let mut state = State::default();
    loop {
        let Some(link) = super::open_link(&mut guest).await else {
            return;
        };
        let mut listening = match link.watch_ports(GUEST_TIMEOUT).await {
            Ok(listening) => listening,
            Err(GuestLinkError::Refused { message, .. }) => {
                tracing::info!(
                    "the guest agent does not report its ports ({message}); no automatic port forwards until it reconnects"
                );
                super::link_gone(&mut guest).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("port watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Relays are the guest agent's; a new connection may be a new boot.
        state.relays_sent = None;
        let mut reports = link.port_reports();
        loop {
            let failed = round(&link, &qmp, &setup, &listening, &mut state).await;
            tokio::select! {
                changed = reports.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(newest) = reports.borrow_and_update().clone() {
                        listening = newest;
                    }
                }
                () = link.closed() => break,
                () = tokio::time::sleep(RETRY_EVERY), if failed => {}
            }
            tokio::time::sleep(MIN_INTERVAL).await;
            if let Some(newest) = reports.borrow_and_update().clone() {
                listening = newest;
            }
        }
    }
}

/// One round: relays, then QEMU's forwards. Returns whether something
/// failed that is worth trying again.
async fn round(
    link: &GuestLink,
    qmp: &Qmp,
    setup: &Setup,
    listening: &Listening,
    state: &mut State,
) -> bool {
    let plan = forwards::plan(&setup.rules, listening);
    for socket in &plan.unreachable {
        if state
            .unreachable_logged
            .insert((socket.port, socket.ip.clone()))
        {
            tracing::warn!(
                "guest port {} ({:?} on {}) is not forwarded: QEMU's user network reaches only the guest's own address, and a UDP listener on a loopback address cannot be relayed (or more than {} forwards are wanted)",
                socket.port,
                socket.proto,
                socket.ip,
                forwards::MAX_FORWARDS
            );
        }
    }
    for socket in &plan.privileged {
        if state.privileged_logged.insert((socket.proto, socket.port)) {
            tracing::warn!(
                "guest port {} ({:?} on {}) is not forwarded: a host port below {} is forwarded only by a portForwards rule that names it (guestPort: {})",
                socket.port,
                socket.proto,
                socket.ip,
                forwards::FIRST_UNPRIVILEGED_PORT,
                socket.port
            );
        }
    }
    let relays = Exposure {
        tcp: plan
            .relays
            .iter()
            .map(|(port, to): (&u16, &IpAddr)| Relay {
                port: *port,
                to: to.to_string(),
            })
            .collect(),
    };
    if state.relays_sent.as_ref() != Some(&relays) {
        match link.expose(relays.clone(), GUEST_TIMEOUT).await {
            Ok(exposed) => {
                for failure in exposed.failed {
                    if let Some(repeated) = repeats::allow(&format!("relay {}", failure.port)) {
                        tracing::warn!(
                            "the guest cannot relay its loopback port {}: {}{repeated}",
                            failure.port,
                            failure.error
                        );
                    }
                }
                state.relays_sent = Some(relays);
            }
            Err(e) => {
                if let Some(repeated) = repeats::allow("relay request") {
                    tracing::info!(
                        "cannot ask the guest to relay its loopback ports: {e}{repeated}"
                    );
                }
            }
        }
    }
    let present = match usernet::present(qmp).await {
        Ok(present) => present,
        Err(e) => {
            if let Some(repeated) = repeats::allow("usernet") {
                tracing::info!("cannot read QEMU's forwards: {e}{repeated}");
            }
            return true;
        }
    };
    let changes = forwards::reconcile(&plan.forwards, &present, &setup.reserved);
    for forward in &changes.remove {
        let result = usernet::remove(qmp, forward).await;
        if let Some(repeated) = repeats::allow(&format!("forward {forward}")) {
            match result {
                Ok(()) => tracing::info!("stopped forwarding {forward}{repeated}"),
                Err(e) => tracing::warn!("cannot stop forwarding {forward}: {e}{repeated}"),
            }
        }
    }
    let mut failed = false;
    for forward in &changes.add {
        match usernet::add(qmp, forward).await {
            Ok(()) => {
                state.refused.remove(&forward.host_key());
                if let Some(repeated) = repeats::allow(&format!("forward {forward}")) {
                    tracing::info!("forwarding {forward}{repeated}");
                }
            }
            Err(e) => {
                failed = true;
                if state.refused.insert(forward.host_key())
                    && let Some(repeated) = repeats::allow(&format!("forward {forward}"))
                {
                    tracing::warn!(
                        "not forwarding {forward}: {e} (the host port is probably taken, or privileged); trying again every {}s{repeated}",
                        RETRY_EVERY.as_secs()
                    );
                }
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwards::{self, Forward};
    use vmkeep_protocol::{ListenSocket, Proto};

    fn tcp(ip: &str, port: u16) -> ListenSocket {
        ListenSocket {
            proto: Proto::Tcp,
            ip: ip.into(),
            port,
        }
    }

    #[test]
    fn the_setup_reserves_the_ssh_port_and_keeps_the_configs_rules_first() {
        let config =
            Config::parse("portForwards:\n- guestPort: 8080\n  hostPort: 18080\n").unwrap();
        let setup = Setup::of(&config, Some(40022));
        assert_eq!(setup.reserved, [40022]);
        let listening = Listening {
            sockets: vec![
                tcp("0.0.0.0", 8080),
                tcp("127.0.0.1", 3000),
                tcp("0.0.0.0", 22),
                tcp("0.0.0.0", 40022),
            ],
            truncated: false,
        };
        let plan = forwards::plan(&setup.rules, &listening);
        let to = |host_port, guest_port| Forward {
            proto: forwards::Transport::Tcp,
            host_ip: std::net::Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        };
        let forwards: Vec<Forward> = plan.forwards.iter().copied().collect();
        assert!(forwards.contains(&to(18080, 8080)), "{forwards:?}");
        assert!(forwards.contains(&to(3000, 3000)), "{forwards:?}");
        assert!(
            !forwards
                .iter()
                .any(|f| f.guest_port == 22 || f.host_port == 40022),
            "ssh is never forwarded: {forwards:?}"
        );
        // The loopback-only listener is relayed by the guest agent.
        assert!(plan.relays.contains_key(&3000), "{:?}", plan.relays);
        // Without ssh (the tiny image) nothing is reserved.
        assert!(Setup::of(&config, None).reserved.is_empty());
    }
}
