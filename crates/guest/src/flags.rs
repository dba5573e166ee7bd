//! Kernel command-line flags that change the agent's behaviour (for tests of
//! the host's stop ladder against a real guest).

use vmkeep_protocol::kernel_flags;

/// The flags found on the kernel command line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// Log power-button presses and otherwise ignore them.
    pub ignore_power_button: bool,
    /// Accept `Poweroff` requests but do not act on them.
    pub ignore_poweroff_request: bool,
    /// Power off right after the mounts, before announcing ready.
    pub poweroff_at_boot: bool,
}

impl Flags {
    /// Parse `/proc/cmdline`: flags are whole whitespace-separated words.
    pub fn parse(cmdline: &str) -> Flags {
        let mut flags = Flags::default();
        for word in cmdline.split_ascii_whitespace() {
            match word {
                kernel_flags::IGNORE_POWER_BUTTON => flags.ignore_power_button = true,
                kernel_flags::IGNORE_POWEROFF_REQUEST => flags.ignore_poweroff_request = true,
                kernel_flags::POWEROFF_AT_BOOT => flags.poweroff_at_boot = true,
                _ => {}
            }
        }
        flags
    }

    /// Read the running kernel's command line; no flags if it is unreadable.
    pub fn from_proc() -> Flags {
        match std::fs::read_to_string("/proc/cmdline") {
            Ok(text) => Flags::parse(&text),
            Err(e) => {
                crate::log::log!("cannot read /proc/cmdline ({e}); assuming no vmkeep flags");
                Flags::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_on_a_plain_command_line() {
        assert_eq!(
            Flags::parse("console=ttyS0 panic=-1 quiet\n"),
            Flags::default()
        );
    }

    #[test]
    fn each_flag_is_recognised_anywhere_on_the_line() {
        let line = format!(
            "console=ttyS0 {} quiet {}\n{}",
            kernel_flags::POWEROFF_AT_BOOT,
            kernel_flags::IGNORE_POWER_BUTTON,
            kernel_flags::IGNORE_POWEROFF_REQUEST
        );
        let flags = Flags::parse(&line);
        assert!(
            flags.ignore_power_button && flags.ignore_poweroff_request && flags.poweroff_at_boot
        );
    }

    #[test]
    fn flags_must_match_whole_words() {
        let line = format!(
            "x{} {}0 vmkeep.ignore_power_button=0",
            kernel_flags::IGNORE_POWER_BUTTON,
            kernel_flags::POWEROFF_AT_BOOT
        );
        assert_eq!(Flags::parse(&line), Flags::default());
    }
}
