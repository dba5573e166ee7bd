//! QMP client: QEMU's machine protocol over its unix socket.
//!
//! QEMU greets a new connection with `{"QMP": {...}}`, accepts commands only
//! after `qmp_capabilities`, answers each command with `{"return": ...}` or
//! `{"error": {"class", "desc"}}` carrying the command's `id`, and sends
//! events (`{"event", "data", "timestamp"}`) at any time, even before the
//! greeting. The mechanism (ids, one reader, long lines, bounds) is
//! [`crate::link::line_rpc`]; this module knows the QMP message shapes.
//!
//! Every event is logged by name when it arrives, whether vmkeep has a
//! variant for it or not ([`QmpEvent::Unknown`] keeps the name and data), and
//! whether or not anyone takes it from [`QmpEvents`]; a flood of one event
//! name is logged thinly.
//!
//! [`types`] holds QMP's data, [`event`] its events, [`client`] the
//! connection and its commands.

pub mod client;
pub mod event;
pub mod types;

pub use self::client::{LIMITS, MAX_MESSAGE_BYTES, MAX_REPLY_BYTES, Qmp, QmpError, QmpEvents};
#[cfg(any(test, fuzzing))]
pub(crate) use self::client::{Message, parse_line};
pub use self::event::{BlockIoError, QmpEvent, StampedEvent};
#[cfg(any(test, fuzzing))]
pub(crate) use self::types::parse_status;
pub use self::types::{
    BlockErrorAction, GuestPanicAction, IoOperation, MigrationInfo, MigrationStatus, QemuVersion,
    QmpTimestamp, RunState, StatusInfo, WatchdogAction,
};

#[cfg(test)]
mod tests;
