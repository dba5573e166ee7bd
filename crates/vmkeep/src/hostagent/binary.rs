//! The `vmkeep-hostagent` binary: where it is, how it is invoked, and its
//! entry point.
//!
//! The host agent lives as long as its VM, so it is a binary of its own,
//! holding only what an agent needs (no command-line parser, no download
//! client, no TLS): a smaller program maps fewer pages, and `ps` names what
//! runs. `vmkeep start` and `vmkeep daemon` spawn it;
//! `vmkeep start --foreground` (what service units run) becomes it by exec,
//! keeping its pid.
//!
//! Two builds of it exist: the dynamic one that `cargo build` and
//! `cargo install --path crates/vmkeep` put beside `vmkeep`, and the static
//! one that `scripts/install` puts there on Linux (musl, no download client:
//! `--no-default-features`), which maps no C library and no loader
//! (docs/memory.md). Either way the sandbox shim of virtiofsd is the
//! `vmkeep` binary beside it ([`shim_path`]), which runs on the host's own C
//! library: the shim asks the user database (NSS: LDAP, sssd,
//! systemd-homed) for a share owner's groups, which musl cannot.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use super::report::Reporter;
use super::upgrade::{CHECK_FLAG, FLAG, Handover};
use super::{AgentOptions, Mode};
use crate::instance::InstanceName;
use crate::instance::home;
use crate::os;
use crate::os::cgroup;
use crate::os::process::Program;

/// The file name; it sits next to the `vmkeep` binary.
pub const FILE_NAME: &str = "vmkeep-hostagent";

/// The file name of the CLI beside the agent, which runs the sandbox shim.
pub const CLI_FILE_NAME: &str = "vmkeep";

const USAGE: &str = "usage: vmkeep-hostagent NAME [--foreground] [--repair-data]
       vmkeep-hostagent --check-formats | --version
Runs the host agent of instance NAME until its VM stops. Started by
`vmkeep start` and `vmkeep daemon`; not meant to be run by hand.
  --foreground     report progress as text on stderr (default: JSON lines on stdout)
  --repair-data    have the guest run `e2fsck -f -y` on the data disk before mounting it
  --check-formats  print the build and the format versions it speaks (JSON), for `vmkeep upgrade`
  --version        print the build";

/// The option of `vmkeep start --repair-data`, passed on to the agent.
pub const REPAIR_DATA: &str = "--repair-data";

/// The agent binary beside the running executable, or an error saying how to
/// put it there.
pub fn path() -> io::Result<PathBuf> {
    let exe = os::process::current_exe()?;
    let agent = exe.with_file_name(FILE_NAME);
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the host agent binary {} is missing; install both binaries side by side: \
                 `scripts/install` does (a static agent on Linux), as do \
                 `cargo install --path crates/vmkeep` and `cargo build` (a dynamic agent)",
                agent.display()
            ),
        ))
    }
}

/// The `vmkeep` binary beside the running agent, which runs the sandbox
/// shim of virtiofsd (`vmkeep --sandboxed ...`, see `os::confine`), or an
/// error saying how to put it there.
pub fn shim_path() -> io::Result<PathBuf> {
    let exe = os::process::current_exe()?;
    let cli = exe.with_file_name(CLI_FILE_NAME);
    if cli.is_file() {
        Ok(cli)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing beside the host agent {}; it runs the sandbox of virtiofsd: \
                 install both binaries side by side (`scripts/install` does)",
                cli.display(),
                exe.display()
            ),
        ))
    }
}

/// The agent asked to be the sandbox shim: an agent of a build before the
/// shim moved to `vmkeep` runs its own file's path as the shim, and after an
/// upgrade in place that file is this build. So the shim's command line is
/// passed on, by exec, to the `vmkeep` beside it; returns only on failure.
fn forward_shim(args: &[OsString]) -> i32 {
    let cli = match shim_path() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("vmkeep sandbox: {e}");
            return 127;
        }
    };
    let e = os::process::exec_replace(&cli, args);
    eprintln!("vmkeep sandbox: cannot run {}: {e}", cli.display());
    127
}

