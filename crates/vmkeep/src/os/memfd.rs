//! Guest RAM as a memfd: memory the host kernel never writes back to a
//! disk (it lives in the page cache of an unnamed tmpfs file, and swaps
//! like anonymous memory), shared so that vhost-user daemons can map it,
//! and reachable from the process that holds it (`/proc/PID/fd/N`), so an
//! agent that adopted a QEMU can still read its guest's RAM.
//!
//! Copies between a memfd and a file go by data extents (`SEEK_DATA` /
//! `SEEK_HOLE`, which tmpfs and memfds answer page by page): pages the
//! guest never touched stay holes on both sides, and so do all-zero blocks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The name every guest-RAM memfd carries (`/proc/PID/fd/N` links to
/// `/memfd:vmkeep-guest-ram (deleted)`).
pub const GUEST_RAM_NAME: &str = "vmkeep-guest-ram";

/// A new memfd of exactly `size` bytes, close-on-exec (a child gets it only
/// when asked: `confine::Holding::inherit_fd`), its size sealed so that no
/// holder can shrink it under another's mapping.
#[cfg(target_os = "linux")]
pub fn create_guest_ram(size: u64) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        GUEST_RAM_NAME,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Hosts without memfds (macOS, type-checked only): an unlinked file of
/// exactly `size` bytes in the temporary directory, close-on-exec. Unlike
/// a memfd, the kernel may write its pages back to that disk.
#[cfg(not(target_os = "linux"))]
pub fn create_guest_ram(size: u64) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path =
        std::env::temp_dir().join(format!("{GUEST_RAM_NAME}-{}-{nanos}", std::process::id()));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    file.set_len(size)?;
    Ok(file.into())
}

/// Why a process's descriptor is not a guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is {target}, not a guest RAM memfd ({GUEST_RAM_NAME})", path.display())]
    NotGuestRam { path: PathBuf, target: String },
}

/// Open descriptor `fd` of process `pid` read-only, if it is a guest RAM
/// memfd (its link names [`GUEST_RAM_NAME`]). The file opened is the
/// memfd itself, whoever else holds it.
#[cfg(target_os = "linux")]
pub fn open_of_process(pid: u32, fd: RawFd) -> Result<File, OpenError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let target = std::fs::read_link(&path).map_err(|source| OpenError::Open {
        path: path.clone(),
        source,
    })?;
    let target = target.to_string_lossy().into_owned();
    if !target.starts_with(&format!("/memfd:{GUEST_RAM_NAME}")) {
        return Err(OpenError::NotGuestRam { path, target });
    }
    File::open(&path).map_err(|source| OpenError::Open { path, source })
}

/// Hosts without `/proc` (macOS): another process's descriptor cannot be
/// opened, so a VM's RAM cannot be saved from its QEMU's pid.
#[cfg(not(target_os = "linux"))]
pub fn open_of_process(pid: u32, fd: RawFd) -> Result<File, OpenError> {
    Err(OpenError::Open {
        path: PathBuf::from(format!("descriptor {fd} of process {pid}")),
        source: io::Error::new(
            io::ErrorKind::Unsupported,
            "this host has no /proc to reach a QEMU's guest RAM: suspend works on Linux hosts only",
        ),
    })
}

/// Bytes of memory the file holds (its allocated blocks): for a memfd, the
/// pages the guest touched (in RAM or swapped), what a copy writes at most.
pub fn allocated_bytes(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

/// What [`copy_extents`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Bytes read from the source's data extents.
    pub read: u64,
    /// Bytes written (all-zero blocks are skipped).
    pub written: u64,
}

/// The block a copy reads and writes at a time, and the unit of zero
/// skipping.
const CHUNK: usize = 1 << 20;
const BLOCK: usize = 4096;

