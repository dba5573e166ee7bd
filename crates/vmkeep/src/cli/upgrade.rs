//! `vmkeep upgrade [NAME...] [--timeout D] [--json]`: arguments and
//! printing; the work is `engine::upgrade`. Without names: every running
//! instance of the home, in parallel, then the home's daemon if one runs
//! (`engine::upgrade_daemon`). `vmkeep upgrade --qemu NAME...`: the work
//! is `engine::upgrade_qemu`.

use serde::Serialize;

use super::progress::Lines;
use super::{CliError, ExitCode, UpgradeArgs};
use crate::engine::inspect::{Inspected, inspect_all};
use crate::engine::upgrade::{UpgradeOptions, Upgraded, upgrade};
use crate::engine::upgrade_daemon::upgrade_daemon;
use crate::engine::upgrade_qemu::{QemuUpgrade, upgrade_qemu};
use crate::instance::journal::UpgradeSteps;
use crate::instance::{Home, InstanceName, Status};

/// One instance's outcome, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    upgraded: bool,
    exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qemu_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_boot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<UpgradeSteps>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secs: Option<f64>,
}

pub fn run(args: UpgradeArgs) -> Result<i32, CliError> {
    if args.qemu {
        return run_qemu(args);
    }
    let home = Home::from_env()?;
    let names = match args.names.is_empty() {
        false => args.names.clone(),
        true => running(&home),
    };
    let options = UpgradeOptions {
        timeout: args
            .timeout
            .unwrap_or(crate::engine::upgrade::DEFAULT_TIMEOUT),
        binary: None,
    };
    let one = |name: &InstanceName| -> Result<Upgraded, CliError> {
        let dir = home.existing(name)?;
        let notice = Lines {
            name: name.as_str(),
        };
        Ok(upgrade(&dir, &options, &notice)?)
    };
    let outcomes: Vec<(InstanceName, Result<Upgraded, CliError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let one = &one;
                scope.spawn(move || one(name))
            })
            .collect();
        handles
            .into_iter()
            .zip(&names)
            .map(|(handle, name)| {
                let outcome = handle.join().unwrap_or_else(|_| {
                    Err(CliError::Terminal(std::io::Error::other(
                        "the upgrade thread panicked",
                    )))
                });
                (name.clone(), outcome)
            })
            .collect()
    });
    let mut codes: Vec<ExitCode> = outcomes
        .iter()
        .filter_map(|(_, outcome)| outcome.as_ref().err().map(CliError::exit_code))
        .collect();
    // The daemon after its VMs' agents (it watches them, and they it not),
    // and only when no instance was named.
    let daemon = match args.names.is_empty() {
        true => Some(upgrade_daemon(&home)),
        false => None,
    };
    if let Some(Err(_)) = &daemon {
        codes.push(ExitCode::Failure);
    }
    if args.json {
        let mut rows: Vec<Row> = outcomes.iter().map(|(n, o)| row(n, o)).collect();
        if let Some(daemon) = &daemon {
            rows.extend(daemon_row(daemon));
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        if outcomes.is_empty() {
            match &daemon {
                Some(Ok(Some(_))) | Some(Err(_)) => {
                    println!("no instance is running; no host agent to upgrade")
                }
                Some(Ok(None)) | None => println!("no instance is running; nothing to upgrade"),
            }
        }
        for (name, outcome) in &outcomes {
            match outcome {
                Ok(done) => println!("{}", summary(name, done)),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        match &daemon {
            Some(Ok(Some(moved))) => println!(
                "upgraded the daemon in place (pid {} kept, upgrade {}): now {}",
                moved.pid,
                moved.generation,
                crate::formats::BUILD
            ),
            Some(Err(e)) => eprintln!("error: {e}"),
            Some(Ok(None)) | None => {}
        }
    }
    match codes.as_slice() {
        [] => Ok(ExitCode::Success as i32),
        [first, ..] => {
            // One kind of failure keeps its code; mixed ones are a plain failure.
            let code = if codes.iter().all(|c| c == first) {
                *first
            } else {
                ExitCode::Failure
            };
            Ok(code as i32)
        }
    }
}

/// The running instances of the home.
fn running(home: &Home) -> Vec<InstanceName> {
    inspect_all(home, &home.instance_names())
        .into_iter()
        .filter_map(|(name, inspected)| match inspected {
            Inspected::Instance(found) if found.status == Status::Running => Some(name),
            _ => None,
        })
        .collect()
}

fn summary(name: &InstanceName, done: &Upgraded) -> String {
    format!(
        "upgraded {name} in {:.1}s: {} -> {} (host agent pid {} and QEMU pid {} kept; exec {:.0} ms, QEMU adopted {:.0} ms, guest back {:.0} ms)",
        done.took.as_secs_f64(),
        done.from,
        done.to,
        done.agent_pid,
        done.qemu_pid,
        done.steps.exec_secs * 1000.0,
        done.steps.adopted_secs * 1000.0,
        done.steps.ready_secs * 1000.0,
    )
}

fn row(name: &InstanceName, outcome: &Result<Upgraded, CliError>) -> Row {
    match outcome {
        Ok(done) => Row {
            name: name.to_string(),
            upgraded: true,
            exit_code: ExitCode::Success as i32,
            error: None,
            from: Some(done.from.clone()),
            to: Some(done.to.clone()),
            agent_pid: Some(done.agent_pid),
            qemu_pid: Some(done.qemu_pid),
            guest_boot_id: done.guest_boot_id.clone(),
            steps: Some(done.steps.clone()),
            secs: Some(done.took.as_secs_f64()),
        },
        Err(e) => Row {
            name: name.to_string(),
            upgraded: false,
            exit_code: e.exit_code() as i32,
            error: Some(e.to_string()),
            from: None,
            to: None,
            agent_pid: None,
            qemu_pid: None,
            guest_boot_id: None,
            steps: None,
            secs: None,
        },
    }
}

/// `--qemu NAME...`: each named VM onto the QEMU installed now, through
/// the suspend path.
fn run_qemu(args: UpgradeArgs) -> Result<i32, CliError> {
    if args.names.is_empty() {
        return Err(CliError::Usage(
            "name the instances to move: `vmkeep upgrade --qemu NAME...` (`vmkeep list` flags a VM whose QEMU was replaced on disk)"
                .into(),
        ));
    }
    let home = Home::from_env()?;
    let one = |name: &InstanceName| -> Result<(), CliError> {
        let notice = Lines {
            name: name.as_str(),
        };
        match upgrade_qemu(&home, name, &notice)? {
            QemuUpgrade::AlreadyCurrent { version } => {
                println!("{name} already runs the QEMU installed now ({version}); nothing to do")
            }
            QemuUpgrade::Moved {
                from,
                to,
                binary,
                qemu_pid,
                paused,
                took,
            } => println!(
                "{name} moved from QEMU {from} onto QEMU {to} ({}{}), same boot; the guest was paused {} ({:.0} ms in all)",
                binary.display(),
                qemu_pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
                paused
                    .map(|p| format!("for {:.0} ms", p.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "(for how long, the journal does not say)".into()),
                took.as_secs_f64() * 1000.0
            ),
        }
        Ok(())
    };
    if let [name] = args.names.as_slice() {
        one(name)?;
        return Ok(ExitCode::Success as i32);
    }
    super::util::for_each_in_parallel(&args.names, one)
}

/// The daemon's row of `--json`, if a daemon runs.
fn daemon_row(
    daemon: &Result<
        Option<crate::engine::upgrade_daemon::DaemonUpgraded>,
        crate::engine::upgrade_daemon::DaemonNotUpgraded,
    >,
) -> Option<Row> {
    let (upgraded, exit_code, error, pid) = match daemon {
        Ok(None) => return None,
        Ok(Some(moved)) => (true, ExitCode::Success, None, moved.pid),
        Err(e) => (false, ExitCode::Failure, Some(e.to_string()), e.pid),
    };
    Some(Row {
        name: "(daemon)".into(),
        upgraded,
        exit_code: exit_code as i32,
        error,
        from: None,
        to: upgraded.then(|| crate::formats::BUILD.to_string()),
        agent_pid: Some(pid),
        qemu_pid: None,
        guest_boot_id: None,
        steps: None,
        secs: None,
    })
}