/// The arguments that run the agent of `name`.
pub fn args(name: &InstanceName, foreground: bool) -> Vec<String> {
    let mut args = vec![name.as_str().to_owned()];
    if foreground {
        args.push("--foreground".into());
    }
    args
}

/// [`args`], asking for a repair of the data disk when `repair_data`.
pub fn args_repairing(name: &InstanceName, foreground: bool, repair_data: bool) -> Vec<String> {
    let mut args = args(name, foreground);
    if repair_data {
        args.push(REPAIR_DATA.into());
    }
    args
}

/// The agent of `name` as a detached process (spawned by `vmkeep start` or
/// the daemon, not the main process of a service): under systemd it goes
/// into a scope of its own, so that it outlives the spawner's unit (a daemon
/// killed with SIGKILL, a oneshot unit that ran `vmkeep start`). `placement`
/// is `None` where systemd cannot be asked (see `os::cgroup`).
pub fn detached(
    name: &InstanceName,
    text_reports: bool,
    repair_data: bool,
    placement: Option<&cgroup::Placement>,
    shutdown_deadline: std::time::Duration,
) -> io::Result<Program> {
    let program = Program::new(&path()?, &args_repairing(name, text_reports, repair_data));
    Ok(match placement {
        Some(placement) => {
            use std::sync::atomic::{AtomicU32, Ordering};
            static SPAWNED: AtomicU32 = AtomicU32::new(0);
            let n = SPAWNED.fetch_add(1, Ordering::Relaxed).to_string();
            let spawner = std::process::id().to_string();
            let mut scope = cgroup::Scope::named(
                &["vmkeep", name.as_str(), "agent", &spawner, &n],
                format!("vmkeep host agent of {name}"),
            );
            // At a host shutdown systemd stops the scope with SIGTERM: the
            // agent saves the VM or runs its ladder, which must not be cut short.
            scope.stop_timeout = Some(crate::autostart::service_stop_timeout(shutdown_deadline));
            cgroup::wrap(placement, &scope, &program)
        }
        None => program,
    })
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Invocation {
    Run {
        name: InstanceName,
        foreground: bool,
        repair_data: bool,
        /// Handed over by this process's previous build (`vmkeep upgrade`).
        upgraded: Option<Handover>,
    },
    Help,
    CheckFormats,
    Version,
}

/// Parse `NAME [--foreground]` (the arguments after the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    let mut name = None;
    let mut foreground = false;
    let mut repair_data = false;
    let mut upgraded = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument {arg:?} is not valid UTF-8"))?;
        match arg.as_str() {
            "--foreground" => foreground = true,
            REPAIR_DATA => repair_data = true,
            "-h" | "--help" => return Ok(Invocation::Help),
            CHECK_FLAG => return Ok(Invocation::CheckFormats),
            "-V" | "--version" => return Ok(Invocation::Version),
            FLAG => {
                let handover = args
                    .next()
                    .and_then(|json| json.into_string().ok())
                    .ok_or_else(|| format!("{FLAG} needs the handover (JSON)"))?;
                upgraded = Some(
                    serde_json::from_str::<Handover>(&handover)
                        .map_err(|e| format!("invalid {FLAG} handover: {e}"))?,
                );
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            word if name.is_none() => {
                name = Some(
                    word.parse::<InstanceName>()
                        .map_err(|e| format!("invalid instance name: {e}"))?,
                );
            }
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    match name {
        Some(name) => Ok(Invocation::Run {
            name,
            foreground,
            repair_data,
            upgraded,
        }),
        None => Err("missing the instance name".into()),
    }
}

/// The binary's `main`: run the agent and return the process exit code (2
/// for a bad command line, as for `vmkeep`).
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    // The shim of a previous build's agent (see `forward_shim`).
    if args.first().is_some_and(|a| a == os::confine::SHIM_FLAG) {
        return forward_shim(&args);
    }
    let (name, foreground, repair_data, upgraded) = match parse(args) {
        Ok(Invocation::Run {
            name,
            foreground,
            repair_data,
            upgraded,
        }) => (name, foreground, repair_data, upgraded),
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return 0;
        }
        Ok(Invocation::CheckFormats) => {
            return match serde_json::to_string(&crate::formats::Spoken::this_build()) {
                Ok(json) => {
                    println!("{json}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            };
        }
        Ok(Invocation::Version) => {
            println!("{FILE_NAME} {}", crate::formats::LONG_VERSION);
            return 0;
        }
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return 2;
        }
    };
    crate::logging::init(true);
    let root = match home::instances_root() {
        Ok(root) => root,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let options = AgentOptions {
        root,
        name,
        foreground,
        mode: Mode::Run,
        repair_data,
        signals: true,
        // The previous build's spawner heard its report long ago.
        upgraded: upgraded.clone(),
    };
    let mut reporter = if foreground {
        Reporter::Terminal
    } else {
        Reporter::Pipe {
            done: upgraded.is_some(),
        }
    };
    let outcome = super::run(&options, &mut reporter);
    if let super::AgentOutcome::AlreadyRunning { .. } = outcome
        && foreground
    {
        eprintln!("(nothing to do: another host agent runs {})", options.name);
    }
    outcome.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Invocation, String> {
        parse(args.iter().map(OsString::from))
    }

    fn name(text: &str) -> InstanceName {
        text.parse().unwrap()
    }

    #[test]
    fn a_name_and_an_optional_foreground_flag() {
        assert_eq!(
            parsed(&["dev"]),
            Ok(Invocation::Run {
                name: name("dev"),
                foreground: false,
                repair_data: false,
                upgraded: None,
            })
        );
        assert_eq!(
            parsed(&["--foreground", "dev"]),
            Ok(Invocation::Run {
                name: name("dev"),
                foreground: true,
                repair_data: false,
                upgraded: None,
            })
        );
        assert_eq!(
            parsed(&["dev", "--repair-data"]),
            Ok(Invocation::Run {
                name: name("dev"),
                foreground: false,
                repair_data: true,
                upgraded: None,
            })
        );
        assert_eq!(parsed(&["dev", "--help"]), Ok(Invocation::Help));
    }

    #[test]
    fn args_round_trip_through_parse() {
        for foreground in [false, true] {
            for repair_data in [false, true] {
                let args = args_repairing(&name("web-1"), foreground, repair_data);
                assert_eq!(
                    parse(args.into_iter().map(OsString::from)),
                    Ok(Invocation::Run {
                        name: name("web-1"),
                        foreground,
                        repair_data,
                        upgraded: None,
                    })
                );
            }
        }
    }

    #[test]
    fn an_upgrade_hands_its_lock_and_builds_over_on_the_command_line() {
        let handover = Handover {
            lock_fd: 7,
            from: crate::hostagent::api::BuildInfo {
                version: "0.1.0".into(),
                commit: "abc".into(),
            },
            to: crate::hostagent::api::BuildInfo::this_build(),
            checked_secs: 0.01,
            exec_at_unix: 1.0,
        };
        let mut args = args(&name("dev"), true);
        args.push(FLAG.into());
        args.push(serde_json::to_string(&handover).unwrap());
        assert_eq!(
            parse(args.into_iter().map(OsString::from)),
            Ok(Invocation::Run {
                name: name("dev"),
                foreground: true,
                repair_data: false,
                upgraded: Some(handover),
            })
        );
        assert_eq!(parsed(&[CHECK_FLAG]), Ok(Invocation::CheckFormats));
        assert!(parsed(&["dev", FLAG]).is_err());
        assert!(parsed(&["dev", FLAG, "{}"]).is_err());
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(parsed(&[]), Err("missing the instance name".into()));
        assert_eq!(parsed(&["a", "b"]), Err("unexpected argument b".into()));
        assert_eq!(parsed(&["a", "--fg"]), Err("unknown option --fg".into()));
        let bad = parsed(&["../x"]).unwrap_err();
        assert!(bad.starts_with("invalid instance name: "), "{bad}");
    }
}
