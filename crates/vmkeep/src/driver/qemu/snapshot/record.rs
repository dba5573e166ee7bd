//! The state record (`saved-state.json`): what a saved state needs to be
//! loadable, and the pure check of a record against what would be launched
//! now.
//!
//! Written last, atomically, after everything it names is durable: a saved
//! state exists exactly when its record does. Readers tolerate fields they
//! do not know (a newer vmkeep may add some); `format` says when a change is
//! one this version cannot read.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::qemu::args::{self, LaunchSpec};
use crate::driver::qemu::capabilities::Capabilities;
use crate::driver::qemu::qmp::QemuVersion;
use crate::os::fs::FileId;

/// The record format this vmkeep writes and reads. Bump it when a record
/// written by the new code could not be resumed by the old (or the reverse).
pub const FORMAT_VERSION: u32 = crate::formats::SAVED_STATE.current;

/// One saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    pub format: u32,
    /// RFC 3339 UTC, when the state became durable.
    pub saved_at: String,
    /// The vmkeep that wrote it (informational).
    pub vmkeep_version: String,
    pub qemu: QemuBuild,
    /// The machine type QEMU resolved (`pc-q35-7.2`): the device layout the
    /// state was saved under.
    pub machine_type: String,
    pub machine: MachineShape,
    /// The kernel command line the guest booted with (direct kernel boot):
    /// a resumed QEMU gets it again, so that a reboot inside it behaves as
    /// in the QEMU that booted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cmdline: Option<String>,
    /// The guest's RAM file as the save left it.
    pub ram: FileId,
    /// The disk image as the save left it (QEMU flushed it; nothing may
    /// write it until the resume).
    pub disk: FileId,
    pub device_state: DeviceState,
    /// The guest's boot id at the save (informational: a resumed guest
    /// keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_id: Option<String>,
}

/// The QEMU that saved the state. Only the same QEMU version or a newer one
/// loads it (`capabilities::Capabilities::loads_state_of`), under the
/// machine type it was saved with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuBuild {
    pub version: QemuVersion,
    /// The binary, and its identity then: the same file has the same
    /// version, so a resume asks for the version only when it changed.
    pub binary: PathBuf,
    #[serde(default)]
    pub binary_id: Option<FileId>,
}

/// The device-state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// What of a launch must be the same for a saved state to load into it:
/// the devices and memory QEMU builds (paths, ports and the kernel files
/// may change, since the guest's RAM already holds what it booted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Booted by the firmware (SeaBIOS) rather than directly from a kernel.
    pub firmware_boot: bool,
    /// A cloud-init seed volume is attached.
    pub seed: bool,
    /// A network device is attached.
    pub network: bool,
    /// Shared directories attached (vhost-user-fs devices). Only QEMU 8.2
    /// and later can save a VM that has one; a record of an older vmkeep,
    /// which had no such devices, reads as none.
    #[serde(default)]
    pub shared_dirs: u32,
}

impl MachineShape {
    /// The shape of what `spec` launches.
    pub fn of(spec: &LaunchSpec) -> MachineShape {
        let args: Vec<String> = args::build(spec)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        MachineShape::of_args(&args)
    }

    /// The shape of a QEMU from its arguments (as [`args::build`] writes
    /// them): one source of truth for a QEMU vmkeep launched and for one it
    /// adopted (read from /proc).
    pub fn of_args<S: AsRef<str>>(args: &[S]) -> MachineShape {
        let values = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0].as_ref() == flag)
                .map(|w| w[1].as_ref())
                .collect()
        };
        let first = |flag: &str| values(flag).first().copied().unwrap_or("").to_owned();
        MachineShape {
            accel: first("-accel"),
            cpus: first("-smp")
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            memory_mib: first("-m").trim_end_matches('M').parse().unwrap_or(0),
            firmware_boot: values("-kernel").is_empty(),
            seed: values("-drive").iter().any(|d| d.contains("id=seed,")),
            network: !values("-netdev").is_empty(),
            shared_dirs: values("-device")
                .iter()
                .filter(|d| d.starts_with("vhost-user-fs-pci"))
                .count() as u32,
        }
    }
}

