//! Fetching image files into the cache: http(s) downloads that resume after
//! an interruption (HTTP `Range`), local files copied the same way, digests
//! checked before anything is used.
//!
//! Cache layout under `cache_root`:
//! ```text
//! images/<key>/data           the complete, verified file (never partial)
//! images/<key>/data.partial-<source>
//!                             an interrupted fetch from one source (a hash
//!                             of its location), resumed by the next fetch
//!                             from that same source only
//! images/<key>/location       where it came from (for humans)
//! images/<key>/lock           held while one process fetches
//! ```
//! `<key>` is the sha256 of the expected digest when there is one (two URLs of
//! the same file share it), else of the URL (of the path, size and mtime for a
//! local file). `data` appears only by renaming a fully written, verified
//! file: a digest mismatch deletes the partial file and leaves no `data`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256, Sha512};

use crate::instance::config::{Digest, DigestAlgorithm, Location};
use crate::os;
use crate::os::lock::HeldLock;

/// Environment variable: seconds without a byte after which a download
/// counts as stalled (default 30).
pub const STALL_TIMEOUT_ENV: &str = "VMKEEP_DOWNLOAD_STALL_TIMEOUT";
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per fetch; each one after the first resumes where the last ended.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "digest mismatch for {location}: expected {expected}, got {actual}; the file was discarded (nothing was cached)"
    )]
    DigestMismatch {
        location: Location,
        expected: Digest,
        actual: Digest,
    },
    #[error("{location}: the server answered {status}")]
    Status { location: Location, status: u16 },
    #[error(
        "{location}: no data for {after:?} after {received} bytes (the server stalled); \
         {ATTEMPTS} attempts failed; the next try resumes from the partial file"
    )]
    Stalled {
        location: Location,
        after: Duration,
        received: u64,
    },
    #[error(
        "{location}: the download ended after {received} of {expected} bytes (truncated); \
         {ATTEMPTS} attempts failed; the next try resumes from the partial file"
    )]
    Truncated {
        location: Location,
        received: u64,
        expected: u64,
    },
    #[error("{location}: {message}; the next try resumes from the partial file")]
    Network { location: Location, message: String },
    #[error("cannot read {path}: {source}")]
    Local { path: PathBuf, source: io::Error },
    #[error(
        "{location}: more than {limit} bytes; a template or script fetched by vmkeep may be at most that large"
    )]
    TooLarge { location: Location, limit: u64 },
    #[error("cache {path}: {source}; check the permissions and free space of the cache")]
    Cache { path: PathBuf, source: io::Error },
    /// Only a build without the `downloads` feature (the static host agent,
    /// which never downloads) says this.
    #[error(
        "{location}: this build of vmkeep has no http(s) client (built without the \
         `downloads` feature, as the static host agent is); download with the `vmkeep` binary"
    )]
    NotBuilt { location: Location },
}

/// Progress of one fetch, shown by the caller (a bar on a terminal).
pub trait Progress {
    /// A fetch begins; `total` when known, `resumed_at` bytes already there.
    fn begin(&mut self, what: &str, total: Option<u64>, resumed_at: u64);
    /// `done` bytes of the file are now present.
    fn advance(&mut self, done: u64);
    /// The fetch ended (successfully or not).
    fn end(&mut self, message: &str);
}

/// Progress that shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn begin(&mut self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn end(&mut self, _: &str) {}
}

/// The cache directory name of a file.
pub fn cache_key(location: &Location, digest: Option<&Digest>) -> String {
    let identity = match (digest, location) {
        (Some(digest), _) => format!("digest:{digest}"),
        (None, Location::Url(url)) => format!("url:{url}"),
        (None, Location::Path(path)) => {
            // Without a digest, a changed local file must not hit a stale copy.
            let (size, mtime) = std::fs::metadata(path)
                .map(|m| (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000))
                .unwrap_or((0, 0));
            format!("path:{}:{size}:{mtime}", path.display())
        }
    };
    hex::encode(Sha256::digest(identity.as_bytes()))
}

