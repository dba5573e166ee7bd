//! `vmkeep autostart enable|disable|status|show`: arguments and printing;
//! the work is `engine::autostart` (registration) and `engine::inspect`
//! (status).

use clap::Subcommand;
use serde::Serialize;

use super::progress::Lines;
use super::{CliError, ExitCode};
use crate::autostart::manager::{not_running_reason, running};
use crate::autostart::record;
use crate::autostart::registration::Plan;
use crate::autostart::{Condition, Manager, Options};
use crate::engine::inspect::{self, Autostart, Registration};
use crate::engine::{self, autostart};
use crate::instance::{Home, InstanceDir, InstanceName, Status};

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

pub fn run(args: AutostartArgs) -> Result<i32, CliError> {
    match args.action {
        Action::Enable(args) => enable(args),
        Action::Disable(args) => disable(&args.name),
        Action::Status(args) => status(args),
        Action::Show(args) => show(args),
    }
}

fn plan(name: &InstanceName, service: &ServiceOptions, manager: Manager) -> Result<Plan, CliError> {
    let options = Options {
        condition: service.condition,
        keep_alive: service.keep_alive,
    };
    let notice = Lines {
        name: name.as_str(),
    };
    Ok(autostart::plan(
        name,
        options,
        service.user.as_deref(),
        manager,
        &notice,
    )?)
}

fn enable(args: EnableArgs) -> Result<i32, CliError> {
    let manager = Manager::native();
    let plan = plan(&args.name, &args.service, manager)?;
    let name = &args.name;
    let service = plan.service_manager();
    if args.dry_run {
        autostart::check(&plan)?;
        println!("# would write {}:", plan.path.display());
        print!("{}", plan.text);
        println!(
            "# would record the registration in {}",
            record::path(&plan.dir).display()
        );
        if plan.needs_linger() {
            println!("# would run: loginctl enable-linger {}", plan.user.name);
        }
        for command in service.load_commands(&plan.path) {
            println!("# would run: {command}");
        }
        if !running(manager) {
            println!(
                "# but {}: without --dry-run, enable would refuse",
                not_running_reason(manager)
            );
        }
        eprintln!("dry run: nothing was changed");
        return Ok(ExitCode::Success as i32);
    }
    let notice = Lines {
        name: name.as_str(),
    };
    let enabled = autostart::enable(&plan, args.write_only, &notice)?;
    if enabled.lingering {
        println!(
            "enabled lingering for {} (their systemd manager now runs from boot)",
            plan.user.name
        );
    }
    if let Some(drop_in) = &enabled.drop_in {
        println!(
            "wrote {} (the user manager may take {}s to stop its VMs)",
            drop_in.display(),
            (plan.stop_timeout + crate::timeouts::STOP_MARGIN).as_secs()
        );
    }
    let verb = if enabled.replaced { "updated" } else { "wrote" };
    println!("{verb} {}", plan.path.display());
    if args.write_only {
        println!(
            "not loaded (--write-only); once {manager} runs: {}",
            service.load_commands(&plan.path).join(" && ")
        );
    } else {
        let when = match plan.options.condition {
            Condition::Login => "when you log in",
            Condition::Boot => "when the machine boots",
        };
        println!(
            "{name} starts {when} through {}{}; `vmkeep start {name}` starts it now",
            service.describe(),
            if plan.options.keep_alive {
                ", and again if it crashes"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::Success as i32)
}

fn disable(name: &InstanceName) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let notice = Lines {
        name: name.as_str(),
    };
    match autostart::disable(&home, name, &notice)? {
        None => println!("{name} has no autostart; nothing to do"),
        Some((record, _)) => {
            println!(
                "removed {} ({name} no longer starts at {})",
                record.path.display(),
                record.condition
            );
            if engine::status_of(&home.existing(name)?)? == Status::Running {
                println!("{name} keeps running until it is stopped (`vmkeep stop {name}`)");
            }
        }
    }
    Ok(ExitCode::Success as i32)
}

/// One instance's line of `autostart status` (`--json`: its
/// registration's fields beside `name` and `enabled`, when it has one).
#[derive(Debug, Serialize)]
struct StatusRow {
    name: String,
    enabled: bool,
    #[serde(flatten)]
    registration: Option<Registration>,
}

fn status(args: StatusArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    let names = match args.name {
        Some(name) => vec![name],
        None => home.instance_names(),
    };
    let mut rows = Vec::new();
    for name in &names {
        let dir = home.existing(name)?;
        rows.push(status_row(&dir)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::Success as i32);
    }
    for row in &rows {
        let Some(registration) = &row.registration else {
            println!("{}: not enabled", row.name);
            continue;
        };
        println!(
            "{}: starts at {} through {} {} (keep-alive {})",
            row.name,
            registration.condition.as_str(),
            registration.manager.as_str(),
            registration.service,
            if registration.keep_alive { "on" } else { "off" }
        );
        let present = if registration.definition_present {
            ""
        } else {
            " (MISSING: run `vmkeep autostart enable` again)"
        };
        println!("  definition: {}{present}", registration.path.display());
        println!("  service manager: {}", registration.manager_state);
    }
    Ok(ExitCode::Success as i32)
}

fn status_row(dir: &InstanceDir) -> Result<StatusRow, CliError> {
    let registration = match inspect::autostart(dir)? {
        Autostart::NotEnabled => None,
        Autostart::Enabled(registration) => Some(registration),
    };
    Ok(StatusRow {
        name: dir.name().to_string(),
        enabled: registration.is_some(),
        registration,
    })
}

fn show(args: ShowArgs) -> Result<i32, CliError> {
    let manager = args.manager.unwrap_or_else(Manager::native);
    let plan = plan(&args.name, &args.service, manager)?;
    eprintln!("# {} for {}", plan.path.display(), plan.dir.name());
    print!("{}", plan.text);
    Ok(ExitCode::Success as i32)
}
