//! Files to and from an [`archive`](crate::archive): [`pack`] walks paths
//! into an archive, [`unpack`] writes one under a destination. Both sides
//! use them: the guest agent's copy mode (`vmkeep-guest --copy-out` /
//! `--copy-in`, see the guest crate) and the host's `vmkeep copy`.
//!
//! Only portable POSIX calls (`openat`, `mkdirat`, `renameat`, ...), so the
//! host may be Linux or macOS.
//!
//! # What `pack` copies
//!
//! Each source by its last component (`dir/sub` is `sub` in the archive;
//! `.`, `..` and the like by the real name of the directory they are). It
//! never follows a symlink, even a source that is one, except that a source
//! written with a trailing `/` (or `/.`) is the directory it names, link or
//! not. A directory needs `recursive`. Sockets, fifos and devices are
//! skipped; an unreadable file or directory, one that vanished or changed
//! while it was read: every such problem is an error record in the archive
//! (and a [`Notice`]), never a silent gap. A file that shrank while it was
//! read is padded with zeros to the size its header announced, one that
//! grew is cut to it, and both get an error record.
//!
//! # Where `unpack` writes (`scp`'s and `cp -r`'s rules)
//!
//! - `DEST` an existing directory (or a symlink to one): each top-level
//!   entry is created in it by its own name (`copy a.txt dir` makes
//!   `dir/a.txt`; `copy -r src dir` makes `dir/src/...`).
//! - `DEST` does not exist: the single top-level entry is created as
//!   `DEST` (`copy a.txt b.txt`, `copy -r src new` makes `new/...`). A
//!   second top-level entry is refused: several sources need a directory.
//! - `DEST` an existing file (or a symlink that is not to a directory):
//!   a single file or symlink replaces it (the symlink itself is replaced,
//!   never written through); a directory is refused.
//! - `DEST` ending in `/`: it must be an existing directory.
//!
//! What already exists under `DEST` is merged with: a file or symlink of the
//! same name is replaced (atomically: the new one is written under a
//! temporary name beside it and renamed over it, so a failed copy never
//! leaves a half file under the real name); a directory is entered and
//! gets the archive's mode and mtime; a directory never replaces a file nor
//! the other way round. Nothing is ever created outside `DEST`: every path
//! is opened component by component from `DEST` with `O_NOFOLLOW`, so a
//! symlink already in `DEST`, or one the archive itself made, is never
//! followed. Files get their mode and mtime (the owner is whoever runs the
//! copy); directories get theirs once their contents are written.
//! Setuid, setgid and sticky bits are dropped, with a warning, unless
//! [`UnpackOptions::keep_special_bits`].
//!
//! # How the host copies
//!
//! Through a session (see [`crate::session`]) that runs the guest agent's
//! own copy mode: [`AGENT_EXE`] (the session's child is a fork of the agent,
//! so that path is the agent, wherever it is installed), as the user the
//! files belong to (`user`), in the directory relative paths are relative
//! to (`cwd`), without a pty. The session's credits carry the archive, and
//! its exit code says how it went.
//!
//! - **Out of the guest** ([`copy_out_argv`]): the session's stdout is the
//!   archive of the paths; decode it with [`crate::archive::Decoder`] (or
//!   give [`unpack`] a reader over it) into the host's destination. Send
//!   `eof` on stdin at once.
//! - **Into the guest** ([`copy_in_argv`]): [`pack`] the host's paths into
//!   the session's stdin (within the stdin credit), then `eof`. Its stdout
//!   stays empty.
//!
//! Either way, stderr carries one line per problem, for the user
//! (`vmkeep-guest: copy: PATH: ...`; untrusted text), and the exit code is
//! 0 (all copied), 1 (some entries were not: the archive's error records
//! and stderr say which), 2 (usage), 3 (the copy broke off: a bad or
//! truncated archive, an unusable destination, an output that could not be
//! written) or, out of the guest only, 4 (a source does not exist; the
//! others were copied): see [`exit`]. A copy is complete only with exit code 0 and, when reading an
//! archive, its end record; anything else is an error to report, never a
//! silent success.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::archive::{
    ArchivePath, Decoder, Encoder, Entry, EntryKind, Event, MAX_TARGET_BYTES, Mtime, Summary,
};

/// The path that is the guest agent in a session's command.
pub const AGENT_EXE: &str = "/proc/self/exe";
/// The agent's argument for copying paths out (an archive on stdout).
pub const COPY_OUT: &str = "--copy-out";
/// The agent's argument for copying an archive in (from stdin).
pub const COPY_IN: &str = "--copy-in";

/// Copy-out's argument that resolves each source's symlinks in the guest
/// first (`realpath`): the copy is of what the link points to, by the
/// target's name. Without it a source that is a symlink is copied as one.
pub const DEREFERENCE: &str = "--dereference";

/// The copy mode's exit codes (see the module docs).
pub mod exit {
    /// Everything was copied.
    pub const COMPLETE: i32 = 0;
    /// Some entries were not (the archive's error records and stderr say which).
    pub const INCOMPLETE: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// The copy broke off.
    pub const BROKEN: i32 = 3;
    /// Copy-out only: a source does not exist, and nothing else went wrong
    /// (the others were copied).
    pub const MISSING: i32 = 4;
}

/// The `argv` of a session that copies `paths` out of the guest
/// (`dereference`: see [`DEREFERENCE`]).
pub fn copy_out_argv(paths: &[String], recursive: bool, dereference: bool) -> Vec<String> {
    let mut argv = vec![AGENT_EXE.to_string(), COPY_OUT.to_string()];
    if recursive {
        argv.push("--recursive".to_string());
    }
    if dereference {
        argv.push(DEREFERENCE.to_string());
    }
    argv.push("--".to_string());
    argv.extend(paths.iter().cloned());
    argv
}

/// The `argv` of a session that writes an archive from its stdin under
/// `dest` in the guest (`keep_special_bits`: see [`UnpackOptions`]).
pub fn copy_in_argv(dest: &str, keep_special_bits: bool) -> Vec<String> {
    let mut argv = vec![AGENT_EXE.to_string(), COPY_IN.to_string()];
    if keep_special_bits {
        argv.push("--keep-special-bits".to_string());
    }
    argv.push("--".to_string());
    argv.push(dest.to_string());
    argv
}

/// Size of the read and write buffers.
const CHUNK: usize = 64 * 1024;

