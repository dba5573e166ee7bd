//! The real-systemd tier: vmkeep under systemd 252 running as PID 1 of a
//! `systemd-nspawn` container (tests/common/container.rs), with real VMs
//! (QEMU under TCG) inside. Each test boots its own container.
//!
//! What a user relies on and these tests check: a host agent or daemon that
//! dies does not take its VMs with it (same guest boot id, uptime goes on);
//! the restarted agent adopts and journals it; a host power-off stops every
//! VM by its own ladder, in parallel, nothing killed before its deadline;
//! the next boot autostarts them with their data; a guest's own power-off
//! leaves the unit inactive; a QEMU crash restarts it; `vmkeep stop` and
//! `start` go through systemctl.
//!
//! The tests skip (loudly) only when not run as root; CI runs as root.

mod common;

use std::time::Duration;

use common::container::{Container, USER};
use common::wait_until;

const CMD: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(240);

/// The guest's boot id and uptime (seconds), read through the guest agent.
fn boot_id_and_uptime(ct: &Container, user: &str, name: &str) -> (String, f64) {
    let ran = ct.ok_as(
        user,
        &format!("vmkeep shell {name} -- cat /proc/sys/kernel/random/boot_id /proc/uptime"),
        CMD,
    );
    let mut lines = ran.stdout.lines();
    let boot_id = lines.next().unwrap_or_default().trim().to_string();
    let uptime = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {}", ran.describe()));
    (boot_id, uptime)
}

/// `systemctl [--user] show -p PROP --value UNIT` for `user`.
fn unit_property(ct: &Container, user: &str, unit: &str, property: &str) -> String {
    let systemctl = if user == "root" {
        "systemctl"
    } else {
        "systemctl --user"
    };
    ct.ok_as(
        user,
        &format!("{systemctl} show -p {property} --value {unit}"),
        CMD,
    )
    .stdout
    .trim()
    .to_string()
}

fn main_pid(ct: &Container, user: &str, unit: &str) -> u32 {
    unit_property(ct, user, unit, "MainPID").parse().unwrap()
}

fn pid_field(row: &serde_json::Value, key: &str) -> Option<u32> {
    row[key].as_u64().map(|p| p as u32)
}

/// Wait until `name` is Running under an agent other than `old_agent`.
fn wait_running_under_new_agent(ct: &Container, user: &str, name: &str, old_agent: u32) -> u32 {
    let mut last = serde_json::Value::Null;
    wait_until(BOOT, || {
        last = ct.row(user, name);
        let agent = pid_field(&last, "agent_pid")?;
        (last["status"] == "Running" && agent != old_agent).then_some(agent)
    })
    .unwrap_or_else(|| panic!("{name} did not come back under a new agent: {last}"))
}

fn events_named<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    let kind = kind.to_string();
    events.iter().filter(move |e| e["event"] == kind)
}

/// kill -9 of the unit's main process (the host agent), then the checks a
/// user cares about: QEMU kept running, same boot, the new agent adopted it
/// and said so, the unit is active again.
fn agent_kill9_keeps_the_guest(ct: &Container, user: &str, name: &str, unit: &str) {
    let (boot_before, uptime_before) = boot_id_and_uptime(ct, user, name);
    let row = ct.row(user, name);
    let qemu = pid_field(&row, "qemu_pid").expect("QEMU pid");
    let agent = main_pid(ct, user, unit);
    assert_eq!(
        pid_field(&row, "agent_pid"),
        Some(agent),
        "the unit runs the agent"
    );
    // QEMU is in a scope of its own, not in the agent's unit.
    let cgroup = ct
        .ok_as(user, &format!("cat /proc/{qemu}/cgroup"), CMD)
        .stdout;
    assert!(
        cgroup.contains(&format!("vmkeep-{name}-qemu-")) && !cgroup.contains(unit),
        "QEMU's cgroup: {cgroup}"
    );

    ct.ok_as(user, &format!("kill -9 {agent}"), CMD);
    let new_agent = wait_running_under_new_agent(ct, user, name, agent);
    assert_eq!(
        main_pid(ct, user, unit),
        new_agent,
        "systemd restarted the unit"
    );
    assert_eq!(unit_property(ct, user, unit, "ActiveState"), "active");
    let row = ct.row(user, name);
    assert_eq!(pid_field(&row, "qemu_pid"), Some(qemu), "the same QEMU");
    let (boot_after, uptime_after) = boot_id_and_uptime(ct, user, name);
    assert_eq!(boot_after, boot_before, "the guest was not rebooted");
    assert!(
        uptime_after > uptime_before,
        "uptime went on: {uptime_before} -> {uptime_after}"
    );
    let events = ct.events(user, name);
    let unclean: Vec<_> = events_named(&events, "unclean-end")
        .filter(|e| e["previous_pid"] == agent)
        .collect();
    assert_eq!(
        unclean.len(),
        1,
        "the unclean end is journaled: {events:#?}"
    );
    assert_eq!(unclean[0]["qemu_survived"], true);
    assert!(
        events_named(&events, "adopted").any(|e| e["pid"] == new_agent && e["qemu_pid"] == qemu),
        "the new agent journaled the adoption: {events:#?}"
    );
}