/// Copy the first `len` bytes of `from` into `to` at the same offsets,
/// data extents only and all-zero 4 KiB blocks skipped: `to` must be
/// zero (a hole) where nothing is written (a fresh memfd, or a new file
/// of length `len`). Stops with `Interrupted` once `cancel` is set.
pub fn copy_extents(from: &File, to: &File, len: u64, cancel: &AtomicBool) -> io::Result<Copied> {
    let mut copied = Copied::default();
    let mut buffer = vec![0u8; CHUNK];
    for_each_extent(from, len, |data, hole| {
        let mut at = data;
        while at < hole {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = (hole - at).min(CHUNK as u64) as usize;
            let chunk = &mut buffer[..n];
            from.read_exact_at(chunk, at)?;
            copied.read += n as u64;
            // Runs of non-zero blocks written at once.
            let mut start = None;
            for (i, block) in chunk.chunks(BLOCK).enumerate() {
                let zero = is_zero(block);
                match (zero, start) {
                    (false, None) => start = Some(i * BLOCK),
                    (true, Some(s)) => {
                        to.write_all_at(&chunk[s..i * BLOCK], at + s as u64)?;
                        copied.written += (i * BLOCK - s) as u64;
                        start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = start {
                to.write_all_at(&chunk[s..], at + s as u64)?;
                copied.written += (n - s) as u64;
            }
            at += n as u64;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Whether `block` is all zero bytes, 8 at a time: as fast whatever the
/// optimisation level (the release profile optimises for size, which
/// leaves a byte loop unvectorised: 1.2-1.3 GB/s against 12-16 GB/s for
/// this, measured on the 2-core machine; docs/memory.md).
fn is_zero(block: &[u8]) -> bool {
    let words = block.chunks_exact(8);
    let rest = words.remainder();
    words.fold(0u64, |any, w| {
        any | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    }) == 0
        && rest.iter().all(|&b| b == 0)
}

/// Fill `to` (a fresh memfd, all holes) from the first `len` bytes of
/// `from`'s data extents at the same offsets, in the kernel (`sendfile`:
/// one copy, from `from`'s page cache into the memfd, and no buffer of
/// ours); holes stay holes. For a resume: the saved copy has no zero blocks
/// to skip. Stops with `Interrupted` once `cancel` is set (looked at every
/// [`FILL_PIECE`]).
///
/// The fastest of the ways measured for ~120 MiB from the page cache
/// (2026-12-07, 15 rounds interleaved, medians): `sendfile` 82 ms, the
/// same after an `fallocate` 79 ms, `pwrite` from a mapping of the saved
/// file 83 ms, a mapping of the memfd populated by `MADV_POPULATE_WRITE`
/// and `pread` into it 138 ms (the populate zeroes every page, which the
/// memfd's write path skips for a page written whole).
#[cfg(target_os = "linux")]
pub fn fill_extents(from: &File, to: &File, len: u64, cancel: &AtomicBool) -> io::Result<u64> {
    let mut filled = 0u64;
    for_each_extent(from, len, |data, hole| {
        // sendfile writes at the target's file offset.
        rustix::fs::seek(to.as_fd(), rustix::fs::SeekFrom::Start(data))?;
        let mut at = data;
        while at < hole {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let count = (hole - at).min(FILL_PIECE) as usize;
            let mut from_at = at;
            let n = rustix::fs::sendfile(to.as_fd(), from.as_fd(), Some(&mut from_at), count)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += n as u64;
            filled += n as u64;
        }
        Ok(())
    })?;
    Ok(filled)
}

/// The most [`fill_extents`] copies between two looks at its `cancel`
/// (the same speed as one call per extent, measured).
#[cfg(target_os = "linux")]
const FILL_PIECE: u64 = 8 << 20;

/// Hosts without memfds (macOS): the same fill, through a buffer.
#[cfg(not(target_os = "linux"))]
pub fn fill_extents(from: &File, to: &File, len: u64, cancel: &AtomicBool) -> io::Result<u64> {
    Ok(copy_extents(from, to, len, cancel)?.written)
}

/// Call `each(start, end)` for every data extent of the first `len` bytes
/// of `file` (`SEEK_DATA`/`SEEK_HOLE`), in order.
fn for_each_extent(
    file: &File,
    len: u64,
    mut each: impl FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(file.as_fd(), SeekFrom::Data(offset)) {
            Ok(at) => at,
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(file.as_fd(), SeekFrom::Hole(data))?.min(len);
        each(data, hole)?;
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_zero_only_when_every_byte_is() {
        assert!(is_zero(&[0u8; BLOCK]));
        assert!(is_zero(&[0u8; 13]), "a tail shorter than a word");
        assert!(is_zero(&[]));
        for at in [0, 7, 8, BLOCK - 1] {
            let mut block = [0u8; BLOCK];
            block[at] = 1;
            assert!(!is_zero(&block), "a one at {at}");
        }
        let mut odd = [0u8; 13];
        odd[12] = 0x80;
        assert!(!is_zero(&odd), "a one in the tail");
    }

    #[test]
    fn a_guest_ram_keeps_its_size_and_copies_by_extents_both_ways() {
        let ram: File = create_guest_ram(8 << 20).unwrap().into();
        assert_eq!(ram.metadata().unwrap().len(), 8 << 20);
        assert!(ram.set_len(4 << 20).is_err(), "the size is sealed");
        assert_eq!(allocated_bytes(&ram).unwrap(), 0, "nothing touched yet");
        ram.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        ram.write_all_at(&[0u8; 4096], 3 << 20).unwrap(); // touched, zero
        ram.write_all_at(b"end", (8 << 20) - 3).unwrap();
        assert!(allocated_bytes(&ram).unwrap() >= 3 * 4096);

        let dir = tempfile::tempdir().unwrap();
        let saved = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("saved"))
            .unwrap();
        saved.set_len(8 << 20).unwrap();
        let never = AtomicBool::new(false);
        let out = copy_extents(&ram, &saved, 8 << 20, &never).unwrap();
        assert_eq!(out.written, 8192 + 4096, "data only, zero blocks skipped");
        assert!(
            allocated_bytes(&saved).unwrap() <= 64 << 10,
            "sparse on disk"
        );

        let back: File = create_guest_ram(8 << 20).unwrap().into();
        assert_eq!(
            fill_extents(&saved, &back, 8 << 20, &never).unwrap(),
            8192 + 4096
        );
        assert!(
            allocated_bytes(&back).unwrap() <= 64 << 10,
            "the holes stay holes in the filled memfd"
        );
        let mut a = vec![0u8; 8 << 20];
        let mut b = vec![0u8; 8 << 20];
        ram.read_exact_at(&mut a, 0).unwrap();
        back.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b, "the same bytes came back");

        let cancelled = AtomicBool::new(true);
        let error = copy_extents(&ram, &saved, 8 << 20, &cancelled).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Interrupted);
        let again: File = create_guest_ram(8 << 20).unwrap().into();
        let error = fill_extents(&saved, &again, 8 << 20, &cancelled).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Interrupted, "a stopped fill");
        assert_eq!(allocated_bytes(&again).unwrap(), 0, "stopped before a byte");
    }

    #[test]
    fn only_a_guest_ram_memfd_of_a_process_is_opened() {
        use std::os::fd::AsRawFd;
        let ram = create_guest_ram(1 << 20).unwrap();
        let me = std::process::id();
        let file = open_of_process(me, ram.as_raw_fd()).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        let other = File::open("/dev/null").unwrap();
        let error = open_of_process(me, other.as_raw_fd()).unwrap_err();
        assert!(matches!(error, OpenError::NotGuestRam { .. }), "{error}");
    }
}
