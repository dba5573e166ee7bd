//! Host directories (`mounts:`, virtio-fs) and port forwards
//! (`portForwards:` and the automatic ones), through the real binary with
//! real QEMU (TCG) and the real virtiofsd, in the tiny image: a file
//! written on either side is seen on the other, a read-only share refuses
//! writes (also after the guest remounts it read-write), virtiofsd ends
//! with the VM and is adopted with it after the host agent is killed, a
//! lost one shows in `list`; a port the guest listens on answers on the
//! host's localhost and stops when the guest closes it, also after the
//! host agent was killed and the VM adopted; with `mountInotify`, a watcher
//! in the guest sees a host edit, create and delete; a privileged guest
//! port is forwarded only by a rule naming it.
//!
//! The mount tests run twice ([`as_root_and_as_a_user!`]): vmkeep run by
//! the test's user (root in CI: the share is then a normal user's) and by a
//! normal user the test makes.
//!
//! Every wait polls for what can be observed, with generous deadlines;
//! delays are printed (`--nocapture`), never asserted.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{TestEnv, free_port, host_user, http_get, wait_until};
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

/// Each body as two tests: vmkeep run by the test's own user (root in CI,
/// the share then a normal user's) and by a normal user the test makes
/// (skipped, loudly, when the test cannot make one).
macro_rules! as_root_and_as_a_user {
    ($body:ident: $as_root:ident, $as_user:ident) => {
        #[test]
        fn $as_root() {
            $body(&TestEnv::new());
        }

        #[test]
        fn $as_user() {
            skip_unless_root!();
            $body(&TestEnv::as_user(&host_user::test_user()));
        }
    };
}

/// Write a file in a share as its owner would (the test may be root).
fn host_write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    if host_user::running_as_root() {
        let owner = std::fs::metadata(path.parent().unwrap()).unwrap();
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::lchown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
}

as_root_and_as_a_user!(
    read_and_written_both_ways:
    vm_mount_is_read_and_written_both_ways_and_read_only_refuses_writes,
    vm_as_a_user_a_mount_is_read_and_written_both_ways_and_read_only_refuses_writes
);

fn read_and_written_both_ways(env: &TestEnv) {
    let (_src_guard, src) = common::shared_dir(env);
    host_write(&src.join("from-host"), "hello from the host\n");
    env.create("m", &mounts_yaml(&src));
    env.run_within(&["start", "m"], BOOT);
    assert_eq!(env.status("m"), "Running");
    // The share owner's groups are looked up by the sandbox shim, not by
    // the host agent, which then would hold the C library's NSS modules
    // (~0.5 MiB resident) for the VM's life (docs/memory.md).
    let agent = env.agent("m").expect("the host agent runs").pid();
    let maps = std::fs::read_to_string(format!("/proc/{agent}/maps")).unwrap();
    let nss: Vec<&str> = maps.lines().filter(|l| l.contains("libnss_")).collect();
    assert!(nss.is_empty(), "the host agent maps NSS modules: {nss:?}");

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
    host_write(&src.join("from-host"), "changed on the host\n");
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
    assert!(virtiofsd(env, "m", 0).is_some() && virtiofsd(env, "m", 1).is_some());
    env.run_within(&["stop", "m"], SHORT);
    assert_eq!(env.status("m"), "Stopped");
    nothing_left(env);
    assert!(virtiofsd(env, "m", 0).is_none() && virtiofsd(env, "m", 1).is_none());
    let files = env.runtime_files("m");
    assert!(files.is_empty(), "runtime files left: {files:?}");
}

as_root_and_as_a_user!(
    adopted_with_its_vm:
    vm_virtiofsd_is_adopted_with_its_vm_ends_with_it_and_a_lost_one_shows,
    vm_as_a_user_virtiofsd_is_adopted_with_its_vm_ends_with_it_and_a_lost_one_shows
);