/// A problem (or a warning) met while copying, about one path or the copy
/// as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub path: Option<ArchivePath>,
    pub message: String,
    /// A warning (special bits dropped): the copy is still complete.
    pub warning: bool,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.warning {
            f.write_str("warning: ")?;
        }
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))
}

fn cvt(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn retry<T: PartialOrd + From<i8>>(mut call: impl FnMut() -> T) -> T {
    loop {
        let result = call();
        if result >= T::from(0) || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return result;
        }
    }
}

fn open_path(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: path is a valid C string.
    let fd = cvt(retry(|| unsafe {
        libc::open(path.as_ptr(), flags | libc::O_CLOEXEC)
    }))?;
    // SAFETY: open just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: dir is open, name a valid C string.
    let fd = cvt(retry(|| unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    }))?;
    // SAFETY: openat just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: dir is open, name valid, st writable.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: as in lstat_at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open, st writable.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The permission and special bits (`mode_t` is 16 bits on macOS).
#[allow(clippy::useless_conversion)]
fn mode_bits(st: &libc::stat) -> u32 {
    u32::from(st.st_mode) & 0o7777
}

#[allow(clippy::useless_conversion)]
fn mtime_of(st: &libc::stat) -> Mtime {
    Mtime {
        secs: i64::from(st.st_mtime),
        nanos: (st.st_mtime_nsec as u64 % 1_000_000_000) as u32,
    }
}

fn kind_word(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFSOCK => "a socket",
        libc::S_IFIFO => "a fifo",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "not a file, directory or symlink",
    }
}

/// The names in a directory (without `.` and `..`), sorted.
fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    // fdopendir takes the descriptor: give it a duplicate.
    let dup = dir.try_clone_to_owned()?;
    // SAFETY: dup is an open directory descriptor, handed over to the stream.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // SAFETY: stream is a valid DIR*; rewinding makes a shared offset harmless.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir returns NULL at the end or on error.
        unsafe { *errno() = 0 };
        // SAFETY: stream is valid until closedir below.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            // SAFETY: errno is thread-local.
            let err = unsafe { *errno() };
            break if err == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(err))
            };
        }
        // SAFETY: d_name is a NUL-terminated name inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: stream is valid and closed once.
    unsafe { libc::closedir(stream) };
    result?;
    names.sort();
    Ok(names)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__error() }
}

fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_TARGET_BYTES + 1];
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n > MAX_TARGET_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("its target is longer than {MAX_TARGET_BYTES} bytes"),
        ));
    }
    buf.truncate(n);
    Ok(buf)
}

fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: bytes is readable for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"));
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// What [`pack`] does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Copy directories with everything in them.
    pub recursive: bool,
}

/// Write `sources` into an archive on `out`. Problems with the sources are
/// error records (and `notice`s); only a failure to write `out` is an
/// error, and then the archive is incomplete. Returns the writer and the
/// archive's counts (`errors` > 0: something was not copied).
pub fn pack<W: Write>(
    sources: &[&Path],
    options: PackOptions,
    out: W,
    mut notice: impl FnMut(Notice),
) -> io::Result<(W, Summary)> {
    let mut packer = Packer {
        encoder: Encoder::new(out)?,
        options,
        notice: &mut notice,
        buf: vec![0u8; CHUNK],
    };
    for source in sources {
        packer.source(source)?;
    }
    packer.encoder.finish()
}

struct Packer<'n, W: Write> {
    encoder: Encoder<W>,
    options: PackOptions,
    notice: &'n mut dyn FnMut(Notice),
    buf: Vec<u8>,
}