/// The kernel command line in a QEMU's arguments, if it boots a kernel.
pub fn kernel_cmdline_of_args<S: AsRef<str>>(args: &[S]) -> Option<String> {
    args.windows(2)
        .find(|w| w[0].as_ref() == "-append")
        .map(|w| w[1].as_ref().to_owned())
}

/// Where a running QEMU keeps the guest's RAM, shared (only then can a
/// save leave it out of the migration stream), from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamOfQemu {
    /// A memfd it inherited as descriptor N (`mem-path=/proc/self/fd/N`).
    Memfd(std::os::fd::RawFd),
    /// The instance's `guest-ram` file (a QEMU started by an older vmkeep,
    /// adopted): the RAM is on the disk already.
    File,
}

/// Where a QEMU's arguments put the guest's RAM; `None` when no save can
/// reach it.
pub fn ram_of_args<S: AsRef<str>>(args: &[S], ram_file: &std::path::Path) -> Option<RamOfQemu> {
    if let Some(fd) = args::ram_fd_of_args(args) {
        return Some(RamOfQemu::Memfd(fd));
    }
    ram_in_shared_file(args, ram_file).then_some(RamOfQemu::File)
}

/// Whether a QEMU's arguments put the guest's RAM in `ram_file`, shared
/// (as vmkeep did before the RAM became a memfd).
pub fn ram_in_shared_file<S: AsRef<str>>(args: &[S], ram_file: &std::path::Path) -> bool {
    let wanted = format!(
        "mem-path={},",
        ram_file.to_string_lossy().replace(',', ",,")
    );
    args.windows(2).any(|w| {
        w[0].as_ref() == "-object"
            && w[1].as_ref().starts_with(args::MEMORY_BACKEND)
            && w[1].as_ref().contains(&wanted)
            && w[1].as_ref().ends_with("share=on")
    })
}

/// What a resume would launch, and what it finds on disk, now.
#[derive(Debug, Clone, PartialEq)]
pub struct Present {
    pub machine: MachineShape,
    /// The QEMU version that would run (`None`: could not be told).
    pub qemu_version: Option<QemuVersion>,
    pub ram: Option<FileId>,
    pub disk: Option<FileId>,
    /// Size and SHA-256 of the device-state file, if it is there.
    pub device_state: Option<DeviceState>,
}

/// One reason a saved state cannot be loaded now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Written by a vmkeep with a newer (or unknown) record format.
    Format {
        found: u32,
    },
    /// An older QEMU than the one that saved it would load it (or the
    /// version of the one that would cannot be told).
    QemuVersion {
        saved: QemuVersion,
        now: Option<QemuVersion>,
    },
    /// The machine would be built differently.
    Machine {
        what: &'static str,
        saved: String,
        now: String,
    },
    RamFileMissing,
    /// The RAM file is not the one the save left (replaced or written).
    RamFileChanged,
    DiskMissing,
    /// The disk image was written (or replaced) since the save.
    DiskChanged,
    DeviceStateMissing,
    /// The device-state file does not have the size and digest recorded.
    DeviceStateDamaged,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Format { found } => write!(
                f,
                "it was saved in record format {found}; this vmkeep reads format {FORMAT_VERSION} \
                 (a newer vmkeep wrote it)"
            ),
            Mismatch::QemuVersion {
                saved,
                now: Some(now),
            } => {
                write!(
                    f,
                    "it was saved by QEMU {saved}, and QEMU {now}, the one found now, is older \
                     (a saved state resumes only on the same QEMU or a newer one)"
                )
            }
            Mismatch::QemuVersion { saved, now: None } => write!(
                f,
                "it was saved by QEMU {saved}; the version of the QEMU installed now cannot be told"
            ),
            Mismatch::Machine { what, saved, now } => {
                write!(f, "{what}: saved with {saved}, would resume with {now}")
            }
            Mismatch::RamFileMissing => f.write_str("the guest's RAM file is missing"),
            Mismatch::RamFileChanged => {
                f.write_str("the guest's RAM file was replaced or written since the save")
            }
            Mismatch::DiskMissing => f.write_str("the disk image is missing"),
            Mismatch::DiskChanged => f.write_str(
                "the disk image was written since the save (the saved RAM no longer matches it)",
            ),
            Mismatch::DeviceStateMissing => f.write_str("the device-state file is missing"),
            Mismatch::DeviceStateDamaged => {
                f.write_str("the device-state file does not match its record (damaged)")
            }
        }
    }
}

