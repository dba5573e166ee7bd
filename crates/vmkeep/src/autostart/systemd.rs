//! A [`ServiceSpec`] as a systemd unit.
//!
//! - `Type=notify`: the foreground host agent is the service's main process
//!   (`vmkeep start --foreground` execs it, keeping its pid) and says
//!   `READY=1` once the guest is ready, so `systemctl start` and units
//!   ordered `After=` it wait for a usable VM; `TimeoutStartSec` covers the
//!   boot timeout. `NotifyAccess=main`: QEMU and helpers cannot speak for it.
//! - QEMU is not in this unit's cgroup: the agent starts it in a scope of its
//!   own (`vmkeep-NAME-qemu-PID.scope`, see `os::cgroup`), ordered
//!   `Before=` this unit. So when the agent dies (crash, `kill -9`), systemd
//!   cleans up this unit without touching QEMU, and the restarted agent
//!   adopts the running VM; and at a stop or a host shutdown this unit is
//!   stopped first (the agent's stop ladder runs) and QEMU's scope only after.
//! - `KillMode=mixed`: at stop, SIGTERM reaches only the host agent, which
//!   runs the stop ladder; anything else left in the unit is SIGKILLed at
//!   `TimeoutStopSec`, which is longer than the whole ladder. (systemd
//!   considers `mixed` safe; `process` and `none` leave strays behind.)
//! - Keep-alive: `Restart=on-failure`; the agent exits 0 after a requested
//!   stop or a guest power-off, so only crashes and failed starts restart.
//!   `RestartSec` is short: while no agent runs, the VM is unsupervised.
//! - `ExecReload=vmkeep upgrade NAME`: `systemctl reload` moves the running
//!   host agent onto the vmkeep installed now without stopping the VM (the
//!   agent re-executes itself: `MainPID` is kept; see docs/upgrade.md).

use std::fmt::Write;
use std::time::Duration;

use super::{Domain, ServiceSpec};

