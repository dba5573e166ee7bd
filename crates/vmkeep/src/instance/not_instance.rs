//! [`Status`](super::Status)'s sibling: what a directory of the home is when
//! it is no instance vmkeep can look at (one it did not make, one whose path
//! is too long for its sockets, one it cannot read). `list` shows these in
//! their own words; no verb acts on them (only `delete --force` removes a
//! foreign one).

use std::path::Path;

use super::ownership::Foreign;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotInstance {
    /// vmkeep did not make it (a Lima instance, say).
    Foreign(Foreign),
    /// Its sockets' paths would be too long (`message` says by how much).
    SocketPathTooLong { message: String },
    /// It cannot be read (`error` says why).
    Unreadable { error: String },
}

impl NotInstance {
    /// The word `list` shows in the status column.
    pub fn word(&self) -> &'static str {
        match self {
            NotInstance::Foreign(_) => "Foreign",
            NotInstance::SocketPathTooLong { .. } | NotInstance::Unreadable { .. } => "Broken",
        }
    }

    /// A stable identifier, for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            NotInstance::Foreign(_) => "not-vmkeep",
            NotInstance::SocketPathTooLong { .. } => "socket-path-too-long",
            NotInstance::Unreadable { .. } => "unreadable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            NotInstance::Foreign(foreign) => {
                format!("not a vmkeep instance: {}", foreign.describe())
            }
            NotInstance::SocketPathTooLong { message } => message.clone(),
            NotInstance::Unreadable { error } => error.clone(),
        }
    }

    /// What the user can do (`root` is the home the directory is in).
    pub fn hint(&self, root: &Path) -> String {
        match self {
            NotInstance::Foreign(_) => format!(
                "vmkeep did not make it and leaves it alone; move it out of {} to hide it here",
                root.display()
            ),
            NotInstance::SocketPathTooLong { .. } => String::new(),
            NotInstance::Unreadable { .. } => "check the directory's permissions".into(),
        }
    }
}
