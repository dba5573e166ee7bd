//! Test harness for driving the real `vmkeep` binary against real QEMU.
//!
//! Every test gets its own `VMKEEP_HOME` (a short temporary directory, so
//! socket paths fit `sun_path`). The kernel and built images are cached in
//! one directory under `target/` shared by all tests and runs, so the kernel
//! is downloaded once per machine. When a [`TestEnv`] is dropped, every
//! instance is force-stopped and any process still running for this home
//! (found by its command line or its `VMKEEP_HOME`) is killed by pid: a
//! failing test never leaves QEMU or a host agent behind.

#![allow(dead_code)]

pub mod container;
pub mod guest_tools;
pub mod host_user;
pub mod http;
pub mod installed;
pub mod second_qemu;
pub mod static_agent;
pub mod terminal;
pub mod upgrade_base;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const VMKEEP: &str = env!("CARGO_BIN_EXE_vmkeep");

pub struct TestEnv {
    home: tempfile::TempDir,
    /// A tmpfs is mounted on the home (unmounted when dropped).
    tmpfs: bool,
    /// `vmkeep` runs as this user (else as the test).
    user: Option<host_user::HostUser>,
    /// `VMKEEP_QEMU` for its commands (else the QEMU in PATH).
    qemu: std::cell::RefCell<Option<PathBuf>>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let home = tempfile::Builder::new()
            .prefix("vk")
            .tempdir_in("/tmp")
            .expect("temp home");
        TestEnv {
            home,
            tmpfs: false,
            user: None,
            qemu: std::cell::RefCell::new(None),
        }
    }

    /// An environment whose `vmkeep` runs as `user` (the tests run as root):
    /// its home belongs to the user, `HOME` is that home, and the kernel
    /// and image cache is the user's own.
    pub fn as_user(user: &host_user::HostUser) -> TestEnv {
        let mut env = TestEnv::new();
        host_user::give(env.home(), user);
        env.user = Some(user.clone());
        env
    }

    /// Run the next commands with `VMKEEP_QEMU` set to `qemu` (`None`: the
    /// QEMU in PATH).
    pub fn use_qemu(&self, qemu: Option<&Path>) {
        *self.qemu.borrow_mut() = qemu.map(Path::to_path_buf);
    }

    /// The user `vmkeep` runs as, when not the test's own.
    pub fn user(&self) -> Option<&host_user::HostUser> {
        self.user.as_ref()
    }

    /// A home on a tmpfs of `size_mib` MiB of its own, to run out of space
    /// in (needs root: the tests run as root). Unmounted when dropped, once
    /// every process of the home is gone.
    pub fn on_small_tmpfs(size_mib: u64) -> TestEnv {
        let mut env = TestEnv::new();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(env.home())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        env.tmpfs = true;
        env
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.home().join(name)
    }

    /// A `vmkeep` command with this environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(VMKEEP), args)
    }

    /// Another `vmkeep` binary (another build, an installed copy) with this
    /// environment.
    pub fn command_of(&self, vmkeep: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(vmkeep);
        command
            .args(args)
            .env("VMKEEP_HOME", self.home())
            .env("VMKEEP_CACHE_DIR", shared_cache())
            .env_remove("VMKEEP_ACCEL")
            .env_remove("VMKEEP_QEMU")
            .stdin(Stdio::null());
        if let Some(qemu) = self.qemu.borrow().as_ref() {
            command.env("VMKEEP_QEMU", qemu);
        }
        if let Some(user) = &self.user {
            use std::os::unix::process::CommandExt;
            // std drops root's supplementary groups when it sets the uid.
            command
                .uid(user.uid)
                .gid(user.gid)
                .env("HOME", self.home())
                .env("USER", &user.name)
                .env("LOGNAME", &user.name)
                .env("VMKEEP_CACHE_DIR", user_cache(user));
        }
        command
    }

    /// Run `vmkeep` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run vmkeep");
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
        }
    }

    /// Run `vmkeep` to completion with extra environment variables.
    pub fn run_env(&self, args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> Run {
        let mut command = self.command(args);
        for (key, value) in vars {
            command.env(key, value);
        }
        let output = command.output().expect("run vmkeep");
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
        }
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(
            run.output.status.success(),
            "vmkeep {:?} failed:\n{}",
            args,
            run.describe()
        );
        run
    }

    /// `vmkeep list --json`, as (name, status) pairs.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let run = self.ok(&["list", "--json"]);
        serde_json::from_slice(&run.output.stdout).expect("list --json is JSON")
    }

    /// The `list --json` row of `name`.
    pub fn row(&self, name: &str) -> serde_json::Value {
        self.list()
            .into_iter()
            .find(|r| r["name"] == name)
            .expect("listed")
    }

    pub fn status(&self, name: &str) -> String {
        self.list()
            .into_iter()
            .find(|row| row["name"] == name)
            .map(|row| row["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| "Absent".to_string())
    }

    /// Create an instance from YAML.
    pub fn create(&self, name: &str, yaml: &str) {
        let template = self.home().join(format!("{name}.template.yaml"));
        std::fs::write(&template, yaml).unwrap();
        self.ok(&["create", name, "--template", template.to_str().unwrap()]);
        std::fs::remove_file(template).unwrap();
    }

    /// The journal's events of an instance, across its rotated part
    /// (`events.jsonl.1`), without the rotations' own records.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        let dir = self.instance_dir(name);
        ["events.jsonl.1", "events.jsonl"]
            .iter()
            .flat_map(|file| {
                let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .filter(|e| e["event"] != "rotated")
            .collect()
    }

    /// The last `stopped` event.
    pub fn last_stopped(&self, name: &str) -> serde_json::Value {
        self.events(name)
            .into_iter()
            .rev()
            .find(|e| e["event"] == "stopped")
            .expect("a stopped event")
    }

    /// Live processes started for this home: QEMU (its command line names the
    /// home) and host agents (their environment names it).
    pub fn processes(&self) -> Vec<(u32, String)> {
        processes_for(self.home())
    }

    /// Runtime files (`*.pid`, `*.sock`, temporaries) left in an instance dir.
    pub fn runtime_files(&self, name: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.instance_dir(name)) else {
            return vec![];
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pid") || n.ends_with(".sock") || n.contains(".tmp-"))
            .collect()
    }

    /// Wait until no process of this home is left; return what is left.
    pub fn wait_no_processes(&self, limit: Duration) -> Vec<(u32, String)> {
        let until = Instant::now() + limit;
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() > until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.home()) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let _ = self.command(&["stop", "--force", &name]).output();
                }
            }
        }
        for (pid, what) in self.processes() {
            eprintln!("test cleanup: killing leftover pid {pid}: {what}");
            // SAFETY: plain kill(2) of a process this test started (it names our temp home).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if self.tmpfs {
            let left = self.wait_no_processes(Duration::from_secs(10));
            let status = Command::new("umount").arg(self.home()).status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!(
                    "test cleanup: cannot unmount {} ({left:?} left); detaching it",
                    self.home().display()
                );
                let _ = Command::new("umount").arg("-l").arg(self.home()).status();
            }
        }
    }
}

