//! Liveness locks: a POSIX record lock held for a process's whole life.
//!
//! A held lock proves its holder is alive, and the kernel names the holder
//! (`F_GETLK`), so liveness never rests on a pid written in a file that may
//! be stale or reused. QEMU locks its own `-pidfile` the same way, which is
//! why vmkeep uses POSIX (`fcntl`) locks rather than `flock`.
//!
//! POSIX locks have one trap: closing *any* descriptor of the locked file in
//! the holding process drops the lock. [`holder`] therefore never opens a
//! file that this process holds a lock on; it answers from a registry of the
//! locks this process holds.
//!
//! The same locks guard temporaries (directories built beside their place
//! and renamed into it): [`lock_temp_sibling`] for the builder,
//! [`remove_abandoned_temporaries`] for the sweep of those whose builder died.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[cfg(target_os = "linux")]
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::fs::{FlockOperation, fcntl_lock};
use rustix::process::{Flock, FlockOffsetType, FlockType, Pid, fcntl_getlk};

use super::fs::{entry_names, remove_dir_all_if_exists, temp_sibling};

/// Appended to a temporary's name to name its builder's lock.
const TEMP_LOCK_SUFFIX: &str = ".lock";

/// (device, inode) of every lock this process holds.
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// An exclusive lock on a file, held until dropped.
#[derive(Debug)]
pub struct HeldLock {
    file: File,
    path: PathBuf,
    id: (u64, u64),
}

impl HeldLock {
    /// Take the lock on `path` (created 0600 if missing) without waiting.
    /// `Ok(None)` means another live process holds it.
    ///
    /// A missing file is created already locked (an unnamed file, locked,
    /// then linked in), so the path never names an unlocked file while its
    /// creator lives: an observer cannot mistake a host agent that is just
    /// starting for a stale file left by a dead one.
    pub fn try_acquire(path: &Path) -> io::Result<Option<HeldLock>> {
        // The file may be unlinked and re-created by a holder that is exiting:
        // a lock on an inode that no longer has our path proves nothing, so
        // retry on the new one.
        for _ in 0..16 {
            let file = match OpenOptions::new().read(true).write(true).open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match create_locked(path) {
                    Ok(Some(held)) => return Ok(Some(held)),
                    // Another process linked its file first: contend for that one.
                    Ok(None) => continue,
                    Err(e) if cannot_create_unnamed(&e) => OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o600)
                        .open(path)?,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
            match fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::ACCESS) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let held = file.metadata()?;
            let id = (held.dev(), held.ino());
            match std::fs::metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == id => {
                    return Ok(Some(HeldLock::register(file, path, id)));
                }
                Ok(_) | Err(_) => continue,
            }
        }
        Err(io::Error::other(format!(
            "{} keeps being replaced while locking it",
            path.display()
        )))
    }

    fn register(file: File, path: &Path, id: (u64, u64)) -> HeldLock {
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        HeldLock {
            file,
            path: path.to_path_buf(),
            id,
        }
    }

    /// Record this process's pid in the lock file, for humans. Nothing trusts
    /// it: the lock itself names its holder.
    pub fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        (&self.file).write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Let the lock's descriptor survive an `execve` of this process (and
    /// with it the lock: a POSIX lock belongs to the process, which an exec
    /// keeps, and would only be dropped by the descriptor's close on exec).
    /// Returns the descriptor's number, for the new image's
    /// [`HeldLock::inherited`]. `keep = false` undoes it (the exec failed).
    pub fn keep_across_exec(&self, keep: bool) -> io::Result<i32> {
        let fd = self.raw_fd();
        keep_across_exec(fd, keep)?;
        Ok(fd)
    }

    /// The lock's descriptor number (for [`keep_across_exec`]).
    pub fn raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// The lock on `path` that this process's previous image held on
    /// descriptor `fd` and kept across its exec
    /// ([`HeldLock::keep_across_exec`]): checked to be `path`'s file and
    /// held by this process, registered, and made close-on-exec again.
    /// The lock is never let go in between.
    pub fn inherited(fd: i32, path: &Path) -> io::Result<HeldLock> {
        use std::os::fd::FromRawFd;
        if fd < 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} cannot be an inherited lock"),
            ));
        }
        // Valid and open? (F_GETFD fails on a closed descriptor.)
        // SAFETY: the number is only borrowed for the check.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_getfd(borrowed)?;
        // SAFETY: the descriptor is open and nothing else in this image
        // owns it: it was handed over by the previous image for this.
        let file = unsafe { File::from_raw_fd(fd) };
        let held = file.metadata()?;
        let id = (held.dev(), held.ino());
        let now = std::fs::metadata(path)?;
        if (now.dev(), now.ino()) != id {
            // Not ours to close: closing a descriptor of a locked file drops
            // the lock, so keep it open and refuse.
            std::mem::forget(file);
            return Err(io::Error::other(format!(
                "descriptor {fd} is not the lock file {}",
                path.display()
            )));
        }
        let lock = HeldLock::register(file, path, id);
        lock.keep_across_exec(false)?;
        Ok(lock)
    }

    /// Remove the lock file while still holding the lock, then release it.
    /// A process waiting for the lock re-checks the path and locks the new file.
    pub fn remove(self) -> io::Result<()> {
        super::fs::remove_file_if_exists(&self.path)?;
        Ok(())
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = held.iter().position(|id| *id == self.id) {
            held.swap_remove(index);
        }
        // Closing `file` (after this) releases the lock.
    }
}

