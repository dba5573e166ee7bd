//! Cloud-image tier: a Debian bookworm cloud image built offline-from-internet
//! with debootstrap (scripts/build-test-cloud-image, cached under target/tmp
//! keyed by the script's content), driven through the real `vmkeep` binary.
//!
//! Needs root (debootstrap, chroot) the first time the image is built; run
//! scripts/setup-host first.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestEnv;
use common::http::{FileServer, Mode};

/// The built test image: disk.qcow2, vmlinuz, initrd.img and their sha256.
struct TestImage {
    dir: PathBuf,
    disk_sha256: String,
    initrd_sha256: String,
}

impl TestImage {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the image once per machine (per recipe); later runs reuse it.
fn test_image() -> TestImage {
    let script = workspace().join("scripts/build-test-cloud-image");
    let recipe = std::fs::read(&script).expect("the build script");
    let key = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(&recipe)[..8])
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cloud-image-{key}"));
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on a file we own; released when `lock` is dropped.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    if !dir.join("SHA256SUMS").exists() {
        let began = Instant::now();
        let output = std::process::Command::new(&script)
            .arg(&dir)
            .output()
            .expect("run build-test-cloud-image");
        assert!(
            output.status.success(),
            "building the test image failed (root and debootstrap needed; run scripts/setup-host):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "built the test cloud image in {:.0}s",
            began.elapsed().as_secs_f64()
        );
    }
    drop(lock);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let sum_of = |name: &str| {
        sums.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    TestImage {
        disk_sha256: sum_of("disk.qcow2"),
        initrd_sha256: sum_of("initrd.img"),
        dir,
    }
}

fn template(disk_location: &str, digest: &str, image: &TestImage) -> String {
    format!(
        "cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
         images:\n- location: {disk_location}\n  arch: x86_64\n  digest: {digest}\n\
         \x20 kernel:\n    location: {}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {}\n\
         provision:\n- mode: system\n  script: |\n    echo \"system $(id -un)\" > /var/tmp/provisioned-system\n\
         - mode: user\n  script: |\n    echo \"user $(id -un)\" > \"$HOME/provisioned-user\"\n",
        image.file("vmlinuz").display(),
        image.file("initrd.img").display(),
    )
}

/// Write a template file and run `create` with our own cache.
fn create(env: &TestEnv, cache: &Path, name: &str, yaml: &str) -> common::Run {
    let path = env.home().join(format!("{name}.template.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let args = ["create", name, "--template", path.to_str().unwrap()];
    let output = env
        .command(&args)
        .env("VMKEEP_CACHE_DIR", cache)
        .env("VMKEEP_DOWNLOAD_STALL_TIMEOUT", "1")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    common::Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

fn cached_images(cache: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(cache.join("images"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(file.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

fn command_in(env: &TestEnv, cache: &Path, args: &[&str]) -> common::Run {
    let output = env
        .command(args)
        .env("VMKEEP_CACHE_DIR", cache)
        .output()
        .unwrap();
    common::Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

/// `vmkeep shell NAME -- sh -c SCRIPT` with this test's cache: the run, or
/// (`out`) its output once it succeeded.
struct GuestShell<'a> {
    env: &'a TestEnv,
    cache: &'a Path,
    name: &'a str,
}

impl GuestShell<'_> {
    fn sh(&self, script: &str) -> common::Run {
        command_in(
            self.env,
            self.cache,
            &["shell", self.name, "--", "sh", "-c", script],
        )
    }

    fn out(&self, script: &str) -> String {
        let run = self.sh(script);
        assert!(run.output.status.success(), "{script}: {}", run.describe());
        run.stdout()
    }
}

fn ok_in(env: &TestEnv, cache: &Path, args: &[&str]) -> common::Run {
    let run = command_in(env, cache, args);
    assert!(
        run.output.status.success(),
        "vmkeep {args:?} failed:\n{}",
        run.describe()
    );
    run
}

#[test]
fn vm_cloud_http_image_start_shell_provision_stop_restart_delete() {
    let image = test_image();
    let env = TestEnv::new();
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let server = FileServer::start(&image.dir, Mode::TruncateOnce(64 << 20));
    let digest = format!("sha256:{}", image.disk_sha256);
    let yaml = template(&server.url("disk.qcow2"), &digest, &image);

    // Download through http: the first response is cut at 64 MiB and the
    // download resumes with a Range request.
    let began = Instant::now();
    let created = create(&env, cache.path(), "deb", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());
    eprintln!(
        "create (download + overlay): {:.1}s",
        began.elapsed().as_secs_f64()
    );
    let requests = server.requests();
    assert_eq!(
        requests[0],
        ("/disk.qcow2".to_string(), None),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(p, r)| p == "/disk.qcow2" && *r == Some(64 << 20)),
        "resumed with a Range request: {requests:?}"
    );
    let stderr = created.stderr();
    assert!(
        stderr.contains("fetching http://") && stderr.contains("resuming at"),
        "{stderr}"
    );

    // A second instance of the same image does not download again.
    let before = server.requests().len();
    let second = create(&env, cache.path(), "deb2", &yaml);
    assert!(second.output.status.success(), "{}", second.describe());
    assert_eq!(server.requests().len(), before, "served from the cache");
    ok_in(&env, cache.path(), &["delete", "deb2"]);
    drop(server);

    // Start: Running only once cloud-init has finished.
    let began = Instant::now();
    let start = ok_in(&env, cache.path(), &["start", "deb"]);
    let first_boot = began.elapsed();
    eprintln!("first start -> ready: {:.1}s", first_boot.as_secs_f64());
    assert!(
        start.stdout().contains("deb is running"),
        "{}",
        start.describe()
    );
    let status = ok_in(
        &env,
        cache.path(),
        &["shell", "deb", "--", "cloud-init", "status"],
    );
    assert!(
        status.stdout().contains("status: done"),
        "{}",
        status.describe()
    );

    // The shell runs as the user, through ssh; exit codes come back.
    let whoami = ok_in(&env, cache.path(), &["shell", "deb", "--", "id", "-un"]);
    assert_eq!(whoami.stdout().trim(), "vmkeep", "{}", whoami.describe());
    let quoted = command_in(
        &env,
        cache.path(),
        &["shell", "deb", "--", "sh", "-c", "echo 'a b'; exit 7"],
    );
    assert_eq!(quoted.code(), Some(7), "{}", quoted.describe());
    assert_eq!(quoted.stdout(), "a b\n");
    let provisioned = ok_in(
        &env,
        cache.path(),
        &[
            "shell",
            "deb",
            "--",
            "sh",
            "-c",
            "cat /var/tmp/provisioned-system ~/provisioned-user",
        ],
    );
    assert_eq!(
        provisioned.stdout(),
        "system root\nuser vmkeep\n",
        "{}",
        provisioned.describe()
    );

    // list shows the ssh port; ssh-config is usable by plain ssh.
    let row = env.list().into_iter().find(|r| r["name"] == "deb").unwrap();
    let port = row["ssh_port"].as_u64().expect("an ssh port while running");
    let config = ok_in(&env, cache.path(), &["ssh-config", "deb"]).stdout();
    assert!(config.contains(&format!("Port {port}")), "{config}");
    let config_file = env.home().join("ssh_config");
    std::fs::write(&config_file, &config).unwrap();
    let ssh = std::process::Command::new("ssh")
        .args([
            "-F",
            config_file.to_str().unwrap(),
            "vmkeep-deb",
            "hostname",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout).trim(),
        "deb",
        "{ssh:?}"
    );

    // Graceful stop: the ACPI power button, a clean systemd shutdown.
    let stop = ok_in(&env, cache.path(), &["stop", "deb"]);
    assert!(
        stop.stdout().contains("ACPI power button"),
        "{}",
        stop.describe()
    );
    let stopped = env.last_stopped("deb");
    assert_eq!(stopped["by"], "power-button", "{stopped}");
    let serial = std::fs::read_to_string(env.instance_dir("deb").join("serial.log")).unwrap();
    assert!(
        serial.contains("System Power Off") && serial.contains("reboot: Power down"),
        "clean shutdown"
    );
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.runtime_files("deb"), Vec::<String>::new());
    assert!(!env.instance_dir("deb").join("ssh.port").exists());

    // Start again: the same disk, provisioning not repeated.
    let began = Instant::now();
    ok_in(&env, cache.path(), &["start", "deb"]);
    eprintln!(
        "second start -> ready: {:.1}s",
        began.elapsed().as_secs_f64()
    );
    let again = ok_in(
        &env,
        cache.path(),
        &[
            "shell",
            "deb",
            "--",
            "sh",
            "-c",
            "cat ~/provisioned-user; cloud-init status",
        ],
    );
    assert!(
        again.stdout().starts_with("user vmkeep\n") && again.stdout().contains("done"),
        "{}",
        again.describe()
    );

    ok_in(&env, cache.path(), &["delete", "--force", "deb"]);
    assert!(!env.instance_dir("deb").exists());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

/// Lima's template language on a real cloud image: every provision mode,
/// params, env, template variables, a probe that passes on its third run
/// (start returns only after it), ssh.localPort, hostResolver.hosts, the
/// message; and what each mode does at the next boot.
#[test]
fn vm_cloud_lima_provision_modes_probes_and_settings() {
    let image = test_image();
    let env = TestEnv::new();
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = common::free_port();
    let yaml = format!(
        "minimumLimaVersion: 1.1.0\ncpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
         images:\n- location: {disk}\n  arch: x86_64\n  digest: sha256:{sum}\n\
         \x20 kernel:\n    location: {kernel}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {initrd}\n\
         - location: https://example.invalid/other-arch.img\n  arch: riscv64\n\
         containerd:\n  system: false\n  user: false\n\
         param:\n  Who: lima-user\nenv:\n  GREETING: hello\nssh:\n  localPort: {port}\n\
         hostResolver:\n  hosts:\n    host.docker.internal: host.lima.internal\n\
         message: \"{{{{.Name}}}} is ready\"\n\
         provision:\n\
         - mode: system\n  script: |\n    #!/bin/sh\n    echo \"system $(id -un) $PARAM_Who $GREETING\" >> /var/tmp/order\n\
         - mode: boot\n  script: echo boot >> /var/tmp/boots\n\
         - mode: dependency\n  script: |\n    #!/bin/sh\n    echo dependency >> /var/tmp/order\n\
         - mode: user\n  script: |\n    #!/bin/sh\n    echo \"user $(id -un) {{{{.User}}}} {{{{.Home}}}} {{{{.UID}}}}\" > ~/order-user\n\
         - mode: data\n  path: \"{{{{.Home}}}}/data.txt\"\n  content: \"{{{{.Param.Who}}}}\"\n  owner: \"{{{{.User}}}}:{{{{.User}}}}\"\n  permissions: 600\n\
         - mode: yq\n  path: \"{{{{.Home}}}}/.config/app/settings.json\"\n  expression: .features.snap = false | .name = \"{{{{.Name}}}}\"\n  user: \"{{{{.User}}}}\"\n\
         probes:\n- description: third time lucky\n  script: |\n    #!/bin/sh\n    n=$(cat ~/probe-runs 2>/dev/null || echo 0)\n    echo $((n + 1)) > ~/probe-runs\n    [ \"$n\" -ge 2 ]\n  hint: it counts to three\n",
        disk = image.file("disk.qcow2").display(),
        sum = image.disk_sha256,
        kernel = image.file("vmlinuz").display(),
        initrd = image.file("initrd.img").display(),
    );
    let created = create(&env, cache.path(), "lima", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());

    let start = ok_in(&env, cache.path(), &["start", "lima"]);
    assert!(
        start.stdout().contains("lima is ready"),
        "the message: {}",
        start.describe()
    );
    let sh = |script: &str| {
        ok_in(
            &env,
            cache.path(),
            &["shell", "lima", "--", "sh", "-c", script],
        )
        .stdout()
    };
    assert_eq!(
        sh("cat ~/probe-runs"),
        "3\n",
        "start returned once the probe had passed (its third run)"
    );
    assert_eq!(
        sh("cat /var/tmp/order ~/order-user"),
        "dependency\nsystem root lima-user hello\nuser vmkeep vmkeep /home/vmkeep 1000\n",
        "dependency first, then in order; params, env and template variables"
    );
    assert_eq!(
        sh("stat -c '%U %a' ~/data.txt; cat ~/data.txt; echo"),
        "vmkeep 600\nlima-user\n"
    );
    let settings =
        sh("stat -c %U ~/.config/app ~/.config/app/settings.json; cat ~/.config/app/settings.json");
    assert!(settings.starts_with("vmkeep\nvmkeep\n"), "{settings}");
    let json: serde_json::Value =
        serde_json::from_str(settings.lines().skip(2).collect::<String>().as_str()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"features": {"snap": false}, "name": "lima"})
    );
    assert_eq!(sh("grep GREETING /etc/environment"), "GREETING=hello\n");
    assert_eq!(
        sh("grep host.docker.internal /etc/hosts"),
        "10.0.2.2 host.docker.internal\n"
    );
    assert_eq!(sh("cat /var/tmp/boots"), "boot\n");
    let row = env
        .ok(&["list", "--format", "json"])
        .stdout()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["name"] == "lima")
        .unwrap();
    assert_eq!(row["sshLocalPort"], port, "ssh.localPort");

    // The next boot: boot scripts and data files again, probes again,
    // provision scripts not.
    sh("echo changed > ~/data.txt");
    ok_in(&env, cache.path(), &["stop", "lima"]);
    ok_in(&env, cache.path(), &["start", "lima"]);
    assert_eq!(sh("cat /var/tmp/boots"), "boot\nboot\n");
    assert_eq!(
        sh("cat ~/data.txt; echo"),
        "lima-user\n",
        "overwrite: true by default"
    );
    assert_eq!(sh("cat ~/probe-runs"), "4\n");
    assert_eq!(
        sh("cat /var/tmp/order"),
        "dependency\nsystem root lima-user hello\n"
    );
    ok_in(&env, cache.path(), &["delete", "--force", "lima"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_cloud_download_failures_leave_no_instance_and_no_cached_image() {
    let image = test_image();
    let env = TestEnv::new();
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let server = FileServer::start(&image.dir, Mode::Normal);
    let good = format!("sha256:{}", image.disk_sha256);

    // Bad digest: both digests named; nothing created, nothing cached.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bad = create(
        &env,
        cache.path(),
        "bad",
        &template(&server.url("vmlinuz"), &wrong, &image),
    );
    assert!(!bad.output.status.success());
    let err = bad.stderr();
    assert!(
        err.contains("digest mismatch") && err.contains(&wrong),
        "{err}"
    );
    let actual = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(image.file("vmlinuz")).unwrap(),
        ))
    };
    assert!(err.contains(&actual), "names the actual digest: {err}");
    assert!(!env.instance_dir("bad").exists());
    assert!(!cached_images(cache.path()).contains(&"data".to_string()));

    // Truncated every time: a clear error after the retries; no instance.
    server.set_mode(Mode::TruncateAlways(8 << 20));
    let cut = create(
        &env,
        cache.path(),
        "cut",
        &template(&server.url("disk.qcow2"), &good, &image),
    );
    assert!(!cut.output.status.success());
    assert!(cut.stderr().contains("truncated"), "{}", cut.describe());
    assert!(!env.instance_dir("cut").exists());
    let cached = cached_images(cache.path());
    assert!(!cached.contains(&"data".to_string()), "{cached:?}");
    assert!(
        cached.iter().any(|n| n.starts_with("data.partial-")),
        "kept for resuming: {cached:?}"
    );

    // A server that stalls: an error within the stall timeout (1 s here).
    server.set_mode(Mode::Stall(1 << 20));
    let began = Instant::now();
    let stalled = create(
        &env,
        cache.path(),
        "stall",
        &template(
            &server.url("initrd.img"),
            &format!("sha256:{}", image.initrd_sha256),
            &image,
        ),
    );
    assert!(!stalled.output.status.success());
    assert!(
        stalled.stderr().contains("stalled"),
        "{}",
        stalled.describe()
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    assert!(!env.instance_dir("stall").exists());

    // The server recovers: the next create resumes the partial download.
    server.set_mode(Mode::Normal);
    let before = server.requests().len();
    let fine = create(
        &env,
        cache.path(),
        "fine",
        &template(&server.url("disk.qcow2"), &good, &image),
    );
    assert!(fine.output.status.success(), "{}", fine.describe());
    let resumed: Vec<_> = server.requests()[before..].to_vec();
    assert!(
        matches!(resumed.first(), Some((p, Some(from))) if p == "/disk.qcow2" && *from > 0),
        "resumed from the partial file: {resumed:?}"
    );

    // A local file: cached by digest, overlay on the cached copy.
    let local = create(
        &env,
        cache.path(),
        "local",
        &template(
            &image.file("disk.qcow2").display().to_string(),
            &good,
            &image,
        ),
    );
    assert!(local.output.status.success(), "{}", local.describe());
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.instance_dir("local").join("image.json")).unwrap(),
    )
    .unwrap();
    assert!(
        record["base"]
            .as_str()
            .unwrap()
            .starts_with(cache.path().to_str().unwrap())
    );
    assert_eq!(env.processes(), vec![]);
}

/// Host directories and port forwards in a real cloud image (systemd,
/// cloud-init, Debian's cloud kernel with virtiofs.ko), in one boot: a
/// writable and a read-only share at the guest user's paths, read and
/// written both ways, the read-only one refused for writing; a server the
/// guest user starts is reached on the host's localhost, then gone when it
/// ends.
#[test]
fn vm_cloud_mounts_and_automatic_port_forwards() {
    let image = test_image();
    let env = TestEnv::new();
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Owned by a normal host user, mode 0755: the guest user writes in it
    // because the owner's files are the guest user's in the guest.
    let (_src_guard, src) = common::shared_dir(&env);
    std::fs::write(src.join("from-host"), "hello from the host\n").unwrap();
    std::os::unix::fs::lchown(
        src.join("from-host"),
        Some(common::host_user::owner(&src)),
        Some(std::os::unix::fs::MetadataExt::gid(
            &std::fs::metadata(&src).unwrap(),
        )),
    )
    .unwrap();
    let port = common::free_port();
    let yaml = format!(
        "cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
         images:\n- location: {disk}\n  arch: x86_64\n  digest: sha256:{sum}\n\
         \x20 kernel:\n    location: {kernel}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {initrd}\n\
         containerd:\n  system: false\n  user: false\n\
         mounts:\n- location: {src}\n  mountPoint: \"{{{{.Home}}}}/rw\"\n  writable: true\n\
         - location: {src}\n  mountPoint: /mnt/ro\n",
        disk = image.file("disk.qcow2").display(),
        sum = image.disk_sha256,
        kernel = image.file("vmlinuz").display(),
        initrd = image.file("initrd.img").display(),
        src = src.display(),
    );
    let created = create(&env, cache.path(), "share", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());
    ok_in(&env, cache.path(), &["start", "share"]);
    let guest = GuestShell {
        env: &env,
        cache: cache.path(),
        name: "share",
    };
    let sh = |script: &str| guest.sh(script);
    let out = |script: &str| guest.out(script);
    assert_eq!(
        out("cat ~/rw/from-host /mnt/ro/from-host"),
        "hello from the host\nhello from the host\n"
    );
    out("echo hello from the guest > ~/rw/from-guest && sync");
    assert_eq!(
        std::fs::read_to_string(src.join("from-guest")).unwrap(),
        "hello from the guest\n"
    );
    // The owner's files are the guest user's; what the guest writes is the
    // owner's on the host, and root in the guest plants nothing privileged:
    // no setuid bit, no file capability, no device node.
    assert_eq!(out("stat -c %u ~/rw/from-host"), out("id -u"));
    assert_eq!(
        common::host_user::owner(&src.join("from-guest")),
        common::host_user::owner(&src)
    );
    let said = out(
        "cd ~/rw && cp /bin/true t && sudo chown 0:0 t; sudo chmod 4755 t; echo chmod=$?; \
         sudo python3 -c 'import os; os.setxattr(\"t\", \"security.capability\", bytes([1, 0, 0, 2]) + bytes(16))'; echo xattr=$?; \
         sudo mknod disk b 254 0; echo mknod=$?; true",
    );
    for refused in ["chmod=0", "xattr=0", "mknod=0"] {
        assert!(!said.contains(refused), "{said}");
    }
    let planted = std::fs::metadata(src.join("t")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&planted.permissions()) & 0o6000,
        0
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&planted),
        common::host_user::owner(&src)
    );
    assert!(!src.join("disk").exists());
    assert_eq!(out("findmnt -n -o FSTYPE /mnt/ro"), "virtiofs\n");
    let refused = sh("sudo sh -c 'mount -o remount,rw /mnt/ro; echo no > /mnt/ro/refused'");
    assert!(!refused.output.status.success(), "{}", refused.describe());
    assert!(!src.join("refused").exists());

    // A server the guest user starts: on the host's localhost, same port.
    out(&format!(
        "cd ~/rw && nohup python3 -m http.server {port} --bind 0.0.0.0 \
         </dev/null >/dev/null 2>&1 & echo $! > ~/server.pid"
    ));
    let get = || -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /from-host HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    };
    let started = Instant::now();
    common::wait_until(Duration::from_secs(60), || {
        get().filter(|r| r.ends_with("hello from the host\n"))
    })
    .expect("the guest's server answers on the host's localhost");
    eprintln!(
        "guest server -> answering on the host: {:?}",
        started.elapsed()
    );
    out("kill $(cat ~/server.pid)");
    common::wait_until(Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            .then_some(())
    })
    .expect("the host port closes with the guest's server");

    ok_in(&env, cache.path(), &["stop", "share"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

#[test]
fn vm_cloud_as_a_user_limas_home_mount_inotify_sudo_and_containerd() {
    skip_unless_root!();
    let image = test_image();
    let user = common::host_user::test_user();
    // HOME is the user's home; the instance lives in it, as ~/.lima does.
    let env = TestEnv::as_user(&user);
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    common::host_user::give(cache.path(), &user);
    let home = env.home().to_path_buf();
    let as_owner = |path: &Path, text: &str| {
        std::fs::write(path, text).unwrap();
        common::host_user::give(path, &user);
    };
    as_owner(&home.join("from-host"), "hello from the home\n");
    as_owner(&home.join("edited"), "one\n");
    as_owner(&home.join("removed"), "gone soon\n");
    // Lima's home mount (writable here, to go both ways) with mountInotify;
    // Lima 2.2's passwordlessSudo: false; containerd from Debian's packages.
    let yaml = format!(
        "cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 900s\nstopTimeout: 90s\n\
         images:\n- location: {disk}\n  arch: x86_64\n  digest: sha256:{sum}\n\
         \x20 kernel:\n    location: {kernel}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {initrd}\n\
         user:\n  passwordlessSudo: false\n\
         containerd:\n  system: true\n  user: false\n\
         mountInotify: true\n\
         mounts:\n- location: \"~\"\n  writable: true\n\
         - location: {tools}\n  mountPoint: /mnt/tools\n",
        disk = image.file("disk.qcow2").display(),
        sum = image.disk_sha256,
        kernel = image.file("vmlinuz").display(),
        initrd = image.file("initrd.img").display(),
        tools = common::guest_tools::dir().display(),
    );
    let created = create(&env, cache.path(), "home", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());
    assert!(
        created
            .stderr()
            .contains("containerd.system: installed at the first boot"),
        "{}",
        created.describe()
    );
    let began = Instant::now();
    ok_in(&env, cache.path(), &["start", "home"]);
    eprintln!(
        "start -> ready (containerd installed): {:?}",
        began.elapsed()
    );
    let guest = GuestShell {
        env: &env,
        cache: cache.path(),
        name: "home",
    };
    let sh = |script: &str| guest.sh(script);
    let out = |script: &str| guest.out(script);
    let h = home.display().to_string();

    // The home, both ways, with the user's ownership on the host.
    assert_eq!(out(&format!("cat {h}/from-host")), "hello from the home\n");
    assert_eq!(out(&format!("stat -c %u {h}/from-host")), out("id -u"));
    out(&format!(
        "echo hello from the guest > {h}/from-guest && sync"
    ));
    let written = home.join("from-guest");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "hello from the guest\n"
    );
    assert_eq!(common::host_user::owner(&written), user.uid);

    // mountInotify: a watcher on the home in the guest sees a host edit, a
    // file made and one removed (docs/mounts.md says which events).
    out(&format!(
        "nohup /mnt/tools/inotify-watch {h} > /tmp/events 2> /tmp/watching </dev/null &"
    ));
    common::wait_until(Duration::from_secs(60), || {
        (out("cat /tmp/watching") == "watching\n").then_some(())
    })
    .expect("the guest's watcher runs");
    // When the guest read the event (its clock is kept on the host's),
    // after `since`.
    let sees = |event: String, since: std::time::SystemTime| {
        let seen = common::wait_until(Duration::from_secs(60), || {
            out("cat /tmp/events").lines().find_map(|line| {
                common::guest_tools::watched_event(line)
                    .filter(|(_, what)| *what == event)
                    .map(|(when, _)| when)
            })
        })
        .unwrap_or_else(|| panic!("the guest saw no {event:?}: {}", out("cat /tmp/events")));
        seen.duration_since(since).unwrap_or_default()
    };
    let now = std::time::SystemTime::now();
    as_owner(&home.join("edited"), "two\n");
    let edit = sees(format!("c\t{h}\tedited"), now);
    let now = std::time::SystemTime::now();
    as_owner(&home.join("created"), "new\n");
    let create = sees(format!("c\t{h}\tcreated"), now);
    let now = std::time::SystemTime::now();
    std::fs::remove_file(home.join("removed")).unwrap();
    let delete = sees(format!("c\t{h}"), now);
    eprintln!(
        "host change -> guest inotify event: edit {edit:?}, create {create:?}, delete {delete:?}"
    );
    assert_eq!(out(&format!("cat {h}/edited")), "two\n");

    // passwordlessSudo: false: sudo asks for the password Lima keeps in
    // ~/password (the guest's home).
    let no_password = sh("sudo -n true");
    assert!(
        !no_password.output.status.success(),
        "{}",
        no_password.describe()
    );
    assert_eq!(
        out("stat -c %a:%U ~/password"),
        format!("600:{}\n", user.name)
    );
    assert_eq!(out("sudo -S -p '' id -u < ~/password"), "0\n");

    // containerd.system from Debian's containerd, running; Debian 12 has
    // no nerdctl, which is said on the console.
    assert_eq!(out("systemctl is-active containerd"), "active\n");
    assert!(
        out("sudo -S -p '' ctr version < ~/password").contains("Server:"),
        "containerd answers"
    );
    let serial =
        std::fs::read_to_string(env.instance_dir("home").join("serial.log")).unwrap_or_default();
    assert!(
        serial.contains("vmkeep: containerd: the distribution has no nerdctl package"),
        "the console says what Debian 12 lacks"
    );

    ok_in(&env, cache.path(), &["stop", "home"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

/// `shell`, `copy`, a socket forward and copyToHost in a real cloud image,
/// in one boot, all through the guest agent (no ssh): the user's login
/// shell on a pty in the user's home, commands as the user, copies both
/// ways owned by the user in the guest; podman's API service (a real
/// daemon, socket-activated by systemd) reached from the host through
/// `{{.Dir}}/sock/podman.sock` (0600 in a 0700 directory), again after the
/// host agent was killed and the VM adopted; a guest file (a symlink)
/// copied to the host before `start` returns and removed at stop; a
/// nohup'd process that outlives a restart of the guest agent's unit
/// (`KillMode=process`).
#[test]
fn vm_cloud_shell_copy_socket_forward_and_copy_to_host() {
    let image = test_image();
    let env = TestEnv::new();
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let yaml = format!(
        "cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
         images:\n- location: {disk}\n  arch: x86_64\n  digest: sha256:{sum}\n\
         \x20 kernel:\n    location: {kernel}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {initrd}\n\
         provision:\n- mode: system\n  script: |\n\
         \x20   systemctl start podman.socket\n\
         \x20   chmod 0711 /run/podman && chgrp \"$(id -gn {{{{.User}}}})\" /run/podman/podman.sock\n\
         \x20   echo kubeconfig-of-{{{{.Name}}}} > /etc/real-config && ln -sf /etc/real-config /etc/linked-config\n\
         portForwards:\n- guestSocket: /run/podman/podman.sock\n  hostSocket: \"{{{{.Dir}}}}/sock/podman.sock\"\n\
         copyToHost:\n- guest: /etc/linked-config\n  host: \"{{{{.Dir}}}}/copied-from-guest/kubeconfig.yaml\"\n  deleteOnStop: true\n",
        disk = image.file("disk.qcow2").display(),
        sum = image.disk_sha256,
        kernel = image.file("vmlinuz").display(),
        initrd = image.file("initrd.img").display(),
    );
    let created = create(&env, cache.path(), "cloud", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());
    ok_in(&env, cache.path(), &["start", "cloud"]);
    let dir = env.instance_dir("cloud");

    // copyToHost: there before `start` returned, the link's target.
    let copied = dir.join("copied-from-guest/kubeconfig.yaml");
    assert!(std::fs::symlink_metadata(&copied).unwrap().is_file());
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "kubeconfig-of-cloud\n"
    );

    // Commands run as the user, in the home, without ssh.
    let out = |args: &[&str]| {
        let run = command_in(&env, cache.path(), args);
        assert!(run.output.status.success(), "{args:?}: {}", run.describe());
        run.stdout()
    };
    assert_eq!(out(&["shell", "cloud", "id", "-un"]), "vmkeep\n");
    assert_eq!(out(&["shell", "cloud", "pwd"]), "/home/vmkeep\n");

    // The user's login shell on a pty.
    let (mut terminal, mut child) =
        common::terminal::Terminal::spawn(&env, &["shell", "cloud"], 24, 80);
    terminal.until("$ ");
    terminal.type_in(b"echo $0 $(pwd) $(tty)\r");
    let said = terminal.until("$ ");
    assert!(said.contains("-bash /home/vmkeep /dev/pts/"), "{said:?}");
    terminal.type_in(b"exit 3\r");
    assert_eq!(child.wait().unwrap().code(), Some(3));

    // Copies both ways: the guest's files are the user's.
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f.txt"), "from the host\n").unwrap();
    out(&["copy", "-r", tree.to_str().unwrap(), "cloud:"]);
    assert_eq!(
        out(&[
            "shell",
            "cloud",
            "sh",
            "-c",
            "cat tree/sub/f.txt; stat -c %U tree/sub/f.txt"
        ]),
        "from the host\nvmkeep\n"
    );
    let back = work.path().join("back");
    out(&["copy", "-r", "cloud:tree", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/f.txt")).unwrap(),
        "from the host\n"
    );

    // The socket forward: the user's only, answered by podman.
    let socket = dir.join("sock/podman.sock");
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    let version = || {
        let curl = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "60", "--unix-socket"])
            .arg(&socket)
            .arg("http://podman/version")
            .output()
            .expect("curl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&curl.stdout),
            String::from_utf8_lossy(&curl.stderr)
        )
    };
    let answer = version();
    if !answer.contains("\"Version\"") {
        let guest = command_in(
            &env,
            cache.path(),
            &[
                "shell",
                "cloud",
                "sh",
                "-c",
                "ls -l /run/podman; id; systemctl status podman.socket podman.service | cat",
            ],
        );
        let log = std::fs::read_to_string(dir.join("ha.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "podman's /version: {answer:?}\nin the guest: {}\nha.log: {tail:#?}",
            guest.describe()
        );
    }
    eprintln!("podman through the forwarded socket: {}", answer.trim());

    // The agent's unit restarted: a nohup'd process of a session lives on.
    let pid = out(&[
        "shell",
        "cloud",
        "sh",
        "-c",
        "nohup sleep 1000 >/dev/null 2>&1 & echo $!",
    ]);
    let pid = pid.trim();
    let _ = command_in(
        &env,
        cache.path(),
        &[
            "shell",
            "cloud",
            "sudo",
            "systemctl",
            "restart",
            "vmkeep-guest",
        ],
    );
    let alive = common::wait_until(Duration::from_secs(120), || {
        let run = command_in(&env, cache.path(), &["shell", "cloud", "kill", "-0", pid]);
        run.output.status.success().then_some(())
    });
    assert!(
        alive.is_some(),
        "the nohup'd process died with the agent's restart"
    );

    // The host agent killed and the VM adopted: the forward is made again.
    env.agent("cloud").unwrap().kill().unwrap();
    ok_in(&env, cache.path(), &["start", "cloud"]);
    let answer = version();
    assert!(answer.contains("\"Version\""), "after adoption: {answer:?}");

    ok_in(&env, cache.path(), &["stop", "cloud"]);
    assert!(!copied.exists(), "deleteOnStop");
    assert!(!socket.exists(), "the forwarded socket goes with the VM");
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}

/// `qemu-img` in a test (the image tools are the host's).
fn qemu_img(args: &[&str]) -> String {
    let output = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(output.status.success(), "qemu-img {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Every file of a directory with its sha256 (the Lima instance's).
fn checksums(dir: &Path) -> Vec<(String, String)> {
    common::names(dir)
        .into_iter()
        .map(|name| {
            let sum = sha256_of(&dir.join(&name));
            (name, sum)
        })
        .collect()
}

/// A Lima instance brought over, as a normal user: a guest booted once
/// (its user as Lima makes it: the host user's name, home
/// /home/NAME.linux; a file in that home; Lima's per-boot hook), its disk
/// laid out as Lima 2.x does (`diffdisk`, a qcow2 overlay of `basedisk`,
/// with lima.yaml, kernel, initrd, kernel.cmdline, cloud-config.yaml),
/// refused while Lima's QEMU holds qemu.pid, named by `list`, imported with
/// a larger disk and booted: the file, the user and the home are there,
/// the root file system grew, the identity is fresh (machine id, ssh host
/// keys, hostname), Lima's hook set aside, and the Lima directory is byte
/// for byte as it was. A clone of the import owns a copy of its base.
#[test]
fn vm_cloud_lima_instance_imported_with_its_data_user_and_home() {
    skip_unless_root!();
    let image = test_image();
    let user = common::host_user::test_user();
    let env = TestEnv::as_user(&user);
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    common::host_user::give(cache.path(), &user);
    let name = &user.name;
    let home = format!("/home/{name}.linux");
    let uid = 1500;

    // The guest as Lima would have made it, booted once.
    let yaml = format!(
        "cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
         images:\n- location: {disk}\n  arch: x86_64\n  digest: sha256:{sum}\n\
         \x20 kernel:\n    location: {kernel}\n    cmdline: root=/dev/vda console=ttyS0\n\
         \x20 initrd:\n    location: {initrd}\n\
         user:\n  name: {name}\n  uid: {uid}\n  home: {home}\n",
        disk = image.file("disk.qcow2").display(),
        sum = image.disk_sha256,
        kernel = image.file("vmlinuz").display(),
        initrd = image.file("initrd.img").display(),
    );
    let created = create(&env, cache.path(), "src", &yaml);
    assert!(created.output.status.success(), "{}", created.describe());
    ok_in(&env, cache.path(), &["start", "src"]);
    let sh = |instance: &str, script: &str| {
        let run = command_in(
            &env,
            cache.path(),
            &["shell", instance, "--", "sh", "-c", script],
        );
        assert!(run.output.status.success(), "{script}: {}", run.describe());
        run.stdout().trim().to_string()
    };
    sh("src", "echo made under Lima > ~/lima-work && sync");
    // Lima's per-boot hook: it mounts Lima's seed, which vmkeep's is not.
    sh(
        "src",
        "printf '#!/bin/sh\\nset -eu\\nmount -o ro /dev/disk/by-label/cidata /mnt/lima-cidata\\n' \
         | sudo tee /var/lib/cloud/scripts/per-boot/00-lima.boot.sh >/dev/null \
         && sudo chmod 0755 /var/lib/cloud/scripts/per-boot/00-lima.boot.sh && sync",
    );
    let identity =
        "cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; hostname";
    let src_identity = sh("src", identity);
    let src_root = sh("src", "df -k / | tail -1 | awk '{print $2}'")
        .parse::<u64>()
        .unwrap();
    ok_in(&env, cache.path(), &["stop", "src"]);

    // Its disk laid out as Lima 2.x writes an instance directory.
    // Beside the vmkeep home, not in it (a directory there is foreign).
    let lima_guard = tempfile::Builder::new()
        .prefix("vklima")
        .tempdir_in("/tmp")
        .unwrap();
    let lima_home = lima_guard.path().join("lima-home");
    let lima = lima_home.join("work");
    std::fs::create_dir_all(&lima).unwrap();
    std::fs::copy(image.file("disk.qcow2"), lima.join("basedisk")).unwrap();
    std::fs::copy(
        env.instance_dir("src").join("disk.qcow2"),
        lima.join("diffdisk"),
    )
    .unwrap();
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        lima.join("basedisk").to_str().unwrap(),
        lima.join("diffdisk").to_str().unwrap(),
    ]);
    std::fs::copy(image.file("vmlinuz"), lima.join("kernel")).unwrap();
    std::fs::copy(image.file("initrd.img"), lima.join("initrd")).unwrap();
    std::fs::write(lima.join("kernel.cmdline"), "root=/dev/vda console=ttyS0").unwrap();
    std::fs::write(lima.join("lima-version"), "2.0.3").unwrap();
    std::fs::write(
        lima.join("lima.yaml"),
        "minimumLimaVersion: 2.0.0\nvmType: qemu\n\
             images:\n- location: \"https://example.org/debian-12-genericcloud-amd64.qcow2\"\n  arch: \"x86_64\"\n\
             \x20 kernel:\n    location: \"https://example.org/vmlinuz\"\n    cmdline: \"root=/dev/vda console=ttyS0\"\n\
             \x20 initrd:\n    location: \"https://example.org/initrd.img\"\n\
             cpus: 2\nmemory: 1GiB\ndisk: 3GiB\nbootTimeout: 600s\nstopTimeout: 90s\n\
             mounts: []\ncontainerd:\n  system: false\n  user: false\n",
    )
    .unwrap();
    std::fs::write(
        lima.join("cloud-config.yaml"),
        format!(
            "#cloud-config\n# vim:syntax=yaml\n\ngrowpart:\n  mode: auto\n  devices: ['/']\n\nusers:\n  - name: \"{name}\"\n    uid: \"{uid}\"\n    homedir: \"{home}\"\n    shell: /bin/bash\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    lock_passwd: true\n"
        ),
    )
    .unwrap();
    std::fs::write(
        lima.join("ha.stderr.log"),
        "{\"level\":\"info\",\"msg\":\"Exiting\"}\n",
    )
    .unwrap();
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(&lima_home)
        .status()
        .unwrap();
    assert!(status.success());
    let before = checksums(&lima);
    let with_lima = |args: &[&str]| {
        env.run_env(
            args,
            &[
                ("VMKEEP_CACHE_DIR", cache.path().as_os_str()),
                ("LIMA_HOME", lima_home.as_os_str()),
            ],
        )
    };

    // `list` names it; while Lima's QEMU holds qemu.pid it is refused.
    let listed = with_lima(&["list"]);
    assert!(
        listed.stderr().contains("Lima instances in") && listed.stderr().contains("work"),
        "{}",
        listed.describe()
    );
    assert!(
        !with_lima(&["list", "--format", "json"])
            .stdout()
            .contains("work")
    );
    std::fs::write(lima.join("qemu.pid"), "1\n").unwrap();
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(120)",
            lima.join("qemu.pid").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let refused = with_lima(&["import", "work"]);
    let _ = holder.kill();
    let _ = holder.wait();
    std::fs::remove_file(lima.join("qemu.pid")).unwrap();
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused.stderr().contains("limactl stop work"),
        "{}",
        refused.describe()
    );
    assert!(!env.instance_dir("work").exists());

    // Imported, then grown, then booted.
    let imported = with_lima(&["import", "work", "--as", "lm"]);
    assert!(imported.output.status.success(), "{}", imported.describe());
    assert_eq!(
        checksums(&lima),
        before,
        "the Lima instance is left as it was"
    );
    let listed = with_lima(&["list"]);
    assert!(
        !listed.stderr().contains("can import"),
        "{}",
        listed.describe()
    );
    let config = std::fs::read_to_string(env.instance_dir("lm").join("vmkeep.yaml")).unwrap();
    assert!(
        config.contains(&format!("home: {home}")) && config.contains(&format!("uid: {uid}")),
        "{config}"
    );
    ok_in(&env, cache.path(), &["edit", "lm", "--disk", "5"]);
    let started = ok_in(&env, cache.path(), &["start", "lm"]);
    assert!(
        started.stderr().contains("grew the disk from 3GiB to 5GiB"),
        "{}",
        started.describe()
    );
    assert_eq!(sh("lm", "cat ~/lima-work"), "made under Lima");
    assert_eq!(
        sh("lm", "id -un; id -u; echo $HOME"),
        format!("{name}\n{uid}\n{home}")
    );
    assert_eq!(sh("lm", "stat -c %u ~/lima-work"), uid.to_string());
    let lm_identity = sh("lm", identity);
    let (src_lines, lm_lines): (Vec<&str>, Vec<&str>) = (
        src_identity.lines().collect(),
        lm_identity.lines().collect(),
    );
    assert_ne!(src_lines[0], lm_lines[0], "a new machine id");
    assert_ne!(src_lines[1], lm_lines[1], "new ssh host keys");
    assert_eq!(lm_lines[2], "lm");
    let lm_root = sh("lm", "df -k / | tail -1 | awk '{print $2}'")
        .parse::<u64>()
        .unwrap();
    assert!(
        lm_root > src_root + (1800 << 10),
        "cloud-init grew the root file system from {src_root} to {lm_root} KiB"
    );
    assert_eq!(
        sh(
            "lm",
            "ls /var/lib/cloud/scripts/per-boot/00-lima.boot.sh 2>/dev/null; ls /var/lib/vmkeep/lima; cloud-init status"
        ),
        "00-lima.boot.sh\nstatus: done"
    );
    ok_in(&env, cache.path(), &["stop", "lm"]);
    assert_eq!(checksums(&lima), before, "still as it was after the boot");

    // A clone of the import owns a copy of its base; it outlives lm.
    ok_in(&env, cache.path(), &["clone", "lm", "lm2"]);
    let info = qemu_img(&[
        "info",
        "-U",
        "--output=json",
        env.instance_dir("lm2").join("disk.qcow2").to_str().unwrap(),
    ]);
    assert!(
        info.contains("\"backing-filename\": \"base.img\""),
        "{info}"
    );
    ok_in(&env, cache.path(), &["delete", "lm", "src"]);
    qemu_img(&[
        "info",
        "-U",
        "--backing-chain",
        env.instance_dir("lm2").join("disk.qcow2").to_str().unwrap(),
    ]);
    ok_in(&env, cache.path(), &["delete", "lm2"]);
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
}
