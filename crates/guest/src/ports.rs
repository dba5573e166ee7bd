//! The guest's listening sockets, for the host's port forwards: read from
//! `/proc/net/{tcp,tcp6,udp,udp6}` (the tiny guest has no ss or netstat)
//! every [`POLL`], reported to the host when they change; and relays that
//! make a loopback-only TCP listener reachable on the guest's user-network
//! address, where QEMU's forwards arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmkeep_protocol::{
    Exposed, Exposure, GUEST_ADDRESS, ListenSocket, Listening, MAX_LISTENING, Proto, Relay,
    RelayFailure,
};

use crate::log::log;

/// How often the sockets are looked at: a new listener is reported within
/// this (plus the host's part) of its `listen()`.
pub const POLL: Duration = Duration::from_millis(200);

/// TCP state `LISTEN` in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";
/// UDP sockets show TCP's `CLOSE` state when not connected.
const UDP_UNCONNECTED: &str = "07";

/// One socket line of /proc/net/{tcp,udp}{,6}, as far as it matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLine {
    pub local: (IpAddr, u16),
    pub remote_port: u16,
    pub remote_unspecified: bool,
    pub state: String,
    pub inode: u64,
}

/// An address in /proc/net's hex form: IPv4 as one little-endian word,
/// IPv6 as four (each in host byte order, little-endian on x86).
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => {
            let word = u32::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(word.to_le_bytes())))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in hex.as_bytes().chunks(8).enumerate() {
                let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = text.split_once(':')?;
    Some((parse_hex_ip(ip)?, u16::from_str_radix(port, 16).ok()?))
}

