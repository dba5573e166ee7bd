//! Autostart: the rendered service definitions (checked by
//! `systemd-analyze verify`), the `autostart` verbs, and the service
//! manager simulated with the real binary: the unit's exact ExecStart, with
//! only the unit's environment, signalled as systemd would signal it.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, VMKEEP, wait_until};

const BOOT: Duration = Duration::from_secs(150);

fn systemd_runs_here() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// An environment whose systemd user-unit directory is inside the test's home.
fn config_home(env: &TestEnv) -> PathBuf {
    env.home().join(".config")
}

fn autostart(env: &TestEnv, args: &[&str]) -> common::Run {
    let mut full = vec!["autostart"];
    full.extend_from_slice(args);
    let output = env
        .command(&full)
        .env("XDG_CONFIG_HOME", config_home(env))
        .output()
        .unwrap();
    common::Run {
        args: full.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

fn user_unit_path(env: &TestEnv, name: &str) -> PathBuf {
    config_home(env).join(format!("systemd/user/vmkeep-{name}.service"))
}

// ---------------------------------------------------------------- rendering

/// `systemd-analyze verify` on a unit: (exit status, what it printed). It
/// exits 0 for settings it ignores, so callers require empty output too.
fn verify(unit: &Path, user: bool) -> (bool, String) {
    let runtime = tempfile::tempdir().unwrap();
    let mut command = Command::new("systemd-analyze");
    if user {
        // The user manager needs a runtime directory, not a running manager.
        command.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    let output = command
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup-host installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text.trim().to_string())
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() {
    let env = TestEnv::new();
    env.create("dev", "stopTimeout: 45s\n");
    let exe = Path::new(VMKEEP).canonicalize().unwrap();
    let units = tempfile::tempdir().unwrap();
    for condition in ["login", "boot"] {
        for keep_alive in ["true", "false"] {
            let show = autostart(
                &env,
                &[
                    "show",
                    "dev",
                    "--condition",
                    condition,
                    &format!("--keep-alive={keep_alive}"),
                ],
            );
            assert_eq!(show.code(), Some(0), "{}", show.describe());
            let unit = show.stdout();
            assert!(
                unit.contains(&format!(
                    "\nExecStart={} start dev --foreground\n",
                    exe.display()
                )),
                "ExecStart names the real binary by absolute path:\n{unit}"
            );
            assert!(
                unit.contains("\nTimeoutStopSec=62s\n"),
                "45s + 2s + 15s:\n{unit}"
            );
            assert!(unit.contains("\nKillMode=mixed\n"), "{unit}");
            assert_eq!(
                unit.contains("\nRestart=on-failure\n"),
                keep_alive == "true",
                "{unit}"
            );
            let dir = units.path().join(format!("{condition}-{keep_alive}"));
            std::fs::create_dir(&dir).unwrap();
            let file = dir.join("vmkeep-dev.service");
            std::fs::write(&file, &unit).unwrap();
            let (ok, said) = verify(&file, condition == "login");
            assert!(
                ok && said.is_empty(),
                "{condition}/{keep_alive}: systemd-analyze said:\n{said}\n{unit}"
            );
        }
    }
    // The check can fail: a setting systemd ignores is reported.
    let bad = units.path().join("bad.service");
    let unit = std::fs::read_to_string(units.path().join("boot-true/vmkeep-dev.service")).unwrap();
    std::fs::write(&bad, unit.replace("KillMode=mixed", "KillMode=gentle")).unwrap();
    let (_, said) = verify(&bad, false);
    assert!(said.contains("kill mode"), "{said}");
}

#[test]
fn show_renders_a_plist_that_parses_back() {
    let env = TestEnv::new();
    env.create("mac", "stopTimeout: 20s\n");
    let show = autostart(&env, &["show", "mac", "--manager", "launchd"]);
    assert_eq!(show.code(), Some(0), "{}", show.describe());
    let plist = plist::Value::from_reader_xml(show.stdout().as_bytes()).unwrap();
    let d = plist.as_dictionary().unwrap();
    assert_eq!(d["Label"].as_string(), Some("io.vmkeep.mac"));
    assert_eq!(d["ExitTimeOut"].as_unsigned_integer(), Some(37));
    assert_eq!(
        d["KeepAlive"].as_dictionary().unwrap()["SuccessfulExit"].as_boolean(),
        Some(false)
    );
}

#[test]
fn suspend_at_host_shutdown_under_launchd_is_refused_naming_the_fix() {
    let env = TestEnv::new();
    env.create("mac", "onHostShutdown: suspend\n");
    let show = autostart(&env, &["show", "mac", "--manager", "launchd"]);
    assert_eq!(show.code(), Some(4), "{}", show.describe());
    assert!(
        show.stderr().contains("onHostShutdown: poweroff") && show.stderr().contains("launchd"),
        "{}",
        show.describe()
    );
    // systemd tells a host shutdown from a stop: the same config renders.
    let unit = autostart(&env, &["show", "mac", "--manager", "systemd"]);
    assert_eq!(unit.code(), Some(0), "{}", unit.describe());
}

// ------------------------------------------------------------ the verbs

#[test]
fn enable_without_a_service_manager_says_so_and_writes_nothing() {
    if systemd_runs_here() {
        eprintln!("skipped: systemd runs here");
        return;
    }
    let env = TestEnv::new();
    env.create("dev", "");
    let run = autostart(&env, &["enable", "dev"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let err = run.stderr();
    assert!(
        err.contains("systemd is not running") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(
        err.contains("autostart show dev") && err.contains("--write-only"),
        "{err}"
    );
    assert!(!config_home(&env).exists(), "nothing written");
    assert!(!env.instance_dir("dev").join("autostart.json").exists());
}

#[test]
fn dry_run_prints_the_unit_and_the_commands_and_changes_nothing() {
    let env = TestEnv::new();
    env.create("dev", "");
    let run = autostart(&env, &["enable", "dev", "--dry-run", "--keep-alive=false"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let out = run.stdout();
    let path = user_unit_path(&env, "dev");
    assert!(
        out.contains(&format!("# would write {}:", path.display())),
        "{out}"
    );
    assert!(out.contains("\nRestart=no\n"), "{out}");
    assert!(
        out.contains("# would run: systemctl --user enable vmkeep-dev.service"),
        "{out}"
    );
    assert!(run.stderr().contains("nothing was changed"));
    assert!(!config_home(&env).exists());
    assert!(!env.instance_dir("dev").join("autostart.json").exists());
}

#[test]
fn bad_input_is_refused_with_the_fix_and_nothing_is_written() {
    let env = TestEnv::new();
    env.create("dev", "");
    let cases: [(&[&str], &str); 4] = [
        (
            &["enable", "nosuch", "--write-only"],
            "vmkeep create nosuch",
        ),
        (&["enable", "dev", "--condition", "foo"], "login"),
        (&["enable", "dev", "--keep-alive=maybe"], "true"),
        (
            &["enable", "dev", "--user", "vmkeep-nobody", "--write-only"],
            "--condition boot",
        ),
    ];
    for (args, fix) in cases {
        let run = autostart(&env, args);
        assert!(!run.output.status.success(), "{args:?}: {}", run.describe());
        assert!(run.stderr().contains(fix), "{args:?}: {}", run.describe());
    }
    assert!(!config_home(&env).exists());
    assert!(!env.instance_dir("dev").join("autostart.json").exists());
}

#[test]
fn write_only_enable_status_and_disable() {
    let env = TestEnv::new();
    env.create("dev", "stopTimeout: 10s\n");
    let run = autostart(&env, &["enable", "dev", "--write-only"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let path = user_unit_path(&env, "dev");
    let written = std::fs::read_to_string(&path).unwrap();
    let shown = autostart(&env, &["show", "dev"]).stdout();
    assert_eq!(written, shown, "enable writes what show prints");
    assert!(run.stdout().contains("not loaded"), "{}", run.describe());

    let status = autostart(&env, &["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&status.output.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["name"], "dev");
    assert_eq!(row["enabled"], true, "{row}");
    assert_eq!(row["condition"], "login");
    assert_eq!(row["keep_alive"], true);
    assert_eq!(row["service"], "vmkeep-dev.service");
    assert_eq!(row["path"], path.to_str().unwrap());
    assert_eq!(row["definition_present"], true);
    if !systemd_runs_here() {
        assert!(
            row["manager_state"]
                .as_str()
                .unwrap()
                .contains("not running"),
            "{row}"
        );
    }

    // Enabling again with other options updates the same file.
    let again = autostart(
        &env,
        &["enable", "dev", "--write-only", "--keep-alive=false"],
    );
    assert!(
        again.stdout().starts_with("updated "),
        "{}",
        again.describe()
    );
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\nRestart=no\n")
    );
    // A second registration for another condition must replace the first explicitly.
    let boot = autostart(&env, &["enable", "dev", "--condition", "boot", "--dry-run"]);
    assert_eq!(boot.code(), Some(1), "{}", boot.describe());
    assert!(
        boot.stderr().contains("autostart disable dev"),
        "{}",
        boot.describe()
    );

    let disable = autostart(&env, &["disable", "dev"]);
    assert_eq!(disable.code(), Some(0), "{}", disable.describe());
    assert!(!path.exists());
    assert!(!env.instance_dir("dev").join("autostart.json").exists());
    let text = autostart(&env, &["status", "dev"]).stdout();
    assert_eq!(text.trim(), "dev: not enabled");
    let twice = autostart(&env, &["disable", "dev"]);
    assert!(
        twice.stdout().contains("nothing to do"),
        "{}",
        twice.describe()
    );
}

#[test]
fn disable_and_enable_leave_a_unit_without_the_marker_alone() {
    let env = TestEnv::new();
    env.create("dev", "");
    autostart(&env, &["enable", "dev", "--write-only"]);
    let path = user_unit_path(&env, "dev");
    let mine = "[Service]\nExecStart=/bin/true\n";
    std::fs::write(&path, mine).unwrap();

    let disable = autostart(&env, &["disable", "dev"]);
    assert_eq!(disable.code(), Some(1), "{}", disable.describe());
    assert!(
        disable.stderr().contains("managed by vmkeep"),
        "{}",
        disable.describe()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), mine);

    let enable = autostart(&env, &["enable", "dev", "--write-only"]);
    assert_eq!(enable.code(), Some(1), "{}", enable.describe());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), mine);
    // delete refuses too, rather than leave someone's unit or lose the instance halfway.
    let delete = env.run(&["delete", "dev"]);
    assert_eq!(delete.code(), Some(1), "{}", delete.describe());
    assert!(env.instance_dir("dev").exists());
}

#[test]
fn delete_disables_autostart_first() {
    let env = TestEnv::new();
    env.create("gone", "");
    autostart(&env, &["enable", "gone", "--write-only"]);
    let path = user_unit_path(&env, "gone");
    assert!(path.exists());
    let delete = env
        .command(&["delete", "gone"])
        .env("XDG_CONFIG_HOME", config_home(&env))
        .output()
        .unwrap();
    assert!(delete.status.success(), "{delete:?}");
    assert!(!path.exists(), "the unit went with the instance");
    assert!(!env.instance_dir("gone").exists());

    // An unreadable record does not block the delete; it is named.
    env.create("garbled", "");
    std::fs::write(env.instance_dir("garbled").join("autostart.json"), "{oops").unwrap();
    let delete = env.run(&["delete", "garbled"]);
    assert_eq!(delete.code(), Some(0), "{}", delete.describe());
    assert!(
        delete.stderr().contains("autostart.json"),
        "{}",
        delete.describe()
    );
    assert!(!env.instance_dir("garbled").exists());
}

// ------------------------------------------- the service manager, simulated

/// The service as systemd would run it: ExecStart's words, only the unit's
/// Environment=, output appended to StandardOutput=.
struct Service {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    cwd: PathBuf,
}

/// Split a unit value into words: double quotes group, backslash escapes;
/// `%%` and `$$` are systemd's escapes for `%` and `$`.
fn words(value: &str) -> Vec<String> {
    let value = value.replace("%%", "%").replace("$$", "$");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

impl Service {
    fn from_unit(unit: &str) -> Service {
        let setting = |key: &str| -> Vec<String> {
            unit.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .collect()
        };
        let argv = words(&setting("ExecStart")[0]);
        let env = setting("Environment")
            .iter()
            .flat_map(|v| words(v))
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let log = setting("StandardOutput")[0]
            .strip_prefix("append:")
            .unwrap()
            .into();
        assert_eq!(setting("StandardError"), setting("StandardOutput"));
        let cwd = setting("WorkingDirectory")[0].clone().into();
        Service {
            argv,
            env,
            log,
            cwd,
        }
    }

    fn of(env: &TestEnv, name: &str) -> Service {
        let show = autostart(env, &["show", name]);
        assert_eq!(show.code(), Some(0), "{}", show.describe());
        Service::from_unit(&show.stdout())
    }

    /// Start the ExecStart command as systemd would: nothing inherited.
    fn spawn(&self) -> Running {
        self.spawn_with(&[])
    }

    /// [`Service::spawn`] with settings systemd adds (`NOTIFY_SOCKET`).
    fn spawn_with(&self, extra: &[(&str, &Path)]) -> Running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Running { child }
    }
}

/// A service process; killed by pid if the test ends while it runs.
struct Running {
    child: Child,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) of our own child, not yet reaped (try_wait below reaps it).
        unsafe { libc::kill(self.pid(), signal) };
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "service pid {} did not exit",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_running(env: &TestEnv, name: &str, service: &mut Running) {
    let ran = wait_until(BOOT, || {
        if !service.is_running() {
            panic!(
                "the service exited while starting {name}: {:?}\nautostart.log:\n{}\nha.log:\n{}\nevents: {:?}",
                service.child.try_wait(),
                log_of(env, name),
                std::fs::read_to_string(env.instance_dir(name).join("ha.log")).unwrap_or_default(),
                env.events(name)
            );
        }
        (env.status(name) == "Running").then_some(())
    });
    assert!(ran.is_some(), "{name} never ran: {}", env.status(name));
}

fn log_of(env: &TestEnv, name: &str) -> String {
    std::fs::read_to_string(env.instance_dir(name).join("autostart.log")).unwrap_or_default()
}

#[test]
fn vm_service_sigterm_with_kill_mode_mixed_powers_the_guest_off_and_exits_0() {
    let env = TestEnv::new();
    env.create("svc", "");
    let service = Service::of(&env, "svc");
    assert!(
        service.env.iter().all(|(k, _)| k != "HOME"),
        "the simulation gives the service nothing but the unit's environment"
    );
    let mut running = service.spawn();
    wait_running(&env, "svc", &mut running);

    // KillMode=mixed: SIGTERM to the main process only.
    running.signal(libc::SIGTERM);
    let status = running.wait(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        log_of(&env, "svc")
    );
    let stopped = env.last_stopped("svc");
    assert_eq!(stopped["reason"], "requested", "{stopped}");
    assert_eq!(
        stopped["by"], "power-button",
        "the guest powered off cleanly: {stopped}"
    );
    assert_eq!(stopped["qemu_exit"], "exit code 0", "{stopped}");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status("svc"), "Stopped");
    let log = log_of(&env, "svc");
    assert!(
        log.contains(&format!("svc is running (host agent pid {}", running.pid())),
        "the service's output goes to autostart.log:\n{log}"
    );
}

/// systemd's end of sd_notify(3): a datagram socket, named to the service by
/// `NOTIFY_SOCKET`, that learns each sender's pid from the kernel
/// (`SO_PASSCRED`), as systemd does to enforce `NotifyAccess=main`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// One notification: its sender and its `KEY=value` lines.
#[derive(Debug)]
struct Notification {
    pid: i32,
    lines: Vec<String>,
}

impl Notification {
    fn says(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

impl NotifySocket {
    fn bind(dir: &Path, name: &str) -> NotifySocket {
        let path = dir.join(format!("{name}.notify"));
        let socket = UnixDatagram::bind(&path).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED");
        NotifySocket { socket, path }
    }

    /// The next notification, or None after `limit`.
    fn next(&self, limit: Duration) -> Option<Notification> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut data = [0u8; 4096];
        let mut control = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len();
        // SAFETY: the header points at buffers that outlive the call.
        let length = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut header, 0) };
        if length < 0 {
            return None;
        }
        let mut pid = 0;
        // SAFETY: walking the control messages the kernel just wrote into
        // `control`, with the libc macros made for it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                {
                    let creds = libc::CMSG_DATA(cmsg).cast::<libc::ucred>().read_unaligned();
                    pid = creds.pid;
                }
                cmsg = libc::CMSG_NXTHDR(&header, cmsg);
            }
        }
        let text = String::from_utf8_lossy(&data[..length as usize]).into_owned();
        Some(Notification {
            pid,
            lines: text.lines().map(str::to_string).collect(),
        })
    }
}

#[test]
fn vm_service_type_notify_hears_ready_once_the_guest_is_ready_and_stopping_at_sigterm() {
    let env = TestEnv::new();
    env.create("ntf", "");
    let unit = autostart(&env, &["show", "ntf"]).stdout();
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    let service = Service::of(&env, "ntf");
    let manager = NotifySocket::bind(env.home(), "ntf");
    let mut running = service.spawn_with(&[("NOTIFY_SOCKET", manager.path.as_path())]);

    // Start steps as status lines until READY=1, which must come from the
    // service's own pid (the agent was exec'd, not spawned) and only once
    // the guest is ready.
    let mut steps = Vec::new();
    let ready = loop {
        let heard = manager.next(BOOT).unwrap_or_else(|| {
            panic!("no READY=1; heard {steps:?}; log:\n{}", log_of(&env, "ntf"))
        });
        assert_eq!(heard.pid, running.pid(), "NotifyAccess=main: {heard:?}");
        if heard.says("READY=1") {
            break heard;
        }
        steps.extend(heard.lines);
    };
    assert_eq!(env.status("ntf"), "Running", "READY=1 means a usable VM");
    assert!(
        steps.iter().any(|l| l.starts_with("STATUS=booting QEMU")),
        "start steps reach `systemctl status`: {steps:?}"
    );
    assert!(
        ready.lines.iter().any(|l| l.starts_with("STATUS=running")),
        "{ready:?}"
    );
    let qemu = env.qemu("ntf").unwrap().pid();
    let environ = std::fs::read(format!("/proc/{qemu}/environ")).unwrap();
    assert!(
        !environ
            .split(|b| *b == 0)
            .any(|e| e.starts_with(b"NOTIFY_SOCKET=")),
        "QEMU cannot speak for the service"
    );

    // A second start of the unit while another agent runs the VM: ready at
    // once, nothing to supervise, a clean exit (no `protocol` failure).
    let other = NotifySocket::bind(env.home(), "other");
    let mut second = service.spawn_with(&[("NOTIFY_SOCKET", other.path.as_path())]);
    let heard = other
        .next(Duration::from_secs(30))
        .expect("READY=1 from the second start");
    assert!(heard.says("READY=1"), "{heard:?}");
    assert_eq!(second.wait(Duration::from_secs(30)).code(), Some(0));

    running.signal(libc::SIGTERM);
    let heard = manager.next(Duration::from_secs(30)).expect("STOPPING=1");
    assert!(heard.says("STOPPING=1"), "{heard:?}");
    assert_eq!(running.wait(Duration::from_secs(60)).code(), Some(0));
    assert_eq!(env.last_stopped("ntf")["by"], "power-button");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_service_killed_with_sigkill_comes_back_running_when_restarted() {
    let env = TestEnv::new();
    env.create("phoenix", "");
    let service = Service::of(&env, "phoenix");
    let mut first = service.spawn();
    wait_running(&env, "phoenix", &mut first);
    let qemu = common::pid_of(&env.row("phoenix"), "qemu_pid").unwrap();

    // The host agent dies by SIGKILL: an unclean exit, which
    // Restart=on-failure (and launchd's SuccessfulExit=false) restarts.
    first.signal(libc::SIGKILL);
    let status = first.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal: {status}");

    // (1) QEMU outlived it (its own process group): the restarted service adopts it.
    let mut second = service.spawn();
    wait_running(&env, "phoenix", &mut second);
    assert_eq!(
        common::pid_of(&env.row("phoenix"), "qemu_pid"),
        Some(qemu),
        "the same QEMU, adopted"
    );
    assert!(
        env.events("phoenix")
            .iter()
            .any(|e| e["event"] == "adopted" && e["qemu_pid"] == qemu),
        "{:?}",
        env.events("phoenix")
    );
    let shell = env.ok(&["shell", "phoenix", "--", "echo", "alive"]);
    assert_eq!(shell.stdout(), "alive\n");

    // (2) As systemd does with KillMode=mixed when the main process dies,
    // the rest of the unit (QEMU) is SIGKILLed too: the restart boots afresh.
    second.signal(libc::SIGKILL);
    second.wait(Duration::from_secs(10));
    // SAFETY: kill(2) of the QEMU this test's instance runs (its pid from `list`).
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || {
            (!Path::new(&format!("/proc/{qemu}/cmdline")).exists()
                || std::fs::read(format!("/proc/{qemu}/cmdline"))
                    .unwrap_or_default()
                    .is_empty())
            .then_some(())
        })
        .is_some()
    );
    let mut third = service.spawn();
    wait_running(&env, "phoenix", &mut third);
    let new_qemu = common::pid_of(&env.row("phoenix"), "qemu_pid").unwrap();
    assert_ne!(new_qemu, qemu, "a fresh boot");

    // No crash loop: the service stays up, with one QEMU.
    std::thread::sleep(Duration::from_secs(3));
    assert!(third.is_running(), "log:\n{}", log_of(&env, "phoenix"));
    assert_eq!(env.status("phoenix"), "Running");
    let qemus = env
        .processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 1);

    third.signal(libc::SIGTERM);
    assert_eq!(third.wait(Duration::from_secs(60)).code(), Some(0));
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn vm_service_guest_poweroff_from_inside_exits_0_so_keep_alive_does_not_restart() {
    let env = TestEnv::new();
    env.create("inside", "");
    let service = Service::of(&env, "inside");
    let mut running = service.spawn();
    wait_running(&env, "inside", &mut running);

    // The guest powers itself off (not through vmkeep).
    let _ = env.run(&[
        "shell",
        "inside",
        "--",
        "sh",
        "-c",
        "(sleep 1; poweroff -f) >/dev/null 2>&1 &",
    ]);
    let status = running.wait(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0: Restart=on-failure / SuccessfulExit=false leave it off; log:\n{}",
        log_of(&env, "inside")
    );
    let stopped = env.last_stopped("inside");
    assert_eq!(stopped["reason"], "guest-poweroff", "{stopped}");
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_eq!(env.status("inside"), "Stopped");
}

#[test]
fn vm_host_shutdown_stops_every_instance_in_parallel() {
    let env = TestEnv::new();
    // Guests that ignore the power button: each stop takes until the guest
    // agent is asked, at half the deadline (3 s).
    let names = ["hs1", "hs2", "hs3"];
    for name in names {
        env.create(
            name,
            "stopTimeout: 6s\nkernel:\n  cmdline: vmkeep.ignore_power_button=1\n",
        );
    }
    let mut services: Vec<Running> = names
        .iter()
        .map(|name| Service::of(&env, name).spawn())
        .collect();
    for (name, service) in names.iter().zip(services.iter_mut()) {
        wait_running(&env, name, service);
    }

    // Host shutdown: every service gets SIGTERM at the same moment.
    let started = Instant::now();
    for service in &services {
        service.signal(libc::SIGTERM);
    }
    for (name, service) in names.iter().zip(services.iter_mut()) {
        let status = service.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{name}: {status}");
    }
    let total = started.elapsed();

    let mut each = Vec::new();
    for name in names {
        let stopped = env.last_stopped(name);
        assert_eq!(stopped["reason"], "requested", "{name}: {stopped}");
        assert_eq!(
            stopped["by"], "guest-agent-poweroff",
            "{name} powered off cleanly: {stopped}"
        );
        each.push(stopped["after_secs"].as_f64().unwrap());
    }
    let slowest = each.iter().cloned().fold(0.0, f64::max);
    let sum: f64 = each.iter().sum();
    eprintln!(
        "host shutdown: total {:.2}s; single stops {each:.2?} (slowest {slowest:.2}s, sum {sum:.2}s)",
        total.as_secs_f64()
    );
    assert!(
        slowest >= 3.0,
        "each waited for the guest agent step: {each:?}"
    );
    assert!(
        total.as_secs_f64() < 1.7 * slowest && total.as_secs_f64() < 0.7 * sum,
        "total {total:?} should be close to the slowest single stop ({slowest:.2}s), not the sum ({sum:.2}s)"
    );
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}

#[test]
fn unit_words_are_split_as_systemd_does() {
    assert_eq!(
        words("\"/opt/my apps/vm$$keep\" start dev --foreground"),
        ["/opt/my apps/vm$keep", "start", "dev", "--foreground"]
    );
    assert_eq!(words("\"PATH=/a:/b\""), ["PATH=/a:/b"]);
    assert_eq!(words("\"X=100%%\\\"q\\\"\""), ["X=100%\"q\""]);
}
