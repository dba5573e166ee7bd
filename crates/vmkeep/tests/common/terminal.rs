//! A real terminal for a `vmkeep` child (a pty whose slave is its
//! controlling terminal), for the tests of interactive sessions.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use super::TestEnv;

/// How long a read waits for what it looks for.
const SHORT: Duration = Duration::from_secs(60);

/// A terminal for a child: the master side, read on a thread.
pub struct Terminal {
    pub master: std::fs::File,
    pub seen: mpsc::Receiver<Vec<u8>>,
    pub text: String,
    /// How much of `text` the reads so far have taken.
    pub taken: usize,
}

impl Terminal {
    /// `vmkeep ARGS` on a new pty of `rows` x `cols`, as its controlling terminal.
    pub fn spawn(
        env: &TestEnv,
        args: &[&str],
        rows: u16,
        cols: u16,
    ) -> (Terminal, std::process::Child) {
        // SAFETY: plain libc calls on descriptors this function owns.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
        };
        let terminal_size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a valid winsize on the master.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &terminal_size) };
        let mut command = env.command(args);
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        (
            Terminal {
                master,
                seen,
                text: String::new(),
                taken: 0,
            },
            child,
        )
    }

    pub fn type_in(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Read until `marker` shows (after what earlier reads took); what
    /// came up to its end (the rest is left for the next read).
    pub fn until(&mut self, marker: &str) -> String {
        let start = self.taken;
        let found = super::wait_until(SHORT, || {
            while let Ok(bytes) = self.seen.recv_timeout(Duration::from_millis(50)) {
                self.text.push_str(&String::from_utf8_lossy(&bytes));
            }
            self.text[start..].find(marker)
        });
        let Some(at) = found else {
            panic!("no {marker:?} in {:?}", &self.text[start..]);
        };
        self.taken = start + at + marker.len();
        self.text[start..self.taken].to_string()
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a valid winsize on the master; the kernel tells the
        // foreground process group (vmkeep) with SIGWINCH.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}
