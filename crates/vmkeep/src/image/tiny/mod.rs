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
//! Each temporary's builder holds a lock beside it for its whole life, so the
//! sweep before a build removes only what builders that died left.
//! A cached image costs a few stats and one small read, and no apt call.
//!
//! This module holds the cache (`ensure`, the key, the build); its parts:
//! `kernel` (where the kernel comes from), `debian` (fetching Debian's
//! packages with apt), `modules` (which kernel modules, found where),
//! `sniff` (kernel release and static linking, read from a file's bytes),
//! `initramfs` (the cpio archive) and `staging` (directories built beside
//! their place, and the sweep of abandoned ones).

mod debian;
mod initramfs;
mod kernel;
mod modules;
mod sniff;
mod staging;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::guest_arch::GuestArch;
use crate::os::fs::{sync_dir, write_atomic};
use crate::os::tool::ToolError;
use debian::{find_or_fetch_busybox, find_or_fetch_e2fsck};
use kernel::KernelSource;
use staging::{TempDir, sweep_abandoned_temporaries};

pub use debian::{E2FSCK_PACKAGE, KERNEL_META_PACKAGE, parse_kernel_dependency};
pub use initramfs::{CpioMember, InitramfsContents, build_initramfs, list_initramfs};
pub use modules::{MODULES, ModuleSelection, select_modules};
pub use sniff::{bzimage_release, elf_is_static};

/// Bump when the image layout or the build recipe changes.
pub const FORMAT_VERSION: u32 = 2;

/// How a user gets a kernel without apt; part of several error messages.
pub const KERNEL_OVERRIDE_HINT: &str = "set `kernel.path` (a bzImage/vmlinuz) in the instance config and, if its virtio drivers \
     are modules, `kernel.modules` (its lib/modules/<release> directory)";

/// The guest agent for guests of `arch` (a static Linux executable built
/// by build.rs), and a digest of it for cache keys.
pub(crate) fn guest_agent(arch: GuestArch) -> (&'static [u8], &'static str) {
    match arch {
        GuestArch::X86_64 => (
            include_bytes!(env!("VMKEEP_GUEST_AGENT_X86_64")),
            env!("VMKEEP_GUEST_AGENT_DIGEST_X86_64"),
        ),
        GuestArch::Aarch64 => (
            include_bytes!(env!("VMKEEP_GUEST_AGENT_AARCH64")),
            env!("VMKEEP_GUEST_AGENT_DIGEST_AARCH64"),
        ),
    }
}

/// A built tiny image, ready to boot with `-kernel`/`-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyImage {
    /// The architecture of its guest.
    pub arch: GuestArch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest's `uname -r`.
    pub kernel_release: String,
}

impl TinyImage {
    /// Recommended kernel command line: console on the first serial port,
    /// reboot at once on a kernel panic, few kernel messages.
    pub fn base_cmdline(&self) -> String {
        format!("console={} panic=-1 quiet", self.arch.console())
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
        "{step} failed: {source}; check the apt sources and the network (`apt-get update`): \
         a tiny image of another architecture than the host's needs Debian's busybox-static of its architecture \
         (and `dpkg --add-architecture` of it: scripts/setup-host does it for arm64)"
    )]
    BusyboxFetch {
        step: &'static str,
        source: ToolError,
    },
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

/// Return the tiny image of the host's architecture, building it (and
/// fetching the kernel) if needed. `progress` hears about work only: a
/// cached image reports nothing.
pub fn ensure(
    cache_root: &Path,
    kernel_override: Option<&KernelOverride>,
    progress: &mut dyn FnMut(&str),
) -> Result<TinyImage, TinyImageError> {
    ensure_for(cache_root, GuestArch::HOST, kernel_override, progress)
}

/// [`ensure`] for guests of `arch`: Debian's kernel, static busybox and
/// e2fsck of that architecture (the host's busybox for its own), and the
/// guest agent built for it.
pub fn ensure_for(
    cache_root: &Path,
    arch: GuestArch,
    kernel_override: Option<&KernelOverride>,
    progress: &mut dyn FnMut(&str),
) -> Result<TinyImage, TinyImageError> {
    let kernel = match kernel_override {
        Some(over) => KernelSource::from_override(over)?,
        None => KernelSource::from_debian(cache_root, arch, progress)?,
    };
    let busybox = match arch.is_host() {
        true => find_busybox()?,
        false => find_or_fetch_busybox(cache_root, arch, progress)?,
    };
    let busybox_meta = fs::metadata(&busybox).map_err(cache_err("read", &busybox))?;
    let e2fsck = find_or_fetch_e2fsck(cache_root, arch, progress)?;
    let e2fsck_identity = e2fsck
        .as_ref()
        .map(|(_, identity)| identity.clone())
        .unwrap_or_else(|| "none".into());
    let key = cache_key(&KeyInputs {
        format_version: FORMAT_VERSION,
        agent_digest: guest_agent(arch).1,
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
    if let Some(image) = read_cached(&dir, arch) {
        return Ok(image);
    }
    let e2fsck = e2fsck.as_ref().map(|(path, _)| path.as_path());
    build(&tiny_dir, &dir, arch, &kernel, &busybox, e2fsck, progress)
}

fn read_cached(dir: &Path, arch: GuestArch) -> Option<TinyImage> {
    let release = fs::read_to_string(dir.join("release")).ok()?;
    Some(TinyImage {
        arch,
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_release: release.trim().to_string(),
    })
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

/// Build the image into a temporary sibling of `dir` and rename it into place.
fn build(
    tiny_dir: &Path,
    dir: &Path,
    arch: GuestArch,
    kernel: &KernelSource,
    busybox: &Path,
    e2fsck: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<TinyImage, TinyImageError> {
    fs::create_dir_all(tiny_dir).map_err(cache_err("create", tiny_dir))?;
    sweep_abandoned_temporaries(tiny_dir);
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
        agent: guest_agent(arch).0,
        busybox: &busybox_bytes,
        e2fsck: e2fsck_bytes.as_deref(),
        modules,
    })
    .map_err(|source| TinyImageError::Cache {
        action: "assemble the initramfs for",
        path: dir.to_path_buf(),
        source,
    })?;

    let staging = TempDir::create(dir)?;
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

    read_cached(dir, arch).ok_or_else(|| TinyImageError::Cache {
        action: "read back",
        path: dir.join("release"),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "the image vanished right after it was built",
        ),
    })
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
    fn the_embedded_agents_are_static_executables() {
        for arch in GuestArch::ALL {
            assert_eq!(
                elf_is_static(guest_agent(arch).0),
                Some(true),
                "build.rs must build the {arch} guest agent with +crt-static"
            );
        }
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
    }
}
