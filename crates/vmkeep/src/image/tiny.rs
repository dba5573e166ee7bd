//! The built-in tiny image: a distribution kernel plus an initramfs holding
//! only the guest agent (as `/init`), a static busybox and a few modules.
//!
//! The kernel comes from Debian's `linux-image-cloud-amd64` (resolved with
//! apt at run time, downloaded with `apt-get download`, unpacked with
//! `dpkg-deb -x`; nothing is installed on the host), or from a
//! [`KernelOverride`] on hosts without apt.
//!
//! Cache layout under `cache_root`:
//! ```text
//! kernels/<package>_<version>/   the unpacked kernel package (boot/, lib/modules/)
//! tiny/<key>/vmlinuz             the kernel, copied
//! tiny/<key>/initrd.img          the initramfs (uncompressed newc cpio)
//! tiny/<key>/release             the kernel release (`uname -r` in the guest)
//! tools/e2fsck-static_<version>/ Debian's static e2fsck, unpacked (sbin/e2fsck.static)
//! ```
//! The static e2fsck (from Debian's `e2fsck-static`, fetched the same way as
//! the kernel) lets `vmkeep start NAME --repair-data` check the data disk in
//! the guest; busybox has none. Without apt the image is built without it.
//! `<key>` digests every input of the image, so a changed input builds a new
//! image. Everything is built in a temporary sibling and renamed into place
//! when complete: concurrent builds and crashes never leave a half image.
//! A cached image costs a few stats and one small read, and no apt call.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::os::fs::{sync_dir, temp_sibling, write_atomic};
use crate::os::tool::{Tool, ToolError};

/// Bump when the image layout or the build recipe changes.
pub const FORMAT_VERSION: u32 = 2;

/// Debian's package holding a statically linked e2fsck.
pub const E2FSCK_PACKAGE: &str = "e2fsck-static";
/// The program in that package.
const E2FSCK_IN_PACKAGE: &str = "sbin/e2fsck.static";
/// Where the guest agent looks for it (`disk::E2FSCK` in the guest crate).
const E2FSCK_IN_IMAGE: &str = "sbin/e2fsck";

/// Kernel modules the guest needs, in load order (dependencies first).
/// Modules that the kernel builds in are simply absent and skipped.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "evdev",
    "button",
    "failover",
    "net_failover",
    "virtio_net",
    // Host directories (`mounts:`): virtiofs needs fuse and virtio.
    "fuse",
    "virtiofs",
];

/// Debian's meta package that depends on the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// How a user gets a kernel without apt; part of several error messages.
pub const KERNEL_OVERRIDE_HINT: &str = "set `kernel.path` (a bzImage/vmlinuz) in the instance config and, if its virtio drivers \
     are modules, `kernel.modules` (its lib/modules/<release> directory)";

/// The guest agent, built static by build.rs.
pub(crate) static GUEST_AGENT: &[u8] = include_bytes!(env!("VMKEEP_GUEST_AGENT"));
const GUEST_AGENT_DIGEST: &str = env!("VMKEEP_GUEST_AGENT_DIGEST");

/// A built tiny image, ready to boot with `-kernel`/`-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest's `uname -r`.
    pub kernel_release: String,
}

impl TinyImage {
    /// Recommended kernel command line: console on the first serial port,
    /// reboot at once on a kernel panic, few kernel messages.
    pub fn base_cmdline(&self) -> String {
        "console=ttyS0 panic=-1 quiet".to_string()
    }
}