fn adopted_with_its_vm(env: &TestEnv) {
    let (_src_guard, src) = common::shared_dir(env);
    env.create("a", &mounts_yaml(&src));
    env.run_within(&["start", "a"], BOOT);
    let qemu = env.qemu("a").unwrap().pid();
    let daemons: Vec<u32> = (0..2)
        .map(|i| virtiofsd(env, "a", i).expect("a virtiofsd per share").pid())
        .collect();

    // The agent killed: QEMU and virtiofsd run on, and `start` adopts them.
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    assert_eq!(reason_code(env, "a"), "orphaned-qemu");
    let start = env.run_within(&["start", "a"], SHORT);
    assert!(
        start.stderr().contains("adopting QEMU"),
        "{}",
        start.describe()
    );
    assert_eq!(env.status("a"), "Running");
    assert_eq!(env.qemu("a").unwrap().pid(), qemu, "adopted, not rebooted");
    let adopted: Vec<u32> = (0..2)
        .map(|i| virtiofsd(env, "a", i).expect("still running").pid())
        .collect();
    assert_eq!(adopted, daemons, "the same virtiofsd processes");
    env.shell("a", "echo after adoption > /mnt/rw/adopted && sync");
    assert_eq!(
        std::fs::read_to_string(src.join("adopted")).unwrap(),
        "after adoption\n"
    );

    // A virtiofsd that dies while the VM runs: `list` says which share.
    let lost_before = env.count_events("a", "shared-dir-lost");
    virtiofsd(env, "a", 1).unwrap().kill().unwrap();
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
    nothing_left(env);

    // Killed agent, then `stop` without a start: adopted and ended too.
    env.run_within(&["start", "a"], BOOT);
    assert!(virtiofsd(env, "a", 0).is_some());
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.status("a"), "Stopped");
    nothing_left(env);
    assert!(virtiofsds_left(env).is_empty());

    // A virtiofsd that ends while no agent runs: the adopting agent finds
    // it gone, journals it, and `list` shows it; stop still ends it all.
    env.run_within(&["start", "a"], BOOT);
    env.agent("a").unwrap().kill().unwrap();
    env.wait_status("a", "Broken", SHORT);
    let lost_before = env.count_events("a", "shared-dir-lost");
    virtiofsd(env, "a", 0).unwrap().kill().unwrap();
    wait_until(SHORT, || virtiofsd(env, "a", 0).is_none().then_some(()))
        .expect("the killed virtiofsd's lock is free");
    let start = env.run_within(&["start", "a"], SHORT);
    assert!(
        start.stderr().contains("adopting QEMU"),
        "{}",
        start.describe()
    );
    assert!(env.count_events("a", "shared-dir-lost") > lost_before);
    assert_eq!(reason_code(env, "a"), "shared-dirs-lost");
    assert_eq!(env.shell("a", "cat /mnt/ro/adopted"), "after adoption");
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.status("a"), "Stopped");
    nothing_left(env);
}

as_root_and_as_a_user!(
    host_changes_reach_a_guest_watcher:
    vm_mount_inotify_a_host_edit_create_and_delete_reach_a_watcher_in_the_guest,
    vm_as_a_user_mount_inotify_a_host_edit_create_and_delete_reach_a_watcher_in_the_guest
);

