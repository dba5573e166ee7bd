//! Init mode's network: the loopback interface, and the first virtio NIC on
//! QEMU's user-mode network (slirp: the guest is 10.0.2.15/24, the host
//! 10.0.2.2, DNS 10.0.2.3), configured with ioctls (no DHCP client, no
//! busybox run). A cloud image gets its address from DHCP instead.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use vmkeep_protocol::{DNS_ADDRESS, GATEWAY_ADDRESS, GUEST_ADDRESS};

use crate::log::log;

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Where the kernel lists network interfaces.
const SYS_NET: &str = "/sys/class/net";

/// `/etc/resolv.conf` for QEMU's user network.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS_ADDRESS}\n")
}

/// `/etc/hosts` of the tiny guest (its own name on 127.0.1.1, as Debian
/// does, when it has one).
pub fn hosts(hostname: Option<&str>) -> String {
    let mut text = "127.0.0.1 localhost\n::1 localhost\n".to_string();
    if let Some(name) = hostname {
        text.push_str(&format!("127.0.1.1 {name}\n"));
    }
    text
}

/// The first Ethernet interface listed (a virtio NIC is `eth0`; with
/// predictable names it would be `enp0s*`).
pub fn first_ethernet(names: &[String]) -> Option<&str> {
    let mut candidates: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("eth") || n.starts_with("en"))
        .collect();
    candidates.sort();
    candidates.first().copied()
}

fn interfaces() -> Vec<String> {
    std::fs::read_dir(SYS_NET)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Bring up `lo`, and the NIC if QEMU gave one (waiting up to 2 s for it
/// to appear once its driver loaded). Every failure is logged; boot goes on.
pub fn configure(hostname: Option<&str>) {
    if let Err(e) = set_up("lo") {
        log!("cannot bring up lo: {e}");
    }
    for (path, text) in [
        ("/etc/hosts", hosts(hostname)),
        ("/etc/resolv.conf", resolv_conf()),
    ] {
        if let Err(e) = std::fs::write(path, text) {
            log!("cannot write {path}: {e}");
        }
    }
    if !crate::disk::virtio_device_present(
        Path::new(crate::disk::SYS_VIRTIO_DEVICES),
        VIRTIO_ID_NET,
    ) {
        return;
    }
    let started = Instant::now();
    let name = loop {
        let names = interfaces();
        if let Some(name) = first_ethernet(&names) {
            break name.to_string();
        }
        if started.elapsed() > Duration::from_secs(2) {
            log!("a virtio network card is attached but no interface appeared within 2 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let address: Ipv4Addr = GUEST_ADDRESS.parse().expect("a constant address");
    let gateway: Ipv4Addr = GATEWAY_ADDRESS.parse().expect("a constant address");
    let result = set_address(&name, address, Ipv4Addr::new(255, 255, 255, 0))
        .and_then(|()| set_up(&name))
        .and_then(|()| add_default_route(gateway));
    match result {
        Ok(()) => log!("network: {name} is {address}/24, gateway {gateway}"),
        Err(e) => log!("cannot configure {name}: {e}"),
    }
}

/// A socket for interface ioctls.
struct IoctlSocket(libc::c_int);

impl IoctlSocket {
    fn new() -> io::Result<IoctlSocket> {
        // SAFETY: socket(2) has no memory-safety preconditions.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IoctlSocket(fd))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is the struct the request expects, valid for the call.
        if unsafe { libc::ioctl(self.0, request as _, arg as *mut T) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for IoctlSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // it as the family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn set_up(name: &str) -> io::Result<()> {
    let socket = IoctlSocket::new()?;
    let mut request = ifreq(name)?;
    socket.ioctl(libc::SIOCGIFFLAGS, &mut request)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    socket.ioctl(libc::SIOCSIFFLAGS, &mut request)
}

fn set_address(name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let socket = IoctlSocket::new()?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr(address);
    socket.ioctl(libc::SIOCSIFADDR, &mut request)?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_netmask = sockaddr(netmask);
    socket.ioctl(libc::SIOCSIFNETMASK, &mut request)
}

fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let socket = IoctlSocket::new()?;
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match socket.ioctl(libc::SIOCADDRT, &mut route) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ethernet_interface_is_chosen() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            first_ethernet(&names(&["lo", "eth1", "eth0"])),
            Some("eth0")
        );
        assert_eq!(first_ethernet(&names(&["lo", "enp0s2"])), Some("enp0s2"));
        assert_eq!(first_ethernet(&names(&["lo", "sit0"])), None);
        assert_eq!(resolv_conf(), "nameserver 10.0.2.3\n");
    }
}