/// A kernel given by the user instead of Debian's package (hosts without apt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOverride {
    /// A bzImage (vmlinuz).
    pub kernel: PathBuf,
    /// The kernel's `lib/modules/<release>` directory (or its `kernel/`
    /// subdirectory); `None` when the drivers are built in.
    pub modules_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TinyImageError {
    #[error(
        "`{program}` is not available on this host, so vmkeep cannot fetch a kernel: {KERNEL_OVERRIDE_HINT}, or install apt"
    )]
    AptUnavailable { program: String },
    #[error(
        "`apt-cache depends {meta}` names no linux-image package (it printed: {output:?}): run `apt-get update` as root and try again, \
         or {KERNEL_OVERRIDE_HINT}"
    )]
    KernelPackageUnresolved { meta: String, output: String },
    #[error(
        "{step} failed: {source}; check the apt sources and the network (`apt-get update`), or {KERNEL_OVERRIDE_HINT}"
    )]
    KernelFetch {
        step: &'static str,
        source: ToolError,
    },
    #[error(
        "the kernel package unpacked in {dir} has no boot/vmlinuz-*: delete {dir} and try again"
    )]
    NoKernelInPackage { dir: PathBuf },
    #[error(
        "cannot read the kernel override {path}: {source}; fix `kernel.path` in the instance config"
    )]
    KernelOverrideUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a Linux bzImage (no kernel version in its boot header): point `kernel.path` in the instance config at a vmlinuz file"
    )]
    NotAKernel { path: PathBuf },
    #[error(
        "cannot read the kernel modules directory {path}: {source}; fix `kernel.modules` in the instance config"
    )]
    ModulesDirUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "{step} failed: {source}; check the apt sources and the network (`apt-get update`): \
         the tiny image needs Debian's {E2FSCK_PACKAGE} to check data disks"
    )]
    E2fsckFetch {
        step: &'static str,
        source: ToolError,
    },
    #[error(
        "{path} is not a statically linked executable: delete its directory in the cache and try again"
    )]
    E2fsckNotStatic { path: PathBuf },
    #[error(
        "busybox was not found (looked in PATH and /bin/busybox): install it with `apt-get install busybox-static`"
    )]
    BusyboxMissing,
    #[error(
        "{path} is not a statically linked executable, but the tiny image has no C library: install `busybox-static` (apt-get install busybox-static)"
    )]
    BusyboxNotStatic { path: PathBuf },
    #[error(
        "cannot {action} {path}: {source}; check the permissions and free space of the cache directory"
    )]
    Cache {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn cache_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TinyImageError + 'a {
    move |source| TinyImageError::Cache {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Return the tiny image, building it (and fetching the kernel) if needed.
/// `progress` hears about work only: a cached image reports nothing.
pub fn ensure(
    cache_root: &Path,
    kernel_override: Option<&KernelOverride>,
    progress: &mut dyn FnMut(&str),
) -> Result<TinyImage, TinyImageError> {
    let kernel = match kernel_override {
        Some(over) => KernelSource::from_override(over)?,
        None => KernelSource::from_debian(cache_root, progress)?,
    };
    let busybox = find_busybox()?;
    let busybox_meta = fs::metadata(&busybox).map_err(cache_err("read", &busybox))?;
    let e2fsck = find_or_fetch_e2fsck(cache_root, progress)?;
    let e2fsck_identity = e2fsck
        .as_ref()
        .map(|(_, identity)| identity.clone())
        .unwrap_or_else(|| "none".into());
    let key = cache_key(&KeyInputs {
        format_version: FORMAT_VERSION,
        agent_digest: GUEST_AGENT_DIGEST,
        busybox_path: &busybox,
        busybox_size: busybox_meta.len(),
        busybox_mtime_ns: busybox_meta.mtime() as i128 * 1_000_000_000
            + i128::from(busybox_meta.mtime_nsec()),
        kernel_identity: &kernel.identity,
        modules: MODULES,
        e2fsck_identity: &e2fsck_identity,
    });
    let tiny_dir = cache_root.join("tiny");
    let dir = tiny_dir.join(&key);
    if let Some(image) = read_cached(&dir) {
        return Ok(image);
    }
    let e2fsck = e2fsck.as_ref().map(|(path, _)| path.as_path());
    build(&tiny_dir, &dir, &kernel, &busybox, e2fsck, progress)
}

fn read_cached(dir: &Path) -> Option<TinyImage> {
    let release = fs::read_to_string(dir.join("release")).ok()?;
    Some(TinyImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_release: release.trim().to_string(),
    })
}

/// Where the kernel comes from.
struct KernelSource {
    vmlinuz: PathBuf,
    /// Directory searched (recursively) for module files.
    modules_root: Option<PathBuf>,
    /// Identifies the kernel in the cache key.
    identity: String,
    /// Known without reading the kernel (Debian's file name carries it).
    release: Option<String>,
}

impl KernelSource {
    fn from_override(over: &KernelOverride) -> Result<KernelSource, TinyImageError> {
        let meta = fs::metadata(&over.kernel).map_err(|source| {
            TinyImageError::KernelOverrideUnreadable {
                path: over.kernel.clone(),
                source,
            }
        })?;
        let modules_root = match &over.modules_dir {
            Some(dir) => {
                fs::metadata(dir).map_err(|source| TinyImageError::ModulesDirUnreadable {
                    path: dir.clone(),
                    source,
                })?;
                let kernel_sub = dir.join("kernel");
                Some(if kernel_sub.is_dir() {
                    kernel_sub
                } else {
                    dir.clone()
                })
            }
            None => None,
        };
        let identity = format!(
            "override:{}:{}:{}.{}:{}",
            over.kernel.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            over.modules_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
        let mut source = KernelSource {
            vmlinuz: over.kernel.clone(),
            modules_root,
            identity,
            release: None,
        };
        // Read now (64 KiB), so that a file that is no kernel is refused
        // before anything is fetched for the image.
        source.release = Some(source.release()?);
        Ok(source)
    }

    fn from_debian(
        cache_root: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<KernelSource, TinyImageError> {
        let kernels = cache_root.join("kernels");
        let dir = match newest_cached_kernel(&kernels) {
            Some(dir) => dir,
            None => fetch_debian_kernel(&kernels, progress)?,
        };
        let (vmlinuz, release) = find_vmlinuz(&dir)
            .ok_or_else(|| TinyImageError::NoKernelInPackage { dir: dir.clone() })?;
        let modules_root = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|base| dir.join(base).join(&release).join("kernel"))
            .find(|candidate| candidate.is_dir());
        let identity = format!(
            "debian:{}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        Ok(KernelSource {
            vmlinuz,
            modules_root,
            identity,
            release: Some(release),
        })
    }

    fn release(&self) -> Result<String, TinyImageError> {
        if let Some(release) = &self.release {
            return Ok(release.clone());
        }
        let mut head = Vec::new();
        fs::File::open(&self.vmlinuz)
            .and_then(|file| file.take(64 * 1024).read_to_end(&mut head))
            .map_err(|source| TinyImageError::KernelOverrideUnreadable {
                path: self.vmlinuz.clone(),
                source,
            })?;
        bzimage_release(&head).ok_or_else(|| TinyImageError::NotAKernel {
            path: self.vmlinuz.clone(),
        })
    }
}

/// The newest complete unpacked kernel in `kernels` (temporary build
/// directories start with a dot and are ignored).
fn newest_cached_kernel(kernels: &Path) -> Option<PathBuf> {
    let names: Vec<String> = fs::read_dir(kernels)
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("linux-image-"))
        .collect();
    let best = names.into_iter().max_by(|a, b| natural_cmp(a, b))?;
    Some(kernels.join(best))
}

