//! A real systemd to test against: systemd 252 as PID 1 of a
//! `systemd-nspawn` container (this machine's PID 1 is not systemd), with
//! QEMU inside it and the vmkeep binaries under test bound in at
//! `/opt/vmkeep`. See ../shared/REAL-SYSTEMD.md for the recipe.
//!
//! - The root file system is built once by `scripts/build-systemd-rootfs`
//!   and cached under `target/` by a digest of that script; every container
//!   boots it with `--volatile=overlay`, so containers never change it and
//!   several can run at once.
//! - What must survive a reboot of the container (homes with their
//!   instances, `/root`, `/etc/systemd/system`, logind's linger marks) lives
//!   in a per-container state directory bound in, so a test can power the
//!   container off, boot it again and find the VMs autostarted.
//! - Commands run inside through `nsenter` into all the container's
//!   namespaces, in a new session (`setsid`: a `kill 0` inside never reaches
//!   the test), as a login shell of their user (`su -l`), so they sit in a
//!   logind session like an administrator's shell.
//! - Dropping a [`Container`] kills its init (everything in its pid
//!   namespace dies with it: QEMU, agents) and then systemd-nspawn, both by
//!   the pids this harness spawned or found as its child.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{VMKEEP, shared_cache, wait_until};

/// The unprivileged user baked into the root file system.
pub const USER: &str = "ann";
pub const USER_UID: u32 = 1000;

/// Whether this process may run containers; when not, the caller skips and
/// says so loudly.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "\n*** SKIPPED: the real-systemd tests need root (systemd-nspawn, debootstrap); \
             CI runs them as root ***\n"
        );
    }
    root
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cached root file system, built on first use.
pub fn rootfs() -> PathBuf {
    let script = workspace().join("scripts/build-systemd-rootfs");
    let recipe = std::fs::read(&script).expect("read scripts/build-systemd-rootfs");
    let key = recipe.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("systemd-rootfs-{key:016x}"));
    let root = dir.join("root");
    if root.join("usr/lib/systemd/systemd").exists() {
        return root;
    }
    // One builder at a time; the others wait for it, then find it built.
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open the rootfs build lock");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    if !root.join("usr/lib/systemd/systemd").exists() {
        eprintln!(
            "building the systemd root file system in {} (about 2 minutes, once)",
            dir.display()
        );
        let status = Command::new(&script)
            .arg(&dir)
            .status()
            .expect("run scripts/build-systemd-rootfs");
        assert!(status.success(), "scripts/build-systemd-rootfs failed");
    }
    root
}

/// Build the tiny image into the shared cache on the host: the container
/// has no apt lists to fetch the kernel with, and shares the cache.
fn ensure_tiny_image() {
    let mut quiet = |_: &str| {};
    vmkeep::image::tiny::ensure(&shared_cache(), None, &mut quiet).expect("build the tiny image");
}

/// One command's outcome inside the container.
#[derive(Debug)]
pub struct Ran {
    pub script: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn describe(&self) -> String {
        format!(
            "`{}` -> {:?}\nstdout:\n{}\nstderr:\n{}",
            self.script, self.code, self.stdout, self.stderr
        )
    }
}

/// A booted container.
pub struct Container {
    state: tempfile::TempDir,
    rootfs: PathBuf,
    nspawn: Option<Child>,
    init: u32,
    /// More host directories bound in, read-write: (host, inside).
    binds: Vec<(PathBuf, String)>,
}

/// The state directories bound into the container: (host name, container path).
const PERSISTENT: [(&str, &str); 4] = [
    ("home", "/home"),
    ("root", "/root"),
    ("etc-systemd-system", "/etc/systemd/system"),
    ("linger", "/var/lib/systemd/linger"),
];

impl Container {
    /// Boot a fresh container; `None` (after saying so) when not root.
    pub fn boot() -> Option<Container> {
        Container::boot_binding(&[])
    }

    /// [`Container::boot`] with more host directories bound in,
    /// read-write: (host, inside).
    pub fn boot_binding(binds: &[(&Path, &str)]) -> Option<Container> {
        if !can_run() {
            return None;
        }
        let rootfs = rootfs();
        ensure_tiny_image();
        let state = tempfile::Builder::new()
            .prefix("vkct")
            .tempdir_in("/tmp")
            .expect("container state dir");
        for (name, inside) in PERSISTENT {
            let from = rootfs.join(inside.trim_start_matches('/'));
            let to = state.path().join(name);
            if !from.exists() {
                std::fs::create_dir_all(&to).unwrap();
                continue;
            }
            let status = Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(&to)
                .status()
                .expect("cp");
            assert!(
                status.success(),
                "copy {} into the state dir",
                from.display()
            );
        }
        let mut container = Container {
            state,
            rootfs,
            nspawn: None,
            init: 0,
            binds: binds
                .iter()
                .map(|(host, inside)| (host.to_path_buf(), inside.to_string()))
                .collect(),
        };
        container.start();
        Some(container)
    }

