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
//!
//! Lima's provision modes map onto cloud-init like this:
//! - `boot`: `bootcmd` (every boot, early, by /bin/sh);
//! - `data`: the file is carried in the seed and installed by a per-boot
//!   script (`scripts-per-boot`, after users exist and before `runcmd` on the
//!   first boot), every boot unless `overwrite: false`;
//! - `dependency`, then `system`, `user` and `yq` in their order: `runcmd`,
//!   once, at the first boot (`yq` edits run with the guest's python3, which
//!   cloud-init itself needs);
//! - `probes`: run as the user until each passes, at the end of `runcmd` on
//!   the first boot and from the per-boot script on later ones; the guest
//!   agent reports ready only after cloud-init, and so the probes, finished.

use std::io::{self, Seek, Write};
use std::path::Path;

use serde::Serialize;

use crate::instance::config::{Config, ProvisionMode};
use crate::instance::identity::hostname;
use crate::instance::provision;
use crate::instance::vars::{self, GuestUser};

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

/// Where data files, probes and the environment file live in the guest.
pub const STATE_DIR: &str = "/var/lib/vmkeep";
/// Written at the end of the first boot's `runcmd`: later boots run the
/// probes from the per-boot script.
pub const PROVISIONED_MARKER: &str = "/var/lib/vmkeep/provisioned";
/// The per-boot script (cloud-init runs it at every boot, in its final stage).
pub const PER_BOOT_SCRIPT: &str = "/var/lib/cloud/scripts/per-boot/vmkeep-boot";
const ENV_FILE: &str = "/var/lib/vmkeep/env";
const PROBE_RUNNER: &str = "/var/lib/vmkeep/run-probes";

/// Everything the seed depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedInputs<'a> {
    pub instance: &'a str,
    pub user: &'a GuestUser,
    /// OpenSSH public key lines: vmkeep's, then (with
    /// `ssh.loadDotSSHPubKeys`) the host user's.
    pub ssh_public_keys: Vec<String>,
    /// The config with its template variables expanded
    /// ([`crate::instance::vars::expand`]).
    pub config: &'a Config,
    /// Host directories shared over virtio-fs: mounted at every boot by
    /// `bootcmd`, early, so that provision scripts and services see them
    /// (the guest agent mounts them again, idempotently, for the host).
    pub shares: &'a [crate::instance::shares::SharedDir],
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
    bootcmd: Vec<serde_yaml_ng::Value>,
    runcmd: Vec<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    package_update: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    package_upgrade: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_certs: Option<CaCerts>,
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gecos: Option<&'a str>,
    uid: u32,
    homedir: &'a str,
    shell: &'a str,
    sudo: &'static str,
    lock_passwd: bool,
    ssh_authorized_keys: Vec<&'a str>,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    permissions: &'static str,
    content: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    append: bool,
}

#[derive(Serialize)]
struct CaCerts {
    remove_defaults: bool,
    trusted: Vec<String>,
}

/// The provision script at position `index`, as written in the guest.
pub fn provision_path(index: usize, mode: ProvisionMode) -> String {
    let extension = if mode == ProvisionMode::Yq {
        "py"
    } else {
        "sh"
    };
    format!("{PROVISION_DIR}/{index:02}-{}.{extension}", mode.as_str())
}

/// A word for a POSIX shell, single-quoted.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn file(path: impl Into<String>, permissions: &'static str, content: String) -> WriteFile {
    WriteFile {
        path: path.into(),
        permissions,
        content,
        append: false,
    }
}

fn with_shebang(script: &str) -> String {
    if script.starts_with("#!") {
        script.to_string()
    } else {
        format!("#!/bin/sh\n{script}")
    }
}