impl<W: Write> Packer<'_, W> {
    /// Record a problem in the archive and tell the caller.
    fn problem(&mut self, path: Option<&ArchivePath>, message: String) -> io::Result<()> {
        self.encoder.error(path, &message)?;
        (self.notice)(Notice {
            path: path.cloned(),
            message,
            warning: false,
        });
        Ok(())
    }

    fn source(&mut self, source: &Path) -> io::Result<()> {
        let shown = crate::archive::shown(source.as_os_str().as_bytes());
        let bytes = source.as_os_str().as_bytes();
        let follow = bytes.ends_with(b"/") || bytes.ends_with(b"/.");
        let last = source.components().next_back();
        if !follow && let Some(Component::Normal(name)) = last {
            let parent = match source.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let path = match ArchivePath::new(name.as_bytes()) {
                Ok(path) => path,
                Err(problem) => return self.problem(None, format!("{shown}: {problem}")),
            };
            let dir = match open_path(parent, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(dir) => dir,
                Err(e) => return self.problem(None, format!("{shown}: {e}")),
            };
            let name = cstr(name.as_bytes())?;
            return match lstat_at(dir.as_fd(), &name) {
                Ok(st) => self.node(dir.as_fd(), &name, path, &st),
                Err(e) => self.problem(None, format!("{shown}: {e}")),
            };
        }
        // `x/`, `x/.`, `.`, `..`, `/`: the directory itself, by its real name.
        let real = match std::fs::canonicalize(source) {
            Ok(real) => real,
            Err(e) => return self.problem(None, format!("{shown}: {e}")),
        };
        let Some(name) = real.file_name() else {
            return self.problem(
                None,
                format!("{shown}: cannot copy / itself; name what is in it"),
            );
        };
        let path = match ArchivePath::new(name.as_bytes()) {
            Ok(path) => path,
            Err(problem) => return self.problem(None, format!("{shown}: {problem}")),
        };
        let dir = match open_path(source, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(e) => return self.problem(None, format!("{shown}: {e}")),
        };
        match fstat(dir.as_fd()) {
            Ok(st) => self.dir(dir, path, &st),
            Err(e) => self.problem(None, format!("{shown}: {e}")),
        }
    }

    /// Copy what `name` in `parent` is, as `path`.
    fn node(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: ArchivePath,
        st: &libc::stat,
    ) -> io::Result<()> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
                let file = match open_at(parent, name, flags, 0) {
                    Ok(file) => file,
                    Err(e) => return self.problem(Some(&path), format!("cannot read it: {e}")),
                };
                match fstat(file.as_fd()) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                        self.file(file, path, &st)
                    }
                    Ok(st) => self.problem(
                        Some(&path),
                        format!("changed while copied: now {}", kind_word(st.st_mode)),
                    ),
                    Err(e) => self.problem(Some(&path), format!("cannot read it: {e}")),
                }
            }
            libc::S_IFDIR => {
                if !self.options.recursive {
                    return self.problem(
                        Some(&path),
                        "is a directory (copy it recursively)".to_string(),
                    );
                }
                let dir = match open_dir_at(parent, name) {
                    Ok(dir) => dir,
                    Err(e) => return self.problem(Some(&path), format!("cannot read it: {e}")),
                };
                match fstat(dir.as_fd()) {
                    Ok(st) => self.dir(dir, path, &st),
                    Err(e) => self.problem(Some(&path), format!("cannot read it: {e}")),
                }
            }
            libc::S_IFLNK => match read_link_at(parent, name) {
                Ok(target) if target.is_empty() => {
                    self.problem(Some(&path), "a symlink with an empty target".to_string())
                }
                Ok(target) => self
                    .encoder
                    .entry(&Entry::symlink(path, target, mtime_of(st))),
                Err(e) => self.problem(Some(&path), format!("cannot read the symlink: {e}")),
            },
            _ => self.problem(Some(&path), format!("skipped: {}", kind_word(st.st_mode))),
        }
    }

    fn file(&mut self, file: OwnedFd, path: ArchivePath, st: &libc::stat) -> io::Result<()> {
        let size = st.st_size.max(0) as u64;
        let entry = Entry::file(path.clone(), mode_bits(st), mtime_of(st), size);
        self.encoder.entry(&entry)?;
        let mut left = size;
        let mut failure = None;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match read_some(file.as_fd(), &mut self.buf[..want]) {
                Ok(0) => {
                    failure = Some(format!(
                        "shrank while it was read: the copy is padded with {left} zero bytes to {size}"
                    ));
                    break;
                }
                Ok(n) => n,
                Err(e) => {
                    failure = Some(format!(
                        "read failed after {} bytes ({e}): the copy is padded with zeros",
                        size - left
                    ));
                    break;
                }
            };
            self.encoder.data(&self.buf[..n])?;
            left -= n as u64;
        }
        if failure.is_some() {
            self.buf.fill(0);
            while left > 0 {
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                self.encoder.data(&self.buf[..n])?;
                left -= n as u64;
            }
        } else if matches!(read_some(file.as_fd(), &mut self.buf[..1]), Ok(n) if n > 0) {
            failure = Some(format!(
                "grew while it was read: the copy has its first {size} bytes"
            ));
        }
        match failure {
            Some(message) => self.problem(Some(&path), message),
            None => Ok(()),
        }
    }

    fn dir(&mut self, dir: OwnedFd, path: ArchivePath, st: &libc::stat) -> io::Result<()> {
        self.encoder
            .entry(&Entry::dir(path.clone(), mode_bits(st), mtime_of(st)))?;
        let names = match dir_names(dir.as_fd()) {
            Ok(names) => names,
            Err(e) => {
                return self.problem(Some(&path), format!("cannot list it: {e}"));
            }
        };
        for name in names {
            let child = match path.join(&name) {
                Ok(child) => child,
                Err(problem) => {
                    let shown = format!("{path}/{}", crate::archive::shown(&name));
                    self.problem(Some(&path), format!("skipped {shown}: {problem}"))?;
                    continue;
                }
            };
            let cname = cstr(&name)?;
            match lstat_at(dir.as_fd(), &cname) {
                Ok(st) => self.node(dir.as_fd(), &cname, child, &st)?,
                Err(e) => self.problem(Some(&child), format!("vanished while copied: {e}"))?,
            }
        }
        Ok(())
    }
}

/// What [`unpack`] does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Keep setuid, setgid and sticky bits (else they are dropped, with a
    /// warning each).
    pub keep_special_bits: bool,
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written.
    pub written: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Problems: entries not written, and the archive's own error records.
    pub problems: u64,
    /// Entries whose special bits were dropped.
    pub stripped: u64,
}

/// Why [`unpack`] stopped before the end of the archive.
#[derive(Debug)]
pub enum UnpackError {
    /// `DEST` cannot be written to as asked.
    Destination(String),
    /// The archive is bad or incomplete.
    Archive(crate::archive::DecodeError),
    /// Reading the archive failed.
    Read(io::Error),
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpackError::Destination(message) => f.write_str(message),
            UnpackError::Archive(e) => write!(f, "{e}"),
            UnpackError::Read(e) => write!(f, "cannot read the archive: {e}"),
        }
    }
}

impl std::error::Error for UnpackError {}

/// Where top-level entries go.
enum Base {
    /// In this directory, by their names.
    Into(OwnedFd),
    /// The one top-level entry as `name` in this directory.
    As { dir: OwnedFd, name: CString },
}

/// A directory being written (one per level of the archive).
struct Level {
    /// `None`: it could not be made; what is in it is skipped.
    fd: Option<OwnedFd>,
    mode: u32,
    mtime: Mtime,
    path: ArchivePath,
}

/// A file being written, under a temporary name in `dir`.
struct Pending {
    dir: OwnedFd,
    fd: OwnedFd,
    temp: CString,
    name: CString,
    mode: u32,
    mtime: Mtime,
    path: ArchivePath,
    size: u64,
}

