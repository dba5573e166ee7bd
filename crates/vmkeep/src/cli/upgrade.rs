//! `vmkeep upgrade --qemu NAME...`: arguments and printing; the work is
//! `engine::upgrade_qemu`. (Minimal: only `--qemu`; the rest of the verb
//! comes from the `upgrade` work of issue 24.)

use super::progress::Lines;
use super::{CliError, ExitCode, UpgradeArgs};
use crate::engine::upgrade_qemu::{QemuUpgrade, upgrade_qemu};
use crate::instance::{Home, InstanceName};

pub fn run(args: UpgradeArgs) -> Result<i32, CliError> {
    if !args.qemu {
        return Err(CliError::Usage(
            "say what to upgrade: `vmkeep upgrade --qemu NAME...` moves running VMs onto the QEMU installed now"
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
