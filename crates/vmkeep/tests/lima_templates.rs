//! Integration: what a Lima user does, through the real binary. Lima's own
//! template files (tests/fixtures/lima, unmodified) are read in their own
//! form; base chains are fetched from a local HTTP server; list, delete and
//! create take Lima's command-line habits; a directory vmkeep did not make
//! is left alone. No VM is booted here (`vm_start_from_a_template_file...`
//! at the end boots the tiny image once).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestEnv;
use common::http::{FileServer, Mode};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lima")
}

/// `vmkeep ARGS` with Lima's templates found where a Lima install keeps them.
fn run_lima(env: &TestEnv, args: &[&str]) -> common::Run {
    env.run_env(args, &[("LIMA_TEMPLATES_PATH", fixtures().as_os_str())])
}

#[test]
fn every_lima_template_is_accepted_in_its_own_form() {
    let env = TestEnv::new();
    let none: &[&str] = &[];
    for (file, name, notes) in [
        // Mounts, port forwards, unix socket forwards and copyToHost apply.
        ("default.yaml", "default", none),
        ("docker.yaml", "docker", &[]),
        ("podman.yaml", "podman", &[]),
        ("k3s.yaml", "k3s", &[]),
        // Rootless containerd from the guest's packages.
        (
            "buildkit.yaml",
            "buildkit",
            &[
                "containerd.user: installed at the first boot from the guest distribution's own packages",
            ],
        ),
        ("alpine.yaml", "alpine", &[]),
        ("archlinux.yaml", "archlinux", &[]),
        ("debian-12.yaml", "debian-12", &[]),
        // Image lists for every arch, with Lima's variants.
        ("_images/debian-12.yaml", "debian-12", &[]),
        ("_images/ubuntu-24.04.yaml", "ubuntu-24.04", &[]),
    ] {
        let path = fixtures().join(file);
        let run = run_lima(&env, &["create", "--dry-run", path.to_str().unwrap()]);
        assert_eq!(run.code(), Some(0), "{file}: {}", run.describe());
        assert!(
            run.stderr()
                .contains(&format!("is valid for instance {name} ")),
            "{file}: {}",
            run.describe()
        );
        for note in notes {
            assert!(
                run.stderr().contains(note),
                "{file}: {note}: {}",
                run.describe()
            );
        }
        // Socket forwards (docker, podman) and copyToHost (k3s) are applied.
        assert!(
            !run.stderr().contains("unix socket rule") && !run.stderr().contains("copyToHost"),
            "{file}: {}",
            run.describe()
        );
        assert!(
            !run.stderr().contains("mounts:") && !run.stderr().contains("not applied yet"),
            "{file}: {}",
            run.describe()
        );
        // Every field of Lima's own templates is one vmkeep knows.
        assert!(
            !run.stderr().contains("not a field vmkeep knows"),
            "{file}: {}",
            run.describe()
        );
        assert_eq!(
            run.stderr().matches("note: ").count(),
            notes.len(),
            "{file}: one line per note: {}",
            run.describe()
        );
        // What would be stored: the resolved template, bases merged in.
        let stored = run.stdout();
        assert!(!stored.contains("\nbase:"), "{file}: {stored}");
        assert!(stored.contains("\n- location: "), "{file}: {stored}");
    }
    let docker = run_lima(
        &env,
        &[
            "create",
            "--dry-run",
            fixtures().join("docker.yaml").to_str().unwrap(),
        ],
    )
    .stdout();
    assert!(
        docker.contains("ubuntu-24.04-server-cloudimg-amd64.img"),
        "vmkeep's _images/ubuntu-lts: {docker}"
    );
    assert!(docker.contains("containerdSnapshotter: true"), "{docker}");
    // Lima's own _default/mounts, found where Lima keeps its templates: the
    // home, read-only, and no /tmp/lima (Lima 2.0).
    assert!(
        docker.contains("mounts:\n- location: '~'\n") && !docker.contains("/tmp/lima"),
        "{docker}"
    );
    let docker_path = fixtures().join("docker.yaml");
    let with_param = run_lima(
        &env,
        &[
            "create",
            "--dry-run",
            "--param",
            "containerdSnapshotter=false",
            docker_path.to_str().unwrap(),
        ],
    );
    assert!(
        with_param
            .stdout()
            .contains("containerdSnapshotter: 'false'"),
        "--param wins over the template's param: {}",
        with_param.describe()
    );
    let podman = run_lima(
        &env,
        &[
            "create",
            "--dry-run",
            fixtures().join("podman.yaml").to_str().unwrap(),
        ],
    )
    .stdout();
    assert!(
        podman.contains("Fedora-Cloud-Base-Generic-41"),
        "Lima's own _images/fedora-41: {podman}"
    );
    assert!(
        common::names(env.home()).is_empty(),
        "a dry run writes nothing: {:?}",
        common::names(env.home())
    );
}