#[test]
fn vm_systemd_user_unit_survives_agent_kill9_and_obeys_systemctl() {
    let Some(ct) = Container::boot() else { return };
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    ct.ok_as(
        USER,
        "vmkeep create web && vmkeep autostart enable web",
        CMD,
    );
    let unit = "vmkeep-web.service";
    let started = ct.ok_as(USER, "vmkeep start web", BOOT);
    assert!(
        started.stderr.contains("through systemd"),
        "start goes through systemd: {}",
        started.describe()
    );
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");
    assert_eq!(
        ct.row(USER, "web")["status"],
        "Running",
        "Type=notify: ready when started"
    );

    agent_kill9_keeps_the_guest(&ct, USER, "web", unit);

    // `vmkeep stop` goes through systemctl: the unit ends inactive (not
    // failed, not restarted), the VM by its power button.
    let stopped = ct.ok_as(USER, "vmkeep stop web", BOOT);
    assert!(
        stopped.stderr.contains("through systemd"),
        "{}",
        stopped.describe()
    );
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "inactive");
    assert_eq!(ct.row(USER, "web")["status"], "Stopped");
    let events = ct.events(USER, "web");
    let last = events_named(&events, "stopped").last().unwrap();
    assert_eq!(last["by"], "power-button", "{last}");
    assert_eq!(last["reason"], "requested", "{last}");

    // And `vmkeep start` starts the unit again.
    ct.ok_as(USER, "vmkeep start web", BOOT);
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");

    // `vmkeep restart` goes through systemctl both ways: a new boot, the
    // unit active again, and systemd counts no failure and no restart of
    // its own.
    let (boot_before, _) = boot_id_and_uptime(&ct, USER, "web");
    let restarts = unit_property(&ct, USER, unit, "NRestarts");
    let restarted = ct.ok_as(USER, "vmkeep restart web", BOOT * 2);
    assert!(
        restarted.stderr.contains("stopping web through systemd")
            && restarted.stderr.contains("starting web through systemd"),
        "{}",
        restarted.describe()
    );
    let (boot_after, _) = boot_id_and_uptime(&ct, USER, "web");
    assert_ne!(boot_after, boot_before, "a fresh boot");
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");
    assert_eq!(unit_property(&ct, USER, unit, "Result"), "success");
    assert_eq!(unit_property(&ct, USER, unit, "NRestarts"), restarts);
    let events = ct.events(USER, "web");
    let last = events_named(&events, "stopped").last().unwrap();
    assert_eq!(last["reason"], "requested", "{last}");

    // A deadline of one's own cannot be passed through systemctl: `stop
    // --timeout` asks the agent directly, which exits 0, so the unit ends
    // inactive without a restart all the same.
    let direct = ct.ok_as(USER, "vmkeep stop --timeout 20s web", BOOT);
    assert!(
        !direct.stderr.contains("through systemd"),
        "{}",
        direct.describe()
    );
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "inactive");
    assert_eq!(ct.row(USER, "web")["status"], "Stopped");
    ct.ok_as(USER, "vmkeep start web", BOOT);

    // A power-off from inside the guest: the unit ends inactive and stays so.
    let _ = ct.sh_as(USER, "vmkeep shell web -- poweroff", CMD);
    wait_until(BOOT, || {
        (unit_property(&ct, USER, unit, "ActiveState") == "inactive").then_some(())
    })
    .expect("the unit ends after the guest powered off");
    // Past RestartSec (1 s) with a margin: nothing restarted it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "inactive");
    assert_eq!(ct.row(USER, "web")["status"], "Stopped");
    let events = ct.events(USER, "web");
    let last = events_named(&events, "stopped").last().unwrap();
    assert_eq!(last["reason"], "guest-poweroff", "{last}");
}