/// `user-data` (a `#cloud-config` document).
pub fn user_data(inputs: &SeedInputs<'_>) -> String {
    let config = inputs.config;
    let user = inputs.user;
    let raw = &config.raw;
    let env = vars::script_env(config);
    let env_file: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect();
    let mut write_files = vec![
        file(
            format!("/etc/systemd/system/{AGENT_UNIT}"),
            "0644",
            agent_unit(),
        ),
        file(ENV_FILE, "0644", env_file),
    ];
    let guest_env = raw.env();
    if !guest_env.is_empty() {
        write_files.push(WriteFile {
            path: "/etc/environment".into(),
            permissions: "0644",
            content: guest_env
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
            append: true,
        });
    }
    let as_root = |path: &str| {
        vec![
            "sh".into(),
            "-c".into(),
            format!(". {ENV_FILE}; exec {path}"),
        ]
    };
    let as_user = |path: &str| {
        vec![
            "runuser".into(),
            "-l".into(),
            user.name.clone(),
            "-c".into(),
            format!(". {ENV_FILE}; exec {path}"),
        ]
    };
    // The agent's service is enabled first; it reports ready only when
    // cloud-init, and so everything below, has finished.
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
    let mut bootcmd = vec![serde_yaml_ng::Value::from(install_agent_command())];
    let mut per_boot = String::from(
        "#!/bin/sh\n# vmkeep: run by cloud-init at every boot (data files, /etc/hosts, probes).\n\
         mkparents() { d=$(dirname \"$1\"); [ -d \"$d\" ] && return 0; mkparents \"$d\" \"$2\"; mkdir \"$d\" && chown \"$2\" \"$d\"; }\n\
         install_data() {\n  if [ \"$5\" = false ] && [ -e \"$2\" ]; then return 0; fi\n  mkparents \"$2\" \"$3\"\n  \
         cp \"$1\" \"$2.vmkeep-new\" && chown \"$3\" \"$2.vmkeep-new\" && chmod \"$4\" \"$2.vmkeep-new\" && mv -f \"$2.vmkeep-new\" \"$2\"\n}\n",
    );
    for share in inputs.shares {
        if inside(&share.mount_point, &user.home) {
            // Not before the user exists (bootcmd runs first): its home
            // would be made root's. The per-boot script runs after users
            // are made and before provision scripts; missing directories
            // on the way are the user's.
            per_boot.push_str(&format!(
                "mkparents {}/. {}\n{}\n",
                shell_quote(&share.mount_point),
                shell_quote(&user.name),
                mount_share_command(share)
            ));
        } else {
            bootcmd.push(serde_yaml_ng::Value::from(mount_share_command(share)));
        }
    }
    // Dependency steps first, then the others in their order.
    let ordered = config
        .provision
        .iter()
        .enumerate()
        .filter(|(_, p)| p.mode == ProvisionMode::Dependency)
        .chain(
            config
                .provision
                .iter()
                .enumerate()
                .filter(|(_, p)| p.mode != ProvisionMode::Dependency),
        );
    for (index, step) in ordered {
        let path = provision_path(index, step.mode);
        match step.mode {
            ProvisionMode::Boot => {
                bootcmd.push(serde_yaml_ng::Value::from(vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    format!(
                        "{}{}",
                        env.iter()
                            .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
                            .collect::<String>(),
                        step.script
                    ),
                ]));
            }
            ProvisionMode::System | ProvisionMode::Dependency => {
                write_files.push(file(path.clone(), "0755", with_shebang(&step.script)));
                runcmd.push(as_root(&path));
            }
            ProvisionMode::User => {
                write_files.push(file(path.clone(), "0755", with_shebang(&step.script)));
                runcmd.push(as_user(&path));
            }
            ProvisionMode::Data => {
                let Some(data) = &step.data else { continue };
                let stored = format!("{STATE_DIR}/data/{index:02}");
                write_files.push(file(stored.clone(), "0600", data.content.clone()));
                per_boot.push_str(&format!(
                    "install_data {stored} {} {} {:o} {}\n",
                    shell_quote(&data.path),
                    shell_quote(&data.owner),
                    data.permissions,
                    data.overwrite
                ));
            }
            ProvisionMode::Yq => {
                let Some(yq) = &step.yq else { continue };
                write_files.push(file(path.clone(), "0755", yq_script(yq)));
                runcmd.push(vec!["python3".into(), path]);
            }
        }
    }
    let (hosts, _) = raw.etc_hosts();
    for (address, name) in &hosts {
        let line = format!("{address} {name}");
        per_boot.push_str(&format!(
            "grep -qxF {0} /etc/hosts || echo {0} >> /etc/hosts\n",
            shell_quote(&line)
        ));
    }
    if !config.probes.is_empty() {
        let mut runner = format!(
            "#!/bin/sh\n# vmkeep: run each readiness probe as {0} until it passes (Lima's probes).\n",
            user.name
        );
        for (index, probe) in config.probes.iter().enumerate() {
            let path = format!("{STATE_DIR}/probes/{index:02}");
            write_files.push(file(path.clone(), "0755", probe.script.clone()));
            let label = shell_quote(&probe.label(index));
            runner.push_str(&format!(
                "n=0\nuntil runuser -l {user} -c '. {ENV_FILE}; exec {path}'; do\n  \
                 [ $((n % 10)) -eq 0 ] && echo \"vmkeep: waiting for \"{label}\" to pass\" | tee /dev/console\n  \
                 n=$((n + 1)); sleep 3\ndone\necho \"vmkeep: \"{label}\" passed\"\n",
                user = shell_quote(&user.name),
            ));
        }
        write_files.push(file(PROBE_RUNNER, "0755", runner));
        per_boot.push_str(&format!("[ -e {PROVISIONED_MARKER} ] && {PROBE_RUNNER}\n"));
        runcmd.push(vec![PROBE_RUNNER.into()]);
    }
    per_boot.push_str("exit 0\n");
    write_files.push(file(PER_BOOT_SCRIPT, "0755", per_boot));
    runcmd.push(vec!["touch".into(), PROVISIONED_MARKER.into()]);
    let ca_certs = raw.ca_certs.as_ref().and_then(|c| {
        let trusted = c.certs.clone().unwrap_or_default();
        let remove = c.remove_defaults == Some(true);
        (remove || !trusted.is_empty()).then_some(CaCerts {
            remove_defaults: remove,
            trusted,
        })
    });
    let upgrade = raw.upgrade_packages == Some(true);
    let document = UserData {
        hostname: hostname(inputs.instance),
        manage_etc_hosts: true,
        ssh_pwauth: false,
        users: vec![User {
            name: &user.name,
            gecos: user.comment.as_deref(),
            uid: user.uid,
            homedir: &user.home,
            shell: &user.shell,
            sudo: "ALL=(ALL) NOPASSWD:ALL",
            lock_passwd: true,
            ssh_authorized_keys: inputs.ssh_public_keys.iter().map(|k| k.trim()).collect(),
        }],
        write_files,
        bootcmd,
        runcmd,
        timezone: raw.timezone.clone().filter(|t| !t.is_empty()),
        package_update: upgrade,
        package_upgrade: upgrade,
        ca_certs,
    };
    let yaml = serde_yaml_ng::to_string(&document).expect("user-data always serializes");
    format!("#cloud-config\n{yaml}")
}