    /// The host path of a path inside the container that lives in the
    /// persistent state (under /home or /root).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        for (name, prefix) in PERSISTENT {
            if let Some(rest) = inside.strip_prefix(prefix) {
                return self
                    .state
                    .path()
                    .join(name)
                    .join(rest.trim_start_matches('/'));
            }
        }
        panic!("{inside} is not in the container's persistent state");
    }

    /// The instance directory of `user`'s instance `name`, on the host.
    pub fn instance_dir(&self, user: &str, name: &str) -> PathBuf {
        let home = if user == "root" {
            "/root".to_string()
        } else {
            format!("/home/{user}")
        };
        self.host_path(&format!("{home}/.vmkeep/{name}"))
    }

    fn start(&mut self) {
        let bin_dir = Path::new(VMKEEP).parent().unwrap().to_path_buf();
        let cache = shared_cache();
        let mut command = Command::new("systemd-nspawn");
        command
            .args([
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--volatile=overlay",
            ])
            .arg("-D")
            .arg(&self.rootfs)
            .args(["-b", "--console=pipe"])
            .arg(format!("--bind-ro={}:/opt/vmkeep", bin_dir.display()))
            .arg(format!("--bind={}", cache.display()));
        for (name, inside) in PERSISTENT {
            command.arg(format!(
                "--bind={}:{inside}",
                self.state.path().join(name).display()
            ));
        }
        for (host, inside) in &self.binds {
            command.arg(format!("--bind={}:{inside}", host.display()));
        }
        let log = std::fs::File::create(self.state.path().join("nspawn.log")).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = command
            .spawn()
            .expect("run systemd-nspawn (scripts/setup-host installs it)");
        let nspawn_pid = child.id();
        self.nspawn = Some(child);
        // The container's init is nspawn's child named systemd.
        let init = wait_until(Duration::from_secs(30), || {
            child_named(nspawn_pid, "systemd")
        })
        .unwrap_or_else(|| panic!("no systemd in the container: {}", self.nspawn_log()));
        self.init = init;
        let up = wait_until(Duration::from_secs(60), || {
            let state = self.nsenter(&["systemctl", "is-system-running"], Duration::from_secs(10));
            matches!(state.stdout.trim(), "running" | "degraded").then_some(())
        });
        assert!(
            up.is_some(),
            "the container's systemd did not come up: {}",
            self.nspawn_log()
        );
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("nspawn.log")).unwrap_or_default()
    }

    fn nsenter(&self, command: &[&str], limit: Duration) -> Ran {
        let mut full = Command::new("nsenter");
        full.args(["-t", &self.init.to_string(), "-a", "setsid", "-w"])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_limited(full, command.join(" "), limit)
    }

    /// Run `script` in a login shell of `user`, with vmkeep's binaries first
    /// in PATH and the shared image cache.
    pub fn sh_as(&self, user: &str, script: &str, limit: Duration) -> Ran {
        let uid_dir = if user == "root" {
            "/run/user/0".to_string()
        } else {
            format!("/run/user/{USER_UID}")
        };
        let env = format!(
            "export PATH=/opt/vmkeep:$PATH VMKEEP_CACHE_DIR={} XDG_RUNTIME_DIR={uid_dir}; {script}",
            shared_cache().display()
        );
        let mut ran = self.nsenter(&["su", "-l", user, "-c", &env], limit);
        ran.script = format!("[{user}] {script}");
        ran
    }

    /// [`Container::sh_as`], failing the test unless it succeeds.
    pub fn ok_as(&self, user: &str, script: &str, limit: Duration) -> Ran {
        let ran = self.sh_as(user, script, limit);
        assert!(ran.ok(), "{}", ran.describe());
        ran
    }

    /// `vmkeep list --json` of `user`, as rows.
    pub fn list(&self, user: &str) -> Vec<serde_json::Value> {
        let ran = self.ok_as(user, "vmkeep list --json", Duration::from_secs(30));
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.describe()))
    }

    /// The row of `user`'s instance `name` in `list --json`.
    pub fn row(&self, user: &str, name: &str) -> serde_json::Value {
        self.list(user)
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed for {user}"))
    }

    /// The journal of `user`'s instance `name` (read on the host).
    pub fn events(&self, user: &str, name: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.instance_dir(user, name).join("events.jsonl"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Power the container off from inside and wait until systemd-nspawn
    /// has exited; returns how long that took.
    pub fn poweroff(&mut self, limit: Duration) -> Duration {
        let began = Instant::now();
        let _ = self.nsenter(&["systemctl", "poweroff"], Duration::from_secs(30));
        let mut nspawn = self.nspawn.take().expect("a running container");
        let exited = wait_until(limit, || nspawn.try_wait().ok().flatten());
        if exited.is_none() {
            self.nspawn = Some(nspawn);
            panic!("the container did not power off within {limit:?}");
        }
        began.elapsed()
    }

    /// Boot the container again on the same persistent state.
    pub fn boot_again(&mut self) {
        assert!(self.nspawn.is_none(), "power it off first");
        self.start();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        if let Ok(None) = nspawn.try_wait() {
            // The init of the container's pid namespace: everything inside
            // dies with it. Its parent is our nspawn child.
            if child_named(nspawn.id(), "systemd") == Some(self.init) {
                // SAFETY: kill(2) of the container init this harness found as
                // the child of the systemd-nspawn it spawned.
                unsafe { libc::kill(self.init as i32, libc::SIGKILL) };
            }
            if wait_until(Duration::from_secs(20), || nspawn.try_wait().ok().flatten()).is_none() {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
            }
        }
    }
}

/// The pid of `parent`'s child whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
}

/// Run `command` to completion, killing it (by the pid we spawned) if it
/// overruns `limit`.
fn run_limited(mut command: Command, script: String, limit: Duration) -> Ran {
    let mut child = command.spawn().expect("spawn nsenter");
    let until = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let output = child.wait_with_output().expect("collect output");
            return Ran {
                script,
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            };
        }
        if Instant::now() > until {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "`{script}` hung for {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
