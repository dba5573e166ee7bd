//! What differs between QEMU versions, decided in this one place from the
//! version QEMU itself reports (`--version`, or the QMP greeting), never
//! from where the binary lies (pure).
//!
//! vmkeep supports QEMU 7.2 (Debian 12) through 10.x (Debian 13, Fedora,
//! Homebrew; Ubuntu 24.04 has 8.2). What changes along the way, and what
//! vmkeep does about it:
//!
//! | QEMU | what changes | vmkeep |
//! |---|---|---|
//! | < 7.2 | older than anything tested | `start` warns once, then tries |
//! | 7.2 | a C virtiofsd ships with QEMU; vhost-user-fs cannot be migrated ("State blocked by non-migratable device") | a VM with mounts cannot be suspended |
//! | 8.0 | the C virtiofsd is gone | only the Rust virtiofsd serves shares |
//! | 8.2 | vhost-user-fs migrates its back-end's state (the Rust virtiofsd's `--migration-mode`) | a VM with mounts can be suspended |
//! | 9.0 | the `mapped-ram` migration capability (RAM at fixed offsets of a file) | known, not used yet (the RAM already lives in a shared file) |
//! | 10.0 | the `compress` and `block` migration capabilities are gone | never used |
//!
//! Machine types: a fresh boot asks for the unversioned alias `q35`, which
//! each QEMU resolves to its newest (`pc-q35-7.2`, `pc-q35-10.0`). A saved
//! state is resumed with the machine type it was saved under (QEMU keeps old
//! machine types), and only by the same or a newer QEMU: migration streams
//! are compatible forwards, never backwards.

use super::qmp::QemuVersion;

/// The oldest QEMU vmkeep supports (Debian 12's).
pub const MINIMUM: QemuVersion = QemuVersion {
    major: 7,
    minor: 2,
    micro: 0,
};

/// The first QEMU that migrates a vhost-user-fs device (its back-end's
/// state goes into the stream).
const VIRTIO_FS_MIGRATES: QemuVersion = QemuVersion {
    major: 8,
    minor: 2,
    micro: 0,
};

/// The first QEMU without the C virtiofsd (tools/virtiofsd was removed).
const WITHOUT_C_VIRTIOFSD: QemuVersion = QemuVersion {
    major: 8,
    minor: 0,
    micro: 0,
};

/// The first QEMU with the `mapped-ram` migration capability.
const MAPPED_RAM: QemuVersion = QemuVersion {
    major: 9,
    minor: 0,
    micro: 0,
};

/// The migration capability that leaves shared RAM out of the stream: the
/// RAM already lives in a shared file. Every supported QEMU has it.
pub const IGNORE_SHARED: &str = "x-ignore-shared";

/// What one QEMU version can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    version: QemuVersion,
}

impl Capabilities {
    pub fn of(version: QemuVersion) -> Capabilities {
        Capabilities { version }
    }

    pub fn version(&self) -> QemuVersion {
        self.version
    }

    /// Whether vmkeep supports this QEMU (at least [`MINIMUM`]).
    pub fn is_supported(&self) -> bool {
        self.version >= MINIMUM
    }

    /// What `start` says, once, about a QEMU older than [`MINIMUM`].
    pub fn warning(&self, binary: &std::path::Path) -> Option<String> {
        (!self.is_supported()).then(|| {
            format!(
                "{} is QEMU {}, older than {MINIMUM}, the oldest vmkeep supports; it may fail in \
                 ways vmkeep cannot explain: install QEMU {MINIMUM} or later (Debian 12's \
                 qemu-system-x86 or newer), or point VMKEEP_QEMU at one",
                binary.display(),
                self.version
            )
        })
    }

    /// Whether a VM with shared directories can be saved: QEMU migrates the
    /// vhost-user-fs device from 8.2 on (with a virtiofsd that supports it:
    /// every Rust virtiofsd vmkeep accepts does).
    pub fn virtio_fs_migrates(&self) -> bool {
        self.version >= VIRTIO_FS_MIGRATES
    }

    /// Whether QEMU's own C virtiofsd may serve a share alongside this
    /// QEMU: only the QEMUs that still shipped it (before 8.0). With a
    /// newer QEMU a C virtiofsd left on the host would be another
    /// release's, and it cannot be migrated.
    pub fn accepts_c_virtiofsd(&self) -> bool {
        self.version < WITHOUT_C_VIRTIOFSD
    }

    /// Whether this QEMU has the `mapped-ram` migration capability.
    pub fn has_mapped_ram(&self) -> bool {
        self.version >= MAPPED_RAM
    }

