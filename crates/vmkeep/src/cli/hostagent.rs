//! `vmkeep hostagent NAME` (hidden): what `start` spawns.

use super::HostagentArgs;
use crate::home;
use crate::hostagent::report::Reporter;
use crate::hostagent::{self, AgentOptions, Mode};

pub fn run(args: HostagentArgs) -> anyhow::Result<i32> {
    let options = AgentOptions {
        root: home::instances_root()?,
        name: args.name,
        foreground: args.foreground,
        mode: Mode::Run,
    };
    let mut reporter = if args.foreground {
        Reporter::Terminal
    } else {
        Reporter::Pipe { done: false }
    };
    Ok(hostagent::run(&options, &mut reporter).exit_code())
}
