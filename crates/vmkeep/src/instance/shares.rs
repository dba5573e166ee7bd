//! `mounts:` resolved into the host directories an instance shares with its
//! guest (virtio-fs), with Lima's semantics:
//!
//! - `location` is a host path: `~` is the host user's home, and Lima's host
//!   template variables apply (`{{.Home}}` the host home, `{{.Dir}}`,
//!   `{{.Name}}`, `{{.UID}}`, `{{.User}}` of the host, `{{.Param.Key}}`);
//! - `mountPoint` is a guest path (default: the location), with the guest's
//!   variables (`{{.Home}}` the guest user's home, ...);
//! - `writable` defaults to false: the guest mounts it read-only and the
//!   host enforces it (see `driver::qemu::virtiofs`);
//! - `mountType` other than virtiofs is not available here (the Debian cloud
//!   kernel has no 9p; sshfs is not built): vmkeep mounts with virtiofs and
//!   says so (`RawConfig::notices`).
//!
//! Pure, but for the host facts it is given ([`HostSide`]).

use std::path::{Path, PathBuf};

use crate::instance::config::Config;
use crate::text::gotmpl::{self, Value};

/// At most this many shared directories per instance (one virtiofsd and
/// one PCI device each; their sockets, `fs0.sock` to `fs9.sock`, are no
/// longer than `qmp.sock`, so instance names keep their room).
pub const MAX_SHARES: usize = 10;

/// One host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    /// Position in `mounts:`, also its virtio-fs tag (`fs0`, `fs1`, ...) and
    /// the names of its runtime files.
    pub index: usize,
    pub location: PathBuf,
    pub mount_point: String,
    pub writable: bool,
}

impl SharedDir {
    /// The virtio-fs tag the guest mounts.
    pub fn tag(&self) -> String {
        tag(self.index)
    }

    /// How it is described to the user.
    pub fn describe(&self) -> String {
        format!(
            "{} on {} ({})",
            self.location.display(),
            self.mount_point,
            if self.writable {
                "writable"
            } else {
                "read-only"
            }
        )
    }
}

/// The virtio-fs tag of share `index`.
pub fn tag(index: usize) -> String {
    format!("fs{index}")
}

/// What the host side contributes: the user running vmkeep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// `$HOME`, if set.
    pub home: Option<PathBuf>,
    pub user: String,
    pub uid: u32,
}

impl HostSide {
    /// This process's user.
    pub fn current() -> HostSide {
        HostSide {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            user: crate::instance::identity::host_user().unwrap_or_else(|| "root".into()),
            uid: rustix::process::getuid().as_raw(),
        }
    }
}

/// The guest side: its user (the tiny image's is root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSide {
    pub user: String,
    pub uid: u32,
    pub home: String,
    /// The guest is a cloud image (else the tiny image): which system
    /// directories a mount must not hide.
    pub cloud: bool,
}

impl GuestSide {
    /// The tiny image: everything runs as root.
    pub fn tiny() -> GuestSide {
        GuestSide {
            user: "root".into(),
            uid: 0,
            home: "/root".into(),
            cloud: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("mounts[{index}].{field}: {error}")]
    Template {
        index: usize,
        field: &'static str,
        error: String,
    },
    #[error(
        "mounts[{index}].location: {location:?} starts with ~ but HOME is not set; set HOME or write an absolute path"
    )]
    NoHome { index: usize, location: String },
    #[error("mounts[{index}].{field}: {path:?} is not an absolute path; write an absolute path")]
    Relative {
        index: usize,
        field: &'static str,
        path: String,
    },
    #[error(
        "mounts[{index}].mountPoint: {mount_point} would hide the guest's {hidden}, which it needs; choose another mountPoint (for example /mnt{mount_point})"
    )]
    HidesSystem {
        index: usize,
        mount_point: String,
        hidden: String,
    },
    #[error(
        "mounts[{index}].mountPoint: {mount_point} would hide the home of the guest user {user} ({home}), where its ssh key lives; choose another mountPoint, or set user.home (Lima's default is /home/{user}.linux)"
    )]
    HidesHome {
        index: usize,
        mount_point: String,
        user: String,
        home: String,
    },
    #[error(
        "mounts[{index}] and mounts[{other}] both mount on {mount_point}; give one of them another mountPoint"
    )]
    Duplicate {
        index: usize,
        other: usize,
        mount_point: String,
    },
    #[error("mounts: {count} entries; vmkeep shares at most {MAX_SHARES} directories per instance")]
    TooMany { count: usize },
}

/// Guest directories a mount must not hide (nor any of their parents).
const TINY_SYSTEM: &[&str] = &[
    "/bin", "/sbin", "/lib", "/usr", "/etc", "/proc", "/sys", "/dev", "/run", "/data", "/init",
];
const CLOUD_SYSTEM: &[&str] = &[
    "/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/proc", "/sys", "/dev", "/run", "/var",
    "/boot",
];

