//! The agent's relay mode: `vmkeep-guest --connect-unix PATH` connects to
//! a unix socket of the guest and relays stdin to it and it to stdout, for
//! a socket the host forwards (see `vmkeep_protocol::unix_relay` for the
//! rules and exit codes). The host runs it in a session, one per
//! connection, as the user whose permissions reach the socket.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vmkeep_protocol::unix_relay::{CONNECT_UNIX, exit};

use crate::log::log;

const USAGE: &str = "usage: vmkeep-guest --connect-unix PATH";
const CHUNK: usize = 64 * 1024;

/// If `args` (the whole command line) ask for relay mode, run it and
/// return the exit code.
pub fn run(args: &[OsString]) -> Option<i32> {
    if args.get(1)?.to_str()? != CONNECT_UNIX {
        return None;
    }
    let rest: Vec<&OsString> = args[2..].iter().collect();
    let path = match rest.as_slice() {
        [dash, path] if dash.to_str() == Some("--") => *path,
        [path] if !path.to_string_lossy().starts_with('-') => *path,
        _ => {
            log!("connect: {USAGE}");
            return Some(exit::USAGE);
        }
    };
    Some(relay(std::path::Path::new(path)))
}

fn relay(path: &std::path::Path) -> i32 {
    let shown = vmkeep_protocol::archive::shown(path.as_os_str().as_encoded_bytes());
    let socket = match UnixStream::connect(path) {
        Ok(socket) => socket,
        Err(e) => {
            log!("connect: {shown}: {e}");
            return exit::CANNOT_CONNECT;
        }
    };
    let to_socket = match socket.try_clone() {
        Ok(clone) => clone,
        Err(e) => {
            log!("connect: {shown}: {e}");
            return exit::CANNOT_CONNECT;
        }
    };
    // stdin -> socket, on a thread of its own; its end shuts the socket's
    // writing half down, so that the peer reads the end of the request.
    let _ = std::thread::Builder::new()
        .name("relay-stdin".into())
        .spawn(move || stdin_to_socket(to_socket));
    socket_to_stdout(socket, &shown)
}

fn stdin_to_socket(mut socket: UnixStream) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if socket.write_all(&buf[..n]).is_err() {
                    // The peer stopped reading: what the host sends goes nowhere.
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = socket.shutdown(Shutdown::Write);
}

fn socket_to_stdout(mut socket: UnixStream, shown: &str) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => {
                return match stdout.flush() {
                    Ok(()) => exit::ENDED,
                    Err(_) => exit::BROKEN,
                };
            }
            Ok(n) => {
                if let Err(e) = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()) {
                    log!("connect: {shown}: the host's end is gone: {e}");
                    return exit::BROKEN;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log!("connect: {shown}: {e}");
                return exit::BROKEN;
            }
        }
    }
}