/// Write the archive read from `input` under `dest` (see the module docs).
/// Problems with single entries are `notice`d and counted, and the rest
/// goes on; a bad or truncated archive, or a failed read, stops it.
pub fn unpack(
    mut input: impl Read,
    dest: &Path,
    options: UnpackOptions,
    mut notice: impl FnMut(Notice),
) -> Result<Unpacked, UnpackError> {
    let mut unpacker = Unpacker {
        base: destination(dest)?,
        options,
        notice: &mut notice,
        levels: Vec::new(),
        pending: None,
        tops: 0,
        done: Unpacked::default(),
        temp_counter: 0,
    };
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; CHUNK];
    let result = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break decoder.finish().map(|_| ()).map_err(UnpackError::Archive),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(UnpackError::Read(e)),
        };
        let mut chunk = &buf[..n];
        let mut failed = None;
        loop {
            match decoder.decode(chunk) {
                Ok((used, event)) => {
                    chunk = &chunk[used..];
                    match event {
                        Some(event) => unpacker.event(event),
                        None => break,
                    }
                }
                Err(e) => {
                    failed = Some(UnpackError::Archive(e));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if decoder.is_done() {
            // Anything after the end is an error too.
            let mut probe = [0u8; 1];
            break match input.read(&mut probe) {
                Ok(0) => Ok(()),
                Ok(_) => decoder
                    .decode(&probe)
                    .map(|_| ())
                    .map_err(UnpackError::Archive),
                Err(e) => Err(UnpackError::Read(e)),
            };
        }
    };
    unpacker.abandon_pending();
    unpacker.close_levels(0);
    result.map(|()| unpacker.done)
}

fn destination(dest: &Path) -> Result<Base, UnpackError> {
    let shown = crate::archive::shown(dest.as_os_str().as_bytes());
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY;
    if dest.as_os_str().as_bytes().ends_with(b"/") {
        return open_path(dest, dir_flags)
            .map(Base::Into)
            .map_err(|e| UnpackError::Destination(format!("{shown}: {e}")));
    }
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            return open_path(dest, dir_flags)
                .map(Base::Into)
                .map_err(|e| UnpackError::Destination(format!("{shown}: {e}")));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(UnpackError::Destination(format!("{shown}: {e}"))),
    }
    let Some(name) = dest.file_name() else {
        return Err(UnpackError::Destination(format!(
            "{shown}: not a name to create"
        )));
    };
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = open_path(parent, dir_flags).map_err(|e| {
        UnpackError::Destination(format!(
            "{}: {e}",
            crate::archive::shown(parent.as_os_str().as_bytes())
        ))
    })?;
    let name = cstr(name.as_bytes()).map_err(|e| UnpackError::Destination(e.to_string()))?;
    Ok(Base::As { dir, name })
}

struct Unpacker<'n> {
    base: Base,
    options: UnpackOptions,
    notice: &'n mut dyn FnMut(Notice),
    levels: Vec<Level>,
    pending: Option<Pending>,
    tops: u64,
    done: Unpacked,
    temp_counter: u64,
}

fn to_timespec(mtime: Mtime) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.secs as _,
            tv_nsec: libc::c_long::from(mtime.nanos as i32),
        },
    ]
}

impl Unpacker<'_> {
    fn problem(&mut self, path: &ArchivePath, message: String) {
        self.done.problems += 1;
        (self.notice)(Notice {
            path: Some(path.clone()),
            message,
            warning: false,
        });
    }

    fn warn(&mut self, path: &ArchivePath, message: String) {
        (self.notice)(Notice {
            path: Some(path.clone()),
            message,
            warning: true,
        });
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Entry(entry) => self.entry(entry),
            Event::Data(bytes) => {
                if let Some(pending) = &self.pending
                    && let Err(e) = write_all_fd(pending.fd.as_fd(), bytes)
                {
                    let path = pending.path.clone();
                    self.abandon_pending();
                    self.problem(&path, format!("cannot write it: {e}"));
                }
            }
            Event::FileEnd => {
                if let Some(pending) = self.pending.take() {
                    self.complete(pending);
                }
            }
            Event::Error(problem) => {
                self.done.problems += 1;
                let message = format!("not copied (on the sending side: {})", problem.message);
                (self.notice)(Notice {
                    path: problem.path,
                    message,
                    warning: false,
                });
            }
            Event::End(_) => self.close_levels(0),
        }
    }

    /// The mode to give, with the special bits unless they are dropped.
    fn mode_for(&mut self, entry: &Entry) -> u32 {
        if entry.special_bits == 0 {
            return entry.mode;
        }
        if self.options.keep_special_bits {
            return entry.full_mode();
        }
        self.done.stripped += 1;
        let bits = special_names(entry.special_bits);
        self.warn(&entry.path, format!("{bits} dropped"));
        entry.mode
    }

    /// Finish the directories deeper than `depth` (give them their mode
    /// and mtime, now that their contents are written).
    fn close_levels(&mut self, depth: usize) {
        while self.levels.len() > depth {
            let Some(level) = self.levels.pop() else {
                break;
            };
            let Some(fd) = level.fd else {
                continue;
            };
            // SAFETY: fd is open.
            let chmod = unsafe { libc::fchmod(fd.as_raw_fd(), level.mode as libc::mode_t) };
            let times = to_timespec(level.mtime);
            // SAFETY: fd is open, times is two valid timespecs.
            let utimes = unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) };
            if chmod != 0 || utimes != 0 {
                let e = io::Error::last_os_error();
                self.problem(&level.path, format!("cannot set its mode or mtime: {e}"));
            }
        }
    }

    /// The directory an entry goes in (a descriptor of its own) and the
    /// name it gets there; `None` if it is to be skipped (quietly, when a
    /// directory above it failed and said so).
    fn place(&mut self, entry: &Entry) -> Option<(OwnedFd, CString)> {
        let depth = entry.path.depth();
        let (dir, name) = if depth == 1 {
            self.tops += 1;
            match &self.base {
                Base::As { .. } if self.tops > 1 => {
                    self.problem(
                        &entry.path,
                        "not copied: the destination is not a directory, so it takes one source only"
                            .to_string(),
                    );
                    return None;
                }
                Base::As { dir, name } => (dir.as_fd(), name.clone()),
                Base::Into(dir) => (dir.as_fd(), cstr(entry.path.name()).ok()?),
            }
        } else {
            let dir = self.levels.get(depth - 2)?.fd.as_ref()?.as_fd();
            (dir, cstr(entry.path.name()).ok()?)
        };
        match dir.try_clone_to_owned() {
            Ok(dir) => Some((dir, name)),
            Err(e) => {
                self.problem(&entry.path, format!("not copied: {e}"));
                None
            }
        }
    }

    fn entry(&mut self, entry: Entry) {
        self.abandon_pending();
        let depth = entry.path.depth();
        // The decoder checked the order: the parent is the level at depth - 1.
        self.close_levels(depth - 1);
        let mode = self.mode_for(&entry);
        let Some((dir, name)) = self.place(&entry) else {
            match entry.kind {
                EntryKind::Dir => self.levels.push(Level {
                    fd: None,
                    mode,
                    mtime: entry.mtime,
                    path: entry.path,
                }),
                EntryKind::File | EntryKind::Symlink => {}
            }
            return;
        };
        match entry.kind {
            EntryKind::Dir => {
                let fd = match make_dir(dir.as_fd(), &name) {
                    Ok(fd) => {
                        self.done.written += 1;
                        Some(fd)
                    }
                    Err(message) => {
                        self.problem(&entry.path, format!("{message}; skipped with its contents"));
                        None
                    }
                };
                self.levels.push(Level {
                    fd,
                    mode,
                    mtime: entry.mtime,
                    path: entry.path,
                });
            }
            EntryKind::File => match self.temp_name(dir.as_fd(), |dir, temp| {
                open_at(
                    dir,
                    temp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
            }) {
                Ok((fd, temp)) => {
                    self.pending = Some(Pending {
                        dir,
                        fd,
                        temp,
                        name,
                        mode,
                        mtime: entry.mtime,
                        path: entry.path,
                        size: entry.size,
                    });
                }
                Err(e) => {
                    self.problem(&entry.path, format!("cannot create it: {e}"));
                }
            },
            EntryKind::Symlink => {
                let target = match cstr(entry.target.as_deref().unwrap_or_default()) {
                    Ok(target) => target,
                    Err(e) => return self.problem(&entry.path, e.to_string()),
                };
                let made = self.temp_name(dir.as_fd(), |dir, temp| {
                    // SAFETY: both strings are valid; dir is open.
                    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), temp.as_ptr()) })
                });
                let temp = match made {
                    Ok((_, temp)) => temp,
                    Err(e) => return self.problem(&entry.path, format!("cannot create it: {e}")),
                };
                let times = to_timespec(entry.mtime);
                // SAFETY: dir is open, temp valid, times two timespecs.
                let utimes = unsafe {
                    libc::utimensat(
                        dir.as_raw_fd(),
                        temp.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                let result = if utimes != 0 {
                    Err(format!(
                        "cannot set its mtime: {}",
                        io::Error::last_os_error()
                    ))
                } else {
                    rename_into(dir.as_fd(), &temp, &name)
                };
                match result {
                    Ok(()) => self.done.written += 1,
                    Err(message) => {
                        unlink(dir.as_fd(), &temp);
                        self.problem(&entry.path, message);
                    }
                }
            }
        }
    }

    /// Make something under a fresh temporary name in `dir` (retrying the
    /// names that exist).
    fn temp_name<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        mut make: impl FnMut(BorrowedFd<'_>, &CStr) -> io::Result<T>,
    ) -> io::Result<(T, CString)> {
        let mut tries = 0;
        loop {
            self.temp_counter += 1;
            tries += 1;
            let temp = cstr(
                format!(".vmkeep-copy-{}-{}", std::process::id(), self.temp_counter).as_bytes(),
            )?;
            match make(dir, &temp) {
                Ok(made) => return Ok((made, temp)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Give the written file its mode and mtime, and its name.
    fn complete(&mut self, pending: Pending) {
        // SAFETY: the descriptor is open.
        let chmod = unsafe { libc::fchmod(pending.fd.as_raw_fd(), pending.mode as libc::mode_t) };
        let times = to_timespec(pending.mtime);
        // SAFETY: the descriptor is open, times two timespecs.
        let utimes = unsafe { libc::futimens(pending.fd.as_raw_fd(), times.as_ptr()) };
        let result = if chmod != 0 || utimes != 0 {
            Err(format!(
                "cannot set its mode or mtime: {}",
                io::Error::last_os_error()
            ))
        } else {
            rename_into(pending.dir.as_fd(), &pending.temp, &pending.name)
        };
        match result {
            Ok(()) => {
                self.done.written += 1;
                self.done.bytes += pending.size;
            }
            Err(message) => {
                unlink(pending.dir.as_fd(), &pending.temp);
                self.problem(&pending.path, message);
            }
        }
    }

    /// Drop a file being written (its archive stopped short).
    fn abandon_pending(&mut self) {
        if let Some(pending) = self.pending.take() {
            unlink(pending.dir.as_fd(), &pending.temp);
        }
    }
}

/// Make directory `name` in `dir`, or enter the one there; never a symlink.
fn make_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, String> {
    // SAFETY: dir is open, name valid.
    let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) };
    if made != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!("cannot create it: {e}"));
        }
    }
    open_dir_at(dir, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EMLINK) => {
            "exists and is not a directory".to_string()
        }
        _ => format!("cannot enter it: {e}"),
    })
}

