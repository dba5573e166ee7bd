//! Choosing the accelerator: KVM only where it really works.
//!
//! `/dev/kvm` can exist and even create VMs on a host whose CPU lacks
//! virtualisation extensions (nested virtualisation off): guests then hang
//! right after the kernel decompresses. So KVM needs both a usable
//! `/dev/kvm` and a CPU that advertises `vmx` or `svm`; otherwise TCG.

use crate::instance::config::AccelSetting;

/// Environment variable that overrides the instance's `accel` setting.
pub const ACCEL_ENV: &str = "VMKEEP_ACCEL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` opens read-write.
    pub kvm_device_usable: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_has_virtualization: bool,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        let kvm_device_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostFacts {
            kvm_device_usable,
            cpu_has_virtualization: cpu_flags_have_virtualization(&cpuinfo),
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
}

/// The accelerator to use, and why.
pub fn choose(
    env_override: Option<AccelSetting>,
    configured: AccelSetting,
    facts: HostFacts,
) -> Result<(Accel, String), KvmUnavailable> {
    let (setting, source) = match env_override {
        Some(setting) => (setting, ACCEL_ENV.to_string()),
        None => (configured, "accel in the config".to_string()),
    };
    match setting {
        AccelSetting::Tcg => Ok((Accel::Tcg, format!("tcg: set by {source}"))),
        AccelSetting::Kvm if !facts.kvm_device_usable => Err(KvmUnavailable::NoDevice {
            source_of_request: source,
        }),
        AccelSetting::Kvm if !facts.cpu_has_virtualization => Err(KvmUnavailable::NoCpuSupport {
            source_of_request: source,
        }),
        AccelSetting::Kvm => Ok((Accel::Kvm, format!("kvm: set by {source}"))),
        AccelSetting::Auto => Ok(
            match (facts.kvm_device_usable, facts.cpu_has_virtualization) {
                (true, true) => (
                    Accel::Kvm,
                    "kvm: /dev/kvm usable and the CPU has vmx/svm".to_string(),
                ),
                (false, _) => (Accel::Tcg, "tcg: /dev/kvm is not usable".to_string()),
                (true, false) => (
                    Accel::Tcg,
                    "tcg: /dev/kvm exists but the CPU shows no vmx/svm (no nested virtualisation)"
                        .to_string(),
                ),
            },
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

    const NESTED_OFF: HostFacts = HostFacts {
        kvm_device_usable: true,
        cpu_has_virtualization: false,
    };
    const REAL_KVM: HostFacts = HostFacts {
        kvm_device_usable: true,
        cpu_has_virtualization: true,
    };
    const NO_KVM: HostFacts = HostFacts {
        kvm_device_usable: false,
        cpu_has_virtualization: true,
    };

    #[test]
    fn auto_picks_kvm_only_when_both_signals_agree() {
        assert_eq!(
            choose(None, AccelSetting::Auto, REAL_KVM).unwrap().0,
            Accel::Kvm
        );
        assert_eq!(
            choose(None, AccelSetting::Auto, NESTED_OFF).unwrap().0,
            Accel::Tcg
        );
        assert_eq!(
            choose(None, AccelSetting::Auto, NO_KVM).unwrap().0,
            Accel::Tcg
        );
        assert!(
            choose(None, AccelSetting::Auto, NESTED_OFF)
                .unwrap()
                .1
                .contains("vmx/svm")
        );
    }

    #[test]
    fn the_environment_overrides_the_config() {
        assert_eq!(
            choose(Some(AccelSetting::Tcg), AccelSetting::Kvm, REAL_KVM)
                .unwrap()
                .0,
            Accel::Tcg
        );
        assert_eq!(
            choose(Some(AccelSetting::Kvm), AccelSetting::Tcg, REAL_KVM)
                .unwrap()
                .0,
            Accel::Kvm
        );
        assert_eq!(
            choose(Some(AccelSetting::Auto), AccelSetting::Kvm, NESTED_OFF)
                .unwrap()
                .0,
            Accel::Tcg
        );
    }

    #[test]
    fn asking_for_kvm_without_a_usable_device_is_an_error_with_a_fix() {
        let err = choose(None, AccelSetting::Kvm, NO_KVM).unwrap_err();
        assert!(err.to_string().contains("accel: tcg"), "{err}");
    }

    #[test]
    fn kvm_forced_where_guests_would_hang_is_refused_at_once() {
        // /dev/kvm opens, but no vmx/svm: a guest would hang until its boot
        // deadline. Refused before anything boots, saying why.
        let err = choose(Some(AccelSetting::Kvm), AccelSetting::Auto, NESTED_OFF).unwrap_err();
        assert!(matches!(err, KvmUnavailable::NoCpuSupport { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(ACCEL_ENV) && text.contains("vmx/svm") && text.contains("tcg"),
            "{text}"
        );
        assert!(choose(None, AccelSetting::Kvm, NESTED_OFF).is_err());
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
        let (accel, _) = choose(None, AccelSetting::Auto, facts).unwrap();
        if !facts.cpu_has_virtualization {
            assert_eq!(accel, Accel::Tcg);
        }
    }
}
