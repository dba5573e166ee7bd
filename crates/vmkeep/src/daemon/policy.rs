//! The daemon's decisions, pure: from what it saw of an instance (its
//! status, policy, desired state, how its last run ended) and what it
//! remembers, the actions to take ([`decide`]); whether an instance should
//! run after its last run ended; when (or whether) to restart it after
//! failures. `daemon/mod.rs` only observes and carries the actions out.

use std::collections::VecDeque;
use std::time::Duration;

use crate::instance::config::RunStrategy;
use crate::instance::desired::Desired;
use crate::instance::journal::{self, LastRun, Record};
use crate::instance::status::{Broken, Status};
use crate::stop_ladder;

/// Whether the instance should be running now that its last run ended so.
/// `witnessed`: the daemon saw the run end (else it is looking at an ending
/// from before it started, as after a host reboot).
pub fn should_run(
    strategy: RunStrategy,
    desired: Option<Desired>,
    last: &LastRun,
    witnessed: bool,
) -> bool {
    if matches!(desired, Some(Desired::Stopped | Desired::Suspended)) || *last == LastRun::GaveUp {
        return false;
    }
    match strategy {
        RunStrategy::Halted | RunStrategy::Manual => false,
        RunStrategy::Always => true,
        RunStrategy::OnFailure => match last {
            _ if last.is_failure() => true,
            // KubeVirt's RerunOnFailure: started at first, rerun on failure.
            LastRun::Never => true,
            // A stop nobody asked for through vmkeep (a host shutdown, or the
            // daemon's own stop at its exit) while the user wanted it running:
            // bring it back when the daemon comes up again, as a service
            // manager starts enabled units at boot.
            LastRun::Requested => !witnessed && desired == Some(Desired::Running),
            _ => false,
        },
    }
}

/// How long an agent asked to stop may take before the daemon forces the
/// stop: the deadline that agent journaled for the stop it runs (a `vmkeep
/// stop --timeout` may grant more than the instance's `stopTimeout`), at
/// least `stop_timeout`, plus the margin.
pub fn stop_limit(stop_timeout: Duration, agent_pid: Option<u32>, records: &[Record]) -> Duration {
    let journaled = agent_pid.and_then(|pid| journal::stop_deadline(records, pid));
    stop_ladder::force_after(stop_timeout, journaled)
}

/// Restart pacing: exponential backoff, and a start limit after which the
/// daemon gives up (like systemd's StartLimitBurst within StartLimitIntervalSec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Starts allowed within `interval` before giving up.
    pub burst: u32,
    pub interval: Duration,
    /// Delay before the first restart; doubles with each further one.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            burst: 5,
            interval: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The daemon's starts of one instance (times since the daemon began).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    starts: VecDeque<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it at this time.
    StartAt(Duration),
    /// Too many starts within the interval.
    GiveUp { starts: u32 },
}

impl Restarts {
    pub fn record_start(&mut self, at: Duration) {
        self.starts.push_back(at);
    }

    /// Starts within the current history.
    pub fn attempts(&self) -> u32 {
        self.starts.len() as u32
    }

    /// Forget the history (the user started it by hand).
    pub fn reset(&mut self) {
        self.starts.clear();
    }

    /// When to restart after a run that ended at `now`.
    pub fn next(&mut self, limits: &RestartLimits, now: Duration) -> Verdict {
        while self
            .starts
            .front()
            .is_some_and(|at| now.saturating_sub(*at) > limits.interval)
        {
            self.starts.pop_front();
        }
        let recent = self.starts.len() as u32;
        if recent >= limits.burst {
            return Verdict::GiveUp { starts: recent };
        }
        let delay = match recent {
            0 => Duration::ZERO,
            n => limits
                .backoff
                .saturating_mul(1 << (n - 1).min(20))
                .min(limits.backoff_max),
        };
        Verdict::StartAt(now + delay)
    }
}