/// A python3 program applying a yq step's assignments (JSON or YAML file).
fn yq_script(yq: &crate::instance::provision::YqEdit) -> String {
    let assignments: Vec<(Vec<String>, serde_json::Value)> =
        provision::yq_assignments(&yq.expression)
            .unwrap_or_default()
            .into_iter()
            .map(|(keys, value)| {
                let value =
                    serde_yaml_ng::from_str(&value).unwrap_or(serde_json::Value::String(value));
                (keys, value)
            })
            .collect();
    let format = yq.format.clone().unwrap_or_else(|| {
        if yq.path.ends_with(".yaml") || yq.path.ends_with(".yml") {
            "yaml".into()
        } else {
            "json".into()
        }
    });
    let json = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        "#!/usr/bin/env python3\n# vmkeep: Lima's yq step `{expr}` on {path}\n\
         import json, os, shutil\n\
         path = {p}\nfmt = {f}\nowner = {o}\nmode = {m}\nassignments = json.loads({a})\n\
         def load(text):\n    if not text.strip():\n        return {{}}\n    if fmt == 'yaml':\n        import yaml\n        return yaml.safe_load(text) or {{}}\n    return json.loads(text)\n\
         data = load(open(path).read()) if os.path.exists(path) else {{}}\n\
         for keys, value in assignments:\n    node = data\n    for key in keys[:-1]:\n        node = node.setdefault(key, {{}})\n    node[keys[-1]] = value\n\
         def parents(d):\n    if os.path.isdir(d):\n        return\n    parents(os.path.dirname(d))\n    os.mkdir(d)\n    if owner:\n        shutil.chown(d, *(owner.split(':', 1) + [None])[:2])\n\
         parents(os.path.dirname(path))\n\
         with open(path + '.vmkeep-new', 'w') as out:\n    if fmt == 'yaml':\n        import yaml\n        yaml.safe_dump(data, out, default_flow_style=False)\n    else:\n        json.dump(data, out, indent=2)\n        out.write('\\n')\n\
         if owner:\n    shutil.chown(path + '.vmkeep-new', *(owner.split(':', 1) + [None])[:2])\n\
         if mode is not None:\n    os.chmod(path + '.vmkeep-new', mode)\n\
         os.replace(path + '.vmkeep-new', path)\n",
        expr = yq.expression.replace('\n', " "),
        path = yq.path,
        p = json(&yq.path),
        f = json(&format),
        o = json(&yq.owner.clone().unwrap_or_default()),
        m = yq
            .permissions
            .map(|m| m.to_string())
            .unwrap_or_else(|| "None".into()),
        a = json(&serde_json::to_string(&assignments).unwrap_or_default()),
    )
}