/// Let descriptor `fd` (a [`HeldLock`]'s, by [`HeldLock::raw_fd`]) survive
/// an `execve` of this process, or (`keep = false`) be closed by one again.
pub fn keep_across_exec(fd: i32, keep: bool) -> io::Result<()> {
    use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
    // SAFETY: only borrowed for the two calls; the caller owns it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl_getfd(fd)?;
    let flags = match keep {
        true => flags - FdFlags::CLOEXEC,
        false => flags | FdFlags::CLOEXEC,
    };
    fcntl_setfd(fd, flags)?;
    Ok(())
}

/// No `O_TMPFILE` outside Linux: the file is created by name and locked
/// after (see [`cannot_create_unnamed`]).
#[cfg(not(target_os = "linux"))]
fn create_locked(_path: &Path) -> io::Result<Option<HeldLock>> {
    Err(rustix::io::Errno::OPNOTSUPP.into())
}

/// Create `path` as a file that is locked before it has a name: an
/// `O_TMPFILE` file in the same directory, locked, then linked to `path`.
/// `Ok(None)` when `path` appeared meanwhile.
#[cfg(target_os = "linux")]
fn create_locked(path: &Path) -> io::Result<Option<HeldLock>> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let fd = rustix::fs::open(
        parent,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let file = File::from(fd);
    // Nobody else can reach an unnamed file, so this cannot be contended.
    fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive)?;
    // Registered before it has a name: from the moment another thread of
    // this process can find it, [`holder`] answers that this process holds
    // it, and never opens it (closing that descriptor would release it).
    // Dropped unlinked (an error, or `path` appeared), it is unregistered.
    let meta = file.metadata()?;
    let held = HeldLock::register(file, path, (meta.dev(), meta.ino()));
    let unnamed = format!("/proc/self/fd/{}", held.file.as_raw_fd());
    match rustix::fs::linkat(CWD, unnamed.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(Some(held)),
        Err(rustix::io::Errno::EXIST) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether [`create_locked`] failed because this system cannot make or link
/// unnamed files (a filesystem without `O_TMPFILE`, no `/proc`), so the file
/// has to be created by name and locked after.
fn cannot_create_unnamed(error: &io::Error) -> bool {
    [
        rustix::io::Errno::OPNOTSUPP,
        rustix::io::Errno::ISDIR,
        rustix::io::Errno::INVAL,
        rustix::io::Errno::NOENT,
    ]
    .iter()
    .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

/// A `flock(2)` lock on a lock file that guards a file several processes
/// append to and one of them sometimes replaces (the journal and its
/// rotation): each takes it for its append, and the one that rotates does
/// so before letting it go. Unlike the liveness locks above these are BSD
/// locks, held per open file: two threads of one process exclude each other
/// too, and closing another descriptor of the file drops nothing. Released
/// when dropped (or when the holder dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// The lock on `path` (created 0600 if missing), waiting at most `wait`
    /// for its holder; `Ok(None)` if it did not let go by then.
    pub fn exclusive(path: &Path, wait: std::time::Duration) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let until = std::time::Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(FileLock { _file: file })),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The pid of the process holding a write-conflicting lock on `path`, if any.
/// A missing file has no holder. Never disturbs a lock this process holds.
pub fn holder(path: &Path) -> io::Result<Option<Pid>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if HELD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&(meta.dev(), meta.ino()))
    {
        return Ok(Some(rustix::process::getpid()));
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let probe = Flock {
        start: 0,
        length: 0,
        pid: None,
        typ: FlockType::WriteLock,
        offset_type: FlockOffsetType::Set,
    };
    match fcntl_getlk(&file, &probe)? {
        Some(lock) if lock.typ != FlockType::Unlocked => Ok(lock.pid),
        _ => Ok(None),
    }
}

