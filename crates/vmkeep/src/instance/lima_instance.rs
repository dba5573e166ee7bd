//! A Lima instance directory (`$LIMA_HOME/NAME`, `LIMA_HOME` defaulting to
//! `~/.lima`), as Lima 1.x and 2.x lay it out: `lima.yaml` (the template,
//! bases embedded), the disk (`diffdisk`, a qcow2 overlay of `basedisk`;
//! since Lima 2.1 `disk`, the image itself, or a symlink to `diffdisk` for
//! an instance made by an older Lima), the boot files Lima fetched for a
//! kernel-booted image (`kernel`, `initrd`, `kernel.cmdline`),
//! `cloud-config.yaml` (the user-data Lima gave the guest: its user), and
//! while it runs `ha.pid` (Lima's host agent) and `qemu.pid` (QEMU, which
//! holds a lock on it). Only read: vmkeep never writes or signals there.

use std::io;
use std::path::{Path, PathBuf};

use crate::instance::vars::GuestUser;
use crate::os;

pub const LIMA_HOME_ENV: &str = "LIMA_HOME";
pub const LIMA_YAML: &str = "lima.yaml";
pub const CLOUD_CONFIG: &str = "cloud-config.yaml";

/// Lima's home: `$LIMA_HOME`, else `~/.lima`; `None` without either.
pub fn lima_home() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    lima_home_from(
        set(LIMA_HOME_ENV).map(PathBuf::from),
        set("HOME").map(PathBuf::from),
    )
}

/// Lima's home from the values of `$LIMA_HOME` (used when absolute) and
/// `$HOME` (`~/.lima`).
pub fn lima_home_from(lima_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    lima_home
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".lima")))
}

/// The instance directories of a Lima home, by name (Lima's own
/// directories, `_config`, `_disks`, ..., start with `_`).
pub fn instances(lima_home: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(lima_home)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let dir = entry.path();
            (!name.starts_with('_') && !name.starts_with('.') && dir.join(LIMA_YAML).is_file())
                .then_some((name, dir))
        })
        .collect();
    found.sort();
    found
}

/// What of Lima runs the instance in `dir`, if anything: QEMU holding its
/// pid file's lock, or a live `limactl hostagent` of that pid file's pid
/// (its command line names the instance). Nothing is signalled.
pub fn live_process(dir: &Path) -> io::Result<Option<String>> {
    if let Some(pid) = os::lock::holder(&dir.join("qemu.pid"))? {
        return Ok(Some(format!("QEMU (pid {pid}) holds qemu.pid")));
    }
    let Ok(text) = std::fs::read_to_string(dir.join("ha.pid")) else {
        return Ok(None);
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(None);
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_lima_agent = os::process::command_line(pid).is_some_and(|args| {
        args.iter().any(|a| a.ends_with("limactl"))
            && args.iter().any(|a| a == "hostagent")
            && args
                .iter()
                .any(|a| *a == name || a.ends_with(&format!("/{name}")))
    });
    Ok(is_lima_agent.then(|| format!("Lima's host agent (pid {pid}) runs it")))
}

/// The instance's disk: `disk` (a file, or a symlink to `diffdisk`), else
/// `diffdisk`.
pub fn disk(dir: &Path) -> Option<PathBuf> {
    ["disk", "diffdisk"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
}

/// The boot files Lima keeps for an image booted by its kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

pub fn boot_files(dir: &Path) -> BootFiles {
    let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    BootFiles {
        kernel: file("kernel"),
        initrd: file("initrd"),
        cmdline: std::fs::read_to_string(dir.join("kernel.cmdline"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    }
}

/// The user Lima made in the guest, from its `cloud-config.yaml`
/// (`users[0]`: `name`, `uid`, `homedir`, `shell`, `gecos`).
pub fn user_from_cloud_config(text: &str) -> Option<GuestUser> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let user = doc.get("users")?.get(0)?;
    let field = |key: &str| -> Option<String> {
        match user.get(key)? {
            serde_yaml_ng::Value::String(s) => Some(s.clone()),
            serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let name = field("name")?;
    Some(GuestUser {
        uid: field("uid")?.parse().ok()?,
        home: field("homedir").unwrap_or_else(|| format!("/home/{name}.linux")),
        shell: field("shell").unwrap_or_else(|| "/bin/bash".into()),
        comment: field("gecos"),
        name,
    })
}

/// The user Lima makes when `lima.yaml` says nothing (Lima's
/// `osutil.LimaUser`): the host user's name when it is a valid Linux name
/// (else `lima`; `admin` is reserved), the host uid, home
/// `/home/NAME.linux`.
pub fn default_user(host_user: Option<&str>, uid: u32) -> GuestUser {
    let valid = |n: &str| {
        let mut chars = n.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    let name = match host_user {
        Some(n) if valid(n) && n != "admin" => n.to_string(),
        _ => "lima".to_string(),
    };
    GuestUser {
        home: format!("/home/{name}.linux"),
        name,
        // Lima never runs as root; its fallback uid is 1000.
        uid: if uid == 0 { 1000 } else { uid },
        shell: "/bin/bash".into(),
        comment: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_limas_cloud_config() {
        let text = "#cloud-config\ngrowpart:\n  mode: auto\nusers:\n  - name: \"ann\"\n    uid: \"1001\"\n    homedir: \"/home/ann.linux\"\n    shell: /bin/bash\n    sudo: ALL=(ALL) NOPASSWD:ALL\n";
        let user = user_from_cloud_config(text).unwrap();
        assert_eq!(
            (user.name.as_str(), user.uid, user.home.as_str()),
            ("ann", 1001, "/home/ann.linux")
        );
        assert_eq!(user_from_cloud_config("users: []\n"), None);
        assert_eq!(user_from_cloud_config("not: [yaml"), None);
    }

    #[test]
    fn limas_default_user_is_the_host_users_in_a_linux_home() {
        let user = default_user(Some("ann"), 501);
        assert_eq!(
            (user.name.as_str(), user.uid, user.home.as_str()),
            ("ann", 501, "/home/ann.linux")
        );
        assert_eq!(default_user(Some("Ann Smith"), 501).name, "lima");
        assert_eq!(default_user(Some("admin"), 501).home, "/home/lima.linux");
        assert_eq!(default_user(None, 501).name, "lima");
        assert_eq!(default_user(Some("root"), 0).uid, 1000, "never root's uid");
    }

    #[test]
    fn instances_are_the_directories_with_a_lima_yaml() {
        let home = tempfile::tempdir().unwrap();
        for (dir, yaml) in [("dev", true), ("_config", true), ("half", false)] {
            std::fs::create_dir(home.path().join(dir)).unwrap();
            if yaml {
                std::fs::write(home.path().join(dir).join(LIMA_YAML), "").unwrap();
            }
        }
        let found = instances(home.path());
        assert_eq!(found, [("dev".to_string(), home.path().join("dev"))]);
        assert_eq!(live_process(&home.path().join("dev")).unwrap(), None);
        std::fs::write(home.path().join("dev/ha.pid"), "1\n").unwrap();
        assert_eq!(
            live_process(&home.path().join("dev")).unwrap(),
            None,
            "pid 1 is no Lima host agent"
        );
    }
}