/// The cached file for `location`, fetching it if it is not cached yet.
pub fn fetch(
    cache_root: &Path,
    location: &Location,
    digest: Option<&Digest>,
    progress: &mut dyn Progress,
) -> Result<PathBuf, DownloadError> {
    let dir = cache_root.join("images").join(cache_key(location, digest));
    let data = dir.join("data");
    if data.is_file() {
        return Ok(data);
    }
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Cache { path, source }
    };
    os::fs::create_private_dir_all(&dir).map_err(cache_err(&dir))?;
    let lock_path = dir.join("lock");
    let _lock = wait_for_lock(&lock_path).map_err(cache_err(&lock_path))?;
    if data.is_file() {
        // Another process fetched it while we waited.
        return Ok(data);
    }
    let _ = os::fs::write_atomic(
        &dir.join("location"),
        format!("{location}\n").as_bytes(),
        0o644,
    );
    // A partial file only ever continues with bytes of the same source.
    let source_id = &hex::encode(Sha256::digest(location.to_string().as_bytes()))[..16];
    let partial = dir.join(format!("data.partial-{source_id}"));
    let stall = stall_timeout();
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
        }
        match fetch_once(location, &partial, stall, progress) {
            Ok(()) => {
                last_error = None;
                break;
            }
            Err(e @ (DownloadError::Status { .. } | DownloadError::Local { .. })) => {
                progress.end(&e.to_string());
                return Err(e);
            }
            Err(e @ DownloadError::Cache { .. }) => {
                progress.end(&e.to_string());
                return Err(e);
            }
            Err(e) => {
                tracing::warn!("fetch attempt {} failed: {e}", attempt + 1);
                last_error = Some(e);
            }
        }
    }
    if let Some(e) = last_error {
        progress.end(&e.to_string());
        return Err(e);
    }
    if let Some(expected) = digest {
        let actual = digest_of(&partial, expected.algorithm).map_err(cache_err(&partial))?;
        if &actual != expected {
            let _ = os::fs::remove_file_if_exists(&partial);
            let e = DownloadError::DigestMismatch {
                location: location.clone(),
                expected: expected.clone(),
                actual,
            };
            progress.end(&e.to_string());
            return Err(e);
        }
    }
    os::fs::persist(&partial, &data).map_err(cache_err(&data))?;
    progress.end(&format!("fetched {location}"));
    Ok(data)
}

/// GET a small file (a template, a script) into memory, refusing more than
/// `limit` bytes. Not cached: templates are read once, when an instance is
/// created, and stored resolved in the instance.
pub fn fetch_small(url: &str, limit: u64) -> Result<Vec<u8>, DownloadError> {
    let location = Location::Url(url.to_string());
    let (body, _, _) = http_get(&location, url, 0, stall_timeout())?;
    let mut bytes = Vec::new();
    if let Err(e) = body.take(limit + 1).read_to_end(&mut bytes) {
        return Err(read_error(
            &location,
            e,
            stall_timeout(),
            bytes.len() as u64,
            None,
        ));
    }
    if bytes.len() as u64 > limit {
        return Err(DownloadError::TooLarge { location, limit });
    }
    Ok(bytes)
}

fn stall_timeout() -> Duration {
    std::env::var(STALL_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_STALL_TIMEOUT)
}

