//! The links to the peers vmkeep talks to line by line: the mechanism
//! ([`line_rpc`]: request ids, one reader, bounded lines), the guest agent's
//! channel on it ([`guest_link`]), and the checks every untrusted peer's
//! input passes before it shows, logs or journals ([`untrusted`]; repeated
//! log lines a peer causes are summarised by [`repeats`]). QMP, the
//! other user of [`line_rpc`], is the QEMU driver's (`driver::qemu::qmp`).

pub mod guest_link;
pub mod line_rpc;
pub mod repeats;
pub mod untrusted;