#[test]
fn vm_systemd_system_unit_for_root_survives_agent_kill9_and_restarts_after_a_qemu_crash() {
    let Some(ct) = Container::boot() else { return };
    ct.ok_as(
        "root",
        "vmkeep create web && vmkeep autostart enable web --condition boot",
        CMD,
    );
    let unit = "vmkeep-root-web.service";
    assert!(
        ct.host_path("/etc/systemd/system/vmkeep-root-web.service")
            .exists(),
        "root's boot unit is a system unit"
    );
    ct.ok_as("root", "vmkeep start web", BOOT);
    assert_eq!(unit_property(&ct, "root", unit, "ActiveState"), "active");

    agent_kill9_keeps_the_guest(&ct, "root", "web", unit);

    // A QEMU crash is a failure: systemd restarts the unit, which boots anew.
    let (boot_before, _) = boot_id_and_uptime(&ct, "root", "web");
    let agent = main_pid(&ct, "root", unit);
    let qemu = pid_field(&ct.row("root", "web"), "qemu_pid").unwrap();
    ct.ok_as("root", &format!("kill -9 {qemu}"), CMD);
    let new_agent = wait_running_under_new_agent(&ct, "root", "web", agent);
    assert_eq!(main_pid(&ct, "root", unit), new_agent);
    let (boot_after, _) = boot_id_and_uptime(&ct, "root", "web");
    assert_ne!(boot_after, boot_before, "a fresh boot after the crash");
    let events = ct.events("root", "web");
    assert!(
        events_named(&events, "stopped").any(|e| e["reason"] == "crashed"),
        "{events:#?}"
    );
}

/// The daemon's user unit installed for a lingering user, with `names`
/// (`runStrategy: always`) running under it.
fn daemon_unit_running(ct: &Container, names: &[&str]) {
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    let creates: String = names
        .iter()
        .map(|name| format!("vmkeep create {name} --template /tmp/always.yaml && "))
        .collect();
    ct.ok_as(
        USER,
        &format!(
            "printf 'runStrategy: always\\n' >/tmp/always.yaml && {creates}vmkeep daemon install"
        ),
        CMD,
    );
    for name in names {
        wait_until(BOOT, || {
            (ct.row(USER, name)["status"] == "Running").then_some(())
        })
        .unwrap_or_else(|| panic!("the daemon did not start {name}"));
    }
}

#[test]
fn vm_systemd_daemon_kill9_leaves_its_vms_running() {
    let Some(ct) = Container::boot() else { return };
    daemon_unit_running(&ct, &["d1", "d2"]);
    let before: Vec<_> = ["d1", "d2"]
        .iter()
        .map(|n| (boot_id_and_uptime(&ct, USER, n), ct.row(USER, n)))
        .collect();
    let daemon = main_pid(&ct, USER, "vmkeep-daemon.service");
    ct.ok_as(USER, &format!("kill -9 {daemon}"), CMD);
    // systemd restarts the daemon (RestartSec); it watches the same agents.
    wait_until(BOOT, || {
        let pid = main_pid(&ct, USER, "vmkeep-daemon.service");
        (pid != 0 && pid != daemon).then_some(())
    })
    .expect("systemd restarted the daemon");
    for (name, ((boot, uptime), row)) in ["d1", "d2"].iter().zip(before) {
        let now = ct.row(USER, name);
        assert_eq!(now["status"], "Running", "{now}");
        assert_eq!(now["agent_pid"], row["agent_pid"], "the same agent: {now}");
        assert_eq!(now["qemu_pid"], row["qemu_pid"], "the same QEMU: {now}");
        let (boot_now, uptime_now) = boot_id_and_uptime(&ct, USER, name);
        assert_eq!(boot_now, boot, "{name} was not rebooted");
        assert!(uptime_now > uptime);
    }
}

