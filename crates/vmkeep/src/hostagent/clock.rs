//! Keeping the guest's wall clock on the host's.
//!
//! A guest's clock falls behind whenever its virtual time stops while the
//! host's goes on: a resume (the whole suspended time), a QEMU paused and
//! continued, a host that slept. It also starts up to a second off at every
//! boot (the emulated RTC has whole seconds). The host agent asks the guest
//! agent for its time once a second; when the guest is off by more than
//! [`TOLERANCE`], it measures again a few times, keeps the reading with the
//! shortest round trip (the offset is known to within half of it), and
//! steps the guest's clock by the difference (a relative step, so the
//! request's travel time adds no error).
//!
//! A guest agent that predates the clock ops answers with an error: the
//! keeper leaves that guest alone until it reconnects (a reboot may bring a
//! newer agent). Cloud images run the same guest agent as a service, so
//! they are kept the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::instance::journal::{Event, Journal};
use crate::link::guest_link::{GuestLink, GuestLinkError};

/// Offsets within this are left alone (a step backwards is a jolt for the
/// guest's programs; this much is not worth one).
pub const TOLERANCE: Duration = Duration::from_millis(20);
/// A reading less precise than this (half its round trip) decides nothing.
const MAX_UNCERTAINTY: Duration = Duration::from_millis(25);
/// A reading this precise needs no second one.
const GOOD_ENOUGH: Duration = Duration::from_millis(2);
/// Readings taken before a step, at most.
const READINGS: usize = 5;
/// How often the clock is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one reading may take.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// One reading of the guest's clock against the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Guest minus host, at the middle of the round trip.
    pub offset_ns: i64,
    pub round_trip: Duration,
}

impl Reading {
    /// How far the true offset may be from `offset_ns`.
    pub fn uncertainty(&self) -> Duration {
        self.round_trip / 2
    }
}

/// What to do about one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InTolerance,
    /// Step the guest's clock by `delta_ns`.
    Step {
        delta_ns: i64,
    },
    /// Too imprecise to act on.
    Unsure,
}

/// Judge a reading (pure).
pub fn judge(reading: &Reading) -> Verdict {
    if reading.uncertainty() > MAX_UNCERTAINTY {
        return Verdict::Unsure;
    }
    if reading.offset_ns.unsigned_abs() <= TOLERANCE.as_nanos() as u64 {
        Verdict::InTolerance
    } else {
        Verdict::Step {
            delta_ns: -reading.offset_ns,
        }
    }
}

/// The most precise of several readings (pure).
pub fn best(readings: &[Reading]) -> Option<Reading> {
    readings.iter().min_by_key(|r| r.round_trip).copied()
}

/// What one correction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Within tolerance already (the reading that said so).
    InTolerance(Reading),
    /// The clock was stepped; `before` is the reading it was stepped by.
    Stepped { before: Reading },
    /// No reading was precise enough.
    Unsure,
    /// The guest agent has no clock ops.
    Unsupported,
}

fn host_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Read the guest's clock once.
pub async fn read(link: &GuestLink) -> Result<Reading, GuestLinkError> {
    let host_before = host_now_ns();
    let sent = Instant::now();
    let guest = link.time(READ_TIMEOUT).await?;
    let round_trip = sent.elapsed();
    let host_middle = host_before + (round_trip / 2).as_nanos() as i64;
    Ok(Reading {
        offset_ns: guest - host_middle,
        round_trip,
    })
}

