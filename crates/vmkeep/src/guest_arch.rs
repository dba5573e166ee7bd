//! The guest architectures vmkeep boots, and every choice that depends on
//! one: the QEMU binary (and the Debian package holding it), the machine
//! type, the CPU model under emulation, the serial console's device, the
//! firmware that boots cloud images, the tiny image's kernel package and
//! Debian's name for the architecture. Nothing else in vmkeep matches on an
//! architecture for these facts: it asks here.
//!
//! A guest of the host's architecture runs on the host's accelerator where
//! it really works (KVM, HVF); a guest of another one runs under QEMU's
//! emulator (TCG), by the same code: an x86_64 host boots aarch64 guests
//! and an aarch64 host x86_64 ones.

use std::path::Path;

use serde::Serialize;

/// A guest architecture, by the name Lima, QEMU and `uname -m` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum GuestArch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

/// How the guest's power button reaches it (the stop ladder's first step,
/// QMP `system_powerdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerButton {
    /// q35's ACPI power button: the guest's `button` driver (ACPI).
    Acpi,
    /// `virt` with a device tree (direct kernel boot): a `gpio-keys` node
    /// wired to the PL061 GPIO controller, KEY_POWER on its line 3; the
    /// guest needs the `gpio_pl061` and `gpio_keys` drivers. Under UEFI
    /// firmware (cloud images) `virt` describes it in ACPI instead (the
    /// generic event device), which the guest's `button` driver handles.
    GpioKeys,
}

/// The firmware that boots a disk (cloud images without a kernel of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFirmware {
    /// QEMU's default firmware for the machine (SeaBIOS on q35): nothing to pass.
    Builtin,
    /// A UEFI firmware image given with `-bios`, from a Debian package.
    Uefi {
        path: &'static str,
        package: &'static str,
    },
}

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

    /// How QMP `system_powerdown` reaches the guest.
    pub fn power_button(self) -> PowerButton {
        match self {
            GuestArch::X86_64 => PowerButton::Acpi,
            GuestArch::Aarch64 => PowerButton::GpioKeys,
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

    /// The firmware that boots a cloud image's disk.
    pub fn disk_firmware(self) -> DiskFirmware {
        match self {
            GuestArch::X86_64 => DiskFirmware::Builtin,
            // AAVMF (EDK II for `virt`) as one image: its variables are not
            // kept across boots, which the removable-media boot path of cloud
            // images (\EFI\BOOT\BOOTAA64.EFI) does not need.
            GuestArch::Aarch64 => DiskFirmware::Uefi {
                path: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
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

    /// The kernel modules, in load order, that the tiny image's guest needs
    /// beyond the common virtio set: the power button's drivers.
    pub fn power_button_modules(self) -> &'static [&'static str] {
        match self.power_button() {
            PowerButton::Acpi => &["button"],
            PowerButton::GpioKeys => &["gpio-pl061", "gpio_keys"],
        }
    }

    /// Whether the firmware for disks is installed (always, for the builtin one).
    pub fn disk_firmware_present(self) -> bool {
        match self.disk_firmware() {
            DiskFirmware::Builtin => true,
            DiskFirmware::Uefi { path, .. } => Path::new(path).is_file(),
        }
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
        assert_eq!(GuestArch::X86_64.disk_firmware(), DiskFirmware::Builtin);
    }
}
