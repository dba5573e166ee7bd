//! Checks of what the untrusted guest reports (its info, its listening
//! sockets, its relays) before the host holds, shows, logs or journals it:
//! bounded, well-formed, printable.

use vmkeep_protocol::{Exposed, GuestInfo, Listening, MAX_LISTENING};

use crate::link::untrusted;

/// Longest address text accepted in a port report (an IPv6 address with
/// an embedded IPv4 one is 45).
const MAX_IP_BYTES: usize = 45;
/// Longest relay error shown.
pub(super) const MAX_RELAY_ERROR_BYTES: usize = 256;

/// Check a listening-socket report: at most [`MAX_LISTENING`] sockets, each
/// an IP address and a port other than 0. (What they ask for is for the
/// forwarding rules to decide; this only bounds what the host holds and
/// makes every entry well-formed.)
pub fn check_listening(listening: &Listening) -> Result<(), String> {
    if listening.sockets.len() > MAX_LISTENING {
        return Err(format!(
            "{} sockets; at most {MAX_LISTENING} are accepted",
            listening.sockets.len()
        ));
    }
    for socket in &listening.sockets {
        if socket.ip.len() > MAX_IP_BYTES || socket.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "{} is not an IP address",
                untrusted::shown(&socket.ip, untrusted::SHOWN_BYTES)
            ));
        }
        if socket.port == 0 {
            return Err("a socket on port 0".into());
        }
    }
    Ok(())
}

/// Check the guest's answer to an expose request: short, printable errors.
pub fn check_exposed(exposed: &Exposed) -> Result<(), String> {
    if exposed.failed.len() > MAX_LISTENING {
        return Err(format!("{} failures reported", exposed.failed.len()));
    }
    for failure in &exposed.failed {
        if failure.error.len() > MAX_RELAY_ERROR_BYTES
            || failure.error.chars().any(char::is_control)
        {
            return Err(format!(
                "the error for port {} is over {MAX_RELAY_ERROR_BYTES} bytes or not printable",
                failure.port
            ));
        }
    }
    Ok(())
}

/// Longest kernel release accepted (Linux's `utsname` holds 64 bytes).
const MAX_KERNEL_BYTES: usize = 64;
/// Longest boot id accepted (Linux's is a 36-character UUID).
const MAX_BOOT_ID_BYTES: usize = 64;
/// Longest agent version accepted.
const MAX_VERSION_BYTES: usize = 64;
/// Longest data mount path accepted (Linux's `PATH_MAX`).
pub(super) const MAX_MOUNT_BYTES: usize = 4096;

/// Check what the guest says about itself before the host shows, logs or
/// journals it: short strings without control characters (a hostile guest
/// must not write escape sequences to the user's terminal, nor megabytes
/// into every journal line that names its boot), a boot id of letters,
/// digits and `-` (it is compared and journaled), a finite uptime.
/// What the guest says of its data disk: device names, errors and e2fsck's
/// output are shown to the user and journaled, so they are bounded and
/// free of control characters (e2fsck's lines may keep their newlines).
fn check_data_disk(
    disk: &vmkeep_protocol::DataDisk,
    text: fn(&str, &str, usize) -> Result<(), String>,
) -> Result<(), String> {
    use vmkeep_protocol::{DataDisk, FsckRun};
    let fsck = |run: &FsckRun| {
        if run.output.len() > MAX_FSCK_OUTPUT_BYTES {
            return Err(format!(
                "data_disk's e2fsck output is {} bytes long; at most {MAX_FSCK_OUTPUT_BYTES} are accepted",
                run.output.len()
            ));
        }
        if run
            .output
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("data_disk's e2fsck output contains control characters".into());
        }
        Ok(())
    };
    match disk {
        DataDisk::Mounted {
            mount,
            repaired,
            grown,
            ..
        } => {
            text("data_disk.mount", mount, MAX_MOUNT_BYTES)?;
            if let Some(error) = grown.as_ref().and_then(|g| g.error.as_ref()) {
                text("data_disk.grown.error", error, MAX_MOUNT_BYTES)?;
            }
            repaired.as_ref().map_or(Ok(()), fsck)
        }
        DataDisk::NotAttached | DataDisk::Unknown => Ok(()),
        DataDisk::DeviceMissing { device, error }
        | DataDisk::FormatFailed { device, error }
        | DataDisk::MountFailed { device, error } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)?;
            text("data_disk.error", error, MAX_MOUNT_BYTES)
        }
        DataDisk::NoFileSystem { device } | DataDisk::NoRepairTool { device } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)
        }
        DataDisk::RepairFailed { device, fsck: run } => {
            text("data_disk.device", device, MAX_MOUNT_BYTES)?;
            fsck(run)
        }
    }
}

/// The most of e2fsck's output a guest may report.
const MAX_FSCK_OUTPUT_BYTES: usize = 16 * 1024;

pub fn check_guest_info(info: &GuestInfo) -> Result<(), String> {
    fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
        if value.len() > max {
            return Err(format!(
                "{field} is {} bytes long; at most {max} are accepted",
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "{field} {} contains control characters",
                untrusted::shown(value, untrusted::SHOWN_BYTES)
            ));
        }
        Ok(())
    }
    text("kernel", &info.kernel, MAX_KERNEL_BYTES)?;
    text("boot_id", &info.boot_id, MAX_BOOT_ID_BYTES)?;
    if info.boot_id.is_empty()
        || !info
            .boot_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "boot_id {:?} is not letters, digits and '-'",
            untrusted::shown(&info.boot_id, untrusted::SHOWN_BYTES)
        ));
    }
    text("agent_version", &info.agent_version, MAX_VERSION_BYTES)?;
    if let Some(mount) = &info.data_mount {
        text("data_mount", mount, MAX_MOUNT_BYTES)?;
    }
    if let Some(disk) = &info.data_disk {
        check_data_disk(disk, text)?;
    }
    if !(info.uptime_secs.is_finite() && info.uptime_secs >= 0.0) {
        return Err(format!(
            "uptime_secs {} is not a duration",
            info.uptime_secs
        ));
    }
    Ok(())
}