/// Check the guest's clock and step it if it is off.
pub async fn correct(link: &GuestLink) -> Result<Correction, GuestLinkError> {
    let mut readings = Vec::with_capacity(READINGS);
    let first = match read(link).await {
        Ok(reading) => reading,
        Err(GuestLinkError::Refused { .. }) => return Ok(Correction::Unsupported),
        Err(e) => return Err(e),
    };
    if judge(&first) == Verdict::InTolerance {
        return Ok(Correction::InTolerance(first));
    }
    readings.push(first);
    while readings.len() < READINGS && first.uncertainty() > GOOD_ENOUGH {
        let reading = read(link).await?;
        readings.push(reading);
        if reading.uncertainty() <= GOOD_ENOUGH {
            break;
        }
    }
    let chosen = best(&readings).expect("at least one reading");
    match judge(&chosen) {
        Verdict::InTolerance => Ok(Correction::InTolerance(chosen)),
        Verdict::Unsure => Ok(Correction::Unsure),
        Verdict::Step { delta_ns } => {
            link.adjust_clock(delta_ns, READ_TIMEOUT).await?;
            Ok(Correction::Stepped { before: chosen })
        }
    }
}

/// Journal a step.
pub fn journal_step(journal_path: &std::path::Path, before: &Reading) {
    let event = Event::GuestClockSet {
        offset_ms: before.offset_ns as f64 / 1e6,
        uncertainty_ms: before.uncertainty().as_secs_f64() * 1e3,
    };
    if let Some(repeated) = crate::link::repeats::allow("clock set") {
        tracing::info!(
            offset_ms = before.offset_ns as f64 / 1e6,
            "stepped the guest's clock to the host's{repeated}"
        );
    }
    if let Err(e) = Journal::open(journal_path).and_then(|mut j| j.record(event)) {
        tracing::warn!("cannot write the journal: {e}");
    }
}

/// Check the guest's clock every [`CHECK_EVERY`] (at once when `nudge`d)
/// while a guest link is published, for as long as the agent runs.
pub async fn keep(
    mut guest: watch::Receiver<Option<GuestLink>>,
    nudge: Arc<Notify>,
    journal_path: PathBuf,
) {
    loop {
        let Some(link) = super::open_link(&mut guest).await else {
            return;
        };
        match correct(&link).await {
            Ok(Correction::Stepped { before }) => journal_step(&journal_path, &before),
            Ok(Correction::Unsupported) => {
                tracing::info!(
                    "the guest agent cannot tell or set its clock (an older version); \
                     the guest's clock is left alone until it reconnects"
                );
                // Until this link is replaced.
                super::link_gone(&mut guest).await;
                continue;
            }
            Ok(Correction::InTolerance(_) | Correction::Unsure) => {}
            Err(e) => tracing::debug!("guest clock check: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = nudge.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(offset_ms: i64, round_trip_ms: u64) -> Reading {
        Reading {
            offset_ns: offset_ms * 1_000_000,
            round_trip: Duration::from_millis(round_trip_ms),
        }
    }

    #[test]
    fn small_offsets_are_left_alone_and_large_ones_stepped_back() {
        assert_eq!(judge(&reading(0, 4)), Verdict::InTolerance);
        assert_eq!(judge(&reading(20, 4)), Verdict::InTolerance);
        assert_eq!(judge(&reading(-20, 4)), Verdict::InTolerance);
        assert_eq!(
            judge(&reading(-30_000, 4)),
            Verdict::Step {
                delta_ns: 30_000_000_000
            },
            "a guest behind after a resume is moved forward"
        );
        assert_eq!(
            judge(&reading(750, 8)),
            Verdict::Step {
                delta_ns: -750_000_000
            }
        );
    }

    #[test]
    fn an_imprecise_reading_decides_nothing() {
        assert_eq!(judge(&reading(-30_000, 60)), Verdict::Unsure);
        assert_eq!(
            judge(&reading(-30_000, 50)),
            Verdict::Step {
                delta_ns: 30_000_000_000
            }
        );
    }

    #[test]
    fn the_reading_with_the_shortest_round_trip_wins() {
        let readings = [reading(-700, 30), reading(-760, 2), reading(-740, 9)];
        assert_eq!(best(&readings), Some(reading(-760, 2)));
        assert_eq!(best(&[]), None);
    }
}
