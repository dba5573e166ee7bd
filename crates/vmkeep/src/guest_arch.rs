//! The guest architectures vmkeep boots, and every choice that depends on
//! one: the QEMU binary (and the Debian package holding it), the machine
//! type, the CPU model under emulation, the serial console's device, the
//! firmware (which, on `virt`, is also what wires the power button), the
//! tiny image's kernel package and Debian's name for the architecture. Nothing else in vmkeep matches on an
//! architecture for these facts: it asks here.
//!
//! A guest of the host's architecture runs on the host's accelerator where
//! it really works (KVM, HVF); a guest of another one runs under QEMU's
//! emulator (TCG), by the same code: an x86_64 host boots aarch64 guests
//! and an aarch64 host x86_64 ones.

use serde::Serialize;

/// A guest architecture, by the name Lima, QEMU and `uname -m` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum GuestArch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

/// The firmware QEMU loads before the guest's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default for the machine (SeaBIOS on q35): nothing to pass.
    /// Direct kernel boot skips it; a cloud image's disk is booted by it.
    Builtin,
    /// A UEFI firmware image given with `-bios`, for every boot (a direct
    /// kernel boot too: QEMU hands the kernel to it, which starts it
    /// through its EFI stub). Where distributions put it, in order; the
    /// Debian package that holds the first.
    Uefi {
        candidates: &'static [&'static str],
        package: &'static str,
    },
}

impl Firmware {
    /// The firmware image to pass: the first candidate installed, else the
    /// first one (a launch refuses a missing one before QEMU runs).
    pub fn image(self) -> Option<&'static str> {
        match self {
            Firmware::Builtin => None,
            Firmware::Uefi { candidates, .. } => candidates
                .iter()
                .copied()
                .find(|path| std::path::Path::new(path).is_file())
                .or(candidates.first().copied()),
        }
    }

    /// Whether the firmware can be had (always, for the builtin one).
    pub fn is_installed(self) -> bool {
        self.image()
            .is_none_or(|path| std::path::Path::new(path).is_file())
    }
}

/// AAVMF (EDK II for `virt`) as one image: Debian's and Ubuntu's
/// qemu-efi-aarch64, Fedora's edk2-aarch64, Homebrew's qemu (Apple silicon,
/// then Intel), QEMU's own install.
const AARCH64_UEFI: &[&str] = &[
    "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    "/usr/share/edk2/aarch64/QEMU_EFI.fd",
    "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
    "/usr/local/share/qemu/edk2-aarch64-code.fd",
    "/usr/share/qemu/edk2-aarch64-code.fd",
];

impl GuestArch {
    pub const ALL: [GuestArch; 2] = [GuestArch::X86_64, GuestArch::Aarch64];

    /// The architecture vmkeep itself was built for: guests of it may use
    /// the host's accelerator.
    pub const HOST: GuestArch = if cfg!(target_arch = "aarch64") {
        GuestArch::Aarch64
    } else {
        GuestArch::X86_64
    };