impl Mismatch {
    /// Whether the state could still load once the user sets things back
    /// (the config, or the QEMU it was saved with): worth keeping.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            Mismatch::Format { .. } | Mismatch::QemuVersion { .. } | Mismatch::Machine { .. }
        )
    }
}

/// Two file identities name the same, unwritten file. The device number is
/// left out: some file systems (btrfs) number their devices anew at each
/// mount, and a host reboot must not make a state unloadable.
fn same_file(saved: &FileId, now: &FileId) -> bool {
    saved.ino == now.ino && saved.size == now.size && saved.mtime_ns == now.mtime_ns
}

/// Every reason `record` cannot be loaded into what is `present`; empty
/// when it can.
pub fn check(record: &StateRecord, present: &Present) -> Vec<Mismatch> {
    if record.format != FORMAT_VERSION {
        return vec![Mismatch::Format {
            found: record.format,
        }];
    }
    let mut found = Vec::new();
    let loads = present
        .qemu_version
        .is_some_and(|now| Capabilities::of(now).loads_state_of(record.qemu.version));
    if !loads {
        found.push(Mismatch::QemuVersion {
            saved: record.qemu.version,
            now: present.qemu_version,
        });
    }
    let (saved, now) = (&record.machine, &present.machine);
    let mut differs = |what: &'static str, saved: String, now: String| {
        if saved != now {
            found.push(Mismatch::Machine { what, saved, now });
        }
    };
    differs("accelerator", saved.accel.clone(), now.accel.clone());
    differs("cpus", saved.cpus.to_string(), now.cpus.to_string());
    differs(
        "memory",
        format!("{} MiB", saved.memory_mib),
        format!("{} MiB", now.memory_mib),
    );
    let boot = |firmware: bool| {
        if firmware {
            "firmware"
        } else {
            "direct kernel"
        }
    };
    differs(
        "boot",
        boot(saved.firmware_boot).into(),
        boot(now.firmware_boot).into(),
    );
    let attached = |yes: bool| if yes { "attached" } else { "none" };
    differs(
        "cloud-init seed volume",
        attached(saved.seed).into(),
        attached(now.seed).into(),
    );
    differs(
        "network device",
        attached(saved.network).into(),
        attached(now.network).into(),
    );
    differs(
        "shared directories",
        saved.shared_dirs.to_string(),
        now.shared_dirs.to_string(),
    );
    match &present.ram {
        None => found.push(Mismatch::RamFileMissing),
        Some(ram) if !same_file(&record.ram, ram) => found.push(Mismatch::RamFileChanged),
        Some(_) => {}
    }
    match &present.disk {
        None => found.push(Mismatch::DiskMissing),
        Some(disk) if !same_file(&record.disk, disk) => found.push(Mismatch::DiskChanged),
        Some(_) => {}
    }
    match &present.device_state {
        None => found.push(Mismatch::DeviceStateMissing),
        Some(state) if *state != record.device_state => found.push(Mismatch::DeviceStateDamaged),
        Some(_) => {}
    }
    found
}

/// What of a config the machine a state was saved from would not take:
/// the CPUs, the memory, shared directories (a saved VM has none) and an
/// accelerator asked for by name. Checked before a config is changed
/// (`vmkeep edit` of a suspended instance), so that the change is refused
/// rather than the resume.
pub fn config_conflicts(
    saved: &MachineShape,
    cpus: u32,
    memory_mib: u64,
    shared_dirs: u32,
    accel: Option<&str>,
) -> Vec<Mismatch> {
    let mut found = Vec::new();
    let mut differs = |what: &'static str, saved: String, now: String| {
        if saved != now {
            found.push(Mismatch::Machine { what, saved, now });
        }
    };
    differs("cpus", saved.cpus.to_string(), cpus.to_string());
    differs(
        "memory",
        format!("{} MiB", saved.memory_mib),
        format!("{memory_mib} MiB"),
    );
    differs(
        "shared directories",
        saved.shared_dirs.to_string(),
        shared_dirs.to_string(),
    );
    if let Some(accel) = accel {
        let saved_accel = saved.accel.split(',').next().unwrap_or_default();
        differs("accelerator", saved_accel.to_string(), accel.to_string());
    }
    found
}

