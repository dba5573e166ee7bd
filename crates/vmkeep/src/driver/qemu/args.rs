//! The QEMU command line, built from a launch description (pure).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use super::accel::Accel;
use super::usernet::NETDEV;
use crate::guest_arch::GuestArch;
use crate::instance::InstanceDir;

/// Everything the command line depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub name: String,
    /// The guest's architecture: machine type, CPU model and firmware
    /// come from it (`guest_arch`).
    pub arch: GuestArch,
    /// The machine type a saved state was saved under, for its resume
    /// (`pc-q35-7.2`; see `capabilities`); `None`: the architecture's own
    /// alias (`q35`, `virt`), QEMU's newest.
    pub machine: Option<String>,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    pub disk: PathBuf,
    /// A read-only raw volume after the disk (the cloud-init seed).
    pub seed: Option<PathBuf>,
    /// User-mode networking (`-netdev user,id=net0`, the guest at
    /// 10.0.2.15): what port forwards go through. Measured: a virtio NIC
    /// costs the tiny guest's boot nothing visible (3.04 s vs 3.05 s, medians
    /// of 6), so every VM gets one. `false` only to resume a state saved
    /// without one.
    pub network: bool,
    /// The guest's port 22 forwarded from this loopback port (cloud images).
    pub ssh_port: Option<u16>,
    /// Shared directories: one vhost-user-fs device each, connected to its
    /// virtiofsd's socket (see `virtiofs`).
    pub shares: Vec<ShareDevice>,
    pub qmp_socket: PathBuf,
    pub guest_socket: PathBuf,
    pub pid_file: PathBuf,
    pub serial_log: PathBuf,
    /// The descriptor of the memfd holding the guest's RAM, which QEMU
    /// inherits under the same number (see [`MEMORY_BACKEND`]). `None`:
    /// QEMU makes a memfd of its own (`memory-backend-memfd`), which no
    /// suspend can reach.
    pub ram_fd: Option<RawFd>,
    /// Start paused, waiting for a saved state over QMP (`-incoming defer
    /// -S`): how a suspended VM is resumed.
    pub incoming: bool,
}

/// The guest's RAM is a memfd the host agent makes
/// (`os::memfd::create_guest_ram`) and QEMU inherits, named to QEMU as a
/// file (`memory-backend-file,mem-path=/proc/self/fd/N,share=on`: the same
/// route on QEMU 7.2 and 10). Chosen because:
///
/// - the host never writes it to a disk while the VM runs (a file in the
///   instance directory, what vmkeep used before, was written back page by
///   page: 128 MiB per boot of the tiny guest, and whatever it dirtied
///   since), and no disk space is taken for it until a suspend;
/// - suspend: with the `x-ignore-shared` migration capability QEMU leaves
///   shared RAM out of the migration stream, so the stream is only the
///   device state (~400 KiB), and the RAM is copied by its data extents
///   into a sparse file beside it (`snapshot::save`); a resume fills a new
///   memfd from that file while QEMU starts;
/// - virtiofs: vhost-user daemons need the guest RAM shared (`share=on`),
///   which a memfd is;
/// - an agent that adopts a QEMU finds the RAM from QEMU's pid alone:
///   `/proc/PID/fd/N`, N read back from QEMU's command line.
pub const MEMORY_BACKEND: &str = "memory-backend-file";

/// One shared directory's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareDevice {
    /// The virtio-fs tag the guest mounts.
    pub tag: String,
    /// Its virtiofsd's vhost-user socket.
    pub socket: PathBuf,
}

/// The QEMU object id of the guest RAM backend.
const RAM_ID: &str = "ram0";

/// How the guest boots.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware (SeaBIOS) boots the disk.
    Firmware,
}

impl LaunchSpec {
    /// Paths from the instance directory; the rest from the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn for_instance(
        dir: &InstanceDir,
        accel: Accel,
        cpus: u32,
        memory_mib: u64,
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    ) -> LaunchSpec {
        LaunchSpec {
            name: dir.name().to_string(),
            arch: GuestArch::HOST,
            machine: None,
            accel,
            cpus,
            memory_mib,
            boot: Boot::Kernel {
                kernel,
                initrd: Some(initrd),
                cmdline,
            },
            disk: dir.disk(),
            seed: None,
            network: true,
            ssh_port: None,
            shares: Vec::new(),
            qmp_socket: dir.qmp_socket(),
            guest_socket: dir.guest_socket(),
            pid_file: dir.qemu_pid(),
            serial_log: dir.serial_log(),
            ram_fd: None,
            incoming: false,
        }
    }
}

