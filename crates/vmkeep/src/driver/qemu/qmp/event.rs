//! QMP's asynchronous events: the typed [`QmpEvent`] (an `Unknown`
//! fallback keeps any other name and its data), how each shows in a log, how
//! one is parsed, and the log that names every event as it arrives (thinly
//! when one name floods).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::types::{BlockErrorAction, GuestPanicAction, IoOperation, QmpTimestamp, WatchdogAction};
use crate::link::untrusted::{self, LogBudget, SHOWN_BYTES};

/// A disk error (`BLOCK_IO_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockIoError {
    /// The drive's id (empty for a `-blockdev` node without one).
    pub device: String,
    /// The block node, when QEMU names it.
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    pub operation: IoOperation,
    pub action: BlockErrorAction,
    /// The host ran out of space (false when QEMU does not say).
    #[serde(default)]
    pub nospace: bool,
    /// QEMU's description of the error (the host's `strerror`).
    pub reason: String,
}

/// An asynchronous QMP event. Those that change what a user should see
/// (whether the guest runs, and why not) have their own variant.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    /// The guest shut down (or QEMU was asked to); `guest` tells whether the
    /// guest initiated it; `reason` is QEMU's `ShutdownCause`.
    Shutdown { guest: bool, reason: String },
    /// `system_powerdown` pressed the virtual power button.
    Powerdown,
    /// The machine reset.
    Reset { guest: bool, reason: String },
    /// The VM stopped (paused): by `stop`, a disk error, a panic, ...
    Stop,
    /// The VM resumed.
    Resume,
    /// The guest went to sleep (ACPI S3); run state `suspended`.
    Suspend,
    /// The guest hibernated (ACPI S4); QEMU then shuts down.
    SuspendDisk,
    /// The guest woke up from sleep.
    Wakeup,
    /// A disk request failed; with action `stop` the VM is paused.
    BlockIoError(BlockIoError),
    /// The guest reported a panic (pvpanic, Hyper-V, s390).
    GuestPanicked { action: GuestPanicAction },
    /// The guest's watchdog fired.
    Watchdog { action: WatchdogAction },
    /// Any other event, or a known one whose data did not parse; the name
    /// is QEMU's.
    Unknown { name: String, data: Value },
}

impl QmpEvent {
    /// QEMU's name for this event (`SHUTDOWN`, `BLOCK_IO_ERROR`, ...).
    pub fn name(&self) -> &str {
        match self {
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Powerdown => "POWERDOWN",
            QmpEvent::Reset { .. } => "RESET",
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Suspend => "SUSPEND",
            QmpEvent::SuspendDisk => "SUSPEND_DISK",
            QmpEvent::Wakeup => "WAKEUP",
            QmpEvent::BlockIoError(_) => "BLOCK_IO_ERROR",
            QmpEvent::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEvent::Watchdog { .. } => "WATCHDOG",
            QmpEvent::Unknown { name, .. } => name,
        }
    }
}

/// The event's name and what matters in its data, as safe to log or show.
impl fmt::Display for QmpEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |text: &str| untrusted::shown(text, SHOWN_BYTES);
        f.write_str(&shown(self.name()))?;
        match self {
            QmpEvent::Shutdown { guest, reason } | QmpEvent::Reset { guest, reason } => {
                write!(f, " (guest: {guest}, reason: {})", shown(reason))
            }
            QmpEvent::BlockIoError(error) => {
                write!(
                    f,
                    " ({} error on {}",
                    error.operation,
                    shown(if error.device.is_empty() {
                        error.node_name.as_deref().unwrap_or("")
                    } else {
                        &error.device
                    })
                )?;
                write!(f, ": {}; action: {}", shown(&error.reason), error.action)?;
                if error.nospace {
                    f.write_str("; the host is out of space")?;
                }
                f.write_str(")")
            }
            QmpEvent::GuestPanicked { action } => write!(f, " (action: {action})"),
            QmpEvent::Watchdog { action } => write!(f, " (action: {action})"),
            QmpEvent::Unknown { data, .. } if !data.is_null() => {
                write!(f, " {}", untrusted::shown_json(data, SHOWN_BYTES))
            }
            _ => Ok(()),
        }
    }
}

/// An event with the time QEMU stamped on it.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedEvent {
    pub event: QmpEvent,
    pub timestamp: Option<QmpTimestamp>,
}

/// Logs every event by name, thinly when one name floods.
#[derive(Default)]
pub(super) struct EventLog {
    budgets: HashMap<String, LogBudget>,
    /// For names beyond [`EventLog::MAX_NAMES`] distinct ones.
    others: LogBudget,
}

impl EventLog {
    /// Distinct event names counted on their own (QEMU 7.2 has about 60).
    const MAX_NAMES: usize = 128;

    pub(super) fn note(&mut self, event: &QmpEvent, problem: Option<&str>) {
        let name = event.name();
        let budget = if let Some(budget) = self.budgets.get_mut(name) {
            budget
        } else if self.budgets.len() < Self::MAX_NAMES {
            self.budgets.entry(name.to_owned()).or_default()
        } else {
            &mut self.others
        };
        let Some(count) = budget.tick() else { return };
        let name = untrusted::shown(name, SHOWN_BYTES);
        match (event, problem) {
            (_, Some(problem)) => tracing::warn!(
                event = %name,
                count,
                problem = %untrusted::shown(problem, SHOWN_BYTES),
                "QMP event whose data did not parse; kept as unknown: {event}"
            ),
            (QmpEvent::Unknown { .. }, None) => {
                tracing::info!(event = %name, count, "QMP event vmkeep does not handle: {event}")
            }
            _ => tracing::info!(event = %name, count, "QMP event: {event}"),
        }
    }
}

/// The typed event for `name`, or `Unknown` with why a known name's data
/// did not parse.
pub(super) fn parse_event(name: String, data: Value) -> (QmpEvent, Option<String>) {
    #[derive(Deserialize)]
    struct GuestReason {
        guest: bool,
        reason: String,
    }
    #[derive(Deserialize)]
    struct PanicData {
        action: GuestPanicAction,
    }
    #[derive(Deserialize)]
    struct WatchdogData {
        action: WatchdogAction,
    }
    let guest_reason = || GuestReason::deserialize(&data);
    let parsed = match name.as_str() {
        "SHUTDOWN" => guest_reason().map(|d| QmpEvent::Shutdown {
            guest: d.guest,
            reason: d.reason,
        }),
        "RESET" => guest_reason().map(|d| QmpEvent::Reset {
            guest: d.guest,
            reason: d.reason,
        }),
        "POWERDOWN" => Ok(QmpEvent::Powerdown),
        "STOP" => Ok(QmpEvent::Stop),
        "RESUME" => Ok(QmpEvent::Resume),
        "SUSPEND" => Ok(QmpEvent::Suspend),
        "SUSPEND_DISK" => Ok(QmpEvent::SuspendDisk),
        "WAKEUP" => Ok(QmpEvent::Wakeup),
        "BLOCK_IO_ERROR" => BlockIoError::deserialize(&data).map(QmpEvent::BlockIoError),
        "GUEST_PANICKED" => {
            PanicData::deserialize(&data).map(|d| QmpEvent::GuestPanicked { action: d.action })
        }
        "WATCHDOG" => {
            WatchdogData::deserialize(&data).map(|d| QmpEvent::Watchdog { action: d.action })
        }
        _ => return (QmpEvent::Unknown { name, data }, None),
    };
    match parsed {
        Ok(event) => (event, None),
        Err(error) => (QmpEvent::Unknown { name, data }, Some(error.to_string())),
    }
}
