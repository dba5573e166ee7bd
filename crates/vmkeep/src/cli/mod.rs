//! The command line: one file per verb; this file only defines the verbs and
//! dispatches.

mod autostart;
mod clone;
mod copy;
mod create;
mod daemon;
mod delete;
mod edit;
mod error;
mod events;
mod import;
mod list;
mod progress;
mod restart;
mod shell;
mod ssh;
mod start;
mod stop;
// Minimal, for the suspend tests; see the file.
mod suspend;
mod upgrade;
mod util;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::instance::InstanceName;
use crate::instance::config::Timeout;

/// Run Linux VMs on QEMU and own their whole lifecycle.
///
/// Instances live in $VMKEEP_HOME (default ~/.vmkeep); downloads and built
/// images in $VMKEEP_CACHE_DIR (default ~/.cache/vmkeep).
#[derive(Debug, Parser)]
#[command(name = "vmkeep", version = crate::formats::LONG_VERSION, about, long_about = None, propagate_version = true)]
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
    /// Run a command in a running instance (or a login shell on a pty without
    /// one); its exit code becomes vmkeep's. Cloud images: as the instance's user.
    Shell(ShellArgs),
    /// Copy files and directories between the host and a running instance
    /// (NAME:PATH on one side).
    #[command(alias = "cp")]
    Copy(CopyArgs),
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
    /// Move running instances' host agents onto the vmkeep-hostagent installed now, in place (the VMs run on);
    /// with `--qemu NAME...`, onto the QEMU installed now (suspend, then resume on it: same guest boot).
    Upgrade(UpgradeArgs),
    /// Change an instance's config: Lima's edit flags, or $EDITOR on a copy
    /// (checked before it replaces vmkeep.yaml).
    Edit(EditArgs),
    /// Stop instances by their ladder, then start them again.
    Restart(RestartArgs),
    /// Copy a stopped instance into a new, independent one (own disk, name,
    /// ssh port; a fresh machine identity at its first boot).
    Clone(CloneArgs),
    /// Make an instance from a stopped Lima instance of $LIMA_HOME (default
    /// ~/.lima), its disks copied: the Lima instance is left as it was.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The instance to copy (stopped).
    pub source: InstanceName,
    /// The new instance's name.
    pub target: InstanceName,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The Lima instance's name (a directory of $LIMA_HOME).
    pub name: String,
    /// The new instance's name (default: the Lima instance's).
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<InstanceName>,
}

/// Lima's edit flags, as `create`, `start` and `edit` take them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EditFlagArgs {
    /// Number of virtual CPUs.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Guest memory in GiB, as Lima takes it (4, 0.5), or with a unit (512MiB).
    #[arg(long, value_name = "GIB")]
    pub memory: Option<String>,
    /// Disk size in GiB (or with a unit); a larger one grows the disk at the
    /// next start, data kept; a smaller one is refused.
    #[arg(long, value_name = "GIB")]
    pub disk: Option<String>,
    /// Share a host directory, at the same path in the guest; `:w` makes it
    /// writable (repeat, or separate with commas). Put before the config's own.
    #[arg(long = "mount", value_name = "DIR[:w]", value_delimiter = ',')]
    pub mounts: Vec<String>,
    /// Make every shared directory writable.
    #[arg(long)]
    pub mount_writable: bool,
    /// Forward a host port to a guest port (repeat); Lima's `,static=true` is accepted.
    #[arg(long = "port-forward", value_name = "HOST:GUEST[,static=true]")]
    pub port_forwards: Vec<String>,
    /// Change the config with yq assignments, `.a.b = VALUE` joined by `|` (repeat).
    #[arg(long, value_name = "YQ")]
    pub set: Vec<String>,
    /// Set a template parameter ({{.Param.KEY}}; `edit` and `start` take only
    /// the config's own params).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

