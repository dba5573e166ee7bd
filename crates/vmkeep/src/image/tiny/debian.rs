//! Debian's packages for the image, fetched with apt into the cache: the
//! cloud kernel (with its modules) and the static e2fsck. Resolved with
//! `apt-cache depends`, downloaded with `apt-get download`, unpacked with
//! `dpkg-deb -x`; nothing is installed on the host.

use std::fs;
use std::path::{Path, PathBuf};

use super::sniff::elf_is_static;
use super::staging::{TempDir, sweep_abandoned_temporaries};
use super::{TinyImageError, cache_err};
use crate::guest_arch::GuestArch;
use crate::os::fs::sync_filesystem;
use crate::os::tool::{Tool, ToolError};

/// Debian's package holding a statically linked e2fsck.
pub const E2FSCK_PACKAGE: &str = "e2fsck-static";
/// The program in that package.
const E2FSCK_IN_PACKAGE: &str = "sbin/e2fsck.static";

/// Debian's meta package that depends on the current cloud kernel of the
/// host's architecture.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Debian's static busybox (the host's own busybox serves guests of the
/// host's architecture).
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The program in that package.
const BUSYBOX_IN_PACKAGE: &str = "bin/busybox";

/// apt's name of `package` for guests of `arch`: qualified (`:arm64`) for
/// a foreign architecture (`dpkg --add-architecture` makes it known).
fn apt_name(package: &str, arch: GuestArch) -> String {
    if arch.is_host() {
        package.to_string()
    } else {
        format!("{package}:{}", arch.debian_arch())
    }
}

/// The cache directory `base` (`kernels`, `tools`) for packages of `arch`:
/// those of another architecture than the host's beside it, by Debian's
/// name (`kernels-arm64`), so that the newest of one is never taken for
/// the other.
pub(super) fn arch_dir(cache_root: &Path, base: &str, arch: GuestArch) -> PathBuf {
    if arch.is_host() {
        cache_root.join(base)
    } else {
        cache_root.join(format!("{base}-{}", arch.debian_arch()))
    }
}

/// The newest complete unpacked kernel in `kernels` (temporary build
/// directories start with a dot and are ignored).
pub(super) fn newest_cached_kernel(kernels: &Path) -> Option<PathBuf> {
    newest_unpacked(kernels, "linux-image-").map(|best| kernels.join(best))
}

/// The name of the newest package unpacked in `dir` whose name starts with
/// `prefix` (by version: see [`natural_cmp`]).
fn newest_unpacked(dir: &Path, prefix: &str) -> Option<String> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .max_by(|a, b| natural_cmp(a, b))
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
pub(super) fn find_vmlinuz(dir: &Path) -> Option<(PathBuf, String)> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((entry.path(), release))
        })
}

/// Which package a fetch is for: it decides what a failed step reports.
#[derive(Debug, Clone, Copy)]
enum Fetch {
    Kernel,
    E2fsck,
    Busybox,
}

