//! The command line: one file per verb; this file only defines the verbs and
//! dispatches.

mod autostart;
mod create;
mod daemon;
mod delete;
mod events;
mod list;
mod progress;
mod shell;
mod ssh;
mod start;
mod stop;
// Minimal, for the suspend tests; see the file.
mod suspend;
mod util;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::instance::InstanceName;
use crate::instance::config::Timeout;

/// Run Linux VMs on QEMU and own their whole lifecycle.
///
/// Instances live in $VMKEEP_HOME (default ~/.vmkeep); downloads and built
/// images in $VMKEEP_CACHE_DIR (default ~/.cache/vmkeep).
#[derive(Debug, Parser)]
#[command(name = "vmkeep", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create an instance (config and data disk) without starting it.
    Create(CreateArgs),
    /// Start an instance (creating "default" if it does not exist) and wait until it is ready.
    Start(StartArgs),
    /// Stop an instance: ACPI power-off, then the guest agent, then a hard stop at the deadline.
    Stop(StopArgs),
    /// List instances and their status.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Run a command in a running instance; its exit code becomes vmkeep's.
    /// Cloud images: an ssh session as the instance's user (interactive without a command).
    Shell(ShellArgs),
    /// Print an ssh config block for a running cloud-image instance.
    SshConfig(SshConfigArgs),
    /// Delete an instance and its disk.
    #[command(alias = "rm")]
    Delete(DeleteArgs),
    /// Supervise every instance whose config sets `runStrategy` (runs in the foreground).
    Daemon(DaemonArgs),
    /// Show lifecycle events (started, running, stopped with reason, adopted, repaired, ...).
    Events(EventsArgs),
    /// Have systemd or launchd start an instance at login or boot.
    Autostart(autostart::AutostartArgs),
    /// Save a running instance's state to disk and end its QEMU; `start` resumes it.
    Suspend(SuspendArgs),
}

#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// Instance name.
    pub name: InstanceName,
    /// How long the save may take (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Stop the instance (the normal stop ladder) when its state cannot be saved.
    #[arg(long)]
    pub or_stop: bool,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Instance name: ASCII letters, digits, '-' and '_'.
    pub name: InstanceName,
    /// YAML config to create it from, or a built-in template: tiny (the
    /// default, offline), debian-12, ubuntu-24.04, fedora-42.
    #[arg(long, value_name = "FILE|NAME")]
    pub template: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Instance name (default: "default").
    pub name: Option<InstanceName>,
    /// Run the host agent in this process until the VM stops (what a service manager runs).
    #[arg(long)]
    pub foreground: bool,
    /// Check and repair the data disk (/data) with `e2fsck -f -y` in the guest before
    /// mounting it: every fix is accepted, a damaged superblock is restored from a backup
    /// copy, and what e2fsck cannot place goes to /data/lost+found.
    #[arg(long)]
    pub repair_data: bool,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Instance name (default: "default").
    pub name: Option<InstanceName>,
    /// Skip the graceful steps: end the VM at once and clean its runtime files.
    #[arg(long, short)]
    pub force: bool,
    /// Graceful-stop deadline, e.g. 10s or 2m (default: the instance's stopTimeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON for machines.
    #[arg(long)]
    pub json: bool,
    /// Only these instances.
    pub names: Vec<InstanceName>,
}

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// Instance name.
    pub name: InstanceName,
    /// Command and arguments to run in the guest (after `--`). Required for
    /// the tiny image; cloud images open an interactive ssh session without one.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    pub workdir: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SshConfigArgs {
    /// Instance name.
    pub name: InstanceName,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Instance names.
    #[arg(required = true)]
    pub names: Vec<InstanceName>,
    /// Stop a running instance forcibly first.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub action: Option<DaemonAction>,
    /// Starts allowed within --start-limit-interval before the daemon gives up on an instance.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub start_limit_burst: u32,
    /// Window for --start-limit-burst.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub start_limit_interval: Duration,
    /// Delay before a second restart; doubles with each further one.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay: Duration,
    /// Longest delay between restarts.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay_max: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Install and start the daemon as a systemd user unit (stop timeout from the longest stopTimeout).
    Install {
        /// Print the unit and where it would go; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this instance.
    pub name: Option<InstanceName>,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line (with an "instance" field).
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write it like 500ms, 10s or 5m"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    Timeout::parse(text).map(|t| t.0)
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.verb {
        Verb::Create(args) => create::run(args),
        Verb::Start(args) => start::run(args),
        Verb::Stop(args) => stop::run(args),
        Verb::List(args) => list::run(args),
        Verb::Shell(args) => shell::run(args),
        Verb::SshConfig(args) => ssh::print_config(&args.name),
        Verb::Delete(args) => delete::run(args),
        Verb::Daemon(args) => daemon::run(args),
        Verb::Events(args) => events::run(args),
        Verb::Autostart(args) => autostart::run(args),
        Verb::Suspend(args) => suspend::run(args),
    }
}