#[test]
fn limas_own_default_mounts_win_where_lima_is_installed_and_vmkeeps_has_no_tmp_lima() {
    let env = TestEnv::new();
    let lima = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(lima.path().join("_default")).unwrap();
    std::fs::write(
        lima.path().join("_default/mounts.yaml"),
        "mounts:\n- location: /srv/limas-own\n",
    )
    .unwrap();
    let app = lima.path().join("app.yaml");
    std::fs::write(&app, "base: template:_default/mounts\n").unwrap();
    let stored = |templates: &Path| {
        let run = env.run_env(
            &["create", "--dry-run", app.to_str().unwrap()],
            &[("LIMA_TEMPLATES_PATH", templates.as_os_str())],
        );
        assert!(run.output.status.success(), "{}", run.describe());
        run.stdout()
    };
    let with_lima = stored(lima.path());
    assert!(
        with_lima.contains("location: /srv/limas-own"),
        "{with_lima}"
    );
    let empty = tempfile::tempdir().unwrap();
    let without = stored(empty.path());
    assert!(
        without.contains("location: '~'") && !without.contains("/tmp/lima"),
        "vmkeep's own, as Lima 2.0's: {without}"
    );
}

#[test]
fn a_base_lima_does_not_ship_with_vmkeep_names_what_to_do() {
    let env = TestEnv::new();
    let empty = tempfile::tempdir().unwrap();
    let run = env
        .command(&["create", fixtures().join("podman.yaml").to_str().unwrap()])
        .env("LIMA_TEMPLATES_PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("template:_images/fedora-41")
            && stderr.contains("LIMA_TEMPLATES_PATH")
            && stderr.contains("nothing was created"),
        "{stderr}"
    );
    assert!(common::names(env.home()).is_empty());
}

#[test]
fn settings_that_cannot_apply_say_where_and_what_to_do() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    for (yaml, says) in [
        (
            "vmType: vz\n",
            &["line 1", "QEMU only", "remove vmType"][..],
        ),
        ("# mine\nos: Darwin\n", &["line 2", "Linux only"]),
        (
            "rosetta:\n  enabled: true\n",
            &["line 2", "rosetta.enabled: false"],
        ),
        (
            "provision:\n- mode: ansible\n  playbook: p.yaml\n",
            &["line 2", "ansible-playbook"],
        ),
        (
            "provision:\n- script: echo {{.Param.Missing}}\nimages:\n- location: /i.qcow2\n",
            &["provision[0].script", ".Param.Missing"],
        ),
        ("provision:\n- script: echo hi\n", &["need a cloud image"]),
    ] {
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, yaml).unwrap();
        let run = env.run(&["create", "x", "--template", path.to_str().unwrap()]);
        assert_eq!(run.code(), Some(4), "{yaml:?}: {}", run.describe());
        for word in says {
            assert!(
                run.stderr().contains(word),
                "{yaml:?}: {word:?} in {}",
                run.stderr()
            );
        }
        assert!(
            run.stderr().contains("nothing was created"),
            "{}",
            run.stderr()
        );
        assert!(!env.instance_dir("x").exists());
    }
}

