//! Instances: names, directory layout, config, observation and status.

pub mod config;
pub mod copy_to_host;
pub mod data_disk;
pub mod desired;
pub mod disk_size;
pub mod edit_flags;
pub mod home;
pub mod identity;
pub mod journal;
pub mod layout;
pub mod lima;
pub mod lima_instance;
pub mod name;
pub mod not_instance;
pub mod observe;
pub mod ownership;
pub mod pause;
pub mod provision;
pub mod runtime;
pub mod share_owner;
pub mod shares;
pub mod socket_forwards;
pub mod status;
pub mod vars;
pub mod yaml_de;

pub use config::Config;
pub use home::Home;
pub use layout::InstanceDir;
pub use name::InstanceName;
pub use status::Status;