impl Fetch {
    /// This fetch's error for a failed `step`; apt's "program not found"
    /// becomes the error that explains the way without apt.
    fn step_err(self, step: &'static str) -> impl FnOnce(ToolError) -> TinyImageError {
        move |source| match source {
            ToolError::Missing { program, .. } => TinyImageError::AptUnavailable { program },
            source => match self {
                Fetch::Kernel => TinyImageError::KernelFetch { step, source },
                Fetch::E2fsck => TinyImageError::E2fsckFetch { step, source },
                Fetch::Busybox => TinyImageError::BusyboxFetch { step, source },
            },
        }
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
pub(super) fn fetch_debian_kernel(
    kernels: &Path,
    arch: GuestArch,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, TinyImageError> {
    fs::create_dir_all(kernels).map_err(cache_err("create", kernels))?;
    sweep_abandoned_temporaries(kernels);
    let meta = apt_name(arch.kernel_meta_package(), arch);
    let depends = Tool::new("apt-cache", "install apt")
        .args(["depends", &meta])
        .output_text()
        .map_err(Fetch::Kernel.step_err("apt-cache depends"))?;
    let package = parse_kernel_dependency(&depends).ok_or_else(|| {
        TinyImageError::KernelPackageUnresolved {
            meta: meta.clone(),
            output: depends.trim().to_string(),
        }
    })?;

    progress(&format!("downloading kernel {package}"));
    let (_download, deb, name) = download(kernels, &package, Fetch::Kernel)?;
    let target = kernels.join(&name);

    progress(&format!("unpacking kernel {name}"));
    let unpacked = unpack(&deb, &target, Fetch::Kernel)?;
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
pub(super) fn find_or_fetch_e2fsck(
    cache_root: &Path,
    arch: GuestArch,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<(PathBuf, String)>, TinyImageError> {
    let tools = arch_dir(cache_root, "tools", arch);
    let name = match newest_unpacked(&tools, &format!("{E2FSCK_PACKAGE}_")) {
        Some(name) => name,
        None => match fetch_e2fsck(&tools, arch, progress) {
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
fn fetch_e2fsck(
    tools: &Path,
    arch: GuestArch,
    progress: &mut dyn FnMut(&str),
) -> Result<String, TinyImageError> {
    fs::create_dir_all(tools).map_err(cache_err("create", tools))?;
    sweep_abandoned_temporaries(tools);
    progress(&format!(
        "downloading {E2FSCK_PACKAGE} (e2fsck for the data disk)"
    ));
    let package = apt_name(E2FSCK_PACKAGE, arch);
    fetch_static_tool(tools, &package, E2FSCK_IN_PACKAGE, Fetch::E2fsck)
}

/// Download `package` into `tools`, check that its `program` is a static
/// executable, and rename it into place; returns its directory's name.
fn fetch_static_tool(
    tools: &Path,
    package: &str,
    program: &str,
    fetch: Fetch,
) -> Result<String, TinyImageError> {
    let (_download, deb, name) = download(tools, package, fetch)?;
    let target = tools.join(&name);
    let unpacked = unpack(&deb, &target, fetch)?;
    let path = unpacked.path().join(program);
    let bytes = fs::read(&path).map_err(cache_err("read", &path))?;
    if elf_is_static(&bytes) != Some(true) {
        return Err(match fetch {
            Fetch::Busybox => TinyImageError::BusyboxNotStatic { path },
            Fetch::Kernel | Fetch::E2fsck => TinyImageError::E2fsckNotStatic { path },
        });
    }
    sync_filesystem(unpacked.path());
    unpacked.rename_into_place(&target)?;
    Ok(name)
}

/// Debian's static busybox for guests of a foreign `arch`: the newest in
/// the cache, else fetched with apt into it.
pub(super) fn find_or_fetch_busybox(
    cache_root: &Path,
    arch: GuestArch,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, TinyImageError> {
    let tools = arch_dir(cache_root, "tools", arch);
    let package = apt_name(BUSYBOX_PACKAGE, arch);
    let name = match newest_unpacked(&tools, &format!("{BUSYBOX_PACKAGE}_")) {
        Some(name) => name,
        None => {
            fs::create_dir_all(&tools).map_err(cache_err("create", &tools))?;
            sweep_abandoned_temporaries(&tools);
            progress(&format!(
                "downloading {package} (the {arch} guest's busybox)"
            ));
            fetch_static_tool(&tools, &package, BUSYBOX_IN_PACKAGE, Fetch::Busybox)?
        }
    };
    Ok(tools.join(name).join(BUSYBOX_IN_PACKAGE))
}

/// `apt-get download PACKAGE` into a temporary directory in `parent`: the
/// directory (removed when dropped), the `.deb` in it, and the name of the
/// package's place in `parent` (`PACKAGE_VERSION`, safe as a file name).
fn download(
    parent: &Path,
    package: &str,
    fetch: Fetch,
) -> Result<(TempDir, PathBuf, String), TinyImageError> {
    let download = TempDir::create(&parent.join("download"))?;
    Tool::new("apt-get", "install apt")
        .args(["download", package])
        .current_dir(download.path())
        .output()
        .map_err(fetch.step_err("apt-get download"))?;
    let deb = fs::read_dir(download.path())
        .map_err(cache_err("read", download.path()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| {
            fetch.step_err("apt-get download")(ToolError::Failed {
                command: format!("apt-get download {package}"),
                status: "success".into(),
                stderr: "no .deb file was written".into(),
            })
        })?;
    let version = Tool::new("dpkg-deb", "install dpkg")
        .arg("-f")
        .arg(&deb)
        .arg("Version")
        .output_text()
        .map_err(fetch.step_err("dpkg-deb -f"))?;
    let name = format!("{package}_{}", version.trim()).replace(['/', ':'], "_");
    Ok((download, deb, name))
}

/// `dpkg-deb -x DEB` into a temporary sibling of `target`, to be checked
/// and renamed into place.
fn unpack(deb: &Path, target: &Path, fetch: Fetch) -> Result<TempDir, TinyImageError> {
    let unpacked = TempDir::create(target)?;
    Tool::new("dpkg-deb", "install dpkg")
        .arg("-x")
        .arg(deb)
        .arg(unpacked.path())
        .output()
        .map_err(fetch.step_err("dpkg-deb -x"))?;
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_host_without_apt_is_told_about_the_kernel_override() {
        let text = Fetch::Kernel.step_err("apt-get download")(ToolError::Missing {
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
