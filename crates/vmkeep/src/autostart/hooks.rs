//! How `start`, `stop` and `delete` go through the service manager when it
//! runs an instance: a start becomes the service's start (so the manager
//! owns the agent and keeps it alive), a stop the service's stop (so
//! keep-alive does not bring it back), and a delete unregisters first.

use std::time::{Duration, Instant};

use super::error::AutostartError;
use super::manager::{self, ServiceManager};
use super::record::{self, Record};
use crate::instance::status::{StartPlan, Status};
use crate::instance::{Config, InstanceDir};
use crate::notice::Notice;
use crate::timeouts;

/// How often a wait on the service looks again.
const POLL: Duration = Duration::from_millis(100);
/// How often a wait on a start asks the service manager whether the unit
/// still runs.
const UNIT_CHECK: Duration = Duration::from_secs(1);

/// The status now (observations of locks, files and the journal).
pub type Observe<'a> = &'a dyn Fn() -> std::io::Result<Status>;

/// The registration and its manager, when the manager runs and knows it.
pub fn managed(dir: &InstanceDir) -> Option<(Record, Box<dyn ServiceManager>)> {
    let record = record::load(dir).ok().flatten()?;
    let manager = manager::for_record(&record)?;
    Some((record, manager))
}

/// `vmkeep start NAME` (not --foreground) on a registered instance whose
/// status lets a start boot it: start the service, then wait until the VM
/// runs. `Ok(None)`: the service manager cannot take it (not loaded,
/// already active); start the usual way.
pub fn start_through(
    dir: &InstanceDir,
    record: &Record,
    service: &dyn ServiceManager,
    observe: Observe<'_>,
    notice: &dyn Notice,
) -> Result<Option<String>, AutostartError> {
    if !matches!(
        observe().map_err(AutostartError::Inspect)?.start_plan(),
        StartPlan::Boot
    ) {
        // Running, starting, stopping or refused: the usual path says so.
        return Ok(None);
    }
    let state = service.state()?;
    if !state.loaded || state.active {
        return Ok(None);
    }
    let name = dir.name();
    notice.step(&format!("starting {name} through {}", service.describe()));
    service.start(&record.path)?;
    let boot = Config::load(&dir.config())
        .map(|c| c.boot_timeout.0)
        .unwrap_or(timeouts::DEFAULT_BOOT_TIMEOUT);
    let until = Instant::now() + super::service_start_timeout(boot);
    let mut checked = Instant::now();
    loop {
        let status = observe().map_err(AutostartError::Inspect)?;
        if status == Status::Running {
            return Ok(Some(service.describe()));
        }
        if checked.elapsed() > UNIT_CHECK {
            checked = Instant::now();
            if !service.state()?.active {
                return Err(AutostartError::UnitStopped {
                    unit: service.service().to_string(),
                    name: name.to_string(),
                    log: dir.dir().join(super::LOG_FILE),
                    journal_flag: service.journal_flag(),
                });
            }
        }
        if Instant::now() > until {
            return Err(AutostartError::DidNotComeUp {
                name: name.to_string(),
                service: service.describe(),
                status: status.word().into(),
                log: dir.dir().join(super::LOG_FILE),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// `vmkeep stop NAME` (no --force, no --timeout) on an instance whose
/// service is active: stop the service and wait until the VM is stopped.
/// `Ok(false)`: the service is not active, or refused: stop the usual way
/// (the agent then exits 0, which keep-alive does not restart either).
pub fn stop_through(
    dir: &InstanceDir,
    record: &Record,
    service: &dyn ServiceManager,
    observe: Observe<'_>,
    notice: &dyn Notice,
) -> Result<bool, AutostartError> {
    if !service.state()?.active {
        return Ok(false);
    }
    let name = dir.name();
    notice.step(&format!("stopping {name} through {}", service.describe()));
    if let Err(e) = service.stop() {
        notice.warn(&format!("{e}; stopping {name} directly instead"));
        return Ok(false);
    }
    let deadline = Config::load(&dir.config())
        .map(|c| c.stop_timeout.0)
        .unwrap_or(timeouts::DEFAULT_STOP_TIMEOUT);
    let until = Instant::now() + super::service_stop_timeout(deadline);
    loop {
        let status = observe().map_err(AutostartError::Inspect)?;
        if status == Status::Stopped {
            return Ok(true);
        }
        if Instant::now() > until {
            return Err(AutostartError::StillRunning {
                name: name.to_string(),
                status: status.word().into(),
                manager: record.manager,
                service: record.service.clone(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// After a forced stop had to kill the agent, keep-alive may have scheduled
/// a restart; stopping the unit cancels it.
pub fn cancel_restart(dir: &InstanceDir, notice: &dyn Notice) {
    if let Some((_, service)) = managed(dir)
        && service.state().is_ok_and(|s| s.active)
        && let Err(e) = service.stop()
    {
        notice.warn(&format!("could not stop {}: {e}", service.service()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::manager::ServiceState;
    use super::super::manager::fake::FakeManager;
    use super::super::{Condition, Domain, Manager};
    use super::*;
    use crate::notice::Silent;
    use std::cell::RefCell;

    fn record() -> Record {
        Record {
            domain: Some(Domain::SystemdUser),
            manager: Manager::Systemd,
            condition: Condition::Login,
            keep_alive: true,
            service: "vmkeep-dev.service".into(),
            path: "/home/ann/.config/systemd/user/vmkeep-dev.service".into(),
            user: "ann".into(),
            loaded: true,
            enabled_at: "t".into(),
        }
    }

    fn dir() -> (tempfile::TempDir, InstanceDir) {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "dev".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        (root, dir)
    }

    /// Statuses handed out one per observation, the last one repeated.
    fn statuses(seq: Vec<Status>) -> impl Fn() -> std::io::Result<Status> {
        let seq = RefCell::new(seq);
        move || {
            let mut seq = seq.borrow_mut();
            Ok(if seq.len() > 1 {
                seq.remove(0)
            } else {
                seq[0].clone()
            })
        }
    }

    #[test]
    fn a_start_goes_through_a_loaded_inactive_service_and_waits_for_running() {
        let (_root, dir) = dir();
        let fake = FakeManager::default();
        *fake.state.borrow_mut() = ServiceState {
            loaded: true,
            ..Default::default()
        };
        let observe = statuses(vec![Status::Stopped, Status::Starting, Status::Running]);
        let through = start_through(&dir, &record(), &fake, &observe, &Silent).unwrap();
        assert_eq!(through.as_deref(), Some("fake (unit vmkeep-dev.service)"));
        assert_eq!(*fake.calls.borrow(), ["state", "start"]);
    }

    #[test]
    fn a_start_goes_around_a_running_vm_an_active_unit_or_an_unknown_one() {
        let (_root, dir) = dir();
        for (status, state) in [
            (
                Status::Running,
                ServiceState {
                    loaded: true,
                    ..Default::default()
                },
            ),
            (
                Status::Stopped,
                ServiceState {
                    loaded: true,
                    active: true,
                    ..Default::default()
                },
            ),
            (Status::Stopped, ServiceState::default()),
        ] {
            let fake = FakeManager::default();
            *fake.state.borrow_mut() = state.clone();
            let observe = statuses(vec![status.clone()]);
            let through = start_through(&dir, &record(), &fake, &observe, &Silent).unwrap();
            assert_eq!(through, None, "{status:?} {state:?}");
            assert!(!fake.calls.borrow().contains(&"start".to_string()));
        }
    }

    #[test]
    fn a_unit_that_stops_before_the_vm_runs_is_reported_with_its_journal() {
        let (_root, dir) = dir();
        let fake = FakeManager::default();
        *fake.state.borrow_mut() = ServiceState {
            loaded: true,
            ..Default::default()
        };
        // The unit never becomes active; the VM stays Stopped.
        let observe = statuses(vec![Status::Stopped]);
        let err = start_through(&dir, &record(), &fake, &observe, &Silent).unwrap_err();
        assert!(matches!(err, AutostartError::UnitStopped { .. }), "{err}");
        assert!(err.to_string().contains("journalctl"), "{err}");
    }

    #[test]
    fn a_stop_goes_through_an_active_unit_and_a_refused_one_falls_back() {
        let (_root, dir) = dir();
        let fake = FakeManager::default();
        *fake.state.borrow_mut() = ServiceState {
            loaded: true,
            active: true,
            ..Default::default()
        };
        let observe = statuses(vec![Status::Stopping, Status::Stopped]);
        assert!(stop_through(&dir, &record(), &fake, &observe, &Silent).unwrap());
        assert_eq!(*fake.calls.borrow(), ["state", "stop"]);

        *fake.failing.borrow_mut() = Some("stop");
        assert!(!stop_through(&dir, &record(), &fake, &observe, &Silent).unwrap());

        let inactive = FakeManager::default();
        assert!(!stop_through(&dir, &record(), &inactive, &observe, &Silent).unwrap());
        assert_eq!(*inactive.calls.borrow(), ["state"]);
    }
}
