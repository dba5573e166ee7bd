//! The agent's shared state and the actions both modes use: answering
//! requests, announcing readiness, powering off.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmkeep_protocol::{DataDisk, ExecResult, FromGuest, GuestInfo, GuestTime, HostMessage, Reply};

use crate::ports::{Relays, Watcher};

use crate::channel::Channel;
use crate::exec::{self, SpawnError};
use crate::flags::Flags;
use crate::handler::{self, Action};
use crate::log::log;
use crate::reaper::Reaper;
use crate::session::{self, Sessions};
use crate::sys;
use crate::users;

/// Where the data disk is mounted in init mode.
pub const DATA_MOUNT: &str = "/data";

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the tiny image: owns mounts, modules, reaping, power.
    Init,
    /// A service in a full distribution: channel and exec only; powers off
    /// through systemd.
    Service,
}

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    PowerOff,
    /// Restart the guest inside the same QEMU.
    Reboot,
}

impl Ending {
    fn verb(self) -> &'static str {
        match self {
            Ending::PowerOff => "powering off",
            Ending::Reboot => "rebooting",
        }
    }
}

pub struct Agent {
    pub mode: Mode,
    pub flags: Flags,
    pub reaper: &'static Reaper,
    /// Environment of every command the agent runs, before request extras.
    pub base_env: Vec<(String, String)>,
    /// Whether ready was announced. Held while announcing and while
    /// answering a request, so that a host hears "ready" in a `Hello` reply
    /// only after the `Ready` announcement (if it heard that at all): a
    /// second `Ready` on one connection then always means a new boot.
    ready: Mutex<bool>,
    data_mounted: AtomicBool,
    /// What became of the data disk at boot (init mode only).
    data_disk: OnceLock<DataDisk>,
    /// Set by the first request to end the machine.
    ending: AtomicBool,
    channel: OnceLock<Channel>,
    /// The listening sockets, watched for the host's port forwards.
    ports: Watcher,
    /// Loopback listeners made reachable for those forwards.
    relays: Relays,
    /// Shares whose host side is gone (left out of the power-off).
    lost_shares: Mutex<std::collections::BTreeSet<String>>,
    /// Shares whose host changes are being raised (at most one thread
    /// each: a touch may wait on the host).
    raising: Mutex<std::collections::BTreeSet<String>>,
    /// Streaming sessions, once the channel is open.
    sessions: OnceLock<Arc<Sessions>>,
}

