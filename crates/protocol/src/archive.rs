//! The archive that `vmkeep copy` streams: files, directories and symlinks
//! with their permission bits and mtimes, in one pass, with no size limit.
//!
//! # Format
//!
//! Little-endian integers throughout.
//!
//! ```text
//! archive := MAGIC record* end
//! MAGIC   := "VMKARC" 0x00 0x01                      (8 bytes; 0x01 is the version)
//! record  := entry | error
//! entry   := 'E' kind:u8 mode:u32 mtime_secs:i64 mtime_nanos:u32 size:u64
//!            path_len:u16 target_len:u16 path target content
//!            kind: 'f' file, 'd' directory, 'l' symlink
//!            mode: the permission bits and setuid/setgid/sticky (<= 0o7777)
//!            size: bytes of content (a file's; 0 for the others)
//!            target: a symlink's target (empty for the others)
//!            content: exactly `size` bytes (files only)
//! error   := 'X' path_len:u16 message_len:u16 path message
//!            a problem on the sending side (a file it could not read, a
//!            socket it skipped, a file that changed while it was read);
//!            path may be empty (about the whole copy); message is UTF-8
//! end     := 'Z' entries:u64 errors:u64 bytes:u64
//!            how many entry and error records came, and the sum of `size`
//! ```
//!
//! Paths are relative, `/`-separated, at most [`MAX_PATH_BYTES`] and
//! [`MAX_DEPTH`] components, none empty, `.`, `..` or holding a NUL (see
//! [`ArchivePath`]). Entries come depth first, a directory before what it
//! holds: an entry's parent is a directory entry that came earlier and whose
//! subtree has not been left since, or the entry is at the top (one
//! component: the name of what was copied). Symlink targets are copied as
//! they are (they are never followed, on either side).
//!
//! # Decoding untrusted bytes
//!
//! [`Decoder`] is push-based and allocates at most one header
//! ([`MAX_HEADER_BYTES`]); it refuses bad magic, unknown records and
//! kinds, bad paths, entries out of order, mode bits beyond `0o7777`, sizes
//! on a non-file, content that does not fill its size, data after the end,
//! and an end record whose counts do not match; a stream that stops before
//! its end record is an error ([`Decoder::finish`]), never a silent end.
//! Setuid, setgid and sticky bits are never mixed into [`Entry::mode`]:
//! they come apart in [`Entry::special_bits`], for the caller to strip (and
//! say so) or keep.

use std::fmt;
use std::io::{self, Write};

/// First bytes of every archive.
pub const MAGIC: [u8; 8] = *b"VMKARC\x00\x01";
/// Longest path in an archive.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest symlink target.
pub const MAX_TARGET_BYTES: usize = 4096;
/// Longest error message.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most components of a path (how deep a tree can be).
pub const MAX_DEPTH: usize = 256;
/// Setuid, setgid and sticky.
pub const SPECIAL_BITS: u32 = 0o7000;
/// Read, write and execute for user, group and others.
pub const PERMISSION_BITS: u32 = 0o777;

const TAG_ENTRY: u8 = b'E';
const TAG_ERROR: u8 = b'X';
const TAG_END: u8 = b'Z';
const ENTRY_FIXED: usize = 1 + 1 + 4 + 8 + 4 + 8 + 2 + 2;
const ERROR_FIXED: usize = 1 + 2 + 2;
const END_FIXED: usize = 1 + 8 + 8 + 8;
/// Largest header (record without a file's content) a decoder holds.
pub const MAX_HEADER_BYTES: usize = ENTRY_FIXED + MAX_PATH_BYTES + MAX_TARGET_BYTES;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::File => b'f',
            EntryKind::Dir => b'd',
            EntryKind::Symlink => b'l',
        }
    }

    fn from_code(code: u8) -> Option<EntryKind> {
        match code {
            b'f' => Some(EntryKind::File),
            b'd' => Some(EntryKind::Dir),
            b'l' => Some(EntryKind::Symlink),
            _ => None,
        }
    }
}

/// Why bytes are not an archive path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    TooLong(usize),
    TooDeep(usize),
    /// It starts with `/`.
    Absolute,
    /// `//` or a trailing `/`.
    EmptyComponent,
    /// A `.` component.
    Dot,
    /// A `..` component.
    DotDot,
    Nul,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::Empty => write!(f, "an empty path"),
            PathProblem::TooLong(len) => {
                write!(f, "a path of {len} bytes (at most {MAX_PATH_BYTES})")
            }
            PathProblem::TooDeep(depth) => {
                write!(f, "a path of {depth} components (at most {MAX_DEPTH})")
            }
            PathProblem::Absolute => write!(f, "an absolute path"),
            PathProblem::EmptyComponent => write!(f, "a path with an empty component"),
            PathProblem::Dot => write!(f, "a path with a `.` component"),
            PathProblem::DotDot => write!(f, "a path with a `..` component"),
            PathProblem::Nul => write!(f, "a path with a NUL byte"),
        }
    }
}

/// A checked relative path: see the module docs. Shown escaped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchivePath(Vec<u8>);

