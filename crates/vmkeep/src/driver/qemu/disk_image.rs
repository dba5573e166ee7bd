//! Disk image files, through `qemu-img`: what one is (format, virtual
//! size, backing file), growing one, a qcow2 overlay on a base, and a copied
//! overlay pointed at its copied base. The VM must not run while its disk
//! is changed (the host agent grows it before QEMU starts).

use std::path::{Path, PathBuf};

use crate::os::tool::{Tool, ToolError};

const QEMU_IMG_HINT: &str = "install it: sudo apt-get install qemu-utils";

#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("{0}")]
    Tool(#[from] ToolError),
    #[error("`qemu-img info` on {path} said something unexpected: {message}")]
    Info { path: PathBuf, message: String },
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    /// The backing file, as the image names it (absolute, or relative to
    /// the image's directory).
    pub backing: Option<PathBuf>,
    pub backing_format: Option<String>,
}

impl ImageInfo {
    /// The backing file's path, a relative one taken from `image`'s directory.
    pub fn backing_path(&self, image: &Path) -> Option<PathBuf> {
        let backing = self.backing.as_ref()?;
        Some(match image.parent() {
            Some(dir) if backing.is_relative() => dir.join(backing),
            _ => backing.clone(),
        })
    }
}

fn qemu_img() -> Tool {
    Tool::new("qemu-img", QEMU_IMG_HINT)
}

/// `qemu-img info` of the image at `path` (read even while a QEMU holds it).
pub fn info(path: &Path) -> Result<ImageInfo, DiskImageError> {
    let json = qemu_img()
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()?;
    parse_info(&json).map_err(|message| DiskImageError::Info {
        path: path.to_path_buf(),
        message,
    })
}

/// Parse `qemu-img info --output=json`.
pub fn parse_info(json: &[u8]) -> Result<ImageInfo, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let format = value["format"].as_str().ok_or("no \"format\"")?.to_string();
    let virtual_size = value["virtual-size"]
        .as_u64()
        .ok_or("no \"virtual-size\"")?;
    Ok(ImageInfo {
        format,
        virtual_size,
        backing: value["backing-filename"].as_str().map(PathBuf::from),
        backing_format: value["backing-filename-format"]
            .as_str()
            .map(str::to_string),
    })
}

/// Grow the qcow2 image at `path` to `bytes` (its data kept; the guest's
/// file system is grown by the guest).
pub fn grow(path: &Path, bytes: u64) -> Result<(), DiskImageError> {
    qemu_img()
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(bytes.to_string())
        .output()?;
    Ok(())
}

/// Make `overlay` a new qcow2 image of `bytes` whose unwritten parts read
/// from `base` (of `base_format`), which is never written.
pub fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    bytes: u64,
) -> Result<(), DiskImageError> {
    qemu_img()
        .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(base)
        .arg(overlay)
        .arg(bytes.to_string())
        .output()?;
    Ok(())
}

/// Point the qcow2 `overlay` at `base` (of `base_format`) without reading
/// or changing any data: for an overlay copied together with its base,
/// whose content is the same.
pub fn rebase_onto_copy(
    overlay: &Path,
    base: &Path,
    base_format: &str,
) -> Result<(), DiskImageError> {
    qemu_img()
        .args(["rebase", "-q", "-u", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(base)
        .arg(overlay)
        .output()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_gives_format_size_and_backing_file() {
        let json = br#"{"virtual-size": 2147483648, "filename": "d", "format": "qcow2",
            "backing-filename": "/l/basedisk", "backing-filename-format": "raw"}"#;
        let info = parse_info(json).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: "qcow2".into(),
                virtual_size: 2 << 30,
                backing: Some("/l/basedisk".into()),
                backing_format: Some("raw".into()),
            }
        );
        let relative = ImageInfo {
            backing: Some("basedisk".into()),
            ..info.clone()
        };
        assert_eq!(
            relative.backing_path(Path::new("/lima/dev/diffdisk")),
            Some(PathBuf::from("/lima/dev/basedisk"))
        );
        assert!(parse_info(b"{}").is_err());
        assert!(parse_info(b"not json").is_err());
    }

    #[test]
    fn an_overlay_grows_and_follows_a_copied_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("disk.qcow2");
        if create_overlay(&base, "raw", &overlay, 2 << 20).is_err() {
            eprintln!("qemu-img missing; skipping");
            return;
        }
        grow(&overlay, 4 << 20).unwrap();
        let grown = info(&overlay).unwrap();
        assert_eq!(grown.virtual_size, 4 << 20);
        assert_eq!(grown.backing_path(&overlay), Some(base.clone()));
        let copy = dir.path().join("copy.raw");
        std::fs::copy(&base, &copy).unwrap();
        rebase_onto_copy(&overlay, &copy, "raw").unwrap();
        assert_eq!(info(&overlay).unwrap().backing_path(&overlay), Some(copy));
    }
}