/// The events the guest's watcher (`tests/fixtures/guest-tools`) printed,
/// one per line: `EVENTS<TAB>DIR[<TAB>NAME]` (`c` is IN_MODIFY).
fn guest_events(env: &TestEnv, name: &str) -> Vec<String> {
    env.shell(name, "cat /tmp/events")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until the guest's watcher printed `event`; how long after `since`
/// the guest read it (by the guest's clock, kept on the host's).
fn guest_sees(env: &TestEnv, name: &str, event: &str, since: SystemTime) -> Duration {
    let seen = wait_until(SHORT, || {
        guest_events(env, name).iter().find_map(|line| {
            common::guest_tools::watched_event(line)
                .filter(|(_, what)| *what == event)
                .map(|(when, _)| when)
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "the guest's watcher did not see {event:?} within {SHORT:?}; it saw {:?}",
            guest_events(env, name)
        )
    });
    seen.duration_since(since).unwrap_or_default()
}

fn host_changes_reach_a_guest_watcher(env: &TestEnv) {
    let (_src_guard, src) = common::shared_dir(env);
    host_write(&src.join("edited"), "one\n");
    host_write(&src.join("removed"), "gone soon\n");
    env.create(
        "w",
        &format!(
            "mountInotify: true\n{}  - location: {}\n    mountPoint: /mnt/tools\n",
            mounts_yaml(&src),
            common::guest_tools::dir().display()
        ),
    );
    env.run_within(&["start", "w"], BOOT);
    // A watcher on the writable mount's directory (its output off the
    // share, in the guest's /tmp), its watch in place before anything
    // changes.
    env.shell(
        "w",
        "/mnt/tools/inotify-watch /mnt/rw > /tmp/events 2> /tmp/watching </dev/null &",
    );
    wait_until(SHORT, || {
        (env.shell("w", "cat /tmp/watching") == "watching").then_some(())
    })
    .expect("the watcher watches /mnt/rw");

    // An edit: IN_MODIFY on the file, named in the directory's watch.
    let now = SystemTime::now();
    host_write(&src.join("edited"), "two\n");
    let edit = guest_sees(env, "w", "c\t/mnt/rw\tedited", now);
    // A file made: IN_MODIFY with its name (not IN_CREATE: the guest agent
    // can only touch what the host made).
    let now = SystemTime::now();
    host_write(&src.join("created"), "new\n");
    let create = guest_sees(env, "w", "c\t/mnt/rw\tcreated", now);
    // A removal: IN_MODIFY on the directory itself.
    let now = SystemTime::now();
    std::fs::remove_file(src.join("removed")).unwrap();
    let delete = guest_sees(env, "w", "c\t/mnt/rw", now);
    // No echo: at most one guest event per host event (a write, then its
    // chown to the share's owner, may come apart), the guest's touches
    // raising nothing more.
    let events = guest_events(env, "w");
    for name in ["\tedited", "\tcreated"] {
        let count = events.iter().filter(|l| l.ends_with(name)).count();
        assert!((1..=2).contains(&count), "{name}: {events:?}");
    }
    eprintln!(
        "host change -> guest inotify event: edit {edit:?}, create {create:?}, delete {delete:?}; the watcher saw {:?}",
        guest_events(env, "w")
    );
    // The guest reads what the host wrote, and its touch changed nothing on
    // the host but the time.
    assert_eq!(
        env.shell("w", "cat /mnt/rw/edited /mnt/rw/created"),
        "two\nnew"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("edited")).unwrap(),
        "two\n"
    );
    assert!(!src.join("removed").exists());
    // The read-only mount of the same directory is not touched (it cannot
    // be), and nothing was logged as failing.
    let log = std::fs::read_to_string(env.instance_dir("w").join("ha.log")).unwrap_or_default();
    assert_eq!(
        log.matches("mountInotify: watching ").count(),
        1,
        "only the writable share is watched: {log}"
    );
    assert!(log.contains("mountInotify: watching 1 director"), "{log}");
    assert!(!log.contains("cannot tell the guest"), "{log}");

    env.run_within(&["stop", "w"], SHORT);
    nothing_left(env);
}

#[test]
fn vm_as_a_user_limas_home_mount_is_read_and_written_both_ways() {
    skip_unless_root!();
    let user = host_user::test_user();
    let env = TestEnv::as_user(&user);
    // Lima's home mount, made writable (Lima's `_default/mounts` is
    // read-only): the user's home holds the instance too, as ~/.lima does.
    let home = env.home().to_path_buf();
    host_write(&home.join("from-host"), "hello from the home\n");
    env.create(
        "h",
        "stopTimeout: 20s\nmounts:\n- location: \"~\"\n  writable: true\n",
    );
    env.run_within(&["start", "h"], BOOT);
    let guest_home = home.display().to_string();
    assert_eq!(
        env.shell("h", &format!("cat {guest_home}/from-host")),
        "hello from the home"
    );
    env.shell(
        "h",
        &format!("echo from the guest > {guest_home}/from-guest && sync"),
    );
    let written = home.join("from-guest");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        host_user::owner(&written),
        user.uid,
        "the user's, on the host"
    );
    env.run_within(&["stop", "h"], SHORT);
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

/// The host agent's log of instance `name`.
fn agent_log(env: &TestEnv, name: &str) -> String {
    std::fs::read_to_string(env.instance_dir(name).join("ha.log")).unwrap_or_default()
}

#[test]
fn vm_a_privileged_guest_port_is_forwarded_only_by_a_rule_naming_it() {
    // Root could bind the host's 127.0.0.1:81: the guest must not get it
    // by listening first. (A normal user cannot bind it at all.)
    skip_unless_root!();
    let env = TestEnv::new();
    let unforwarded = 81;
    let named = 82;
    assert!(
        refused(unforwarded) && refused(named),
        "ports 81 and 82 of this host are free"
    );
    env.create(
        "priv",
        &format!("stopTimeout: 20s\nportForwards:\n  - guestPort: {named}\n"),
    );
    env.run_within(&["start", "priv"], BOOT);
    let server = serve(&env, "priv", &unforwarded.to_string());
    serve(&env, "priv", &named.to_string());
    eprintln!(
        "the rule's privileged port answers after {:?}",
        answers(named)
    );
    let said = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("guest port {unforwarded} ("))
                    && l.contains("is not forwarded: a host port below 1024")
            })
            .count()
    };
    wait_until(SHORT, || (said(&agent_log(&env, "priv")) > 0).then_some(())).unwrap_or_else(|| {
        panic!(
            "ha.log says why port {unforwarded} is not forwarded:\n{}",
            agent_log(&env, "priv")
        )
    });
    assert!(
        refused(unforwarded),
        "the host's port {unforwarded} is not the guest's"
    );
    // Said once, not at every report: more listeners come and go.
    let another = free_port();
    let other = serve(&env, "priv", &another.to_string());
    answers(another);
    env.shell("priv", &format!("kill {other}"));
    closes(another);
    assert_eq!(
        said(&agent_log(&env, "priv")),
        1,
        "{}",
        agent_log(&env, "priv")
    );
    assert!(refused(unforwarded));
    env.shell("priv", &format!("kill {server}"));
    env.run_within(&["stop", "priv"], SHORT);
    nothing_left(&env);
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
