//! The seed: `meta-data` and `user-data` as cloud-init reads them, and the
//! FAT volume that carries them.

use super::user_data::inside;
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
        origin: None,
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
        origin: None,
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
    let unit = file_content(&doc, "/etc/systemd/system/vmkeep-guest.service");
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/vmkeep-guest"),
        "{unit}"
    );
    // A restart of the agent leaves its sessions' processes alone.
    assert!(unit.contains("KillMode=process"), "{unit}");
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
        origin: None,
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
        env.contains("export HTTP_PROXY='http://p:3128'\n") && env.contains("export PARAM_Key="),
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
        runner.contains(
            "until runuser -l 'alice' -c '. /var/lib/vmkeep/env; exec /var/lib/vmkeep/probes/00'"
        ),
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
    let config = cloud("provision:\n- script: \"echo 'a: b' \\\"#not a comment\\\" {x} [y]\\n\"\n");
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
        origin: None,
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

#[test]
fn passwordless_sudo_false_gives_a_password_and_a_rule_that_asks_for_it() {
    let doc = seed(&cloud("user:\n  passwordlessSudo: false\n"));
    assert_eq!(doc["users"][0]["sudo"], "ALL=(ALL) ALL");
    let run = runcmd(&doc);
    let script = &run[0][0];
    let text = file_content(&doc, script);
    assert!(
        text.contains("chpasswd") && text.contains("'/home/alice/password'"),
        "{text}"
    );
    for unset in [
        "user:\n  passwordlessSudo: true\n",
        "user:\n  passwordlessSudo: null\n",
        "",
    ] {
        let doc = seed(&cloud(unset));
        assert_eq!(
            doc["users"][0]["sudo"], "ALL=(ALL) NOPASSWD:ALL",
            "{unset:?}"
        );
        assert!(!files(&doc).iter().any(|(p, _)| p.ends_with("password.sh")));
    }
}

#[test]
fn containerd_is_installed_after_the_dependency_steps_and_before_the_others() {
    let doc = seed(&cloud(
        "containerd:\n  system: true\nprovision:\n- mode: user\n  script: nerdctl ps\n- mode: dependency\n  script: echo deps\n",
    ));
    let run: Vec<String> = runcmd(&doc).into_iter().map(|c| c.join(" ")).collect();
    let position = |what: &str| {
        run.iter()
            .position(|c| c.contains(what))
            .unwrap_or_else(|| panic!("{what} in {run:?}"))
    };
    assert!(
        position("dependency") < position("containerd.sh"),
        "{run:?}"
    );
    assert!(position("containerd.sh") < position("-user.sh"), "{run:?}");
    let script = file_content(&doc, "/var/lib/vmkeep/provision/containerd.sh");
    assert!(script.contains("packages=containerd"), "{script}");
    // With no provision steps at all, and not at all when not asked.
    let alone = seed(&cloud("containerd:\n  user: true\n"));
    assert!(
        runcmd(&alone)
            .iter()
            .any(|c| c.join(" ").contains("containerd.sh"))
    );
    let none = seed(&cloud("containerd:\n  system: false\n  user: false\n"));
    assert!(
        !runcmd(&none)
            .iter()
            .any(|c| c.join(" ").contains("containerd"))
    );
}

#[test]
fn a_copy_takes_a_fresh_machine_id_once_and_an_import_sets_limas_hook_aside() {
    let config = cloud("");
    let user = alice();
    let bootcmd = |origin: Option<&crate::instance::identity::Origin>| -> Vec<String> {
        let inputs = SeedInputs {
            instance: "copy",
            user: &user,
            ssh_public_keys: vec![],
            config: &config,
            shares: &[],
            origin,
        };
        yaml(&user_data(&inputs))["bootcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect()
    };
    let fresh = bootcmd(None);
    assert!(!fresh.iter().any(|c| c.contains("machine-id")), "{fresh:?}");
    let cloned = bootcmd(Some(&crate::instance::identity::Origin::Cloned {
        from: "src".into(),
    }));
    let machine_id: Vec<&String> = cloned.iter().filter(|c| c.contains("machine-id")).collect();
    assert_eq!(machine_id.len(), 1, "{cloned:?}");
    assert!(
        machine_id[0].starts_with("cloud-init-per instance ")
            && machine_id[0].contains("rm -f /etc/machine-id")
            && machine_id[0].contains("systemd-machine-id-setup"),
        "once per instance id: {}",
        machine_id[0]
    );
    assert!(!cloned.iter().any(|c| c.contains("00-lima.boot.sh")));
    let imported = bootcmd(Some(&crate::instance::identity::Origin::Imported {
        from: "/home/ann/.lima/dev".into(),
    }));
    let hook = imported
        .iter()
        .find(|c| c.contains("00-lima.boot.sh"))
        .expect("Lima's hook set aside");
    assert!(
        hook.starts_with("cloud-init-per instance ")
            && hook.contains("mv -f")
            && !hook.contains("rm "),
        "moved, not deleted: {hook}"
    );
    // The instance id is the new name's, so cloud-init sees a new instance.
    let inputs = SeedInputs {
        instance: "copy",
        user: &user,
        ssh_public_keys: vec![],
        config: &config,
        shares: &[],
        origin: None,
    };
    assert!(meta_data(&inputs).starts_with("instance-id: vmkeep-copy\n"));
}