/// Render the unit file.
pub fn render(spec: &ServiceSpec) -> String {
    let mut unit = String::new();
    let w = &mut unit;
    let _ = writeln!(w, "# {}", spec.marker);
    let _ = writeln!(
        w,
        "# Written by `vmkeep autostart enable {name}`; `vmkeep autostart disable {name}` removes it.",
        name = spec.name
    );
    let _ = writeln!(
        w,
        "# Stop and start it with `vmkeep stop {name}` / `vmkeep start {name}` (they go through systemd).",
        name = spec.name
    );
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(w, "Description=vmkeep VM {}", spec.name);
    if spec.domain == Domain::SystemdSystem {
        let _ = writeln!(w, "After=network.target");
    }
    if spec.options.keep_alive {
        let _ = writeln!(
            w,
            "StartLimitIntervalSec={}",
            secs(spec.start_limit_interval)
        );
        let _ = writeln!(w, "StartLimitBurst={}", spec.start_limit_burst);
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(w, "Type=notify");
    let _ = writeln!(w, "NotifyAccess=main");
    let exec: Vec<String> = spec
        .program_arguments
        .iter()
        .map(|a| exec_word(a))
        .collect();
    let _ = writeln!(w, "ExecStart={}", exec.join(" "));
    // `systemctl reload`: the host agent (the main process) moves onto the
    // binaries installed now, in place; same pid, the VM runs on.
    if let Some(vmkeep) = exec.first() {
        let _ = writeln!(
            w,
            "ExecReload={vmkeep} upgrade {}",
            exec_word(spec.name.as_str())
        );
    }
    for (key, value) in &spec.environment {
        let _ = writeln!(w, "Environment={}", quoted(&format!("{key}={value}")));
    }
    let _ = writeln!(
        w,
        "WorkingDirectory={}",
        specifiers(&spec.working_directory)
    );
    let _ = writeln!(w, "StandardOutput=append:{}", specifiers(&spec.log));
    let _ = writeln!(w, "StandardError=append:{}", specifiers(&spec.log));
    let _ = writeln!(w, "KillMode=mixed");
    let _ = writeln!(w, "KillSignal=SIGTERM");
    let _ = writeln!(w, "TimeoutStartSec={}", secs(spec.start_timeout));
    let _ = writeln!(w, "TimeoutStopSec={}", secs(spec.stop_timeout));
    if spec.options.keep_alive {
        let _ = writeln!(w, "Restart=on-failure");
        let _ = writeln!(w, "RestartSec={}", secs(spec.restart_delay));
    } else {
        let _ = writeln!(w, "Restart=no");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let target = match spec.domain {
        Domain::SystemdSystem => "multi-user.target",
        _ => "default.target",
    };
    let _ = writeln!(w, "WantedBy={target}");
    unit
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// `%` starts a specifier in almost every setting; `%%` is a literal `%`.
pub(crate) fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// A double-quoted value with C-style escapes (Environment=, ExecStart=).
pub(crate) fn quoted(text: &str) -> String {
    let escaped = specifiers(text).replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// One word of ExecStart=: `$` would expand a variable, so it is doubled;
/// words with blanks, quotes or backslashes are quoted.
pub(crate) fn exec_word(word: &str) -> String {
    let word = word.replace('$', "$$");
    if word.is_empty() || word.contains([' ', '\t', '"', '\'', '\\', ';']) {
        quoted(&word)
    } else {
        specifiers(&word)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{spec, spec_for};
    use super::super::{Condition, Manager};
    use super::*;

    fn lines(unit: &str) -> Vec<&str> {
        unit.lines().collect()
    }

    /// The `Key=value` lines of a section.
    fn section<'a>(unit: &'a str, name: &str) -> Vec<&'a str> {
        let header = format!("[{name}]");
        unit.lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn login_with_keep_alive() {
        let unit = render(&spec(Condition::Login, true, 30));
        assert!(unit.starts_with("# managed by vmkeep: instance dev in /home/ann/.vmkeep/dev\n"));
        assert_eq!(
            section(&unit, "Unit"),
            [
                "Description=vmkeep VM dev",
                "StartLimitIntervalSec=1205s",
                "StartLimitBurst=5",
            ]
        );
        assert_eq!(
            section(&unit, "Service"),
            [
                "Type=notify",
                "NotifyAccess=main",
                "ExecStart=/opt/vmkeep/bin/vmkeep start dev --foreground",
                "ExecReload=/opt/vmkeep/bin/vmkeep upgrade dev",
                "Environment=\"VMKEEP_HOME=/home/ann/.vmkeep\"",
                "Environment=\"VMKEEP_CACHE_DIR=/home/ann/.cache/vmkeep\"",
                "Environment=\"PATH=/opt/homebrew/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"",
                "WorkingDirectory=/home/ann/.vmkeep/dev",
                "StandardOutput=append:/home/ann/.vmkeep/dev/autostart.log",
                "StandardError=append:/home/ann/.vmkeep/dev/autostart.log",
                "KillMode=mixed",
                "KillSignal=SIGTERM",
                "TimeoutStartSec=240s",
                "TimeoutStopSec=47s",
                "Restart=on-failure",
                "RestartSec=1s",
            ]
        );
        assert_eq!(section(&unit, "Install"), ["WantedBy=default.target"]);
    }

    #[test]
    fn login_without_keep_alive_never_restarts() {
        let unit = render(&spec(Condition::Login, false, 30));
        let service = section(&unit, "Service");
        assert!(service.contains(&"Restart=no"), "{unit}");
        assert!(
            !unit.contains("RestartSec") && !unit.contains("StartLimit"),
            "{unit}"
        );
        assert!(
            !unit.contains("User="),
            "a user unit runs as its user: {unit}"
        );
        assert_eq!(section(&unit, "Install"), ["WantedBy=default.target"]);
    }

    #[test]
    fn boot_for_a_user_is_a_user_unit_and_for_root_a_system_unit() {
        for keep_alive in [true, false] {
            // A user's VM at boot: the same user unit, started by the
            // lingering user manager; no User= (it runs as its user).
            let unit = render(&spec(Condition::Boot, keep_alive, 30));
            assert!(!unit.contains("User="), "{unit}");
            assert!(!unit.contains("network.target"), "{unit}");
            assert_eq!(section(&unit, "Install"), ["WantedBy=default.target"]);
            let root = render(&spec_for(
                Manager::Systemd,
                Condition::Boot,
                keep_alive,
                30,
                "root",
            ));
            assert!(
                section(&root, "Unit").contains(&"After=network.target"),
                "{root}"
            );
            let service = section(&root, "Service");
            assert!(!root.contains("User="), "{root}");
            assert!(service.contains(&"KillMode=mixed"), "{root}");
            assert_eq!(
                service.contains(&"Restart=on-failure"),
                keep_alive,
                "{root}"
            );
            assert_eq!(section(&root, "Install"), ["WantedBy=multi-user.target"]);
        }
    }

    #[test]
    fn the_stop_timeout_follows_the_instance_deadline() {
        for (deadline, expected) in [(5, "TimeoutStopSec=22s"), (300, "TimeoutStopSec=317s")] {
            let unit = render(&spec(Condition::Login, true, deadline));
            assert!(lines(&unit).contains(&expected), "{deadline}: {unit}");
        }
    }

    #[test]
    fn blanks_percent_and_dollar_are_escaped() {
        let mut odd = spec(Condition::Login, true, 30);
        odd.program_arguments[0] = "/opt/my apps/vm$keep".into();
        odd.environment[0].1 = "/home/a b/100%\"q\"".into();
        odd.log = "/home/100%/autostart.log".into();
        let unit = render(&odd);
        assert!(
            lines(&unit).contains(&"ExecStart=\"/opt/my apps/vm$$keep\" start dev --foreground"),
            "{unit}"
        );
        assert!(
            lines(&unit).contains(&"ExecReload=\"/opt/my apps/vm$$keep\" upgrade dev"),
            "{unit}"
        );
        assert!(
            lines(&unit).contains(&"Environment=\"VMKEEP_HOME=/home/a b/100%%\\\"q\\\"\""),
            "{unit}"
        );
        assert!(
            lines(&unit).contains(&"StandardOutput=append:/home/100%%/autostart.log"),
            "{unit}"
        );
    }
}