#[test]
fn vm_systemd_daemon_restart_and_reload_keep_its_vms_and_it_supervises_them_stop_stops_them() {
    let Some(ct) = Container::boot() else { return };
    daemon_unit_running(&ct, &["r1"]);
    let (boot, uptime) = boot_id_and_uptime(&ct, USER, "r1");
    let row = ct.row(USER, "r1");
    let qemu = pid_field(&row, "qemu_pid").expect("QEMU pid");
    let daemon = main_pid(&ct, USER, "vmkeep-daemon.service");

    // A restart of the unit (what a package upgrade does): the VM runs on.
    ct.ok_as(USER, "systemctl --user restart vmkeep-daemon", CMD);
    let new_daemon = main_pid(&ct, USER, "vmkeep-daemon.service");
    assert!(new_daemon != 0 && new_daemon != daemon, "a new daemon");
    let now = ct.row(USER, "r1");
    assert_eq!(now["status"], "Running", "{now}");
    assert_eq!(
        pid_field(&now, "qemu_pid"),
        Some(qemu),
        "the same QEMU: {now}"
    );
    assert_eq!(now["agent_pid"], row["agent_pid"], "the same agent: {now}");
    let (boot_now, uptime_now) = boot_id_and_uptime(&ct, USER, "r1");
    assert_eq!(boot_now, boot, "r1 was not rebooted");
    assert!(
        uptime_now > uptime,
        "uptime went on: {uptime} -> {uptime_now}"
    );
    let log = ct.ok_as(USER, "cat ~/.vmkeep/daemon.log", CMD).stdout;
    assert!(
        log.contains("for a restart of the daemon's unit: leaving every VM running"),
        "{log}"
    );

    // A reload of the unit (`ExecReload=vmkeep upgrade`): every agent, then
    // the daemon, move in place onto the vmkeep installed; the main pid is
    // kept and the VM runs on.
    ct.ok_as(USER, "systemctl --user reload vmkeep-daemon", CMD);
    assert_eq!(
        main_pid(&ct, USER, "vmkeep-daemon.service"),
        new_daemon,
        "the same main pid after a reload"
    );
    assert_eq!(
        unit_property(&ct, USER, "vmkeep-daemon.service", "ActiveState"),
        "active"
    );
    let cmdline = ct
        .ok_as(
            USER,
            &format!("tr '\\0' ' ' < /proc/{new_daemon}/cmdline"),
            CMD,
        )
        .stdout;
    assert!(cmdline.contains("--generation 1"), "{cmdline}");
    let now = ct.row(USER, "r1");
    assert_eq!(pid_field(&now, "qemu_pid"), Some(qemu), "{now}");
    assert_eq!(now["agent_pid"], row["agent_pid"], "{now}");
    assert_eq!(boot_id_and_uptime(&ct, USER, "r1").0, boot);
    let log = ct.ok_as(USER, "cat ~/.vmkeep/daemon.log", CMD).stdout;
    assert!(log.contains("daemon upgraded in place"), "{log}");
    let events = ct.events(USER, "r1");
    assert!(
        events_named(&events, "upgraded").count() == 1,
        "the reload moved r1's agent too: {events:#?}"
    );

    // The new daemon supervises it: a QEMU crash is restarted (runStrategy).
    ct.ok_as(USER, &format!("kill -9 {qemu}"), CMD);
    let mut last = serde_json::Value::Null;
    let new_qemu = wait_until(BOOT, || {
        last = ct.row(USER, "r1");
        let pid = pid_field(&last, "qemu_pid")?;
        (last["status"] == "Running" && pid != qemu).then_some(pid)
    })
    .unwrap_or_else(|| panic!("the new daemon did not restart r1 after its crash: {last}"));
    assert_ne!(new_qemu, qemu);
    let (boot_after_crash, _) = boot_id_and_uptime(&ct, USER, "r1");
    assert_ne!(boot_after_crash, boot, "a fresh boot after the crash");
    let events = ct.events(USER, "r1");
    assert!(
        events_named(&events, "restarting")
            .any(|e| e["after"].as_str().is_some_and(|a| a.contains("crash"))),
        "the daemon journaled the restart after the crash: {events:#?}"
    );

    // A stop of the unit stops the VM by its ladder.
    ct.ok_as(USER, "systemctl --user stop vmkeep-daemon", BOOT);
    let now = ct.row(USER, "r1");
    assert_eq!(now["status"], "Stopped", "{now}");
    let events = ct.events(USER, "r1");
    let stopped = events_named(&events, "stopped").last().cloned();
    assert_eq!(
        stopped.as_ref().map(|e| e["by"].clone()),
        Some(serde_json::json!("power-button")),
        "{events:#?}"
    );
}

