//! The stop ladder's decisions, as a pure function of what has been done and
//! how long ago. The host agent executes them (see `hostagent::stop_ladder`).
//!
//! 1. Ask the guest through the hypervisor: the ACPI power button (QMP
//!    `system_powerdown`), re-sent periodically because a press that arrives
//!    before the guest watches the button is lost.
//! 2. If the hypervisor cannot ask, or the guest ignores it until half the
//!    deadline, ask the guest agent to power off.
//! 3. At the deadline, hard stop: QMP `quit`, then SIGKILL if QEMU is still
//!    there after a short grace.
//!
//! One deadline governs the whole ladder; `force` jumps to step 3.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::timeouts;

/// When whoever asked a host agent to stop (`vmkeep stop`, the daemon, a
/// host shutdown) forces the stop, counted from the ask: past the longer of
/// its own `deadline` and the one the agent journaled for the ladder it runs
/// (a further request may have granted it more), plus the agent's margin.
pub fn force_after(deadline: Duration, journaled: Option<Duration>) -> Duration {
    deadline
        .max(journaled.unwrap_or_default())
        .saturating_add(timeouts::STOP_MARGIN)
}

/// A rung of the ladder, in order of escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// ACPI power button through the hypervisor.
    PowerButton,
    /// Power-off request to the guest agent.
    GuestAgentPoweroff,
    /// Hypervisor quit: the VM ends at once (a power cut for the guest).
    Quit,
    /// SIGKILL to the hypervisor process.
    Kill,
}

impl Step {
    /// Whether the guest shut itself down cleanly after this step.
    pub fn is_graceful(self) -> bool {
        matches!(self, Step::PowerButton | Step::GuestAgentPoweroff)
    }
}

/// Timings of one ladder run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// When the hard stop begins.
    pub deadline: Duration,
    /// Interval between power-button presses.
    pub resend_every: Duration,
    /// When the guest agent is asked if the power button has not worked.
    pub fallback_after: Duration,
    /// How long `quit` may take before SIGKILL.
    pub quit_grace: Duration,
}

impl Plan {
    pub fn new(deadline: Duration) -> Plan {
        Plan {
            deadline,
            resend_every: Duration::from_secs(2)
                .min(deadline / 4)
                .max(Duration::from_millis(250)),
            fallback_after: deadline / 2,
            quit_grace: Duration::from_secs(2),
        }
    }

    /// A further stop request, while this ladder runs, may grant the guest
    /// more time (the longest deadline asked for wins), never less: only
    /// `force` hastens a stop. `deadline` is measured, like every time here,
    /// from the start of the ladder. Returns whether the deadline moved.
    pub fn extend_to(&mut self, deadline: Duration) -> bool {
        if deadline <= self.deadline {
            return false;
        }
        self.deadline = deadline;
        true
    }
}

/// Which ways of reaching the VM are available now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    /// The hypervisor's control channel (QMP) answers.
    pub hypervisor: bool,
    /// The guest agent is connected.
    pub guest_agent: bool,
}

/// What has been done so far; times are measured from the start of the ladder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    power_button_presses: u32,
    last_power_button: Option<Duration>,
    guest_agent_asked: bool,
    quit_at: Option<Duration>,
    killed: bool,
    force: bool,
    last_step: Option<Step>,
    strongest_delivered: Option<Step>,
}

impl Progress {
    /// Skip to the hard stop (from now on).
    pub fn force(&mut self) {
        self.force = true;
    }

    /// Record that `step` was taken at `at`.
    pub fn taken(&mut self, step: Step, at: Duration) {
        match step {
            Step::PowerButton => {
                self.power_button_presses += 1;
                self.last_power_button = Some(at);
            }
            Step::GuestAgentPoweroff => self.guest_agent_asked = true,
            Step::Quit => self.quit_at = Some(at),
            Step::Kill => self.killed = true,
        }
        self.last_step = Some(step);
    }

    /// Record that `step` reached its target (the request was accepted).
    pub fn delivered(&mut self, step: Step) {
        self.strongest_delivered = self.strongest_delivered.max(Some(step));
    }

    /// What ended the VM when it went away: the most escalated step that was
    /// delivered (a later power-button press does not take the credit from an
    /// accepted guest-agent power-off), else the last step attempted.
    pub fn ended_by(&self) -> Option<Step> {
        self.strongest_delivered.or(self.last_step)
    }