/// The path QEMU opens for its inherited RAM descriptor `fd`.
pub fn ram_path(fd: RawFd) -> PathBuf {
    if cfg!(target_os = "linux") {
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    } else {
        PathBuf::from(format!("/dev/fd/{fd}"))
    }
}

/// The RAM descriptor a QEMU inherited, from its `-object` argument as
/// [`build`] writes it (`mem-path=/proc/self/fd/N`).
pub fn ram_fd_of_args<S: AsRef<str>>(args: &[S]) -> Option<RawFd> {
    args.windows(2).find_map(|w| {
        let object = w[1].as_ref();
        if w[0].as_ref() != "-object"
            || !object.starts_with(MEMORY_BACKEND)
            || !object.ends_with("share=on")
        {
            return None;
        }
        object
            .split(',')
            .find_map(|kv| {
                let path = kv.strip_prefix("mem-path=")?;
                path.strip_prefix("/proc/self/fd/")
                    .or_else(|| path.strip_prefix("/dev/fd/"))
            })
            .and_then(|n| n.parse().ok())
    })
}

/// Escape a value for QEMU's `key=value,...` option syntax (commas double).
fn opt(value: &std::path::Path) -> String {
    value.to_string_lossy().replace(',', ",,")
}

/// The arguments after the program name.
pub fn build(spec: &LaunchSpec) -> Vec<OsString> {
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("vmkeep-{},debug-threads=on", spec.name),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-machine".into(),
        format!(
            "{},memory-backend={RAM_ID}",
            spec.machine.as_deref().unwrap_or(spec.arch.machine())
        ),
        "-accel".into(),
        spec.accel.as_str().into(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-object".into(),
        match spec.ram_fd {
            Some(fd) => format!(
                "{MEMORY_BACKEND},id={RAM_ID},size={}M,mem-path={},share=on",
                spec.memory_mib,
                ram_path(fd).display()
            ),
            None => format!(
                "memory-backend-memfd,id={RAM_ID},size={}M,share=on",
                spec.memory_mib
            ),
        },
        "-chardev".into(),
        format!("file,id=serial0,path={},append=on", opt(&spec.serial_log)),
        "-serial".into(),
        "chardev:serial0".into(),
        "-drive".into(),
        format!(
            // A write that does not fit the host pauses the guest (it runs on
            // once there is room: see `instance::pause`); other errors go to
            // the guest, as on real hardware.
            "if=none,id=data,file={},format=qcow2,discard=unmap,werror=enospc,rerror=report",
            opt(&spec.disk)
        ),
        "-device".into(),
        match spec.boot {
            Boot::Kernel { .. } => "virtio-blk-pci,drive=data".into(),
            Boot::Firmware => "virtio-blk-pci,drive=data,bootindex=0".into(),
        },
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-chardev".into(),
        format!(
            "socket,id=guestagent,path={},server=on,wait=off",
            opt(&spec.guest_socket)
        ),
        "-device".into(),
        format!(
            "virtserialport,bus=vser0.0,chardev=guestagent,name={}",
            vmkeep_protocol::PORT_NAME
        ),
        "-chardev".into(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt(&spec.qmp_socket)
        ),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-pidfile".into(),
        spec.pid_file.to_string_lossy().into_owned(),
    ];
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &spec.boot
    {
        args.extend(["-kernel".into(), kernel.to_string_lossy().into_owned()]);
        if let Some(initrd) = initrd {
            args.extend(["-initrd".into(), initrd.to_string_lossy().into_owned()]);
        }
        args.extend(["-append".into(), cmdline.clone()]);
    }
    if let Some(seed) = &spec.seed {
        args.extend([
            "-drive".into(),
            format!("if=none,id=seed,file={},format=raw,readonly=on", opt(seed)),
            "-device".into(),
            "virtio-blk-pci,drive=seed".into(),
        ]);
    }
    if spec.network {
        let netdev = match spec.ssh_port {
            Some(port) => format!("user,id={NETDEV},hostfwd=tcp:127.0.0.1:{port}-:22"),
            None => format!("user,id={NETDEV}"),
        };
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            // No option ROM: nothing boots from the network (the kernel is
            // given, or SeaBIOS boots the disk), and its 256 KiB would be
            // guest memory outside the shared RAM file, saved and loaded at
            // every suspend and resume.
            format!("virtio-net-pci,netdev={NETDEV},romfile="),
        ]);
    }
    for share in &spec.shares {
        args.extend(super::virtiofs::qemu_args(&share.socket, &share.tag));
    }
    if spec.accel.is_hardware() {
        args.extend(["-cpu".into(), "host".into()]);
    } else if let Some(cpu) = spec.arch.emulated_cpu() {
        // Else TCG keeps QEMU's default CPU model, the one measured here.
        args.extend(["-cpu".into(), cpu.into()]);
    }
    if let Some(image) = spec.arch.firmware().image() {
        args.extend(["-bios".into(), image.into()]);
    }
    if spec.incoming {
        // Paused after loading too (-S), so that the saved state can be
        // retired before the guest runs and changes the RAM file.
        args.extend(["-incoming".into(), "defer".into(), "-S".into()]);
    }
    args.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> LaunchSpec {
        let dir = InstanceDir::new(Path::new("/h/v"), "dev".parse().unwrap()).unwrap();
        LaunchSpec::for_instance(
            &dir,
            Accel::Tcg,
            2,
            512,
            "/c/vmlinuz".into(),
            "/c/initrd.img".into(),
            "console=ttyS0".into(),
        )
    }

    fn text(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn sockets_pidfile_and_disk_live_in_the_instance_directory() {
        let args = text(&build(&spec()));
        assert_eq!(value_after(&args, "-pidfile"), ["/h/v/dev/qemu.pid"]);
        let chardevs = value_after(&args, "-chardev");
        assert!(chardevs.contains(&"socket,id=qmp,path=/h/v/dev/qmp.sock,server=on,wait=off"));
        assert!(
            chardevs.contains(&"socket,id=guestagent,path=/h/v/dev/ga.sock,server=on,wait=off")
        );
        assert!(chardevs.contains(&"file,id=serial0,path=/h/v/dev/serial.log,append=on"));
        assert_eq!(
            value_after(&args, "-drive"),
            [
                "if=none,id=data,file=/h/v/dev/disk.qcow2,format=qcow2,discard=unmap,werror=enospc,rerror=report"
            ]
        );
    }

    #[test]
    fn an_aarch64_guest_gets_virt_its_cpu_and_the_uefi_firmware() {
        let arm = LaunchSpec {
            arch: GuestArch::Aarch64,
            ..spec()
        };
        let args = text(&build(&arm));
        assert_eq!(value_after(&args, "-machine"), ["virt,memory-backend=ram0"]);
        assert_eq!(value_after(&args, "-cpu"), ["cortex-a57"]);
        assert_eq!(
            value_after(&args, "-bios"),
            ["/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"]
        );
        let x86 = text(&build(&spec()));
        assert_eq!(value_after(&x86, "-machine"), ["q35,memory-backend=ram0"]);
        assert!(value_after(&x86, "-cpu").is_empty() && value_after(&x86, "-bios").is_empty());
    }

    #[test]
    fn resources_and_accelerator_follow_the_spec() {
        let args = text(&build(&spec()));
        assert_eq!(value_after(&args, "-smp"), ["2"]);
        assert_eq!(value_after(&args, "-m"), ["512M"]);
        assert_eq!(value_after(&args, "-accel"), ["tcg"]);
        assert_eq!(value_after(&args, "-append"), ["console=ttyS0"]);
        let kvm = text(&build(&LaunchSpec {
            accel: Accel::Kvm,
            ..spec()
        }));
        assert_eq!(value_after(&kvm, "-accel"), ["kvm"]);
        assert_eq!(value_after(&kvm, "-cpu"), ["host"]);
    }

    #[test]
    fn guest_ram_is_the_inherited_memfd_named_as_a_shared_file() {
        let args = text(&build(&LaunchSpec {
            ram_fd: Some(7),
            ..spec()
        }));
        assert_eq!(value_after(&args, "-machine"), ["q35,memory-backend=ram0"]);
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-file,id=ram0,size=512M,mem-path=/proc/self/fd/7,share=on"]
        );
        assert_eq!(ram_fd_of_args(&args), Some(7));
        // Without a descriptor QEMU makes its own memfd: nothing to find.
        let own = text(&build(&spec()));
        assert_eq!(
            value_after(&own, "-object"),
            ["memory-backend-memfd,id=ram0,size=512M,share=on"]
        );
        assert_eq!(ram_fd_of_args(&own), None);
        // A RAM file of an older vmkeep is not a descriptor either.
        let old = [
            "-object",
            "memory-backend-file,id=ram0,size=512M,mem-path=/h/v/dev/guest-ram,share=on",
        ];
        assert_eq!(ram_fd_of_args(&old), None);
        // -m must agree with the backend's size.
        assert_eq!(value_after(&args, "-m"), ["512M"]);
        assert!(!args.contains(&"-incoming".to_string()));
    }

    #[test]
    fn a_resume_launches_the_machine_type_it_was_saved_under() {
        let resuming = LaunchSpec {
            machine: Some("pc-q35-7.2".into()),
            incoming: true,
            ..spec()
        };
        let args = text(&build(&resuming));
        assert_eq!(
            value_after(&args, "-machine"),
            ["pc-q35-7.2,memory-backend=ram0"]
        );
    }

    #[test]
    fn a_resume_waits_paused_for_the_saved_state() {
        let resuming = LaunchSpec {
            incoming: true,
            ..spec()
        };
        let args = text(&build(&resuming));
        assert_eq!(value_after(&args, "-incoming"), ["defer"]);
        assert!(args.contains(&"-S".to_string()));
        // Otherwise the very same machine.
        let fresh = text(&build(&spec()));
        let without: Vec<&String> = args
            .iter()
            .filter(|a| !["-incoming", "defer", "-S"].contains(&a.as_str()))
            .collect();
        assert_eq!(without, fresh.iter().collect::<Vec<_>>());
    }

    #[test]
    fn no_default_devices_and_no_user_config() {
        let args = text(&build(&spec()));
        assert!(
            args.contains(&"-nodefaults".to_string())
                && args.contains(&"-no-user-config".to_string())
        );
        assert_eq!(value_after(&args, "-display"), ["none"]);
    }

    #[test]
    fn cloud_images_get_a_seed_drive_ssh_forwarding_and_may_boot_firmware() {
        let mut s = spec();
        s.seed = Some("/h/v/dev/cidata.img".into());
        s.ssh_port = Some(40022);
        s.network = true;
        s.boot = Boot::Firmware;
        let args = text(&build(&s));
        assert_eq!(
            value_after(&args, "-drive")[1],
            "if=none,id=seed,file=/h/v/dev/cidata.img,format=raw,readonly=on"
        );
        assert_eq!(
            value_after(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]
        );
        let devices = value_after(&args, "-device");
        assert!(
            devices.contains(&"virtio-net-pci,netdev=net0,romfile="),
            "{devices:?}"
        );
        assert!(
            devices.contains(&"virtio-blk-pci,drive=data,bootindex=0"),
            "{devices:?}"
        );
        assert!(value_after(&args, "-kernel").is_empty());
        s.boot = Boot::Kernel {
            kernel: "/c/vmlinuz".into(),
            initrd: None,
            cmdline: "root=/dev/vda".into(),
        };
        let args = text(&build(&s));
        assert_eq!(value_after(&args, "-kernel"), ["/c/vmlinuz"]);
        assert!(value_after(&args, "-initrd").is_empty());
        assert_eq!(value_after(&args, "-append"), ["root=/dev/vda"]);
        // The tiny image has the user network, without ssh.
        assert_eq!(
            value_after(&text(&build(&spec())), "-netdev"),
            ["user,id=net0"]
        );
        let without = LaunchSpec {
            network: false,
            ..spec()
        };
        assert!(value_after(&text(&build(&without)), "-netdev").is_empty());
    }

    #[test]
    fn each_shared_directory_is_a_vhost_user_fs_device_on_its_socket() {
        let mut s = spec();
        s.shares = vec![
            ShareDevice {
                tag: "fs0".into(),
                socket: "/h/v/dev/fs0.sock".into(),
            },
            ShareDevice {
                tag: "fs1".into(),
                socket: "/h/v/dev/fs1.sock".into(),
            },
        ];
        let args = text(&build(&s));
        let chardevs = value_after(&args, "-chardev");
        assert!(chardevs.contains(&"socket,id=fs1-chr,path=/h/v/dev/fs1.sock"));
        let devices = value_after(&args, "-device");
        assert!(devices.contains(&"vhost-user-fs-pci,chardev=fs0-chr,tag=fs0,queue-size=1024"));
        // virtio-fs needs the guest RAM shared: it is already.
        assert!(value_after(&args, "-object")[0].ends_with("share=on"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut s = spec();
        s.disk = "/h/a,b/disk.qcow2".into();
        let args = text(&build(&s));
        assert_eq!(
            value_after(&args, "-drive"),
            [
                "if=none,id=data,file=/h/a,,b/disk.qcow2,format=qcow2,discard=unmap,werror=enospc,rerror=report"
            ]
        );
    }
}
