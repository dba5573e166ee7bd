//! `vmkeep autostart enable|disable|status|show`, and the hooks through which
//! `start`, `stop` and `delete` go through the service manager when an
//! instance is registered with it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

use super::util;
use crate::autostart::manager::{Handle, not_running_reason, running};
use crate::autostart::record::{self, Record};
use crate::autostart::{self, Condition, Domain, Inputs, Manager, Options, ServiceSpec};
use crate::home;
use crate::instance::{Config, InstanceDir, InstanceName, Status};
use crate::os::service_manager::{self as sm, Systemctl, User};

#[derive(Debug, clap::Args)]
pub struct AutostartArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Have the service manager start NAME at login or at boot (and restart it if it crashes).
    Enable(EnableArgs),
    /// Remove NAME's service definition (a running VM keeps running).
    Disable(NameArg),
    /// Whether autostart is registered, where, and what the service manager says.
    Status(StatusArgs),
    /// Print the unit (or plist) that `enable` writes.
    Show(ShowArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceOptions {
    /// login: start when you log in (per-user service); boot: start when the machine boots (system service running as you).
    #[arg(long, default_value = "login", value_name = "login|boot")]
    pub condition: Condition,
    /// Restart the VM's host agent after a crash or a failed start (never after a clean stop or a guest power-off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "true|false")]
    pub keep_alive: bool,
    /// The user a boot service runs as (default: you; under sudo, the user who ran sudo).
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    pub name: InstanceName,
    #[command(flatten)]
    pub service: ServiceOptions,
    /// Print what would be written and run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the definition without asking the service manager to load it
    /// (for a system where it does not run yet).
    #[arg(long, conflicts_with = "dry_run")]
    pub write_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct NameArg {
    pub name: InstanceName,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this instance (default: all).
    pub name: Option<InstanceName>,
    /// Print JSON for machines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    pub name: InstanceName,
    #[command(flatten)]
    pub service: ServiceOptions,
    /// Render for this service manager (default: this platform's).
    #[arg(long, value_name = "systemd|launchd")]
    pub manager: Option<Manager>,
}

pub fn run(args: AutostartArgs) -> anyhow::Result<i32> {
    match args.action {
        Action::Enable(args) => enable(args),
        Action::Disable(args) => disable(&args.name),
        Action::Status(args) => status(args),
        Action::Show(args) => show(args),
    }
}

/// A rendered definition and where it goes.
struct Plan {
    dir: InstanceDir,
    options: Options,
    domain: Domain,
    /// The user the VM runs as.
    user: User,
    /// The user running this command (root under sudo).
    me: User,
    service: String,
    path: PathBuf,
    text: String,
    /// The service manager's stop timeout for the unit.
    stop_timeout: Duration,
}

impl Plan {
    /// Root writing into another user's home: files must become theirs.
    fn owner(&self) -> Option<&User> {
        (!self.domain.is_system() && self.user.uid != self.me.uid).then_some(&self.user)
    }
}

fn plan(name: &InstanceName, service: &ServiceOptions, manager: Manager) -> anyhow::Result<Plan> {
    let me = sm::current_user().context("cannot look up the current user")?;
    let user = match (&service.user, service.condition) {
        (Some(u), Condition::Login) if *u != me.name => bail!(
            "--user is for --condition boot; a login service runs as the user who enables it ({})",
            me.name
        ),
        (Some(u), _) => sm::user_by_name(u)?.with_context(|| {
            format!("there is no user {u:?}; name an existing user with --user")
        })?,
        (None, Condition::Boot) if me.uid == 0 => {
            match std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()) {
                Some(u) => sm::user_by_name(&u)?.unwrap_or(me.clone()),
                None => me.clone(),
            }
        }
        (None, _) => me.clone(),
    };
    let other_user = user.uid != me.uid;
    // Under sudo, the instance and the cache are the invoking user's, unless
    // the environment names them.
    let instances_root = match std::env::var_os(home::HOME_ENV) {
        None if other_user => user.home.join(".vmkeep"),
        _ => home::instances_root()?,
    };
    let cache_root = match std::env::var_os(home::CACHE_ENV) {
        None if other_user => user.home.join(".cache/vmkeep"),
        _ => home::cache_root()?,
    };
    let dir = InstanceDir::new(&instances_root, name.clone())?;
    if !dir.dir().is_dir() {
        bail!(
            "there is no instance {name} in {}; create it with `vmkeep create {name}` (or see `vmkeep list`)",
            instances_root.display()
        );
    }
    let config = Config::load(&dir.config()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let exe = std::fs::canonicalize(crate::os::process::current_exe()?)
        .context("cannot resolve the path of the vmkeep binary")?;
    let qemu = config.arch.qemu_binary();
    let qemu_dir = sm::find_in_path(qemu);
    if qemu_dir.is_none() {
        eprintln!(
            "warning: {qemu} is not in PATH; the service will look in the system directories only"
        );
    }
    let inputs = Inputs {
        instance: dir.clone(),
        instances_root,
        cache_root,
        exe,
        qemu_dir,
        user: user.name.clone(),
        stop_timeout: config.stop_timeout.0,
        boot_timeout: config.boot_timeout.0,
    };
    let options = Options {
        condition: service.condition,
        keep_alive: service.keep_alive,
    };
    let spec = ServiceSpec::new(&inputs, options, manager)?;
    let domain = spec.domain;
    let text = autostart::render(manager, &spec);
    // Per-user definitions go to the home of the user the VM runs as.
    let (home_dir, xdg) = if other_user {
        (user.home.clone(), None)
    } else {
        (
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| me.home.clone()),
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        )
    };
    let def_dir = autostart::definition_dir(domain, &home_dir, xdg.as_deref());
    let file = autostart::file_name(domain, &user.name, name.as_str());
    Ok(Plan {
        dir,
        options,
        domain,
        service: autostart::service_name(domain, &user.name, name.as_str())
            + if manager == Manager::Systemd {
                ".service"
            } else {
                ""
            },
        path: def_dir.join(file),
        stop_timeout: spec.stop_timeout,
        user,
        me,
        text,
    })
}

fn enable(args: EnableArgs) -> anyhow::Result<i32> {
    let manager = Manager::native();
    let plan = plan(&args.name, &args.service, manager)?;
    let name = &args.name;
    let handle = Handle::new(plan.domain, &plan.service, &plan.user, &plan.me);
    let linger =
        plan.domain.needs_linger(plan.options.condition) && !sm::is_lingering(&plan.user.name);

    if let Some(existing) = record::load(&plan.dir)?
        && existing.path != plan.path
    {
        bail!(
            "{name} already starts at {} through {}; run `vmkeep autostart disable {name}` first",
            existing.condition,
            existing.path.display()
        );
    }
    let replacing = match std::fs::read_to_string(&plan.path) {
        Ok(old) => {
            if autostart::managed_marker(&old) != autostart::managed_marker(&plan.text) {
                bail!(
                    "{} exists and is not vmkeep's definition for this instance ({}); \
                     remove or rename it, then enable again",
                    plan.path.display(),
                    autostart::managed_marker(&old)
                        .map(|m| format!("it is for {m}"))
                        .unwrap_or_else(|| "it has no `managed by vmkeep` line".into())
                );
            }
            Some(old)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context(format!("cannot read {}", plan.path.display())),
    };

    if args.dry_run {
        println!("# would write {}:", plan.path.display());
        print!("{}", plan.text);
        println!(
            "# would record the registration in {}",
            record::path(&plan.dir).display()
        );
        if linger {
            println!("# would run: loginctl enable-linger {}", plan.user.name);
        }
        for command in handle.enable_commands(&plan.path) {
            println!("# would run: {command}");
        }
        if !running(manager) {
            println!(
                "# but {}: without --dry-run, enable would refuse",
                not_running_reason(manager)
            );
        }
        eprintln!("dry run: nothing was changed");
        return Ok(0);
    }
    if !args.write_only && !running(manager) {
        bail!(
            "{}, so {} cannot be registered with it; nothing was written.\n  \
             `vmkeep autostart show {name}` prints the definition; \
             `vmkeep autostart enable --write-only {name}` writes it without loading it",
            not_running_reason(manager),
            plan.service
        );
    }
    let def_dir = plan.path.parent().unwrap_or(Path::new("/"));
    if !sm::may_write_in(def_dir) {
        let sudo = if std::env::var_os(home::HOME_ENV).is_some() {
            format!(
                "sudo {}={} vmkeep",
                home::HOME_ENV,
                home::instances_root()?.display()
            )
        } else {
            "sudo vmkeep".into()
        };
        bail!(
            "cannot write in {}: a {} service needs root; run `{sudo} autostart enable {name} --condition {}` \
             (it still runs as {})",
            def_dir.display(),
            plan.options.condition,
            plan.options.condition,
            plan.user.name
        );
    }

    if linger && !args.write_only && plan.me.uid != 0 {
        bail!(
            "starting {name} at boot needs {user}'s systemd manager to run from boot (lingering), \
             which only root can switch on here; nothing was written.\n  \
             run `sudo loginctl enable-linger {user}`, then this command again \
             (or `sudo vmkeep autostart enable {name} --condition boot`)",
            user = plan.user.name
        );
    }
    if linger && !args.write_only {
        sm::enable_linger(&plan.user.name)
            .with_context(|| format!("cannot make {}'s manager run from boot", plan.user.name))?;
        println!(
            "enabled lingering for {} (their systemd manager now runs from boot)",
            plan.user.name
        );
    }
    if plan.domain == Domain::SystemdUser && !args.write_only {
        if plan.user.uid != plan.me.uid {
            // `systemctl --user` as that user needs their manager up.
            sm::start_user_manager(plan.user.uid)?;
        }
        allow_user_manager_stop(&plan)?;
    }

    sm::write_definition(&plan.path, &plan.text, plan.owner())
        .with_context(|| format!("cannot write {}", plan.path.display()))?;
    let record = Record {
        domain: Some(plan.domain),
        manager,
        condition: plan.options.condition,
        keep_alive: plan.options.keep_alive,
        service: plan.service.clone(),
        path: plan.path.clone(),
        user: plan.user.name.clone(),
        loaded: !args.write_only,
        enabled_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    if !args.write_only
        && let Err(e) = handle.load(&plan.path)
    {
        // Leave things as they were.
        match &replacing {
            Some(old) => {
                let _ = sm::write_definition(&plan.path, old, plan.owner());
            }
            None => {
                let _ = sm::remove_definition(&plan.path);
            }
        }
        return Err(e.context(format!(
            "{} did not accept {}; nothing was changed",
            manager,
            plan.path.display()
        )));
    }
    record::save(&plan.dir, &record)
        .with_context(|| format!("cannot write {}", record::path(&plan.dir).display()))?;
    let verb = if replacing.is_some() {
        "updated"
    } else {
        "wrote"
    };
    println!("{verb} {}", plan.path.display());
    if args.write_only {
        println!(
            "not loaded (--write-only); once {manager} runs: {}",
            handle.enable_commands(&plan.path).join(" && ")
        );
    } else {
        let when = match plan.options.condition {
            Condition::Login => "when you log in",
            Condition::Boot => "when the machine boots",
        };
        println!(
            "{name} starts {when} through {}{}; `vmkeep start {name}` starts it now",
            handle.describe(),
            if plan.options.keep_alive {
                ", and again if it crashes"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

/// At a host shutdown (or the user's last logout) the system manager stops
/// the user's manager, and kills it after that unit's `TimeoutStopSec` (120 s
/// as Debian ships it): the VM's unit must be done well before. When it
/// would not be, root lengthens it with a drop-in; others are told how.
fn allow_user_manager_stop(plan: &Plan) -> anyhow::Result<()> {
    let needed = plan.stop_timeout + autostart::STOP_MARGIN;
    let granted = sm::user_manager_stop_timeout(plan.user.uid)?;
    if granted.is_none_or(|granted| granted >= needed) {
        return Ok(());
    }
    let drop_in = sm::user_manager_drop_in(plan.user.uid);
    let text = format!(
        "# managed by vmkeep: {}'s VMs need {}s to stop at a host shutdown\n[Service]\nTimeoutStopSec={}s\n",
        plan.user.name,
        needed.as_secs(),
        needed.as_secs()
    );
    if plan.me.uid != 0 {
        eprintln!(
            "warning: at a host shutdown systemd gives {}'s manager {}, less than the {}s this VM's stop may take; \
             as root, write {} with:\n{text}and run `systemctl daemon-reload`",
            plan.user.name,
            granted
                .map(|g| format!("{}s", g.as_secs()))
                .unwrap_or_default(),
            needed.as_secs(),
            drop_in.display()
        );
        return Ok(());
    }
    sm::write_definition(&drop_in, &text, None)
        .with_context(|| format!("cannot write {}", drop_in.display()))?;
    Systemctl::system().daemon_reload()?;
    println!(
        "wrote {} (the user manager may take {}s to stop its VMs)",
        drop_in.display(),
        needed.as_secs()
    );
    Ok(())
}

fn disable(name: &InstanceName) -> anyhow::Result<i32> {
    let dir = util::existing(name)?;
    match disable_registration(&dir)? {
        None => println!("{name} has no autostart; nothing to do"),
        Some((record, _)) => {
            println!(
                "removed {} ({name} no longer starts at {})",
                record.path.display(),
                record.condition
            );
            if util::status_of(&dir)? == Status::Running {
                println!("{name} keeps running until it is stopped (`vmkeep stop {name}`)");
            }
        }
    }
    Ok(0)
}

/// Unregister and remove the definition and the record. Refuses (changing
/// nothing) when the definition lacks vmkeep's marker or cannot be removed.
fn disable_registration(dir: &InstanceDir) -> anyhow::Result<Option<(Record, Option<Handle>)>> {
    let Some(record) = record::load(dir)? else {
        return Ok(None);
    };
    match std::fs::read_to_string(&record.path) {
        Ok(text) if autostart::managed_marker(&text).is_none() => bail!(
            "{} has no `managed by vmkeep` line, so vmkeep did not write it; not removing it.\n  \
             remove it yourself if it is obsolete, then run `vmkeep autostart disable {}` again",
            record.path.display(),
            dir.name()
        ),
        Ok(_) => {
            let parent = record.path.parent().unwrap_or(Path::new("/"));
            if !sm::may_write_in(parent) {
                bail!(
                    "cannot remove {}: {} needs root; run `sudo vmkeep autostart disable {}`",
                    record.path.display(),
                    parent.display(),
                    dir.name()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("cannot read {}", record.path.display())),
    }
    let handle = Handle::of(&record);
    if let Some(handle) = &handle {
        handle.unload()?;
    } else if record.loaded {
        eprintln!(
            "note: {}; removing the definition only",
            not_running_reason(record.manager)
        );
    }
    sm::remove_definition(&record.path)
        .with_context(|| format!("cannot remove {}", record.path.display()))?;
    if let Some(handle) = &handle {
        handle.after_removal()?;
    }
    record::remove(dir)?;
    Ok(Some((record, handle)))
}

#[derive(Debug, Serialize)]
struct StatusRow {
    name: String,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<Manager>,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    /// The definition file exists and carries vmkeep's marker.
    #[serde(skip_serializing_if = "Option::is_none")]
    definition_present: Option<bool>,
    /// What the service manager says, or why it cannot be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_state: Option<String>,
}

fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let names = match args.name {
        Some(name) => vec![name],
        None => crate::instance::layout::instance_names(&home::instances_root()?),
    };
    let mut rows = Vec::new();
    for name in &names {
        let dir = util::existing(name)?;
        rows.push(status_row(&dir)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    for row in &rows {
        if !row.enabled {
            println!("{}: not enabled", row.name);
            continue;
        }
        println!(
            "{}: starts at {} through {} {} (keep-alive {})",
            row.name,
            row.condition.map(Condition::as_str).unwrap_or("?"),
            row.manager.map(Manager::as_str).unwrap_or("?"),
            row.service.as_deref().unwrap_or("?"),
            if row.keep_alive == Some(true) {
                "on"
            } else {
                "off"
            }
        );
        let present = if row.definition_present == Some(true) {
            ""
        } else {
            " (MISSING: run `vmkeep autostart enable` again)"
        };
        if let Some(path) = &row.path {
            println!("  definition: {}{present}", path.display());
        }
        if let Some(state) = &row.manager_state {
            println!("  service manager: {state}");
        }
    }
    Ok(0)
}

fn status_row(dir: &InstanceDir) -> anyhow::Result<StatusRow> {
    let Some(record) = record::load(dir)? else {
        return Ok(StatusRow {
            name: dir.name().to_string(),
            enabled: false,
            manager: None,
            condition: None,
            keep_alive: None,
            service: None,
            path: None,
            definition_present: None,
            manager_state: None,
        });
    };
    let present = std::fs::read_to_string(&record.path)
        .map(|t| autostart::managed_marker(&t).is_some())
        .unwrap_or(false);
    let state = match Handle::of(&record) {
        None => not_running_reason(record.manager),
        Some(Handle::Systemd(s, unit)) => match s.show(&unit) {
            Ok(st) => format!("{} ({}), {}/{}", st.load, st.unit_file, st.active, st.sub),
            Err(e) => format!("cannot ask: {e}"),
        },
        Some(Handle::Launchd(l, label)) => {
            if l.is_loaded(&label) {
                "loaded".into()
            } else {
                "not loaded".into()
            }
        }
    };
    Ok(StatusRow {
        name: dir.name().to_string(),
        enabled: true,
        manager: Some(record.manager),
        condition: Some(record.condition),
        keep_alive: Some(record.keep_alive),
        service: Some(record.service),
        path: Some(record.path),
        definition_present: Some(present),
        manager_state: Some(state),
    })
}

fn show(args: ShowArgs) -> anyhow::Result<i32> {
    let manager = args.manager.unwrap_or_else(Manager::native);
    let plan = plan(&args.name, &args.service, manager)?;
    eprintln!("# {} for {}", plan.path.display(), plan.dir.name());
    print!("{}", plan.text);
    Ok(0)
}

// ---- hooks for start, stop and delete ----

/// The registration of an instance whose service manager runs and knows
/// the service.
fn managed(dir: &InstanceDir) -> Option<(Record, Handle)> {
    let record = record::load(dir).ok().flatten()?;
    let handle = Handle::of(&record)?;
    Some((record, handle))
}

/// `vmkeep start NAME` (not --foreground) on a registered instance: start
/// the service, so that the service manager owns the agent (and keeps it
/// alive), then wait until the VM runs. `None`: not registered, or the
/// service manager does not run or know it; start the usual way.
pub(super) fn start_hook(dir: &InstanceDir) -> anyhow::Result<Option<i32>> {
    let Some((record, handle)) = managed(dir) else {
        return Ok(None);
    };
    match util::status_of(dir)? {
        Status::Stopped => {}
        Status::Broken(broken) if broken.repairable() => {}
        // Running, starting, stopping, or broken beyond what a start repairs:
        // the usual path says what is going on.
        _ => return Ok(None),
    }
    let name = dir.name();
    match &handle {
        Handle::Systemd(s, unit) => {
            let state = s.show(unit)?;
            if !state.is_loaded() || state.is_active() {
                return Ok(None);
            }
            if state.is_failed() {
                // Given up on (start limit): a start by hand begins afresh.
                s.reset_failed(unit)?;
            }
            // Type=notify: this returns once the guest is ready.
            eprintln!("starting {name} through {}", handle.describe());
            s.start(unit)?;
        }
        Handle::Launchd(l, label) => {
            eprintln!("starting {name} through {}", handle.describe());
            if l.is_loaded(label) {
                l.kickstart(label)?;
            } else {
                l.bootstrap(&record.path)?;
            }
        }
    }
    let boot = Config::load(&dir.config())
        .map(|c| c.boot_timeout.0)
        .unwrap_or(Duration::from_secs(180));
    let until = Instant::now() + autostart::service_start_timeout(boot);
    let mut checked = Instant::now();
    loop {
        let status = util::status_of(dir)?;
        if status == Status::Running {
            println!("{name} is running (under {})", handle.describe());
            return Ok(Some(0));
        }
        if checked.elapsed() > Duration::from_secs(1) {
            checked = Instant::now();
            if let Handle::Systemd(s, unit) = &handle
                && !s.show(unit)?.is_active()
            {
                bail!(
                    "{unit} stopped before {name} ran; see {} and `journalctl{} -u {unit}`",
                    dir.dir().join(autostart::LOG_FILE).display(),
                    s.journal_flag()
                );
            }
        }
        if Instant::now() > until {
            bail!(
                "{name} did not come up under {} (it is {}); see {}",
                handle.describe(),
                status.word(),
                dir.dir().join(autostart::LOG_FILE).display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `vmkeep stop NAME` (no --force, no --timeout) on an instance the service
/// manager runs: stop the service, so that keep-alive does not bring it
/// back. Returns whether it did; `false`: stop the usual way (the agent
/// then exits 0, which keep-alive does not restart either).
pub(super) fn stop_hook(dir: &InstanceDir) -> anyhow::Result<bool> {
    let Some((record, handle)) = managed(dir) else {
        return Ok(false);
    };
    let name = dir.name();
    let result = match &handle {
        Handle::Systemd(s, unit) => {
            if !s.show(unit)?.is_active() {
                return Ok(false);
            }
            eprintln!("stopping {name} through {}", handle.describe());
            s.stop(unit)
        }
        Handle::Launchd(l, label) => {
            if !l.is_loaded(label) {
                return Ok(false);
            }
            eprintln!("stopping {name} through {}", handle.describe());
            l.terminate(label)
        }
    };
    if let Err(e) = result {
        eprintln!("{e}; stopping {name} directly instead");
        return Ok(false);
    }
    let stop = Config::load(&dir.config())
        .map(|c| c.stop_timeout.0)
        .unwrap_or(Duration::from_secs(30));
    let status = util::wait_for_status(dir, autostart::service_stop_timeout(stop), |s| {
        matches!(s, Status::Stopped)
    })?;
    if status != Status::Stopped {
        bail!(
            "{name} is still {} after {} stopped {}; try `vmkeep stop --force {name}`",
            status.word(),
            record.manager,
            record.service
        );
    }
    Ok(true)
}

/// After `stop --force`: if the agent had to be killed, keep-alive may have
/// scheduled a restart; stopping the unit cancels it.
pub(super) fn after_forced_stop(dir: &InstanceDir) {
    if let Some((_, Handle::Systemd(s, unit))) = managed(dir)
        && s.show(&unit).map(|st| st.is_active()).unwrap_or(false)
        && let Err(e) = s.stop(&unit)
    {
        eprintln!("warning: could not stop {unit}: {e}");
    }
}

/// What `delete` must still do once the VM is gone.
pub(super) struct Unregistered(Option<Handle>);

impl Unregistered {
    /// Cancel a keep-alive restart scheduled when a forced stop killed the agent.
    pub(super) fn settle(self) {
        if let Some(Handle::Systemd(s, unit)) = self.0
            && s.show(&unit).map(|st| st.is_active()).unwrap_or(false)
        {
            let _ = s.stop(&unit);
        }
    }
}

/// `delete` disables autostart first, so that no service manager starts
/// the instance while (or after) it is deleted.
pub(super) fn disable_for_delete(dir: &InstanceDir) -> anyhow::Result<Unregistered> {
    if let Err(e) = record::load(dir) {
        // The record is unreadable: nothing says where a definition is.
        eprintln!(
            "warning: {e}; if a service definition for {} exists, remove it by hand",
            dir.name()
        );
        return Ok(Unregistered(None));
    }
    match disable_registration(dir)? {
        Some((record, handle)) => {
            eprintln!(
                "removed {} (autostart of {})",
                record.path.display(),
                dir.name()
            );
            Ok(Unregistered(handle))
        }
        None => Ok(Unregistered(None)),
    }
}
