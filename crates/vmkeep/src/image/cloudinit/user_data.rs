//! `user-data`, the `#cloud-config` document: the user and its keys, the
//! guest agent's unit and its install at every boot, Lima's provision
//! modes, probes, shared directories, CA certificates, time zone and
//! package upgrades.

use serde::Serialize;

use super::{
    AGENT_FILE, AGENT_GUEST_PATH, AGENT_UNIT, ENV_FILE, PER_BOOT_SCRIPT, PROBE_RUNNER,
    PROVISION_DIR, PROVISIONED_MARKER, STATE_DIR, SeedInputs, agent_unit, containerd,
};
use crate::instance::config::ProvisionMode;
use crate::instance::identity::hostname;
use crate::instance::provision;
use crate::instance::vars;

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
    if let Some(origin) = inputs.origin {
        bootcmd.extend(fresh_identity_commands(origin).into_iter().map(Into::into));
    }
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
    let dependencies = config
        .provision
        .iter()
        .filter(|p| p.mode == ProvisionMode::Dependency)
        .count();
    let containerd = raw.containerd.clone().unwrap_or_default();
    let containerd_script = containerd::script(
        containerd.system == Some(true),
        containerd.user == Some(true),
        &user.name,
    );
    for (position, (index, step)) in ordered.enumerate() {
        // Lima's containerd comes after the dependency steps, before the rest.
        if position == dependencies
            && let Some(script) = containerd_script.clone()
        {
            write_files.push(file(CONTAINERD_SCRIPT, "0755", script));
            runcmd.push(as_root(CONTAINERD_SCRIPT));
        }
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
    if config.provision.len() == dependencies
        && let Some(script) = containerd_script
    {
        write_files.push(file(CONTAINERD_SCRIPT, "0755", script));
        runcmd.push(as_root(CONTAINERD_SCRIPT));
    }
    let passwordless_sudo = raw.user().passwordless_sudo != Some(false);
    if !passwordless_sudo {
        write_files.push(file(PASSWORD_SCRIPT, "0700", password_script(user)));
        runcmd.insert(0, vec![PASSWORD_SCRIPT.into()]);
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
            sudo: if passwordless_sudo {
                "ALL=(ALL) NOPASSWD:ALL"
            } else {
                "ALL=(ALL) ALL"
            },
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

/// Where the containerd script (`containerd::script`) is written.
const CONTAINERD_SCRIPT: &str = "/var/lib/vmkeep/provision/containerd.sh";
/// Where the password script (`passwordlessSudo: false`) is written.
const PASSWORD_SCRIPT: &str = "/var/lib/vmkeep/provision/password.sh";

/// `passwordlessSudo: false`, as Lima does it: a random password of 16
/// letters and digits, set at the first boot and kept in `~/password`
/// (0600, the user's), for the sudo rule that asks for it.
fn password_script(user: &vars::GuestUser) -> String {
    let name = shell_quote(&user.name);
    let file = shell_quote(&format!("{}/password", user.home.trim_end_matches('/')));
    format!(
        "#!/bin/sh\n# vmkeep: user.passwordlessSudo: false (Lima's ~/password).\nset -e\n\
         password=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 16)\n\
         echo {name}:\"$password\" | chpasswd\n\
         (umask 077 && printf '%s\\n' \"$password\" > {file})\n\
         chown {name}: {file}\n"
    )
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
pub(super) fn inside(path: &str, dir: &str) -> bool {
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

/// What the first boot of a copy (a clone, an import) runs before the
/// guest's services start, once for its instance id (`cloud-init-per
/// instance`): a new machine id. cloud-init itself makes new ssh host keys
/// for a new instance id (`ssh_deletekeys`), and sets the hostname; it
/// leaves `/etc/machine-id` alone, which systemd, DHCP and journald key
/// on. An imported Lima guest also has Lima's per-boot hook set aside (it
/// mounts Lima's seed and runs Lima's boot scripts, which fail without
/// Lima's host agent): kept in /var/lib/vmkeep/lima, not deleted.
pub fn fresh_identity_commands(origin: &crate::instance::identity::Origin) -> Vec<String> {
    let mut commands = vec![
        "cloud-init-per instance vmkeep-machine-id sh -c \
         'rm -f /etc/machine-id /var/lib/dbus/machine-id; systemd-machine-id-setup >/dev/null 2>&1 || dbus-uuidgen --ensure=/etc/machine-id'"
            .to_string(),
    ];
    if let crate::instance::identity::Origin::Imported { .. } = origin {
        commands.push(format!(
            "cloud-init-per instance vmkeep-from-lima sh -c \
             'mkdir -p {STATE_DIR}/lima; for f in /var/lib/cloud/scripts/per-boot/00-lima.boot.sh; do [ ! -e \"$f\" ] || mv -f \"$f\" {STATE_DIR}/lima/; done; \
             systemctl disable --no-reload lima-guestagent.service >/dev/null 2>&1 || true'"
        ));
    }
    commands
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
