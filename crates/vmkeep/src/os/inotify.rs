//! Watching directories with inotify (for Lima's `mountInotify`): one
//! inotify instance, a watch per directory, never following a symlink, for
//! files written and closed, attributes changed, and entries made, removed
//! or moved; events read in batches with a timeout.

//!
//! inotify is Linux's: on other hosts [`DirWatcher::new`] fails with
//! `Unsupported` (mountInotify relays events into shares, which need
//! virtiofsd, itself Linux only).

use std::ffi::OsString;
use std::io;
#[cfg(target_os = "linux")]
use std::mem::MaybeUninit;
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
#[cfg(target_os = "linux")]
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::Duration;

#[cfg(target_os = "linux")]
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// What one event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventFlags {
    /// The entry is a directory.
    pub is_dir: bool,
    /// A file opened for writing was closed.
    pub written: bool,
    /// Attributes changed (times, mode, owner).
    pub attrib: bool,
    pub created: bool,
    pub deleted: bool,
    pub moved_from: bool,
    pub moved_to: bool,
    /// The watched directory itself was removed or moved.
    pub self_gone: bool,
    /// The watch was removed (its directory went, or it was unwatched).
    pub ignored: bool,
    /// The kernel's queue overflowed: events were lost.
    pub overflow: bool,
}

/// One event of a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEvent {
    pub wd: i32,
    /// The entry of the directory it is about (none: the directory itself).
    pub name: Option<OsString>,
    /// Pairs a `moved_from` with its `moved_to`.
    pub cookie: u32,
    pub flags: EventFlags,
}

/// Most bytes of events read at once.
#[cfg(target_os = "linux")]
const READ_BYTES: usize = 64 * 1024;

/// An inotify instance watching directories.
#[derive(Debug)]
pub struct DirWatcher {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fd: OwnedFd,
}

#[cfg(not(target_os = "linux"))]
impl DirWatcher {
    pub fn new() -> io::Result<DirWatcher> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "watching directories (mountInotify) needs Linux's inotify",
        ))
    }

    pub fn watch(&self, _dir: &Path) -> io::Result<i32> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn unwatch(&self, _wd: i32) {}

    pub fn wait(&self, _timeout: Duration) -> io::Result<Vec<DirEvent>> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
impl DirWatcher {
    pub fn new() -> io::Result<DirWatcher> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(DirWatcher { fd })
    }

    /// Watch directory `dir` (not through a symlink); its watch descriptor
    /// (the same one again for a directory already watched).
    pub fn watch(&self, dir: &Path) -> io::Result<i32> {
        let flags = WatchFlags::CLOSE_WRITE
            | WatchFlags::ATTRIB
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW
            | WatchFlags::EXCL_UNLINK;
        Ok(inotify::add_watch(&self.fd, dir, flags)?)
    }

    /// Stop watching `wd` (an `ignored` event follows).
    pub fn unwatch(&self, wd: i32) {
        let _ = inotify::remove_watch(&self.fd, wd);
    }

    /// The events there are, waiting up to `timeout` for the first one.
    pub fn wait(&self, timeout: Duration) -> io::Result<Vec<DirEvent>> {
        let mut poll = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match rustix::event::poll(&mut poll, Some(&timeout)) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        let mut buf = vec![MaybeUninit::uninit(); READ_BYTES];
        let mut reader = inotify::Reader::new(self.fd.as_fd(), &mut buf);
        let mut events = Vec::new();
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            let has = |flag: ReadFlags| event.events().contains(flag);
            events.push(DirEvent {
                wd: event.wd(),
                name: event
                    .file_name()
                    .map(|n| OsString::from_vec(n.to_bytes().to_vec()))
                    .filter(|n| !n.is_empty()),
                cookie: event.cookie(),
                flags: EventFlags {
                    is_dir: has(ReadFlags::ISDIR),
                    written: has(ReadFlags::CLOSE_WRITE),
                    attrib: has(ReadFlags::ATTRIB),
                    created: has(ReadFlags::CREATE),
                    deleted: has(ReadFlags::DELETE),
                    moved_from: has(ReadFlags::MOVED_FROM),
                    moved_to: has(ReadFlags::MOVED_TO),
                    self_gone: has(ReadFlags::DELETE_SELF) || has(ReadFlags::MOVE_SELF),
                    ignored: has(ReadFlags::IGNORED),
                    overflow: has(ReadFlags::QUEUE_OVERFLOW),
                },
            });
            // A batch at a time: the caller comes back for the rest.
            if events.len() >= READ_BYTES / 16 {
                break;
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_directory_reports_writes_makes_moves_and_removals_not_modifies() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = DirWatcher::new().unwrap();
        let wd = watcher.watch(dir.path()).unwrap();
        assert_eq!(watcher.watch(dir.path()).unwrap(), wd, "the same watch");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::rename(&file, dir.path().join("g")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::remove_file(dir.path().join("g")).unwrap();
        let mut events = Vec::new();
        while let Ok(batch) = watcher.wait(Duration::from_millis(200)) {
            if batch.is_empty() {
                break;
            }
            events.extend(batch);
        }
        let named = |name: &str, pick: fn(&EventFlags) -> bool| {
            events
                .iter()
                .any(|e| e.name.as_deref() == Some(name.as_ref()) && pick(&e.flags))
        };
        assert!(
            named("f", |f| f.created) && named("f", |f| f.written),
            "{events:?}"
        );
        assert!(
            named("f", |f| f.moved_from) && named("g", |f| f.moved_to),
            "{events:?}"
        );
        assert!(named("d", |f| f.created && f.is_dir), "{events:?}");
        assert!(named("g", |f| f.deleted), "{events:?}");
        let from = events.iter().find(|e| e.flags.moved_from).unwrap();
        let to = events.iter().find(|e| e.flags.moved_to).unwrap();
        assert_eq!(from.cookie, to.cookie);

        // A change of the modification time alone (what the guest's touch
        // does) raises IN_MODIFY only, which is not watched: no echo.
        let d = dir.path().join("d");
        let times = std::fs::FileTimes::new().set_modified(std::time::SystemTime::now());
        std::fs::File::open(&d).unwrap().set_times(times).unwrap();
        assert_eq!(watcher.wait(Duration::from_millis(200)).unwrap(), []);
        // A symlink to a directory is not watched through.
        std::os::unix::fs::symlink(&d, dir.path().join("link")).unwrap();
        assert!(watcher.watch(&dir.path().join("link")).is_err());
    }
}