/// Compare names with digit runs compared as numbers ("6.1.10" > "6.1.9").
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let order = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if order.is_ne() {
            return order;
        }
    }
    ca.len().cmp(&cb.len())
}

/// `boot/vmlinuz-<release>` in an unpacked kernel package.
fn find_vmlinuz(dir: &Path) -> Option<(PathBuf, String)> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((entry.path(), release))
        })
}

/// Map apt's "program not found" to the error that explains the override.
fn kernel_tool_err(step: &'static str) -> impl FnOnce(ToolError) -> TinyImageError {
    move |source| match source {
        ToolError::Missing { program, .. } => TinyImageError::AptUnavailable { program },
        source => TinyImageError::KernelFetch { step, source },
    }
}

/// The versioned package the meta package depends on, from `apt-cache depends`.
pub fn parse_kernel_dependency(apt_cache_output: &str) -> Option<String> {
    apt_cache_output.lines().find_map(|line| {
        let dependency = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        (dependency.starts_with("linux-image-") && !dependency.starts_with('<'))
            .then(|| dependency.to_string())
    })
}

/// Download and unpack the current Debian cloud kernel into `kernels`.
fn fetch_debian_kernel(
    kernels: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, TinyImageError> {
    fs::create_dir_all(kernels).map_err(cache_err("create", kernels))?;
    sweep_stale_temporaries(kernels);
    let depends = Tool::new("apt-cache", "install apt")
        .args(["depends", KERNEL_META_PACKAGE])
        .output_text()
        .map_err(kernel_tool_err("apt-cache depends"))?;
    let package = parse_kernel_dependency(&depends).ok_or_else(|| {
        TinyImageError::KernelPackageUnresolved {
            meta: KERNEL_META_PACKAGE.to_string(),
            output: depends.trim().to_string(),
        }
    })?;

    progress(&format!("downloading kernel {package}"));
    let download = TempDir::create(temp_sibling(&kernels.join("download")))?;
    Tool::new("apt-get", "install apt")
        .args(["download", &package])
        .current_dir(download.path())
        .output()
        .map_err(kernel_tool_err("apt-get download"))?;
    let deb = fs::read_dir(download.path())
        .map_err(cache_err("read", download.path()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| TinyImageError::KernelFetch {
            step: "apt-get download",
            source: ToolError::Failed {
                command: format!("apt-get download {package}"),
                status: "success".into(),
                stderr: "no .deb file was written".into(),
            },
        })?;
    let version = Tool::new("dpkg-deb", "install dpkg")
        .arg("-f")
        .arg(&deb)
        .arg("Version")
        .output_text()
        .map_err(kernel_tool_err("dpkg-deb -f"))?;
    let name = format!("{package}_{}", version.trim()).replace(['/', ':'], "_");
    let target = kernels.join(&name);

    progress(&format!("unpacking kernel {name}"));
    let unpacked = TempDir::create(temp_sibling(&target))?;
    Tool::new("dpkg-deb", "install dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path())
        .output()
        .map_err(kernel_tool_err("dpkg-deb -x"))?;
    if find_vmlinuz(unpacked.path()).is_none() {
        return Err(TinyImageError::NoKernelInPackage {
            dir: unpacked.path().to_path_buf(),
        });
    }
    sync_filesystem(unpacked.path());
    unpacked.rename_into_place(&target)?;
    Ok(target)
}

/// The static e2fsck for the image and its identity (the unpacked package's
/// name): the newest in the cache, else fetched with apt into it. `None`,
/// with a note, when this host has no apt.
fn find_or_fetch_e2fsck(
    cache_root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<(PathBuf, String)>, TinyImageError> {
    let tools = cache_root.join("tools");
    let prefix = format!("{E2FSCK_PACKAGE}_");
    let cached = fs::read_dir(&tools).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .max_by(|a, b| natural_cmp(a, b))
    });
    let name = match cached {
        Some(name) => name,
        None => match fetch_e2fsck(&tools, progress) {
            Ok(name) => name,
            Err(TinyImageError::AptUnavailable { program }) => {
                progress(&format!(
                    "note: `{program}` is not available, so the tiny image has no e2fsck; \
                     `vmkeep start --repair-data` will not be able to check a data disk"
                ));
                return Ok(None);
            }
            Err(e) => return Err(e),
        },
    };
    Ok(Some((tools.join(&name).join(E2FSCK_IN_PACKAGE), name)))
}

/// Download and unpack Debian's e2fsck-static into `tools`; returns the
/// name of its directory there.
fn fetch_e2fsck(tools: &Path, progress: &mut dyn FnMut(&str)) -> Result<String, TinyImageError> {
    let step_err = |step: &'static str| {
        move |source| match source {
            ToolError::Missing { program, .. } => TinyImageError::AptUnavailable { program },
            source => TinyImageError::E2fsckFetch { step, source },
        }
    };
    fs::create_dir_all(tools).map_err(cache_err("create", tools))?;
    sweep_stale_temporaries(tools);
    progress(&format!(
        "downloading {E2FSCK_PACKAGE} (e2fsck for the data disk)"
    ));
    let download = TempDir::create(temp_sibling(&tools.join("download")))?;
    Tool::new("apt-get", "install apt")
        .args(["download", E2FSCK_PACKAGE])
        .current_dir(download.path())
        .output()
        .map_err(step_err("apt-get download"))?;
    let deb = fs::read_dir(download.path())
        .map_err(cache_err("read", download.path()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| TinyImageError::E2fsckFetch {
            step: "apt-get download",
            source: ToolError::Failed {
                command: format!("apt-get download {E2FSCK_PACKAGE}"),
                status: "success".into(),
                stderr: "no .deb file was written".into(),
            },
        })?;
    let version = Tool::new("dpkg-deb", "install dpkg")
        .arg("-f")
        .arg(&deb)
        .arg("Version")
        .output_text()
        .map_err(step_err("dpkg-deb -f"))?;
    let name = format!("{E2FSCK_PACKAGE}_{}", version.trim()).replace(['/', ':'], "_");
    let target = tools.join(&name);
    let unpacked = TempDir::create(temp_sibling(&target))?;
    Tool::new("dpkg-deb", "install dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path())
        .output()
        .map_err(step_err("dpkg-deb -x"))?;
    let program = unpacked.path().join(E2FSCK_IN_PACKAGE);
    let bytes = fs::read(&program).map_err(cache_err("read", &program))?;
    if elf_is_static(&bytes) != Some(true) {
        return Err(TinyImageError::E2fsckNotStatic { path: program });
    }
    sync_filesystem(unpacked.path());
    unpacked.rename_into_place(&target)?;
    Ok(name)
}

/// Flush the file system holding `path`, so that a tree renamed into place
/// is complete on disk even after a crash. Best effort.
fn sync_filesystem(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = rustix::fs::syncfs(&dir);
    }
}

/// The host's busybox: first in PATH, else /bin/busybox.
fn find_busybox() -> Result<PathBuf, TinyImageError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("busybox"))
        .chain(std::iter::once(PathBuf::from("/bin/busybox")))
        .find(|candidate| candidate.is_file())
        .ok_or(TinyImageError::BusyboxMissing)
}

