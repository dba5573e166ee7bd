//! The ACPI power button, read as evdev input events.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::log;

/// Size of `struct input_event` on x86_64: a 16-byte timeval, u16 type,
/// u16 code, i32 value.
pub const EVENT_SIZE: usize = 24;
pub const EV_KEY: u16 = 1;
pub const KEY_POWER: u16 = 116;
/// Name of the input device the ACPI `button` driver registers.
pub const POWER_BUTTON_NAME: &str = "Power Button";
pub const SYS_INPUT: &str = "/sys/class/input";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub fn decode(raw: &[u8; EVENT_SIZE]) -> InputEvent {
        InputEvent {
            kind: u16::from_ne_bytes([raw[16], raw[17]]),
            code: u16::from_ne_bytes([raw[18], raw[19]]),
            value: i32::from_ne_bytes([raw[20], raw[21], raw[22], raw[23]]),
        }
    }

    /// A press (not a release or an autorepeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Event device names (`event0`, ...) whose input device is the power button.
pub fn find_power_buttons(sys_input: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_input) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("event"))
        .filter(|name| {
            std::fs::read_to_string(sys_input.join(name).join("device/name"))
                .map(|n| n.trim_end() == POWER_BUTTON_NAME)
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found
}

/// Wait up to `timeout` for power-button devices and open them all.
pub fn open_power_buttons(timeout: Duration) -> Vec<(PathBuf, File)> {
    let started = Instant::now();
    loop {
        let names = find_power_buttons(Path::new(SYS_INPUT));
        let mut opened = Vec::new();
        for name in &names {
            let path = Path::new("/dev/input").join(name);
            match File::open(&path) {
                Ok(file) => opened.push((path, file)),
                // The device node may lag its sysfs entry by a moment.
                Err(e) if started.elapsed() >= timeout => {
                    log!("cannot open {}: {e}", path.display())
                }
                Err(_) => {}
            }
        }
        if (!names.is_empty() && opened.len() == names.len()) || started.elapsed() >= timeout {
            return opened;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read events from `device` forever; call `on_press` for every power press.
pub fn watch(
    path: PathBuf,
    mut device: File,
    on_press: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            let mut buf = [0u8; EVENT_SIZE * 16];
            let mut filled = 0;
            loop {
                match device.read(&mut buf[filled..]) {
                    Ok(0) => {
                        log!(
                            "{} closed; no longer watching the power button",
                            path.display()
                        );
                        return;
                    }
                    Ok(n) => {
                        filled += n;
                        let whole = filled - filled % EVENT_SIZE;
                        for raw in buf[..whole].chunks_exact(EVENT_SIZE) {
                            let mut event = [0u8; EVENT_SIZE];
                            event.copy_from_slice(raw);
                            if InputEvent::decode(&event).is_power_press() {
                                on_press();
                            }
                        }
                        buf.copy_within(whole..filled, 0);
                        filled -= whole;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log!("cannot read {}: {e}", path.display());
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut event = [0xAAu8; EVENT_SIZE];
        event[16..18].copy_from_slice(&kind.to_ne_bytes());
        event[18..20].copy_from_slice(&code.to_ne_bytes());
        event[20..24].copy_from_slice(&value.to_ne_bytes());
        event
    }

    #[test]
    fn decodes_type_code_and_value_after_the_timestamp() {
        assert_eq!(
            InputEvent::decode(&raw(1, 116, 1)),
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        assert_eq!(InputEvent::decode(&raw(0, 0, -1)).value, -1);
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(InputEvent::decode(&raw(EV_KEY, KEY_POWER, 1)).is_power_press());
        assert!(
            !InputEvent::decode(&raw(EV_KEY, KEY_POWER, 0)).is_power_press(),
            "release"
        );
        assert!(
            !InputEvent::decode(&raw(EV_KEY, KEY_POWER, 2)).is_power_press(),
            "autorepeat"
        );
        assert!(
            !InputEvent::decode(&raw(0, 0, 0)).is_power_press(),
            "EV_SYN"
        );
        assert!(
            !InputEvent::decode(&raw(EV_KEY, 115, 1)).is_power_press(),
            "another key"
        );
    }

    #[test]
    fn power_buttons_are_found_by_device_name() {
        let dir = std::env::temp_dir().join(format!("vmkeep-guest-input-{}", std::process::id()));
        for (event, name) in [
            ("event0", "AT Translated Set 2 keyboard\n"),
            ("event1", "Power Button\n"),
            ("event2", "Power Button\n"),
        ] {
            std::fs::create_dir_all(dir.join(event).join("device")).unwrap();
            std::fs::write(dir.join(event).join("device/name"), name).unwrap();
        }
        std::fs::create_dir_all(dir.join("input3")).unwrap();
        assert_eq!(
            find_power_buttons(&dir),
            vec!["event1".to_string(), "event2".to_string()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