impl ArchivePath {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ArchivePath, PathProblem> {
        let bytes = bytes.into();
        check_path(&bytes)?;
        Ok(ArchivePath(bytes))
    }

    /// This path with one more component.
    pub fn join(&self, name: &[u8]) -> Result<ArchivePath, PathProblem> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        ArchivePath::new(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/')
    }

    /// How many components (1 for a top-level entry).
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == b'/').count() + 1
    }

    /// The last component.
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(slash) => &self.0[slash + 1..],
            None => &self.0,
        }
    }

    /// Everything before the last component (empty at the top).
    pub fn parent_bytes(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(slash) => &self.0[..slash],
            None => &[],
        }
    }
}

impl fmt::Display for ArchivePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown(&self.0))
    }
}

impl fmt::Debug for ArchivePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArchivePath({:?})", shown(&self.0))
    }
}

/// Bytes as printable text: UTF-8 kept, control characters and invalid
/// bytes escaped.
pub fn shown(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn check_path(bytes: &[u8]) -> Result<(), PathProblem> {
    if bytes.is_empty() {
        return Err(PathProblem::Empty);
    }
    if bytes.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong(bytes.len()));
    }
    if bytes[0] == b'/' {
        return Err(PathProblem::Absolute);
    }
    if bytes.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut depth = 0;
    for component in bytes.split(|b| *b == b'/') {
        depth += 1;
        match component {
            b"" => return Err(PathProblem::EmptyComponent),
            b"." => return Err(PathProblem::Dot),
            b".." => return Err(PathProblem::DotDot),
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err(PathProblem::TooDeep(depth));
    }
    Ok(())
}

/// A modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Mtime {
    pub secs: i64,
    /// Below 1,000,000,000.
    pub nanos: u32,
}

/// One file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: ArchivePath,
    pub kind: EntryKind,
    /// Permission bits only ([`PERMISSION_BITS`]).
    pub mode: u32,
    /// Setuid, setgid and sticky bits ([`SPECIAL_BITS`]) the entry has: never
    /// part of `mode`, so that keeping them is a decision.
    pub special_bits: u32,
    pub mtime: Mtime,
    /// Bytes of content (files; 0 for the others).
    pub size: u64,
    /// A symlink's target (symlinks only; never empty).
    pub target: Option<Vec<u8>>,
}

impl Entry {
    /// An entry from a full `st_mode`-style mode (permission and special bits).
    fn with_mode(path: ArchivePath, kind: EntryKind, mode: u32, mtime: Mtime) -> Entry {
        Entry {
            path,
            kind,
            mode: mode & PERMISSION_BITS,
            special_bits: mode & SPECIAL_BITS,
            mtime,
            size: 0,
            target: None,
        }
    }

    pub fn file(path: ArchivePath, mode: u32, mtime: Mtime, size: u64) -> Entry {
        Entry {
            size,
            ..Entry::with_mode(path, EntryKind::File, mode, mtime)
        }
    }

    pub fn dir(path: ArchivePath, mode: u32, mtime: Mtime) -> Entry {
        Entry::with_mode(path, EntryKind::Dir, mode, mtime)
    }

    pub fn symlink(path: ArchivePath, target: Vec<u8>, mtime: Mtime) -> Entry {
        Entry {
            target: Some(target),
            ..Entry::with_mode(path, EntryKind::Symlink, 0o777, mtime)
        }
    }

    /// The mode with its special bits.
    pub fn full_mode(&self) -> u32 {
        self.mode | self.special_bits
    }

    fn check(&self) -> Result<(), DecodeErrorKind> {
        if self.mode & !PERMISSION_BITS != 0 || self.special_bits & !SPECIAL_BITS != 0 {
            return Err(DecodeErrorKind::BadMode(self.full_mode()));
        }
        if self.mtime.nanos >= 1_000_000_000 {
            return Err(DecodeErrorKind::BadMtime(self.mtime.nanos));
        }
        if self.kind != EntryKind::File && self.size != 0 {
            return Err(DecodeErrorKind::SizeOnNonFile(self.size));
        }
        match (&self.target, self.kind) {
            (Some(target), EntryKind::Symlink) => {
                if target.is_empty() {
                    return Err(DecodeErrorKind::BadTarget("an empty symlink target"));
                }
                if target.len() > MAX_TARGET_BYTES {
                    return Err(DecodeErrorKind::BadTarget("a symlink target too long"));
                }
                if target.contains(&0) {
                    return Err(DecodeErrorKind::BadTarget(
                        "a symlink target with a NUL byte",
                    ));
                }
                Ok(())
            }
            (None, EntryKind::Symlink) => {
                Err(DecodeErrorKind::BadTarget("a symlink without a target"))
            }
            (Some(_), _) => Err(DecodeErrorKind::BadTarget("a target on a non-symlink")),
            (None, _) => Ok(()),
        }
    }
}

/// An error record: a problem on the sending side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What it is about (`None`: the copy as a whole).
    pub path: Option<ArchivePath>,
    /// UTF-8 (lossily decoded), at most [`MAX_MESSAGE_BYTES`]; untrusted:
    /// show it escaped.
    pub message: String,
}

