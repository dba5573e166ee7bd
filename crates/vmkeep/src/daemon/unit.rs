//! The daemon's own systemd unit, rendered purely. Same rules as the
//! autostart units: absolute paths, the environment it needs, SIGTERM only
//! to the daemon (`KillMode=mixed`; it stops every VM in parallel, unless
//! the unit is restarting: `policy::at_exit`), and a
//! stop timeout derived from the longest instance deadline. The host agents
//! it spawns are not in its cgroup (each gets a scope ordered `Before=` this
//! unit, see `os::cgroup`), so a daemon that dies leaves them running.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::autostart::systemd::{exec_word, quoted, secs, specifiers};
use crate::autostart::{RESTART_DELAY, service_path, service_stop_timeout};
use crate::driver::qemu::binary::OVERRIDE_VAR;

/// The daemon's log, in the instances' root: the unit's output goes there
/// (`StandardOutput=append:`), and the daemon keeps it bounded itself
/// (`os::capped`: cut past `VMKEEP_LOG_MAX`, its newest quarter kept in
/// `daemon.log.1`), which an `O_APPEND` writer such as systemd survives.
pub const LOG_FILE: &str = crate::engine::upgrade_daemon::DAEMON_LOG;

/// The unit's file name.
pub const UNIT_NAME: &str = "vmkeep-daemon.service";

/// What the unit is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonUnit {
    /// The `vmkeep` binary (absolute).
    pub exe: PathBuf,
    pub instances_root: PathBuf,
    pub cache_root: PathBuf,
    pub qemu_dir: Option<PathBuf>,
    /// `VMKEEP_QEMU` at install: the daemon's VMs run that QEMU.
    pub qemu: Option<PathBuf>,
    /// The longest host-shutdown deadline among supervised instances
    /// (`Config::host_shutdown_deadline`).
    pub longest_stop_timeout: Duration,
}

/// Render the unit text.
pub fn render(unit: &DaemonUnit) -> String {
    let home = unit.instances_root.display().to_string();
    let mut text = String::new();
    let w = &mut text;
    let _ = writeln!(w, "# managed by vmkeep: daemon for {home}");
    let _ = writeln!(
        w,
        "# Written by `vmkeep daemon install`; re-run it after raising an instance's stopTimeout."
    );
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(w, "Description=vmkeep daemon for {}", specifiers(&home));
    let _ = writeln!(w, "StartLimitIntervalSec=300");
    let _ = writeln!(w, "StartLimitBurst=5");
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(w, "Type=simple");
    let exe = exec_word(&unit.exe.display().to_string());
    let _ = writeln!(w, "ExecStart={exe} daemon");
    // `systemctl reload`: every running host agent of the home, then the
    // daemon itself (SIGHUP, same main pid), onto the vmkeep installed now.
    let _ = writeln!(w, "ExecReload={exe} upgrade");
    let qemu = unit
        .qemu
        .as_ref()
        .map(|qemu| (OVERRIDE_VAR, qemu.display().to_string()));
    for (key, value) in [
        ("VMKEEP_HOME", home.clone()),
        ("VMKEEP_CACHE_DIR", unit.cache_root.display().to_string()),
        ("PATH", service_path(unit.qemu_dir.as_deref())),
    ]
    .into_iter()
    .chain(qemu)
    {
        let _ = writeln!(w, "Environment={}", quoted(&format!("{key}={value}")));
    }
    let log = specifiers(&format!("{home}/{LOG_FILE}"));
    let _ = writeln!(w, "StandardOutput=append:{log}");
    let _ = writeln!(w, "StandardError=append:{log}");
    let _ = writeln!(w, "KillMode=mixed");
    let _ = writeln!(w, "KillSignal=SIGTERM");
    let _ = writeln!(
        w,
        "TimeoutStopSec={}",
        secs(service_stop_timeout(unit.longest_stop_timeout))
    );
    let _ = writeln!(w, "Restart=on-failure");
    let _ = writeln!(w, "RestartSec={}", secs(RESTART_DELAY));
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let _ = writeln!(w, "WantedBy=default.target");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(longest: u64) -> DaemonUnit {
        DaemonUnit {
            exe: "/opt/vm keep/vmkeep".into(),
            instances_root: "/home/u/.vmkeep".into(),
            cache_root: "/home/u/.cache/vmkeep".into(),
            qemu_dir: Some("/usr/bin".into()),
            qemu: None,
            longest_stop_timeout: Duration::from_secs(longest),
        }
    }

    #[test]
    fn the_unit_runs_the_daemon_by_absolute_path_with_its_environment() {
        let text = render(&unit(30));
        assert!(text.starts_with("# managed by vmkeep: daemon for /home/u/.vmkeep\n"));
        assert!(
            text.contains("ExecStart=\"/opt/vm keep/vmkeep\" daemon\n")
                && text.contains("ExecReload=\"/opt/vm keep/vmkeep\" upgrade\n"),
            "{text}"
        );
        assert!(text.contains("Environment=\"VMKEEP_HOME=/home/u/.vmkeep\"\n"));
        assert!(text.contains("Environment=\"PATH=/usr/bin:"));
        assert!(!text.contains("VMKEEP_QEMU"), "{text}");
        let with_qemu = render(&DaemonUnit {
            qemu: Some("/opt/q/qemu-system-x86_64".into()),
            ..unit(30)
        });
        assert!(
            with_qemu.contains("Environment=\"VMKEEP_QEMU=/opt/q/qemu-system-x86_64\"\n"),
            "{with_qemu}"
        );
        assert!(text.contains("KillMode=mixed\n"));
        assert!(text.contains("Restart=on-failure\n"));
    }

    #[test]
    fn the_stop_timeout_covers_the_longest_instance_ladder() {
        // 30 s deadline + 2 s quit grace + 15 s margin.
        assert!(render(&unit(30)).contains("TimeoutStopSec=47s\n"));
        assert!(render(&unit(300)).contains("TimeoutStopSec=317s\n"));
    }
}
