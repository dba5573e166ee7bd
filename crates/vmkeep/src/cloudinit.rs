//! The cloud-init NoCloud seed of a cloud-image instance: rendering
//! (`meta-data`, `user-data`; pure) and writing the `cidata` volume (a FAT
//! image written with the `fatfs` crate; no host tool needed).
//!
//! The seed also carries the static guest agent as a file next to
//! `user-data`. A `bootcmd` (run at every boot, before the agent's service
//! starts) copies it into the guest, so the guest always runs the agent of
//! the vmkeep that started it. Carrying the binary as a file rather than as
//! base64 in `user-data` keeps cloud-init from parsing megabytes of YAML
//! (slow under TCG).
//!
//! No `network-config` is written: cloud-init's fallback (DHCP on the first
//! NIC) is what QEMU's user-mode network expects.

use std::io::{self, Seek, Write};
use std::path::Path;

use serde::Serialize;

use crate::instance::config::{Provision, ProvisionMode};

/// FAT volume label cloud-init looks for (it accepts `CIDATA` and `cidata`).
pub const VOLUME_LABEL: &[u8; 11] = b"CIDATA     ";
/// File name of the guest agent on the seed volume.
pub const AGENT_FILE: &str = "vmkeep-guest";
/// Where the guest agent is installed in the guest.
pub const AGENT_GUEST_PATH: &str = "/usr/local/sbin/vmkeep-guest";
/// The systemd unit that runs the guest agent.
pub const AGENT_UNIT: &str = "vmkeep-guest.service";
/// Where provision scripts are written in the guest.
pub const PROVISION_DIR: &str = "/var/lib/vmkeep/provision";

/// Everything the seed depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedInputs<'a> {
    pub instance: &'a str,
    pub user: &'a str,
    /// OpenSSH public key line.
    pub ssh_public_key: &'a str,
    pub provision: &'a [Provision],
}