/// Whether guest path `path` is `dir` or below it.
fn inside(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Shell command (run by `bootcmd` at every boot) that mounts a shared
/// directory, unless it is mounted; a failure is left to the guest agent,
/// which the host asks to mount it and which reports why it cannot.
pub fn mount_share_command(share: &crate::instance::shares::SharedDir) -> String {
    let point = shell_quote(&share.mount_point);
    let options = if share.writable { "rw" } else { "ro" };
    format!(
        "mountpoint -q {point} || {{ mkdir -p {point} && mount -t virtiofs -o {options} {} {point}; }} || true",
        share.tag()
    )
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
    use crate::instance::lima::HOST_ADDRESS;
    use std::io::Read;

    fn alice() -> GuestUser {
        GuestUser {
            name: "alice".into(),
            uid: 1001,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            comment: None,
        }
    }

    fn seed(config: &Config) -> serde_yaml_ng::Value {
        let user = alice();
        let inputs = SeedInputs {
            instance: "web_1",
            user: &user,
            ssh_public_keys: vec!["ssh-ed25519 AAAAC3Nza vmkeep\n".into()],
            config,
            shares: &[],
        };
        yaml(&user_data(&inputs))
    }

    fn cloud(extra: &str) -> Config {
        Config::parse(&format!("images:\n- location: /i.qcow2\n{extra}")).unwrap()
    }

    fn yaml(text: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn files(doc: &serde_yaml_ng::Value) -> Vec<(String, String)> {
        doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    f["content"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn file_content(doc: &serde_yaml_ng::Value, path: &str) -> String {
        files(doc)
            .into_iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .1
    }

    fn runcmd(doc: &serde_yaml_ng::Value) -> Vec<Vec<String>> {
        doc["runcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| {
                c.as_sequence()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn meta_data_names_the_instance_with_a_valid_hostname() {
        let user = alice();
        let config = cloud("");
        let inputs = SeedInputs {
            instance: "web_1.b",
            user: &user,
            ssh_public_keys: vec![],
            config: &config,
            shares: &[],
        };
        let meta = yaml(&meta_data(&inputs));
        assert_eq!(meta["instance-id"], "vmkeep-web_1.b");
        assert_eq!(meta["local-hostname"], "web-1-b");
    }

    #[test]
    fn user_data_creates_the_user_with_the_key_and_starts_the_agent() {
        let doc = seed(&cloud(""));
        assert_eq!(doc["hostname"], "web-1");
        let user = &doc["users"][0];
        assert_eq!(user["name"], "alice");
        assert_eq!(user["uid"], 1001);
        assert_eq!(user["homedir"], "/home/alice");
        assert_eq!(
            user["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3Nza vmkeep"
        );
        assert_eq!(user["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(doc["ssh_pwauth"], false);
        assert!(
            file_content(&doc, "/etc/systemd/system/vmkeep-guest.service")
                .contains("ExecStart=/usr/local/sbin/vmkeep-guest")
        );
        let bootcmd = doc["bootcmd"][0].as_str().unwrap();
        assert!(
            bootcmd.contains("LABEL=CIDATA") && bootcmd.contains(AGENT_GUEST_PATH),
            "{bootcmd}"
        );
        let run = runcmd(&doc);
        assert!(run[1].contains(&AGENT_UNIT.to_string()), "{run:?}");
        assert_eq!(run.last().unwrap(), &["touch", PROVISIONED_MARKER]);
        assert!(doc.get("package_upgrade").is_none() && doc.get("ca_certs").is_none());
    }

    #[test]
    fn shared_directories_are_mounted_at_every_boot_before_provisioning() {
        let user = alice();
        let config = cloud("");
        let shares = [
            crate::instance::shares::SharedDir {
                index: 0,
                location: "/home/alice".into(),
                mount_point: "/srv/alice".into(),
                writable: false,
            },
            crate::instance::shares::SharedDir {
                index: 1,
                location: "/tmp/lima".into(),
                mount_point: "/home/alice/src/it's".into(),
                writable: true,
            },
        ];
        let inputs = SeedInputs {
            instance: "web_1",
            user: &user,
            ssh_public_keys: vec![],
            config: &config,
            shares: &shares,
        };
        let doc = yaml(&user_data(&inputs));
        // Outside the user's home: early, by bootcmd.
        assert_eq!(
            doc["bootcmd"][1],
            "mountpoint -q '/srv/alice' || { mkdir -p '/srv/alice' && mount -t virtiofs -o ro fs0 '/srv/alice'; } || true"
        );
        assert!(
            doc["bootcmd"].as_sequence().unwrap().len() == 2,
            "{:?}",
            doc["bootcmd"]
        );
        // In it: once the user exists, the directories on the way its.
        let per_boot = file_content(&doc, PER_BOOT_SCRIPT);
        assert!(
            per_boot.contains(
                "mkparents '/home/alice/src/it'\\''s'/. 'alice'\nmountpoint -q '/home/alice/src/it'\\''s' || { mkdir -p '/home/alice/src/it'\\''s' && mount -t virtiofs -o rw fs1 '/home/alice/src/it'\\''s'; } || true\n"
            ),
            "{per_boot}"
        );
        assert!(inside("/home/alice", "/home/alice/") && !inside("/home/alicex", "/home/alice"));
    }

    #[test]
    fn provision_modes_map_onto_cloud_init_in_limas_order() {
        let config = cloud(
            "provision:\n\
             - mode: system\n  script: apt-get install -y x\n\
             - mode: user\n  script: \"#!/bin/bash\\necho hi > ~/hi\"\n\
             - mode: boot\n  script: systemctl disable y\n\
             - mode: dependency\n  script: echo dep\n\
             - mode: data\n  path: /etc/conf.d/example\n  content: FOO=bar\n  owner: alice:alice\n  permissions: 600\n  overwrite: false\n\
             - mode: yq\n  path: /home/alice/.config/docker/daemon.json\n  expression: .features.containerd-snapshotter = false\n  user: alice\n\
             env:\n  HTTP_PROXY: http://p:3128\nparam:\n  Key: it's\n",
        );
        let doc = seed(&config);
        let run = runcmd(&doc);
        let steps: Vec<&Vec<String>> = run[2..run.len() - 1].iter().collect();
        assert_eq!(
            steps[0],
            &[
                "sh",
                "-c",
                ". /var/lib/vmkeep/env; exec /var/lib/vmkeep/provision/03-dependency.sh"
            ],
            "dependency first"
        );
        assert_eq!(
            steps[1][2],
            ". /var/lib/vmkeep/env; exec /var/lib/vmkeep/provision/00-system.sh"
        );
        assert_eq!(&steps[2][..3], ["runuser", "-l", "alice"]);
        assert!(steps[2][4].ends_with("01-user.sh"));
        assert_eq!(steps[3], &["python3", "/var/lib/vmkeep/provision/05-yq.py"]);
        assert_eq!(
            steps.len(),
            4,
            "boot and data steps are not in runcmd: {steps:?}"
        );
        assert_eq!(
            file_content(&doc, "/var/lib/vmkeep/provision/00-system.sh"),
            "#!/bin/sh\napt-get install -y x"
        );
        assert_eq!(
            file_content(&doc, "/var/lib/vmkeep/provision/01-user.sh"),
            "#!/bin/bash\necho hi > ~/hi",
            "a shebang is kept"
        );
        let boot = &doc["bootcmd"][1];
        assert_eq!(boot[0], "sh");
        assert!(
            boot[2].as_str().unwrap().ends_with("systemctl disable y"),
            "{boot:?}"
        );
        assert!(
            boot[2]
                .as_str()
                .unwrap()
                .contains("export PARAM_Key='it'\\''s'"),
            "{boot:?}"
        );
        assert_eq!(file_content(&doc, "/var/lib/vmkeep/data/04"), "FOO=bar");
        let per_boot = file_content(&doc, PER_BOOT_SCRIPT);
        assert!(
            per_boot.contains(
                "install_data /var/lib/vmkeep/data/04 '/etc/conf.d/example' 'alice:alice' 600 false"
            ),
            "{per_boot}"
        );
        let env = file_content(&doc, "/var/lib/vmkeep/env");
        assert!(
            env.contains("export HTTP_PROXY='http://p:3128'\n")
                && env.contains("export PARAM_Key="),
            "{env}"
        );
        assert_eq!(
            file_content(&doc, "/etc/environment"),
            "HTTP_PROXY=http://p:3128\n"
        );
        let yq = file_content(&doc, "/var/lib/vmkeep/provision/05-yq.py");
        assert!(
            yq.contains(
                r#"assignments = json.loads("[[[\"features\",\"containerd-snapshotter\"],false]]")"#
            ),
            "{yq}"
        );
        assert!(yq.contains("owner = \"alice\""), "{yq}");
    }

    #[test]
    fn probes_run_as_the_user_at_first_boot_and_from_the_per_boot_script() {
        let config = cloud(
            "probes:\n- description: docker\n  script: |\n    #!/bin/sh\n    command -v docker\n  hint: see the log\n",
        );
        let doc = seed(&config);
        assert_eq!(
            file_content(&doc, "/var/lib/vmkeep/probes/00"),
            "#!/bin/sh\ncommand -v docker\n"
        );
        let runner = file_content(&doc, "/var/lib/vmkeep/run-probes");
        assert!(
            runner.contains("until runuser -l 'alice' -c '. /var/lib/vmkeep/env; exec /var/lib/vmkeep/probes/00'"),
            "{runner}"
        );
        assert!(runner.contains("probe 0 (docker)"), "{runner}");
        let run = runcmd(&doc);
        assert_eq!(run[run.len() - 2], ["/var/lib/vmkeep/run-probes"]);
        let per_boot = file_content(&doc, PER_BOOT_SCRIPT);
        assert!(
            per_boot.contains("[ -e /var/lib/vmkeep/provisioned ] && /var/lib/vmkeep/run-probes"),
            "{per_boot}"
        );
    }

    #[test]
    fn lima_settings_reach_cloud_init() {
        let config = cloud(
            "upgradePackages: true\ntimezone: Europe/Paris\ncaCerts:\n  removeDefaults: true\n  certs:\n  - PEM\n\
             hostResolver:\n  hosts:\n    host.docker.internal: host.lima.internal\nuser:\n  comment: Alice A\n",
        );
        let doc = seed(&config);
        assert_eq!(doc["package_upgrade"], true);
        assert_eq!(doc["timezone"], "Europe/Paris");
        assert_eq!(doc["ca_certs"]["remove_defaults"], true);
        assert_eq!(doc["ca_certs"]["trusted"][0], "PEM");
        let per_boot = file_content(&doc, PER_BOOT_SCRIPT);
        assert!(
            per_boot.contains(&format!("'{HOST_ADDRESS} host.docker.internal'")),
            "{per_boot}"
        );
    }

    #[test]
    fn yaml_special_characters_in_scripts_survive() {
        let config =
            cloud("provision:\n- script: \"echo 'a: b' \\\"#not a comment\\\" {x} [y]\\n\"\n");
        let doc = seed(&config);
        assert_eq!(
            file_content(&doc, "/var/lib/vmkeep/provision/00-system.sh"),
            "#!/bin/sh\necho 'a: b' \"#not a comment\" {x} [y]\n"
        );
    }

    #[test]
    fn the_seed_volume_is_fat_labelled_cidata_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cidata.img");
        let agent = vec![0x7f; 3 << 20];
        let user = alice();
        let config = cloud("");
        let inputs = SeedInputs {
            instance: "web_1",
            user: &user,
            ssh_public_keys: vec!["ssh-ed25519 AAAA vmkeep".into()],
            config: &config,
            shares: &[],
        };
        write_seed(&path, &inputs, &agent).unwrap();
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
        assert_eq!(read("meta-data"), meta_data(&inputs).into_bytes());
        assert_eq!(read("user-data"), user_data(&inputs).into_bytes());
        assert_eq!(read(AGENT_FILE), agent);
        drop(fs);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cidata.img"], "no temporary left");
    }
}