/// Lexically normalised: no trailing `/`, no empty or `.` components.
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Whether `a` is `b` or one of its ancestors (both normalised).
fn is_same_or_ancestor(a: &str, b: &str) -> bool {
    a == "/" || a == b || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/'))
}

/// Expand `~` and the host variables in a location.
fn location_of(
    index: usize,
    raw: &str,
    instance: &str,
    dir: &Path,
    host: &HostSide,
    config: &Config,
) -> Result<PathBuf, ShareError> {
    let home = host.home.as_ref().map(|h| h.display().to_string());
    let values = gotmpl::map([
        ("Home", Value::from(home.clone().unwrap_or_default())),
        ("Dir", Value::from(dir.display().to_string())),
        ("Name", Value::from(instance)),
        ("UID", Value::Int(host.uid.into())),
        ("User", Value::from(host.user.as_str())),
        ("Param", crate::instance::vars::params(config)),
    ]);
    let rendered = gotmpl::render(raw, &values).map_err(|e| ShareError::Template {
        index,
        field: "location",
        error: e.to_string(),
    })?;
    let expanded = if rendered == "~" || rendered.starts_with("~/") {
        let home = home.ok_or_else(|| ShareError::NoHome {
            index,
            location: raw.into(),
        })?;
        format!("{home}{}", &rendered[1..])
    } else {
        rendered
    };
    if !expanded.starts_with('/') {
        return Err(ShareError::Relative {
            index,
            field: "location",
            path: expanded,
        });
    }
    Ok(PathBuf::from(normalise(&expanded)))
}

/// The shared directories of `config` for instance `instance` (directory
/// `dir`), checked. Nothing is touched on the host.
pub fn resolve(
    config: &Config,
    instance: &str,
    dir: &Path,
    host: &HostSide,
    guest: &GuestSide,
) -> Result<Vec<SharedDir>, ShareError> {
    let mounts = config.raw.mounts.clone().unwrap_or_default();
    if mounts.len() > MAX_SHARES {
        return Err(ShareError::TooMany {
            count: mounts.len(),
        });
    }
    let guest_values = gotmpl::map([
        ("Home", Value::from(guest.home.as_str())),
        ("Name", Value::from(instance)),
        (
            "Hostname",
            Value::from(crate::instance::identity::hostname(instance)),
        ),
        ("UID", Value::Int(guest.uid.into())),
        ("User", Value::from(guest.user.as_str())),
        ("Param", crate::instance::vars::params(config)),
    ]);
    let system = if guest.cloud {
        CLOUD_SYSTEM
    } else {
        TINY_SYSTEM
    };
    let home = normalise(&guest.home);
    let mut shares: Vec<SharedDir> = Vec::new();
    for (index, mount) in mounts.iter().enumerate() {
        let location = location_of(index, &mount.location, instance, dir, host, config)?;
        let mount_point = match &mount.mount_point {
            Some(raw) => gotmpl::render(raw, &guest_values).map_err(|e| ShareError::Template {
                index,
                field: "mountPoint",
                error: e.to_string(),
            })?,
            None => location.display().to_string(),
        };
        if !mount_point.starts_with('/') {
            return Err(ShareError::Relative {
                index,
                field: "mountPoint",
                path: mount_point,
            });
        }
        let mount_point = normalise(&mount_point);
        if let Some(hidden) = system
            .iter()
            .find(|dir| is_same_or_ancestor(&mount_point, dir))
        {
            return Err(ShareError::HidesSystem {
                index,
                mount_point: mount_point.clone(),
                hidden: (*hidden).into(),
            });
        }
        if guest.cloud && is_same_or_ancestor(&mount_point, &home) {
            return Err(ShareError::HidesHome {
                index,
                mount_point,
                user: guest.user.clone(),
                home,
            });
        }
        if let Some(other) = shares.iter().find(|s| s.mount_point == mount_point) {
            return Err(ShareError::Duplicate {
                index,
                other: other.index,
                mount_point,
            });
        }
        shares.push(SharedDir {
            index,
            location,
            mount_point,
            writable: mount.writable == Some(true),
        });
    }
    Ok(shares)
}