/// The lock of a temporary made by [`temp_sibling`]: a sibling file,
/// `.NAME.tmp-PID-N.lock`.
pub fn temp_lock(temp: &Path) -> PathBuf {
    let mut name = temp.file_name().unwrap_or_default().to_os_string();
    name.push(TEMP_LOCK_SUFFIX);
    temp.with_file_name(name)
}

/// A new temporary sibling of `target` ([`temp_sibling`]), with nothing at
/// its path yet, and its lock, taken first: the builder creates the
/// temporary after this returns and removes the lock ([`HeldLock::remove`])
/// only after the temporary is gone (renamed into place or removed). See
/// [`remove_abandoned_temporaries`].
pub fn lock_temp_sibling(target: &Path) -> io::Result<(PathBuf, HeldLock)> {
    // A fresh name has a free lock unless a sweep holds the leftover of a
    // dead process that had our pid: then the next name will do.
    for _ in 0..16 {
        let temp = temp_sibling(target);
        if let Some(lock) = HeldLock::try_acquire(&temp_lock(&temp))? {
            // What is there (the same leftover) is provably abandoned: its lock is ours.
            remove_dir_all_if_exists(&temp)?;
            return Ok((temp, lock));
        }
    }
    Err(io::Error::other(format!(
        "the locks of new temporaries next to {} keep being held by others",
        target.display()
    )))
}

/// Remove the temporaries in `dir` (`.NAME.tmp-PID-N` directories) whose
/// builder is gone.
///
/// A builder links its lock in, already locked, *before* it makes its
/// temporary, and removes the lock only *after* the temporary is gone
/// ([`lock_temp_sibling`]). So a lock that this sweep can take itself was
/// left by a builder that died: the sweep removes the temporary, then the
/// lock, holding it all the while (no builder can take it meanwhile). A lock
/// held, by another process or a thread of this one, keeps its temporary.
/// Liveness is never judged from the pid in the name (pids are reused).
///
/// A temporary directory without a lock was made by a vmkeep that took none
/// (or kept it elsewhere): `unlocked_abandoned` says whether its builder is
/// gone. A lock is never created for it.
pub fn remove_abandoned_temporaries(dir: &Path, unlocked_abandoned: &dyn Fn(&Path) -> bool) {
    let Ok(names) = entry_names(dir) else {
        return;
    };
    for name in names {
        if !(name.starts_with('.') && name.contains(".tmp-")) {
            continue;
        }
        let path = dir.join(&name);
        if let Some(temp) = name.strip_suffix(TEMP_LOCK_SUFFIX) {
            if let Some(lock) = take_abandoned(&path) {
                // Not removed: the lock stays (free) for the next sweep, so
                // a temporary never outlives its lock.
                if remove_abandoned(&dir.join(temp)).is_ok() {
                    let _ = lock.remove();
                }
            }
        } else if path.is_dir() && !temp_lock(&path).exists() && unlocked_abandoned(&path) {
            let _ = remove_abandoned(&path);
        }
    }
}