/// What the image's cache key is made of.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub format_version: u32,
    pub agent_digest: &'a str,
    pub busybox_path: &'a Path,
    pub busybox_size: u64,
    pub busybox_mtime_ns: i128,
    pub kernel_identity: &'a str,
    pub modules: &'a [&'a str],
    /// The unpacked e2fsck package's name, or "none".
    pub e2fsck_identity: &'a str,
}

/// A short hex digest of every input of the image.
pub fn cache_key(inputs: &KeyInputs<'_>) -> String {
    let text = format!(
        "format={}\nagent={}\nbusybox={}\nbusybox-size={}\nbusybox-mtime={}\nkernel={}\nmodules={}\ne2fsck={}\n",
        inputs.format_version,
        inputs.agent_digest,
        inputs.busybox_path.display(),
        inputs.busybox_size,
        inputs.busybox_mtime_ns,
        inputs.kernel_identity,
        inputs.modules.join(","),
        inputs.e2fsck_identity
    );
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..10])
}

/// Which of the wanted modules a kernel has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModuleSelection {
    /// (module name, file), in the wanted order.
    pub found: Vec<(String, PathBuf)>,
    /// Names with no file (built in, or not configured).
    pub missing: Vec<String>,
}

/// Modules of `wanted` found under `root` (by file name `<name>.ko`, with
/// `-` and `_` equivalent), in the order of `wanted`, and the names missing.
pub fn select_modules(root: &Path, wanted: &[&str]) -> io::Result<ModuleSelection> {
    let mut available: HashMap<String, PathBuf> = HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if let Some(stem) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".ko"))
            {
                available.entry(stem.replace('-', "_")).or_insert(path);
            }
        }
    }
    let mut selection = ModuleSelection::default();
    for name in wanted {
        match available.get(&name.replace('-', "_")) {
            Some(path) => selection.found.push((name.to_string(), path.clone())),
            None => selection.missing.push(name.to_string()),
        }
    }
    Ok(selection)
}