/// What the daemon remembers of one instance between two looks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// It holds a handle to the current run's host agent.
    pub watching: bool,
    /// It saw the current run's agent exit.
    pub witnessed_end: bool,
    /// Key of the run ending already decided on (`Some(None)`: "never ran"
    /// was decided on).
    pub decided: Option<Option<String>>,
    pub restarts: Restarts,
    /// A (re)start decided on: when, after what, and the backoff it waited.
    pub start_at: Option<(Duration, LastRun, Duration)>,
    /// When the daemon asked the agent to stop.
    pub stop_asked: Option<Duration>,
    /// A stop the daemon runs itself (adopting an orphan, or forcing) is
    /// still going.
    pub helper_busy: bool,
}

impl Memory {
    /// The daemon now watches the agent that holds the instance's lock;
    /// one it did not start means the user took over: restart history goes.
    pub fn watching_agent(&mut self, started_by_daemon: bool) {
        self.watching = true;
        if !started_by_daemon {
            self.restarts.reset();
        }
    }

    /// The agent it watched exited.
    pub fn agent_exited(&mut self) {
        self.watching = false;
        self.witnessed_end = true;
    }
}

/// What the daemon saw of an instance this time.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub status: &'a Status,
    pub strategy: RunStrategy,
    pub desired: Option<Desired>,
    /// How the last run ended (journal) and the key of that record.
    pub last: &'a LastRun,
    pub last_key: Option<&'a str>,
    /// Time since the daemon began.
    pub now: Duration,
    /// How long an agent asked to stop may take before it is forced: its
    /// deadline plus the margin.
    pub stop_limit: Duration,
    pub limits: &'a RestartLimits,
}

/// What the daemon does about an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Watch the host agent that holds the lock (one the daemon did not
    /// start, or a previous daemon's).
    WatchAgent,
    /// SIGTERM the agent: it runs the stop ladder.
    AskAgentToStop { why: &'static str },
    /// The agent overran its deadline: force the stop.
    ForceStop,
    /// QEMU runs without an agent and should not run: adopt it to stop it.
    AdoptToStop,
    /// QEMU runs without an agent: spawn one to adopt it.
    AdoptToRun,
    /// Start it with a new agent (journal `restarting` unless it never ran).
    Start {
        attempt: u32,
        after: LastRun,
        backoff: Duration,
    },
    /// Too many starts within the interval: journal `gave-up`.
    GiveUp { starts: u32, last_error: String },
    /// Something only a human can fix: say so (once).
    Report(String),
}

/// Decide what to do about one instance. Pure: the daemon carries out the
/// actions and tells `memory` how they went.
pub fn decide(memory: &mut Memory, seen: &Seen<'_>) -> Vec<Action> {
    let unwanted = seen.strategy == RunStrategy::Halted || seen.desired == Some(Desired::Stopped);
    let mut actions = Vec::new();
    match seen.status {
        Status::Running
        | Status::Starting
        | Status::Paused(_)
        | Status::Stopping
        // A VM whose shared directory lost its virtiofsd still runs.
        | Status::Broken(
            Broken::QemuGone { .. }
            | Broken::AgentUnresponsive { .. }
            | Broken::SharedDirsLost { .. },
        ) => {
            memory.start_at = None;
            if !memory.watching {
                actions.push(Action::WatchAgent);
            }
            if unwanted && memory.stop_asked.is_none() && *seen.status != Status::Stopping {
                memory.stop_asked = Some(seen.now);
                actions.push(Action::AskAgentToStop {
                    why: if seen.strategy == RunStrategy::Halted {
                        "runStrategy: halted"
                    } else {
                        "`vmkeep stop` was asked"
                    },
                });
            }
            if let Some(asked) = memory.stop_asked
                && seen.now.saturating_sub(asked) > seen.stop_limit
                && !memory.helper_busy
            {
                memory.helper_busy = true;
                actions.push(Action::ForceStop);
            }
        }
        Status::Broken(Broken::OrphanedQemu { .. }) => {
            if !memory.helper_busy && !memory.watching {
                if unwanted {
                    memory.helper_busy = true;
                    actions.push(Action::AdoptToStop);
                } else {
                    actions.push(Action::AdoptToRun);
                }
            }
        }
        Status::Stopped
        | Status::Suspended
        | Status::Broken(Broken::StaleRuntimeFiles { .. } | Broken::GaveUp { .. }) => {
            memory.stop_asked = None;
            if memory.watching {
                return actions; // its agent is still taking its lock
            }
            let key = seen.last_key.map(str::to_string);
            if memory.decided.as_ref() != Some(&key) {
                memory.decided = Some(key);
                let witnessed = std::mem::take(&mut memory.witnessed_end);
                memory.start_at = None;
                if should_run(seen.strategy, seen.desired, seen.last, witnessed) {
                    let paced = seen.last.is_failure() || witnessed;
                    let verdict = if paced {
                        memory.restarts.next(seen.limits, seen.now)
                    } else {
                        Verdict::StartAt(seen.now)
                    };
                    match verdict {
                        Verdict::StartAt(at) => {
                            memory.start_at = Some((at, seen.last.clone(), at - seen.now));
                        }
                        Verdict::GiveUp { starts } => actions.push(Action::GiveUp {
                            starts,
                            last_error: seen.last.describe(),
                        }),
                    }
                }
            }
            if let Some((at, after, backoff)) = memory.start_at.clone()
                && seen.now >= at
            {
                memory.restarts.record_start(seen.now);
                memory.start_at = None;
                actions.push(Action::Start {
                    attempt: memory.restarts.attempts(),
                    after,
                    backoff,
                });
            }
        }
        // Restarting cannot help these: a human must.
        Status::Broken(
            other @ (Broken::ConfigMissing
            | Broken::ConfigInvalid { .. }
            | Broken::DiskMissing
            | Broken::DataDisk { .. }
            | Broken::ServiceGaveUp { .. }
            | Broken::FormatTooNew { .. }),
        ) => actions.push(Action::Report(format!(
            "{}; {}",
            other.message(),
            other.hint()
        ))),
    }
    actions
}

