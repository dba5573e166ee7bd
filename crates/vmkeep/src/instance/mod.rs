//! Instances: names, directory layout, config, observation and status.

pub mod config;
pub mod create;
pub mod data_disk;
pub mod desired;
pub mod layout;
pub mod name;
pub mod observe;
pub mod runtime;
pub mod status;

pub use config::Config;
pub use layout::InstanceDir;
pub use name::InstanceName;
pub use status::Status;
