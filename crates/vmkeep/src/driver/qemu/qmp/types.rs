//! QMP's data: QEMU's version, timestamps, the QAPI enums vmkeep reads
//! (run states, disk-error and panic actions; an unknown value is kept as
//! QEMU spelled it), and the answers of `query-status` and `query-migrate`.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::link::untrusted::{self, SHOWN_BYTES};

/// QEMU's version, from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// When QEMU emitted an event (host wall clock, since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// A QAPI enum: its known values, and `Other` for a name this client does
/// not know (a newer QEMU's), kept as QEMU spelled it.
macro_rules! qapi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this client does not know.
            Other(String),
        }

        impl $name {
            /// Every known value with its QAPI name.
            pub const NAMES: &'static [(&'static str, $name)] = &[$(($text, $name::$variant)),+];

            /// Parse QEMU's name for a value.
            pub fn from_qapi(name: &str) -> $name {
                match name {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }

            /// QEMU's name for this value.
            pub fn as_qapi(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(name) => name,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&untrusted::shown(self.as_qapi(), SHOWN_BYTES))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                String::deserialize(deserializer).map(|name| $name::from_qapi(&name))
            }
        }
    };
}

qapi_enum! {
    /// QEMU's run state (`query-status`), per the QAPI `RunState` enum.
    pub enum RunState {
        Debug = "debug",
        InMigrate = "inmigrate",
        InternalError = "internal-error",
        /// Paused after a disk error (a `BLOCK_IO_ERROR` with action `stop`).
        IoError = "io-error",
        Paused = "paused",
        PostMigrate = "postmigrate",
        /// Started with `-S`, never run yet.
        Prelaunch = "prelaunch",
        FinishMigrate = "finish-migrate",
        RestoreVm = "restore-vm",
        Running = "running",
        SaveVm = "save-vm",
        Shutdown = "shutdown",
        Suspended = "suspended",
        Watchdog = "watchdog",
        GuestPanicked = "guest-panicked",
        Colo = "colo",
    }
}

impl RunState {
    /// Whether guest CPUs are executing.
    pub fn is_running(&self) -> bool {
        *self == RunState::Running
    }
}

qapi_enum! {
    /// What a failed disk request was (QAPI `IoOperationType`).
    pub enum IoOperation {
        Read = "read",
        Write = "write",
    }
}

qapi_enum! {
    /// What QEMU did about a disk error (QAPI `BlockErrorAction`).
    pub enum BlockErrorAction {
        /// The error was ignored; the guest carries on as if it succeeded.
        Ignore = "ignore",
        /// The error was passed to the guest.
        Report = "report",
        /// The VM was paused (run state `io-error`); `cont` retries.
        Stop = "stop",
    }
}

qapi_enum! {
    /// What QEMU does after a guest panic (QAPI `GuestPanicAction`).
    pub enum GuestPanicAction {
        /// The VM is paused (run state `guest-panicked`).
        Pause = "pause",
        /// QEMU powers the VM off.
        Poweroff = "poweroff",
        /// The VM keeps running (it may reboot itself).
        Run = "run",
    }
}

qapi_enum! {
    /// What QEMU does when the guest's watchdog fires (QAPI `WatchdogAction`).
    pub enum WatchdogAction {
        Reset = "reset",
        Shutdown = "shutdown",
        Poweroff = "poweroff",
        Pause = "pause",
        Debug = "debug",
        None = "none",
        InjectNmi = "inject-nmi",
    }
}

/// The result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether guest CPUs are executing.
    pub running: bool,
    /// Why (not): `running`, `paused`, `io-error`, `prelaunch`, ...
    pub status: RunState,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The state of a migration (`query-migrate`), per the QAPI
/// `MigrationStatus` enum; only the states vmkeep acts on are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration was started.
    None,
    Setup,
    Active,
    /// Saving the device state (the last phase).
    Device,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    /// Any other state (postcopy, colo, ...).
    Other(String),
}

impl MigrationStatus {
    pub(super) fn from_qapi(name: &str) -> MigrationStatus {
        match name {
            "none" => MigrationStatus::None,
            "setup" => MigrationStatus::Setup,
            "active" => MigrationStatus::Active,
            "device" => MigrationStatus::Device,
            "completed" => MigrationStatus::Completed,
            "failed" => MigrationStatus::Failed,
            "cancelling" => MigrationStatus::Cancelling,
            "cancelled" => MigrationStatus::Cancelled,
            other => MigrationStatus::Other(other.to_owned()),
        }
    }

    /// Whether the migration is over, one way or the other.
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// What `query-migrate` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub status: MigrationStatus,
    /// RAM bytes sent so far (RAM the migration skips is not counted).
    pub ram_transferred: Option<u64>,
    /// QEMU's reason when it failed.
    pub error: Option<String>,
}

/// Read a `query-status` reply.
pub(crate) fn parse_status(reply: &Value) -> Result<StatusInfo, String> {
    StatusInfo::deserialize(reply)
        .map_err(|e| format!("{e} in {}", untrusted::shown_json(reply, SHOWN_BYTES)))
}