/// Session events go out on the channel.
struct ChannelOutbox(&'static Channel);

impl session::Outbox for ChannelOutbox {
    fn send(&self, message: &FromGuest) -> bool {
        self.0.send_bulk(message)
    }
}

impl Agent {
    pub fn new(
        mode: Mode,
        flags: Flags,
        reaper: &'static Reaper,
        base_env: Vec<(String, String)>,
    ) -> &'static Agent {
        Box::leak(Box::new(Agent {
            mode,
            flags,
            reaper,
            base_env,
            ready: Mutex::new(false),
            data_mounted: AtomicBool::new(false),
            data_disk: OnceLock::new(),
            ending: AtomicBool::new(false),
            channel: OnceLock::new(),
            ports: Watcher::new(),
            relays: Relays::new(),
            lost_shares: Mutex::new(std::collections::BTreeSet::new()),
            raising: Mutex::new(std::collections::BTreeSet::new()),
            sessions: OnceLock::new(),
        }))
    }

    /// Touch what changed on the host side of a share, in a thread of its
    /// own (a touch goes to the host, which may be slow or gone); one at a
    /// time per share, none on a share whose host side is gone.
    fn raise_host_changes(
        &'static self,
        id: u64,
        changes: vmkeep_protocol::host_changes::HostChanges,
    ) {
        let lock = |m: &'static Mutex<std::collections::BTreeSet<String>>| {
            m.lock().unwrap_or_else(|e| e.into_inner())
        };
        let tag = changes.tag.clone();
        let refusal = if lock(&self.lost_shares).contains(&tag) {
            Some(format!("the host's side of {tag} is gone"))
        } else if !lock(&self.raising).insert(tag.clone()) {
            Some(format!(
                "the changes of {tag} sent before are still being raised"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.reply(id, Reply::Error { message });
            return;
        }
        let started = self.answer_from_thread(id, "raise", move || {
            let body = match crate::host_changes::raise(&changes) {
                Ok(raised) => Reply::Raised(raised),
                Err(message) => Reply::Error { message },
            };
            lock(&self.raising).remove(&changes.tag);
            body
        });
        if !started {
            lock(&self.raising).remove(&tag);
        }
    }

    /// Answer request `id` with what `work` returns, worked out in a thread
    /// of its own (`what` names it); whether the thread started (if not, the
    /// answer says so).
    fn answer_from_thread(
        &'static self,
        id: u64,
        what: &str,
        work: impl FnOnce() -> Reply + Send + 'static,
    ) -> bool {
        let spawned = std::thread::Builder::new()
            .name(format!("{what}-{id}"))
            .spawn(move || self.reply(id, work()));
        if let Err(e) = &spawned {
            self.reply(
                id,
                Reply::Error {
                    message: format!("cannot start a thread for the {what}: {e}"),
                },
            );
        }
        spawned.is_ok()
    }

    /// Remember what became of the data disk, for the host.
    pub fn set_data_disk(&self, state: DataDisk) {
        if state.is_mounted() {
            self.data_mounted.store(true, Ordering::SeqCst);
        }
        let _ = self.data_disk.set(state);
    }

    /// Take the channel, and start taking sessions on it.
    pub fn set_channel(&'static self, channel: Channel) -> &'static Channel {
        let channel: &'static Channel = self.channel.get_or_init(|| channel);
        self.sessions.get_or_init(|| {
            Sessions::new(
                self.reaper,
                Arc::new(ChannelOutbox(channel)),
                session::Settings {
                    base_env: self.base_env.clone(),
                    tiny_image: self.mode == Mode::Init,
                    passwd: users::PASSWD.into(),
                    group: users::GROUP.into(),
                },
            )
        });
        channel
    }

    /// The host link is gone: its sessions end (see `session`).
    pub fn host_lost(&self) {
        if let Some(sessions) = self.sessions.get()
            && sessions.count() > 0
        {
            log!(
                "the host went away; hanging up its {} session(s)",
                sessions.count()
            );
            sessions.hang_up_all();
        }
    }

    /// Run a helper program (busybox, systemctl, ...) with the base environment.
    pub fn run_tool(&self, argv: &[&str]) -> Result<ExecResult, SpawnError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        exec::run(
            self.reaper,
            &exec::Spec {
                argv: &argv,
                env: self.base_env.clone(),
                cwd: None,
                stdin: b"",
            },
        )
    }

    pub fn info(&self) -> GuestInfo {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let uptime_secs = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| parse_uptime(&s))
            .unwrap_or(0.0);
        GuestInfo {
            kernel: sys::kernel_release(),
            boot_id,
            uptime_secs,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            data_mount: self
                .data_mounted
                .load(Ordering::SeqCst)
                .then(|| DATA_MOUNT.to_string()),
            data_disk: self.data_disk.get().cloned(),
        }
    }

    /// Print the ready marker, remember readiness, tell a connected host.
    pub fn announce_ready(&self) {
        crate::log::raw(vmkeep_protocol::kernel_flags::READY_MARKER);
        let mut ready = self.lock_ready();
        *ready = true;
        if let Some(channel) = self
            .channel
            .get()
            .filter(|channel| channel.host_connected())
        {
            channel.send(&FromGuest::Ready(self.info()));
        }
    }

    fn lock_ready(&self) -> MutexGuard<'_, bool> {
        // The release build aborts on panic: never poisoned in practice.
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reply(&self, id: u64, body: Reply) {
        if let Some(channel) = self.channel.get() {
            channel.send(&FromGuest::Reply { id, body });
        }
    }

    /// Handle one line from the host.
    pub fn handle_line(&'static self, line: &[u8]) {
        let request = match handler::parse(line) {
            Ok(HostMessage::Request(request)) => request,
            Ok(HostMessage::Session(frame)) => {
                if let Some(sessions) = self.sessions.get() {
                    sessions.handle(frame);
                }
                return;
            }
            Err(bad) => {
                log!("{}", bad.message);
                if let (Some(session), Some(sessions)) = (bad.session, self.sessions.get()) {
                    sessions.bad_frame(session, bad.op.as_deref(), bad.message);
                } else if let Some(id) = bad.id {
                    self.reply(
                        id,
                        Reply::Error {
                            message: bad.message,
                        },
                    );
                }
                return;
            }
        };
        let id = request.id;
        // Held until the reply is sent (see `ready`); the other actions
        // only start a thread while holding it.
        let ready = self.lock_ready();
        match handler::plan(request.op, *ready, self.flags, || self.info()) {
            Action::Reply(body) => self.reply(id, body),
            Action::Exec(exec_request) => {
                let spawned = std::thread::Builder::new()
                    .name(format!("exec-{id}"))
                    .spawn(move || {
                        let env = exec::merge_env(&self.base_env, &exec_request.env);
                        let spec = exec::Spec {
                            argv: &exec_request.argv,
                            env,
                            cwd: exec_request.cwd.as_deref(),
                            stdin: &exec_request.stdin,
                        };
                        let body = match exec::run(self.reaper, &spec) {
                            Ok(result) => Reply::Exec(result),
                            Err(e) => Reply::Error {
                                message: e.to_string(),
                            },
                        };
                        self.reply(id, body);
                    });
                if let Err(e) = spawned {
                    self.reply(
                        id,
                        Reply::Error {
                            message: format!("cannot start a thread for the command: {e}"),
                        },
                    );
                }
            }
            Action::ReadClock => self.reply(
                id,
                match sys::realtime_ns() {
                    Ok(realtime_ns) => Reply::Time(GuestTime { realtime_ns }),
                    Err(e) => Reply::Error {
                        message: format!("cannot read the clock: {e}"),
                    },
                },
            ),
            Action::AdjustClock(adjustment) => {
                let body = match sys::step_realtime(adjustment.delta_ns) {
                    Ok(realtime_ns) => Reply::ClockAdjusted(GuestTime { realtime_ns }),
                    Err(e) => Reply::Error {
                        message: format!(
                            "cannot step the clock by {} ns: {e}",
                            adjustment.delta_ns
                        ),
                    },
                };
                let stepped = matches!(body, Reply::ClockAdjusted(_));
                self.reply(id, body);
                // After the answer: the console is slow under emulation.
                if stepped {
                    log!(
                        "clock stepped by {:.3} s (host request)",
                        adjustment.delta_ns as f64 / 1e9
                    );
                }
            }
            Action::Mount(request) => {
                self.answer_from_thread(id, "mount", move || {
                    match crate::shares::mount(&request) {
                        Ok(mounted) => Reply::Mounted(mounted),
                        Err(message) => Reply::Error { message },
                    }
                });
            }
            Action::ShareLost(lost) => {
                let mounts = crate::shares::mounts_of(&lost.tag);
                log!(
                    "the host's {} is gone: what touches its {mounts} mount(s) waits until the VM restarts",
                    lost.tag
                );
                self.lost_shares
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(lost.tag);
                self.reply(id, Reply::ShareLost { mounts });
            }
            Action::WatchPorts => {
                let Some(channel) = self.channel.get() else {
                    return;
                };
                let now = self.ports.watch(
                    channel.generation(),
                    &self.relays,
                    move || channel.generation(),
                    move |listening| channel.send(&FromGuest::Ports(listening)),
                );
                self.reply(id, Reply::Ports(now));
            }
            Action::Expose(exposure) => {
                let exposed = self.relays.set(&exposure);
                for failure in &exposed.failed {
                    log!("cannot relay port {}: {}", failure.port, failure.error);
                }
                self.reply(id, Reply::Exposed(exposed));
            }
            Action::RaiseHostChanges(changes) => self.raise_host_changes(id, changes),
            Action::Poweroff { honoured } => {
                self.reply(id, Reply::PoweroffAccepted);
                if honoured {
                    let spawned = std::thread::Builder::new()
                        .name("poweroff".into())
                        .spawn(move || self.power_off("host-request"));
                    if let Err(e) = spawned {
                        log!(
                            "cannot start the power-off thread ({e}); powering off from the reader"
                        );
                        self.power_off("host-request");
                    }
                } else {
                    log!(
                        "power-off request ignored ({})",
                        vmkeep_protocol::kernel_flags::IGNORE_POWEROFF_REQUEST
                    );
                }
            }
        }
    }

    /// A press of the power button.
    pub fn power_button_pressed(&self) {
        if self.flags.ignore_power_button {
            log!(
                "power button pressed; ignored ({})",
                vmkeep_protocol::kernel_flags::IGNORE_POWER_BUTTON
            );
        } else {
            self.power_off("power-button");
        }
    }

    /// Power the machine off. Only the first request to end the machine
    /// acts; later ones return. In init mode this never returns to the
    /// first caller.
    pub fn power_off(&self, reason: &str) {
        self.end(Ending::PowerOff, reason);
    }

    /// End the machine the way `ending` says (see `power_off`).
    pub fn end(&self, ending: Ending, reason: &str) {
        if self.ending.swap(true, Ordering::SeqCst) {
            log!("already ending the machine; ignoring {reason}");
            return;
        }
        log!("{} ({reason})", ending.verb());
        match self.mode {
            Mode::Init => self.end_as_init(ending),
            Mode::Service => self.end_through_systemd(ending),
        }
    }

    fn end_as_init(&self, ending: Ending) {
        stop_all_processes();
        let lost = self
            .lost_shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // A sync reaches every file system, and one of a lost share would
        // never answer: then only the data disk is synced.
        let sync = || {
            if lost.is_empty() {
                sys::sync();
            } else {
                sys::syncfs(Path::new(DATA_MOUNT));
            }
        };
        sync();
        crate::shares::unmount_all(&lost);
        if self.data_mounted.load(Ordering::SeqCst) {
            let target = Path::new(DATA_MOUNT);
            if let Err(e) = sys::umount(target, 0) {
                log!("cannot unmount {DATA_MOUNT} ({e}); detaching it");
                if let Err(e) = sys::umount(target, libc::MNT_DETACH) {
                    log!("cannot detach {DATA_MOUNT}: {e}");
                }
            }
        }
        sync();
        let err = match ending {
            Ending::PowerOff => sys::power_off_now(),
            Ending::Reboot => sys::reboot_now(),
        };
        log!("reboot(2) failed: {err}; halting here");
        loop {
            std::thread::park();
        }
    }

    fn end_through_systemd(&self, ending: Ending) {
        let commands: [&[&str]; 2] = match ending {
            Ending::PowerOff => [&["systemctl", "poweroff"], &["poweroff"]],
            Ending::Reboot => [&["systemctl", "reboot"], &["reboot"]],
        };
        for argv in commands {
            match self.run_tool(argv) {
                Ok(result) if result.exit_code == 0 => return,
                Ok(result) => log!(
                    "`{}` exited with {}: {}",
                    argv.join(" "),
                    result.exit_code,
                    String::from_utf8_lossy(&result.stderr).trim()
                ),
                Err(e) => log!("cannot run `{}`: {e}", argv.join(" ")),
            }
        }
        log!("could not end the machine; the host will have to stop it");
        // Let a later request try again.
        self.ending.store(false, Ordering::SeqCst);
    }
}