#[test]
fn an_unknown_field_is_noted_with_the_nearest_name_and_refused_under_strict() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(
        &path,
        "cpus: 2\nmemroy: 2GiB\nuser:\n  passwordlessSudo: false\n  futureField: {a: 1}\ntpm: true\n",
    )
    .unwrap();
    let template = path.to_str().unwrap();
    // --strict: refused, naming the file, the line and the nearest field;
    // nothing is created.
    for args in [
        &["create", "--strict", "x", "--template", template][..],
        &["create", "--strict", "--dry-run", "--name", "x", template],
    ] {
        let run = env.run(args);
        assert_eq!(run.code(), Some(4), "{}", run.describe());
        for word in [
            "t.yaml",
            "line 2",
            "unknown field `memroy`",
            "did you mean `memory`?",
        ] {
            assert!(run.stderr().contains(word), "{word:?}: {}", run.describe());
        }
        assert!(!env.instance_dir("x").exists());
    }
    // Lima's policy: accepted, one line each, and the instance is made.
    let run = env.run(&["create", "x", "--template", template]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let stderr = run.stderr();
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note: ")).collect();
    let name = path.display();
    let expected = [
        "note: tpm: not applied: vmkeep's VMs have no TPM device".to_string(),
        format!(
            "note: {name}: line 2: memroy: not a field vmkeep knows; ignored (did you mean `memory`?)"
        ),
        format!("note: {name}: line 5: user.futureField: not a field vmkeep knows; ignored"),
    ];
    assert_eq!(notes, expected, "{}", run.describe());
    // The stored config keeps them, and loads (list reads it).
    let stored = std::fs::read_to_string(env.instance_dir("x").join("vmkeep.yaml")).unwrap();
    assert!(stored.contains("memroy"), "{stored}");
    assert_eq!(env.row("x")["cpus"], 2, "{}", env.row("x"));
}

#[test]
fn a_wrong_value_in_an_instance_config_points_to_the_list_of_fields() {
    let env = TestEnv::new();
    env.create("x", "");
    // An unknown field is left out of a stored config as of a template; a
    // wrong value is refused with its line.
    std::fs::write(
        env.instance_dir("x").join("vmkeep.yaml"),
        "# edited\ncpu: 2\ncpus: 0\n",
    )
    .unwrap();
    let run = env.run(&["start", "x"]);
    assert_eq!(run.code(), Some(4), "{}", run.describe());
    for word in [
        "vmkeep.yaml",
        "line 3",
        "1 to 64",
        "`vmkeep create --help` lists the fields",
    ] {
        assert!(run.stderr().contains(word), "{word:?}: {}", run.describe());
    }
    let help = env.ok(&["create", "--help"]).stdout();
    for field in [
        "Config fields",
        "cpus:",
        "provision:",
        "probes:",
        "base:",
        "ssh:",
    ] {
        assert!(help.contains(field), "{field:?}: {help}");
    }
}

