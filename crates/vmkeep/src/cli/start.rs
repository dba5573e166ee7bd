//! `vmkeep start [NAME|TEMPLATE...] [--name NAME] [--foreground] [--repair-data]
//! [edit flags]`:
//! arguments and printing; the work is `engine::start`. A template argument
//! (Lima's form: FILE.yaml, template:NAME, URL) creates its instance first.

use super::progress::{Lines, Progress};
use super::{CliError, ExitCode, StartArgs};
use crate::engine::create::{self, Target};
use crate::engine::start::{StartOptions, Started, start};
use crate::engine::{self, EngineError};
use crate::instance::{Home, InstanceName};
use crate::os;

pub fn run(args: StartArgs) -> Result<i32, CliError> {
    let home = Home::from_env()?;
    if args.instance_name.is_some() && args.names.len() > 1 {
        return Err(usage(
            "--name names the instance made from one template argument; give one",
        ));
    }
    let targets: Vec<Option<&str>> = match args.names.is_empty() {
        true => vec![None],
        false => args.names.iter().map(|t| Some(t.as_str())).collect(),
    };
    let flags = args.flags.flags();
    let names = targets
        .into_iter()
        .map(
            |target| match create::start_target(&home, target, args.instance_name.clone())? {
                // `default` is made on first use, with the flags.
                Target::Named(name)
                    if !flags.is_empty()
                        && name == InstanceName::default_instance()
                        && !home.layout(&name)?.dir().exists() =>
                {
                    let plan = create::plan(None, Some(&name), None)?;
                    super::create::create_planned(
                        &home,
                        &plan,
                        &args.flags,
                        false,
                        crate::instance::config::FieldPolicy::Note,
                    )
                }
                Target::Named(name) => {
                    if !flags.is_empty() {
                        super::edit::edit_before_start(&home, &name, &flags)?;
                    }
                    Ok(name)
                }
                // A template argument creates its instance first.
                Target::Create(plan) => super::create::create_planned(
                    &home,
                    &plan,
                    &args.flags,
                    false,
                    crate::instance::config::FieldPolicy::Note,
                ),
            },
        )
        .collect::<Result<Vec<InstanceName>, CliError>>()?;
    let options = StartOptions {
        repair_data: args.repair_data,
        foreground: args.foreground,
        through_service_manager: true,
        discard_state: args.discard_state,
    };
    if args.foreground && names.len() > 1 {
        return Err(usage(
            "--foreground runs one host agent in this process: name one instance",
        ));
    }
    if let [name] = names.as_slice() {
        let progress = Progress::new();
        let outcome = start(&home, name, &options, &progress);
        progress.finish();
        return print_outcome(&home, name, outcome?);
    }
    super::util::for_each_in_parallel(&names, |name| {
        let notice = Lines {
            name: name.as_str(),
        };
        let outcome = start(&home, name, &options, &notice)?;
        print_outcome(&home, name, outcome).map(drop)
    })
}

/// Print how a start ended (or, for `--foreground`, become the agent).
pub fn print_outcome(
    home: &Home,
    name: &InstanceName,
    outcome: engine::start::StartOutcome,
) -> Result<i32, CliError> {
    if outcome.created {
        eprintln!("created instance {name} from the built-in template");
    }
    match outcome.started {
        Started::Running {
            agent_pid,
            qemu_pid,
            accel,
        } => {
            let qemu = qemu_pid
                .map(|p| format!(", QEMU pid {p}"))
                .unwrap_or_default();
            let accel = accel.map(|a| format!(", {a}")).unwrap_or_default();
            println!("{name} is running (host agent pid {agent_pid}{qemu}{accel})");
            // The template's `message:` (Lima shows it after start).
            if let Some(message) = super::list::start_message(&home.layout(name)?) {
                println!("{}", message.trim_end());
            }
        }
        Started::AlreadyRunning => eprintln!("{name} is already running"),
        Started::CameUp => println!("{name} is running"),
        Started::Continued { reason } => {
            println!("{name} runs on (QEMU had paused it: {})", reason.message());
        }
        Started::ThroughServiceManager { service } => {
            println!("{name} is running (under {service})");
        }
        Started::BecomeAgent(program) => {
            // Become the host agent: the same pid, so a service manager that
            // started `vmkeep start NAME --foreground` supervises the agent.
            let source = os::process::exec_replace(&program.path, &program.args);
            return Err(CliError::Exec {
                what: "the host agent ",
                program: program.path,
                source,
            });
        }
    }
    Ok(ExitCode::Success as i32)
}

fn usage(message: &str) -> CliError {
    EngineError::Usage {
        message: message.into(),
    }
    .into()
}
