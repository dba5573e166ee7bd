//! The guest agent's relay mode: `vmkeep-guest --connect-unix PATH`
//! connects to the unix socket `PATH` in the guest and relays its session's
//! stdin to the socket and the socket to its stdout. The host runs it in a
//! session (as `/proc/self/exe`, like the copy mode, see [`crate::copy`]),
//! one per connection of a forwarded socket, as the user whose permissions
//! reach the socket.
//!
//! End of stdin shuts the socket's writing half down (the peer reads its
//! end) and the relay goes on reading; end of the socket ends the relay.
//! Exit codes: 0 the connection ended, 2 usage, 3 the socket could not be
//! connected (stderr says why: `vmkeep-guest: connect: PATH: ...`), 4 the
//! connection broke (a read or write failed).

use crate::copy::AGENT_EXE;

/// The agent's argument for relay mode.
pub const CONNECT_UNIX: &str = "--connect-unix";

/// Relay-mode exit codes.
pub mod exit {
    pub const ENDED: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const CANNOT_CONNECT: i32 = 3;
    pub const BROKEN: i32 = 4;
}

/// The `argv` of a session that relays to the guest's socket `path`.
pub fn connect_unix_argv(path: &str) -> Vec<String> {
    vec![
        AGENT_EXE.to_string(),
        CONNECT_UNIX.to_string(),
        "--".to_string(),
        path.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_command_is_the_agents_own() {
        assert_eq!(
            connect_unix_argv("/run/podman/podman.sock"),
            [
                "/proc/self/exe",
                "--connect-unix",
                "--",
                "/run/podman/podman.sock"
            ]
        );
    }
}
