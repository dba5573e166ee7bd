//! What a file is, from its first bytes: a bzImage's kernel release, whether
//! an ELF executable is statically linked.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
}