/// What the daemon saw when a SIGTERM came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// The job systemd runs on the daemon's own unit (`restart`, `stop`,
    /// ...; `Ok(None)`: no job, a plain `kill`), or why it could not be
    /// asked (not run by systemd).
    pub unit_job: Result<Option<String>, String>,
    /// The host (or the user's manager) is shutting down; `None`: unknown.
    pub host_shutting_down: Option<bool>,
    /// The host agents the daemon spawned live outside its cgroup (a scope
    /// each), so they outlive its unit's stop.
    pub agents_outside: bool,
}

/// What the daemon does with its VMs when it exits on a SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtExit {
    /// Stop (or, at a host shutdown, suspend) every supervised VM, as its
    /// ladder says: a stop of the daemon's unit, a host shutdown, a SIGTERM
    /// from anything else.
    StopAll { why: &'static str },
    /// Leave them running: the unit is being restarted, and the next daemon
    /// takes them over.
    LeaveRunning,
}

/// Whether a SIGTERM stops the daemon's VMs. Only a restart of its own
/// unit (`systemctl restart`, `try-restart`, `reload-or-restart`: systemd
/// runs them as a `restart` job) leaves them running, and only when they
/// are out of the unit's cgroup (else systemd kills them with it) and the
/// host is not going down.
pub fn at_exit(seen: &Termination) -> AtExit {
    if seen.host_shutting_down == Some(true) {
        return AtExit::StopAll {
            why: "the host is shutting down",
        };
    }
    match seen.unit_job.as_ref().map(Option::as_deref) {
        Ok(Some("restart" | "try-restart")) if seen.agents_outside => AtExit::LeaveRunning,
        Ok(Some("restart" | "try-restart")) => AtExit::StopAll {
            why: "its unit restarts, but its host agents are in its cgroup, where systemd kills them",
        },
        Ok(Some(_)) => AtExit::StopAll {
            why: "its unit is being stopped",
        },
        Ok(None) => AtExit::StopAll {
            why: "a SIGTERM without a job on its unit",
        },
        Err(_) => AtExit::StopAll {
            why: "not run by systemd",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn policy_table() {
        use LastRun::*;
        use RunStrategy::*;
        let running = Some(Desired::Running);
        // (strategy, last run, witnessed) -> should run
        let cases = [
            (Always, Crashed, true, true),
            (Always, GuestPoweroff, true, true),
            (Always, Requested, true, true),
            (Always, Unclean, true, true),
            (OnFailure, Crashed, true, true),
            (OnFailure, Unclean, true, true),
            (OnFailure, StartFailed { error: "x".into() }, true, true),
            (OnFailure, GuestPoweroff, true, false),
            (OnFailure, Requested, true, false),
            (OnFailure, Requested, false, true),
            (OnFailure, Never, false, true),
            (Manual, Never, false, false),
            (Manual, Crashed, true, false),
            (Manual, Unclean, false, false),
            (Halted, Crashed, true, false),
            (Always, GaveUp, false, false),
        ];
        for (strategy, last, witnessed, expected) in cases {
            assert_eq!(
                should_run(strategy, running, &last, witnessed),
                expected,
                "{strategy:?} after {last:?} (witnessed: {witnessed})"
            );
        }
        for strategy in [Always, OnFailure, Manual, Halted] {
            assert!(
                !should_run(strategy, Some(Desired::Stopped), &Crashed, true),
                "`vmkeep stop` wins over {strategy:?}"
            );
            assert!(
                !should_run(strategy, Some(Desired::Suspended), &Requested, false),
                "`vmkeep suspend` wins over {strategy:?}"
            );
        }
    }

    fn seen<'a>(
        status: &'a Status,
        strategy: RunStrategy,
        desired: Option<Desired>,
        last: &'a LastRun,
        key: Option<&'a str>,
        now: Duration,
        limits: &'a RestartLimits,
    ) -> Seen<'a> {
        Seen {
            status,
            strategy,
            desired,
            last,
            last_key: key,
            now,
            stop_limit: 45 * S,
            limits,
        }
    }

    #[test]
    fn the_force_limit_follows_the_deadline_the_agent_journaled() {
        use crate::instance::journal::{Event, StopCause};
        let stopping = |pid, deadline_secs| Record {
            ts: "2026-12-01T00:00:00.000Z".into(),
            pid,
            event: Event::Stopping {
                cause: StopCause::Request,
                deadline_secs,
                force: false,
            },
        };
        let margin = timeouts::STOP_MARGIN;
        // `vmkeep stop --timeout 5m`: the agent's own deadline counts.
        assert_eq!(
            stop_limit(20 * S, Some(7), &[stopping(7, 300.0)]),
            300 * S + margin
        );
        // Never less than the instance's, and another agent's says nothing.
        assert_eq!(
            stop_limit(20 * S, Some(7), &[stopping(7, 4.0)]),
            20 * S + margin
        );
        assert_eq!(
            stop_limit(20 * S, Some(8), &[stopping(7, 300.0)]),
            20 * S + margin
        );
        assert_eq!(
            stop_limit(20 * S, None, &[stopping(7, 300.0)]),
            20 * S + margin
        );
        // The latest stop of that agent wins; a damaged figure is ignored.
        assert_eq!(
            stop_limit(20 * S, Some(7), &[stopping(7, 300.0), stopping(7, 30.0)]),
            30 * S + margin
        );
        assert_eq!(
            stop_limit(20 * S, Some(7), &[stopping(7, f64::NAN)]),
            20 * S + margin
        );
        assert_eq!(
            stop_limit(20 * S, Some(7), &[stopping(7, -1.0)]),
            20 * S + margin
        );
    }

    #[test]
    fn a_crash_is_restarted_with_backoff_and_once_per_ending() {
        let limits = RestartLimits::default();
        let mut memory = Memory::default();
        let stopped = Status::Stopped;
        let crashed = LastRun::Crashed;
        let look = |memory: &mut Memory, now| {
            decide(
                memory,
                &seen(
                    &stopped,
                    RunStrategy::Always,
                    None,
                    &crashed,
                    Some("t1"),
                    now,
                    &limits,
                ),
            )
        };
        // The first restart goes at once; the same ending is not decided twice.
        assert_eq!(
            look(&mut memory, 10 * S),
            [Action::Start {
                attempt: 1,
                after: LastRun::Crashed,
                backoff: Duration::ZERO
            }]
        );
        assert_eq!(look(&mut memory, 11 * S), []);
        // Its agent starts, runs and crashes again (a new record): backoff 1 s.
        memory.watching_agent(true);
        memory.agent_exited();
        let later = decide(
            &mut memory,
            &seen(
                &stopped,
                RunStrategy::Always,
                None,
                &crashed,
                Some("t2"),
                20 * S,
                &limits,
            ),
        );
        assert_eq!(later, [], "not yet: it waits its backoff");
        let due = decide(
            &mut memory,
            &seen(
                &stopped,
                RunStrategy::Always,
                None,
                &crashed,
                Some("t2"),
                21 * S,
                &limits,
            ),
        );
        assert_eq!(
            due,
            [Action::Start {
                attempt: 2,
                after: LastRun::Crashed,
                backoff: S
            }]
        );
    }

    /// A VM suspended at the last host shutdown (its desired state still
    /// says running) is resumed when the daemon comes up, as an enabled
    /// unit would be; one the user suspended stays so; `manual` and
    /// `halted` are never started by the daemon, suspended or not.
    #[test]
    fn a_suspended_vm_is_resumed_only_when_its_user_still_wants_it_running() {
        let limits = RestartLimits::default();
        let suspended = Status::Suspended;
        let requested = LastRun::Requested;
        let cases = [
            (RunStrategy::Always, Some(Desired::Running), true),
            (RunStrategy::OnFailure, Some(Desired::Running), true),
            (RunStrategy::Always, Some(Desired::Suspended), false),
            (RunStrategy::OnFailure, Some(Desired::Suspended), false),
            (RunStrategy::Manual, Some(Desired::Running), false),
            (RunStrategy::Halted, Some(Desired::Running), false),
        ];
        for (strategy, desired, resumed) in cases {
            let mut memory = Memory::default();
            let actions = decide(
                &mut memory,
                &seen(
                    &suspended,
                    strategy,
                    desired,
                    &requested,
                    Some("t1"),
                    S,
                    &limits,
                ),
            );
            let expected = match resumed {
                true => vec![Action::Start {
                    attempt: 1,
                    after: LastRun::Requested,
                    backoff: Duration::ZERO,
                }],
                false => vec![],
            };
            assert_eq!(actions, expected, "{strategy:?}, desired {desired:?}");
        }
    }

    #[test]
    fn an_unwanted_run_is_asked_to_stop_once_then_forced_after_its_limit() {
        let limits = RestartLimits::default();
        let mut memory = Memory {
            watching: true,
            ..Default::default()
        };
        let running = Status::Running;
        let last = LastRun::Never;
        let at = |memory: &mut Memory, now| {
            decide(
                memory,
                &seen(
                    &running,
                    RunStrategy::Always,
                    Some(Desired::Stopped),
                    &last,
                    None,
                    now,
                    &limits,
                ),
            )
        };
        assert_eq!(
            at(&mut memory, S),
            [Action::AskAgentToStop {
                why: "`vmkeep stop` was asked"
            }]
        );
        assert_eq!(at(&mut memory, 30 * S), [], "asked once, within its limit");
        assert_eq!(at(&mut memory, 47 * S), [Action::ForceStop]);
        assert_eq!(at(&mut memory, 48 * S), [], "one forced stop at a time");
    }

    #[test]
    fn an_orphan_is_adopted_to_run_or_to_stop_and_a_user_takes_over_an_agent() {
        let limits = RestartLimits::default();
        let orphan = Status::Broken(Broken::OrphanedQemu { qemu_pid: 9 });
        let last = LastRun::Unclean;
        let mut memory = Memory::default();
        assert_eq!(
            decide(
                &mut memory,
                &seen(&orphan, RunStrategy::Always, None, &last, None, S, &limits)
            ),
            [Action::AdoptToRun]
        );
        let mut memory = Memory::default();
        assert_eq!(
            decide(
                &mut memory,
                &seen(&orphan, RunStrategy::Halted, None, &last, None, S, &limits)
            ),
            [Action::AdoptToStop]
        );
        assert_eq!(
            decide(
                &mut memory,
                &seen(
                    &orphan,
                    RunStrategy::Halted,
                    None,
                    &last,
                    None,
                    2 * S,
                    &limits
                )
            ),
            [],
            "one stop at a time"
        );
        // An agent the user started: watched, and the restart history goes.
        let mut memory = Memory::default();
        memory.restarts.record_start(S);
        let running = Status::Running;
        assert_eq!(
            decide(
                &mut memory,
                &seen(&running, RunStrategy::Always, None, &last, None, S, &limits)
            ),
            [Action::WatchAgent]
        );
        memory.watching_agent(false);
        assert_eq!(memory.restarts.attempts(), 0);
    }

    #[test]
    fn too_many_failures_give_up_and_broken_configs_are_reported() {
        let limits = RestartLimits {
            burst: 2,
            ..RestartLimits::default()
        };
        let mut memory = Memory::default();
        memory.restarts.record_start(S);
        memory.restarts.record_start(2 * S);
        let stopped = Status::Stopped;
        let failed = LastRun::StartFailed {
            error: "boom".into(),
        };
        assert_eq!(
            decide(
                &mut memory,
                &seen(
                    &stopped,
                    RunStrategy::Always,
                    None,
                    &failed,
                    Some("t"),
                    3 * S,
                    &limits
                )
            ),
            [Action::GiveUp {
                starts: 2,
                last_error: "start failed: boom".into()
            }]
        );
        let broken = Status::Broken(Broken::ConfigMissing);
        let actions = decide(
            &mut Memory::default(),
            &seen(
                &broken,
                RunStrategy::Always,
                None,
                &failed,
                None,
                S,
                &limits,
            ),
        );
        assert!(matches!(&actions[..], [Action::Report(_)]), "{actions:?}");
    }

    #[test]
    fn restarts_back_off_exponentially_then_give_up() {
        let limits = RestartLimits {
            burst: 4,
            interval: 100 * S,
            backoff: S,
            backoff_max: 3 * S,
        };
        let mut restarts = Restarts::default();
        let mut now = Duration::ZERO;
        let mut delays = Vec::new();
        loop {
            match restarts.next(&limits, now) {
                Verdict::StartAt(at) => {
                    delays.push((at - now).as_secs());
                    restarts.record_start(at);
                    now = at + S; // it fails a second later
                }
                Verdict::GiveUp { starts } => {
                    assert_eq!(starts, 4);
                    break;
                }
            }
        }
        assert_eq!(delays, vec![0, 1, 2, 3], "doubling, capped at 3 s");
    }

    #[test]
    fn old_starts_fall_out_of_the_interval() {
        let limits = RestartLimits {
            burst: 2,
            interval: 10 * S,
            backoff: S,
            backoff_max: 60 * S,
        };
        let mut restarts = Restarts::default();
        restarts.record_start(Duration::ZERO);
        restarts.record_start(S);
        assert!(matches!(
            restarts.next(&limits, 2 * S),
            Verdict::GiveUp { .. }
        ));
        assert_eq!(
            restarts.next(&limits, 100 * S),
            Verdict::StartAt(100 * S),
            "a failure long after the last ones starts afresh"
        );
    }

    #[test]
    fn only_a_restart_of_its_unit_leaves_the_vms_running() {
        let job = |kind: &str| Ok(Some(kind.to_string()));
        let seen = |unit_job, host_shutting_down, agents_outside| Termination {
            unit_job,
            host_shutting_down,
            agents_outside,
        };
        let stops = |seen: &Termination| matches!(at_exit(seen), AtExit::StopAll { .. });
        // (observed, leaves them running)
        let cases = [
            (seen(job("restart"), Some(false), true), true),
            (seen(job("try-restart"), Some(false), true), true),
            // Whether the host goes down could not be told: a restart job
            // is not what a shutdown queues.
            (seen(job("restart"), None, true), true),
            (seen(job("restart"), Some(true), true), false),
            // Agents in the daemon's cgroup die with its unit: stop them
            // by their ladder first.
            (seen(job("restart"), Some(false), false), false),
            (seen(job("stop"), Some(false), true), false),
            (seen(job("stop"), Some(true), true), false),
            (seen(job("start"), Some(false), true), false),
            (seen(Ok(None), Some(false), true), false),
            (seen(Err("not under systemd".into()), None, true), false),
            (seen(Err("not under systemd".into()), None, false), false),
        ];
        for (seen, leaves) in cases {
            assert_eq!(
                at_exit(&seen) == AtExit::LeaveRunning,
                leaves,
                "{seen:?} -> {:?}",
                at_exit(&seen)
            );
            assert_eq!(stops(&seen), !leaves);
        }
    }
}