/// What one `vmkeep` run did.
pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn describe(&self) -> String {
        format!(
            "status: {}\nstdout:\n{}\nstderr:\n{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// The cache shared by every test, the image tests included (the kernel is
/// downloaded once).
pub fn shared_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-image-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// The directory a test shares, removed with the returned guard. Run as
/// root, it belongs to a normal user (root never serves a guest's writes as
/// root: a share is served as its directory's owner); it lies outside the
/// test's home, which vmkeep keeps 0700.
pub fn shared_dir(env: &TestEnv) -> (tempfile::TempDir, PathBuf) {
    let guard = tempfile::Builder::new()
        .prefix("vksrc")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = guard.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let owner = match env.user() {
        Some(user) => Some(user.clone()),
        None if host_user::running_as_root() => Some(host_user::test_user()),
        None => None,
    };
    if let Some(owner) = owner {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(guard.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        host_user::give(&dir, &owner);
    }
    (guard, dir)
}

/// The kernel and image cache of a test user (its own: the shared one is
/// root's), downloaded once per machine like the shared one.
pub fn user_cache(user: &host_user::HostUser) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-image-cache-{}", user.name));
    std::fs::create_dir_all(&dir).unwrap();
    host_user::give(&dir, user);
    dir.canonicalize().unwrap()
}

/// Processes whose command line or `VMKEEP_HOME` names `home`.
pub fn processes_for(home: &Path) -> Vec<(u32, String)> {
    let home_text = home.to_string_lossy().into_owned();
    let env_entry = format!("VMKEEP_HOME={home_text}");
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmd_text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let in_cmd = cmd_text.contains(&home_text);
        let in_env = environ
            .split(|b| *b == 0)
            .any(|e| e == env_entry.as_bytes());
        let is_zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if (in_cmd || in_env) && !is_zombie && !cmd_text.trim().is_empty() {
            found.push((pid, cmd_text.trim().to_string()));
        }
    }
    found
}

/// Poll `check` until it returns `Some` or the time is up.
pub fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pid field of a `list --json` row.
pub fn pid_of(row: &serde_json::Value, key: &str) -> Option<u32> {
    row[key].as_u64().map(|p| p as u32)
}

/// A `vmkeep` process started in the background; killed (by its pid, which
/// this test owns) if still running when dropped.
pub struct Spawned {
    pub child: std::process::Child,
    pub args: Vec<String>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL it now and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for it to exit; panics (naming the command) if it overruns.
    pub fn wait_within(mut self, limit: Duration) -> Run {
        let until = Instant::now() + limit;
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                let child = std::mem::replace(
                    &mut self.child,
                    Command::new("true").spawn().expect("spawn true"),
                );
                let output = child.wait_with_output().expect("collect output");
                return Run {
                    args: self.args.clone(),
                    output,
                };
            }
            if Instant::now() > until {
                self.kill9();
                panic!("vmkeep {:?} hung: still running after {limit:?}", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        } else {
            let _ = self.child.wait();
        }
    }
}

impl TestEnv {
    /// Start `vmkeep` in the background, output captured.
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmkeep");
        Spawned {
            child,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Run `vmkeep`, failing the test if it does not return within `limit`.
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Run {
        self.spawn(args).wait_within(limit)
    }

    /// The process holding the instance's host-agent lock (pidfd handle).
    pub fn agent(&self, name: &str) -> Option<vmkeep::os::process::ProcessHandle> {
        vmkeep::os::process::open_lock_holder(&self.instance_dir(name).join("ha.pid"))
            .expect("inspect ha.pid")
    }

    /// The process holding the instance's QEMU pid-file lock (pidfd handle).
    pub fn qemu(&self, name: &str) -> Option<vmkeep::os::process::ProcessHandle> {
        vmkeep::os::process::open_lock_holder(&self.instance_dir(name).join("qemu.pid"))
            .expect("inspect qemu.pid")
    }

    /// Number of journal events of this kind so far.
    pub fn count_events(&self, name: &str, event: &str) -> usize {
        self.events(name)
            .iter()
            .filter(|e| e["event"] == event)
            .count()
    }

    /// Wait until the journal holds more than `before` events of this kind.
    pub fn wait_event(&self, name: &str, event: &str, before: usize, limit: Duration) {
        wait_until(limit, || {
            (self.count_events(name, event) > before).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "no new {event:?} event within {limit:?}: {:?}",
                self.events(name)
            )
        });
    }

    /// Wait until `vmkeep list` shows this status.
    pub fn wait_status(&self, name: &str, status: &str, limit: Duration) {
        let mut last = String::new();
        wait_until(limit, || {
            last = self.status(name);
            (last == status).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} is {last}, not {status}, after {limit:?}"));
    }

    /// Run `script` with `sh -c` in the guest; require success; its
    /// output, trimmed.
    pub fn shell(&self, name: &str, script: &str) -> String {
        self.ok(&["shell", name, "--", "sh", "-c", script])
            .stdout()
            .trim()
            .to_string()
    }

    /// Run `script` in the guest; its exit code and stderr.
    pub fn shell_status(&self, name: &str, script: &str) -> (Option<i32>, String) {
        let run = self.run(&["shell", name, "--", "sh", "-c", script]);
        (run.code(), run.stderr())
    }

    /// Run `vmkeep create NAME` and SIGKILL it the moment its staging
    /// directory appears (creation takes a few milliseconds); whether it
    /// was caught so (else it had finished).
    pub fn kill_create_while_staging(&self, name: &str) -> bool {
        let mut cli = self.spawn(&["create", name]);
        loop {
            if !staging(self.home()).is_empty() {
                cli.kill9();
                return true;
            }
            if cli.child.try_wait().unwrap().is_some() {
                return false;
            }
        }
    }

    /// Fill the home's file system but for `keep` bytes (a reserved file);
    /// returns the filler's path.
    pub fn fill_leaving(&self, keep: u64) -> PathBuf {
        let filler = self.home().join("filler");
        let free = rustix::fs::statvfs(self.home()).unwrap();
        let available = free.f_bavail * free.f_frsize;
        assert!(
            available > keep,
            "the file system has {available} bytes free"
        );
        vmkeep::os::fs::create_reserved(&filler, available - keep, 0o600).unwrap();
        filler
    }

    /// The guest's boot id (changes on every boot).
    pub fn boot_id(&self, name: &str) -> String {
        self.ok(&[
            "shell",
            name,
            "--",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])
        .stdout()
        .trim()
        .to_string()
    }
}

/// A TCP port free on the host's loopback now.
/// The body of `GET /index.html` from the host's localhost `port` (a
/// guest's web server behind a port forward), if it answers.
pub fn http_get(port: u16) -> Option<String> {
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    std::io::Write::write_all(&mut stream, b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .filter(|body| !body.is_empty())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The names of the entries of `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What unfinished creates left in a home: staging directories and their
/// locks (`.NAME.tmp-*`).
pub fn staging(home: &Path) -> Vec<String> {
    names(home)
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect()
}