/// Rename `temp` to `name` in `dir`, replacing a file or symlink there.
fn rename_into(dir: BorrowedFd<'_>, temp: &CStr, name: &CStr) -> Result<(), String> {
    // SAFETY: dir is open, both names valid.
    let renamed = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            temp.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
        )
    };
    if renamed == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
            "exists and is a directory".to_string()
        }
        _ => format!("cannot put it in place: {e}"),
    })
}

fn unlink(dir: BorrowedFd<'_>, name: &CStr) {
    // SAFETY: dir is open, name valid; a failure leaves a temporary file.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

fn special_names(bits: u32) -> String {
    let mut names = Vec::new();
    if bits & 0o4000 != 0 {
        names.push("setuid");
    }
    if bits & 0o2000 != 0 {
        names.push("setgid");
    }
    if bits & 0o1000 != 0 {
        names.push("sticky");
    }
    format!(
        "{} bit{}",
        names.join(" and "),
        if names.len() > 1 { "s" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::archive::tests::{raw_end, raw_entry};
    use crate::archive::{DecodeErrorKind, MAGIC};

    /// A scratch directory, removed (made writable first) when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "vmkeep-copy-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }
    }

    fn make_writable(path: &Path) {
        if let Ok(meta) = fs::symlink_metadata(path)
            && meta.is_dir()
        {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(entries) = fs::read_dir(path) {
                for entry in entries.flatten() {
                    make_writable(&entry.path());
                }
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            make_writable(&self.0);
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn set_mtime(path: &Path, secs: u64) {
        let when = SystemTime::UNIX_EPOCH + Duration::new(secs, 250_000_000);
        let file = fs::File::open(path).unwrap();
        file.set_modified(when).unwrap();
    }

    /// What a tree holds, to compare two: path, kind, mode, mtime, content
    /// or target.
    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let path = entry.path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.file_type().is_symlink() {
                    format!("link -> {}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    format!(
                        "dir {:o} {}.{}",
                        meta.mode() & 0o7777,
                        meta.mtime(),
                        meta.mtime_nsec()
                    )
                } else {
                    let content = fs::read(&path).unwrap();
                    format!(
                        "file {:o} {}.{} {} bytes, sum {}",
                        meta.mode() & 0o7777,
                        meta.mtime(),
                        meta.mtime_nsec(),
                        content.len(),
                        content
                            .iter()
                            .enumerate()
                            .map(|(i, b)| (i as u64 + 1) * u64::from(*b))
                            .sum::<u64>()
                    )
                };
                out.push(format!("{rel}: {what}"));
                if meta.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    /// A tree with modes, mtimes, symlinks, an empty file, a bigger file
    /// and a read-only directory with contents.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("src/sub/deeper")).unwrap();
        fs::create_dir_all(root.join("src/readonly")).unwrap();
        fs::write(root.join("src/a.txt"), b"hello\n").unwrap();
        fs::write(root.join("src/empty"), b"").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(root.join("src/sub/big.bin"), &big).unwrap();
        fs::write(root.join("src/sub/deeper/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::write(root.join("src/readonly/inside"), b"x").unwrap();
        fs::write(
            root.join(OsStr::from_bytes(b"src/caf\xe9")),
            b"latin-1 name",
        )
        .unwrap();
        symlink("a.txt", root.join("src/rel-link")).unwrap();
        symlink("/etc/passwd", root.join("src/abs-link")).unwrap();
        symlink("../nowhere", root.join("src/sub/dangling")).unwrap();
        for (rel, mode) in [
            ("src/a.txt", 0o640),
            ("src/empty", 0o600),
            ("src/sub/big.bin", 0o444),
            ("src/sub/deeper/run.sh", 0o755),
            ("src/readonly/inside", 0o644),
            ("src/sub", 0o750),
            ("src/sub/deeper", 0o700),
        ] {
            fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        }
        for (i, rel) in [
            "src/a.txt",
            "src/empty",
            "src/sub/big.bin",
            "src/sub/deeper/run.sh",
            "src/readonly/inside",
            "src/sub/deeper",
            "src/sub",
            "src/readonly",
            "src",
        ]
        .iter()
        .enumerate()
        {
            set_mtime(&root.join(rel), 1_600_000_000 + i as u64 * 1000);
        }
        fs::set_permissions(root.join("src/readonly"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    use std::ffi::OsStr;

    fn pack_to_vec(sources: &[&Path], recursive: bool) -> (Vec<u8>, Summary, Vec<Notice>) {
        let mut notices = Vec::new();
        let (bytes, summary) = pack(sources, PackOptions { recursive }, Vec::new(), |n| {
            notices.push(n)
        })
        .unwrap();
        (bytes, summary, notices)
    }

    fn unpack_bytes(
        bytes: &[u8],
        dest: &Path,
        options: UnpackOptions,
    ) -> (Result<Unpacked, UnpackError>, Vec<Notice>) {
        let mut notices = Vec::new();
        let result = unpack(bytes, dest, options, |n| notices.push(n));
        (result, notices)
    }

    #[test]
    fn a_tree_round_trips_with_modes_mtimes_and_symlinks() {
        let scratch = Scratch::new();
        make_tree(&scratch.path("from"));
        let (bytes, summary, notices) = pack_to_vec(&[&scratch.path("from/src")], true);
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(summary.errors, 0);
        assert_eq!(summary.entries, 13);
        // Into an existing directory: dest/src/...
        fs::create_dir(scratch.path("into")).unwrap();
        let (result, notices) =
            unpack_bytes(&bytes, &scratch.path("into"), UnpackOptions::default());
        let done = result.unwrap();
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!((done.written, done.problems), (13, 0));
        assert_eq!(
            listing(&scratch.path("into")),
            listing(&scratch.path("from"))
        );
        // As a new name: new/...
        let (result, _) = unpack_bytes(&bytes, &scratch.path("new"), UnpackOptions::default());
        result.unwrap();
        assert_eq!(
            listing(&scratch.path("new")),
            listing(&scratch.path("from/src"))
        );
        // No temporary file is left behind anywhere.
        assert!(
            !listing(&scratch.0)
                .iter()
                .any(|l| l.contains(".vmkeep-copy")),
            "{:?}",
            listing(&scratch.0)
        );
    }

    #[test]
    fn single_files_follow_scp_rules() {
        let scratch = Scratch::new();
        fs::write(scratch.path("f"), b"content").unwrap();
        fs::set_permissions(scratch.path("f"), fs::Permissions::from_mode(0o604)).unwrap();
        set_mtime(&scratch.path("f"), 1_500_000_000);
        let (bytes, _, _) = pack_to_vec(&[&scratch.path("f")], false);
        // To a new name.
        unpack_bytes(&bytes, &scratch.path("g"), UnpackOptions::default())
            .0
            .unwrap();
        assert_eq!(fs::read(scratch.path("g")).unwrap(), b"content");
        let meta = fs::metadata(scratch.path("g")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o604, 1_500_000_000));
        // Over an existing file.
        fs::write(scratch.path("old"), b"old content, longer").unwrap();
        unpack_bytes(&bytes, &scratch.path("old"), UnpackOptions::default())
            .0
            .unwrap();
        assert_eq!(fs::read(scratch.path("old")).unwrap(), b"content");
        // Into a directory, given with a trailing slash.
        fs::create_dir(scratch.path("d")).unwrap();
        let dest = PathBuf::from(format!("{}/", scratch.path("d").display()));
        unpack_bytes(&bytes, &dest, UnpackOptions::default())
            .0
            .unwrap();
        assert_eq!(fs::read(scratch.path("d/f")).unwrap(), b"content");
        // A trailing slash on something missing is an error.
        let missing = PathBuf::from(format!("{}/", scratch.path("missing").display()));
        assert!(matches!(
            unpack_bytes(&bytes, &missing, UnpackOptions::default()).0,
            Err(UnpackError::Destination(_))
        ));
        // A missing parent is an error.
        assert!(matches!(
            unpack_bytes(
                &bytes,
                &scratch.path("no/such/dir"),
                UnpackOptions::default()
            )
            .0,
            Err(UnpackError::Destination(_))
        ));
        // A directory without recursion: an error record.
        let (bytes, summary, notices) = pack_to_vec(&[&scratch.path("d")], false);
        assert_eq!((summary.entries, summary.errors), (0, 1));
        assert!(notices[0].message.contains("is a directory"), "{notices:?}");
        let (result, notices) = unpack_bytes(&bytes, &scratch.path("d2"), UnpackOptions::default());
        assert_eq!(result.unwrap().problems, 1);
        assert_eq!(notices.len(), 1);
        // A missing source: an error record too.
        let (_, summary, _) = pack_to_vec(&[&scratch.path("nope")], false);
        assert_eq!(summary.errors, 1);
    }

    #[test]
    fn several_sources_need_a_directory() {
        let scratch = Scratch::new();
        fs::write(scratch.path("a"), b"a").unwrap();
        fs::write(scratch.path("b"), b"b").unwrap();
        let (bytes, _, _) = pack_to_vec(&[&scratch.path("a"), &scratch.path("b")], false);
        let (result, notices) =
            unpack_bytes(&bytes, &scratch.path("new"), UnpackOptions::default());
        assert_eq!(result.unwrap().problems, 1);
        assert!(
            notices[0].message.contains("one source only"),
            "{notices:?}"
        );
        fs::create_dir(scratch.path("dir")).unwrap();
        let (result, _) = unpack_bytes(&bytes, &scratch.path("dir"), UnpackOptions::default());
        assert_eq!(result.unwrap().written, 2);
        assert_eq!(fs::read(scratch.path("dir/b")).unwrap(), b"b");
    }

    #[test]
    fn sources_are_named_by_their_real_names_and_symlinks_are_not_followed() {
        let scratch = Scratch::new();
        fs::create_dir_all(scratch.path("real/inner")).unwrap();
        fs::write(scratch.path("real/inner/x"), b"x").unwrap();
        symlink("real", scratch.path("link")).unwrap();
        // The link itself.
        let (bytes, _, _) = pack_to_vec(&[&scratch.path("link")], true);
        let events = crate::archive::tests::decode_all(&bytes, 1000).unwrap();
        assert!(
            matches!(&events[0], crate::archive::tests::Owned::Entry(e) if e.kind == EntryKind::Symlink),
            "{events:?}"
        );
        // With a trailing slash, the directory it names, under the link's target name.
        let slash = PathBuf::from(format!("{}/", scratch.path("link").display()));
        let (bytes, _, _) = pack_to_vec(&[&slash], true);
        fs::create_dir(scratch.path("out")).unwrap();
        unpack_bytes(&bytes, &scratch.path("out"), UnpackOptions::default())
            .0
            .unwrap();
        assert_eq!(fs::read(scratch.path("out/real/inner/x")).unwrap(), b"x");
        // `..` by its real name.
        let dotdot = scratch.path("real/inner/..");
        let (bytes, _, _) = pack_to_vec(&[&dotdot], true);
        let events = crate::archive::tests::decode_all(&bytes, 1000).unwrap();
        assert!(
            matches!(&events[0], crate::archive::tests::Owned::Entry(e) if e.path.as_bytes() == b"real"),
            "{events:?}"
        );
        // `/` cannot be named.
        let (_, summary, notices) = pack_to_vec(&[Path::new("/")], true);
        assert_eq!(summary.errors, 1, "{notices:?}");
    }

    #[test]
    fn special_files_are_skipped_with_an_error_record() {
        let scratch = Scratch::new();
        fs::create_dir(scratch.path("d")).unwrap();
        let fifo = std::ffi::CString::new(scratch.path("d/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        fs::write(scratch.path("d/ok"), b"ok").unwrap();
        let (bytes, summary, notices) = pack_to_vec(&[&scratch.path("d")], true);
        assert_eq!((summary.entries, summary.errors), (2, 1));
        assert!(
            notices[0].to_string().contains("d/fifo: skipped: a fifo"),
            "{notices:?}"
        );
        let (result, _) = unpack_bytes(&bytes, &scratch.path("e"), UnpackOptions::default());
        let done = result.unwrap();
        assert_eq!((done.written, done.problems), (2, 1));
    }

    #[test]
    fn special_bits_are_dropped_unless_kept() {
        let scratch = Scratch::new();
        fs::write(scratch.path("suid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(scratch.path("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::create_dir(scratch.path("shared")).unwrap();
        fs::set_permissions(scratch.path("shared"), fs::Permissions::from_mode(0o3775)).unwrap();
        let (bytes, _, _) = pack_to_vec(&[&scratch.path("suid"), &scratch.path("shared")], true);
        fs::create_dir(scratch.path("stripped")).unwrap();
        let (result, notices) =
            unpack_bytes(&bytes, &scratch.path("stripped"), UnpackOptions::default());
        let done = result.unwrap();
        assert_eq!((done.problems, done.stripped), (0, 2));
        assert!(notices.iter().all(|n| n.warning), "{notices:?}");
        assert!(
            notices[0].to_string().contains("setuid bit dropped"),
            "{notices:?}"
        );
        assert!(
            notices[1]
                .to_string()
                .contains("setgid and sticky bits dropped"),
            "{notices:?}"
        );
        let mode = |p: &str| fs::metadata(scratch.path(p)).unwrap().mode() & 0o7777;
        assert_eq!(
            (mode("stripped/suid"), mode("stripped/shared")),
            (0o755, 0o775)
        );
        fs::create_dir(scratch.path("kept")).unwrap();
        let options = UnpackOptions {
            keep_special_bits: true,
        };
        let (result, notices) = unpack_bytes(&bytes, &scratch.path("kept"), options);
        assert_eq!(result.unwrap().stripped, 0);
        assert!(notices.is_empty());
        assert_eq!((mode("kept/suid"), mode("kept/shared")), (0o4755, 0o3775));
    }

    fn archive_of(records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for record in records {
            bytes.extend_from_slice(record);
        }
        bytes
    }

    #[test]
    fn traversal_is_refused_and_nothing_is_written_outside() {
        let scratch = Scratch::new();
        fs::create_dir_all(scratch.path("dest/inner")).unwrap();
        for bad in [&b"../escaped"[..], b"/tmp/escaped", b"inner/../../escaped"] {
            let mut bytes = archive_of(&[raw_entry(b'f', 0o644, 3, bad, b"")]);
            bytes.extend_from_slice(b"bad");
            bytes.extend_from_slice(&raw_end(1, 0, 3));
            let (result, _) = unpack_bytes(&bytes, &scratch.path("dest"), UnpackOptions::default());
            assert!(
                matches!(
                    &result,
                    Err(UnpackError::Archive(e)) if matches!(e.kind, DecodeErrorKind::BadPath(_))
                ),
                "{result:?}"
            );
        }
        assert!(!scratch.path("escaped").exists());
        assert!(!Path::new("/tmp/escaped").exists());
        assert_eq!(listing(&scratch.path("dest")).len(), 1, "only inner");
    }

    #[test]
    fn symlinks_are_never_followed_when_writing() {
        let scratch = Scratch::new();
        fs::create_dir_all(scratch.path("outside")).unwrap();
        fs::write(scratch.path("outside/precious"), b"precious").unwrap();
        fs::create_dir_all(scratch.path("dest")).unwrap();
        // 1. A symlink the archive makes, then a path through it: refused by
        // the decoder (a symlink is no directory).
        let outside = scratch.path("outside");
        let mut bytes = archive_of(&[
            raw_entry(b'l', 0o777, 0, b"hop", outside.as_os_str().as_bytes()),
            raw_entry(b'f', 0o644, 1, b"hop/precious", b""),
        ]);
        bytes.push(b'X');
        bytes.extend_from_slice(&raw_end(2, 0, 1));
        let (result, _) = unpack_bytes(&bytes, &scratch.path("dest"), UnpackOptions::default());
        assert!(matches!(result, Err(UnpackError::Archive(_))), "{result:?}");
        // 2. A symlink already in the destination where the archive has a
        // directory: not entered.
        symlink(&outside, scratch.path("dest/trap")).unwrap();
        let mut bytes = archive_of(&[
            raw_entry(b'd', 0o755, 0, b"trap", b""),
            raw_entry(b'f', 0o644, 1, b"trap/precious", b""),
        ]);
        bytes.push(b'X');
        bytes.extend_from_slice(&raw_end(2, 0, 1));
        let (result, notices) =
            unpack_bytes(&bytes, &scratch.path("dest"), UnpackOptions::default());
        assert_eq!(result.unwrap().problems, 1, "{notices:?}");
        assert!(
            notices[0].message.contains("not a directory"),
            "{notices:?}"
        );
        // 3. A symlink already in the destination where the archive has a
        // file: the link is replaced, its target untouched.
        symlink(scratch.path("outside/precious"), scratch.path("dest/file")).unwrap();
        let mut bytes = archive_of(&[raw_entry(b'f', 0o644, 3, b"file", b"")]);
        bytes.extend_from_slice(b"new");
        bytes.extend_from_slice(&raw_end(1, 0, 3));
        unpack_bytes(&bytes, &scratch.path("dest"), UnpackOptions::default())
            .0
            .unwrap();
        assert!(
            !fs::symlink_metadata(scratch.path("dest/file"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(fs::read(scratch.path("dest/file")).unwrap(), b"new");
        assert_eq!(
            fs::read(scratch.path("outside/precious")).unwrap(),
            b"precious"
        );
        // 4. DEST itself a symlink to a file: replaced, not written through.
        symlink(scratch.path("outside/precious"), scratch.path("dest-link")).unwrap();
        unpack_bytes(&bytes, &scratch.path("dest-link"), UnpackOptions::default())
            .0
            .unwrap();
        assert_eq!(
            fs::read(scratch.path("outside/precious")).unwrap(),
            b"precious"
        );
        assert_eq!(fs::read(scratch.path("dest-link")).unwrap(), b"new");
        assert_eq!(listing(&scratch.path("outside")).len(), 1);
    }

    #[test]
    fn a_file_never_replaces_a_directory_nor_the_other_way_round() {
        let scratch = Scratch::new();
        fs::create_dir_all(scratch.path("dest/name/keep")).unwrap();
        fs::write(scratch.path("dest/plain"), b"plain").unwrap();
        let mut bytes = archive_of(&[raw_entry(b'f', 0o644, 1, b"name", b"")]);
        bytes.push(b'X');
        bytes.extend_from_slice(&raw_entry(b'd', 0o755, 0, b"plain", b""));
        bytes.extend_from_slice(&raw_end(2, 0, 1));
        let (result, notices) =
            unpack_bytes(&bytes, &scratch.path("dest"), UnpackOptions::default());
        assert_eq!(result.unwrap().problems, 2, "{notices:?}");
        assert!(scratch.path("dest/name/keep").is_dir());
        assert_eq!(fs::read(scratch.path("dest/plain")).unwrap(), b"plain");
    }

    #[test]
    fn a_truncated_archive_fails_and_leaves_no_half_file() {
        let scratch = Scratch::new();
        fs::write(scratch.path("f"), vec![7u8; 200_000]).unwrap();
        let (bytes, _, _) = pack_to_vec(&[&scratch.path("f")], false);
        fs::create_dir(scratch.path("dest")).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 25, 100_000, 40] {
            let (result, _) = unpack_bytes(
                &bytes[..cut],
                &scratch.path("dest"),
                UnpackOptions::default(),
            );
            assert!(
                matches!(
                    &result,
                    Err(UnpackError::Archive(e)) if matches!(e.kind, DecodeErrorKind::Truncated(_))
                ),
                "cut at {cut}: {result:?}"
            );
            // Everything but the end record: the file is complete and kept.
            let complete = cut >= bytes.len() - 25;
            assert_eq!(scratch.path("dest/f").exists(), complete, "cut at {cut}");
            let _ = fs::remove_file(scratch.path("dest/f"));
            assert_eq!(
                fs::read_dir(scratch.path("dest")).unwrap().count(),
                0,
                "cut at {cut}"
            );
        }
        // Trailing garbage after a complete archive is an error too.
        let mut long = bytes.clone();
        long.push(0);
        let (result, _) = unpack_bytes(&long, &scratch.path("dest"), UnpackOptions::default());
        assert!(matches!(result, Err(UnpackError::Archive(_))), "{result:?}");
    }

    #[test]
    fn the_copy_commands_are_the_agents_own() {
        assert_eq!(
            copy_out_argv(&["a".into(), "-b".into()], true, false),
            [
                "/proc/self/exe",
                "--copy-out",
                "--recursive",
                "--",
                "a",
                "-b"
            ]
        );
        assert_eq!(
            copy_out_argv(&["k".into()], false, true),
            ["/proc/self/exe", "--copy-out", "--dereference", "--", "k"]
        );
        assert_eq!(
            copy_in_argv("/data", false),
            ["/proc/self/exe", "--copy-in", "--", "/data"]
        );
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_padded_and_reported() {
        // /proc files say size 0 and have content: "grew".
        let (bytes, summary, notices) = pack_to_vec(&[Path::new("/proc/self/stat")], false);
        assert_eq!(summary.errors, 1, "{notices:?}");
        assert!(
            notices[0].message.contains("grew while it was read"),
            "{notices:?}"
        );
        let events = crate::archive::tests::decode_all(&bytes, 1 << 20).unwrap();
        assert!(events.len() >= 3);
    }
}