/// The systemd unit of the guest agent. It starts after cloud-init's first
/// stage (whose `bootcmd` installs the binary); the agent itself waits for
/// `cloud-init status --wait` before it reports ready.
pub fn agent_unit() -> String {
    format!(
        "[Unit]\n\
         Description=vmkeep guest agent\n\
         After=cloud-init.service systemd-udev-settle.service\n\
         \n\
         [Service]\n\
         ExecStart={AGENT_GUEST_PATH}\n\
         Restart=always\n\
         RestartSec=1\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// `meta-data`: the instance id stays the same across restarts, so
/// cloud-init's once-per-instance steps (users, provision scripts) run once
/// per disk.
pub fn meta_data(inputs: &SeedInputs<'_>) -> String {
    format!(
        "instance-id: vmkeep-{}\nlocal-hostname: {}\n",
        inputs.instance,
        hostname(inputs.instance)
    )
}

#[derive(Serialize)]
struct UserData<'a> {
    hostname: String,
    manage_etc_hosts: bool,
    ssh_pwauth: bool,
    users: Vec<User<'a>>,
    write_files: Vec<WriteFile>,
    bootcmd: Vec<String>,
    runcmd: Vec<Vec<String>>,
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
    shell: &'static str,
    sudo: &'static str,
    lock_passwd: bool,
    ssh_authorized_keys: Vec<&'a str>,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    permissions: &'static str,
    content: String,
}

/// The provision script at position `index`, as written in the guest.
pub fn provision_path(index: usize, mode: ProvisionMode) -> String {
    let mode = match mode {
        ProvisionMode::System => "system",
        ProvisionMode::User => "user",
    };
    format!("{PROVISION_DIR}/{index:02}-{mode}.sh")
}

/// `user-data` (a `#cloud-config` document).
pub fn user_data(inputs: &SeedInputs<'_>) -> String {
    let mut write_files = vec![WriteFile {
        path: format!("/etc/systemd/system/{AGENT_UNIT}"),
        permissions: "0644",
        content: agent_unit(),
    }];
    // Provision scripts run in order, after the agent's service is enabled
    // (the agent reports ready only when cloud-init, and so they, finished).
    let mut runcmd = vec![
        vec!["systemctl".into(), "daemon-reload".into()],
        vec![
            "systemctl".into(),
            "enable".into(),
            "--now".into(),
            "--no-block".into(),
            AGENT_UNIT.into(),
        ],
    ];
    for (index, provision) in inputs.provision.iter().enumerate() {
        let path = provision_path(index, provision.mode);
        let content = if provision.script.starts_with("#!") {
            provision.script.clone()
        } else {
            format!("#!/bin/sh\n{}", provision.script)
        };
        write_files.push(WriteFile {
            path: path.clone(),
            permissions: "0755",
            content,
        });
        runcmd.push(match provision.mode {
            ProvisionMode::System => vec![path],
            ProvisionMode::User => vec![
                "runuser".into(),
                "-l".into(),
                inputs.user.into(),
                "-c".into(),
                path,
            ],
        });
    }
    let document = UserData {
        hostname: hostname(inputs.instance),
        manage_etc_hosts: true,
        ssh_pwauth: false,
        users: vec![User {
            name: inputs.user,
            shell: "/bin/bash",
            sudo: "ALL=(ALL) NOPASSWD:ALL",
            lock_passwd: true,
            ssh_authorized_keys: vec![inputs.ssh_public_key.trim()],
        }],
        write_files,
        bootcmd: vec![install_agent_command()],
        runcmd,
    };
    let yaml = serde_yaml_ng::to_string(&document).expect("user-data always serializes");
    format!("#cloud-config\n{yaml}")
}

/// Shell command (run by `bootcmd` at every boot) that copies the agent from
/// the seed volume into the guest.
fn install_agent_command() -> String {
    format!(
        "set -e; d=$(mktemp -d); \
         mount -o ro LABEL=CIDATA \"$d\" 2>/dev/null || mount -o ro LABEL=cidata \"$d\"; \
         if [ -f \"$d/{AGENT_FILE}\" ]; then install -m 0755 \"$d/{AGENT_FILE}\" {AGENT_GUEST_PATH}.new && mv -f {AGENT_GUEST_PATH}.new {AGENT_GUEST_PATH}; fi; \
         umount \"$d\"; rmdir \"$d\""
    )
}

/// A hostname from an instance name (`_` is not allowed in hostnames).
pub fn hostname(instance: &str) -> String {
    instance.replace('_', "-").to_ascii_lowercase()
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

/// Write the seed volume to `path` (replacing it atomically).
pub fn write_seed(path: &Path, inputs: &SeedInputs<'_>, agent: &[u8]) -> io::Result<()> {
    let (meta, user) = (meta_data(inputs), user_data(inputs));
    let files: [(&str, &[u8]); 3] = [
        ("meta-data", meta.as_bytes()),
        ("user-data", user.as_bytes()),
        (AGENT_FILE, agent),
    ];
    let content: u64 = files.iter().map(|(_, bytes)| bytes.len() as u64).sum();
    // Room for FAT overhead; at least 4 MiB so the filesystem is FAT16.
    let size = (content + content / 4 + (4 << 20)).next_multiple_of(1 << 20);
    let tmp = crate::os::fs::temp_sibling(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.set_len(size)?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new().volume_label(*VOLUME_LABEL),
        )?;
        file.rewind()?;
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
            {
                let root = fs.root_dir();
                for (name, bytes) in files {
                    let mut out = root.create_file(name)?;
                    out.truncate()?;
                    out.write_all(bytes)?;
                    out.flush()?;
                }
            }
            fs.unmount()?;
        }
        crate::os::fs::persist(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inputs(provision: &[Provision]) -> SeedInputs<'_> {
        SeedInputs {
            instance: "web_1",
            user: "alice",
            ssh_public_key: "ssh-ed25519 AAAAC3Nza vmkeep\n",
            provision,
        }
    }

    fn yaml(text: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn meta_data_names_the_instance_with_a_valid_hostname() {
        let meta = yaml(&meta_data(&inputs(&[])));
        assert_eq!(meta["instance-id"], "vmkeep-web_1");
        assert_eq!(meta["local-hostname"], "web-1");
    }

    #[test]
    fn user_data_creates_the_user_with_the_key_and_starts_the_agent() {
        let text = user_data(&inputs(&[]));
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let doc = yaml(&text);
        assert_eq!(doc["hostname"], "web-1");
        let user = &doc["users"][0];
        assert_eq!(user["name"], "alice");
        assert_eq!(
            user["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3Nza vmkeep"
        );
        assert_eq!(user["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(doc["ssh_pwauth"], false);
        let unit = &doc["write_files"][0];
        assert_eq!(unit["path"], "/etc/systemd/system/vmkeep-guest.service");
        assert!(
            unit["content"]
                .as_str()
                .unwrap()
                .contains("ExecStart=/usr/local/sbin/vmkeep-guest")
        );
        let bootcmd = doc["bootcmd"][0].as_str().unwrap();
        assert!(
            bootcmd.contains("LABEL=CIDATA") && bootcmd.contains(AGENT_GUEST_PATH),
            "{bootcmd}"
        );
        let runcmd: Vec<String> = doc["runcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| serde_yaml_ng::to_string(c).unwrap())
            .collect();
        assert!(
            runcmd
                .iter()
                .any(|c| c.contains("enable") && c.contains(AGENT_UNIT)),
            "{runcmd:?}"
        );
    }

    #[test]
    fn provision_scripts_run_in_order_as_root_or_the_user() {
        let provision = [
            Provision {
                mode: ProvisionMode::System,
                script: "apt-get install -y x\n".into(),
            },
            Provision {
                mode: ProvisionMode::User,
                script: "#!/bin/bash\necho hi > ~/hi\n".into(),
            },
        ];
        let doc = yaml(&user_data(&inputs(&provision)));
        let files = doc["write_files"].as_sequence().unwrap();
        assert_eq!(files[1]["path"], "/var/lib/vmkeep/provision/00-system.sh");
        assert_eq!(files[1]["content"], "#!/bin/sh\napt-get install -y x\n");
        assert_eq!(files[1]["permissions"], "0755");
        assert_eq!(files[2]["path"], "/var/lib/vmkeep/provision/01-user.sh");
        assert_eq!(
            files[2]["content"], "#!/bin/bash\necho hi > ~/hi\n",
            "a shebang is kept"
        );
        let runcmd = doc["runcmd"].as_sequence().unwrap();
        let n = runcmd.len();
        assert_eq!(runcmd[n - 2][0], "/var/lib/vmkeep/provision/00-system.sh");
        assert_eq!(runcmd[n - 1][0], "runuser");
        assert_eq!(runcmd[n - 1][2], "alice");
        assert_eq!(runcmd[n - 1][4], "/var/lib/vmkeep/provision/01-user.sh");
    }

    #[test]
    fn yaml_special_characters_in_scripts_survive() {
        let provision = [Provision {
            mode: ProvisionMode::System,
            script: "echo 'a: b' \"#not a comment\" {x} [y]\n".into(),
        }];
        let doc = yaml(&user_data(&inputs(&provision)));
        assert_eq!(
            doc["write_files"][1]["content"],
            "#!/bin/sh\necho 'a: b' \"#not a comment\" {x} [y]\n"
        );
    }

    #[test]
    fn guest_user_follows_the_host_user_unless_unusable() {
        assert_eq!(guest_user(Some("alice")), "alice");
        assert_eq!(guest_user(Some("root")), "vmkeep");
        assert_eq!(guest_user(Some("Bob Smith")), "vmkeep");
        assert_eq!(guest_user(Some("9lives")), "vmkeep");
        assert_eq!(guest_user(None), "vmkeep");
    }

    #[test]
    fn the_seed_volume_is_fat_labelled_cidata_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cidata.img");
        let agent = vec![0x7f; 3 << 20];
        write_seed(&path, &inputs(&[]), &agent).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "CIDATA");
        let read = |name: &str| {
            let mut bytes = Vec::new();
            fs.root_dir()
                .open_file(name)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        };
        assert_eq!(read("meta-data"), meta_data(&inputs(&[])).into_bytes());
        assert_eq!(read("user-data"), user_data(&inputs(&[])).into_bytes());
        assert_eq!(read(AGENT_FILE), agent);
        drop(fs);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cidata.img"], "no temporary left");
    }
}