/// Parse one /proc/net/{tcp,udp}{,6} table; the header and bad lines are
/// skipped.
pub fn parse_table(text: &str) -> Vec<SocketLine> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let local = parse_endpoint(fields.get(1)?)?;
            let (remote_ip, remote_port) = parse_endpoint(fields.get(2)?)?;
            Some(SocketLine {
                local,
                remote_port,
                remote_unspecified: remote_ip.is_unspecified(),
                state: fields.get(3)?.to_string(),
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The listening sockets among a table's lines, skipping `own` inodes (the
/// agent's relays).
pub fn listeners(proto: Proto, lines: &[SocketLine], own: &BTreeSet<u64>) -> Vec<ListenSocket> {
    lines
        .iter()
        .filter(|l| !own.contains(&l.inode))
        .filter(|l| match proto {
            Proto::Tcp => l.state == TCP_LISTEN,
            _ => l.state == UDP_UNCONNECTED && l.remote_port == 0 && l.remote_unspecified,
        })
        .filter(|l| l.local.1 != 0)
        .map(|l| ListenSocket {
            proto,
            ip: l.local.0.to_string(),
            port: l.local.1,
        })
        .collect()
}

/// Sorted, without duplicates, at most [`MAX_LISTENING`].
pub fn normalise(mut sockets: Vec<ListenSocket>) -> Listening {
    sockets.sort();
    sockets.dedup();
    let truncated = sockets.len() > MAX_LISTENING;
    sockets.truncate(MAX_LISTENING);
    Listening { sockets, truncated }
}

/// Read every table now.
pub fn read_listening(own: &BTreeSet<u64>) -> Listening {
    let mut all = Vec::new();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        // A kernel without IPv6 has no *6 tables.
        if let Ok(text) = std::fs::read_to_string(file) {
            all.extend(listeners(proto, &parse_table(&text), own));
        }
    }
    normalise(all)
}

/// Watches the sockets and tells one host connection of changes.
pub struct Watcher {
    state: Mutex<WatchState>,
    started: AtomicBool,
}

struct WatchState {
    /// The host connection that asked (see `Channel::generation`).
    generation: Option<u64>,
    last_sent: Option<Listening>,
}

impl Watcher {
    pub const fn new() -> Watcher {
        Watcher {
            state: Mutex::new(WatchState {
                generation: None,
                last_sent: None,
            }),
            started: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host connection `generation` asked: it gets the sockets now, and
    /// changes from then on. `send` is called from the watcher's thread with
    /// each change while that connection lasts (`current` says which is).
    pub fn watch(
        &'static self,
        generation: u64,
        relays: &'static Relays,
        current: impl Fn() -> u64 + Send + 'static,
        send: impl Fn(Listening) -> bool + Send + 'static,
    ) -> Listening {
        let now = read_listening(&relays.inodes());
        {
            let mut state = self.lock();
            state.generation = Some(generation);
            state.last_sent = Some(now.clone());
        }
        if !self.started.swap(true, Ordering::SeqCst) {
            let spawned = std::thread::Builder::new()
                .name("ports".into())
                .spawn(move || self.run(relays, current, send));
            if let Err(e) = spawned {
                log!("cannot start the port watcher: {e}");
                self.started.store(false, Ordering::SeqCst);
            }
        }
        now
    }

    fn run(&self, relays: &Relays, current: impl Fn() -> u64, send: impl Fn(Listening) -> bool) {
        loop {
            std::thread::sleep(POLL);
            let Some(generation) = self.lock().generation else {
                continue;
            };
            if current() != generation {
                // That host went away; a new one asks again.
                self.lock().generation = None;
                continue;
            }
            let now = read_listening(&relays.inodes());
            let changed = self.lock().last_sent.as_ref() != Some(&now);
            if changed && send(now.clone()) {
                self.lock().last_sent = Some(now);
            }
        }
    }
}

/// The relays from [`GUEST_ADDRESS`] to loopback listeners, by port.
pub struct Relays {
    running: Mutex<BTreeMap<u16, RelayHandle>>,
}

struct RelayHandle {
    to: String,
    listener: Arc<TcpListener>,
    inode: u64,
    stop: Arc<AtomicBool>,
}

impl RelayHandle {
    fn end(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept() of its thread (EINVAL from then on).
        // SAFETY: shutdown(2) on a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Relayed connections at once per port, beyond which new ones are refused.
const MAX_CONNECTIONS: u64 = 256;

impl Relays {
    pub const fn new() -> Relays {
        Relays {
            running: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, RelayHandle>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inodes of the relays' listening sockets (left out of reports).
    pub fn inodes(&self) -> BTreeSet<u64> {
        self.lock().values().map(|r| r.inode).collect()
    }

    /// Relay exactly `wanted`: start what is new, end what is no longer
    /// asked for (connections in progress go on).
    pub fn set(&self, wanted: &Exposure) -> Exposed {
        let wanted: BTreeMap<u16, String> = wanted
            .tcp
            .iter()
            .map(|Relay { port, to }| (*port, to.clone()))
            .collect();
        let mut running = self.lock();
        running.retain(|port, relay| {
            let keep = wanted.get(port) == Some(&relay.to);
            if !keep {
                relay.end();
            }
            keep
        });
        let mut failed = Vec::new();
        for (port, to) in wanted {
            if running.contains_key(&port) {
                continue;
            }
            match start_relay(port, &to) {
                Ok(handle) => {
                    running.insert(port, handle);
                }
                Err(e) => failed.push(RelayFailure {
                    port,
                    error: e.to_string(),
                }),
            }
        }
        Exposed { failed }
    }
}

fn start_relay(port: u16, to: &str) -> io::Result<RelayHandle> {
    let target_ip: IpAddr = to
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an IP address"))?;
    if !target_ip.is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only loopback listeners are relayed",
        ));
    }
    let guest: IpAddr = GUEST_ADDRESS.parse().expect("a constant address");
    let listener = Arc::new(TcpListener::bind(SocketAddr::new(guest, port))?);
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .map(|m| m.ino())
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let target = SocketAddr::new(target_ip, port);
    let (accepting, ended) = (Arc::clone(&listener), Arc::clone(&stop));
    std::thread::Builder::new()
        .name(format!("relay-{port}"))
        .spawn(move || accept_loop(&accepting, target, &ended))?;
    Ok(RelayHandle {
        to: to.to_string(),
        listener,
        inode,
        stop,
    })
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, stop: &AtomicBool) {
    let active = Arc::new(AtomicU64::new(0));
    while !stop.load(Ordering::SeqCst) {
        let incoming = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) => {
                log!("relay to {target}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue;
        }
        let counter = Arc::clone(&active);
        counter.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || {
                if let Ok(outgoing) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                    splice(incoming, outgoing);
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Copy both ways until both directions ended.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let forth = std::thread::Builder::new()
        .name("relay-copy".into())
        .spawn(move || copy_then_close(a2, b2));
    copy_then_close(b, a);
    if let Ok(thread) = forth {
        let _ = thread.join();
    }
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:D2E4 01 00000000:00000000 02:000A7C1B 00000000     0        0 1003 4 0000000000000000 20 4 1 10 -1
   3: 0F02000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2003 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0000000000000000 0
  11: 0F02000A:A1B2 0302000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
";

    fn socket(proto: Proto, ip: &str, port: u16) -> ListenSocket {
        ListenSocket {
            proto,
            ip: ip.into(),
            port,
        }
    }

    #[test]
    fn tcp_listeners_are_read_with_their_addresses() {
        let lines = parse_table(TCP);
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0].local,
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8080)
        );
        let found = listeners(Proto::Tcp, &lines, &BTreeSet::new());
        assert_eq!(
            found,
            [
                socket(Proto::Tcp, "127.0.0.1", 8080),
                socket(Proto::Tcp, "0.0.0.0", 22),
                socket(Proto::Tcp, "10.0.2.15", 8080),
            ],
            "an established connection is no listener"
        );
        let own = BTreeSet::from([1004]);
        assert_eq!(
            listeners(Proto::Tcp, &lines, &own).len(),
            2,
            "the relays are left out"
        );
    }

    #[test]
    fn ipv6_listeners_and_mapped_addresses_are_read() {
        let found = listeners(Proto::Tcp, &parse_table(TCP6), &BTreeSet::new());
        assert_eq!(
            found,
            [
                socket(Proto::Tcp, "::", 3000),
                socket(Proto::Tcp, "::1", 5000),
                socket(Proto::Tcp, "127.0.0.1", 5001),
            ]
        );
    }

    #[test]
    fn unconnected_udp_sockets_count_and_connected_ones_do_not() {
        let found = listeners(Proto::Udp, &parse_table(UDP), &BTreeSet::new());
        assert_eq!(found, [socket(Proto::Udp, "0.0.0.0", 68)]);
    }

    #[test]
    fn reports_are_sorted_deduplicated_and_bounded() {
        let many: Vec<ListenSocket> = (1..=MAX_LISTENING as u16 + 5)
            .rev()
            .map(|port| socket(Proto::Tcp, "0.0.0.0", port))
            .chain([socket(Proto::Tcp, "0.0.0.0", 1)])
            .collect();
        let report = normalise(many);
        assert_eq!(report.sockets.len(), MAX_LISTENING);
        assert!(report.truncated);
        assert_eq!(report.sockets[0].port, 1);
        assert_eq!(report.sockets[1].port, 2, "no duplicates");
        assert!(!normalise(vec![socket(Proto::Udp, "::", 9)]).truncated);
        assert!(parse_table("header\nnonsense line\n").is_empty());
    }
}
