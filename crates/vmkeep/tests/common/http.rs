//! The one local HTTP file server of the tests (templates, base chains,
//! cloud images), with `Range` support and ways to misbehave.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the test server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// Close the connection after this many body bytes, on the first request only.
    TruncateOnce(u64),
    /// Close after this many body bytes, every time.
    TruncateAlways(u64),
    /// Send this many body bytes, then nothing until shut down.
    Stall(u64),
}

/// (path, first byte of its Range header) of each request served.
type RequestLog = Mutex<Vec<(String, Option<u64>)>>;

/// A small HTTP/1.1 file server over a directory, with Range support, that
/// can misbehave ([`Mode`]) and logs what it was asked.
pub struct FileServer {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    requests: Arc<RequestLog>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serve the files below `root` on a free loopback port.
    pub fn start(root: &Path, mode: Mode) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let (m, s, r) = (mode.clone(), stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, m, s, r) = (root.clone(), m.clone(), s.clone(), r.clone());
                handlers.push(std::thread::spawn(move || {
                    let _ = serve(stream, &root, &m, &s, &r);
                }));
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        FileServer {
            port,
            mode,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// (path, first byte of the Range) of every request so far.
    pub fn requests(&self) -> Vec<(String, Option<u64>)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    mode: &Mutex<Mode>,
    stop: &AtomicBool,
    requests: &RequestLog,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("range:") {
            range = value
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    let first_request = {
        let mut all = requests.lock().unwrap();
        all.push((path.clone(), range));
        all.len() == 1
    };
    let file_path = root.join(path.trim_start_matches('/'));
    let Ok(mut file) = std::fs::File::open(&file_path) else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let len = file.metadata()?.len();
    if range.is_some_and(|from| from >= len) {
        let head = format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes())?;
        return Ok(());
    }
    let start = range.unwrap_or(0);
    let head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nConnection: close\r\n\r\n",
            len - start,
            len.saturating_sub(1)
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    stream.write_all(head.as_bytes())?;
    file.seek(SeekFrom::Start(start))?;
    let limit = match *mode.lock().unwrap() {
        Mode::Normal => None,
        Mode::TruncateOnce(n) if first_request => Some((n, false)),
        Mode::TruncateOnce(_) => None,
        Mode::TruncateAlways(n) => Some((n, false)),
        Mode::Stall(n) => Some((n, true)),
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let want = match limit {
            Some((n, _)) => (n.saturating_sub(sent)).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let got = file.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        stream.write_all(&buf[..got])?;
        sent += got as u64;
    }
    if let Some((_, true)) = limit {
        stream.flush()?;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