/// The kernel release from a bzImage's setup header ("HdrS" at 0x202; the
/// version string's offset, minus 0x200, at 0x20E).
pub fn bzimage_release(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = head.get(0x20E..0x210)?;
    let offset = usize::from(u16::from_le_bytes([pointer[0], pointer[1]])) + 0x200;
    let text = head.get(offset..)?;
    let end = text.iter().position(|b| *b == 0)?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    version.split_whitespace().next().map(str::to_string)
}

/// Whether an ELF executable has no program interpreter (is static).
/// `None` when `bytes` is not an ELF file.
pub fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    if bytes.get(0..4)? != b"\x7fELF" || *bytes.get(5)? != 1 {
        return None; // not ELF, or not little-endian
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (phoff, phentsize, phnum) = match bytes.get(4)? {
        1 => (u32_at(0x1C)? as usize, u16_at(0x2A)?, u16_at(0x2C)?),
        2 => {
            let b = bytes.get(0x20..0x28)?;
            (
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize,
                u16_at(0x36)?,
                u16_at(0x38)?,
            )
        }
        _ => return None,
    };
    const PT_INTERP: u32 = 3;
    for index in 0..phnum {
        if u32_at(phoff.checked_add(index.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// What goes into the initramfs.
pub struct InitramfsContents<'a> {
    pub agent: &'a [u8],
    pub busybox: &'a [u8],
    /// A static e2fsck, installed as `/sbin/e2fsck`.
    pub e2fsck: Option<&'a [u8]>,
    /// (file name, bytes), in load order.
    pub modules: Vec<(String, Vec<u8>)>,
}

/// Directories of the initramfs, parents first.
const INITRAMFS_DIRS: &[&str] = &[
    "bin",
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "data",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "root",
    "etc",
    "lib",
    "lib/modules",
    "lib/modules/vmkeep",
];

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Build the initramfs: an uncompressed newc cpio archive.
pub fn build_initramfs(contents: &InitramfsContents<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(contents.agent.len() + contents.busybox.len() + 1024 * 1024);
    let mut ino = 0u32;
    let mut entry = |out: &mut Vec<u8>,
                     name: &str,
                     mode: u32,
                     data: &[u8],
                     rdev: Option<(u32, u32)>|
     -> io::Result<()> {
        ino += 1;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is too large for cpio"),
            )
        })?;
        let mut builder = cpio::NewcBuilder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(if mode & S_IFDIR != 0 { 2 } else { 1 });
        if let Some((major, minor)) = rdev {
            builder = builder.rdev_major(major).rdev_minor(minor);
        }
        let mut writer = builder.write(out, size);
        writer.write_all(data)?;
        writer.finish()?;
        Ok(())
    };
    for dir in INITRAMFS_DIRS {
        entry(&mut out, dir, S_IFDIR | 0o755, &[], None)?;
    }
    entry(&mut out, "dev/console", S_IFCHR | 0o600, &[], Some((5, 1)))?;
    entry(&mut out, "init", S_IFREG | 0o755, contents.agent, None)?;
    entry(
        &mut out,
        "bin/busybox",
        S_IFREG | 0o755,
        contents.busybox,
        None,
    )?;
    if let Some(e2fsck) = contents.e2fsck {
        entry(&mut out, E2FSCK_IN_IMAGE, S_IFREG | 0o755, e2fsck, None)?;
    }
    let mut order = String::new();
    for (name, bytes) in &contents.modules {
        entry(
            &mut out,
            &format!("lib/modules/vmkeep/{name}"),
            S_IFREG | 0o644,
            bytes,
            None,
        )?;
        order.push_str(name);
        order.push('\n');
    }
    entry(
        &mut out,
        "lib/modules/vmkeep/order",
        S_IFREG | 0o644,
        order.as_bytes(),
        None,
    )?;
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// One member of a cpio archive, as listed by [`list_initramfs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioMember {
    pub name: String,
    pub mode: u32,
    pub size: u32,
    pub rdev: (u32, u32),
}

