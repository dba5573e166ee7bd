//! Host side of the guest-agent channel.
//!
//! QEMU exposes the guest's virtio-serial port as a unix socket (`ga.sock`,
//! a listening `-chardev socket`); the host connects as a client and speaks
//! [`vmkeep_protocol`] over it. The guest answers only while a host is
//! connected, and the host may reconnect any number of times. While nothing
//! in the guest has the port open, QEMU may accept the connection and simply
//! not answer: [`wait_ready`] copes with that by re-sending `Hello` on a new
//! connection.
//!
//! The guest is untrusted. Its lines may be at most
//! [`vmkeep_protocol::MAX_MESSAGE_BYTES`] long, except while an exec is in
//! flight (its reply carries the output: up to
//! [`vmkeep_protocol::MAX_LINE_BYTES`]); the facts it reports about itself
//! ([`GuestInfo`]) are checked before anything shows, logs or journals them
//! ([`check_guest_info`]); its error messages are cut and escaped.
//!
//! [`client`] is the connection and its requests, [`ready`] the wait for a
//! ready guest and the sorting of its lines, [`reports`] the checks of what
//! it says about itself, [`sessions`] its streaming sessions (each event
//! checked by the session's rules, what it may make the host hold bounded
//! by the credit the host granted).

pub mod client;
pub mod ready;
pub mod reports;
pub mod sessions;

use vmkeep_protocol::MAX_MESSAGE_BYTES;

#[cfg(any(test, fuzzing))]
pub(crate) use self::client::GuestEvent;
pub use self::client::{GuestEvents, GuestLink, GuestLinkError, GuestOp, Hello};
pub use self::ready::{HELLO_RETRY, wait_ready};
#[cfg(any(test, fuzzing))]
pub(crate) use self::ready::{Readiness, sort_line};
pub use self::reports::{check_exposed, check_guest_info, check_listening};
pub use self::sessions::{GuestSession, OpenError};
use crate::link::line_rpc::Limits;

/// What the guest may make the host hold on one connection.
pub const LIMITS: Limits = Limits {
    line_bytes: MAX_MESSAGE_BYTES,
    // `Ready` comes at most twice per connection (a second one ends it).
    queued_event_bytes: 2 * MAX_MESSAGE_BYTES,
};

#[cfg(test)]
mod tests;