#[test]
fn an_error_in_a_base_names_that_file_and_its_line() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("common.yaml"), "cpus: 2\n\nimagez: []\n").unwrap();
    std::fs::write(dir.path().join("app.yaml"), "base: ./common.yaml\n").unwrap();
    let app = dir.path().join("app.yaml");
    let run = env.run(&["create", "--strict", app.to_str().unwrap()]);
    assert_eq!(run.code(), Some(4), "{}", run.describe());
    let stderr = run.stderr();
    assert!(
        stderr.contains("common.yaml")
            && stderr.contains("line 3")
            && stderr.contains("did you mean `images`?"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("common.yaml"), "cpus: 2\n\nmemory: lots\n").unwrap();
    let run = env.run(&["create", app.to_str().unwrap()]);
    assert_eq!(run.code(), Some(4), "{}", run.describe());
    assert!(
        run.stderr().contains("common.yaml") && run.stderr().contains("line 3"),
        "{}",
        run.describe()
    );
    std::fs::write(dir.path().join("loop.yaml"), "base: ./loop2.yaml\n").unwrap();
    std::fs::write(dir.path().join("loop2.yaml"), "base: loop.yaml\n").unwrap();
    let run = env.run(&["create", dir.path().join("loop.yaml").to_str().unwrap()]);
    assert!(run.stderr().contains("template loop"), "{}", run.describe());
    assert!(common::names(env.home()).is_empty());
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_template_chain_over_http_is_resolved_once_and_stored_whole() {
    let env = TestEnv::new();
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("t/common")).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        site.path().join("disk.qcow2").to_str().unwrap(),
        "64M",
    ]);
    let server = FileServer::start(site.path(), Mode::Normal);
    let disk_url = server.url("disk.qcow2");
    // The main template on the server; its bases: a relative URL (which has
    // a base of its own) and a built-in; a script file next to it.
    std::fs::write(
        site.path().join("t/app.yaml"),
        "minimumLimaVersion: 1.1.0\nbase:\n- common/base.yaml\n- template:_default/mounts\n\
         memory: 1GiB\nparam:\n  Greeting: hello\nprovision:\n- mode: user\n  file: common/setup.sh\n\
         message: \"{{.Name}} lives in {{.Dir}}\"\n",
    )
    .unwrap();
    std::fs::write(
        site.path().join("t/common/base.yaml"),
        "base: ../images.yaml\ncpus: 3\nmemory: 8GiB\ndisk: 128MiB\nprovision:\n- mode: system\n  script: echo base first\n",
    )
    .unwrap();
    std::fs::write(
        site.path().join("t/images.yaml"),
        format!(
            "images:\n- location: https://example.invalid/riscv.img\n  arch: riscv64\n\
             - location: {disk_url}\n  arch: x86_64\n- location: https://example.invalid/arm.img\n  arch: aarch64\n"
        ),
    )
    .unwrap();
    std::fs::write(
        site.path().join("t/common/setup.sh"),
        "#!/bin/sh\necho {{.Param.Greeting}} $PARAM_Greeting\n",
    )
    .unwrap();

    let run = env.run(&["create", &server.url("t/app.yaml")]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(
        run.stdout().contains("created instance app"),
        "{}",
        run.describe()
    );
    assert!(
        !run.stderr().contains("mounts:"),
        "Lima's default mounts apply: {}",
        run.describe()
    );
    let stored = std::fs::read_to_string(env.instance_dir("app").join("vmkeep.yaml")).unwrap();
    assert!(
        stored.starts_with("# Created by vmkeep from http://127.0.0.1:"),
        "{stored}"
    );
    assert!(
        !stored.contains("\nbase:") && !stored.contains("file:"),
        "{stored}"
    );
    assert!(
        stored.contains("echo {{.Param.Greeting}} $PARAM_Greeting"),
        "the script is read in: {stored}"
    );
    let base_first = stored.find("echo base first").unwrap();
    assert!(
        base_first < stored.find("Greeting}}").unwrap(),
        "a base's provision runs first: {stored}"
    );

    // Lima's list habits.
    let json = env.ok(&["list", "--format", "json"]).stdout();
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 1, "one object per line: {json}");
    let row: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(row["name"], "app");
    assert_eq!(row["status"], "Stopped");
    assert_eq!(row["cpus"], 3, "from the base");
    assert_eq!(row["memory"], 1u64 << 30, "the template wins; in bytes");
    assert_eq!(row["disk"], 128u64 << 20);
    assert_eq!(row["vmType"], "qemu");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .starts_with("app lives in /"),
        "{row}"
    );
    assert_eq!(
        env.ok(&["list", "--format", "{{.Name}} {{.Status}} {{.CPUs}}"])
            .stdout(),
        "app Stopped 3\n"
    );
    assert_eq!(env.ok(&["list", "-q"]).stdout(), "app\n");
    let yaml = env.ok(&["list", "--format", "yaml"]).stdout();
    assert!(yaml.starts_with("---\nname: app\n"), "{yaml}");
    let mixed = env.run(&["list", "--format", "json", "app", "ghost"]);
    assert_eq!(mixed.code(), Some(3), "{}", mixed.describe());
    assert_eq!(
        mixed.stdout().lines().count(),
        1,
        "no row for a missing name: {}",
        mixed.stdout()
    );
    assert!(
        mixed.stderr().contains("no such instance: ghost"),
        "{}",
        mixed.describe()
    );
    let legacy = env.list();
    assert_eq!(legacy[0]["name"], "app", "--json keeps vmkeep's array");

    // A later change to a base does not change the instance.
    std::fs::write(site.path().join("t/common/base.yaml"), "cpus: 1\n").unwrap();
    assert_eq!(env.ok(&["list", "--format", "{{.CPUs}}"]).stdout(), "3\n");
    drop(server);
    assert_eq!(
        env.ok(&["list", "--format", "{{.CPUs}}"]).stdout(),
        "3\n",
        "no network needed"
    );
}