/// List the members of a newc cpio archive.
pub fn list_initramfs(archive: &[u8]) -> io::Result<Vec<CpioMember>> {
    let mut members = Vec::new();
    let mut cursor = Cursor::new(archive);
    loop {
        let reader = cpio::NewcReader::new(cursor)?;
        let entry = reader.entry();
        if entry.is_trailer() {
            return Ok(members);
        }
        members.push(CpioMember {
            name: entry.name().to_string(),
            mode: entry.mode(),
            size: entry.file_size(),
            rdev: (entry.rdev_major(), entry.rdev_minor()),
        });
        cursor = reader.skip()?;
    }
}

/// Build the image into a temporary sibling of `dir` and rename it into place.
fn build(
    tiny_dir: &Path,
    dir: &Path,
    kernel: &KernelSource,
    busybox: &Path,
    e2fsck: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<TinyImage, TinyImageError> {
    fs::create_dir_all(tiny_dir).map_err(cache_err("create", tiny_dir))?;
    sweep_stale_temporaries(tiny_dir);
    let release = kernel.release()?;
    progress(&format!(
        "building the tiny image initramfs (kernel {release})"
    ));

    let busybox_bytes = fs::read(busybox).map_err(cache_err("read", busybox))?;
    if elf_is_static(&busybox_bytes) != Some(true) {
        return Err(TinyImageError::BusyboxNotStatic {
            path: busybox.to_path_buf(),
        });
    }
    let mut modules = Vec::new();
    match &kernel.modules_root {
        Some(root) => {
            let ModuleSelection { found, missing } =
                select_modules(root, MODULES).map_err(|source| {
                    TinyImageError::ModulesDirUnreadable {
                        path: root.clone(),
                        source,
                    }
                })?;
            for name in missing {
                progress(&format!(
                    "note: module {name} is not in the kernel's modules; assuming it is built in"
                ));
            }
            for (name, path) in found {
                let bytes =
                    fs::read(&path).map_err(|source| TinyImageError::ModulesDirUnreadable {
                        path: path.clone(),
                        source,
                    })?;
                modules.push((format!("{name}.ko"), bytes));
            }
        }
        None => progress(
            "note: no kernel modules directory; assuming the virtio, evdev and button drivers are built in",
        ),
    }
    let e2fsck_bytes = match e2fsck {
        Some(path) => Some(fs::read(path).map_err(cache_err("read", path))?),
        None => None,
    };
    let initramfs = build_initramfs(&InitramfsContents {
        agent: GUEST_AGENT,
        busybox: &busybox_bytes,
        e2fsck: e2fsck_bytes.as_deref(),
        modules,
    })
    .map_err(|source| TinyImageError::Cache {
        action: "assemble the initramfs for",
        path: dir.to_path_buf(),
        source,
    })?;

    let staging = TempDir::create(temp_sibling(dir))?;
    let vmlinuz = staging.path().join("vmlinuz");
    // A hard link saves a copy of the kernel per image; across file systems, copy.
    fs::hard_link(&kernel.vmlinuz, &vmlinuz)
        .or_else(|_| fs::copy(&kernel.vmlinuz, &vmlinuz).map(drop))
        .map_err(cache_err("copy the kernel to", &vmlinuz))?;
    fs::File::open(&vmlinuz)
        .and_then(|f| f.sync_all())
        .map_err(cache_err("sync", &vmlinuz))?;
    let initrd = staging.path().join("initrd.img");
    write_atomic(&initrd, &initramfs, 0o644).map_err(cache_err("write", &initrd))?;
    let release_file = staging.path().join("release");
    write_atomic(&release_file, format!("{release}\n").as_bytes(), 0o644)
        .map_err(cache_err("write", &release_file))?;
    staging.rename_into_place(dir)?;
    sync_dir(tiny_dir).map_err(cache_err("sync", tiny_dir))?;

    read_cached(dir).ok_or_else(|| TinyImageError::Cache {
        action: "read back",
        path: dir.join("release"),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "the image vanished right after it was built",
        ),
    })
}

