//! Every log the host agent's VM writes, kept bounded: the guest's serial
//! console (`serial.log`), QEMU's and each virtiofsd's output (`qemu.log`,
//! `fsN.log`), and the agent's own log (`ha.log` when spawned detached,
//! `autostart.log` when a service unit runs it: that file is the unit's
//! `StandardOutput=append:`).
//!
//! Each is appended to by processes that keep it open with `O_APPEND`
//! (QEMU, virtiofsd, the service manager, this agent's stderr), so the agent
//! checks them every [`CHECK_EVERY`] and cuts one that is over its bound by
//! copy-then-truncate (`os::capped`, which says why and what it costs),
//! holding its own log writes while it cuts the file they go to.
//!
//! A guest writes to its console as fast as it likes, so `serial.log` has a
//! bound of its own (`VMKEEP_SERIAL_LOG_MAX`, 4 MiB, a quarter kept in
//! `serial.log.1`); the other logs grow only by what vmkeep, QEMU and
//! virtiofsd say, which guest-driven repeats cannot flood
//! (`link::repeats`), and share `VMKEEP_LOG_MAX` (1 MiB).
//!
//! Nothing enforces the bounds while no host agent runs; the next one (after
//! adopting the QEMU) does at once.

use std::time::Duration;

use crate::instance::InstanceDir;
use crate::link::untrusted::LogBudget;
use crate::os::capped::{self, Bound, CappedFile, Checked};

/// How often the host agent looks at the logs' sizes.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The guest's console log: about ten boots of a chatty cloud image fit; a
/// flood costs at most 5 MiB of disk plus a second of output.
pub const SERIAL_DEFAULT: u64 = 4 << 20;
/// The environment variable that sets the console log's cap (bytes).
pub const SERIAL_ENV: &str = "VMKEEP_SERIAL_LOG_MAX";

/// Every other log of vmkeep's (`ha.log`, `autostart.log`, `qemu.log`,
/// `fsN.log`, the daemon's `daemon.log`): thousands of lines each.
pub const LOG_DEFAULT: u64 = 1 << 20;
/// The environment variable that sets their cap (bytes).
pub const LOG_ENV: &str = "VMKEEP_LOG_MAX";

/// The console log's bound, from [`SERIAL_ENV`].
pub fn serial_bound() -> Bound {
    Bound::with_max(capped::max_from_env(SERIAL_ENV, SERIAL_DEFAULT))
}

/// The other logs' bound, from [`LOG_ENV`].
pub fn log_bound() -> Bound {
    Bound::with_max(capped::max_from_env(LOG_ENV, LOG_DEFAULT))
}

/// One log to keep bounded.
#[derive(Debug, Clone)]
pub struct Watched {
    pub file: CappedFile,
    pub bound: Bound,
    /// This process writes its log lines to it.
    pub own: bool,
}

/// The logs of `dir` with `shares` shared directories, and their bounds.
pub fn of(dir: &InstanceDir, shares: usize) -> Vec<Watched> {
    let log = log_bound();
    let mut watched = vec![
        Watched {
            file: CappedFile {
                log: dir.serial_log(),
                previous: dir.serial_log_previous(),
            },
            bound: serial_bound(),
            own: false,
        },
        Watched {
            file: CappedFile::at(dir.agent_log()),
            bound: log,
            own: true,
        },
        Watched {
            file: CappedFile::at(dir.autostart_log()),
            bound: log,
            own: true,
        },
        Watched {
            file: CappedFile::at(dir.qemu_log()),
            bound: log,
            own: false,
        },
    ];
    watched.extend((0..shares).map(|index| Watched {
        file: CappedFile::at(dir.share_log(index)),
        bound: log,
        own: false,
    }));
    watched
}

/// Check `logs` once: cut the ones over their bound.
pub fn check_all(logs: &[Watched], cuts: &mut LogBudget, failures: &mut LogBudget) {
    for watched in logs {
        let checked = if watched.own {
            let _held = crate::logging::hold_writes();
            watched.file.check(watched.bound)
        } else {
            watched.file.check(watched.bound)
        };
        match checked {
            Ok(Checked::Within { .. }) => {}
            Ok(Checked::Cut { bytes }) => {
                if let Some(count) = cuts.tick() {
                    tracing::info!(
                        count,
                        "{} reached {bytes} bytes; its newest {} bytes are in {}, and it starts afresh",
                        watched.file.log.display(),
                        watched.bound.keep_bytes,
                        watched.file.previous.display()
                    );
                }
            }
            Err(error) => {
                if let Some(count) = failures.tick() {
                    tracing::warn!(
                        count,
                        "cannot keep {} bounded: {error}",
                        watched.file.log.display()
                    );
                }
            }
        }
    }
}

/// Check `logs` every [`CHECK_EVERY`] for as long as the task runs (the host
/// agent's life).
pub async fn keep_bounded(logs: Vec<Watched>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cuts = LogBudget::default();
    let mut failures = LogBudget::default();
    loop {
        ticks.tick().await;
        check_all(&logs, &mut cuts, &mut failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_log_of_an_instance_is_watched_and_only_the_agents_own_are_held() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "t".parse().unwrap()).unwrap();
        let logs = of(&dir, 2);
        let names: Vec<(String, String, bool)> = logs
            .iter()
            .map(|w| {
                let name =
                    |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
                (name(&w.file.log), name(&w.file.previous), w.own)
            })
            .collect();
        let expected = [
            ("serial.log", "serial.log.1", false),
            ("ha.log", "ha.log.1", true),
            ("autostart.log", "autostart.log.1", true),
            ("qemu.log", "qemu.log.1", false),
            ("fs0.log", "fs0.log.1", false),
            ("fs1.log", "fs1.log.1", false),
        ];
        assert_eq!(
            names,
            expected
                .iter()
                .map(|(a, b, o)| (a.to_string(), b.to_string(), *o))
                .collect::<Vec<_>>()
        );
        assert_eq!(logs[0].bound, Bound::with_max(SERIAL_DEFAULT));
        assert_eq!(logs[1].bound, Bound::with_max(LOG_DEFAULT));
    }

    #[test]
    fn a_check_cuts_each_log_over_its_bound() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "t".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        let small = Bound::with_max(4096);
        let logs: Vec<Watched> = of(&dir, 1)
            .into_iter()
            .map(|w| Watched { bound: small, ..w })
            .collect();
        for w in &logs {
            std::fs::write(&w.file.log, "x".repeat(5000)).unwrap();
        }
        check_all(&logs, &mut LogBudget::default(), &mut LogBudget::default());
        for w in &logs {
            assert_eq!(std::fs::metadata(&w.file.log).unwrap().len(), 0);
            assert_eq!(std::fs::metadata(&w.file.previous).unwrap().len(), 1024);
        }
    }
}
