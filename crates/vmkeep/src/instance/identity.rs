//! Who an instance is to the outside: its host name, the host user who runs
//! vmkeep, and the guest user named after them. Pure (the host user comes
//! from the environment), shared by the template values, the shared
//! directories and the cloud-init seed.

/// Where an instance came from, when it is not a fresh one: its guest then
/// carries another instance's identity (machine id, ssh host keys), which
/// its first boot replaces (see `image::cloudinit`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// `vmkeep clone`: a copy of another vmkeep instance.
    Cloned { from: String },
    /// `vmkeep import`: a copy of a Lima instance's directory.
    Imported { from: std::path::PathBuf },
}

/// A hostname from an instance name (`_` and `.` do not belong in a host
/// label; Lima turns `ubuntu-24.04` into `lima-ubuntu-24-04` the same way).
pub fn hostname(instance: &str) -> String {
    instance.replace(['_', '.'], "-").to_ascii_lowercase()
}

/// The guest user for a host user: the same name when it is a valid,
/// unprivileged Linux user name, else `vmkeep` (as Lima falls back to `lima`).
pub fn guest_user(host_user: Option<&str>) -> String {
    let valid = |name: &str| {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            && name.len() <= 32
            && !matches!(name, "root" | "daemon" | "bin" | "sys" | "nobody" | "admin")
    };
    match host_user {
        Some(name) if valid(name) => name.to_string(),
        _ => "vmkeep".to_string(),
    }
}

/// The host user's name, from the environment.
pub fn host_user() -> Option<String> {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_user_follows_the_host_user_unless_unusable() {
        assert_eq!(guest_user(Some("alice")), "alice");
        assert_eq!(guest_user(Some("root")), "vmkeep");
        assert_eq!(guest_user(Some("Bob Smith")), "vmkeep");
        assert_eq!(guest_user(Some("9lives")), "vmkeep");
        assert_eq!(guest_user(None), "vmkeep");
    }
}