    /// Lima's (and `uname -m`'s) name.
    pub fn name(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "x86_64",
            GuestArch::Aarch64 => "aarch64",
        }
    }

    /// The architecture by its Lima name (`default` is the host's).
    pub fn from_name(name: &str) -> Option<GuestArch> {
        match name {
            "default" => Some(GuestArch::HOST),
            _ => GuestArch::ALL.into_iter().find(|arch| arch.name() == name),
        }
    }

    /// Whether guests of this architecture run on the host's CPU (KVM or
    /// HVF, where they work); the others are emulated.
    pub fn is_host(self) -> bool {
        self == GuestArch::HOST
    }

    /// Debian's name (`dpkg --print-architecture`, Lima's `{{.Arch}}` in URLs).
    pub fn debian_arch(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "amd64",
            GuestArch::Aarch64 => "arm64",
        }
    }

    pub fn qemu_binary(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "qemu-system-x86_64",
            GuestArch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package that holds [`GuestArch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "qemu-system-x86",
            GuestArch::Aarch64 => "qemu-system-arm",
        }
    }

    /// QEMU's machine type.
    pub fn machine(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "q35",
            GuestArch::Aarch64 => "virt",
        }
    }

    /// The CPU model when emulated (TCG), or `None` for QEMU's default.
    /// `virt`'s default is a 32-bit Cortex-A15, which a 64-bit kernel cannot
    /// use; the Cortex-A57 is a plain ARMv8.0 CPU, cheaper to emulate than
    /// `max` (whose pointer authentication TCG computes in software).
    pub fn emulated_cpu(self) -> Option<&'static str> {
        match self {
            GuestArch::X86_64 => None,
            GuestArch::Aarch64 => Some("cortex-a57"),
        }
    }

    /// The serial console's device in the guest (`console=` on the kernel
    /// command line): the 8250 UART on PCs, the PL011 on `virt`.
    pub fn console(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "ttyS0",
            GuestArch::Aarch64 => "ttyAMA0",
        }
    }

    /// The firmware of every boot.
    ///
    /// On `virt` it is what makes the stop ladder's first step work: QMP
    /// `system_powerdown` reaches the guest as an ACPI power-button event
    /// (`virt`'s generic event device), and `virt` describes itself in ACPI
    /// only to a firmware. Booted without one, straight from a device tree,
    /// the button is a `gpio-keys` key on the PL061 GPIO controller, and
    /// Debian's arm64 cloud kernel has no `gpio_keys` driver
    /// (`CONFIG_KEYBOARD_GPIO` is not set): the press would be lost. Its
    /// ACPI `button` driver is built in, as on x86_64 (measured with
    /// linux-image-6.1.0-57-cloud-arm64: "ACPI: button: Power Button
    /// [PWRB]"). The firmware is AAVMF (EDK II for `virt`) as one read-only
    /// image (see `AARCH64_UEFI`): its variables are not kept across boots, which neither a
    /// kernel handed over by QEMU nor the removable-media boot path of cloud
    /// images (\EFI\BOOT\BOOTAA64.EFI) needs.
    pub fn firmware(self) -> Firmware {
        match self {
            GuestArch::X86_64 => Firmware::Builtin,
            GuestArch::Aarch64 => Firmware::Uefi {
                candidates: AARCH64_UEFI,
                package: "qemu-efi-aarch64",
            },
        }
    }

    /// Debian's meta package that depends on the current cloud kernel (the
    /// tiny image's kernel).
    pub fn kernel_meta_package(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "linux-image-cloud-amd64",
            GuestArch::Aarch64 => "linux-image-cloud-arm64",
        }
    }
}

/// The host's: what `arch: default` (or no `arch:`) means.
impl Default for GuestArch {
    fn default() -> Self {
        GuestArch::HOST
    }
}

impl std::fmt::Display for GuestArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_default_is_the_host() {
        for arch in GuestArch::ALL {
            assert_eq!(GuestArch::from_name(arch.name()), Some(arch));
            assert_eq!(
                serde_json::to_value(arch).unwrap(),
                serde_json::Value::String(arch.name().into())
            );
        }
        assert_eq!(GuestArch::from_name("default"), Some(GuestArch::HOST));
        assert_eq!(GuestArch::from_name("riscv64"), None);
        assert!(GuestArch::HOST.is_host());
    }

    #[test]
    fn each_architecture_has_its_own_machine_console_and_packages() {
        assert_eq!(GuestArch::Aarch64.machine(), "virt");
        assert_eq!(GuestArch::Aarch64.console(), "ttyAMA0");
        assert_eq!(GuestArch::Aarch64.qemu_package(), "qemu-system-arm");
        assert!(
            GuestArch::Aarch64
                .kernel_meta_package()
                .ends_with(GuestArch::Aarch64.debian_arch())
        );
        assert_eq!(GuestArch::X86_64.machine(), "q35");
        assert_eq!(GuestArch::X86_64.console(), "ttyS0");
        assert_eq!(GuestArch::X86_64.emulated_cpu(), None);
        assert_eq!(GuestArch::X86_64.firmware(), Firmware::Builtin);
        assert_eq!(GuestArch::X86_64.firmware().image(), None);
        assert!(GuestArch::X86_64.firmware().is_installed());
        let image = GuestArch::Aarch64.firmware().image().unwrap();
        assert!(AARCH64_UEFI.contains(&image), "{image}");
        assert!(matches!(
            GuestArch::Aarch64.firmware(),
            Firmware::Uefi {
                package: "qemu-efi-aarch64",
                ..
            }
        ));
    }
}