    pub fn power_button_presses(&self) -> u32 {
        self.power_button_presses
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Take(Step),
    /// Nothing to do before this time (unless the VM exits first).
    WaitUntil(Duration),
    /// Everything has been done; wait for the process to go.
    WaitForExit,
}

/// The next action of the ladder.
pub fn decide(plan: &Plan, progress: &Progress, channels: Channels, now: Duration) -> Decision {
    if progress.killed {
        return Decision::WaitForExit;
    }
    if let Some(quit_at) = progress.quit_at {
        let kill_at = quit_at + plan.quit_grace;
        return if now >= kill_at {
            Decision::Take(Step::Kill)
        } else {
            Decision::WaitUntil(kill_at)
        };
    }
    if progress.force || now >= plan.deadline {
        return Decision::Take(if channels.hypervisor {
            Step::Quit
        } else {
            Step::Kill
        });
    }

    // Escalation first: when the fallback and a re-press fall due together,
    // the guest agent is asked before the button is pressed again.
    let ask_agent_at = if channels.hypervisor {
        plan.fallback_after
    } else {
        Duration::ZERO
    };
    let agent_pending = channels.guest_agent && !progress.guest_agent_asked;
    if agent_pending && now >= ask_agent_at {
        return Decision::Take(Step::GuestAgentPoweroff);
    }
    let next_press = match progress.last_power_button {
        None => Duration::ZERO,
        Some(last) => last + plan.resend_every,
    };
    if channels.hypervisor && now >= next_press {
        return Decision::Take(Step::PowerButton);
    }
    if !channels.hypervisor
        && !channels.guest_agent
        && !progress.guest_agent_asked
        && progress.power_button_presses == 0
    {
        // Nothing can ask this guest to shut down.
        return Decision::Take(Step::Kill);
    }

    let mut wake = plan.deadline;
    if channels.hypervisor {
        wake = wake.min(next_press);
    }
    if agent_pending {
        wake = wake.min(ask_agent_at);
    }
    Decision::WaitUntil(wake)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Run the ladder against a guest that never stops, with a simulated
    /// clock, and list the steps with their times (in ms).
    fn run(plan: Plan, channels: Channels, force_at: Option<Duration>) -> Vec<(Step, u128)> {
        let mut progress = Progress::default();
        let mut now = Duration::ZERO;
        let mut steps = Vec::new();
        for _ in 0..1000 {
            if force_at.is_some_and(|at| now >= at) {
                progress.force();
            }
            match decide(&plan, &progress, channels, now) {
                Decision::Take(step) => {
                    steps.push((step, now.as_millis()));
                    progress.taken(step, now);
                }
                Decision::WaitUntil(t) => {
                    assert!(t > now, "a wait must move time forward ({t:?} at {now:?})");
                    now = force_at.filter(|at| *at > now && *at < t).unwrap_or(t);
                }
                Decision::WaitForExit => return steps,
            }
        }
        panic!("the ladder did not finish: {steps:?}");
    }

    #[test]
    fn a_later_request_may_grant_more_time_never_less() {
        let mut plan = Plan::new(4 * S);
        assert!(!plan.extend_to(2 * S), "a shorter deadline changes nothing");
        assert!(!plan.extend_to(4 * S));
        assert_eq!(plan.deadline, 4 * S);
        assert!(plan.extend_to(12 * S));
        let steps = run(plan, BOTH, None);
        let quit = steps.iter().find(|(s, _)| *s == Step::Quit).unwrap();
        assert_eq!(
            quit.1, 12_000,
            "the hard stop waits for the longer deadline"
        );
        let asked = steps.iter().find(|(s, _)| *s == Step::GuestAgentPoweroff);
        assert_eq!(asked.unwrap().1, 2000, "the fallback keeps its time");
    }

    const BOTH: Channels = Channels {
        hypervisor: true,
        guest_agent: true,
    };

    #[test]
    fn a_guest_that_ignores_everything_is_pressed_asked_then_quit_and_killed() {
        let steps = run(Plan::new(30 * S), BOTH, None);
        let presses: Vec<u128> = steps
            .iter()
            .filter(|(s, _)| *s == Step::PowerButton)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(
            presses,
            (0..15).map(|i| i * 2000).collect::<Vec<_>>(),
            "a press every 2 s until the deadline"
        );
        let others: Vec<_> = steps
            .iter()
            .filter(|(s, _)| *s != Step::PowerButton)
            .copied()
            .collect();
        assert_eq!(
            others,
            vec![
                (Step::GuestAgentPoweroff, 15_000),
                (Step::Quit, 30_000),
                (Step::Kill, 32_000)
            ]
        );
    }

    #[test]
    fn the_hard_stop_never_starts_before_the_deadline() {
        for secs in [1, 2, 5, 10, 30, 300] {
            let plan = Plan::new(secs * S);
            let steps = run(plan, BOTH, None);
            let quit = steps.iter().find(|(s, _)| *s == Step::Quit).unwrap();
            assert_eq!(quit.1, (secs * S).as_millis(), "deadline {secs}s");
            assert!(
                steps
                    .iter()
                    .filter(|(s, _)| s.is_graceful())
                    .all(|(_, t)| *t < quit.1)
            );
        }
    }

    #[test]
    fn without_the_hypervisor_channel_the_guest_agent_is_asked_first_and_kill_ends_it() {
        let steps = run(
            Plan::new(10 * S),
            Channels {
                hypervisor: false,
                guest_agent: true,
            },
            None,
        );
        assert_eq!(
            steps,
            vec![(Step::GuestAgentPoweroff, 0), (Step::Kill, 10_000)]
        );
    }

    #[test]
    fn without_any_channel_the_only_way_is_to_kill_at_once() {
        let steps = run(
            Plan::new(10 * S),
            Channels {
                hypervisor: false,
                guest_agent: false,
            },
            None,
        );
        assert_eq!(steps, vec![(Step::Kill, 0)]);
    }

    #[test]
    fn without_a_guest_agent_presses_continue_until_the_deadline() {
        let steps = run(
            Plan::new(4 * S),
            Channels {
                hypervisor: true,
                guest_agent: false,
            },
            None,
        );
        assert_eq!(
            steps,
            vec![
                (Step::PowerButton, 0),
                (Step::PowerButton, 1000),
                (Step::PowerButton, 2000),
                (Step::PowerButton, 3000),
                (Step::Quit, 4000),
                (Step::Kill, 6000)
            ]
        );
    }

    #[test]
    fn force_skips_to_the_hard_stop_at_once_or_midway() {
        assert_eq!(
            run(Plan::new(30 * S), BOTH, Some(Duration::ZERO)),
            vec![(Step::Quit, 0), (Step::Kill, 2000)]
        );
        let steps = run(Plan::new(30 * S), BOTH, Some(3 * S));
        assert_eq!(
            steps,
            vec![
                (Step::PowerButton, 0),
                (Step::PowerButton, 2000),
                (Step::Quit, 3000),
                (Step::Kill, 5000)
            ]
        );
    }

    #[test]
    fn the_strongest_delivered_step_is_what_ended_the_vm() {
        let mut progress = Progress::default();
        progress.taken(Step::PowerButton, Duration::ZERO);
        progress.delivered(Step::PowerButton);
        assert_eq!(progress.ended_by(), Some(Step::PowerButton));
        assert_eq!(progress.power_button_presses(), 1);
        progress.taken(Step::GuestAgentPoweroff, 15 * S);
        progress.delivered(Step::GuestAgentPoweroff);
        // A press after the accepted power-off does not take the credit.
        progress.taken(Step::PowerButton, 16 * S);
        progress.delivered(Step::PowerButton);
        assert_eq!(progress.ended_by(), Some(Step::GuestAgentPoweroff));
    }

    #[test]
    fn an_undelivered_step_gets_credit_only_when_nothing_was_delivered() {
        let mut progress = Progress::default();
        progress.taken(Step::PowerButton, Duration::ZERO);
        progress.delivered(Step::PowerButton);
        progress.taken(Step::GuestAgentPoweroff, 15 * S);
        assert_eq!(progress.ended_by(), Some(Step::PowerButton));
        let mut nothing_delivered = Progress::default();
        nothing_delivered.taken(Step::Kill, Duration::ZERO);
        assert_eq!(nothing_delivered.ended_by(), Some(Step::Kill));
    }

    #[test]
    fn the_fallback_goes_before_a_press_due_at_the_same_time() {
        // 6 s: presses every 1.5 s, so one falls due at 3 s with the fallback.
        let steps = run(Plan::new(6 * S), BOTH, None);
        let at_3s: Vec<Step> = steps
            .iter()
            .filter(|(_, t)| *t == 3000)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(at_3s, vec![Step::GuestAgentPoweroff, Step::PowerButton]);
    }

    #[test]
    fn short_deadlines_still_press_more_than_once() {
        let plan = Plan::new(S);
        assert_eq!(plan.resend_every, Duration::from_millis(250));
        assert_eq!(plan.fallback_after, Duration::from_millis(500));
    }
}