impl EditFlagArgs {
    /// The flags, for the engine.
    pub fn flags(&self) -> crate::instance::edit_flags::EditFlags {
        crate::instance::edit_flags::EditFlags {
            cpus: self.cpus.clone(),
            memory: self.memory.clone(),
            disk: self.disk.clone(),
            mounts: self.mounts.clone(),
            mount_writable: self.mount_writable,
            port_forwards: self.port_forwards.clone(),
            set: self.set.clone(),
            params: self.params.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// Instance name (default: "default").
    pub name: Option<InstanceName>,
    #[command(flatten)]
    pub flags: EditFlagArgs,
    /// Change a running instance too: save the change, then restart it (its
    /// stop ladder, then a start).
    #[arg(long)]
    pub restart: bool,
    /// Start it after the change (when it is not running).
    #[arg(long, conflicts_with = "restart")]
    pub start: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Instance names (default: "default"); several restart in parallel.
    pub names: Vec<InstanceName>,
    /// End the VM at once instead of by its ladder, then start it.
    #[arg(long, short)]
    pub force: bool,
    /// Graceful-stop deadline, e.g. 10s or 2m (default: the instance's stopTimeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Instance names (default: every running instance of VMKEEP_HOME);
    /// several move in parallel.
    pub names: Vec<InstanceName>,
    /// How long each may take (default 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Print a JSON array, one object per instance with its exit code.
    #[arg(long)]
    pub json: bool,
    /// Move each instance named onto the QEMU a start would launch now
    /// (VMKEEP_QEMU, else PATH) through the suspend path, instead of its
    /// host agent onto the installed vmkeep; refused, the VM running on,
    /// when its state would not load there.
    #[arg(long, conflicts_with_all = ["timeout", "json"])]
    pub qemu: bool,
}

#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// Instance names; several suspend in parallel.
    #[arg(required = true)]
    pub names: Vec<InstanceName>,
    /// How long the save may take (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Stop the instance (the normal stop ladder) when its state cannot be saved.
    #[arg(long)]
    pub or_stop: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = CONFIG_FIELDS)]
pub struct CreateArgs {
    /// A template (Lima's form: FILE.yaml, template:NAME, an http(s) URL,
    /// or `-` for standard input; the instance is named after the file
    /// unless --name says otherwise), or an instance name (vmkeep's form;
    /// the template is then --template, or the built-in tiny image).
    #[arg(value_name = "TEMPLATE|NAME", value_parser = parse_target)]
    pub target: Option<String>,
    /// Instance name: ASCII letters, digits, '-', '_' and '.' (default: from
    /// the template's file name, or "default").
    #[arg(long)]
    pub name: Option<InstanceName>,
    /// The template, when the argument is the instance name: a file, or a
    /// built-in template (tiny, debian-12, ubuntu-24.04, fedora-42, and
    /// Lima's names default, ubuntu, debian, fedora).
    #[arg(long, value_name = "FILE|NAME")]
    pub template: Option<String>,
    #[command(flatten)]
    pub flags: EditFlagArgs,
    /// Make the instance from a stopped Lima instance's directory (its
    /// lima.yaml and disks, copied; see `vmkeep import`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["target", "template", "dry_run"])]
    pub from_lima: Option<std::path::PathBuf>,
    /// Resolve and check the template, print the config the instance would
    /// store and what is not applied; create nothing, download nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse fields vmkeep does not know (exit 4), instead of noting and
    /// ignoring them as Lima does; with --dry-run, a validation.
    #[arg(long)]
    pub strict: bool,
}

