//! Where the image's kernel comes from: a kernel the user named (hosts
//! without apt), or Debian's cloud kernel, fetched into the cache.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::debian::{arch_dir, fetch_debian_kernel, find_vmlinuz, newest_cached_kernel};
use super::sniff::bzimage_release;
use super::{KernelOverride, TinyImageError};
use crate::guest_arch::GuestArch;

/// Where the kernel comes from.
pub(super) struct KernelSource {
    pub(super) vmlinuz: PathBuf,
    /// Directory searched (recursively) for module files.
    pub(super) modules_root: Option<PathBuf>,
    /// Identifies the kernel in the cache key.
    pub(super) identity: String,
    /// Known without reading the kernel (Debian's file name carries it).
    release: Option<String>,
}

impl KernelSource {
    pub(super) fn from_override(over: &KernelOverride) -> Result<KernelSource, TinyImageError> {
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

    pub(super) fn from_debian(
        cache_root: &Path,
        arch: GuestArch,
        progress: &mut dyn FnMut(&str),
    ) -> Result<KernelSource, TinyImageError> {
        let kernels = arch_dir(cache_root, "kernels", arch);
        let dir = match newest_cached_kernel(&kernels) {
            Some(dir) => dir,
            None => fetch_debian_kernel(&kernels, arch, progress)?,
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

    pub(super) fn release(&self) -> Result<String, TinyImageError> {
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
