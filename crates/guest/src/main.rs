//! vmkeep's guest agent.
//!
//! As PID 1 of the built-in tiny image ("init mode") it mounts the basics,
//! loads the virtio modules, watches the power button, mounts the data disk,
//! reaps every process and answers the host over virtio-serial. Started any
//! other way ("service mode", a systemd service in a cloud image) it only
//! answers the host, and powers off through systemd.
//!
//! PID 1 must never exit: every error is logged and the agent carries on;
//! a panic (the release build aborts) powers the machine off first.
//!
//! With `--copy-out` or `--copy-in` it is neither: a command of its own that
//! copies files (see `copy_mode`), which the host runs in a session; with
//! `--connect-unix` one that relays a forwarded socket (`relay_mode`).

mod agent;
mod boot;
mod channel;
mod copy_mode;
mod disk;
mod exec;
mod flags;
mod handler;
mod host_changes;
mod init_signals;
mod input;
mod log;
mod net;
mod ports;
mod pty;
mod reaper;
mod relay_mode;
mod session;
mod shares;
mod spawn;
mod sys;
mod users;

use std::time::Duration;

use agent::{Agent, Mode};
use channel::Channel;
use flags::Flags;
use log::log;
use reaper::Reaper;

/// virtio device id of a console (virtio-serial) device.
const VIRTIO_ID_CONSOLE: u32 = 3;

fn main() {
    // `--copy-out` / `--copy-in`: a command the host runs in a session.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = copy_mode::run(&args).or_else(|| relay_mode::run(&args)) {
        std::process::exit(code);
    }
    let mode = if sys::getpid() == 1 {
        Mode::Init
    } else {
        Mode::Service
    };
    if mode == Mode::Init {
        boot::ensure_std_fds();
    }
    install_panic_hook(mode);
    match mode {
        Mode::Init => run_init(),
        Mode::Service => run_service(),
    }
}

fn install_panic_hook(mode: Mode) {
    std::panic::set_hook(Box::new(move |info| {
        log!("fatal: {info}");
        if mode == Mode::Init {
            log!("powering off (fatal error)");
            sys::sync();
            let err = sys::power_off_now();
            log!("reboot(RB_POWER_OFF) failed: {err}");
        }
    }));
}

/// The reaper is essential; without it, as PID 1, power off.
fn start_reaper(mode: Mode) -> &'static Reaper {
    match Reaper::global() {
        Ok(reaper) => reaper,
        Err(e) => {
            log!("fatal: cannot start the reaper thread: {e}");
            if mode == Mode::Init {
                sys::sync();
                let err = sys::power_off_now();
                log!("reboot(RB_POWER_OFF) failed: {err}");
            }
            halt_forever()
        }
    }
}

fn halt_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn run_init() -> ! {
    log!(
        "starting (init mode, version {})",
        env!("CARGO_PKG_VERSION")
    );
    boot::mount_early();
    // Now that devtmpfs is mounted, a missing console can be opened.
    boot::ensure_std_fds();
    let flags = Flags::from_proc();
    boot::set_hostname(flags.hostname);
    boot::write_user_database();
    // Before the first thread, so that every thread inherits the mask.
    if let Err(e) = init_signals::block() {
        log!("cannot block the halt/poweroff/reboot signals: {e}");
    }
    let reaper = start_reaper(Mode::Init);
    let base_env = exec::merge_env(
        &inherited_env(),
        &[
            ("PATH".into(), exec::DEFAULT_PATH.into()),
            ("HOME".into(), "/root".into()),
        ],
    );
    let agent = Agent::new(Mode::Init, flags, reaper, base_env);
    if let Err(e) =
        init_signals::watch(move |ending| agent.end(ending, "asked from inside the guest"))
    {
        log!("cannot watch for halt/poweroff/reboot: {e}; use their -f option");
    }

    boot::install_busybox(agent);
    boot::load_modules();
    net::configure(flags.hostname.as_ref().map(|name| name.as_str()));
    boot::watch_power_button(agent);
    agent.set_data_disk(boot::mount_data_disk(agent));
    if flags.poweroff_at_boot {
        agent.power_off("poweroff-at-boot");
    }

    let channel = if disk::virtio_device_present(
        std::path::Path::new(disk::SYS_VIRTIO_DEVICES),
        VIRTIO_ID_CONSOLE,
    ) {
        open_channel(Duration::from_secs(5))
    } else {
        log!("no virtio-serial device; the host agent cannot reach this guest");
        None
    };
    let channel = channel.map(|channel| agent.set_channel(channel));
    agent.announce_ready();
    match channel {
        Some(channel) => channel.serve(
            |line| agent.handle_line(line),
            || log!("dropped a request line over the size limit"),
            || agent.host_lost(),
        ),
        None => halt_forever(),
    }
}

