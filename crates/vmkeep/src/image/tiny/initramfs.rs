//! The image's initramfs: an uncompressed newc cpio archive holding the
//! guest agent as `/init`, busybox, e2fsck and the modules; and a reader
//! that lists one.

use std::io::{self, Cursor, Write};

/// Where the guest agent looks for the static e2fsck (`disk::E2FSCK` in the
/// guest crate).
const E2FSCK_IN_IMAGE: &str = "sbin/e2fsck";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