/// Read a record: `format` first, so that a record of another format is
/// told as such rather than as unreadable.
pub fn parse(bytes: &[u8]) -> Result<StateRecord, RecordParseError> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let format = serde_json::from_slice::<FormatOnly>(bytes)
        .map_err(|e| RecordParseError::Unreadable(e.to_string()))?
        .format;
    if format != FORMAT_VERSION {
        return Err(RecordParseError::OtherFormat { found: format });
    }
    serde_json::from_slice(bytes).map_err(|e| RecordParseError::Unreadable(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordParseError {
    #[error("it is not a state record vmkeep can read: {0}")]
    Unreadable(String),
    #[error("{}", Mismatch::Format { found: *found })]
    OtherFormat { found: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, size: u64, mtime_ns: i128) -> FileId {
        FileId {
            dev: 2049,
            ino,
            size,
            mtime_ns,
        }
    }

    fn shape() -> MachineShape {
        MachineShape {
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 256,
            firmware_boot: false,
            seed: false,
            network: false,
            shared_dirs: 0,
        }
    }

    const V72: QemuVersion = QemuVersion {
        major: 7,
        minor: 2,
        micro: 22,
    };

    fn record() -> StateRecord {
        StateRecord {
            format: FORMAT_VERSION,
            saved_at: "2026-12-01T07:00:00.000Z".into(),
            vmkeep_version: "0.1.0".into(),
            qemu: QemuBuild {
                version: V72,
                binary: "/usr/bin/qemu-system-x86_64".into(),
                binary_id: Some(id(7, 100, 5)),
            },
            machine_type: "pc-q35-7.2".into(),
            machine: shape(),
            kernel_cmdline: Some("console=ttyS0".into()),
            ram: id(10, 256 << 20, 1),
            disk: id(11, 35 << 20, 2),
            device_state: DeviceState {
                bytes: 380_948,
                sha256: "ab".into(),
            },
            guest_boot_id: Some("b00t".into()),
        }
    }

    fn present() -> Present {
        let r = record();
        Present {
            machine: shape(),
            qemu_version: Some(V72),
            ram: Some(r.ram),
            disk: Some(r.disk),
            device_state: Some(r.device_state),
        }
    }

    fn launch_spec() -> LaunchSpec {
        let dir =
            crate::instance::InstanceDir::new(std::path::Path::new("/h"), "vm".parse().unwrap())
                .unwrap();
        LaunchSpec::for_instance(
            &dir,
            crate::driver::qemu::accel::Accel::Tcg,
            1,
            256,
            "/k".into(),
            "/i".into(),
            "console=ttyS0 quiet".into(),
        )
    }

    #[test]
    fn the_shape_is_read_back_from_the_arguments_vmkeep_writes() {
        let spec = launch_spec();
        assert_eq!(
            MachineShape::of(&spec),
            MachineShape {
                network: true,
                ..shape()
            },
            "every VM has the user network"
        );
        let mut shared = spec.clone();
        shared.shares = vec![args::ShareDevice {
            tag: "fs0".into(),
            socket: "/h/vm/fs0.sock".into(),
        }];
        assert_eq!(MachineShape::of(&shared).shared_dirs, 1);
        let mut cloud = spec.clone();
        cloud.cpus = 2;
        cloud.memory_mib = 1024;
        cloud.seed = Some("/h/vm/cidata.img".into());
        cloud.ssh_port = Some(2222);
        cloud.boot = args::Boot::Firmware;
        assert_eq!(
            MachineShape::of(&cloud),
            MachineShape {
                accel: "tcg".into(),
                cpus: 2,
                memory_mib: 1024,
                firmware_boot: true,
                seed: true,
                network: true,
                shared_dirs: 0,
            }
        );
        // Resuming launches the same shape.
        let resuming = LaunchSpec {
            incoming: true,
            ..spec.clone()
        };
        assert_eq!(MachineShape::of(&resuming), MachineShape::of(&spec));
        let args: Vec<String> = args::build(&spec)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            kernel_cmdline_of_args(&args).as_deref(),
            Some("console=ttyS0 quiet")
        );
        let ram_file = std::path::Path::new("/h/vm/guest-ram");
        let with_fd: Vec<String> = args::build(&LaunchSpec {
            ram_fd: Some(9),
            ..spec.clone()
        })
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        assert_eq!(ram_of_args(&with_fd, ram_file), Some(RamOfQemu::Memfd(9)));
        // QEMU's own memfd: out of reach.
        assert_eq!(ram_of_args(&args, ram_file), None);
        // A QEMU of an older vmkeep, its RAM in the instance's file.
        let file = [
            "-object",
            "memory-backend-file,id=ram0,size=256M,mem-path=/h/vm/guest-ram,share=on",
        ];
        assert_eq!(ram_of_args(&file, ram_file), Some(RamOfQemu::File));
        assert_eq!(ram_of_args(&file, std::path::Path::new("/elsewhere")), None);
        // A QEMU launched before the RAM moved to a file cannot be saved.
        let old: Vec<&str> = vec!["qemu", "-m", "256M", "-accel", "tcg"];
        assert_eq!(ram_of_args(&old, ram_file), None);
    }

    #[test]
    fn a_state_loads_into_the_same_machine_even_on_a_renumbered_device() {
        assert_eq!(check(&record(), &present()), vec![]);
        let mut renumbered = present();
        renumbered.ram.as_mut().unwrap().dev = 99;
        renumbered.disk.as_mut().unwrap().dev = 99;
        assert_eq!(check(&record(), &renumbered), vec![]);
    }

    #[test]
    fn every_difference_is_named_with_both_values() {
        type Change = Box<dyn Fn(&mut Present)>;
        let cases: Vec<(Change, Mismatch)> = vec![
            (
                Box::new(|p| p.machine.memory_mib = 512),
                Mismatch::Machine {
                    what: "memory",
                    saved: "256 MiB".into(),
                    now: "512 MiB".into(),
                },
            ),
            (
                Box::new(|p| p.machine.cpus = 2),
                Mismatch::Machine {
                    what: "cpus",
                    saved: "1".into(),
                    now: "2".into(),
                },
            ),
            (
                Box::new(|p| p.machine.accel = "kvm".into()),
                Mismatch::Machine {
                    what: "accelerator",
                    saved: "tcg".into(),
                    now: "kvm".into(),
                },
            ),
            (
                Box::new(|p| p.machine.firmware_boot = true),
                Mismatch::Machine {
                    what: "boot",
                    saved: "direct kernel".into(),
                    now: "firmware".into(),
                },
            ),
            (
                Box::new(|p| p.machine.seed = true),
                Mismatch::Machine {
                    what: "cloud-init seed volume",
                    saved: "none".into(),
                    now: "attached".into(),
                },
            ),
            (
                Box::new(|p| p.machine.network = true),
                Mismatch::Machine {
                    what: "network device",
                    saved: "none".into(),
                    now: "attached".into(),
                },
            ),
            (
                Box::new(|p| {
                    p.qemu_version = Some(QemuVersion {
                        major: 7,
                        minor: 2,
                        micro: 1,
                    })
                }),
                Mismatch::QemuVersion {
                    saved: V72,
                    now: Some(QemuVersion {
                        major: 7,
                        minor: 2,
                        micro: 1,
                    }),
                },
            ),
            (
                Box::new(|p| p.qemu_version = None),
                Mismatch::QemuVersion {
                    saved: V72,
                    now: None,
                },
            ),
            (Box::new(|p| p.ram = None), Mismatch::RamFileMissing),
            (
                Box::new(|p| p.ram.as_mut().unwrap().mtime_ns += 1),
                Mismatch::RamFileChanged,
            ),
            (Box::new(|p| p.disk = None), Mismatch::DiskMissing),
            (
                Box::new(|p| p.disk.as_mut().unwrap().size += 65536),
                Mismatch::DiskChanged,
            ),
            (
                Box::new(|p| p.disk.as_mut().unwrap().ino = 12),
                Mismatch::DiskChanged,
            ),
            (
                Box::new(|p| p.device_state = None),
                Mismatch::DeviceStateMissing,
            ),
            (
                Box::new(|p| p.device_state.as_mut().unwrap().sha256 = "cd".into()),
                Mismatch::DeviceStateDamaged,
            ),
            (
                Box::new(|p| p.device_state.as_mut().unwrap().bytes = 1),
                Mismatch::DeviceStateDamaged,
            ),
        ];
        for (change, expected) in cases {
            let mut now = present();
            change(&mut now);
            assert_eq!(check(&record(), &now), vec![expected.clone()]);
            assert!(!expected.to_string().is_empty());
        }
        let memory = Mismatch::Machine {
            what: "memory",
            saved: "256 MiB".into(),
            now: "512 MiB".into(),
        };
        assert_eq!(
            memory.to_string(),
            "memory: saved with 256 MiB, would resume with 512 MiB"
        );
        assert!(memory.is_recoverable());
        assert!(!Mismatch::DiskChanged.is_recoverable());
    }

    #[test]
    fn a_state_saved_on_7_2_loads_on_10_but_not_the_reverse() {
        let q10 = QemuVersion {
            major: 10,
            minor: 0,
            micro: 2,
        };
        let mut newer = present();
        newer.qemu_version = Some(q10);
        assert_eq!(check(&record(), &newer), vec![]);
        let mut saved_on_10 = record();
        saved_on_10.qemu.version = q10;
        let refused = check(&saved_on_10, &present());
        assert_eq!(
            refused,
            vec![Mismatch::QemuVersion {
                saved: q10,
                now: Some(V72)
            }]
        );
        assert_eq!(
            refused[0].to_string(),
            "it was saved by QEMU 10.0.2, and QEMU 7.2.22, the one found now, is older \
             (a saved state resumes only on the same QEMU or a newer one)"
        );
        assert!(refused[0].is_recoverable());
    }

    #[test]
    fn several_differences_are_all_reported() {
        let mut now = present();
        now.machine.memory_mib = 1024;
        now.machine.cpus = 4;
        now.disk = None;
        assert_eq!(check(&record(), &now).len(), 3);
    }

    #[test]
    fn records_round_trip_and_tolerate_unknown_fields_but_not_other_formats() {
        let text = serde_json::to_string(&record()).unwrap();
        assert_eq!(parse(text.as_bytes()).unwrap(), record());
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["from_a_later_minor_version"] = serde_json::json!(true);
        assert_eq!(
            parse(value.to_string().as_bytes()).unwrap(),
            record(),
            "unknown fields are ignored"
        );
        value["format"] = serde_json::json!(2);
        value["machine"] = serde_json::json!("reshaped");
        assert_eq!(
            parse(value.to_string().as_bytes()),
            Err(RecordParseError::OtherFormat { found: 2 })
        );
        assert!(matches!(
            parse(b"{\"format\": 1}"),
            Err(RecordParseError::Unreadable(_))
        ));
        assert!(matches!(
            parse(b"\0\0"),
            Err(RecordParseError::Unreadable(_))
        ));
        let mut old = record();
        old.format = 2;
        assert_eq!(check(&old, &present()), vec![Mismatch::Format { found: 2 }]);
    }

    #[test]
    fn a_config_the_saved_machine_would_not_take_is_named() {
        let saved = MachineShape {
            accel: "tcg,thread=multi".into(),
            cpus: 1,
            memory_mib: 256,
            firmware_boot: false,
            seed: false,
            network: true,
            shared_dirs: 0,
        };
        assert!(config_conflicts(&saved, 1, 256, 0, None).is_empty());
        assert!(config_conflicts(&saved, 1, 256, 0, Some("tcg")).is_empty());
        let found = config_conflicts(&saved, 2, 512, 1, Some("kvm"));
        let what: Vec<&str> = found
            .iter()
            .map(|m| match m {
                Mismatch::Machine { what, .. } => *what,
                _ => "other",
            })
            .collect();
        assert_eq!(
            what,
            ["cpus", "memory", "shared directories", "accelerator"]
        );
    }
}
