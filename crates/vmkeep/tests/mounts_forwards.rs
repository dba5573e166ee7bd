//! Host directories (`mounts:`, virtio-fs) and port forwards
//! (`portForwards:` and the automatic ones), through the real binary with
//! real QEMU (TCG) and the real virtiofsd, in the tiny image: a file
//! written on either side is seen on the other, a read-only share refuses
//! writes (also after the guest remounts it read-write), virtiofsd ends
//! with the VM and is adopted with it after the host agent is killed, a
//! lost one shows in `list`; a port the guest listens on answers on the
//! host's localhost and stops when the guest closes it, also after the
//! host agent was killed and the VM adopted.
//!
//! Every wait polls for what can be observed, with generous deadlines;
//! delays are printed (`--nocapture`), never asserted.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestEnv, free_port, http_get, wait_until};
use vmkeep::os::process::ProcessHandle;

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

/// The live virtiofsd of share `index`, by the lock it holds.
fn virtiofsd(env: &TestEnv, name: &str, index: usize) -> Option<ProcessHandle> {
    vmkeep::os::process::open_lock_holder(&env.instance_dir(name).join(format!("fs{index}.pid")))
        .ok()
        .flatten()
}

/// Processes of this home that are virtiofsd.
fn virtiofsds_left(env: &TestEnv) -> Vec<(u32, String)> {
    env.processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("virtiofsd"))
        .collect()
}

