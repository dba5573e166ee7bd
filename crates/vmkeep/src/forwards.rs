//! Port forwarding as Lima does it, made with QEMU's user network: which of
//! the guest's listening sockets become which host ports (Lima's rules,
//! checked in order, the first match deciding), and what to change in QEMU
//! to get there. Pure; the host agent acts (`hostagent::forwards`), QEMU's
//! side is `driver::qemu::usernet`.
//!
//! QEMU's forwards reach the guest at its user-network address
//! ([`GUEST_ADDRESS`]). A listener on a wildcard address (or on that
//! address) is reached directly; one on the guest's loopback only (Lima's
//! usual case: a dev server on 127.0.0.1) is reached through a relay the
//! guest agent runs ([`Plan::relays`]).
//!
//! Automatic forwards never take a privileged host port (below
//! [`FIRST_UNPRIVILEGED_PORT`]): a guest must not get the host's
//! `127.0.0.1:81` before the host's own service binds it (a vmkeep run as
//! root could bind it). Only a `portForwards` rule that names its ports
//! forwards to one ([`Plan::privileged`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vmkeep_protocol::{GUEST_ADDRESS, ListenSocket, Listening, Proto};

use crate::instance::lima::{PortForward, PortRule, RuleProto};

/// Most forwards made at once; beyond, listeners are left unforwarded.
pub const MAX_FORWARDS: usize = 512;

/// The lowest host port an automatic forward may take: below it, a port
/// needs a `portForwards` rule naming it.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// The guest port sshd listens on in cloud images.
pub const SSH_GUEST_PORT: u16 = 22;

/// One forward of QEMU's user network: `host_ip:host_port` on the host to
/// the guest's `GUEST_ADDRESS:guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    pub proto: Transport,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

/// The transports QEMU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    fn of(proto: Proto) -> Option<Transport> {
        match proto {
            Proto::Tcp => Some(Transport::Tcp),
            Proto::Udp => Some(Transport::Udp),
            Proto::Unknown => None,
        }
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:{} -> guest port {}",
            self.proto.as_str(),
            self.host_ip,
            self.host_port,
            self.guest_port
        )
    }
}

impl Forward {
    /// The host endpoint, which identifies a forward in QEMU.
    pub fn host_key(&self) -> (Transport, Ipv4Addr, u16) {
        (self.proto, self.host_ip, self.host_port)
    }
}

/// The rules an instance forwards by, in Lima's order: the guest's ssh port
/// and the host's ssh port number are never forwarded, then the config's
/// rules, then Lima's fallback (TCP from the guest's 127.0.0.1, which also
/// matches wildcard and `::1` listeners, to the host's 127.0.0.1, same port).
pub fn default_rules(config: &[PortForward], ssh_local_port: Option<u16>) -> Vec<PortRule> {
    let blocked = |port: u16| PortRule {
        proto: RuleProto::Any,
        guest_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        guest_ip_must_be_zero: false,
        guest_ports: (port, port),
        host_ip: Ipv4Addr::LOCALHOST,
        host_port_start: port,
        ignore: true,
        names_ports: true,
        static_forward: false,
    };
    let mut rules = vec![blocked(SSH_GUEST_PORT)];
    rules.extend(ssh_local_port.map(blocked));
    rules.extend(config.iter().filter_map(|f| match f {
        PortForward::Ports(rule) => Some(rule.clone()),
        PortForward::Socket { .. } => None,
    }));
    rules.push(PortRule {
        proto: RuleProto::Tcp,
        guest_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        guest_ip_must_be_zero: false,
        guest_ports: (1, 65535),
        host_ip: Ipv4Addr::LOCALHOST,
        host_port_start: 1,
        ignore: false,
        names_ports: false,
        static_forward: false,
    });
    rules
}

fn proto_matches(rule: RuleProto, transport: Transport) -> bool {
    matches!(
        (rule, transport),
        (RuleProto::Any, _) | (RuleProto::Tcp, Transport::Tcp) | (RuleProto::Udp, Transport::Udp)
    )
}