fn wait_for_lock(path: &Path) -> io::Result<HeldLock> {
    loop {
        if let Some(lock) = HeldLock::try_acquire(path)? {
            return Ok(lock);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compute the digest of a file.
pub fn digest_of(path: &Path, algorithm: DigestAlgorithm) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }
    fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// A body to read, the full size when known, and the offset it starts at.
type Opened = (Box<dyn Read>, Option<u64>, u64);

/// One attempt: continue `partial` from its current length to the end.
fn fetch_once(
    location: &Location,
    partial: &Path,
    stall: Duration,
    progress: &mut dyn Progress,
) -> Result<(), DownloadError> {
    let cache_err = |source| DownloadError::Cache {
        path: partial.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .map_err(cache_err)?;
    let have = file.metadata().map_err(cache_err)?.len();
    let (mut body, total, start): Opened = match location {
        Location::Path(path) => {
            let local = |source| DownloadError::Local {
                path: path.clone(),
                source,
            };
            let mut source = File::open(path).map_err(local)?;
            let len = source.metadata().map_err(local)?.len();
            let start = if have <= len { have } else { 0 };
            source.seek(SeekFrom::Start(start)).map_err(local)?;
            (Box::new(source), Some(len), start)
        }
        Location::Url(url) => http_get(location, url, have, stall)?,
    };
    if start == 0 && have > 0 {
        // The source could not resume: start over.
        file.set_len(0).map_err(cache_err)?;
    }
    progress.begin(&location.to_string(), total, start);
    let mut done = start;
    let mut buf = vec![0u8; 256 * 1024];
    let began = Instant::now();
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.sync_all().map_err(cache_err)?;
                return Err(read_error(location, e, stall, done, total));
            }
        };
        file.write_all(&buf[..n]).map_err(cache_err)?;
        done += n as u64;
        progress.advance(done);
    }
    file.sync_all().map_err(cache_err)?;
    tracing::info!(
        "fetched {location}: {} bytes in {:.1}s",
        done - start,
        began.elapsed().as_secs_f64()
    );
    match total {
        Some(expected) if done < expected => Err(DownloadError::Truncated {
            location: location.clone(),
            received: done,
            expected,
        }),
        _ => Ok(()),
    }
}

fn read_error(
    location: &Location,
    error: io::Error,
    stall: Duration,
    received: u64,
    total: Option<u64>,
) -> DownloadError {
    let text = error.to_string().to_ascii_lowercase();
    if error.kind() == io::ErrorKind::TimedOut
        || text.contains("timeout")
        || text.contains("timed out")
    {
        return DownloadError::Stalled {
            location: location.clone(),
            after: stall,
            received,
        };
    }
    if let Some(expected) = total
        && (error.kind() == io::ErrorKind::UnexpectedEof
            || text.contains("eof")
            || text.contains("closed"))
    {
        return DownloadError::Truncated {
            location: location.clone(),
            received,
            expected,
        };
    }
    DownloadError::Network {
        location: location.clone(),
        message: error.to_string(),
    }
}

/// The TLS stack of downloads: rustls with its bundled roots on Linux, the
/// platform's own TLS and trust store on macOS (see Cargo.toml).
#[cfg(feature = "downloads")]
fn tls_config() -> ureq::tls::TlsConfig {
    let config = ureq::tls::TlsConfig::builder();
    #[cfg(target_os = "macos")]
    let config = config
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier);
    config.build()
}

/// A build without the `downloads` feature: no http(s) client.
#[cfg(not(feature = "downloads"))]
fn http_get(
    location: &Location,
    _url: &str,
    _from: u64,
    _stall: Duration,
) -> Result<Opened, DownloadError> {
    Err(DownloadError::NotBuilt {
        location: location.clone(),
    })
}

