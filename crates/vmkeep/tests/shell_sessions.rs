//! `vmkeep shell` and `vmkeep copy` on real VMs (the tiny image; the cloud
//! tier is `cloud_image.rs`): streamed output and input, byte-exact at
//! size with the host agent's memory measured, a command answering stdin
//! line by line, exit codes and signals, a client that goes away, a broken
//! session, a real pty (typed input, a resize, Ctrl-C, the exit code),
//! Lima's habits (no `--`, `--workdir`, the directory rule, `lima`), the
//! instance's hostname, copies both ways, copyToHost of a symlink and a
//! fifo; one of them as a normal user.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestEnv;
use common::terminal::Terminal;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// A tiny instance `name`, started.
fn started(env: &TestEnv, name: &str, yaml: &str) {
    env.create(name, yaml);
    let start = env.run_within(&["start", name], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
}

/// The host agent's resident memory: (now, peak since the last reset), KiB.
fn agent_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the peak-RSS mark of a process (`clear_refs` 5).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// 128 MiB out of the guest and 64 MiB into it, byte-exact, with the host
/// agent's peak memory measured while they stream.
fn streams_are_byte_exact_in_bounded_memory(env: &TestEnv, name: &str) {
    let agent = env.agent(name).expect("the host agent runs").pid();
    let made = env.ok(&[
        "shell",
        name,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/r bs=1M count=128 2>/dev/null && sha256sum /data/r",
    ]);
    let guest_sum = made.stdout().split_whitespace().next().unwrap().to_string();
    let (before, _) = agent_rss_kib(agent);
    reset_peak(agent);
    let mut out = env
        .command(&["shell", name, "cat", "/data/r"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut stdout = out.stdout.take().unwrap();
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    assert!(out.wait().unwrap().success());
    assert_eq!(total, 128 * MIB);
    assert_eq!(hex::encode(hasher.finalize()), guest_sum, "byte-exact out");
    let (_, peak_out) = agent_rss_kib(agent);

    // 64 MiB in, through stdin.
    reset_peak(agent);
    let mut input = vec![0u8; (64 * MIB) as usize];
    for (i, chunk) in input.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    let mut into = env
        .command(&["shell", name, "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = into.stdin.take().unwrap();
    let sending = {
        let input = input.clone();
        std::thread::spawn(move || stdin.write_all(&input).unwrap())
    };
    let answer = into.wait_with_output().unwrap();
    sending.join().unwrap();
    assert!(answer.status.success());
    let said = String::from_utf8_lossy(&answer.stdout);
    assert_eq!(
        said.split_whitespace().next(),
        Some(sha256_hex(&input).as_str()),
        "byte-exact in"
    );
    let (_, peak_in) = agent_rss_kib(agent);
    eprintln!(
        "host agent RSS: {before} KiB before; peak {peak_out} KiB while 128 MiB streamed out, {peak_in} KiB while 64 MiB streamed in"
    );
    // The agent holds a session's credit windows (256 KiB per stream) and
    // a line at a time, whatever the size: its peak barely moves.
    for peak in [peak_out, peak_in] {
        assert!(
            peak <= before + 4 * 1024,
            "the host agent grew from {before} to {peak} KiB"
        );
    }
}

/// A command's output arrives as it is written, and its stdin as it is
/// sent: each line is answered before the next is sent (no output held
/// back until the end, no input held back until EOF).
fn lines_stream_both_ways(env: &TestEnv, name: &str) {
    let mut child = env
        .command(&[
            "shell",
            name,
            "sh",
            "-c",
            "echo ready; while read line; do echo \"got $line\"; done; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    // Read before anything is sent: the command is still running.
    assert_eq!(next(), "ready");
    for word in ["one", "two", "three"] {
        writeln!(stdin, "{word}").unwrap();
        stdin.flush().unwrap();
        assert_eq!(next(), format!("got {word}"));
    }
    drop(stdin);
    assert_eq!(next(), "done");
    assert!(child.wait().unwrap().success());
}

/// Exit codes: the command's, 128+N for signal N, 127 for a command not
/// found; signals to `vmkeep shell` reach the command.
fn exit_codes_and_signals(env: &TestEnv, name: &str) {
    let code = |args: &[&str]| env.run(args).code();
    assert_eq!(code(&["shell", name, "sh", "-c", "exit 3"]), Some(3));
    assert_eq!(code(&["shell", name, "sh", "-c", "kill -9 $$"]), Some(137));
    let missing = env.run(&["shell", name, "no-such-command"]);
    assert_eq!(missing.code(), Some(127), "{}", missing.describe());
    assert!(
        missing.stderr().contains("no-such-command"),
        "{}",
        missing.describe()
    );

    for (signal, number) in [(libc::SIGINT, 2), (libc::SIGTERM, 15), (libc::SIGHUP, 1)] {
        let mut child = env
            .command(&["shell", name, "sh", "-c", "echo ready; exec sleep 1000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        // SAFETY: kill(2) of our own child by its pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + number), "signal {number}");
    }
    // vmkeep's own stdout closed (`| head`): SIGPIPE's code, no message,
    // and the endless command is hung up.
    let mut child = env
        .command(&["shell", name, "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&done.stderr), "");
    // A trap in the command sees the signal and decides the code.
    let mut child = env
        .command(&[
            "shell",
            name,
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

/// Whether process `pid` lives in the guest.
fn guest_process_lives(env: &TestEnv, name: &str, pid: &str) -> bool {
    env.run(&["shell", name, "kill", "-0", pid]).code() == Some(0)
}

/// A client killed with SIGKILL ends its command (the guest hangs it up),
/// and what the user put in the background with nohup lives on.
fn a_client_that_goes_away_ends_its_command(env: &TestEnv, name: &str) {
    let mut child = env.spawn(&[
        "shell",
        name,
        "sh",
        "-c",
        // nohup, as the tiny image's busybox (without that applet) can.
        "(trap '' HUP; exec sleep 1000) >/dev/null 2>&1 & echo $! $$; exec sleep 1000",
    ]);
    let mut line = String::new();
    BufReader::new(child.child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<String> = line.split_whitespace().map(String::from).collect();
    let (nohuped, command) = (&pids[0], &pids[1]);
    assert!(guest_process_lives(env, name, command));
    child.kill9();
    let gone = common::wait_until(SHORT, || {
        (!guest_process_lives(env, name, command)).then_some(())
    });
    assert!(gone.is_some(), "the command outlived its client");
    assert!(
        guest_process_lives(env, name, nohuped),
        "a nohup'd process is the user's to keep"
    );
    env.ok(&["shell", name, "kill", nohuped]);
}

/// A session whose host agent dies says so and exits 255; the next start
/// adopts the VM and the guest has hung the command up.
fn a_broken_session_says_so(env: &TestEnv, name: &str) {
    let mut child = env.spawn(&["shell", name, "sh", "-c", "echo $$; exec sleep 1000"]);
    let mut line = String::new();
    BufReader::new(child.child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line.trim().to_string();
    let agent = env.agent(name).expect("the host agent runs");
    agent.kill().unwrap();
    let run = child.wait_within(SHORT);
    assert_eq!(run.code(), Some(255), "{}", run.describe());
    assert!(
        run.stderr().contains("the session broke") && run.stderr().contains("host agent"),
        "{}",
        run.describe()
    );
    let start = env.run_within(&["start", name], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    let gone = common::wait_until(SHORT, || {
        (!guest_process_lives(env, name, &pid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the guest hung the command up when its link went"
    );
}

/// `vmkeep shell NAME` on a real terminal: a login shell (root in `/`,
/// the instance's hostname in the prompt), typed input, the size and a
/// resize seen by `stty size`, Ctrl-C interrupting a `sleep`, the exit code,
/// and the terminal as it was afterwards.
fn a_login_shell_on_a_pty(env: &TestEnv, name: &str) {
    let (mut terminal, mut child) = Terminal::spawn(env, &["shell", name], 30, 100);
    terminal.until(&format!("root@{name}:/# "));
    terminal.type_in(b"stty size; echo $((6*7))\r");
    let said = terminal.until("42");
    assert!(said.contains("30 100"), "{said:?}");
    terminal.until("# ");
    terminal.resize(40, 120);
    // The new size reaches the guest with SIGWINCH; ask until it did.
    let resized = common::wait_until(SHORT, || {
        terminal.type_in(b"stty size\r");
        let said = terminal.until("# ");
        said.contains("40 120").then_some(())
    });
    assert!(resized.is_some(), "the resize never reached the guest");
    terminal.type_in(b"sleep 1000\r");
    terminal.until("sleep 1000\r\n");
    // Ctrl-C once the sleep runs (until then the line editor takes it):
    // the prompt comes back, and `$?` says SIGINT ended the sleep.
    let interrupted = common::wait_until(SHORT, || {
        terminal.type_in(b"\x03");
        std::thread::sleep(Duration::from_millis(300));
        while let Ok(bytes) = terminal.seen.try_recv() {
            terminal.text.push_str(&String::from_utf8_lossy(&bytes));
        }
        terminal.text[terminal.taken..].contains("# ").then_some(())
    });
    assert!(interrupted.is_some(), "Ctrl-C did not end the sleep");
    terminal.until("# ");
    terminal.type_in(b"echo status $?\r");
    terminal.until("status 130");
    terminal.type_in(b"exit 7\r");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    // The terminal is back in cooked mode (vmkeep put it back).
    // SAFETY: tcgetattr on an open master fills a termios.
    let mut modes: libc::termios = unsafe { std::mem::zeroed() };
    unsafe { libc::tcgetattr(terminal.master.as_raw_fd(), &mut modes) };
    assert_ne!(modes.c_lflag & libc::ICANON, 0, "the terminal is still raw");
    assert_ne!(modes.c_lflag & libc::ECHO, 0, "the terminal is still raw");
}

/// Lima's habits: no `--`, `--workdir`, the instance's hostname, `lima`.
fn limas_habits(env: &TestEnv, name: &str) {
    let uname = env.ok(&["shell", name, "uname", "-n"]);
    assert_eq!(uname.stdout().trim(), name);
    let dashed = env.ok(&["shell", name, "--", "sh", "-c", "echo $0", "zero"]);
    assert_eq!(dashed.stdout().trim(), "zero");
    let here = env.ok(&["shell", "--workdir", "/proc", name, "pwd"]);
    assert_eq!(here.stdout().trim(), "/proc");
    let home = env.ok(&["shell", name, "pwd"]);
    assert_eq!(
        home.stdout().trim(),
        "/",
        "the tiny image's sessions start in /"
    );
    let missing = env.run(&["shell", "--workdir", "/nowhere", name, "pwd"]);
    assert_eq!(missing.code(), Some(1), "{}", missing.describe());
    assert!(
        missing.stderr().contains("/nowhere"),
        "{}",
        missing.describe()
    );
    let dir = tempfile::tempdir().unwrap();
    let lima = dir.path().join("lima");
    std::os::unix::fs::symlink(common::VMKEEP, &lima).unwrap();
    let out = Command::new(&lima)
        .args(["sh", "-c", "echo from $(hostname)"])
        .env("VMKEEP_HOME", env.home())
        .env("VMKEEP_CACHE_DIR", common::shared_cache())
        .env("LIMA_INSTANCE", name)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("from {name}")
    );
}

#[test]
fn vm_shell_streams_both_ways_with_exit_codes_signals_and_a_real_pty() {
    let env = TestEnv::new();
    started(&env, "s", "stopTimeout: 10s\n");
    streams_are_byte_exact_in_bounded_memory(&env, "s");
    lines_stream_both_ways(&env, "s");
    exit_codes_and_signals(&env, "s");
    a_client_that_goes_away_ends_its_command(&env, "s");
    a_login_shell_on_a_pty(&env, "s");
    limas_habits(&env, "s");
    a_broken_session_says_so(&env, "s");
    // A guest reset under a session (`reboot -f`: no process is stopped
    // first) loses the link: the session ends, saying why.
    let mut child = env.spawn(&["shell", "s", "sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = env.run(&["shell", "s", "reboot", "-f"]);
    let run = child.wait_within(BOOT);
    assert_eq!(run.code(), Some(255), "{}", run.describe());
    assert!(run.stderr().contains("link was lost"), "{}", run.describe());
    child = env.spawn(&["shell", "s", "true"]);
    assert_eq!(
        child.wait_within(BOOT).code(),
        Some(0),
        "back after the reboot"
    );
    env.ok(&["stop", "s"]);
    let stopped = env.run(&["shell", "s", "true"]);
    assert_eq!(stopped.code(), Some(5), "{}", stopped.describe());
}

/// What a tree holds: path, kind, mode, mtime, content or target.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&path).unwrap().display()
                ));
            } else if meta.is_dir() {
                out.push(format!(
                    "{rel}/ {:o} {}",
                    meta.mode() & 0o7777,
                    meta.mtime()
                ));
                walk(root, &path, out);
            } else {
                let sum = sha256_hex(&std::fs::read(&path).unwrap());
                out.push(format!(
                    "{rel} {:o} {} {sum}",
                    meta.mode() & 0o7777,
                    meta.mtime()
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// A tree with a file, a big file, an empty directory, a symlink, modes
/// and mtimes of its own.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    std::fs::write(root.join("a.txt"), "hello\n").unwrap();
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut big = vec![0u8; (24 * MIB) as usize];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(root.join("sub/big.bin"), &big).unwrap();
    std::fs::set_permissions(
        root.join("sub/big.bin"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for file in ["a.txt", "sub/big.bin"] {
        std::fs::File::options()
            .write(true)
            .open(root.join(file))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

/// A tree into the guest and back, files and modes and mtimes kept; a file
/// alone; errors for a missing path on either side.
fn copies_both_ways(env: &TestEnv, name: &str, work: &Path) {
    let tree = work.join("tree");
    make_tree(&tree);
    env.ok(&[
        "copy",
        "-r",
        tree.to_str().unwrap(),
        &format!("{name}:/data/"),
    ]);
    let guest = env.ok(&[
        "shell",
        name,
        "sh",
        "-c",
        "cd /data/tree && ls -l a.txt && readlink sub/link",
    ]);
    assert!(
        guest.stdout().starts_with("-rw-r-----"),
        "{}",
        guest.describe()
    );
    assert!(guest.stdout().contains("../a.txt"), "{}", guest.describe());
    let back = work.join("back");
    env.ok(&[
        "cp",
        "-r",
        &format!("{name}:/data/tree"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(listing(&back), listing(&tree));
    // One file, to a new name; relative guest paths are in the home (/).
    env.ok(&[
        "copy",
        tree.join("a.txt").to_str().unwrap(),
        &format!("{name}:data/one.txt"),
    ]);
    let one = work.join("one.txt");
    env.ok(&[
        "copy",
        &format!("{name}:/data/one.txt"),
        one.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "hello\n");
    // Missing paths, a directory without -r.
    let missing = env.run(&[
        "copy",
        &format!("{name}:/data/nothing"),
        work.to_str().unwrap(),
    ]);
    assert_eq!(missing.code(), Some(1), "{}", missing.describe());
    assert!(
        missing
            .stderr()
            .contains("/data/nothing: no such file or directory"),
        "{}",
        missing.describe()
    );
    let nothing = work.join("nothing");
    let missing = env.run(&["copy", nothing.to_str().unwrap(), &format!("{name}:/data")]);
    assert_eq!(missing.code(), Some(1), "{}", missing.describe());
    assert!(
        missing.stderr().contains("nothing"),
        "{}",
        missing.describe()
    );
    let dir = env.run(&["copy", tree.to_str().unwrap(), &format!("{name}:/data")]);
    assert_eq!(dir.code(), Some(2), "{}", dir.describe());
    assert!(dir.stderr().contains("-r"), "{}", dir.describe());
}

#[test]
fn vm_copy_both_ways_and_copy_to_host_of_a_symlink_and_a_fifo() {
    let env = TestEnv::new();
    started(&env, "c", "stopTimeout: 10s\n");
    let work = tempfile::tempdir().unwrap();
    copies_both_ways(&env, "c", work.path());
    // copyToHost: a symlink is resolved in the guest, a fifo is refused
    // (the start fails, saying so), deleteOnStop removes the copy.
    env.ok(&[
        "shell",
        "c",
        "sh",
        "-c",
        "echo kubeconfig > /data/real && ln -s /data/real /data/link && mkfifo /data/fifo && sync",
    ]);
    env.ok(&["stop", "c"]);
    let config = env.instance_dir("c").join("vmkeep.yaml");
    std::fs::write(
        &config,
        "stopTimeout: 10s\ncopyToHost:\n- guest: /data/link\n  host: \"{{.Dir}}/copied-from-guest/kubeconfig.yaml\"\n  deleteOnStop: true\n\
         - guest: /data/absent\n  host: absent\n  skipIfMissing: true\n",
    )
    .unwrap();
    let start = env.run_within(&["start", "c"], BOOT);
    assert_eq!(start.code(), Some(0), "{}", start.describe());
    let copied = env
        .instance_dir("c")
        .join("copied-from-guest/kubeconfig.yaml");
    let meta = std::fs::symlink_metadata(&copied).unwrap();
    assert!(meta.is_file(), "the link's target was copied, not the link");
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "kubeconfig\n");
    assert_eq!(
        std::fs::metadata(copied.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    assert!(!env.instance_dir("c").join("absent").exists());
    env.ok(&["stop", "c"]);
    assert!(!copied.exists(), "deleteOnStop");
    for (guest, says) in [("/data/fifo", "a fifo"), ("/data/absent", "does not exist")] {
        std::fs::write(
            &config,
            format!("stopTimeout: 10s\ncopyToHost:\n- guest: {guest}\n  host: x\n"),
        )
        .unwrap();
        let start = env.run_within(&["start", "c"], BOOT);
        assert_eq!(start.code(), Some(6), "{}", start.describe());
        assert!(
            start.stderr().contains(guest) && start.stderr().contains(says),
            "{}",
            start.describe()
        );
        assert!(!env.instance_dir("c").join("x").exists());
        env.wait_status("c", "Stopped", SHORT);
    }
}

#[test]
fn vm_shell_and_copy_as_a_normal_user() {
    skip_unless_root!();
    let user = common::host_user::test_user();
    let env = TestEnv::as_user(&user);
    started(&env, "u", "stopTimeout: 10s\n");
    lines_stream_both_ways(&env, "u");
    let work = tempfile::tempdir().unwrap();
    common::host_user::give(work.path(), &user);
    let file = work.path().join("f.txt");
    std::fs::write(&file, "as a user\n").unwrap();
    common::host_user::give(&file, &user);
    env.ok(&["copy", file.to_str().unwrap(), "u:/data/f.txt"]);
    let back = work.path().join("back.txt");
    env.ok(&["copy", "u:/data/f.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "as a user\n");
    assert_eq!(
        common::host_user::owner(&back),
        user.uid,
        "the copy is the user's"
    );
    let agent = env.agent("u").unwrap();
    let owner = std::fs::metadata(format!("/proc/{}", agent.pid()))
        .unwrap()
        .uid();
    assert_eq!(owner, user.uid, "the host agent is the user's");
}