/// A directory being built; removed on drop unless renamed into place.
struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir, TinyImageError> {
        fs::create_dir_all(&path).map_err(cache_err("create", &path))?;
        Ok(TempDir { path: Some(path) })
    }

    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Rename into `target`. If another builder got there first (the
    /// target exists and is not empty), theirs is kept and ours dropped.
    fn rename_into_place(mut self, target: &Path) -> Result<(), TinyImageError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        match fs::rename(&path, target) {
            Ok(()) => Ok(()),
            Err(e)
                if target.is_dir()
                    && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
            {
                let _ = fs::remove_dir_all(&path);
                Ok(())
            }
            Err(source) => {
                let _ = fs::remove_dir_all(&path);
                Err(TinyImageError::Cache {
                    action: "move into place",
                    path: target.to_path_buf(),
                    source,
                })
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// The pid in a temporary name made by `temp_sibling` (`.NAME.tmp-PID-N`).
fn temp_owner_pid(name: &str) -> Option<i32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, tail) = name.rsplit_once(".tmp-")?;
    let (pid, counter) = tail.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Remove temporaries left by builders that crashed (their pid is gone).
fn sweep_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner_pid(&name) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
            match rustix::process::test_kill_process(pid) {
                Ok(()) => true,
                Err(e) => e != rustix::io::Errno::SRCH,
            }
        });
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(busybox: &'a Path) -> KeyInputs<'a> {
        KeyInputs {
            format_version: 1,
            agent_digest: "00aa",
            busybox_path: busybox,
            busybox_size: 100,
            busybox_mtime_ns: 5,
            kernel_identity: "debian:linux-image-6.1.0-56-cloud-amd64_6.1.192-2",
            modules: MODULES,
            e2fsck_identity: "e2fsck-static_1.47.0-2+b2",
        }
    }

    #[test]
    fn the_cache_key_changes_with_every_input() {
        let busybox = PathBuf::from("/bin/busybox");
        let other_busybox = PathBuf::from("/usr/bin/busybox");
        let base = inputs(&busybox);
        let key = cache_key(&base);
        assert_eq!(key, cache_key(&inputs(&busybox)), "stable");
        assert_eq!(key.len(), 20);
        let fewer_modules = &MODULES[..3];
        let variants = [
            KeyInputs {
                format_version: 2,
                ..base.clone()
            },
            KeyInputs {
                agent_digest: "00ab",
                ..base.clone()
            },
            KeyInputs {
                busybox_path: &other_busybox,
                ..base.clone()
            },
            KeyInputs {
                busybox_size: 101,
                ..base.clone()
            },
            KeyInputs {
                busybox_mtime_ns: 6,
                ..base.clone()
            },
            KeyInputs {
                kernel_identity: "debian:linux-image-6.1.0-57-cloud-amd64_6.1.200-1",
                ..base.clone()
            },
            KeyInputs {
                modules: fewer_modules,
                ..base.clone()
            },
            KeyInputs {
                e2fsck_identity: "none",
                ..base.clone()
            },
        ];
        for variant in variants {
            assert_ne!(cache_key(&variant), key, "{variant:?}");
        }
    }

    #[test]
    fn modules_are_selected_by_name_in_the_wanted_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "drivers/virtio/virtio.ko",
            "drivers/virtio/virtio_ring.ko",
            "drivers/virtio/virtio_pci.ko",
            "drivers/char/hw_random/virtio-rng.ko",
            "drivers/input/evdev.ko",
            "drivers/net/net-failover.ko",
            "drivers/virtio/virtio_pci.ko.xz.sig",
        ];
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, file).unwrap();
        }
        let ModuleSelection { found, missing } = select_modules(
            dir.path(),
            &[
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "evdev",
                "net_failover",
            ],
        )
        .unwrap();
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "evdev",
                "net_failover"
            ]
        );
        assert!(
            found[4].1.ends_with("drivers/net/net-failover.ko"),
            "dash and underscore are the same"
        );
        assert_eq!(missing, ["virtio_blk"]);
    }

    #[test]
    fn the_kernel_package_is_read_from_apt_cache_depends() {
        let output = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(output).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_kernel_dependency("linux-image-cloud-amd64\n"), None);
        assert_eq!(
            parse_kernel_dependency(
                "x\n |Depends: linux-image-6.1.0-9-cloud-amd64\n  Depends: other\n"
            )
            .as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
    }

    #[test]
    fn the_newest_cached_kernel_wins_and_temporaries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-6.1.0-9-cloud-amd64_6.1.90-1",
            "linux-image-6.1.0-10-cloud-amd64_6.1.100-1",
            ".linux-image-6.1.0-99-cloud-amd64_x.tmp-1-0",
            "download",
        ] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(
            newest_cached_kernel(dir.path()),
            Some(
                dir.path()
                    .join("linux-image-6.1.0-10-cloud-amd64_6.1.100-1")
            )
        );
        assert_eq!(newest_cached_kernel(&dir.path().join("none")), None);
    }

    #[test]
    fn temporaries_name_their_owner() {
        let tmp = temp_sibling(Path::new("/cache/tiny/abc"));
        assert_eq!(
            temp_owner_pid(&tmp.file_name().unwrap().to_string_lossy()),
            Some(std::process::id() as i32)
        );
        assert_eq!(temp_owner_pid("abc"), None);
        assert_eq!(
            temp_owner_pid("linux-image-6.1.0-56-cloud-amd64_6.1.192-2"),
            None
        );
    }

    #[test]
    fn bzimage_release_comes_from_the_setup_header() {
        let mut head = vec![0u8; 0x4000];
        head[0x202..0x206].copy_from_slice(b"HdrS");
        head[0x20E..0x210].copy_from_slice(&0x3000u16.to_le_bytes());
        let version = b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        head[0x3200..0x3200 + version.len()].copy_from_slice(version);
        assert_eq!(
            bzimage_release(&head).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        head[0x202] = b'X';
        assert_eq!(bzimage_release(&head), None);
        assert_eq!(bzimage_release(&[0u8; 16]), None);
    }

    #[test]
    fn elf_interpreter_means_dynamic() {
        // A minimal ELF64 header with two program headers at 0x40.
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3A].copy_from_slice(&2u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_is_static(&elf), Some(true));
        elf[0x40 + 56..0x40 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(elf_is_static(&elf), Some(false));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
        // The test binary itself is dynamically linked.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_static(&me), Some(false));
    }

    #[test]
    fn the_initramfs_holds_init_busybox_modules_dirs_and_a_console() {
        let contents = InitramfsContents {
            agent: b"agent-bytes",
            busybox: b"busybox-bytes!",
            e2fsck: Some(b"e2fsck"),
            modules: vec![
                ("virtio_ring.ko".into(), b"ring".to_vec()),
                ("virtio.ko".into(), b"virtio".to_vec()),
            ],
        };
        let archive = build_initramfs(&contents).unwrap();
        let members = list_initramfs(&archive).unwrap();
        let find = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing in {members:?}"))
        };
        assert_eq!(
            (find("init").mode, find("init").size),
            (S_IFREG | 0o755, 11)
        );
        assert_eq!(
            (find("bin/busybox").mode, find("bin/busybox").size),
            (S_IFREG | 0o755, 14)
        );
        assert_eq!(
            (find("sbin/e2fsck").mode, find("sbin/e2fsck").size),
            (S_IFREG | 0o755, 6)
        );
        assert_eq!(
            (find("dev/console").mode, find("dev/console").rdev),
            (S_IFCHR | 0o600, (5, 1))
        );
        for dir in [
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "data",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "root",
            "etc",
            "lib/modules/vmkeep",
        ] {
            assert_eq!(find(dir).mode, S_IFDIR | 0o755, "{dir}");
        }
        assert_eq!(find("lib/modules/vmkeep/virtio.ko").size, 6);
        let order = find("lib/modules/vmkeep/order");
        assert_eq!(order.size as usize, "virtio_ring.ko\nvirtio.ko\n".len());
        // Parents come before children, as the kernel's unpacker needs.
        let position = |name: &str| members.iter().position(|m| m.name == name).unwrap();
        assert!(position("lib/modules/vmkeep") < position("lib/modules/vmkeep/order"));
        assert!(position("usr") < position("usr/bin"));
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn the_embedded_agent_is_a_static_executable() {
        assert_eq!(
            elf_is_static(GUEST_AGENT),
            Some(true),
            "build.rs must build the guest agent with +crt-static"
        );
    }

    #[test]
    fn errors_name_the_problem_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let over = KernelOverride {
            kernel: dir.path().join("no-vmlinuz"),
            modules_dir: None,
        };
        let err = ensure(dir.path(), Some(&over), &mut |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no-vmlinuz") && text.contains("`kernel.path`"),
            "{text}"
        );

        let not_a_kernel = dir.path().join("vmlinuz");
        fs::write(&not_a_kernel, b"plain text").unwrap();
        let over = KernelOverride {
            kernel: not_a_kernel,
            modules_dir: None,
        };
        let text = ensure(dir.path(), Some(&over), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a Linux bzImage"), "{text}");

        let text = kernel_tool_err("apt-get download")(ToolError::Missing {
            program: "apt-get".into(),
            hint: String::new(),
        })
        .to_string();
        assert!(
            text.contains("apt-get") && text.contains("`kernel.path`"),
            "{text}"
        );
    }
}