/// The fields of `vmkeep.yaml`, shown by `vmkeep create --help`.
const CONFIG_FIELDS: &str = "\
Config fields (vmkeep.yaml; Lima's names, README.md \"Coming from Lima\" says what maps):
  vmType: qemu            arch: x86_64|aarch64|default cpus: N
  memory: 2GiB            disk: 20GiB              accel: auto|kvm|hvf|tcg
  stopTimeout: 30s        bootTimeout: 180s        runStrategy: always|on-failure|manual|halted
  onHostShutdown: poweroff|suspend                 kernel: {path, modules, cmdline} (tiny image)
  images: [{location, arch, digest, kernel, initrd, variant, archVariant}]
  provision: [{mode: system|user|boot|dependency|data|yq, script | file | path+content ...}]
  probes: [{script, description, hint}]            (start waits until they pass)
  base: template:NAME | PATH | URL | [...]         (merged when the instance is created)
  param: {KEY: VALUE}     env: {KEY: VALUE}        message: TEXT (shown after start)
  ssh: {localPort, loadDotSSHPubKeys, forwardAgent, forwardX11}
  user: {name, comment, uid, home, shell, passwordlessSudo}
  caCerts: {removeDefaults, files, certs}
  upgradePackages         timezone                 hostResolver: {hosts}
  mounts: [{location, mountPoint, writable}]       mountInotify (virtio-fs)
  portForwards: [{guestPort(Range), hostPort(Range), guestIP, hostIP, proto, ignore, static}
                 | {guestSocket, hostSocket}]  (a unix socket, 0600, relayed to the guest's)
  copyToHost: [{guest, host, deleteOnStop, skipIfMissing}]  (copied before start returns)
  minimumLimaVersion, containerd: {system, user} (the guest's own packages),
  a field vmkeep does not know: noted and ignored (--strict refuses it)";

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Instance names (default: "default"; several start in parallel), or a
    /// template to create one from first (FILE.yaml, template:NAME, URL;
    /// named after the file).
    #[arg(value_name = "NAME|TEMPLATE", value_parser = parse_target)]
    pub names: Vec<String>,
    /// Name of the instance created from a template argument.
    #[arg(long = "name", value_name = "NAME")]
    pub instance_name: Option<InstanceName>,
    /// Run the host agent in this process until the VM stops (what a service manager runs).
    #[arg(long)]
    pub foreground: bool,
    /// Check and repair the data disk (/data) with `e2fsck -f -y` in the guest before
    /// mounting it: every fix is accepted, a damaged superblock is restored from a backup
    /// copy, and what e2fsck cannot place goes to /data/lost+found.
    #[arg(long)]
    pub repair_data: bool,
    /// Throw away a suspended instance's saved state and boot afresh: what
    /// was in the guest's memory is lost, its disks keep what was written.
    #[arg(long)]
    pub discard_state: bool,
    /// Change the config first (Lima's edit flags; not while it runs).
    #[command(flatten)]
    pub flags: EditFlagArgs,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Instance names (default: "default"); several stop in parallel, each
    /// under its own deadline.
    pub names: Vec<InstanceName>,
    /// Skip the graceful steps: end the VM at once and clean its runtime files.
    #[arg(long, short)]
    pub force: bool,
    /// Graceful-stop deadline, e.g. 10s or 2m (default: the instance's stopTimeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print a JSON array for machines (vmkeep's keys; see --format json for Lima's).
    #[arg(long, conflicts_with_all = ["format", "quiet"])]
    pub json: bool,
    /// table (default), json (one object per line, Lima's keys, sizes in
    /// bytes), yaml, or a Go template such as '{{.Name}} {{.Status}}'
    /// (fields: Name Status Dir VMType Arch CPUs Memory Disk SSHLocalPort
    /// SSHConfigFile HostAgentPID DriverPID Message HostOS HostArch VMkeepHome).
    #[arg(long, short = 'f', value_name = "FORMAT", conflicts_with = "quiet")]
    pub format: Option<String>,
    /// Only the names, one per line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Only these instances (a name that does not exist is an error).
    pub names: Vec<InstanceName>,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = SHELL_HELP)]
