//! Suspend to disk and resume, through the real binary with real QEMU (TCG):
//! what the guest keeps across it (boot, uptime, processes, /data, a right
//! clock), what a save interrupted at any point leaves (a whole state or
//! none, never one that loads wrong), a state that does not fit, and one
//! that no longer matches its config. Plus the guest clock after QEMU was
//! frozen. Timings are printed (`--nocapture`); they are measurements, not
//! assertions.
//!
//! `vmkeep suspend` here is the minimal verb of cli/suspend.rs; `vmkeep
//! start` resumes a saved state by itself.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TestEnv, wait_until};
use vmkeep::hostagent::api::{ApiClient, ExecRequest};

const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);
const TINY: &str = "stopTimeout: 20s\n";
/// How long the main test leaves its VM saved each time.
const SAVED_FOR: Duration = Duration::from_secs(3);

/// A guest as the tests leave it before a suspend.
struct Guest {
    boot_id: String,
    uptime: f64,
    /// When `uptime` was read.
    read_at: Instant,
    /// A `sleep 1000` started in the guest.
    sleeper: u32,
}

fn uptime(env: &TestEnv, name: &str) -> f64 {
    let text = env.shell(name, "cat /proc/uptime");
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Boot `name`, write and sync a marker in /data, start a `sleep 1000`.
fn boot_and_prepare(env: &TestEnv, name: &str) -> Guest {
    let started = Instant::now();
    env.run_within(&["start", name], BOOT);
    eprintln!("cold boot -> ready: {:?}", started.elapsed());
    assert_eq!(env.status(name), "Running");
    env.shell(name, "echo intact > /data/marker && sync");
    let sleeper = env
        .shell(name, "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
        .parse()
        .expect("the pid of the background sleep");
    let boot_id = env.boot_id(name);
    let read_at = Instant::now();
    Guest {
        boot_id,
        uptime: uptime(env, name),
        read_at,
        sleeper,
    }
}

/// The guest is the very one of `before`: same boot, its uptime went on
/// but without the `saved_for` it spent saved, the sleep is still there,
/// /data too.
fn same_guest(env: &TestEnv, name: &str, before: &Guest, saved_for: Duration) {
    assert_eq!(
        env.boot_id(name),
        before.boot_id,
        "the guest did not boot again"
    );
    let now = uptime(env, name);
    let wall = before.read_at.elapsed();
    assert!(
        now > before.uptime,
        "uptime went on: {} then {now}",
        before.uptime
    );
    // /proc/uptime has 10 ms steps.
    assert!(
        now - before.uptime <= (wall - saved_for).as_secs_f64() + 0.02,
        "uptime does not count the {saved_for:?} saved: {} then {now}, {wall:?} later",
        before.uptime
    );
    let process = env.shell(
        name,
        &format!(
            "kill -0 {0} && cat /proc/{0}/cmdline | tr '\\0' ' '",
            before.sleeper
        ),
    );
    assert_eq!(process, "sleep 1000", "the process started before is alive");
    assert_eq!(env.shell(name, "cat /data/marker"), "intact");
}

/// How far the guest's wall clock is from the host's, and how precisely
/// that is known (half the shortest of several round trips): the true
/// offset is within `offset ± uncertainty`. Measured through the host
/// agent's API (one exec of busybox `adjtimex`, which prints the time in
/// microseconds), independently of the clock keeper.
fn clock_offset(env: &TestEnv, name: &str) -> (f64, f64) {
    let client = ApiClient::new(&env.instance_dir(name).join("ha.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..5 {
        let request = ExecRequest {
            argv: vec!["adjtimex".into()],
            stdin: vec![],
            env: vec![],
            cwd: None,
        };
        let host_before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let sent = Instant::now();
        let Ok(result) = runtime.block_on(client.exec(&request, Duration::from_secs(10))) else {
            continue;
        };
        let round_trip = sent.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&result.stdout).into_owned();
        let field = |key: &str| -> f64 {
            text.split(key)
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let guest = field("time.tv_sec:") + field("time.tv_usec:") / 1e6;
        let offset = guest - (host_before.as_secs_f64() + round_trip / 2.0);
        if best.is_none_or(|(_, u)| round_trip / 2.0 < u) {
            best = Some((offset, round_trip / 2.0));
        }
    }
    best.expect("the guest answered at least once")
}

/// Wait (at most `limit`) until the guest's clock is provably within
/// 100 ms of the host's; returns the last measurement.
fn clock_settles(env: &TestEnv, name: &str, limit: Duration) -> (f64, f64) {
    let mut last = (f64::NAN, f64::NAN);
    let settled = wait_until(limit, || {
        last = clock_offset(env, name);
        (last.0.abs() + last.1 < 0.1).then_some(())
    });
    assert!(
        settled.is_some(),
        "the guest's clock is {:.3} s (± {:.3}) off the host's after {limit:?}",
        last.0,
        last.1
    );
    last
}

fn saved_state_files(env: &TestEnv, name: &str) -> Vec<String> {
    common::names(&env.instance_dir(name))
        .into_iter()
        .filter(|n| n.starts_with("saved-state") || n.starts_with(".saved-state"))
        .collect()
}

fn last_event(env: &TestEnv, name: &str, kind: &str) -> serde_json::Value {
    env.events(name)
        .into_iter()
        .rev()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {:?}", env.events(name)))
}

/// Suspend and check what a user sees: the command succeeds, QEMU and the
/// agent are gone, a small device state is kept. Returns the time it took.
fn suspend(env: &TestEnv, name: &str) -> Duration {
    let started = Instant::now();
    let run = env.run_within(&["suspend", name], SHORT);
    let took = started.elapsed();
    assert_eq!(run.code(), Some(0), "suspend: {}", run.describe());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
    assert_ne!(env.status(name), "Running");
    let saved = last_event(env, name, "suspended");
    let state_bytes = saved["state_bytes"].as_u64().unwrap();
    eprintln!(
        "suspend: {took:?} for the command, {:.1} ms pause -> durable, state {} KiB (RAM {} MiB, the pages touched written beside it)",
        saved["secs"].as_f64().unwrap() * 1e3,
        state_bytes / 1024,
        saved["ram_bytes"].as_u64().unwrap() >> 20
    );
    assert!(
        state_bytes < 4 << 20,
        "only the device state is written, not the RAM: {state_bytes} bytes"
    );
    assert_eq!(
        saved_state_files(env, name),
        ["saved-state.bin", "saved-state.json"]
    );
    took
}

/// `start` resumes; returns the time to ready.
fn resume(env: &TestEnv, name: &str) -> Duration {
    let started = Instant::now();
    let run = env.run_within(&["start", name], SHORT);
    let took = started.elapsed();
    assert_eq!(run.code(), Some(0), "resume: {}", run.describe());
    assert!(
        run.stderr().contains("resuming the state saved at"),
        "{}",
        run.describe()
    );
    let running = last_event(env, name, "running");
    eprintln!(
        "resume -> ready: {took:?} for `vmkeep start`; {:.1} ms from QEMU's launch to the guest agent answering",
        running["boot_secs"].as_f64().unwrap() * 1e3
    );
    assert_eq!(env.status(name), "Running");
    assert_eq!(
        saved_state_files(env, name),
        Vec::<String>::new(),
        "the state is used up"
    );
    took
}

#[test]
fn vm_suspend_and_resume_keep_the_boot_processes_data_and_clock() {
    let env = TestEnv::new();
    env.create("s", TINY);
    let guest = boot_and_prepare(&env, "s");
    for round in 1..=2 {
        suspend(&env, "s");
        // Saved for a while: without a correction the guest's clock would
        // be this much behind after the resume.
        std::thread::sleep(SAVED_FOR);
        resume(&env, "s");
        let (offset, uncertainty) = clock_settles(&env, "s", Duration::from_secs(2));
        eprintln!(
            "round {round}: guest clock {:.1} ms (± {:.1}) off the host's after the resume",
            offset * 1e3,
            uncertainty * 1e3
        );
        same_guest(&env, "s", &guest, SAVED_FOR * round);
    }
    let stop = env.run_within(&["stop", "s"], SHORT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert_eq!(env.last_stopped("s")["by"], "power-button");
    assert!(
        !common::names(&env.instance_dir("s")).contains(&"guest-ram".to_string()),
        "a stopped instance gives the RAM file's space back"
    );
    assert_eq!(env.runtime_files("s"), Vec::<String>::new());
}

/// Start a suspend, wait until `moment` says the save is at the point to
/// hit, then run `strike`. Returns what the instance directory held then.
fn strike_during_save(
    env: &TestEnv,
    name: &str,
    moment: impl Fn(&[String]) -> bool,
    strike: impl FnOnce(),
) -> Vec<String> {
    let dir = env.instance_dir(name);
    let suspend = env.spawn(&["suspend", name]);
    let until = Instant::now() + SHORT;
    let seen = loop {
        let names = common::names(&dir);
        if moment(&names) {
            break names;
        }
        assert!(
            Instant::now() < until,
            "the save never got there: {names:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    };
    strike();
    // The verb reports what it can; the instance's state is what counts.
    let _ = suspend.wait_within(SHORT);
    seen
}

fn mid_stream(names: &[String]) -> bool {
    names.iter().any(|n| n.starts_with(".saved-state.bin.tmp-"))
        || names.iter().any(|n| n == "saved-state.bin")
}

fn committed(names: &[String]) -> bool {
    names.iter().any(|n| n == "saved-state.json")
}

/// What a kill during a save left. The record is written last, so a state
/// exists exactly when it does, and then whole; anything else (a temporary
/// or unclaimed device state) is no state, and the next start sweeps it.
fn after_the_strike(env: &TestEnv, name: &str) -> &'static str {
    let files = saved_state_files(env, name);
    if files.contains(&"saved-state.json".to_string()) {
        assert!(
            files.contains(&"saved-state.bin".to_string()),
            "a record names a device state that is there: {files:?}"
        );
        "a complete state"
    } else {
        "no state"
    }
}

#[test]
fn vm_suspend_with_its_host_agent_killed_mid_save_loses_nothing() {
    let env = TestEnv::new();
    env.create("a", TINY);
    let guest = boot_and_prepare(&env, "a");
    type Moment = fn(&[String]) -> bool;
    let moments: [(&str, Moment); 2] = [("mid-stream", mid_stream), ("just committed", committed)];
    for (when, moment) in moments {
        let agent = env.agent("a").expect("the host agent runs");
        let seen = strike_during_save(&env, "a", moment, || {
            let _ = agent.kill();
        });
        let left = after_the_strike(&env, "a");
        eprintln!("agent killed {when} (saw {seen:?}): {left}");
        // QEMU is never killed with its agent: it was left paused mid-save,
        // or ended after a complete save. Either way `start` carries on
        // with the same guest, adopting and continuing it, or resuming it.
        let start = env.run_within(&["start", "a"], BOOT);
        assert_eq!(
            start.code(),
            Some(0),
            "start after the kill: {}",
            start.describe()
        );
        let how = if start.stderr().contains("resuming the state") {
            "resumed the state"
        } else {
            "adopted QEMU and let its guest run on"
        };
        eprintln!("  then `start` {how}");
        assert_eq!(env.status("a"), "Running");
        same_guest(&env, "a", &guest, Duration::ZERO);
        assert_eq!(saved_state_files(&env, "a"), Vec::<String>::new());
        clock_settles(&env, "a", Duration::from_secs(3));
    }
    env.run_within(&["stop", "a"], SHORT);
    assert_eq!(env.runtime_files("a"), Vec::<String>::new());
}

#[test]
fn vm_suspend_with_qemu_killed_mid_save_leaves_a_whole_state_or_none() {
    let env = TestEnv::new();
    env.create("q", TINY);
    let guest = boot_and_prepare(&env, "q");
    let qemu = env.qemu("q").expect("QEMU runs");
    let seen = strike_during_save(&env, "q", mid_stream, || {
        let _ = qemu.kill();
    });
    assert_eq!(env.wait_no_processes(Duration::from_secs(10)), vec![]);
    let left = after_the_strike(&env, "q");
    eprintln!("QEMU killed mid-stream (saw {seen:?}): {left}");
    let start = env.run_within(&["start", "q"], BOOT);
    assert_eq!(
        start.code(),
        Some(0),
        "start after the kill: {}",
        start.describe()
    );
    match left {
        // Killed after the commit: that state is whole and resumes.
        "a complete state" => same_guest(&env, "q", &guest, Duration::ZERO),
        _ => {
            // The save failed and said why; the next start boots afresh
            // from the disk QEMU had flushed.
            let failed = last_event(&env, "q", "suspend-failed");
            assert!(
                failed["error"].as_str().unwrap().contains("QEMU"),
                "{failed}"
            );
            assert_ne!(env.boot_id("q"), guest.boot_id, "a fresh boot");
            assert_eq!(env.shell("q", "cat /data/marker"), "intact");
        }
    }
    assert_eq!(saved_state_files(&env, "q"), Vec::<String>::new());
    env.run_within(&["stop", "q"], SHORT);
    assert_eq!(env.runtime_files("q"), Vec::<String>::new());
}

#[test]
fn vm_suspend_that_would_not_fit_is_refused_and_the_vm_runs_on() {
    // A file system with room for the disk and logs but far less than the
    // guest's 256 MiB of RAM: a start takes no space for the RAM (a memfd),
    // a suspend needs what the guest touched (its data extents).
    let env = TestEnv::on_small_tmpfs(320);
    env.create("f", TINY);
    // Nearly full before the start: 48 MiB free.
    let filler = env.fill_leaving(48 << 20);
    let guest = boot_and_prepare(&env, "f");
    // The guest touches 64 MiB more of its RAM (its own tmpfs).
    env.shell(
        "f",
        "mkdir -p /run/t && mount -t tmpfs -o size=80m t /run/t && \
         dd if=/dev/zero of=/run/t/fill bs=1M count=64 2>/dev/null && echo ok",
    );

    let run = env.run_within(&["suspend", "f"], SHORT);
    assert_eq!(run.code(), Some(7), "{}", run.describe());
    let said = run.stderr();
    assert!(
        said.contains("saving the state needs")
            && said.contains(&env.home().display().to_string())
            && said.contains("free some space there"),
        "the error names the space needed, the file system and the fix: {said}"
    );
    assert!(said.contains("the VM runs on"), "{said}");
    assert_eq!(env.status("f"), "Running");
    same_guest(&env, "f", &guest, Duration::ZERO);
    assert_eq!(saved_state_files(&env, "f"), Vec::<String>::new());
    assert!(
        !common::names(&env.instance_dir("f"))
            .iter()
            .any(|n| n.contains("guest-ram")),
        "no copy of the RAM was begun"
    );
    let failed = last_event(&env, "f", "suspend-failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("saving the state needs"),
        "{failed}"
    );
    // The guest never met the full disk either (no pause for it).
    assert!(
        !env.events("f").iter().any(|e| e["event"] == "paused"),
        "{:?}",
        env.events("f")
    );

    // With the space back, the same VM suspends and resumes, the pages it
    // touched with it.
    std::fs::remove_file(&filler).unwrap();
    suspend(&env, "f");
    resume(&env, "f");
    same_guest(&env, "f", &guest, Duration::ZERO);
    assert_eq!(
        env.shell("f", "wc -c < /run/t/fill"),
        (64u64 << 20).to_string()
    );
    env.run_within(&["stop", "f"], SHORT);
}

#[test]
fn vm_suspend_of_an_adopted_qemu_saves_its_ram_found_from_qemus_pid() {
    let env = TestEnv::new();
    env.create("o", TINY);
    let guest = boot_and_prepare(&env, "o");
    // 16 MiB of the guest's memory whose contents must come back.
    let sum = env.shell(
        "o",
        "mkdir -p /run/k && mount -t tmpfs -o size=20m k /run/k && \
         dd if=/dev/urandom of=/run/k/f bs=1M count=16 2>/dev/null && md5sum < /run/k/f",
    );
    // The agent that made the memfd dies; the next one adopts QEMU and has
    // only QEMU's pid to find the RAM by.
    let qemu = env.qemu("o").expect("QEMU runs").pid();
    let agent = env.agent("o").expect("the host agent runs");
    agent.kill().unwrap();
    assert!(agent.wait_timeout(Duration::from_secs(10)));
    let start = env.run_within(&["start", "o"], SHORT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    assert_eq!(env.qemu("o").unwrap().pid(), qemu, "adopted, not rebooted");
    suspend(&env, "o");
    let saved = env.instance_dir("o").join("guest-ram");
    let on_disk = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&saved).unwrap().blocks() * 512
    };
    eprintln!("the RAM's copy takes {} MiB", on_disk >> 20);
    assert!(
        on_disk >= 16 << 20,
        "the touched pages are saved: {on_disk}"
    );
    resume(&env, "o");
    same_guest(&env, "o", &guest, Duration::ZERO);
    assert_eq!(
        env.shell("o", "md5sum < /run/k/f"),
        sum,
        "the same bytes came back"
    );
    assert!(
        wait_until(Duration::from_secs(5), || (!saved.exists()).then_some(())).is_some(),
        "the RAM's copy goes once the guest runs again (in the background)"
    );
    env.run_within(&["stop", "o"], SHORT);
    assert_eq!(env.runtime_files("o"), Vec::<String>::new());
}

/// Bytes the files of `dir` take on its disk (allocated blocks, as `du`).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    common::names(dir)
        .iter()
        .filter_map(|n| std::fs::symlink_metadata(dir.join(n)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn vm_guest_ram_churn_costs_the_host_disk_nothing() {
    let env = TestEnv::new();
    env.create("c", TINY);
    env.run_within(&["start", "c"], BOOT);
    let dir = env.instance_dir("c");
    let before = allocated_bytes(&dir);
    // The guest writes 3 x 64 MiB through a tmpfs of its own: RAM it
    // dirties, nothing on its disk.
    env.shell(
        "c",
        "mkdir -p /run/t && mount -t tmpfs -o size=80m t /run/t && \
         for i in 1 2 3; do dd if=/dev/zero of=/run/t/churn bs=1M count=64 2>/dev/null; \
         rm /run/t/churn; done; echo done",
    );
    // What the host would write back within its usual 30 s is forced now.
    let status = std::process::Command::new("sync").status().unwrap();
    assert!(status.success());
    let after = allocated_bytes(&dir);
    let names = common::names(&dir);
    eprintln!(
        "instance directory: {} KiB before the churn, {} KiB after ({names:?})",
        before >> 10,
        after >> 10
    );
    assert!(
        !names.iter().any(|n| n.contains("guest-ram")),
        "no RAM file: {names:?}"
    );
    assert!(
        after < before + (8 << 20),
        "192 MiB of guest memory churn took {} KiB of the host's disk",
        (after - before) >> 10
    );
    // The RAM is QEMU's memfd, holding what the guest touched.
    let qemu = env.qemu("c").expect("QEMU runs");
    let memfd = std::fs::read_dir(format!("/proc/{}/fd", qemu.pid()))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:vmkeep-guest-ram"))
        })
        .expect("QEMU holds the guest's memfd");
    let held = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(memfd.path()).unwrap().blocks() * 512
    };
    eprintln!("the memfd holds {} MiB", held >> 20);
    assert!(
        held >= 64 << 20,
        "the guest's pages are in the memfd: {held}"
    );
    env.run_within(&["stop", "c"], SHORT);
    assert_eq!(env.runtime_files("c"), Vec::<String>::new());
}

fn sha256_of(path: &Path) -> String {
    // coreutils: a debug build's own hashing of 256 MiB takes seconds.
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn vm_suspend_state_that_no_longer_matches_its_config_is_refused_at_once_and_kept() {
    let env = TestEnv::new();
    env.create("m", "stopTimeout: 20s\nmemory: 256MiB\n");
    let guest = boot_and_prepare(&env, "m");
    suspend(&env, "m");
    let dir = env.instance_dir("m");
    let sums: Vec<String> = [
        "saved-state.json",
        "saved-state.bin",
        "guest-ram",
        "disk.qcow2",
    ]
    .iter()
    .map(|f| sha256_of(&dir.join(f)))
    .collect();
    let config = std::fs::read_to_string(dir.join("vmkeep.yaml")).unwrap();
    assert!(config.contains("memory: 256MiB"), "{config}");
    std::fs::write(
        dir.join("vmkeep.yaml"),
        config.replace("memory: 256MiB", "memory: 512MiB"),
    )
    .unwrap();

    for _ in 0..2 {
        let launches = env.count_events("m", "resuming") + env.count_events("m", "booting");
        let started = Instant::now();
        let run = env.run_within(&["start", "m"], SHORT);
        let took = started.elapsed();
        assert_eq!(run.code(), Some(6), "{}", run.describe());
        let said = run.stderr();
        assert!(
            said.contains("cannot be resumed")
                && said.contains("memory: saved with 256 MiB, would resume with 512 MiB")
                && said.contains("set back what changed")
                && said.contains("vmkeep start --discard-state"),
            "the error names what differs and both choices: {said}"
        );
        eprintln!("refused resume answered in {took:?}");
        assert_eq!(
            env.count_events("m", "resuming") + env.count_events("m", "booting"),
            launches,
            "nothing was launched"
        );
        assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
        let now: Vec<String> = [
            "saved-state.json",
            "saved-state.bin",
            "guest-ram",
            "disk.qcow2",
        ]
        .iter()
        .map(|f| sha256_of(&dir.join(f)))
        .collect();
        assert_eq!(now, sums, "the state, its RAM and the disk are untouched");
    }

    // Set back, it resumes: the kept state was whole.
    std::fs::write(dir.join("vmkeep.yaml"), &config).unwrap();
    resume(&env, "m");
    same_guest(&env, "m", &guest, Duration::ZERO);
    env.run_within(&["stop", "m"], SHORT);
}

#[test]
fn vm_guest_clock_is_right_again_shortly_after_qemu_was_frozen() {
    let env = TestEnv::new();
    env.create("c", TINY);
    env.run_within(&["start", "c"], BOOT);
    // Put the guest's clock 30 s behind (inside the guest: `vmkeep shell`),
    // and freeze QEMU for 20 s right after.
    env.shell("c", "date -s @$(( $(date +%s) - 30 )) >/dev/null");
    let qemu = env.qemu("c").expect("QEMU runs");
    qemu.signal(rustix::process::Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    qemu.signal(rustix::process::Signal::CONT).unwrap();
    let thawed = Instant::now();
    // The keeper looks once a second; the measurement itself takes a few
    // round trips.
    let (offset, uncertainty) = clock_settles(&env, "c", Duration::from_secs(3));
    eprintln!(
        "guest clock {:.1} ms (± {:.1}) off the host's {:?} after SIGCONT",
        offset * 1e3,
        uncertainty * 1e3,
        thawed.elapsed()
    );
    assert!(
        env.count_events("c", "guest-clock-set") >= 1,
        "the agent stepped the clock: {:?}",
        env.events("c")
    );
    env.run_within(&["stop", "c"], SHORT);
}

/// A suspended instance as a user meets it: `list` says Suspended, a
/// command in it is refused (naming the way back), `stop` resumes it so
/// that the guest powers off by its own ladder and writes what it held
/// only in memory, `stop --force` and `start --discard-state` throw the
/// saved state away (said and journaled) and the next start boots afresh.
#[test]
fn vm_suspended_instance_is_listed_refuses_commands_and_stops_without_losing_writes() {
    let env = TestEnv::new();
    env.create("p", TINY);
    let guest = boot_and_prepare(&env, "p");
    // The guest writes back only when told: what it writes now stays in
    // its page cache until something syncs it.
    env.shell(
        "p",
        "echo 0 > /proc/sys/vm/dirty_writeback_centisecs && \
         echo 360000 > /proc/sys/vm/dirty_expire_centisecs && \
         echo 'only in memory' > /data/unsynced",
    );
    suspend(&env, "p");
    assert_eq!(env.status("p"), "Suspended");

    let refused = env.run(&["shell", "p", "--", "true"]);
    assert_eq!(refused.code(), Some(5), "{}", refused.describe());
    assert!(
        refused
            .stderr()
            .contains("p is Suspended, not Running; `vmkeep start p` resumes it"),
        "{}",
        refused.describe()
    );
    let again = env.run(&["suspend", "p"]);
    assert_eq!(again.code(), Some(5), "{}", again.describe());
    assert!(
        again.stderr().contains("suspended already"),
        "{}",
        again.describe()
    );
    assert_eq!(env.status("p"), "Suspended", "refusals changed nothing");

    // `stop` resumes, then powers the guest off by its ladder.
    let stop = env.run_within(&["stop", "p"], BOOT);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert!(
        stop.stderr().contains("p is suspended: resuming it"),
        "{}",
        stop.describe()
    );
    assert_eq!(env.status("p"), "Stopped");
    assert_eq!(env.last_stopped("p")["by"], "power-button");
    assert_eq!(saved_state_files(&env, "p"), Vec::<String>::new());
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);

    env.run_within(&["start", "p"], BOOT);
    assert_ne!(
        env.boot_id("p"),
        guest.boot_id,
        "a stopped guest boots afresh"
    );
    assert_eq!(
        env.shell("p", "cat /data/unsynced"),
        "only in memory",
        "what the guest held in memory when suspended reached its disk"
    );

    // `stop --force` on a suspended instance discards the state: said and
    // journaled, and nothing of it is left.
    suspend(&env, "p");
    let discarded_before = env.count_events("p", "state-discarded");
    let force = env.run_within(&["stop", "--force", "p"], SHORT);
    assert_eq!(force.code(), Some(0), "{}", force.describe());
    assert!(
        force.stderr().contains("discarded the saved state of p"),
        "{}",
        force.describe()
    );
    assert_eq!(
        env.count_events("p", "state-discarded"),
        discarded_before + 1
    );
    assert_eq!(env.status("p"), "Stopped");
    assert_eq!(saved_state_files(&env, "p"), Vec::<String>::new());
    assert!(!common::names(&env.instance_dir("p")).contains(&"guest-ram".to_string()));

    // `start --discard-state` boots afresh instead of resuming.
    env.run_within(&["start", "p"], BOOT);
    let booted = env.boot_id("p");
    suspend(&env, "p");
    let fresh = env.run_within(&["start", "--discard-state", "p"], BOOT);
    assert_eq!(fresh.code(), Some(0), "{}", fresh.describe());
    assert!(
        fresh.stderr().contains("discarded the saved state of p")
            && !fresh.stderr().contains("resuming the state saved at"),
        "{}",
        fresh.describe()
    );
    assert_ne!(env.boot_id("p"), booted, "it booted afresh");
    assert_eq!(env.shell("p", "cat /data/marker"), "intact");
    env.run_within(&["stop", "p"], SHORT);
    assert_eq!(env.wait_no_processes(Duration::from_secs(5)), vec![]);
}