#[test]
fn vm_systemd_upgrade_qemu_of_a_user_unit_vm_resumes_it_through_its_unit() {
    let Some(ct) = Container::boot() else { return };
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    // The unit runs a copy of the container's QEMU (its modules and firmware
    // linked where a relocated QEMU looks), so the test can replace it.
    let qemu = "/tmp/q/bin/qemu-system-x86_64";
    ct.ok_as(
        USER,
        &format!(
            "mkdir -p /tmp/q/bin /tmp/q/lib/x86_64-linux-gnu /tmp/q/share && \
             ln -s /usr/lib/x86_64-linux-gnu/qemu /tmp/q/lib/x86_64-linux-gnu/qemu && \
             ln -s /usr/share/qemu /tmp/q/share/qemu && ln -s /usr/share/seabios /tmp/q/share/seabios && \
             cp /usr/bin/qemu-system-x86_64 {qemu} && \
             export VMKEEP_QEMU={qemu} && vmkeep create web && vmkeep autostart enable web && \
             vmkeep start web"
        ),
        BOOT,
    );
    let unit = "vmkeep-web.service";
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");
    let (boot, uptime) = boot_id_and_uptime(&ct, USER, "web");
    let row = ct.row(USER, "web");
    let old_qemu = pid_field(&row, "qemu_pid").expect("QEMU pid");

    // A package upgrade: a new file renamed over the old one.
    ct.ok_as(
        USER,
        &format!("cp /usr/bin/qemu-system-x86_64 {qemu}.new && mv {qemu}.new {qemu}"),
        CMD,
    );
    assert_eq!(ct.row(USER, "web")["qemu_replaced"], qemu);
    ct.ok_as(
        USER,
        &format!("VMKEEP_QEMU={qemu} vmkeep upgrade --qemu web"),
        BOOT,
    );
    let row = ct.row(USER, "web");
    assert_eq!(row["status"], "Running", "{row}");
    assert_eq!(row["qemu_replaced"], serde_json::Value::Null, "{row}");
    assert_ne!(pid_field(&row, "qemu_pid"), Some(old_qemu), "a new QEMU");
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");
    assert_eq!(
        pid_field(&row, "agent_pid"),
        Some(main_pid(&ct, USER, unit)),
        "the unit runs the resumed VM's agent"
    );
    let (boot_now, uptime_now) = boot_id_and_uptime(&ct, USER, "web");
    assert_eq!(boot_now, boot, "the same guest boot");
    assert!(
        uptime_now > uptime,
        "uptime went on: {uptime} -> {uptime_now}"
    );
}