/// Remove a temporary whose builder is gone. Processes the builder started
/// may outlive it and still write in it (an orphaned `qemu-img` or
/// `dpkg-deb`), so a removal that finds new entries is tried again.
fn remove_abandoned(temp: &Path) -> io::Result<()> {
    let mut tries = 1;
    loop {
        match remove_dir_all_if_exists(temp) {
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 8 => tries += 1,
            done => return done,
        }
    }
}

/// The lock at `path`, taken, when no process holds it: not another one,
/// and not this one (asked first through [`holder`], which never opens a
/// file this process holds: taking it again would succeed, and dropping
/// that second hold would release the first).
fn take_abandoned(path: &Path) -> Option<HeldLock> {
    if !matches!(holder(path), Ok(None)) {
        return None;
    }
    HeldLock::try_acquire(path).ok().flatten()
}

/// Locks held and probed by other processes, for tests in any module.
/// Python's `fcntl.lockf` takes POSIX locks (`flock(1)` takes flock ones).
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    /// A process that holds the lock on `path` (created if missing) until
    /// it is killed; returns once it holds it.
    pub(crate) fn hold_in_another_process(path: &Path) -> Child {
        let mut child = Command::new("python3")
            .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"])
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        child
    }

    /// Whether another process finds `path` locked.
    pub(crate) fn locked_for_others(path: &Path) -> bool {
        let probe = Command::new("python3")
            .args(["-c", "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        !probe.success()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{hold_in_another_process, locked_for_others};
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_is_exclusive_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.pid");
        assert_eq!(holder(&path).unwrap(), None, "no file, no holder");

        let mut child = hold_in_another_process(&path);

        let held_by = holder(&path)
            .unwrap()
            .map(|p| p.as_raw_nonzero().get() as u32);
        assert_eq!(held_by, Some(child.id()));
        assert!(HeldLock::try_acquire(&path).unwrap().is_none(), "exclusive");

        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(holder(&path).unwrap(), None, "a dead process holds nothing");
        let lock = HeldLock::try_acquire(&path)
            .unwrap()
            .expect("free after the holder died");
        // Asking about our own lock must not release it (POSIX lock trap).
        assert_eq!(holder(&path).unwrap(), Some(rustix::process::getpid()));
        assert_eq!(holder(&path).unwrap(), Some(rustix::process::getpid()));
        drop(lock);
    }

    #[test]
    fn a_new_lock_file_is_linked_in_already_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.pid");
        let lock = create_locked(&path).unwrap().expect("nothing was there");
        assert!(path.exists());
        assert!(locked_for_others(&path), "locked under its name");
        assert_eq!(holder(&path).unwrap(), Some(rustix::process::getpid()));
        assert!(
            create_locked(&path).unwrap().is_none(),
            "an existing file is never replaced"
        );
        drop(lock);
        assert!(!locked_for_others(&path), "released on drop");
    }

    #[test]
    fn removing_the_lock_file_releases_it_for_the_next_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.pid");
        let mut lock = HeldLock::try_acquire(&path).unwrap().unwrap();
        lock.write_pid().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        lock.remove().unwrap();
        assert!(!path.exists());
        assert!(HeldLock::try_acquire(&path).unwrap().is_some());
    }
}
