//! The static host agent (`scripts/install` on Linux: musl, static, no
//! download client), installed beside `vmkeep` in a directory of the
//! test's own as a user would have it: it runs a VM with a read-only mount
//! of a user's directory and a port forward, maps no C library and no
//! loader, and keeps the VM through suspend and resume; a running dynamic
//! agent moves onto it with `vmkeep upgrade`. The sandbox shim of
//! virtiofsd is the `vmkeep` beside it (`os::confine`), and the agent
//! passes a shim command line of an older agent's on to it.
//!
//! QEMU 10 (`common::second_qemu`): QEMU 7.2 cannot suspend a VM with a
//! mount. The static agent is built once (`common::static_agent`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::installed::{Installed, built, text};
use common::{TestEnv, free_port, http_get, second_qemu, static_agent, wait_until};

const SHORT: Duration = Duration::from_secs(30);

fn ok(output: Output) -> Output {
    assert!(output.status.success(), "{}", text(&output));
    output
}

/// The shared libraries and loader `pid` maps (none for a static program).
fn shared_objects(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut objects: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains(".so") || path.contains("ld-linux") || path.contains("musl"))
        .map(str::to_string)
        .collect();
    objects.dedup();
    objects
}

/// The running agent of `name`: its pid, checked to run the installed
/// static file and to map no shared object.
fn static_agent_of(env: &TestEnv, name: &str, installed: &Installed) -> u32 {
    let agent = env.agent(name).expect("the host agent runs").pid();
    let exe = std::fs::read_link(format!("/proc/{agent}/exe")).unwrap();
    assert_eq!(exe, installed.path("vmkeep-hostagent"));
    assert_eq!(
        shared_objects(agent),
        Vec::<String>::new(),
        "the static agent maps shared objects"
    );
    agent
}

fn config(share: &Path, port: u16) -> String {
    format!(
        "stopTimeout: 20s\nmounts:\n  - location: {}\n    mountPoint: /mnt/ro\n\
         portForwards:\n  - guestPort: 8080\n    hostPort: {port}\n",
        share.display()
    )
}

/// A user's directory with a file in it (the test's user's as root: then
/// the shim looks the owner's groups up and runs virtiofsd as the owner).
fn share_with_a_file(env: &TestEnv) -> (tempfile::TempDir, PathBuf) {
    let (guard, src) = common::shared_dir(env);
    let file = src.join("from-host");
    std::fs::write(&file, "hello from the host\n").unwrap();
    if common::host_user::running_as_root() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&src).unwrap();
        std::os::unix::fs::lchown(&file, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    (guard, src)
}

/// Busybox httpd on guest port 8080, answering "served" on the host's `port`.
fn serve_and_answer(env: &TestEnv, name: &str, port: u16) {
    env.shell(
        name,
        "mkdir -p /www && echo served > /www/index.html && \
         httpd -f -p 8080 -h /www </dev/null >/dev/null 2>&1 &",
    );
    wait_until(SHORT, || {
        (http_get(port).as_deref() == Some("served")).then_some(())
    })
    .unwrap_or_else(|| panic!("host port {port} did not answer within {SHORT:?}"));
}

fn the_mount_reads(env: &TestEnv, name: &str) {
    assert_eq!(
        env.shell(name, "cat /mnt/ro/from-host"),
        "hello from the host"
    );
}

fn nothing_left(env: &TestEnv) {
    let left = env.wait_no_processes(SHORT);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn vm_static_agent_runs_a_mount_and_a_forward_through_suspend_and_resume() {
    let installed = Installed::with_agent(&static_agent::binary());
    let env = TestEnv::new();
    env.use_qemu(Some(&second_qemu::qemu10()));
    let (_share_guard, share) = share_with_a_file(&env);
    let port = free_port();
    env.create("s", &config(&share, port));

    let started = installed.vmkeep(&env, &["start", "s"]);
    ok(started);
    let agent = static_agent_of(&env, "s", &installed);
    the_mount_reads(&env, "s");
    serve_and_answer(&env, "s", port);
    let boot = env.boot_id("s");

    // A shim command line of an older agent's (its own path as the shim)
    // is passed on to the `vmkeep` beside it, which becomes the program.
    let shim = env
        .command_of(
            &installed.path("vmkeep-hostagent"),
            &["--sandboxed", "--", "/bin/echo", "through the shim"],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ok(shim).stdout).trim(),
        "through the shim"
    );
    let alone = tempfile::tempdir().unwrap();
    let lone_agent = alone.path().join("vmkeep-hostagent");
    std::fs::copy(installed.path("vmkeep-hostagent"), &lone_agent).unwrap();
    let orphan = env
        .command_of(&lone_agent, &["--sandboxed", "--", "/bin/echo", "no"])
        .output()
        .unwrap();
    assert_eq!(orphan.status.code(), Some(127), "{}", text(&orphan));
    let said = String::from_utf8_lossy(&orphan.stderr);
    assert!(
        said.contains("vmkeep is missing beside the host agent"),
        "{said}"
    );
    assert!(orphan.stdout.is_empty(), "{}", text(&orphan));

    // Suspend and resume: a new static agent, a fresh virtiofsd started
    // through the shim, the same boot.
    ok(installed.vmkeep(&env, &["suspend", "s"]));
    assert_eq!(env.status("s"), "Suspended");
    let resumed = ok(installed.vmkeep(&env, &["start", "s"]));
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resuming the state saved at"),
        "{}",
        text(&resumed)
    );
    let resumed_agent = static_agent_of(&env, "s", &installed);
    assert_ne!(resumed_agent, agent, "a new agent runs the resumed VM");
    assert_eq!(env.boot_id("s"), boot, "resumed, not rebooted");
    the_mount_reads(&env, "s");
    // httpd was saved with the guest and answers again.
    wait_until(SHORT, || {
        (http_get(port).as_deref() == Some("served")).then_some(())
    })
    .unwrap_or_else(|| panic!("host port {port} did not answer after the resume"));

    ok(installed.vmkeep(&env, &["stop", "s"]));
    assert_eq!(env.status("s"), "Stopped");
    nothing_left(&env);
}

#[test]
fn vm_static_agent_is_what_a_running_dynamic_agent_upgrades_onto() {
    let installed = Installed::with_agent(&built("vmkeep-hostagent"));
    let env = TestEnv::new();
    let (_share_guard, share) = share_with_a_file(&env);
    let port = free_port();
    env.create("u", &config(&share, port));
    ok(installed.vmkeep(&env, &["start", "u"]));
    let agent = env.agent("u").expect("the host agent runs").pid();
    let qemu = env.qemu("u").expect("QEMU runs").pid();
    assert!(
        !shared_objects(agent).is_empty(),
        "the debug agent is dynamic"
    );
    let boot = env.boot_id("u");

    installed.put(&static_agent::binary(), "vmkeep-hostagent");
    ok(installed.vmkeep(&env, &["upgrade", "u"]));
    assert_eq!(
        static_agent_of(&env, "u", &installed),
        agent,
        "same agent process"
    );
    assert_eq!(env.qemu("u").expect("QEMU runs").pid(), qemu, "same QEMU");
    assert_eq!(env.boot_id("u"), boot);
    assert_eq!(env.status("u"), "Running");
    the_mount_reads(&env, "u");
    serve_and_answer(&env, "u", port);

    ok(installed.vmkeep(&env, &["stop", "u"]));
    nothing_left(&env);
}
