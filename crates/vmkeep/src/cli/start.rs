//! `vmkeep start [NAME] [--foreground]`

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, bail};

use super::StartArgs;
use super::progress::Progress;
use super::util;
use crate::home;
use crate::hostagent;
use crate::hostagent::report::Report;
use crate::instance::config::{DEFAULT_TEMPLATE, RunStrategy};
use crate::instance::desired::{self, Desired};
use crate::instance::status::Broken;
use crate::instance::{Config, InstanceDir, InstanceName, Status};
use crate::os;

pub fn run(args: StartArgs) -> anyhow::Result<i32> {
    // A template argument (FILE.yaml, template:NAME, URL) creates the instance first.
    let name = super::create::start_target(args.name.as_deref(), args.instance_name.clone())?;
    let dir = util::layout(&name)?;
    if !dir.dir().is_dir() {
        if name != InstanceName::default_instance() {
            bail!("there is no instance {name}; create it with `vmkeep create {name}`");
        }
        crate::instance::create::create(
            &home::instances_root()?,
            &name,
            DEFAULT_TEMPLATE,
            "the built-in template",
        )?;
        eprintln!("created instance {name} from the built-in template");
    }
    let config = Config::load(&dir.config()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.run_strategy == Some(RunStrategy::Halted) {
        bail!(
            "{name} has runStrategy: halted, so it is kept stopped; change runStrategy in {} to start it",
            dir.config().display()
        );
    }
    desired::write(&dir, Desired::Running)
        .with_context(|| format!("cannot record the desired state in {}", dir.dir().display()))?;
    if !args.foreground
        && let Some(code) = super::autostart::start_hook(&dir)?
    {
        return Ok(code);
    }

    // Run by another host agent: this process has nothing to supervise. A
    // service manager waiting for readiness hears so, and sees a clean exit.
    let run_elsewhere = || {
        if args.foreground {
            os::service_notify::ready(&format!(
                "{name} is run by another host agent; nothing to supervise"
            ));
        }
    };
    match util::status_of(&dir)? {
        Status::Running => {
            eprintln!("{name} is already running");
            run_elsewhere();
            return Ok(0);
        }
        Status::Starting => {
            eprintln!("{name} is already starting; waiting until it runs");
            let code = wait_until_running(&dir, config.boot_timeout.0)?;
            run_elsewhere();
            return Ok(code);
        }
        Status::Stopping => {
            eprintln!("{name} is stopping; waiting to start it again");
            let limit = config.stop_timeout.0 + Duration::from_secs(15);
            let status = util::wait_for_status(&dir, limit, |s| !matches!(s, Status::Stopping))?;
            if matches!(status, Status::Stopping) {
                bail!(
                    "{name} is still stopping after {}; try `vmkeep stop --force {name}`",
                    util::seconds(limit)
                );
            }
        }
        Status::Broken(broken) if !broken.repairable() => {
            bail!(
                "{name} is broken: {}\n  {}",
                broken.message(),
                broken.hint().replace("NAME", name.as_str())
            );
        }
        Status::Broken(Broken::QemuGone { .. }) => {
            util::wait_for_status(&dir, Duration::from_secs(10), |s| {
                !matches!(s, Status::Broken(Broken::QemuGone { .. }))
            })?;
        }
        Status::Broken(_) | Status::Stopped => {}
    }

    // Build or find the image here, where the user sees the progress.
    let progress = Progress::new();
    let kernel_override =
        config
            .kernel
            .path
            .as_ref()
            .map(|kernel| crate::image::tiny::KernelOverride {
                kernel: kernel.0.clone(),
                modules_dir: config.kernel.modules.as_ref().map(|m| m.0.clone()),
            });
    // Cloud images were fetched by `create`; only the tiny image is built here.
    if !config.is_cloud() {
        crate::image::tiny::ensure(
            &home::cache_root()?,
            kernel_override.as_ref(),
            &mut |message| progress.step(message),
        )?;
    }

    if args.foreground {
        progress.finish();
        // Become the host agent: the same pid, so a service manager that
        // started `vmkeep start NAME --foreground` supervises the agent itself.
        let agent = hostagent::binary::path()?;
        let error = os::process::exec_replace(&agent, &hostagent::binary::args(&name, true));
        bail!("cannot run the host agent {}: {error}", agent.display());
    }
    start_detached(&dir, &config, &progress)
}

/// Spawn a detached host agent and follow its reports until it is ready.
fn start_detached(dir: &InstanceDir, config: &Config, progress: &Progress) -> anyhow::Result<i32> {
    let name = dir.name();
    let (read_end, write_end) = os::process::pipe()?;
    let log = os::fs::open_append(&dir.agent_log())
        .with_context(|| format!("cannot open {}", dir.agent_log().display()))?;
    let agent = os::process::spawn_detached(
        &hostagent::binary::path()?,
        &hostagent::binary::args(name, false),
        os::process::Output::Pipe(write_end),
        log,
    )
    .context("cannot spawn the host agent")?;
    progress.step(&format!("starting {name} (host agent pid {})", agent.pid()));
    let reader = std::io::BufReader::new(std::fs::File::from(read_end));
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Progress { message }) => progress.step(&message),
            Ok(Report::Ready { info }) => {
                progress.finish();
                let qemu = info
                    .qemu_pid
                    .map(|p| format!(", QEMU pid {p}"))
                    .unwrap_or_default();
                let accel = info.accel.map(|a| format!(", {a}")).unwrap_or_default();
                println!(
                    "{name} is running (host agent pid {}{qemu}{accel})",
                    info.agent_pid
                );
                // The template's `message:` (Lima shows it after start).
                if let Some(message) = super::list::start_message(dir) {
                    println!("{}", message.trim_end());
                }
                return Ok(0);
            }
            Ok(Report::Failed { error }) => {
                progress.finish();
                bail!(
                    "{name} did not start: {error}\n  host agent log: {}",
                    dir.agent_log().display()
                );
            }
            Ok(Report::AlreadyRunning { .. }) => {
                progress.finish();
                eprintln!(
                    "{name} is already being started by another host agent; waiting until it runs"
                );
                return wait_until_running(dir, config.boot_timeout.0);
            }
            Err(_) => tracing::debug!("host agent said: {line}"),
        }
    }
    progress.finish();
    let outcome = agent
        .wait_timeout(Duration::from_secs(5))
        .then(|| agent.reap());
    bail!(
        "the host agent of {name} exited without reporting ({}); its log {} ends with:\n{}",
        outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "still running".into()),
        dir.agent_log().display(),
        crate::driver::qemu::tail(&dir.agent_log(), 10)
    )
}

fn wait_until_running(dir: &InstanceDir, limit: Duration) -> anyhow::Result<i32> {
    let status = util::wait_for_status(dir, limit, |s| !matches!(s, Status::Starting))?;
    match status {
        Status::Running => {
            println!("{} is running", dir.name());
            Ok(0)
        }
        other => bail!("{} did not come up: it is {}", dir.name(), describe(&other)),
    }
}

pub fn describe(status: &Status) -> String {
    match status {
        Status::Broken(broken) => format!("Broken: {}", broken.message()),
        other => other.word().to_string(),
    }
}