/// Where one listener is forwarded to, by the first rule that matches it
/// (Lima's `forwardingAddresses`): `None` when ignored or unmatched.
pub fn forward_for(
    rules: &[PortRule],
    transport: Transport,
    ip: IpAddr,
    port: u16,
) -> Option<Forward> {
    matching(rules, transport, ip, port).map(|(forward, _)| forward)
}

/// The forward of one listener and the rule that made it.
fn matching(
    rules: &[PortRule],
    transport: Transport,
    ip: IpAddr,
    port: u16,
) -> Option<(Forward, &PortRule)> {
    for rule in rules {
        if !proto_matches(rule.proto, transport)
            || port < rule.guest_ports.0
            || port > rule.guest_ports.1
        {
            continue;
        }
        let matches = ip.is_unspecified()
            || ip == rule.guest_ip
            || (ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
                && rule.guest_ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
            || (rule.guest_ip.is_unspecified() && !rule.guest_ip_must_be_zero);
        if !matches {
            continue;
        }
        if rule.ignore {
            // An ignore rule for a specific address leaves wildcard
            // listeners to the rules after it.
            if ip.is_unspecified() && !rule.guest_ip.is_unspecified() {
                continue;
            }
            return None;
        }
        let host_port =
            u32::from(port) - u32::from(rule.guest_ports.0) + u32::from(rule.host_port_start);
        let forward = Forward {
            proto: transport,
            host_ip: rule.host_ip,
            host_port: u16::try_from(host_port).ok()?,
            guest_port: port,
        };
        return Some((forward, rule));
    }
    None
}

/// What the guest's listeners call for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub forwards: BTreeSet<Forward>,
    /// Guest TCP ports listened on only on a loopback address: the guest
    /// agent relays `GUEST_ADDRESS:port` to that address.
    pub relays: BTreeMap<u16, IpAddr>,
    /// Listeners a forward was wanted for but that QEMU cannot reach (UDP on
    /// a loopback address), or beyond [`MAX_FORWARDS`].
    pub unreachable: Vec<ListenSocket>,
    /// Listeners left unforwarded because their host port would be
    /// privileged (below [`FIRST_UNPRIVILEGED_PORT`]) and no rule names it.
    pub privileged: Vec<ListenSocket>,
}

/// Whether a listener on `ip` is reached by QEMU's forwards directly.
fn reached_directly(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.to_string() == GUEST_ADDRESS
}

/// The plan for the listeners the guest reported, by `rules`.
pub fn plan(rules: &[PortRule], listening: &Listening) -> Plan {
    // Per (transport, guest port): the addresses listened on.
    let mut by_port: BTreeMap<(Transport, u16), Vec<IpAddr>> = BTreeMap::new();
    for socket in &listening.sockets {
        let (Some(transport), Ok(ip)) = (Transport::of(socket.proto), socket.ip.parse()) else {
            continue;
        };
        by_port
            .entry((transport, socket.port))
            .or_default()
            .push(ip);
    }
    let mut plan = Plan::default();
    let mut taken = BTreeSet::new();
    for ((transport, port), ips) in &by_port {
        // The first matching listener of the port decides its forward.
        let Some((forward, rule)) = ips
            .iter()
            .find_map(|ip| matching(rules, *transport, *ip, *port))
        else {
            continue;
        };
        let direct = ips.iter().any(|ip| reached_directly(*ip));
        let loopback = ips
            .iter()
            .copied()
            .filter(IpAddr::is_loopback)
            .min_by_key(|ip| ip.is_ipv6());
        let socket = || ListenSocket {
            proto: match transport {
                Transport::Tcp => Proto::Tcp,
                Transport::Udp => Proto::Udp,
            },
            ip: ips[0].to_string(),
            port: *port,
        };
        if forward.host_port < FIRST_UNPRIVILEGED_PORT && !rule.names_ports {
            plan.privileged.push(socket());
            continue;
        }
        let relay = match (direct, loopback, transport) {
            (true, _, _) => None,
            (false, Some(ip), Transport::Tcp) => Some(ip),
            // UDP cannot be relayed; a listener on another specific address
            // is forwarded as Lima does, and reached only if it also takes
            // the guest address.
            (false, Some(_), Transport::Udp) => {
                plan.unreachable.push(socket());
                continue;
            }
            (false, None, _) => None,
        };
        if plan.forwards.len() >= MAX_FORWARDS {
            plan.unreachable.push(socket());
            continue;
        }
        // One forward per host endpoint: the first listener wins it.
        if !taken.insert(forward.host_key()) {
            continue;
        }
        if let Some(ip) = relay {
            plan.relays.insert(*port, ip);
        }
        plan.forwards.insert(forward);
    }
    plan
}