/// GET `url` from byte `from`; returns the body, the full size when known,
/// and the offset the body starts at (0 when the server ignored the range).
#[cfg(feature = "downloads")]
fn http_get(
    location: &Location,
    url: &str,
    from: u64,
    stall: Duration,
) -> Result<Opened, DownloadError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(stall))
        .timeout_recv_response(Some(stall))
        .timeout_per_read(Some(stall))
        .user_agent(concat!("vmkeep/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls_config())
        .build()
        .into();
    let mut request = agent.get(url);
    if from > 0 {
        request = request.header("Range", format!("bytes={from}-"));
    }
    let response = request.call().map_err(|e| match e {
        ureq::Error::Timeout(_) => DownloadError::Stalled {
            location: location.clone(),
            after: stall,
            received: from,
        },
        other => DownloadError::Network {
            location: location.clone(),
            message: other.to_string(),
        },
    })?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    let (total, start) = match status {
        200 => (length, 0),
        206 => {
            let range = header("content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((first, total)) if first == from => (total.or(length.map(|l| l + from)), from),
                _ => {
                    return Err(DownloadError::Network {
                        location: location.clone(),
                        message: format!("the server sent an unexpected range {range:?}"),
                    });
                }
            }
        }
        // The partial file is as long as the whole (or longer): start over.
        416 if from > 0 => return http_get(location, url, 0, stall),
        _ => {
            return Err(DownloadError::Status {
                location: location.clone(),
                status,
            });
        }
    };
    let body = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader();
    Ok((Box::new(body), total, start))
}

/// `bytes FIRST-LAST/TOTAL` -> (FIRST, TOTAL if known).
pub fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((first, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(text: &str) -> Digest {
        Digest::parse(&format!(
            "sha256:{}",
            hex::encode(Sha256::digest(text.as_bytes()))
        ))
        .unwrap()
    }

    #[test]
    fn cache_keys_follow_the_digest_else_the_url() {
        let a = Location::Url("https://a.example/x.qcow2".into());
        let b = Location::Url("https://b.example/x.qcow2".into());
        let d = sha256("x");
        assert_eq!(
            cache_key(&a, Some(&d)),
            cache_key(&b, Some(&d)),
            "same digest, same entry"
        );
        assert_ne!(cache_key(&a, None), cache_key(&b, None));
        assert_ne!(cache_key(&a, None), cache_key(&a, Some(&d)));
        assert_eq!(cache_key(&a, None).len(), 64);
        assert!(cache_key(&a, None).bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn local_file_keys_change_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, "one").unwrap();
        let location = Location::Path(path.clone());
        let before = cache_key(&location, None);
        std::fs::write(&path, "longer").unwrap();
        assert_ne!(before, cache_key(&location, None));
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    struct Count(u64, u32);
    impl Progress for Count {
        fn begin(&mut self, _: &str, _: Option<u64>, _: u64) {
            self.1 += 1;
        }
        fn advance(&mut self, done: u64) {
            self.0 = done;
        }
        fn end(&mut self, _: &str) {}
    }

    #[test]
    fn local_files_are_verified_and_cached_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("img");
        std::fs::write(&source, "image bytes").unwrap();
        let cache = dir.path().join("cache");
        let location = Location::Path(source.clone());
        let digest = sha256("image bytes");
        let mut progress = Count(0, 0);
        let data = fetch(&cache, &location, Some(&digest), &mut progress).unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), b"image bytes");
        assert_eq!(progress.0, 11);
        // Cached: the source is no longer needed.
        std::fs::remove_file(&source).unwrap();
        let again = fetch(&cache, &location, Some(&digest), &mut progress).unwrap();
        assert_eq!(again, data);
        assert_eq!(progress.1, 1, "fetched once");
    }

    #[test]
    fn a_digest_mismatch_names_both_digests_and_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("img");
        std::fs::write(&source, "tampered").unwrap();
        let cache = dir.path().join("cache");
        let expected = sha256("original");
        let err = fetch(
            &cache,
            &Location::Path(source),
            Some(&expected),
            &mut Silent,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&expected.to_string()), "{text}");
        assert!(text.contains(&sha256("tampered").to_string()), "{text}");
        let entry = cache
            .join("images")
            .join(cache_key(&Location::Path("/x".into()), Some(&expected)));
        assert!(!entry.join("data").exists());
        assert!(!entry.join("data.partial").exists());
    }

    #[test]
    fn a_partial_file_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("img");
        std::fs::write(&source, "0123456789").unwrap();
        let cache = dir.path().join("cache");
        let location = Location::Path(source);
        let digest = sha256("0123456789");
        let entry = cache
            .join("images")
            .join(cache_key(&location, Some(&digest)));
        std::fs::create_dir_all(&entry).unwrap();
        // Written by an interrupted fetch from the same source.
        let source_id = &hex::encode(Sha256::digest(location.to_string().as_bytes()))[..16];
        std::fs::write(entry.join(format!("data.partial-{source_id}")), "01234").unwrap();
        // One from another source with the same digest is not mixed in.
        std::fs::write(entry.join("data.partial-0000000000000000"), "xxxxxxx").unwrap();
        struct Start(u64);
        impl Progress for Start {
            fn begin(&mut self, _: &str, _: Option<u64>, resumed_at: u64) {
                self.0 = resumed_at;
            }
            fn advance(&mut self, _: u64) {}
            fn end(&mut self, _: &str) {}
        }
        let mut progress = Start(0);
        let data = fetch(&cache, &location, Some(&digest), &mut progress).unwrap();
        assert_eq!(progress.0, 5, "resumed at byte 5");
        assert_eq!(std::fs::read(data).unwrap(), b"0123456789");
    }
}
