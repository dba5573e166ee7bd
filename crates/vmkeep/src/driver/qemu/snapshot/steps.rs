//! The steps of one resume, timed: each step's end since the resume began,
//! said in one line of the host agent's log once the guest is ready (where
//! a resume's time goes, without a tracer that would distort it).

use std::fmt::Write;
use std::time::Duration;

use tokio::time::Instant;

/// The end of each step of a resume, in the order they ended.
#[derive(Debug, Clone)]
pub struct Steps {
    began: Instant,
    ends: Vec<(&'static str, Duration)>,
}

impl Steps {
    pub fn new(began: Instant) -> Steps {
        Steps {
            began,
            ends: Vec::with_capacity(16),
        }
    }

    /// `step` ended now.
    pub fn ended(&mut self, step: &'static str) {
        self.ends.push((step, self.began.elapsed()));
    }

    /// `step` ended at `at`.
    pub fn ended_at(&mut self, step: &'static str, at: Instant) {
        self.ends
            .push((step, at.saturating_duration_since(self.began)));
    }

    /// One line: each step and when it ended (ms since the resume began),
    /// in the order of their ends.
    pub fn summary(&self) -> String {
        let mut ends = self.ends.clone();
        ends.sort_by_key(|(_, at)| *at);
        let mut line = String::new();
        for (i, (step, at)) in ends.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(line, "{sep}{step} {:.1}", at.as_secs_f64() * 1e3);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_orders_steps_by_their_ends_in_milliseconds() {
        let began = Instant::now();
        let mut steps = Steps::new(began);
        steps.ended_at("qemu answering", began + Duration::from_micros(41_300));
        steps.ended_at("ram filled", began + Duration::from_micros(30_000));
        steps.ended_at("before it began", began - Duration::from_millis(1));
        assert_eq!(
            steps.summary(),
            "before it began 0.0, ram filled 30.0, qemu answering 41.3"
        );
        assert_eq!(Steps::new(began).summary(), "");
    }
}