/// The forwards the guest's listeners call for (see [`plan`]).
pub fn wanted(rules: &[PortRule], listening: &Listening) -> BTreeSet<Forward> {
    plan(rules, listening).forwards
}

/// What to change in QEMU to go from `present` to `wanted`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Present and no longer wanted (or wanted to another guest port).
    pub remove: Vec<Forward>,
    /// Wanted and not present.
    pub add: Vec<Forward>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// The changes, removals first (a host port may move to another guest
/// port). Forwards on `reserved` host ports (ssh's) are never touched.
pub fn reconcile(
    wanted: &BTreeSet<Forward>,
    present: &BTreeSet<Forward>,
    reserved: &[u16],
) -> Changes {
    let keep = |f: &&Forward| !reserved.contains(&f.host_port);
    Changes {
        remove: present
            .iter()
            .filter(keep)
            .filter(|f| !wanted.contains(f))
            .copied()
            .collect(),
        add: wanted
            .iter()
            .filter(keep)
            .filter(|f| !present.contains(f))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::config::Config;

    fn rules(yaml: &str) -> Vec<PortRule> {
        let config = Config::parse(yaml).unwrap();
        default_rules(&config.raw.port_forwards.unwrap_or_default(), Some(40022))
    }

    fn tcp(ip: &str, port: u16) -> ListenSocket {
        ListenSocket {
            proto: Proto::Tcp,
            ip: ip.into(),
            port,
        }
    }

    fn udp(ip: &str, port: u16) -> ListenSocket {
        ListenSocket {
            proto: Proto::Udp,
            ip: ip.into(),
            port,
        }
    }

    fn listening(sockets: Vec<ListenSocket>) -> Listening {
        Listening {
            sockets,
            truncated: false,
        }
    }

    fn fwd(proto: Transport, host: [u8; 4], host_port: u16, guest_port: u16) -> Forward {
        Forward {
            proto,
            host_ip: Ipv4Addr::from(host),
            host_port,
            guest_port,
        }
    }

    const LO: [u8; 4] = [127, 0, 0, 1];

    #[test]
    fn limas_fallback_forwards_loopback_and_wildcard_tcp_to_the_hosts_loopback() {
        let plan = plan(
            &rules(""),
            &listening(vec![
                tcp("127.0.0.1", 8080),
                tcp("0.0.0.0", 3000),
                tcp("::", 3001),
                tcp("::1", 5000),
                tcp("10.0.2.15", 7000),
                tcp("172.17.0.1", 7001),
                udp("0.0.0.0", 5353),
            ]),
        );
        assert_eq!(
            plan.forwards.into_iter().collect::<Vec<_>>(),
            [
                fwd(Transport::Tcp, LO, 3000, 3000),
                fwd(Transport::Tcp, LO, 3001, 3001),
                fwd(Transport::Tcp, LO, 5000, 5000),
                fwd(Transport::Tcp, LO, 8080, 8080),
            ],
            "specific non-loopback addresses and UDP are not matched by the fallback"
        );
        assert_eq!(
            plan.relays.into_iter().collect::<Vec<_>>(),
            [
                (5000, "::1".parse().unwrap()),
                (8080, "127.0.0.1".parse().unwrap())
            ],
            "loopback-only listeners need the guest's relay"
        );
    }

    #[test]
    fn ssh_ports_are_never_forwarded() {
        let found = wanted(
            &rules("portForwards:\n- guestPort: 22\n  hostPort: 2222\n"),
            &listening(vec![
                tcp("0.0.0.0", 22),
                tcp("127.0.0.1", 40022),
                tcp("::", 40022),
            ]),
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn config_rules_come_first_and_the_first_match_decides() {
        let rules = rules(
            "portForwards:\n- guestPort: 80\n  hostPort: 8080\n- guestPortRange: [4000, 4009]\n  hostPortRange: [14000, 14009]\n  hostIP: 0.0.0.0\n\
             - guestPort: 8888\n  ignore: true\n- guestPort: 53\n  proto: udp\n  hostPort: 10053\n  guestIP: 0.0.0.0\n",
        );
        let found = wanted(
            &rules,
            &listening(vec![
                tcp("0.0.0.0", 80),
                tcp("127.0.0.1", 4005),
                tcp("0.0.0.0", 8888),
                tcp("127.0.0.1", 8888),
                udp("0.0.0.0", 53),
            ]),
        );
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                fwd(Transport::Tcp, [0, 0, 0, 0], 14005, 4005),
                fwd(Transport::Tcp, LO, 8080, 80),
                // Lima: an ignore rule for (the default) 127.0.0.1 leaves a
                // listener on 0.0.0.0 to the rules after it.
                fwd(Transport::Tcp, LO, 8888, 8888),
                fwd(Transport::Udp, LO, 10053, 53),
            ]
        );
        assert!(
            wanted(&rules, &listening(vec![tcp("127.0.0.1", 8888)])).is_empty(),
            "on 127.0.0.1 it is ignored"
        );
    }

    #[test]
    fn an_ignore_rule_for_one_address_leaves_wildcard_listeners_to_later_rules() {
        let rules =
            rules("portForwards:\n- guestIP: 127.0.0.1\n  guestPort: 9000\n  ignore: true\n");
        assert!(wanted(&rules, &listening(vec![tcp("127.0.0.1", 9000)])).is_empty());
        assert_eq!(
            wanted(&rules, &listening(vec![tcp("0.0.0.0", 9000)])).len(),
            1,
            "Lima: an ignore for 127.0.0.1 does not cover 0.0.0.0"
        );
    }

    #[test]
    fn guest_ip_must_be_zero_matches_wildcard_binds_only() {
        let rules = rules(
            "portForwards:\n- guestIP: 0.0.0.0\n  guestIPMustBeZero: true\n  guestPort: 7443\n  hostIP: 0.0.0.0\n",
        );
        let zero = wanted(&rules, &listening(vec![tcp("0.0.0.0", 7443)]));
        assert_eq!(zero.first().unwrap().host_ip, Ipv4Addr::UNSPECIFIED);
        let local = wanted(&rules, &listening(vec![tcp("127.0.0.1", 7443)]));
        assert_eq!(
            local.first().unwrap().host_ip,
            Ipv4Addr::LOCALHOST,
            "falls through to the default rule"
        );
        let specific = rules_without_fallback(&rules);
        assert!(wanted(&specific, &listening(vec![tcp("10.0.2.15", 7443)])).is_empty());
    }

    fn rules_without_fallback(rules: &[PortRule]) -> Vec<PortRule> {
        rules[..rules.len() - 1].to_vec()
    }

    #[test]
    fn a_port_listened_on_both_loopback_and_wildcard_needs_no_relay() {
        let plan = plan(
            &rules(""),
            &listening(vec![tcp("127.0.0.1", 8000), tcp("::", 8000)]),
        );
        assert_eq!(plan.forwards.len(), 1);
        assert!(plan.relays.is_empty());
    }

    #[test]
    fn udp_on_loopback_is_unreachable_and_said_so() {
        let plan = plan(
            &rules("portForwards:\n- guestPort: 9999\n  proto: udp\n"),
            &listening(vec![udp("127.0.0.1", 9999)]),
        );
        assert!(plan.forwards.is_empty());
        assert_eq!(plan.unreachable, [udp("127.0.0.1", 9999)]);
    }

    #[test]
    fn one_forward_per_host_port_and_at_most_the_bound() {
        let rules = rules(
            "portForwards:\n- guestPortRange: [1000, 1001]\n  hostPort: 5000\n  hostPortRange: [5000, 5001]\n- guestPort: 2000\n  hostPort: 5000\n",
        );
        let found = wanted(
            &rules,
            &listening(vec![tcp("0.0.0.0", 1000), tcp("0.0.0.0", 2000)]),
        );
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [fwd(Transport::Tcp, LO, 5000, 1000)]
        );
        let many: Vec<ListenSocket> = (1..=vmkeep_protocol::MAX_LISTENING as u16)
            .map(|p| tcp("0.0.0.0", 20000 + p))
            .collect();
        let plan = plan(&self::rules(""), &listening(many));
        assert_eq!(plan.forwards.len(), MAX_FORWARDS);
        assert_eq!(
            plan.unreachable.len(),
            vmkeep_protocol::MAX_LISTENING - MAX_FORWARDS
        );
    }

    #[test]
    fn a_privileged_host_port_needs_a_rule_naming_it() {
        let found = plan(
            &rules(""),
            &listening(vec![
                tcp("0.0.0.0", 81),
                tcp("127.0.0.1", 443),
                tcp("0.0.0.0", 1024),
            ]),
        );
        assert_eq!(
            found.forwards.into_iter().collect::<Vec<_>>(),
            [fwd(Transport::Tcp, LO, 1024, 1024)],
            "automatic forwards stay above 1023"
        );
        assert_eq!(
            found.privileged,
            [tcp("0.0.0.0", 81), tcp("127.0.0.1", 443)]
        );
        assert!(found.relays.is_empty(), "nothing relayed for them either");
        // A rule naming the port (guest or host side, or a range) forwards it;
        // one of Lima's address-only rules does not name ports.
        let named = plan(
            &rules(
                "portForwards:\n- guestPort: 81\n- guestPortRange: [440, 450]\n- guestPort: 8080\n  hostPort: 80\n\
                 - guestIP: 0.0.0.0\n  hostIP: 0.0.0.0\n",
            ),
            &listening(vec![
                tcp("0.0.0.0", 81),
                tcp("0.0.0.0", 443),
                tcp("0.0.0.0", 8080),
                tcp("0.0.0.0", 82),
            ]),
        );
        assert_eq!(
            named.forwards.into_iter().collect::<Vec<_>>(),
            [
                fwd(Transport::Tcp, LO, 80, 8080),
                fwd(Transport::Tcp, LO, 81, 81),
                fwd(Transport::Tcp, LO, 443, 443),
            ]
        );
        assert_eq!(named.privileged, [tcp("0.0.0.0", 82)]);
    }

    #[test]
    fn reconciling_removes_what_went_and_adds_what_came_never_ssh() {
        let ssh = fwd(Transport::Tcp, LO, 40022, 22);
        let a = fwd(Transport::Tcp, LO, 8080, 8080);
        let b = fwd(Transport::Tcp, LO, 3000, 3000);
        let moved = fwd(Transport::Tcp, LO, 3000, 3001);
        let present = BTreeSet::from([ssh, a, b]);
        let wanted = BTreeSet::from([a, moved]);
        let changes = reconcile(&wanted, &present, &[40022]);
        assert_eq!(changes.remove, [b]);
        assert_eq!(changes.add, [moved]);
        assert!(reconcile(&present, &present, &[40022]).is_empty());
        let nothing = reconcile(&BTreeSet::new(), &present, &[40022]);
        assert_eq!(nothing.remove.len(), 2, "ssh stays");
    }
}