/// Whether a mount of `config` would hide `home` with its default mount
/// point (the location itself): then the guest user gets Lima's default
/// home, `/home/USER.linux`, instead (see `instance::vars::guest_user`).
pub fn default_mount_hides(config: &Config, instance: &str, host: &HostSide, home: &str) -> bool {
    let home = normalise(home);
    config
        .raw
        .mounts
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| m.mount_point.is_none())
        .filter_map(|(i, m)| {
            location_of(i, &m.location, instance, Path::new(""), host, config).ok()
        })
        .any(|location| is_same_or_ancestor(&location.display().to_string(), &home))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostSide {
        HostSide {
            home: Some("/home/alice".into()),
            user: "alice".into(),
            uid: 1000,
        }
    }

    fn guest() -> GuestSide {
        GuestSide {
            user: "alice".into(),
            uid: 1000,
            home: "/home/alice.linux".into(),
            cloud: true,
        }
    }

    fn config(mounts: &str) -> Config {
        Config::parse(&format!("images:\n- location: /i\n{mounts}")).unwrap()
    }

    fn shares(mounts: &str) -> Result<Vec<SharedDir>, ShareError> {
        resolve(
            &config(mounts),
            "dev",
            Path::new("/h/.vmkeep/dev"),
            &host(),
            &guest(),
        )
    }

    #[test]
    fn limas_default_mounts_resolve_as_lima_does() {
        let found = shares("mounts:\n- location: \"~\"\n- location: /tmp/lima\n  writable: true\n")
            .unwrap();
        assert_eq!(
            found,
            [
                SharedDir {
                    index: 0,
                    location: "/home/alice".into(),
                    mount_point: "/home/alice".into(),
                    writable: false,
                },
                SharedDir {
                    index: 1,
                    location: "/tmp/lima".into(),
                    mount_point: "/tmp/lima".into(),
                    writable: true,
                },
            ]
        );
        assert_eq!(found[1].tag(), "fs1");
        assert_eq!(
            found[0].describe(),
            "/home/alice on /home/alice (read-only)"
        );
    }

    #[test]
    fn host_and_guest_variables_go_to_location_and_mount_point() {
        let found = shares(
            "param:\n  Src: code\nmounts:\n- location: \"~/{{.Param.Src}}/{{.Name}}/\"\n  mountPoint: \"{{.Home}}/src\"\n\
             - location: \"{{.Dir}}/shared\"\n  mountPoint: /mnt/{{.User}}\n",
        )
        .unwrap();
        assert_eq!(found[0].location, Path::new("/home/alice/code/dev"));
        assert_eq!(found[0].mount_point, "/home/alice.linux/src");
        assert_eq!(found[1].location, Path::new("/h/.vmkeep/dev/shared"));
        assert_eq!(found[1].mount_point, "/mnt/alice");
    }

    #[test]
    fn mounts_that_would_break_the_guest_are_refused_with_the_fix() {
        for (yaml, says) in [
            (
                "mounts:\n- location: relative/dir\n",
                "not an absolute path",
            ),
            (
                "mounts:\n- location: /src\n  mountPoint: usr/src\n",
                "mountPoint: \"usr/src\" is not an absolute path",
            ),
            (
                "mounts:\n- location: /src\n  mountPoint: /\n",
                "hide the guest's /bin",
            ),
            (
                "mounts:\n- location: /src\n  mountPoint: /etc/\n",
                "hide the guest's /etc",
            ),
            (
                "mounts:\n- location: /src\n  mountPoint: /home\n",
                "home of the guest user alice",
            ),
            (
                "mounts:\n- location: /a\n  mountPoint: /m\n- location: /b\n  mountPoint: /m/\n",
                "mounts[1] and mounts[0] both mount on /m",
            ),
            (
                "mounts:\n- location: \"/{{.Param.Nope}}\"\n",
                "mounts[0].location",
            ),
        ] {
            let err = shares(yaml).unwrap_err().to_string();
            assert!(err.contains(says), "{yaml:?}: {err}");
        }
        let many: String = (0..=MAX_SHARES)
            .map(|i| format!("- location: /d{i}\n"))
            .collect();
        assert!(matches!(
            shares(&format!("mounts:\n{many}")),
            Err(ShareError::TooMany { .. })
        ));
        let no_home = HostSide {
            home: None,
            ..host()
        };
        let err = resolve(
            &config("mounts:\n- location: \"~\"\n"),
            "dev",
            Path::new("/d"),
            &no_home,
            &guest(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("HOME is not set"), "{err}");
    }

    #[test]
    fn the_tiny_image_may_mount_over_roots_home_but_not_its_data_disk() {
        let tiny = |yaml: &str| {
            resolve(
                &Config::parse(yaml).unwrap(),
                "t",
                Path::new("/d"),
                &HostSide {
                    home: Some("/root".into()),
                    user: "root".into(),
                    uid: 0,
                },
                &GuestSide::tiny(),
            )
        };
        assert_eq!(
            tiny("mounts:\n- location: \"~\"\n").unwrap()[0].mount_point,
            "/root"
        );
        assert!(matches!(
            tiny("mounts:\n- location: /x\n  mountPoint: /data\n"),
            Err(ShareError::HidesSystem { .. })
        ));
    }

    #[test]
    fn a_home_mount_moves_the_guest_home_as_lima_does() {
        let config = config("mounts:\n- location: \"~\"\n");
        assert!(default_mount_hides(&config, "dev", &host(), "/home/alice"));
        assert!(!default_mount_hides(
            &config,
            "dev",
            &host(),
            "/home/alice.linux"
        ));
        let elsewhere = self::config("mounts:\n- location: \"~\"\n  mountPoint: /mnt/home\n");
        assert!(!default_mount_hides(
            &elsewhere,
            "dev",
            &host(),
            "/home/alice"
        ));
    }
}
