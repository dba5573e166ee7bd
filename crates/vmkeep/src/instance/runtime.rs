//! Runtime files: what a running instance's processes create in its
//! directory (`*.pid`, `*.sock`, `*.port`) and a stopped one should not
//! have, and the temporaries of unfinished atomic writes (`.NAME.tmp-PID-N`).
//!
//! One cleanup for everyone (a starting host agent, `stop`, `stop --force`):
//! runtime files are removed only by whoever holds the instance's agent
//! lock (so no agent can be running), and a temporary only when it is
//! provably abandoned: its writer (the pid in its name) is gone and it has
//! not changed for a while. A live `vmkeep start` writing the desired state
//! next to a starting agent keeps its file.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::layout::InstanceDir;

/// A temporary whose writer is gone is removed only once it is this old:
/// a writer in another pid namespace (a container sharing the directory)
/// looks gone but is not.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// What a file in an instance directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Made by a running process (pid file, socket, port).
    Runtime,
    /// An atomic write in progress, or abandoned, by process `writer`.
    Temporary { writer: Option<u32> },
    /// Anything else: config, disk, journal, logs, records.
    State,
}

/// Classify a file name (pure).
pub fn kind(file_name: &str) -> FileKind {
    if let Some((_, tail)) = file_name.split_once(".tmp-") {
        let writer = tail.split('-').next().and_then(|pid| pid.parse().ok());
        return FileKind::Temporary { writer };
    }
    if file_name.ends_with(".pid") || file_name.ends_with(".sock") || file_name.ends_with(".port") {
        return FileKind::Runtime;
    }
    FileKind::State
}

/// Names of the runtime files present (not temporaries), sorted.
pub fn runtime_files(dir: &InstanceDir) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = file_names(dir.dir())?
        .into_iter()
        .filter(|n| kind(n) == FileKind::Runtime)
        .collect();
    names.sort();
    Ok(names)
}

/// Remove the runtime files (except the agent lock, which its holder
/// removes last) and the abandoned temporaries. The caller holds the agent
/// lock. Returns the names removed.
pub fn remove_leftovers(dir: &InstanceDir) -> io::Result<Vec<String>> {
    let lock = dir.agent_lock();
    let mut removed = Vec::new();
    for name in file_names(dir.dir())? {
        let path = dir.dir().join(&name);
        let remove = match kind(&name) {
            FileKind::Runtime => path != lock,
            FileKind::Temporary { writer } => abandoned(&path, writer),
            FileKind::State => false,
        };
        if remove && crate::os::fs::remove_file_if_exists(&path)? {
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether a temporary is provably abandoned: its writer is not alive and
/// it has not been touched for [`ABANDONED_AFTER`]. (A recycled pid makes a
/// dead writer look alive, which only keeps the file longer.)
fn abandoned(path: &Path, writer: Option<u32>) -> bool {
    let writer_alive = writer.is_some_and(crate::os::process::pid_exists);
    let age = crate::os::fs::age(path);
    !writer_alive && age.is_some_and(|age| age >= ABANDONED_AFTER)
}

fn file_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_classified_by_name() {
        for runtime in [
            "ha.pid", "qemu.pid", "qmp.sock", "ha.sock", "ga.sock", "ssh.port",
        ] {
            assert_eq!(kind(runtime), FileKind::Runtime, "{runtime}");
        }
        assert_eq!(
            kind(".desired-state.tmp-4242-0"),
            FileKind::Temporary { writer: Some(4242) }
        );
        assert_eq!(
            kind(".events.jsonl.tmp-x-0"),
            FileKind::Temporary { writer: None }
        );
        for kept in [
            "vmkeep.yaml",
            "disk.qcow2",
            "data-disk.new",
            "events.jsonl",
            "ha.log",
            "serial.log",
            "serial.log.1",
            "events.jsonl.1",
            "events.jsonl.lock",
            "ha.log.1",
            "autostart.log",
            "qemu.log.1",
            "image.json",
            "cidata.img",
            "pidfile-notes.txt",
            "guest-ram",
            "saved-state.json",
            "saved-state.bin",
        ] {
            assert_eq!(kind(kept), FileKind::State, "{kept}");
        }
    }

    #[test]
    fn a_live_writers_temporary_is_kept_and_an_old_abandoned_one_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(root.path(), "t".parse().unwrap()).unwrap();
        std::fs::create_dir_all(dir.dir()).unwrap();
        let live = dir
            .dir()
            .join(format!(".desired-state.tmp-{}-0", std::process::id()));
        std::fs::write(&live, "running").unwrap();
        // A writer that cannot exist: pids are below pid_max.
        let gone_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let fresh = dir.dir().join(format!(".x.tmp-{gone_pid}-0"));
        let old = dir.dir().join(format!(".y.tmp-{gone_pid}-1"));
        for path in [&fresh, &old] {
            std::fs::write(path, "x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * ABANDONED_AFTER;
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        std::fs::write(dir.agent_lock(), "").unwrap();
        std::fs::write(dir.qmp_socket(), "").unwrap();
        let removed = remove_leftovers(&dir).unwrap();
        assert_eq!(
            removed,
            [format!(".y.tmp-{gone_pid}-1"), "qmp.sock".to_string()]
        );
        assert!(live.exists(), "a live writer's file is never removed");
        assert!(fresh.exists(), "a recent one is given time");
        assert!(
            dir.agent_lock().exists(),
            "the lock is its holder's to remove"
        );
        assert_eq!(runtime_files(&dir).unwrap(), ["ha.pid"]);
    }
}