#[test]
fn vm_systemd_poweroff_stops_each_vm_by_its_ladder_and_boot_brings_them_back() {
    let Some(mut ct) = Container::boot() else {
        return;
    };
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    // plain: obeys the power button; deaf: ignores it, so its guest agent is
    // asked at half the deadline; numb: ignores both, so it is hard-stopped
    // at its deadline.
    let deaf = "stopTimeout: 8s\\nkernel:\\n  cmdline: vmkeep.ignore_power_button=1\\n";
    let numb = "stopTimeout: 8s\\nkernel:\\n  cmdline: vmkeep.ignore_power_button=1 vmkeep.ignore_poweroff_request=1\\n";
    ct.ok_as(
        USER,
        &format!(
            "vmkeep create plain && printf '{deaf}' >/tmp/deaf.yaml && vmkeep create deaf --template /tmp/deaf.yaml && \
             printf '{numb}' >/tmp/numb.yaml && vmkeep create numb --template /tmp/numb.yaml && \
             for v in plain deaf numb; do vmkeep autostart enable $v --condition boot || exit 1; done"
        ),
        CMD,
    );
    ct.ok_as(
        USER,
        "vmkeep start plain & vmkeep start deaf & vmkeep start numb & wait",
        BOOT,
    );
    for name in ["plain", "deaf", "numb"] {
        assert_eq!(ct.row(USER, name)["status"], "Running", "{name}");
    }
    ct.ok_as(
        USER,
        "vmkeep shell plain -- sh -c 'echo kept >/data/marker && sync'",
        CMD,
    );

    let took = ct.poweroff(Duration::from_secs(120));
    eprintln!("container down {took:?} after `systemctl poweroff`");
    let last_stop = |name: &str| {
        let events = ct.events(USER, name);
        let stopping = events_named(&events, "stopping").last().cloned();
        let stopped = events_named(&events, "stopped").last().cloned();
        (events, stopping, stopped)
    };
    let (events, stopping, stopped) = last_stop("plain");
    let stopped = stopped.unwrap_or_else(|| panic!("plain: {events:#?}"));
    assert_eq!(stopping.unwrap()["cause"], "signal");
    assert_eq!(stopped["by"], "power-button", "{stopped}");
    let (events, _, stopped) = last_stop("deaf");
    let stopped = stopped.unwrap_or_else(|| panic!("deaf: {events:#?}"));
    assert_eq!(stopped["by"], "guest-agent-poweroff", "{stopped}");
    let step = events_named(&events, "stop-step")
        .filter(|e| e["step"] == "guest-agent-poweroff")
        .last()
        .unwrap();
    assert!(
        step["at_secs"].as_f64().unwrap() >= 4.0,
        "at half the deadline: {step}"
    );
    let (events, _, stopped) = last_stop("numb");
    let stopped = stopped.unwrap_or_else(|| panic!("numb: {events:#?}"));
    assert_eq!(stopped["by"], "quit", "hard-stopped: {stopped}");
    let quit = events_named(&events, "stop-step")
        .filter(|e| e["step"] == "quit")
        .last()
        .unwrap();
    assert!(
        quit["at_secs"].as_f64().unwrap() >= 8.0,
        "not before its deadline: {quit}"
    );

    // The next boot starts all three again (the user manager lingers), and
    // the data written before the shutdown is there.
    ct.boot_again();
    for name in ["plain", "deaf", "numb"] {
        wait_until(BOOT, || {
            (ct.row(USER, name)["status"] == "Running").then_some(())
        })
        .unwrap_or_else(|| panic!("{name} was not autostarted at boot"));
    }
    let marker = ct.ok_as(USER, "vmkeep shell plain -- cat /data/marker", CMD);
    assert_eq!(marker.stdout.trim(), "kept");
}

#[test]
fn vm_systemd_crash_loop_hits_the_start_limit_and_list_says_so() {
    let Some(ct) = Container::boot() else { return };
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    // A guest that powers itself off during every boot: each start fails.
    ct.ok_as(
        USER,
        "printf 'kernel:\\n  cmdline: vmkeep.poweroff_at_boot=1\\n' >/tmp/loop.yaml && \
         vmkeep create loop --template /tmp/loop.yaml && vmkeep autostart enable loop",
        CMD,
    );
    let unit = "vmkeep-loop.service";
    let first = ct.sh_as(USER, "vmkeep start loop", BOOT);
    assert!(
        !first.ok(),
        "a start that fails says so: {}",
        first.describe()
    );
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(300), || {
        last = ct.row(USER, "loop");
        (last["reason"]["code"] == "service-gave-up").then_some(())
    })
    .unwrap_or_else(|| panic!("list does not say systemd gave up: {last}"));
    assert_eq!(last["status"], "Broken");
    // systemd 252 keeps the last run's result (exit-code) when the start
    // limit ends the restarts; the unit is failed and counted its restarts.
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "failed");
    let restarts = unit_property(&ct, USER, unit, "NRestarts");
    assert!(restarts.parse::<u32>().unwrap() >= 4, "{restarts}");
    assert!(
        last["reason"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "gave up on its unit {unit} after {restarts} restarts"
            )),
        "{last}"
    );
    let failures = events_named(&ct.events(USER, "loop"), "start-failed").count();
    assert!(failures >= 5, "every attempt was journaled: {failures}");

    // Once the cause is fixed, `vmkeep start` clears the failure and starts it.
    ct.ok_as(USER, ": >~/.vmkeep/loop/vmkeep.yaml", CMD);
    ct.ok_as(USER, "vmkeep start loop", BOOT);
    assert_eq!(unit_property(&ct, USER, unit, "ActiveState"), "active");
    assert_eq!(ct.row(USER, "loop")["status"], "Running");
}