pub struct ShellArgs {
    /// Instance name.
    pub name: InstanceName,
    /// Command and arguments to run in the guest: everything after NAME (a
    /// `--` before it is allowed). None: the user's login shell on a pty.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
    /// Working directory in the guest (default: the host's current
    /// directory's path when it is inside a shared directory, else the home).
    #[arg(long)]
    pub workdir: Option<String>,
    /// The shell to run the command with (or to log in with), instead of the
    /// user's login shell, e.g. /bin/bash.
    #[arg(long)]
    pub shell: Option<String>,
    /// Force a pty (as `ssh -t` and `docker exec -t`).
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never a pty, even for an interactive shell (as `ssh -T`).
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,
}

const SHELL_HELP: &str = "\
Exit codes: the command's own; 128+N for a command killed by signal N; 127 or 126
for a command not found or not executable; 255 when the session broke (the guest
link was lost, the host agent went away), with a message; 5 when the instance is
not running. SIGINT, SIGTERM, SIGHUP and SIGQUIT to vmkeep go to the command.
Invoked as `lima` (a symlink or copy of vmkeep), vmkeep runs
`vmkeep shell ${LIMA_INSTANCE:-default} ARGS...`, as Lima's `lima` does.";

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Copy directories with everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Sources, then the destination; exactly one side is NAME:PATH (relative
    /// guest paths are in the user's home; the tiny image's: in /).
    #[arg(required = true, num_args = 2.., value_name = "SRC... DST")]
    pub paths: Vec<String>,
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
    /// Stop a running instance forcibly first; a name that does not exist is
    /// not an error; a directory vmkeep did not make is deleted too.
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
    /// Internal: the daemon's lock, kept across its in-place upgrade.
    #[arg(long, hide = true, value_name = "FD")]
    pub inherited_lock: Option<i32>,
    /// Internal: how many in-place upgrades this daemon went through.
    #[arg(long, hide = true, default_value_t = 0, value_name = "N")]
    pub generation: u64,
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

/// A template locator, or else a valid instance name (checked here, so that
/// a bad name is a command-line error like any other).
fn parse_target(text: &str) -> Result<String, String> {
    if crate::template::locator::looks_like_locator(text) {
        return Ok(text.to_string());
    }
    text.parse::<InstanceName>()
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write it like 500ms, 10s or 5m"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    Timeout::parse(text).map(|t| t.0)
}

pub use self::error::{CliError, ExitCode};

/// The command line as vmkeep reads it: invoked as `lima` (a symlink or a
/// copy named so), Lima's `lima ARGS...` is `vmkeep shell
/// ${LIMA_INSTANCE:-default} ARGS...`; any other name leaves it as it is.
pub fn lima_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let invoked_as = args
        .first()
        .and_then(|argv0| std::path::Path::new(argv0).file_name())
        .map(|name| name.to_os_string());
    if invoked_as.as_deref() != Some(std::ffi::OsStr::new("lima")) {
        return args;
    }
    let instance = std::env::var_os("LIMA_INSTANCE")
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".into());
    let rest = args.split_off(1);
    let mut shell: Vec<std::ffi::OsString> = vec!["vmkeep".into(), "shell".into(), instance];
    shell.extend(rest);
    shell
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.verb {
        Verb::Create(args) => create::run(args),
        Verb::Start(args) => start::run(args),
        Verb::Stop(args) => stop::run(args),
        Verb::List(args) => list::run(args),
        Verb::Shell(args) => shell::run(args),
        Verb::Copy(args) => copy::run(args),
        Verb::SshConfig(args) => ssh::print_config(&args.name),
        Verb::Delete(args) => delete::run(args),
        Verb::Daemon(args) => daemon::run(args),
        Verb::Events(args) => events::run(args),
        Verb::Autostart(args) => autostart::run(args),
        Verb::Suspend(args) => suspend::run(args),
        Verb::Upgrade(args) => upgrade::run(args),
        Verb::Edit(args) => edit::run(args),
        Verb::Restart(args) => restart::run(args),
        Verb::Clone(args) => clone::run(args),
        Verb::Import(args) => import::run(args),
    }
}