/// Wait until no process of this home is left (QEMU, virtiofsd, agents).
fn nothing_left(env: &TestEnv) {
    let left = env.wait_no_processes(SHORT);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn reason_code(env: &TestEnv, name: &str) -> String {
    env.list()
        .into_iter()
        .find(|r| r["name"] == name)
        .map(|r| r["reason"]["code"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn mounts_yaml(dir: &Path) -> String {
    format!(
        "stopTimeout: 20s\nmounts:\n  - location: {0}\n    mountPoint: /mnt/rw\n    writable: true\n  - location: {0}\n    mountPoint: /mnt/ro\n",
        dir.display()
    )
}

#[test]
fn vm_mount_is_read_and_written_both_ways_and_read_only_refuses_writes() {
    let env = TestEnv::new();
    let (_src_guard, src) = common::shared_dir(&env);
    std::fs::write(src.join("from-host"), "hello from the host\n").unwrap();
    env.create("m", &mounts_yaml(&src));
    env.run_within(&["start", "m"], BOOT);
    assert_eq!(env.status("m"), "Running");

    // Host -> guest, on both mounts.
    assert_eq!(
        env.shell("m", "cat /mnt/rw/from-host"),
        "hello from the host"
    );
    assert_eq!(
        env.shell("m", "cat /mnt/ro/from-host"),
        "hello from the host"
    );
    // Guest -> host through the writable one.
    env.shell(
        "m",
        "echo hello from the guest > /mnt/rw/from-guest && sync",
    );
    assert_eq!(
        std::fs::read_to_string(src.join("from-guest")).unwrap(),
        "hello from the guest\n"
    );
    assert_eq!(
        common::host_user::owner(&src.join("from-guest")),
        common::host_user::owner(&src),
        "what the guest's root writes belongs to the share's owner"
    );
    // A change on the host while mounted is seen (cache=auto: within a
    // second or so), and the guest's file is seen on its read-only side.
    std::fs::write(src.join("from-host"), "changed on the host\n").unwrap();
    let started = Instant::now();
    wait_until(SHORT, || {
        (env.shell("m", "cat /mnt/rw/from-host") == "changed on the host").then_some(())
    })
    .expect("the host's change reaches the guest");
    eprintln!("host write -> seen in the guest: {:?}", started.elapsed());
    assert_eq!(
        env.shell("m", "cat /mnt/ro/from-guest"),
        "hello from the guest"
    );

    // Read-only: refused, also once the guest remounted it read-write
    // (the host enforces it).
    let (code, stderr) = env.shell_status("m", "echo no > /mnt/ro/refused");
    assert_ne!(code, Some(0), "writing a read-only share failed");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (code, stderr) = env.shell_status(
        "m",
        "mount -o remount,rw /mnt/ro; echo no > /mnt/ro/refused",
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (code, _) = env.shell_status("m", "rm /mnt/ro/from-host");
    assert_ne!(code, Some(0), "removing from a read-only share failed");
    assert!(!src.join("refused").exists());
    assert!(src.join("from-host").exists());

    // Gone with the VM.
    assert!(virtiofsd(&env, "m", 0).is_some() && virtiofsd(&env, "m", 1).is_some());
    env.run_within(&["stop", "m"], SHORT);
    assert_eq!(env.status("m"), "Stopped");
    nothing_left(&env);
    assert!(virtiofsd(&env, "m", 0).is_none() && virtiofsd(&env, "m", 1).is_none());
    let files = env.runtime_files("m");
    assert!(files.is_empty(), "runtime files left: {files:?}");
}

#[test]
fn vm_virtiofsd_is_adopted_with_its_vm_ends_with_it_and_a_lost_one_shows() {
    let env = TestEnv::new();
    let (_src_guard, src) = common::shared_dir(&env);
    env.create("a", &mounts_yaml(&src));
    env.run_within(&["start", "a"], BOOT);
    let qemu = env.qemu("a").unwrap().pid();
    let daemons: Vec<u32> = (0..2)
        .map(|i| {
            virtiofsd(&env, "a", i)
                .expect("a virtiofsd per share")
                .pid()
        })
        .collect();

    // The agent killed: QEMU and virtiofsd run on, and `start` adopts them.
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    assert_eq!(reason_code(&env, "a"), "orphaned-qemu");
    let start = env.run_within(&["start", "a"], SHORT);
    assert!(
        start.stderr().contains("adopting QEMU"),
        "{}",
        start.describe()
    );
    assert_eq!(env.status("a"), "Running");
    assert_eq!(env.qemu("a").unwrap().pid(), qemu, "adopted, not rebooted");
    let adopted: Vec<u32> = (0..2)
        .map(|i| virtiofsd(&env, "a", i).expect("still running").pid())
        .collect();
    assert_eq!(adopted, daemons, "the same virtiofsd processes");
    env.shell("a", "echo after adoption > /mnt/rw/adopted && sync");
    assert_eq!(
        std::fs::read_to_string(src.join("adopted")).unwrap(),
        "after adoption\n"
    );

    // A virtiofsd that dies while the VM runs: `list` says which share.
    let lost_before = env.count_events("a", "shared-dir-lost");
    virtiofsd(&env, "a", 1).unwrap().kill().unwrap();
    env.wait_event("a", "shared-dir-lost", lost_before, SHORT);
    let row = env.list().into_iter().find(|r| r["name"] == "a").unwrap();
    assert_eq!(row["status"], "Broken", "{row}");
    assert_eq!(row["reason"]["code"], "shared-dirs-lost", "{row}");
    let message = row["reason"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("/mnt/ro"), "{row}");
    // The other share and the guest carry on.
    assert_eq!(env.shell("a", "cat /mnt/rw/adopted"), "after adoption");

    // Stop ends the VM (its guest skips the dead mount) and virtiofsd.
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.status("a"), "Stopped");
    nothing_left(&env);

    // Killed agent, then `stop` without a start: adopted and ended too.
    env.run_within(&["start", "a"], BOOT);
    assert!(virtiofsd(&env, "a", 0).is_some());
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.status("a"), "Stopped");
    nothing_left(&env);
    assert!(virtiofsds_left(&env).is_empty());

    // A virtiofsd that ends while no agent runs: the adopting agent finds
    // it gone, journals it, and `list` shows it; stop still ends it all.
    env.run_within(&["start", "a"], BOOT);
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    let lost_before = env.count_events("a", "shared-dir-lost");
    virtiofsd(&env, "a", 0).unwrap().kill().unwrap();
    wait_until(SHORT, || virtiofsd(&env, "a", 0).is_none().then_some(()))
        .expect("the killed virtiofsd's lock is free");
    let start = env.run_within(&["start", "a"], SHORT);
    assert!(
        start.stderr().contains("adopting QEMU"),
        "{}",
        start.describe()
    );
    assert!(env.count_events("a", "shared-dir-lost") > lost_before);
    assert_eq!(reason_code(&env, "a"), "shared-dirs-lost");
    assert_eq!(env.shell("a", "cat /mnt/ro/adopted"), "after adoption");
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.status("a"), "Stopped");
    nothing_left(&env);
}

// ---- port forwards -----------------------------------------------------

/// Nothing listens on the host's localhost port (connection refused).
fn refused(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    matches!(
        TcpStream::connect_timeout(&address, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Start a web server in the guest on `listen` (busybox httpd, in the
/// foreground of a background shell job); its pid.
fn serve(env: &TestEnv, name: &str, listen: &str) -> u32 {
    env.shell(
        name,
        &format!(
            "mkdir -p /www && echo served > /www/index.html && \
             httpd -f -p {listen} -h /www </dev/null >/dev/null 2>&1 & echo $!"
        ),
    )
    .parse()
    .expect("the pid of httpd")
}

/// Wait until the host's port answers with what the guest serves; how long.
fn answers(port: u16) -> Duration {
    let started = Instant::now();
    wait_until(SHORT, || {
        (http_get(port).as_deref() == Some("served")).then_some(())
    })
    .unwrap_or_else(|| panic!("host port {port} did not answer within {SHORT:?}"));
    started.elapsed()
}

/// Wait until nothing listens on the host's port any more; how long.
fn closes(port: u16) -> Duration {
    let started = Instant::now();
    wait_until(SHORT, || refused(port).then_some(()))
        .unwrap_or_else(|| panic!("host port {port} still open after {SHORT:?}"));
    started.elapsed()
}

#[test]
fn vm_port_forwards_follow_the_guest_and_survive_adoption() {
    let env = TestEnv::new();
    let static_host = free_port();
    let auto = free_port();
    let looped = free_port();
    let later = free_port();
    env.create(
        "p",
        &format!(
            "stopTimeout: 20s\nportForwards:\n  - guestPort: 8080\n    hostPort: {static_host}\n"
        ),
    );
    env.run_within(&["start", "p"], BOOT);
    assert!(refused(static_host) && refused(auto));

    // A static forward, an automatic one, and a loopback-only listener
    // (relayed by the guest agent).
    let static_server = serve(&env, "p", "8080");
    eprintln!("static forward answers after {:?}", answers(static_host));
    let auto_server = serve(&env, "p", &auto.to_string());
    eprintln!("automatic forward answers after {:?}", answers(auto));
    let looped_server = serve(&env, "p", &format!("127.0.0.1:{looped}"));
    eprintln!("loopback listener answers after {:?}", answers(looped));

    // The guest closes a port: the host's goes.
    env.shell("p", &format!("kill {auto_server}"));
    eprintln!("closed automatic forward gone after {:?}", closes(auto));
    assert_eq!(http_get(static_host).as_deref(), Some("served"));

    // The host agent killed: QEMU keeps its forwards meanwhile, and the
    // adopting agent carries on from them.
    let qemu = env.qemu("p").unwrap().pid();
    env.agent("p").unwrap().kill().unwrap();
    env.wait_status("p", "Broken", SHORT);
    assert_eq!(http_get(static_host).as_deref(), Some("served"));
    env.run_within(&["start", "p"], SHORT);
    assert_eq!(env.status("p"), "Running");
    assert_eq!(env.qemu("p").unwrap().pid(), qemu, "adopted, not rebooted");
    answers(static_host);
    answers(looped);
    // A port opened after the adoption is forwarded, one closed goes.
    let later_server = serve(&env, "p", &later.to_string());
    eprintln!(
        "after adoption, a new port answers after {:?}",
        answers(later)
    );
    env.shell("p", &format!("kill {looped_server}"));
    eprintln!(
        "after adoption, a closed port goes after {:?}",
        closes(looped)
    );
    env.shell("p", &format!("kill {later_server} {static_server}"));
    closes(later);
    closes(static_host);

    env.run_within(&["stop", "p"], SHORT);
    nothing_left(&env);
    for port in [static_host, auto, looped, later] {
        assert!(refused(port), "host port {port} closed with the VM");
    }
}

// ---- bad config ----------------------------------------------------------

#[test]
fn bad_mounts_and_port_forwards_are_refused_naming_the_field_and_change_nothing() {
    let env = TestEnv::new();
    for (yaml, says) in [
        (
            "mounts:\n  - location: /tmp\n    mountPoint: relative\n",
            "mounts[0].mountPoint",
        ),
        ("portForwards:\n  - guestPort: 70000\n", "portForwards[0]"),
        (
            "portForwards:\n  - guestPort: 80\n    guestPortRange: [1, 2]\n",
            "portForwards[0]",
        ),
    ] {
        let template = env.home().join("bad.yaml");
        std::fs::write(&template, yaml).unwrap();
        let run = env.run(&["create", "bad", "--template", template.to_str().unwrap()]);
        assert_ne!(run.code(), Some(0), "{yaml}: {}", run.describe());
        assert!(run.stderr().contains(says), "{yaml}: {}", run.describe());
        assert!(
            run.stderr().contains("nothing was created"),
            "{}",
            run.describe()
        );
        assert!(!env.instance_dir("bad").exists());
    }

    // A location that is a file: `start` says so and boots nothing.
    let file = env.home().join("a-file");
    std::fs::write(&file, "").unwrap();
    env.create(
        "f",
        &format!(
            "mounts:\n  - location: {}\n    mountPoint: /mnt/f\n",
            file.display()
        ),
    );
    let run = env.run_within(&["start", "f"], BOOT);
    assert_ne!(run.code(), Some(0), "{}", run.describe());
    let stderr = run.stderr();
    assert!(
        stderr.contains("mounts[0].location") && stderr.contains("is not a directory"),
        "{}",
        run.describe()
    );
    assert!(
        stderr.contains("vmkeep.yaml"),
        "names the file to fix: {stderr}"
    );
    env.wait_status("f", "Stopped", SHORT);
    nothing_left(&env);
    assert!(
        env.count_events("f", "booting") == 0,
        "nothing booted: {:?}",
        env.events("f")
    );
}