/// `onHostShutdown: suspend` under a real systemd: a host power-off saves
/// each such VM (a user unit, root's system unit, and one the daemon runs)
/// instead of powering it off, and the next boot resumes it: the same
/// guest boot, a process started before still there, /data intact. A
/// `systemctl stop` of the one unit is not a host shutdown: it stops.
#[test]
fn vm_systemd_on_host_shutdown_suspend_saves_at_poweroff_and_resumes_at_boot() {
    let Some(mut ct) = Container::boot() else {
        return;
    };
    ct.ok_as("root", &format!("loginctl enable-linger {USER}"), CMD);
    let suspend = "stopTimeout: 20s\\nonHostShutdown: suspend\\n";
    ct.ok_as(
        USER,
        &format!(
            "printf '{suspend}' >/tmp/s.yaml && vmkeep create usr --template /tmp/s.yaml && \
             vmkeep autostart enable usr --condition boot && \
             printf '{suspend}runStrategy: always\\n' >/tmp/d.yaml && vmkeep create dmn --template /tmp/d.yaml && \
             vmkeep daemon install"
        ),
        CMD,
    );
    ct.ok_as(
        "root",
        &format!(
            "printf '{suspend}' >/tmp/s.yaml && vmkeep create sys --template /tmp/s.yaml && \
             vmkeep autostart enable sys --condition boot"
        ),
        CMD,
    );
    let vms = [(USER, "usr"), ("root", "sys"), (USER, "dmn")];
    ct.ok_as(USER, "vmkeep start usr", BOOT);
    ct.ok_as("root", "vmkeep start sys", BOOT);
    wait_until(BOOT, || {
        (ct.row(USER, "dmn")["status"] == "Running").then_some(())
    })
    .expect("the daemon started dmn");

    // Stopping the one unit is a stop, not a host shutdown.
    ct.ok_as(USER, "systemctl --user stop vmkeep-usr.service", CMD);
    assert_eq!(ct.row(USER, "usr")["status"], "Stopped");
    let events = ct.events(USER, "usr");
    assert_eq!(
        events_named(&events, "suspending").count(),
        0,
        "{events:#?}"
    );
    assert_eq!(
        events_named(&events, "stopped").last().unwrap()["by"],
        "power-button"
    );
    ct.ok_as(USER, "vmkeep start usr", BOOT);

    let before: Vec<(String, String)> = vms
        .iter()
        .map(|(user, name)| {
            let sleeper = ct
                .ok_as(
                    user,
                    &format!(
                        "vmkeep shell {name} -- sh -c 'echo kept >/data/marker && sync && \
                         (sleep 100000 </dev/null >/dev/null 2>&1 & echo $!)'"
                    ),
                    CMD,
                )
                .stdout
                .trim()
                .to_string();
            (boot_id_and_uptime(&ct, user, name).0, sleeper)
        })
        .collect();

    let took = ct.poweroff(Duration::from_secs(120));
    eprintln!("container down {took:?} after `systemctl poweroff` (3 VMs suspending)");
    for (user, name) in vms {
        let events = ct.events(user, name);
        let suspending = events_named(&events, "suspending").last();
        assert_eq!(
            suspending.map(|e| e["cause"].clone()),
            Some("host-shutdown".into()),
            "{name}: {events:#?}"
        );
        let last = events.last().unwrap();
        assert_eq!(
            last["event"], "suspended",
            "{name} ended suspended: {events:#?}"
        );
        assert!(
            ct.instance_dir(user, name)
                .join("saved-state.json")
                .exists(),
            "{name}'s state is saved"
        );
    }

    ct.boot_again();
    for ((user, name), (boot_id, sleeper)) in vms.iter().zip(before) {
        wait_until(BOOT, || {
            (ct.row(user, name)["status"] == "Running").then_some(())
        })
        .unwrap_or_else(|| panic!("{name} was not resumed at boot"));
        let events = ct.events(user, name);
        assert!(
            events_named(&events, "resumed").count() == 1,
            "{name} was resumed, not booted: {events:#?}"
        );
        assert_eq!(
            boot_id_and_uptime(&ct, user, name).0,
            boot_id,
            "{name}: the same guest boot"
        );
        let alive = ct.ok_as(
            user,
            &format!("vmkeep shell {name} -- sh -c 'kill -0 {sleeper} && cat /data/marker'"),
            CMD,
        );
        assert_eq!(alive.stdout.trim(), "kept", "{name}: {}", alive.describe());
    }
}