    /// The migration capabilities a save (and its resume) turns on.
    pub fn save_capabilities(&self) -> &'static [&'static str] {
        &[IGNORE_SHARED]
    }

    /// Whether this QEMU can load a state saved by QEMU `saved`: the same
    /// version or a newer one.
    pub fn loads_state_of(&self, saved: QemuVersion) -> bool {
        self.version >= saved
    }
}

/// The machine type to launch when resuming a state saved under
/// `saved_machine` (as recorded: `pc-q35-7.2`); `None` (nothing recorded)
/// launches the architecture's own alias (`q35`, `virt`), which QEMU
/// resolves to its newest.
pub fn machine_to_launch(saved_machine: &str) -> Option<String> {
    Some(saved_machine.to_owned()).filter(|m| !m.is_empty())
}

/// `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)` -> 7.2.22.
pub fn parse_version_output(text: &str) -> Option<QemuVersion> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let number = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    Some(QemuVersion {
        major: parts.next()??,
        minor: parts.next()??,
        micro: parts.next().flatten().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    #[test]
    fn each_version_gets_what_it_can_do() {
        // (version, supported, virtio-fs migrates, C virtiofsd, mapped-ram)
        let table = [
            (v(6, 2, 0), false, false, true, false),
            (v(7, 1, 0), false, false, true, false),
            (v(7, 2, 0), true, false, true, false),
            (v(7, 2, 22), true, false, true, false),
            (v(8, 0, 0), true, false, false, false),
            (v(8, 1, 5), true, false, false, false),
            (v(8, 2, 2), true, true, false, false),
            (v(9, 0, 0), true, true, false, true),
            (v(10, 0, 2), true, true, false, true),
            (v(11, 0, 0), true, true, false, true),
        ];
        for (version, supported, fs_migrates, c_virtiofsd, mapped_ram) in table {
            let caps = Capabilities::of(version);
            assert_eq!(caps.is_supported(), supported, "{version}");
            assert_eq!(caps.virtio_fs_migrates(), fs_migrates, "{version}");
            assert_eq!(caps.accepts_c_virtiofsd(), c_virtiofsd, "{version}");
            assert_eq!(caps.has_mapped_ram(), mapped_ram, "{version}");
            // Never a capability QEMU 10 dropped.
            assert_eq!(caps.save_capabilities(), [IGNORE_SHARED]);
        }
    }

    #[test]
    fn only_an_old_qemu_is_warned_about_naming_the_binary_and_the_way_out() {
        let path = std::path::Path::new("/opt/q/bin/qemu-system-x86_64");
        assert_eq!(Capabilities::of(v(7, 2, 0)).warning(path), None);
        assert_eq!(Capabilities::of(v(10, 0, 2)).warning(path), None);
        let warning = Capabilities::of(v(6, 2, 0)).warning(path).unwrap();
        assert!(
            warning.starts_with("/opt/q/bin/qemu-system-x86_64 is QEMU 6.2.0, older than 7.2.0"),
            "{warning}"
        );
        assert!(warning.contains("VMKEEP_QEMU"), "{warning}");
    }

    #[test]
    fn a_state_loads_into_the_same_or_a_newer_qemu_only() {
        let q10 = Capabilities::of(v(10, 0, 2));
        let q72 = Capabilities::of(v(7, 2, 22));
        assert!(q10.loads_state_of(v(7, 2, 22)));
        assert!(q10.loads_state_of(v(10, 0, 2)));
        assert!(q72.loads_state_of(v(7, 2, 22)));
        assert!(q72.loads_state_of(v(7, 2, 1)));
        assert!(!q72.loads_state_of(v(10, 0, 2)));
        assert!(!q72.loads_state_of(v(7, 2, 23)));
    }

    #[test]
    fn a_resume_launches_the_recorded_machine_type_a_boot_the_alias() {
        assert_eq!(machine_to_launch(""), None);
        assert_eq!(
            machine_to_launch("pc-q35-7.2").as_deref(),
            Some("pc-q35-7.2")
        );
    }

    #[test]
    fn versions_are_read_from_what_qemu_prints() {
        let table = [
            (
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022",
                Some(v(7, 2, 22)),
            ),
            (
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2~bpo12+1)\n",
                Some(v(10, 0, 2)),
            ),
            ("QEMU emulator version 9.1.0\n", Some(v(9, 1, 0))),
            ("QEMU emulator version 8.2", Some(v(8, 2, 0))),
            ("something else", None),
            ("", None),
            ("QEMU emulator version x.y", None),
            // The version is on the first line, not in later text.
            ("not QEMU\nQEMU emulator version 7.2.0", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_version_output(text), expected, "{text:?}");
        }
    }
}
