//! File side effects: atomic writes, private directories, removals.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory. Readers see the old content
/// or the new one, never a mix, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path)?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically move a fully written file into place (same filesystem).
pub fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    sync_dir(parent_of(path)?)
}

/// A unique temporary path next to `path` (`.NAME.tmp-PID-N`), for
/// building a file or directory that is renamed into place when complete.
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Rename a file or directory (same file system); see [`sync_dir`] to make
/// it durable.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// The names of the entries of a directory (unsorted; names that are not
/// UTF-8 are converted lossily).
pub fn entry_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// The content of a file, or `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `N` random bytes from the kernel (`/dev/urandom`).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Create `path` and its missing parents; the last component gets mode 0700.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// Overwrite a small file's bytes in place, without a new block or inode
/// (for a host filesystem too full for [`write_atomic`]'s temporary):
/// same length or shorter, then truncated and synced.
pub fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

/// The length of a file now (0 if it does not exist): where a process that
/// is about to write to it will start.
pub fn len_of(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What was appended to `path` after byte `offset`, at most its last
/// `max_bytes`, as text (for error messages about a process that just ran).
pub fn appended_since(path: &Path, offset: u64, max_bytes: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let end = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(end.saturating_sub(max_bytes)).min(end);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.take(end - start).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Remove a file; a file that is already gone is not an error.
/// Returns whether something was removed.
pub fn remove_file_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove a directory tree; one that is already gone is not an error.
pub fn remove_dir_all_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Create a new file (it must not exist) with mode 0600, for writing.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Open `path` for appending, creating it with mode 0600.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Keep `bytes` allocated past the end of `file` without changing its size
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`): appends then need no new block,
/// even on a full filesystem. Best effort: filesystems that cannot do it
/// (or have no room left for it) simply do not reserve.
/// Hosts without `FALLOC_FL_KEEP_SIZE` (macOS) do not reserve.
pub fn reserve_after_end(file: &File, bytes: u64) {
    let _ = try_reserve_after_end(file, bytes);
}

/// [`reserve_after_end`], but failing when the room cannot be had (a file
/// system that cannot reserve at all counts as success: it never could).
#[cfg(target_os = "linux")]
pub fn try_reserve_after_end(file: &File, bytes: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, len, bytes) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// [`try_reserve_after_end`] where files cannot be extended without
/// changing their size: nothing to reserve, as on a file system that cannot.
#[cfg(not(target_os = "linux"))]
pub fn try_reserve_after_end(_file: &File, _bytes: u64) -> io::Result<()> {
    Ok(())
}

/// Give back what [`reserve_after_end`] kept past the end of the file at
/// `path` (a file no longer appended to). Best effort.
#[cfg(not(target_os = "linux"))]
pub fn release_after_end(_path: &Path, _bytes: u64) {}

/// Give back what [`reserve_after_end`] kept past the end of the file at
/// `path` (a file no longer appended to). Best effort.
#[cfg(target_os = "linux")]
pub fn release_after_end(path: &Path, bytes: u64) {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(meta) = file.metadata() else { return };
    let _ = rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::KEEP_SIZE | rustix::fs::FallocateFlags::PUNCH_HOLE,
        meta.len(),
        bytes,
    );
}

/// The bytes of `path` from `offset` to its end; when there are more than
/// `max`, only the last `max` (as of when it was opened). Also returns the
/// offset the bytes end at.
pub fn read_tail_from(path: &Path, offset: u64, max: u64) -> io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = offset.max(len.saturating_sub(max));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(usize::try_from(len.saturating_sub(start)).unwrap_or(0));
    // Read to the end as it is now (a writer may have appended since).
    file.take(max).read_to_end(&mut bytes)?;
    let end = start + bytes.len() as u64;
    Ok((bytes, end))
}

/// Cut a file to length zero. A writer that opened it with `O_APPEND` (QEMU's
/// `-chardev file,append=on`) carries on at the new end, so no hole appears.
pub fn truncate(path: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// Append `bytes` to `path` (created with mode 0600 if missing).
pub fn append(path: &Path, bytes: &[u8]) -> io::Result<()> {
    open_append(path)?.write_all(bytes)
}

/// Fsync a directory so that renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flush the file system holding `path`, so that a tree renamed into place
/// is complete on disk even after a crash. Best effort.
pub fn sync_filesystem(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(dir) = File::open(path) {
        let _ = rustix::fs::syncfs(&dir);
    }
    // No syncfs elsewhere: flush every file system.
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        rustix::fs::sync();
    }
}

/// How long ago `path` (not followed if a symlink) was last modified;
/// `None` when it cannot be read, or its time is in the future.
pub fn age(path: &Path) -> Option<Duration> {
    let modified = fs::symlink_metadata(path).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// Who a file is: enough to notice that it was replaced or written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

/// The identity of the file at `path`, or `None` when there is none.
pub fn file_id(path: &Path) -> io::Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copy the file `from` to a new file `to` (mode `mode`) byte for byte,
/// holes kept as holes: only the data extents (`SEEK_DATA`/`SEEK_HOLE`)
/// are copied, in the kernel (`copy_file_range`), so a sparse 100 GiB raw
/// disk costs what it holds. The copy is synced before this returns; a
/// failed copy is removed.
pub fn copy_sparse(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let source = File::open(from)?;
    let len = source.metadata()?.len();
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)?;
    let result = (|| {
        target.set_len(len)?;
        let mut offset = 0u64;
        while offset < len {
            let data = match rustix::fs::seek(&source, SeekFrom::Data(offset)) {
                Ok(at) => at,
                // No data after `offset`: the rest is a hole.
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let hole = match rustix::fs::seek(&source, SeekFrom::Hole(data)) {
                Ok(at) => at.min(len),
                Err(e) => return Err(e.into()),
            };
            let mut at = data;
            while at < hole {
                let mut from_at = at;
                let mut to_at = at;
                let chunk = (hole - at).min(1 << 30) as usize;
                let copied = copy_range(&source, &mut from_at, &target, &mut to_at, chunk)?;
                if copied == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ended while it was copied", from.display()),
                    ));
                }
                at += copied as u64;
            }
            offset = hole;
        }
        target.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result
}

/// Make what was written to the file at `path` durable (by whoever wrote
/// it, through any descriptor or a shared mapping).
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Create `path` afresh (replacing what was there) as a file of `size`
/// bytes whose blocks are reserved now (fallocate), mode `mode`. A file
/// system that cannot reserve (no fallocate) gets a sparse file; the blocks
/// it still lacks are [`unallocated_bytes`].
pub fn create_reserved(path: &Path, size: u64, mode: u32) -> io::Result<()> {
    remove_file_if_exists(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_len(size)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(path);
            Err(e.into())
        }
    }
}

/// How many bytes of the file at `path` have no disk blocks yet (a sparse
/// file's holes): what writing all of it would still take.
pub fn unallocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(m.len().saturating_sub(m.blocks() * 512))
}

/// Free space on a file system, as an unprivileged writer may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSpace {
    /// Where the file system holding the path is mounted.
    pub mount_point: PathBuf,
    pub available_bytes: u64,
}

/// The free space of the file system holding `path` (statvfs).
pub fn free_space(path: &Path) -> io::Result<FreeSpace> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(FreeSpace {
        mount_point: mount_point_of(path)?,
        available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// The size and the free space (as an unprivileged writer may use it) of
/// the file system holding `path`, in bytes (statvfs only: cheap enough to
/// ask often).
pub fn space_of(path: &Path) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path)?;
    Ok((
        stat.f_blocks.saturating_mul(stat.f_frsize),
        stat.f_bavail.saturating_mul(stat.f_frsize),
    ))
}

/// The mount point of the file system holding `path`: the highest
/// ancestor on the same device.
pub fn mount_point_of(path: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let path = fs::canonicalize(path)?;
    let dev = fs::metadata(&path)?.dev();
    let mut mount = path.as_path();
    while let Some(parent) = mount.parent() {
        if fs::metadata(parent)?.dev() != dev {
            break;
        }
        mount = parent;
    }
    Ok(mount.to_path_buf())
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Ok(Path::new(".")),
    }
}

/// Copy up to `len` bytes from `from` at `*from_at` to `to` at `*to_at`,
/// advancing both; in the kernel where it can (`copy_file_range`).
#[cfg(target_os = "linux")]
fn copy_range(
    from: &File,
    from_at: &mut u64,
    to: &File,
    to_at: &mut u64,
    len: usize,
) -> io::Result<usize> {
    Ok(rustix::fs::copy_file_range(
        from,
        Some(from_at),
        to,
        Some(to_at),
        len,
    )?)
}

/// [`copy_range`] through a buffer, where there is no `copy_file_range`.
#[cfg(not(target_os = "linux"))]
fn copy_range(
    from: &File,
    from_at: &mut u64,
    to: &File,
    to_at: &mut u64,
    len: usize,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20)];
    let read = from.read_at(&mut buf, *from_at)?;
    to.write_all_at(&buf[..read], *to_at)?;
    *from_at += read as u64;
    *to_at += read as u64;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn reserved_files_have_their_size_and_blocks_and_replace_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        fs::write(&path, b"old content").unwrap();
        let before = file_id(&path).unwrap().unwrap();
        create_reserved(&path, 4 << 20, 0o600).unwrap();
        let after = file_id(&path).unwrap().unwrap();
        assert_eq!(after.size, 4 << 20);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            before.ino != after.ino || before.mtime_ns != after.mtime_ns,
            "a new file"
        );
        // tmpfs and ext4 both reserve; either way the answer is consistent.
        assert!(unallocated_bytes(&path).unwrap() <= 4 << 20);
        assert_eq!(&fs::read(&path).unwrap()[..11], &[0u8; 11]);
        assert_eq!(file_id(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn free_space_names_the_mount_point_of_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let space = free_space(dir.path()).unwrap();
        assert!(space.available_bytes > 0);
        assert!(
            dir.path()
                .canonicalize()
                .unwrap()
                .starts_with(&space.mount_point)
        );
        assert_eq!(
            free_space(Path::new("/")).unwrap().mount_point,
            Path::new("/")
        );
    }

    #[test]
    fn removing_a_missing_file_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!remove_file_if_exists(&dir.path().join("nope")).unwrap());
    }

    #[test]
    fn a_sparse_copy_is_byte_for_byte_and_keeps_its_holes() {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("sparse");
        let mut file = File::create(&from).unwrap();
        file.write_all(b"start").unwrap();
        file.seek(SeekFrom::Start(64 << 20)).unwrap();
        file.write_all(b"middle").unwrap();
        file.set_len(256 << 20).unwrap();
        drop(file);
        let to = dir.path().join("copy");
        copy_sparse(&from, &to, 0o600).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        let copied = fs::metadata(&to).unwrap();
        assert_eq!(copied.len(), 256 << 20);
        assert!(
            copied.blocks() * 512 < 8 << 20,
            "holes kept: {} blocks",
            copied.blocks()
        );
        assert_eq!(copied.mode() & 0o777, 0o600);
        assert!(copy_sparse(&from, &to, 0o600).is_err(), "never over a file");
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        copy_sparse(&empty, &dir.path().join("empty-copy"), 0o600).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("empty-copy")).unwrap().len(),
            0
        );
    }
}