/// What `/proc/PID/exe` of `pid` (a pid of the container) names.
fn exe_in(ct: &Container, pid: u32) -> String {
    ct.ok_as("root", &format!("readlink /proc/{pid}/exe"), CMD)
        .stdout
        .trim()
        .to_string()
}

/// Install `from`'s vmkeep and vmkeep-hostagent into `to` as a package
/// would: each copied beside its place and renamed over it.
fn install(from: &std::path::Path, to: &std::path::Path) {
    for name in ["vmkeep", "vmkeep-hostagent"] {
        let temp = to.join(format!(".{name}.new"));
        std::fs::copy(from.join(name), &temp).expect("copy a binary");
        std::fs::rename(&temp, to.join(name)).expect("install a binary");
    }
}

#[test]
fn vm_systemd_reload_moves_a_unit_the_base_build_started_onto_the_installed_build() {
    if !common::container::can_run() {
        return;
    }
    let base = common::upgrade_base::binaries();
    let package = tempfile::Builder::new()
        .prefix("vkpkg")
        .tempdir_in("/tmp")
        .expect("package dir");
    install(&base, package.path());
    let Some(ct) = Container::boot_binding(&[(package.path(), "/opt/pkg")]) else {
        return;
    };
    ct.ok_as(
        "root",
        "/opt/pkg/vmkeep create web && /opt/pkg/vmkeep autostart enable web --condition boot",
        CMD,
    );
    let unit = "vmkeep-root-web.service";
    let unit_file =
        std::fs::read_to_string(ct.host_path("/etc/systemd/system/vmkeep-root-web.service"))
            .expect("the unit file");
    assert!(
        unit_file.contains("ExecReload=/opt/pkg/vmkeep upgrade web"),
        "{unit_file}"
    );
    ct.ok_as("root", "/opt/pkg/vmkeep start web", BOOT);
    let agent = main_pid(&ct, "root", unit);
    let qemu = pid_field(&ct.row("root", "web"), "qemu_pid").expect("QEMU pid");
    let (boot, uptime) = boot_id_and_uptime(&ct, "root", "web");
    assert_eq!(exe_in(&ct, agent), "/opt/pkg/vmkeep-hostagent");

    // The package is upgraded to this build: the agent's binary is gone.
    let head = std::path::Path::new(common::VMKEEP).parent().unwrap();
    install(head, package.path());
    assert!(exe_in(&ct, agent).ends_with(" (deleted)"));

    ct.ok_as("root", &format!("systemctl reload {unit}"), BOOT);
    assert_eq!(main_pid(&ct, "root", unit), agent, "the same MainPID");
    assert_eq!(unit_property(&ct, "root", unit, "ActiveState"), "active");
    assert_eq!(
        exe_in(&ct, agent),
        "/opt/pkg/vmkeep-hostagent",
        "the new binary"
    );
    assert_eq!(
        pid_field(&ct.row("root", "web"), "qemu_pid"),
        Some(qemu),
        "the same QEMU"
    );
    let (boot_after, uptime_after) = boot_id_and_uptime(&ct, "root", "web");
    assert_eq!(boot_after, boot, "the same boot");
    assert!(uptime_after > uptime, "{uptime} -> {uptime_after}");
    let events = ct.events("root", "web");
    assert!(
        events_named(&events, "upgraded").any(|e| e["pid"] == agent && e["qemu_pid"] == qemu),
        "{events:#?}"
    );
    assert_eq!(
        events_named(&events, "unclean-end").count(),
        0,
        "{events:#?}"
    );
    ct.ok_as("root", "vmkeep stop web", BOOT);
    assert_eq!(unit_property(&ct, "root", unit, "ActiveState"), "inactive");
}
