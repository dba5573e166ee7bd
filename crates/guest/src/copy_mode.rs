//! The agent's copy mode: `vmkeep-guest --copy-out` writes an archive of
//! paths to stdout, `vmkeep-guest --copy-in` writes one from stdin under a
//! destination (see `vmkeep_protocol::copy` for the rules and
//! `vmkeep_protocol::archive` for the format).
//!
//! The host runs it in a session, as `/proc/self/exe --copy-...` (the
//! session's child is a fork of the agent, so that is the agent's own
//! binary, whatever its path), with the session's user and directory: the
//! user's permissions apply, relative paths are relative to the session's
//! directory, and the session's credits carry the bytes.
//!
//! ```text
//! vmkeep-guest --copy-out [--recursive] [--dereference] PATH...   archive on stdout
//! vmkeep-guest --copy-in [--keep-special-bits] DEST  archive from stdin
//! ```
//!
//! Every problem is one line on stderr (`vmkeep-guest: copy: PATH: ...`);
//! `--copy-out` also puts it in the archive as an error record. Exit codes:
//! 0 everything was copied; 1 some entries were not (the archive and stderr
//! say which); 2 usage; 4 (copy-out) a source does not exist, the others
//! were copied; 3 the copy broke off (stdout could not be written,
//! the archive on stdin is bad or incomplete, or `DEST` cannot be written
//! to): what was written is complete file by file, never a half file under
//! its name.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use vmkeep_protocol::copy::exit::{BROKEN as EXIT_BROKEN, INCOMPLETE as EXIT_INCOMPLETE};
use vmkeep_protocol::copy::exit::{MISSING as EXIT_MISSING, USAGE as EXIT_USAGE};
use vmkeep_protocol::copy::{
    self, COPY_IN, COPY_OUT, DEREFERENCE, Notice, PackOptions, UnpackError, UnpackOptions,
};

use crate::log::log;

const USAGE: &str = "usage: vmkeep-guest --copy-out [--recursive] [--dereference] PATH... | --copy-in [--keep-special-bits] DEST";

/// If `args` (the whole command line) ask for copy mode, run it and return
/// the exit code.
pub fn run(args: &[OsString]) -> Option<i32> {
    let mode = args.get(1)?.to_str()?;
    let rest = &args[2..];
    match mode {
        COPY_OUT => Some(copy_out(rest)),
        COPY_IN => Some(copy_in(rest)),
        _ => None,
    }
}

fn report(notice: Notice) {
    log!("copy: {notice}");
}

fn copy_out(args: &[OsString]) -> i32 {
    let mut recursive = false;
    let mut dereference = false;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut options_done = false;
    for arg in args {
        match arg.to_str() {
            Some("--") if !options_done => options_done = true,
            Some("--recursive" | "-r") if !options_done => recursive = true,
            Some(DEREFERENCE) if !options_done => dereference = true,
            Some(flag) if flag.starts_with('-') && flag.len() > 1 && !options_done => {
                log!("copy: unknown option {flag}; {USAGE}");
                return EXIT_USAGE;
            }
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    if paths.is_empty() {
        log!("copy: nothing to copy; {USAGE}");
        return EXIT_USAGE;
    }
    let (paths, missing) = existing_sources(paths, dereference);
    // SAFETY: fd 1 is this process's stdout, owned from here on.
    let stdout = unsafe { File::from_raw_fd(1) };
    let out = BufWriter::with_capacity(64 * 1024, stdout);
    let sources: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let written = copy::pack(&sources, PackOptions { recursive }, out, report)
        .and_then(|(mut out, summary)| out.flush().map(|()| summary));
    match written {
        Ok(summary) if summary.errors == 0 && missing == 0 => 0,
        Ok(summary) if summary.errors == 0 => EXIT_MISSING,
        Ok(_) => EXIT_INCOMPLETE,
        Err(e) => {
            log!("copy: cannot write the archive: {e}");
            EXIT_BROKEN
        }
    }
}

/// The sources that exist (resolved with `dereference`), and how many do
/// not (each said on stderr). What cannot be told (permissions) is left to
/// `pack`, which records it.
fn existing_sources(paths: Vec<PathBuf>, dereference: bool) -> (Vec<PathBuf>, usize) {
    let mut found = Vec::with_capacity(paths.len());
    let mut missing = 0;
    for path in paths {
        let looked = if dereference {
            std::fs::canonicalize(&path)
        } else {
            std::fs::symlink_metadata(&path).map(|_| path.clone())
        };
        match looked {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing += 1;
                let shown = vmkeep_protocol::archive::shown(path.as_os_str().as_encoded_bytes());
                log!("copy: {shown}: no such file or directory");
            }
            Ok(resolved) => found.push(resolved),
            Err(_) => found.push(path),
        }
    }
    (found, missing)
}

fn copy_in(args: &[OsString]) -> i32 {
    let mut options = UnpackOptions::default();
    let mut dest: Option<PathBuf> = None;
    let mut options_done = false;
    for arg in args {
        match arg.to_str() {
            Some("--") if !options_done => options_done = true,
            Some("--keep-special-bits") if !options_done => options.keep_special_bits = true,
            Some(flag) if flag.starts_with('-') && flag.len() > 1 && !options_done => {
                log!("copy: unknown option {flag}; {USAGE}");
                return EXIT_USAGE;
            }
            _ if dest.is_some() => {
                log!("copy: one destination only; {USAGE}");
                return EXIT_USAGE;
            }
            _ => dest = Some(PathBuf::from(arg)),
        }
    }
    let Some(dest) = dest else {
        log!("copy: no destination; {USAGE}");
        return EXIT_USAGE;
    };
    let stdin = std::io::stdin().lock();
    match copy::unpack(stdin, &dest, options, report) {
        Ok(done) if done.problems == 0 => 0,
        Ok(_) => EXIT_INCOMPLETE,
        Err(e @ (UnpackError::Archive(_) | UnpackError::Read(_) | UnpackError::Destination(_))) => {
            log!("copy: {e}");
            EXIT_BROKEN
        }
    }
}