fn run_service() -> ! {
    log!(
        "starting (service mode, version {})",
        env!("CARGO_PKG_VERSION")
    );
    let reaper = start_reaper(Mode::Service);
    let mut base_env = inherited_env();
    if !base_env.iter().any(|(key, _)| key == "PATH") {
        base_env.push(("PATH".into(), exec::DEFAULT_PATH.into()));
    }
    let agent = Agent::new(Mode::Service, Flags::from_proc(), reaper, base_env);
    // In a full distribution the virtio modules may load late, and the port
    // may be held by another opener: keep trying, logging each new problem once.
    let mut last_problem = String::new();
    let channel = loop {
        let problem =
            match channel::wait_for_port(vmkeep_protocol::PORT_NAME, Duration::from_secs(5)) {
                None => format!(
                    "no virtio-serial port named {} yet; still waiting",
                    vmkeep_protocol::PORT_NAME
                ),
                Some(path) => match Channel::open(&path) {
                    Ok(channel) => break channel,
                    Err(e) => format!("cannot open {}: {e}; retrying", path.display()),
                },
            };
        if problem != last_problem {
            log!("{problem}");
            last_problem = problem;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    log!("listening on {}", channel.path().display());
    let channel = agent.set_channel(channel);
    // "Ready" means usable: in a cloud image, only once cloud-init finished
    // (users, keys, provision scripts). Serve meanwhile, so the host's
    // `hello` learns "not ready yet" instead of hearing nothing.
    let waiter = std::thread::Builder::new()
        .name("cloud-init-wait".into())
        .spawn(move || {
            wait_for_cloud_init(agent);
            agent.announce_ready();
        });
    if let Err(e) = waiter {
        log!("cannot start the cloud-init waiter ({e}); ready now");
        agent.announce_ready();
    }
    channel.serve(
        |line| agent.handle_line(line),
        || log!("dropped a request line over the size limit"),
        || agent.host_lost(),
    )
}

/// Wait until cloud-init (if the guest has it) has finished this boot.
/// Its verdict is logged; an error in a user's provision script still ends
/// the wait (the guest is usable, and the host agent's log says what failed).
fn wait_for_cloud_init(agent: &Agent) {
    let Some(cloud_init) = ["/usr/bin/cloud-init", "/usr/local/bin/cloud-init"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        return;
    };
    log!("waiting for cloud-init to finish");
    loop {
        match agent.run_tool(&[cloud_init, "status", "--wait"]) {
            Ok(result) => {
                let said = String::from_utf8_lossy(&result.stdout);
                log!(
                    "cloud-init finished (exit {}): {}",
                    result.exit_code,
                    said.trim().replace('\n', "; ")
                );
                return;
            }
            Err(e) => {
                log!("cannot run `cloud-init status --wait`: {e}; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
}

/// The agent's own environment, lossily as text (the kernel hands unknown
/// command-line words to init as environment variables; `std::env::vars`
/// would panic on one that is not UTF-8).
fn inherited_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(key, value)| {
            (
                key.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// Find and open the agent's port, waiting up to `timeout` for it.
fn open_channel(timeout: Duration) -> Option<Channel> {
    let Some(path) = channel::wait_for_port(vmkeep_protocol::PORT_NAME, timeout) else {
        log!(
            "no virtio-serial port named {} appeared",
            vmkeep_protocol::PORT_NAME
        );
        return None;
    };
    match Channel::open(&path) {
        Ok(channel) => {
            log!("listening on {}", channel.path().display());
            Some(channel)
        }
        Err(e) => {
            log!("cannot open {}: {e}", path.display());
            None
        }
    }
}