/// SIGTERM every other process, give them a second to exit (the reaper
/// collects them), then SIGKILL what is left.
fn stop_all_processes() {
    let _ = sys::kill(-1, libc::SIGTERM);
    if !wait_for_no_processes(Duration::from_secs(1)) {
        log!(
            "{} processes ignored SIGTERM; killing them",
            user_processes().len()
        );
        let _ = sys::kill(-1, libc::SIGKILL);
        wait_for_no_processes(Duration::from_millis(500));
    }
}

fn wait_for_no_processes(timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if user_processes().is_empty() {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids of user-space processes other than this one (zombies included).
fn user_processes() -> Vec<i32> {
    let me = sys::getpid();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
        })
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| is_user_process(&stat))
        })
        .collect()
}

/// PF_KTHREAD in the `flags` field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether a /proc/PID/stat line describes a user-space process (not a
/// kernel thread). The command name may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn is_user_process(stat: &str) -> bool {
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    // After the name: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let flags = stat[close + 1..]
        .split_ascii_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok());
    matches!(flags, Some(flags) if flags & PF_KTHREAD == 0)
}

/// The first number in /proc/uptime.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_are_told_from_user_processes() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0";
        let user = "57 (sh) S 1 57 57 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 300 1 2";
        let tricky = "58 (a) b (c) Z 1 58 58 0 -1 4194564 0 0";
        assert!(!is_user_process(kthread));
        assert!(is_user_process(user));
        assert!(is_user_process(tricky));
        assert!(!is_user_process("garbage"));
    }

    #[test]
    fn uptime_is_the_first_field() {
        assert_eq!(parse_uptime("12.34 20.00\n"), Some(12.34));
        assert_eq!(parse_uptime(""), None);
    }
}