/// The counts of an end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub entries: u64,
    pub errors: u64,
    /// The sum of the files' sizes.
    pub bytes: u64,
}

/// What the decoder found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new entry; for a file, its content follows as `Data` (none if it is
    /// empty), then `FileEnd`.
    Entry(Entry),
    /// The next bytes of the current file (never empty).
    Data(&'a [u8]),
    /// The current file's content is complete.
    FileEnd,
    /// An error record.
    Error(Problem),
    /// The end record (checked against what came); the archive is complete.
    End(Summary),
}

/// Why the bytes are not a valid archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    BadMagic,
    UnknownRecord(u8),
    UnknownKind(u8),
    BadPath(PathProblem),
    BadMode(u32),
    BadMtime(u32),
    SizeOnNonFile(u64),
    BadTarget(&'static str),
    MessageTooLong(usize),
    /// The entry's parent is not the directory the archive is in.
    OutOfOrder(ArchivePath),
    /// The end record's counts differ from what came.
    CountMismatch {
        said: Summary,
        saw: Summary,
    },
    /// Bytes after the end record.
    TrailingData,
    /// The stream stopped before the end record (`what` was going on).
    Truncated(&'static str),
    /// An error was already reported; the decoder takes nothing more.
    Failed,
}

/// A decode error, at a byte offset of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: u64,
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad archive at byte {}: ", self.offset)?;
        match &self.kind {
            DecodeErrorKind::BadMagic => write!(f, "not a vmkeep archive (or another version)"),
            DecodeErrorKind::UnknownRecord(tag) => write!(f, "an unknown record {tag:#04x}"),
            DecodeErrorKind::UnknownKind(kind) => write!(f, "an unknown entry kind {kind:#04x}"),
            DecodeErrorKind::BadPath(problem) => write!(f, "{problem}"),
            DecodeErrorKind::BadMode(mode) => write!(f, "mode {mode:#o} (at most 0o7777)"),
            DecodeErrorKind::BadMtime(nanos) => write!(f, "an mtime with {nanos} nanoseconds"),
            DecodeErrorKind::SizeOnNonFile(size) => {
                write!(f, "a size of {size} on a directory or symlink")
            }
            DecodeErrorKind::BadTarget(what) => write!(f, "{what}"),
            DecodeErrorKind::MessageTooLong(len) => {
                write!(f, "an error message of {len} bytes")
            }
            DecodeErrorKind::OutOfOrder(path) => write!(
                f,
                "{path} comes outside the directory the archive is in (entries come depth first)"
            ),
            DecodeErrorKind::CountMismatch { said, saw } => write!(
                f,
                "the end record counts {} entries, {} errors and {} bytes; the archive had {}, {} and {}",
                said.entries, said.errors, said.bytes, saw.entries, saw.errors, saw.bytes
            ),
            DecodeErrorKind::TrailingData => write!(f, "data after the end record"),
            DecodeErrorKind::Truncated(what) => write!(f, "the stream ended {what}"),
            DecodeErrorKind::Failed => write!(f, "the archive was already found bad"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The directories an archive is in, to check that entries come depth
/// first (used by both the encoder and the decoder).
#[derive(Debug, Default, Clone)]
struct Order {
    /// The innermost open directory's path.
    current: Vec<u8>,
    /// The length of `current` at each open level.
    levels: Vec<usize>,
}

impl Order {
    fn admit(&mut self, entry: &Entry) -> Result<(), DecodeErrorKind> {
        let parent = entry.path.parent_bytes();
        while self.current != parent {
            if self.levels.pop().is_none() {
                return Err(DecodeErrorKind::OutOfOrder(entry.path.clone()));
            }
            let len = self.levels.last().copied().unwrap_or(0);
            self.current.truncate(len);
        }
        if entry.kind == EntryKind::Dir {
            self.current.clear();
            self.current.extend_from_slice(entry.path.as_bytes());
            self.levels.push(self.current.len());
        }
        Ok(())
    }
}

/// Writes an archive. Misuse (content that does not match a size, entries
/// out of order) is an `InvalidInput` error, and nothing is written for it.
pub struct Encoder<W: Write> {
    out: W,
    /// Content still owed to the current file.
    remaining: u64,
    order: Order,
    counts: Summary,
}

fn misuse(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl<W: Write> Encoder<W> {
    /// Start an archive (writes the magic).
    pub fn new(mut out: W) -> io::Result<Encoder<W>> {
        out.write_all(&MAGIC)?;
        Ok(Encoder {
            out,
            remaining: 0,
            order: Order::default(),
            counts: Summary::default(),
        })
    }

    fn idle(&self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(misuse(format!(
                "{} bytes of the current file are still owed",
                self.remaining
            )));
        }
        Ok(())
    }

    /// Write an entry's header; a file's `size` bytes must follow with
    /// [`Encoder::data`].
    pub fn entry(&mut self, entry: &Entry) -> io::Result<()> {
        self.idle()?;
        entry.check().map_err(|kind| {
            misuse(
                DecodeError {
                    offset: 0,
                    kind: kind.clone(),
                }
                .to_string(),
            )
        })?;
        let mut order = self.order.clone();
        order
            .admit(entry)
            .map_err(|_| misuse(format!("{} is out of order", entry.path)))?;
        let target = entry.target.as_deref().unwrap_or_default();
        let path = entry.path.as_bytes();
        let mut header = Vec::with_capacity(ENTRY_FIXED + path.len() + target.len());
        header.push(TAG_ENTRY);
        header.push(entry.kind.code());
        header.extend_from_slice(&entry.full_mode().to_le_bytes());
        header.extend_from_slice(&entry.mtime.secs.to_le_bytes());
        header.extend_from_slice(&entry.mtime.nanos.to_le_bytes());
        header.extend_from_slice(&entry.size.to_le_bytes());
        header.extend_from_slice(&(path.len() as u16).to_le_bytes());
        header.extend_from_slice(&(target.len() as u16).to_le_bytes());
        header.extend_from_slice(path);
        header.extend_from_slice(target);
        self.out.write_all(&header)?;
        self.order = order;
        self.counts.entries += 1;
        self.counts.bytes = self.counts.bytes.saturating_add(entry.size);
        self.remaining = entry.size;
        Ok(())
    }

    /// The next bytes of the current file.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.remaining {
            return Err(misuse(format!(
                "{} bytes of content where {} were owed",
                bytes.len(),
                self.remaining
            )));
        }
        self.out.write_all(bytes)?;
        self.remaining -= bytes.len() as u64;
        Ok(())
    }

    /// Write an error record (cut to [`MAX_MESSAGE_BYTES`]).
    pub fn error(&mut self, path: Option<&ArchivePath>, message: &str) -> io::Result<()> {
        self.idle()?;
        let message = crate::session::truncate_message(message.to_string(), MAX_MESSAGE_BYTES);
        let path = path.map(ArchivePath::as_bytes).unwrap_or_default();
        let mut record = Vec::with_capacity(ERROR_FIXED + path.len() + message.len());
        record.push(TAG_ERROR);
        record.extend_from_slice(&(path.len() as u16).to_le_bytes());
        record.extend_from_slice(&(message.len() as u16).to_le_bytes());
        record.extend_from_slice(path);
        record.extend_from_slice(message.as_bytes());
        self.out.write_all(&record)?;
        self.counts.errors += 1;
        Ok(())
    }

    /// What was written so far.
    pub fn counts(&self) -> Summary {
        self.counts
    }

    /// Write the end record and hand the writer back (not flushed).
    pub fn finish(mut self) -> io::Result<(W, Summary)> {
        self.idle()?;
        let mut record = Vec::with_capacity(END_FIXED);
        record.push(TAG_END);
        record.extend_from_slice(&self.counts.entries.to_le_bytes());
        record.extend_from_slice(&self.counts.errors.to_le_bytes());
        record.extend_from_slice(&self.counts.bytes.to_le_bytes());
        self.out.write_all(&record)?;
        Ok((self.out, self.counts))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    Header,
    Content { remaining: u64 },
    FileEnd,
    Done,
    Failed,
}

/// Reads an archive from bytes pushed in as they arrive.
///
/// ```
/// # use vmkeep_protocol::archive::{Decoder, Encoder, Event};
/// # fn handle(_: Event) {}
/// # let (bytes, _) = Encoder::new(Vec::new()).unwrap().finish().unwrap();
/// # let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
/// let mut decoder = Decoder::new();
/// for chunk in chunks {
///     let mut input = chunk;
///     loop {
///         let (used, event) = decoder.decode(input)?;
///         input = &input[used..];
///         match event {
///             Some(event) => handle(event),
///             None => break, // all of `input` taken: push more
///         }
///     }
/// }
/// decoder.finish()?; // at the end of the stream: an error unless complete
/// # Ok::<(), vmkeep_protocol::archive::DecodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// The header (or magic) so far.
    buf: Vec<u8>,
    /// Bytes taken so far.
    offset: u64,
    order: Order,
    counts: Summary,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            state: State::Magic,
            buf: Vec::new(),
            offset: 0,
            order: Order::default(),
            counts: Summary::default(),
        }
    }

    /// Whether the end record came.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes taken so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fail(&mut self, kind: DecodeErrorKind) -> DecodeError {
        self.state = State::Failed;
        DecodeError {
            offset: self.offset,
            kind,
        }
    }

    /// Take bytes from `input` up to the next event: returns how many were
    /// taken and the event, or `None` once all of `input` is taken and more
    /// is needed (or the archive is done). Call again with the rest.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Event<'a>>), DecodeError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Failed => return Err(self.fail(DecodeErrorKind::Failed)),
                State::Done => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    return Err(self.fail(DecodeErrorKind::TrailingData));
                }
                State::FileEnd => {
                    self.state = State::Header;
                    return Ok((used, Some(Event::FileEnd)));
                }
                State::Content { remaining } => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::FileEnd
                    } else {
                        State::Content { remaining: left }
                    };
                    self.offset += take as u64;
                    return Ok((used + take, Some(Event::Data(&rest[..take]))));
                }
                State::Magic => {
                    let want = MAGIC.len() - self.buf.len();
                    let take = want.min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.buf[..] != MAGIC[..self.buf.len()] {
                        return Err(self.fail(DecodeErrorKind::BadMagic));
                    }
                    self.offset += take as u64;
                    if self.buf.len() < MAGIC.len() {
                        return Ok((used, None));
                    }
                    self.buf.clear();
                    self.state = State::Header;
                }
                State::Header => {
                    let needed = match self.header_len() {
                        Ok(needed) => needed,
                        Err(kind) => return Err(self.fail(kind)),
                    };
                    if self.buf.len() < needed {
                        if rest.is_empty() {
                            return Ok((used, None));
                        }
                        let take = (needed - self.buf.len()).min(rest.len());
                        self.buf.extend_from_slice(&rest[..take]);
                        used += take;
                        self.offset += take as u64;
                        continue;
                    }
                    // `needed` covers the fixed part, so it is the whole
                    // record: the header is complete.
                    let record = std::mem::take(&mut self.buf);
                    let event = self.record(&record);
                    self.buf = record;
                    self.buf.clear();
                    return match event {
                        Ok(event) => Ok((used, Some(event))),
                        Err(kind) => Err(self.fail(kind)),
                    };
                }
            }
        }
    }

    /// How long the header being read is, as far as its bytes so far tell:
    /// 1 before the tag, the fixed part before the lengths, then the whole.
    fn header_len(&self) -> Result<usize, DecodeErrorKind> {
        let Some(&tag) = self.buf.first() else {
            return Ok(1);
        };
        let fixed = match tag {
            TAG_ENTRY => ENTRY_FIXED,
            TAG_ERROR => ERROR_FIXED,
            TAG_END => END_FIXED,
            other => return Err(DecodeErrorKind::UnknownRecord(other)),
        };
        if self.buf.len() < fixed {
            return Ok(fixed);
        }
        match tag {
            TAG_ENTRY => {
                let path = u16_at(&self.buf, 26);
                let target = u16_at(&self.buf, 28);
                if path > MAX_PATH_BYTES {
                    return Err(DecodeErrorKind::BadPath(PathProblem::TooLong(path)));
                }
                if target > MAX_TARGET_BYTES {
                    return Err(DecodeErrorKind::BadTarget("a symlink target too long"));
                }
                Ok(fixed + path + target)
            }
            TAG_ERROR => {
                let path = u16_at(&self.buf, 1);
                let message = u16_at(&self.buf, 3);
                if path > MAX_PATH_BYTES {
                    return Err(DecodeErrorKind::BadPath(PathProblem::TooLong(path)));
                }
                if message > MAX_MESSAGE_BYTES {
                    return Err(DecodeErrorKind::MessageTooLong(message));
                }
                Ok(fixed + path + message)
            }
            _ => Ok(fixed),
        }
    }

    fn record(&mut self, record: &[u8]) -> Result<Event<'static>, DecodeErrorKind> {
        match record[0] {
            TAG_ENTRY => {
                let kind = EntryKind::from_code(record[1])
                    .ok_or(DecodeErrorKind::UnknownKind(record[1]))?;
                let mode = u32_at(record, 2);
                let secs = u64_at(record, 6) as i64;
                let nanos = u32_at(record, 14);
                let size = u64_at(record, 18);
                let path_len = u16_at(record, 26);
                let path = &record[ENTRY_FIXED..ENTRY_FIXED + path_len];
                let target = &record[ENTRY_FIXED + path_len..];
                if mode > 0o7777 {
                    return Err(DecodeErrorKind::BadMode(mode));
                }
                let path = ArchivePath::new(path).map_err(DecodeErrorKind::BadPath)?;
                let entry = Entry {
                    path,
                    kind,
                    mode: mode & PERMISSION_BITS,
                    special_bits: mode & SPECIAL_BITS,
                    mtime: Mtime { secs, nanos },
                    size,
                    target: (kind == EntryKind::Symlink || !target.is_empty())
                        .then(|| target.to_vec()),
                };
                entry.check()?;
                self.order.admit(&entry)?;
                self.counts.entries += 1;
                self.counts.bytes = self.counts.bytes.saturating_add(size);
                self.state = match (kind, size) {
                    (EntryKind::File, 0) => State::FileEnd,
                    (EntryKind::File, remaining) => State::Content { remaining },
                    _ => State::Header,
                };
                Ok(Event::Entry(entry))
            }
            TAG_ERROR => {
                let path_len = u16_at(record, 1);
                let path = &record[ERROR_FIXED..ERROR_FIXED + path_len];
                let message = &record[ERROR_FIXED + path_len..];
                let path = if path.is_empty() {
                    None
                } else {
                    Some(ArchivePath::new(path).map_err(DecodeErrorKind::BadPath)?)
                };
                self.counts.errors += 1;
                Ok(Event::Error(Problem {
                    path,
                    message: String::from_utf8_lossy(message).into_owned(),
                }))
            }
            _ => {
                let said = Summary {
                    entries: u64_at(record, 1),
                    errors: u64_at(record, 9),
                    bytes: u64_at(record, 17),
                };
                if said != self.counts {
                    return Err(DecodeErrorKind::CountMismatch {
                        said,
                        saw: self.counts,
                    });
                }
                self.state = State::Done;
                Ok(Event::End(said))
            }
        }
    }

    /// At the end of the stream: `Ok` only if the archive was complete.
    pub fn finish(&self) -> Result<Summary, DecodeError> {
        let what = match self.state {
            State::Done => return Ok(self.counts),
            State::Failed => {
                return Err(DecodeError {
                    offset: self.offset,
                    kind: DecodeErrorKind::Failed,
                });
            }
            State::Magic => "before the archive began",
            State::Header if self.buf.is_empty() => "without an end record",
            State::Header => "inside a record",
            State::Content { .. } | State::FileEnd => "inside a file's content",
        };
        Err(DecodeError {
            offset: self.offset,
            kind: DecodeErrorKind::Truncated(what),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry record's bytes, whatever they say (for hostile archives).
    pub(crate) fn raw_entry(kind: u8, mode: u32, size: u64, path: &[u8], target: &[u8]) -> Vec<u8> {
        let mut record = vec![TAG_ENTRY, kind];
        record.extend_from_slice(&mode.to_le_bytes());
        record.extend_from_slice(&1_700_000_000i64.to_le_bytes());
        record.extend_from_slice(&5u32.to_le_bytes());
        record.extend_from_slice(&size.to_le_bytes());
        record.extend_from_slice(&(path.len() as u16).to_le_bytes());
        record.extend_from_slice(&(target.len() as u16).to_le_bytes());
        record.extend_from_slice(path);
        record.extend_from_slice(target);
        record
    }

    pub(crate) fn raw_end(entries: u64, errors: u64, bytes: u64) -> Vec<u8> {
        let mut record = vec![TAG_END];
        for n in [entries, errors, bytes] {
            record.extend_from_slice(&n.to_le_bytes());
        }
        record
    }

    pub(crate) fn path(text: &str) -> ArchivePath {
        ArchivePath::new(text.as_bytes()).unwrap()
    }

    fn mtime() -> Mtime {
        Mtime {
            secs: 1_700_000_000,
            nanos: 123_456_789,
        }
    }

    /// An archive of a small tree, and what it holds.
    fn sample() -> (Vec<u8>, Vec<Owned>) {
        let mut encoder = Encoder::new(Vec::new()).unwrap();
        let mut expected = Vec::new();
        let dir = Entry::dir(path("top"), 0o755, mtime());
        encoder.entry(&dir).unwrap();
        expected.push(Owned::Entry(dir));
        let file = Entry::file(path("top/a.txt"), 0o4755, mtime(), 11);
        encoder.entry(&file).unwrap();
        encoder.data(b"hello ").unwrap();
        encoder.data(b"world").unwrap();
        expected.push(Owned::Entry(file));
        expected.push(Owned::Data(b"hello world".to_vec()));
        expected.push(Owned::FileEnd);
        let empty = Entry::file(path("top/empty"), 0o600, mtime(), 0);
        encoder.entry(&empty).unwrap();
        expected.push(Owned::Entry(empty));
        expected.push(Owned::FileEnd);
        let sub = Entry::dir(path("top/sub"), 0o1777, mtime());
        encoder.entry(&sub).unwrap();
        expected.push(Owned::Entry(sub));
        let link = Entry::symlink(path("top/sub/link"), b"../../etc/passwd".to_vec(), mtime());
        encoder.entry(&link).unwrap();
        expected.push(Owned::Entry(link));
        encoder
            .error(Some(&path("top/sock")), "skipped: a socket")
            .unwrap();
        expected.push(Owned::Error(Problem {
            path: Some(path("top/sock")),
            message: "skipped: a socket".into(),
        }));
        let back_up = Entry::file(path("top/z"), 0o644, mtime(), 1);
        encoder.entry(&back_up).unwrap();
        encoder.data(b"z").unwrap();
        expected.push(Owned::Entry(back_up));
        expected.push(Owned::Data(b"z".to_vec()));
        expected.push(Owned::FileEnd);
        let second = Entry::file(path("second"), 0o644, mtime(), 0);
        encoder.entry(&second).unwrap();
        expected.push(Owned::Entry(second));
        expected.push(Owned::FileEnd);
        let (bytes, summary) = encoder.finish().unwrap();
        assert_eq!(
            summary,
            Summary {
                entries: 7,
                errors: 1,
                bytes: 12
            }
        );
        expected.push(Owned::End(summary));
        (bytes, expected)
    }

    /// An event, owned (data of consecutive `Data` events joined).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Owned {
        Entry(Entry),
        Data(Vec<u8>),
        FileEnd,
        Error(Problem),
        End(Summary),
    }

    /// Decode `bytes` pushed in chunks of `chunk` bytes.
    pub(crate) fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Owned>, DecodeError> {
        let mut decoder = Decoder::new();
        let mut events: Vec<Owned> = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let mut input = piece;
            loop {
                let (used, event) = decoder.decode(input)?;
                input = &input[used..];
                let Some(event) = event else {
                    assert!(input.is_empty(), "None before all input was taken");
                    break;
                };
                match event {
                    Event::Data(data) => {
                        assert!(!data.is_empty(), "an empty Data event");
                        if let Some(Owned::Data(joined)) = events.last_mut() {
                            joined.extend_from_slice(data);
                        } else {
                            events.push(Owned::Data(data.to_vec()));
                        }
                    }
                    Event::Entry(entry) => events.push(Owned::Entry(entry)),
                    Event::FileEnd => events.push(Owned::FileEnd),
                    Event::Error(problem) => events.push(Owned::Error(problem)),
                    Event::End(summary) => events.push(Owned::End(summary)),
                }
            }
        }
        // Pending events with no more input (an empty file's end).
        loop {
            match decoder.decode(&[])? {
                (_, Some(Event::FileEnd)) => events.push(Owned::FileEnd),
                (_, Some(other)) => panic!("{other:?} out of no input"),
                (_, None) => break,
            }
        }
        decoder.finish()?;
        Ok(events)
    }

    #[test]
    fn an_archive_round_trips_however_it_is_split() {
        let (bytes, expected) = sample();
        for chunk in [1, 2, 3, 7, 29, 64, bytes.len()] {
            assert_eq!(
                decode_all(&bytes, chunk).unwrap(),
                expected,
                "chunks of {chunk}"
            );
        }
        // Special bits come apart from the mode.
        let Owned::Entry(file) = &expected[1] else {
            panic!()
        };
        assert_eq!((file.mode, file.special_bits), (0o755, 0o4000));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (bytes, _) = sample();
        for len in 0..bytes.len() {
            let error = decode_all(&bytes[..len], 5).unwrap_err();
            assert!(
                matches!(error.kind, DecodeErrorKind::Truncated(_)),
                "cut at {len}: {error}"
            );
        }
    }

    #[test]
    fn bytes_after_the_end_are_an_error() {
        let (mut bytes, _) = sample();
        bytes.push(b'E');
        let error = decode_all(&bytes, 4096).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::TrailingData);
        assert_eq!(error.offset as usize, bytes.len() - 1);
    }

    fn archive_of(records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for record in records {
            bytes.extend_from_slice(record);
        }
        bytes
    }

    fn refused(records: &[Vec<u8>]) -> DecodeErrorKind {
        decode_all(&archive_of(records), 1).unwrap_err().kind
    }

    #[test]
    fn traversal_and_odd_paths_are_refused() {
        for (bad, problem) in [
            (&b"../etc/passwd"[..], PathProblem::DotDot),
            (b"a/../../b", PathProblem::DotDot),
            (b"..", PathProblem::DotDot),
            (b"/etc/passwd", PathProblem::Absolute),
            (b"a//b", PathProblem::EmptyComponent),
            (b"a/", PathProblem::EmptyComponent),
            (b"./a", PathProblem::Dot),
            (b"a\0b", PathProblem::Nul),
            (b"", PathProblem::Empty),
        ] {
            let kind = refused(&[raw_entry(b'f', 0o644, 0, bad, b""), raw_end(1, 0, 0)]);
            assert_eq!(kind, DecodeErrorKind::BadPath(problem), "{}", shown(bad));
            assert!(ArchivePath::new(bad).is_err());
        }
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert_eq!(
            ArchivePath::new(deep.as_bytes()),
            Err(PathProblem::TooDeep(MAX_DEPTH + 1))
        );
    }

    #[test]
    fn oversized_headers_are_refused_before_they_are_read() {
        // A header announcing a 60 KiB path: refused after its fixed part,
        // with nothing of the path held.
        let mut record = raw_entry(b'f', 0o644, 0, b"a", b"");
        record[26..28].copy_from_slice(&60_000u16.to_le_bytes());
        let mut decoder = Decoder::new();
        decoder.decode(&MAGIC).unwrap();
        let error = decoder.decode(&record[..ENTRY_FIXED]).unwrap_err();
        assert_eq!(
            error.kind,
            DecodeErrorKind::BadPath(PathProblem::TooLong(60_000))
        );
        assert!(decoder.buf.capacity() <= MAX_HEADER_BYTES);
        assert_eq!(
            decoder.decode(b"more").unwrap_err().kind,
            DecodeErrorKind::Failed,
            "errors stick"
        );
        let mut record = raw_entry(b'l', 0o777, 0, b"a", b"t");
        record[28..30].copy_from_slice(&5000u16.to_le_bytes());
        assert!(matches!(refused(&[record]), DecodeErrorKind::BadTarget(_)));
        let mut error = vec![TAG_ERROR];
        error.extend_from_slice(&0u16.to_le_bytes());
        error.extend_from_slice(&5000u16.to_le_bytes());
        assert_eq!(refused(&[error]), DecodeErrorKind::MessageTooLong(5000));
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(
            decode_all(b"VMKARC\0\x02", 8).unwrap_err().kind,
            DecodeErrorKind::BadMagic
        );
        assert_eq!(
            decode_all(b"tar", 8).unwrap_err().kind,
            DecodeErrorKind::BadMagic
        );
        assert_eq!(refused(&[vec![b'Q']]), DecodeErrorKind::UnknownRecord(b'Q'));
        assert_eq!(
            refused(&[raw_entry(b'p', 0o644, 0, b"fifo", b"")]),
            DecodeErrorKind::UnknownKind(b'p')
        );
        assert_eq!(
            refused(&[raw_entry(b'f', 0o10644, 0, b"a", b"")]),
            DecodeErrorKind::BadMode(0o10644)
        );
        assert_eq!(
            refused(&[raw_entry(b'd', 0o755, 10, b"a", b"")]),
            DecodeErrorKind::SizeOnNonFile(10)
        );
        for (kind, target) in [
            (b'l', &b""[..]),
            (b'f', b"t"),
            (b'd', b"t"),
            (b'l', b"a\0b"),
        ] {
            assert!(
                matches!(
                    refused(&[raw_entry(kind, 0o777, 0, b"a", target)]),
                    DecodeErrorKind::BadTarget(_)
                ),
                "{kind} {target:?}"
            );
        }
        let mut nanos = raw_entry(b'f', 0o644, 0, b"a", b"");
        nanos[14..18].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert_eq!(refused(&[nanos]), DecodeErrorKind::BadMtime(1_000_000_000));
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        // A child without its directory.
        assert!(matches!(
            refused(&[raw_entry(b'f', 0o644, 0, b"a/b", b"")]),
            DecodeErrorKind::OutOfOrder(_)
        ));
        // Into a symlink, which is no directory.
        assert!(matches!(
            refused(&[
                raw_entry(b'l', 0o777, 0, b"a", b"/etc"),
                raw_entry(b'f', 0o644, 0, b"a/passwd", b""),
            ]),
            DecodeErrorKind::OutOfOrder(_)
        ));
        // Back into a directory already left.
        assert!(matches!(
            refused(&[
                raw_entry(b'd', 0o755, 0, b"a", b""),
                raw_entry(b'd', 0o755, 0, b"b", b""),
                raw_entry(b'f', 0o644, 0, b"a/x", b""),
            ]),
            DecodeErrorKind::OutOfOrder(_)
        ));
        // Into a file.
        assert!(matches!(
            refused(&[
                raw_entry(b'f', 0o644, 0, b"a", b""),
                raw_entry(b'f', 0o644, 0, b"a/x", b""),
            ]),
            DecodeErrorKind::OutOfOrder(_)
        ));
        // The encoder refuses the same.
        let mut encoder = Encoder::new(Vec::new()).unwrap();
        assert!(
            encoder
                .entry(&Entry::file(path("a/b"), 0o644, mtime(), 0))
                .is_err()
        );
    }

    #[test]
    fn counts_and_sizes_must_match() {
        // The end record must count what came.
        let kind = refused(&[raw_entry(b'f', 0o644, 0, b"a", b""), raw_end(2, 0, 0)]);
        assert!(
            matches!(kind, DecodeErrorKind::CountMismatch { .. }),
            "{kind:?}"
        );
        // Content shorter than its size runs into the next record, which
        // then is taken as content: what is left is no valid record.
        let mut bytes = archive_of(&[raw_entry(b'f', 0o644, 10, b"a", b"")]);
        bytes.extend_from_slice(b"short");
        bytes.extend_from_slice(&raw_end(1, 0, 10));
        let error = decode_all(&bytes, 3).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::UnknownRecord(0), "{error}");
        // And with exactly the bytes of the end record missing after it:
        let mut bytes = archive_of(&[raw_entry(b'f', 0o644, 10, b"a", b"")]);
        bytes.extend_from_slice(b"short");
        let error = decode_all(&bytes, 3).unwrap_err();
        assert!(
            matches!(error.kind, DecodeErrorKind::Truncated(_)),
            "{error}"
        );
        // The encoder will not write more or less than the size.
        let mut encoder = Encoder::new(Vec::new()).unwrap();
        encoder
            .entry(&Entry::file(path("a"), 0o644, mtime(), 2))
            .unwrap();
        assert!(encoder.data(b"abc").is_err());
        encoder.data(b"a").unwrap();
        assert!(
            encoder
                .entry(&Entry::file(path("b"), 0o644, mtime(), 0))
                .is_err()
        );
        assert!(encoder.error(None, "x").is_err());
        encoder.data(b"b").unwrap();
        encoder.finish().unwrap();
        let encoder = {
            let mut e = Encoder::new(Vec::new()).unwrap();
            e.entry(&Entry::file(path("a"), 0o644, mtime(), 2)).unwrap();
            e
        };
        assert!(encoder.finish().is_err(), "ends inside a file");
    }

    #[test]
    fn long_messages_are_cut_and_paths_are_shown_escaped() {
        let mut encoder = Encoder::new(Vec::new()).unwrap();
        encoder.error(None, &"é".repeat(MAX_MESSAGE_BYTES)).unwrap();
        let (bytes, _) = encoder.finish().unwrap();
        let events = decode_all(&bytes, 100).unwrap();
        let Owned::Error(problem) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(problem.path, None);
        assert!(problem.message.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(
            ArchivePath::new(&b"a\x1b[2J\xff\\"[..])
                .unwrap()
                .to_string(),
            "a\\u{1b}[2J\\xff\\\\"
        );
    }
}