#[test]
fn limas_create_forms_through_the_binary() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("My-VM.yaml");
    std::fs::write(&file, "cpus: 2\n").unwrap();
    // The name from the file name, lower-cased, dots kept (as Lima).
    env.ok(&["create", file.to_str().unwrap()]);
    assert!(env.instance_dir("my-vm").is_dir());
    let dotted = dir.path().join("ubuntu-24.04.yaml");
    std::fs::write(&dotted, "").unwrap();
    env.ok(&["create", dotted.to_str().unwrap()]);
    assert!(env.instance_dir("ubuntu-24.04").is_dir());
    env.ok(&["create", "--name", "second", file.to_str().unwrap()]);
    assert_eq!(env.status("second"), "Stopped");
    let again = env.run(&["create", file.to_str().unwrap()]);
    assert_eq!(again.code(), Some(5));
    assert!(
        again.stderr().contains("already exists"),
        "{}",
        again.describe()
    );

    // Standard input needs --name.
    let mut child = env
        .command(&["create", "--name", "piped", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"cpus: 4\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = env.ok(&["list", "--format", "{{.CPUs}}", "piped"]).stdout();
    assert_eq!(json, "4\n");
    // A template on standard input names no instance: a usage error.
    let run = env.run(&["create", "-"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    assert!(run.stderr().contains("--name"), "{}", run.describe());

    // template:NAME, checked without downloading.
    let run = env.ok(&["create", "--dry-run", "template:debian"]);
    assert!(
        run.stderr().contains("is valid for instance debian "),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout().contains("debian-12-genericcloud-amd64"),
        "{}",
        run.describe()
    );

    // A bare word is an instance name (vmkeep's form); a template of that
    // name gets a note instead of silence.
    let run = env.ok(&["create", "docker"]);
    assert!(
        run.stderr().contains("not from template:docker") && run.stderr().contains("does not ship"),
        "{}",
        run.describe()
    );
    assert_eq!(env.status("docker"), "Stopped");
}

/// A Lima instance directory as `limactl` leaves it.
fn fake_lima_instance(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for file in [
        "lima.yaml",
        "diffdisk",
        "basedisk",
        "cidata.iso",
        "serial.log",
        "ha.stderr.log",
        "ssh.config",
    ] {
        std::fs::write(dir.join(file), "lima").unwrap();
    }
}

#[test]
fn a_directory_vmkeep_did_not_make_is_listed_as_foreign_and_kept_without_force() {
    let env = TestEnv::new();
    fake_lima_instance(&env.instance_dir("lima1"));
    env.create("mine", "");
    let rows = env.list();
    let row = rows.iter().find(|r| r["name"] == "lima1").unwrap();
    assert_eq!(row["status"], "Foreign", "{row}");
    assert_eq!(row["reason"]["code"], "not-vmkeep");
    assert!(
        row["reason"]["message"]
            .as_str()
            .unwrap()
            .contains("a Lima instance (lima.yaml"),
        "{row}"
    );
    assert!(
        !row["reason"]["hint"].as_str().unwrap().contains("delete"),
        "{row}"
    );
    assert_eq!(env.status("mine"), "Stopped");
    let table = env.ok(&["list"]).stdout();
    assert!(
        table.contains("Foreign") && !table.contains("Broken"),
        "{table}"
    );

    for verb in [
        &["delete", "lima1"][..],
        &["start", "lima1"],
        &["stop", "lima1"],
        &["shell", "lima1", "--", "true"],
    ] {
        let run = env.run(verb);
        assert_eq!(run.code(), Some(5), "{verb:?}: {}", run.describe());
        assert!(
            run.stderr().contains("not a vmkeep instance") && run.stderr().contains("lima.yaml"),
            "{verb:?}: {}",
            run.describe()
        );
    }
    assert_eq!(
        common::names(&env.instance_dir("lima1")).len(),
        7,
        "nothing touched"
    );

    // A live process holding one of its pid files: not even --force.
    let pid_file = env.instance_dir("lima1").join("qemu.pid");
    let lock = vmkeep::os::lock::HeldLock::try_acquire(&pid_file)
        .unwrap()
        .unwrap();
    let run = env.run(&["delete", "--force", "lima1"]);
    assert_eq!(run.code(), Some(5), "{}", run.describe());
    assert!(
        run.stderr().contains("holds qemu.pid"),
        "{}",
        run.describe()
    );
    drop(lock);

    let run = env.ok(&["delete", "--force", "lima1"]);
    assert!(
        run.stdout().contains("a Lima instance"),
        "{}",
        run.describe()
    );
    assert!(!env.instance_dir("lima1").exists());
    assert_eq!(
        env.status("mine"),
        "Stopped",
        "the vmkeep instance is untouched"
    );
}

#[test]
fn delete_force_of_a_missing_instance_is_not_an_error() {
    let env = TestEnv::new();
    let run = env.ok(&["delete", "--force", "ghost"]);
    assert!(
        run.stderr().contains("nothing to delete"),
        "{}",
        run.describe()
    );
    let run = env.run(&["delete", "ghost"]);
    assert_eq!(run.code(), Some(3), "without --force it still is");
}

#[test]
fn vm_start_from_a_template_file_names_the_instance_and_shows_its_message() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    std::fs::write(
        &file,
        "minimumLimaVersion: 1.1.0\nparam:\n  Who: you\nmessage: |\n  Hello {{.Param.Who}}: {{.Name}} runs in {{.Dir}}{{if eq .HostOS \"linux\"}} on Linux{{end}}\n",
    )
    .unwrap();
    let run = env.run_within(&["start", file.to_str().unwrap()], Duration::from_secs(240));
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let expected = format!(
        "Hello you: hello runs in {} on Linux",
        env.instance_dir("hello").display()
    );
    assert!(run.stdout().contains(&expected), "{}", run.describe());
    assert_eq!(env.status("hello"), "Running");
    // Its instance exists already: a wrong state.
    let again = env.run(&["start", file.to_str().unwrap()]);
    assert_eq!(again.code(), Some(5), "{}", again.describe());
    assert!(
        again.stderr().contains("`vmkeep start hello`"),
        "{}",
        again.describe()
    );
    env.ok(&["stop", "hello"]);
    assert_eq!(env.status("hello"), "Stopped");
}

/// Lima 2.1's layout (one `disk`, here a sparse raw image, no backing
/// file) and Lima 2.0's migrated one (`disk` a symlink to `diffdisk`):
/// imported without a boot, the disk copied as the base of a new overlay,
/// holes kept, the Lima directory unchanged; the same name twice refused.
#[test]
fn a_lima_2_1_instance_with_one_disk_is_imported_as_the_base_of_an_overlay() {
    let env = TestEnv::new();
    let lima_home = tempfile::Builder::new()
        .prefix("vklima")
        .tempdir_in("/tmp")
        .unwrap();
    let lima = lima_home.path().join("one");
    std::fs::create_dir(&lima).unwrap();
    std::fs::write(
        lima.join("lima.yaml"),
        "images:\n- location: \"https://example.org/debian-12.raw\"\n  arch: \"x86_64\"\ndisk: 100MiB\n",
    )
    .unwrap();
    {
        use std::io::{Seek, SeekFrom};
        let mut disk = std::fs::File::create(lima.join("disk")).unwrap();
        disk.write_all(b"guest data at the start").unwrap();
        disk.seek(SeekFrom::Start(128 << 20)).unwrap();
        disk.write_all(b"and in the middle").unwrap();
        disk.set_len(256 << 20).unwrap();
    }
    use sha2::Digest;
    let sums = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        common::names(dir)
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.join(&n)).unwrap();
                (n, sha2::Sha256::digest(&bytes).to_vec())
            })
            .collect()
    };
    let before = sums(&lima);
    let run = env.run_env(
        &["import", "one"],
        &[("LIMA_HOME", lima_home.path().as_os_str())],
    );
    assert!(run.output.status.success(), "{}", run.describe());
    assert!(
        run.stderr()
            .contains("disk: 256MiB as the Lima instance's disk is"),
        "the disk's size kept: {}",
        run.describe()
    );
    assert_eq!(sums(&lima), before, "the Lima instance is left as it was");
    let dir = env.instance_dir("one");
    let base = std::fs::read(dir.join("base.img")).unwrap();
    assert_eq!(
        base,
        std::fs::read(lima.join("disk")).unwrap(),
        "copied byte for byte"
    );
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata(dir.join("base.img")).unwrap().blocks() * 512 < 16 << 20,
        "holes kept"
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("\"backing-filename\": \"base.img\"")
            && info.contains("\"backing-filename-format\": \"raw\"")
            && info.contains(&format!("\"virtual-size\": {}", 256u64 << 20)),
        "{info}"
    );
    let config = std::fs::read_to_string(dir.join("vmkeep.yaml")).unwrap();
    assert!(
        config.starts_with("# Imported by vmkeep from the Lima instance"),
        "{config}"
    );
    assert_eq!(env.status("one"), "Stopped");
    let again = env.run_env(
        &["import", "one"],
        &[("LIMA_HOME", lima_home.path().as_os_str())],
    );
    assert_eq!(again.code(), Some(5), "{}", again.describe());

    // A migrated 2.0 instance: `disk` is a symlink to `diffdisk`.
    let migrated = lima_home.path().join("old");
    std::fs::create_dir(&migrated).unwrap();
    std::fs::copy(lima.join("lima.yaml"), migrated.join("lima.yaml")).unwrap();
    std::fs::write(migrated.join("diffdisk"), vec![1u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("diffdisk", migrated.join("disk")).unwrap();
    let run = env.run_env(
        &[
            "create",
            "--from-lima",
            migrated.to_str().unwrap(),
            "--name",
            "old2",
        ],
        &[],
    );
    assert!(run.output.status.success(), "{}", run.describe());
    assert_eq!(
        std::fs::read(env.instance_dir("old2").join("base.img")).unwrap(),
        vec![1u8; 1 << 20]
    );
    assert!(
        std::fs::symlink_metadata(migrated.join("disk"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
