//! The agent's copy mode as the host runs it: `--copy-out` piped into
//! `--copy-in`, exit codes and stderr.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const AGENT: &str = env!("CARGO_BIN_EXE_vmkeep-guest");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("vmkeep-copy-mode-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_out(args: &[&str], cwd: &Path) -> Output {
    Command::new(AGENT)
        .arg("--copy-out")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn copy_in(archive: &[u8], args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(AGENT)
        .arg("--copy-in")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let archive = archive.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&archive);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

#[test]
fn a_tree_goes_out_and_back_in_with_modes_and_mtimes() {
    let scratch = Scratch::new("tree");
    let src = scratch.0.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file"), vec![42u8; 3 * 1024 * 1024]).unwrap();
    fs::set_permissions(src.join("sub/file"), fs::Permissions::from_mode(0o751)).unwrap();
    symlink("sub/file", src.join("link")).unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890);
    fs::File::open(src.join("sub/file"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let out = copy_out(&["--recursive", "src"], &scratch.0);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"VMKARC\0\x01"));
    fs::create_dir(scratch.0.join("dest")).unwrap();
    let back = copy_in(&out.stdout, &["dest"], &scratch.0);
    assert_eq!(
        back.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let meta = fs::metadata(scratch.0.join("dest/src/sub/file")).unwrap();
    assert_eq!(
        (meta.len(), meta.mode() & 0o7777, meta.mtime()),
        (3 * 1024 * 1024, 0o751, 1_234_567_890)
    );
    assert_eq!(
        fs::read_link(scratch.0.join("dest/src/link")).unwrap(),
        Path::new("sub/file")
    );
}

#[test]
fn problems_are_reported_on_stderr_with_their_exit_codes() {
    let scratch = Scratch::new("problems");
    fs::create_dir(scratch.0.join("dir")).unwrap();
    fs::write(scratch.0.join("file"), b"x").unwrap();
    // A directory without --recursive, and a missing path: 1, in the archive too.
    let out = copy_out(&["dir", "missing", "file"], &scratch.0);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dir: is a directory"), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    fs::create_dir(scratch.0.join("dest")).unwrap();
    let back = copy_in(&out.stdout, &["dest"], &scratch.0);
    assert_eq!(back.status.code(), Some(1), "the archive's errors count");
    assert_eq!(fs::read(scratch.0.join("dest/file")).unwrap(), b"x");
    // Usage.
    assert_eq!(copy_out(&[], &scratch.0).status.code(), Some(2));
    assert_eq!(
        copy_out(&["--bogus", "x"], &scratch.0).status.code(),
        Some(2)
    );
    assert_eq!(copy_in(b"", &[], &scratch.0).status.code(), Some(2));
    assert_eq!(copy_in(b"", &["a", "b"], &scratch.0).status.code(), Some(2));
    // A truncated or foreign archive: 3, and nothing half-written.
    let cut = &out.stdout[..out.stdout.len() - 3];
    let back = copy_in(cut, &["dest2"], &scratch.0);
    assert_eq!(back.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&back.stderr).contains("the stream ended"),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let back = copy_in(b"not an archive", &["dest3"], &scratch.0);
    assert_eq!(back.status.code(), Some(3));
    assert!(!scratch.0.join("dest3").exists());
    // A destination that cannot be: 3.
    let back = copy_in(&out.stdout, &["no/such/parent"], &scratch.0);
    assert_eq!(back.status.code(), Some(3));
}

#[test]
fn a_hostile_archive_writes_nothing_outside_the_destination() {
    let scratch = Scratch::new("hostile");
    fs::create_dir(scratch.0.join("dest")).unwrap();
    // "../escaped", by hand.
    let mut archive = b"VMKARC\0\x01".to_vec();
    let path = b"../escaped";
    archive.push(b'E');
    archive.push(b'f');
    archive.extend_from_slice(&0o644u32.to_le_bytes());
    archive.extend_from_slice(&0i64.to_le_bytes());
    archive.extend_from_slice(&0u32.to_le_bytes());
    archive.extend_from_slice(&1u64.to_le_bytes());
    archive.extend_from_slice(&(path.len() as u16).to_le_bytes());
    archive.extend_from_slice(&0u16.to_le_bytes());
    archive.extend_from_slice(path);
    archive.push(b'!');
    let back = copy_in(&archive, &["dest"], &scratch.0);
    assert_eq!(back.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&back.stderr).contains("`..`"),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(!scratch.0.join("escaped").exists());
}
