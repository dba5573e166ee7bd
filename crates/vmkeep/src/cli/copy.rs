//! `vmkeep copy [-r] SRC... DST` (alias `cp`): Lima's `limactl copy`, with
//! `NAME:PATH` naming a path in an instance on exactly one side
//! (`engine::copy`). A progress bar on a terminal for copies that take a
//! while; problems one line each.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::{CliError, CopyArgs};
use crate::engine::copy::{self, Copied, CopyPlan, Direction, Progress};
use crate::instance::{Home, InstanceName};

/// Copies below this size show no bar (it would only flicker).
const BAR_FROM_BYTES: u64 = 8 * 1024 * 1024;

/// One argument: a host path, or `NAME:PATH` in an instance. A host path
/// with a `:` in its first component can be written `./a:b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host(PathBuf),
    Guest { name: InstanceName, path: String },
}

impl Location {
    pub fn parse(text: &str) -> Location {
        if let Some((name, path)) = text.split_once(':')
            && !name.contains('/')
            && let Ok(name) = name.parse::<InstanceName>()
        {
            let path = if path.is_empty() { "." } else { path };
            return Location::Guest {
                name,
                path: path.to_string(),
            };
        }
        Location::Host(PathBuf::from(text))
    }
}

/// The plan the arguments make: exactly one side in one instance.
pub fn plan(args: &CopyArgs) -> Result<CopyPlan, String> {
    let Some((dest, sources)) = args.paths.split_last() else {
        return Err("give one or more sources and a destination".into());
    };
    let sources: Vec<Location> = sources.iter().map(|s| Location::parse(s)).collect();
    let usage = "exactly one side is NAME:PATH: `vmkeep copy NAME:PATH... DIR` or `vmkeep copy PATH... NAME:PATH`";
    let direction = match Location::parse(dest) {
        Location::Guest { name, path } => {
            let mut host = Vec::new();
            for source in sources {
                match source {
                    Location::Host(path) => host.push(path),
                    Location::Guest { .. } => return Err(usage.into()),
                }
            }
            (
                name,
                Direction::In {
                    sources: host,
                    dest: path,
                },
            )
        }
        Location::Host(dest) => {
            let mut guest = Vec::new();
            let mut instance: Option<InstanceName> = None;
            for source in sources {
                match source {
                    Location::Guest { name, path } => {
                        if instance.as_ref().is_some_and(|seen| *seen != name) {
                            return Err("all sources must be in the same instance".into());
                        }
                        instance = Some(name);
                        guest.push(path);
                    }
                    Location::Host(_) => return Err(usage.into()),
                }
            }
            let Some(name) = instance else {
                return Err(usage.into());
            };
            (
                name,
                Direction::Out {
                    sources: guest,
                    dest,
                },
            )
        }
    };
    Ok(CopyPlan {
        name: direction.0,
        direction: direction.1,
        recursive: args.recursive,
    })
}

pub fn run(args: CopyArgs) -> Result<i32, CliError> {
    let plan = plan(&args).map_err(CliError::Usage)?;
    let bar = Bar::new();
    let copied = copy::copy(&Home::from_env()?, &plan, |progress| bar.show(progress));
    bar.finish();
    match copied? {
        Copied::In(done) => tracing::debug!(bytes = done.bytes, "copied in"),
        Copied::Out(done) => {
            for warning in &done.warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
    Ok(0)
}

/// A progress bar on a terminal, once a copy is large enough to need one.
struct Bar {
    terminal: bool,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            terminal: std::io::stderr().is_terminal(),
            bar: std::sync::Mutex::new(None),
        }
    }

    fn show(&self, progress: Progress) {
        if !self.terminal {
            return;
        }
        let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if bar.is_none() && progress.total.unwrap_or(progress.bytes) >= BAR_FROM_BYTES {
            let made = match progress.total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = match progress.total {
                Some(_) => "{wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                None => "{spinner} {bytes} {binary_bytes_per_sec} ({elapsed})",
            };
            made.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            made.enable_steady_tick(Duration::from_millis(200));
            *bar = Some(made);
        }
        if let Some(bar) = bar.as_ref() {
            bar.set_position(progress.bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let bytes = bar.position();
            bar.finish_and_clear();
            eprintln!("copied {}", HumanBytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(paths: &[&str]) -> CopyArgs {
        CopyArgs {
            recursive: false,
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn exactly_one_side_is_in_an_instance() {
        let out = plan(&args(&["vm:/etc/hosts", "vm:notes", "."])).unwrap();
        assert_eq!(out.name.as_str(), "vm");
        assert_eq!(
            out.direction,
            Direction::Out {
                sources: vec!["/etc/hosts".into(), "notes".into()],
                dest: ".".into()
            }
        );
        let into = plan(&args(&["a.txt", "./b:c", "default:/tmp/"])).unwrap();
        assert_eq!(
            into.direction,
            Direction::In {
                sources: vec!["a.txt".into(), "./b:c".into()],
                dest: "/tmp/".into()
            }
        );
        let home = plan(&args(&["a", "vm:"])).unwrap();
        assert_eq!(
            home.direction,
            Direction::In {
                sources: vec!["a".into()],
                dest: ".".into()
            }
        );
        for bad in [
            &["a", "b"][..],
            &["vm:a", "vm:b"],
            &["vm:a", "other:b", "."],
            &["vm:a", "b", "."],
        ] {
            assert!(plan(&args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(Location::parse("/x:y"), Location::Host("/x:y".into()));
        assert_eq!(
            Location::parse("bad name:y"),
            Location::Host("bad name:y".into())
        );
    }
}
