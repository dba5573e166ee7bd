//! Choosing the accelerator: the host's hypervisor only where it really
//! works, and only for guests of the host's architecture; else TCG.
//!
//! `/dev/kvm` can exist and even create VMs on a host whose CPU lacks
//! virtualisation extensions (nested virtualisation off): guests then hang
//! right after the kernel decompresses. So KVM needs both a usable
//! `/dev/kvm` and a CPU that advertises `vmx` or `svm` (on aarch64 Linux
//! the kernel offers `/dev/kvm` only when it booted at EL2, so the device
//! is the signal). On macOS the hypervisor is HVF, offered when the kernel
//! says `kern.hv_support`. A guest of another architecture (an aarch64
//! guest on an x86_64 host) is always emulated: TCG.

use crate::guest_arch::GuestArch;
use crate::instance::config::AccelSetting;

/// Environment variable that overrides the instance's `accel` setting.
pub const ACCEL_ENV: &str = "VMKEEP_ACCEL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }

    /// Whether the guest runs on the host's CPU (`-cpu host` then).
    pub fn is_hardware(self) -> bool {
        self != Accel::Tcg
    }
}

/// The hypervisor of this host's operating system.
pub const HOST_HYPERVISOR: Accel = if cfg!(target_os = "macos") {
    Accel::Hvf
} else {
    Accel::Kvm
};

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// KVM or HVF ([`HOST_HYPERVISOR`]).
    pub hypervisor: Accel,
    /// `/dev/kvm` opens read-write (macOS: `kern.hv_support` is 1).
    pub hypervisor_usable: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm` (on aarch64 and macOS, the
    /// hypervisor's own signal above stands for it).
    pub cpu_has_virtualization: bool,
    /// The host's architecture: guests of another one are emulated.
    pub arch: GuestArch,
}

impl HostFacts {
    #[cfg(not(target_os = "macos"))]
    pub fn probe() -> HostFacts {
        let hypervisor_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpu_has_virtualization = match GuestArch::HOST {
            GuestArch::X86_64 => cpu_flags_have_virtualization(
                &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            ),
            GuestArch::Aarch64 => hypervisor_usable,
        };
        HostFacts {
            hypervisor: HOST_HYPERVISOR,
            hypervisor_usable,
            cpu_has_virtualization,
            arch: GuestArch::HOST,
        }
    }

    #[cfg(target_os = "macos")]
    pub fn probe() -> HostFacts {
        let mut supported: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>();
        // SAFETY: a NUL-terminated name and an int-sized buffer.
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.hv_support".as_ptr(),
                (&mut supported as *mut libc::c_int).cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        };
        let usable = rc == 0 && supported == 1;
        HostFacts {
            hypervisor: HOST_HYPERVISOR,
            hypervisor_usable: usable,
            cpu_has_virtualization: usable,
            arch: GuestArch::HOST,
        }
    }
}

/// Whether any `flags` line of /proc/cpuinfo has `vmx` or `svm`.
pub fn cpu_flags_have_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmUnavailable {
    #[error(
        "KVM was asked for ({source_of_request}) but /dev/kvm cannot be opened read-write; use accel: tcg, or give this user access to /dev/kvm (group kvm)"
    )]
    NoDevice { source_of_request: String },
    /// `/dev/kvm` opens but guests would hang right after the kernel starts.
    #[error(
        "KVM was asked for ({source_of_request}) but the CPU shows no vmx/svm flag (no nested virtualisation): \
         a guest hangs under KVM here; use accel: auto or tcg"
    )]
    NoCpuSupport { source_of_request: String },
    #[error(
        "HVF was asked for ({source_of_request}) but this Mac offers no hypervisor (kern.hv_support is not 1); use accel: auto or tcg"
    )]
    NoHvf { source_of_request: String },
    /// The other OS's hypervisor.
    #[error(
        "{asked} was asked for ({source_of_request}) but this host's hypervisor is {native}; use accel: auto, {native} or tcg",
        asked = asked.as_str(), native = native.as_str()
    )]
    NotThisHost {
        asked: Accel,
        native: Accel,
        source_of_request: String,
    },
    /// A hypervisor runs guests of the host's architecture only.
    #[error(
        "{asked} was asked for ({source_of_request}) but the guest is {guest} and the host {host}: a guest of another architecture is emulated; use accel: auto or tcg",
        asked = asked.as_str()
    )]
    ForeignGuest {
        asked: Accel,
        guest: GuestArch,
        host: GuestArch,
        source_of_request: String,
    },
}

/// The accelerator to use for a guest of `guest`, and why.
pub fn choose(
    env_override: Option<AccelSetting>,
    configured: AccelSetting,
    facts: HostFacts,
    guest: GuestArch,
) -> Result<(Accel, String), KvmUnavailable> {
    let (setting, source) = match env_override {
        Some(setting) => (setting, ACCEL_ENV.to_string()),
        None => (configured, "accel in the config".to_string()),
    };
    let asked = match setting {
        AccelSetting::Tcg => return Ok((Accel::Tcg, format!("tcg: set by {source}"))),
        AccelSetting::Auto => None,
        AccelSetting::Kvm => Some(Accel::Kvm),
        AccelSetting::Hvf => Some(Accel::Hvf),
    };
    let Some(asked) = asked else {
        return Ok(auto(facts, guest));
    };
    let source_of_request = source.clone();
    if asked != facts.hypervisor {
        return Err(KvmUnavailable::NotThisHost {
            asked,
            native: facts.hypervisor,
            source_of_request,
        });
    }
    if guest != facts.arch {
        return Err(KvmUnavailable::ForeignGuest {
            asked,
            guest,
            host: facts.arch,
            source_of_request,
        });
    }
    match (asked, facts.hypervisor_usable, facts.cpu_has_virtualization) {
        (Accel::Hvf, false, _) => Err(KvmUnavailable::NoHvf { source_of_request }),
        (_, false, _) => Err(KvmUnavailable::NoDevice { source_of_request }),
        (_, true, false) => Err(KvmUnavailable::NoCpuSupport { source_of_request }),
        (_, true, true) => Ok((asked, format!("{}: set by {source}", asked.as_str()))),
    }
}

/// `accel: auto`: the host's hypervisor where it really works for this guest.
fn auto(facts: HostFacts, guest: GuestArch) -> (Accel, String) {
    if guest != facts.arch {
        return (
            Accel::Tcg,
            format!(
                "tcg: an {guest} guest on an {} host is emulated",
                facts.arch
            ),
        );
    }
    let native = facts.hypervisor.as_str();
    match (
        facts.hypervisor,
        facts.hypervisor_usable,
        facts.cpu_has_virtualization,
    ) {
        (Accel::Hvf, true, _) => (Accel::Hvf, "hvf: kern.hv_support is 1".to_string()),
        (Accel::Hvf, false, _) => (
            Accel::Tcg,
            "tcg: this Mac offers no hypervisor (kern.hv_support)".to_string(),
        ),
        (_, true, true) => (
            facts.hypervisor,
            format!("{native}: /dev/kvm usable and the CPU has virtualisation extensions"),
        ),
        (_, false, _) => (Accel::Tcg, "tcg: /dev/kvm is not usable".to_string()),
        (_, true, false) => (
            Accel::Tcg,
            "tcg: /dev/kvm exists but the CPU shows no vmx/svm (no nested virtualisation)"
                .to_string(),
        ),
    }
}

/// An accelerator override in the environment that is none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ACCEL_ENV}: {reason}")]
pub struct BadAccelOverride {
    pub reason: String,
}

/// The override from the environment, if set; an invalid value is an error
/// that names the variable.
pub fn env_override() -> Result<Option<AccelSetting>, BadAccelOverride> {
    match std::env::var(ACCEL_ENV) {
        Ok(value) if !value.is_empty() => value
            .parse()
            .map(Some)
            .map_err(|reason| BadAccelOverride { reason }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: GuestArch = GuestArch::X86_64;
    const ARM: GuestArch = GuestArch::Aarch64;

    const fn linux(usable: bool, cpu: bool) -> HostFacts {
        HostFacts {
            hypervisor: Accel::Kvm,
            hypervisor_usable: usable,
            cpu_has_virtualization: cpu,
            arch: X86,
        }
    }
    const NESTED_OFF: HostFacts = linux(true, false);
    const REAL_KVM: HostFacts = linux(true, true);
    const NO_KVM: HostFacts = linux(false, true);
    const MAC: HostFacts = HostFacts {
        hypervisor: Accel::Hvf,
        hypervisor_usable: true,
        cpu_has_virtualization: true,
        arch: ARM,
    };

    #[test]
    fn auto_picks_kvm_only_when_both_signals_agree() {
        assert_eq!(
            choose(None, AccelSetting::Auto, REAL_KVM, X86).unwrap().0,
            Accel::Kvm
        );
        assert_eq!(
            choose(None, AccelSetting::Auto, NESTED_OFF, X86).unwrap().0,
            Accel::Tcg
        );
        assert_eq!(
            choose(None, AccelSetting::Auto, NO_KVM, X86).unwrap().0,
            Accel::Tcg
        );
        assert!(
            choose(None, AccelSetting::Auto, NESTED_OFF, X86)
                .unwrap()
                .1
                .contains("vmx/svm")
        );
    }

    #[test]
    fn a_guest_of_another_architecture_is_emulated_and_never_accelerated() {
        let (accel, why) = choose(None, AccelSetting::Auto, REAL_KVM, ARM).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("aarch64 guest on an x86_64 host"), "{why}");
        assert_eq!(
            choose(None, AccelSetting::Auto, MAC, X86).unwrap().0,
            Accel::Tcg
        );
        let err = choose(Some(AccelSetting::Kvm), AccelSetting::Auto, REAL_KVM, ARM).unwrap_err();
        assert!(matches!(err, KvmUnavailable::ForeignGuest { .. }), "{err}");
        assert!(err.to_string().contains("accel: auto or tcg"), "{err}");
    }

    #[test]
    fn macos_uses_hvf_and_refuses_kvm() {
        assert_eq!(
            choose(None, AccelSetting::Auto, MAC, ARM).unwrap().0,
            Accel::Hvf
        );
        let no_hvf = HostFacts {
            hypervisor_usable: false,
            ..MAC
        };
        assert_eq!(
            choose(None, AccelSetting::Auto, no_hvf, ARM).unwrap().0,
            Accel::Tcg
        );
        assert!(matches!(
            choose(None, AccelSetting::Hvf, no_hvf, ARM),
            Err(KvmUnavailable::NoHvf { .. })
        ));
        let err = choose(None, AccelSetting::Kvm, MAC, ARM).unwrap_err();
        assert!(
            err.to_string().contains("use accel: auto, hvf or tcg"),
            "{err}"
        );
        let err = choose(None, AccelSetting::Hvf, REAL_KVM, X86).unwrap_err();
        assert!(matches!(err, KvmUnavailable::NotThisHost { .. }), "{err}");
    }

    #[test]
    fn the_environment_overrides_the_config() {
        assert_eq!(
            choose(Some(AccelSetting::Tcg), AccelSetting::Kvm, REAL_KVM, X86)
                .unwrap()
                .0,
            Accel::Tcg
        );
        assert_eq!(
            choose(Some(AccelSetting::Kvm), AccelSetting::Tcg, REAL_KVM, X86)
                .unwrap()
                .0,
            Accel::Kvm
        );
        assert_eq!(
            choose(Some(AccelSetting::Auto), AccelSetting::Kvm, NESTED_OFF, X86)
                .unwrap()
                .0,
            Accel::Tcg
        );
    }

    #[test]
    fn asking_for_kvm_without_a_usable_device_is_an_error_with_a_fix() {
        let err = choose(None, AccelSetting::Kvm, NO_KVM, X86).unwrap_err();
        assert!(err.to_string().contains("accel: tcg"), "{err}");
    }

    #[test]
    fn kvm_forced_where_guests_would_hang_is_refused_at_once() {
        // /dev/kvm opens, but no vmx/svm: a guest would hang until its boot
        // deadline. Refused before anything boots, saying why.
        let err = choose(Some(AccelSetting::Kvm), AccelSetting::Auto, NESTED_OFF, X86).unwrap_err();
        assert!(matches!(err, KvmUnavailable::NoCpuSupport { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(ACCEL_ENV) && text.contains("vmx/svm") && text.contains("tcg"),
            "{text}"
        );
        assert!(choose(None, AccelSetting::Kvm, NESTED_OFF, X86).is_err());
    }

    #[test]
    fn cpu_flags_are_matched_as_whole_words() {
        assert!(cpu_flags_have_virtualization(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpu_flags_have_virtualization("flags : svm lm\n"));
        assert!(!cpu_flags_have_virtualization(
            "flags : fpu vme svmx sse\nmodel name: vmx inside\n"
        ));
    }

    #[test]
    fn this_host_probe_runs() {
        // On the CI machines /dev/kvm exists but nested virtualisation is off.
        let facts = HostFacts::probe();
        let (accel, _) = choose(None, AccelSetting::Auto, facts, GuestArch::HOST).unwrap();
        if !facts.cpu_has_virtualization {
            assert_eq!(accel, Accel::Tcg);
        }
    }
}
