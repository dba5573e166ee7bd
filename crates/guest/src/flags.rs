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
    /// The host says the data disk is new: format it (see
    /// [`kernel_flags::FORMAT_DATA_PREFIX`]).
    pub format_data: Option<FormatToken>,
    /// The host asks for `e2fsck` on the data disk before mounting it.
    pub repair_data: bool,
    /// The name the host gives the tiny guest (see
    /// [`kernel_flags::HOSTNAME_PREFIX`]).
    pub hostname: Option<Hostname>,
}

/// A valid hostname (see `vmkeep_protocol::valid_hostname`), kept inline so
/// that `Flags` stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hostname {
    bytes: [u8; vmkeep_protocol::MAX_HOSTNAME_BYTES],
    len: u8,
}

impl Hostname {
    pub fn parse(text: &str) -> Option<Hostname> {
        if !vmkeep_protocol::valid_hostname(text) {
            return None;
        }
        let mut bytes = [0u8; vmkeep_protocol::MAX_HOSTNAME_BYTES];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(Hostname {
            bytes,
            len: text.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only a valid (ASCII) hostname gets in.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Hostname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hostname({:?})", self.as_str())
    }
}

/// The token of one "this disk is new" decision of the host: 16 lowercase
/// hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatToken([u8; kernel_flags::FORMAT_TOKEN_LEN]);

impl FormatToken {
    pub fn parse(text: &str) -> Option<FormatToken> {
        let bytes: [u8; kernel_flags::FORMAT_TOKEN_LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(FormatToken(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits get in (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
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
                kernel_flags::REPAIR_DATA => flags.repair_data = true,
                word => {
                    if let Some(token) = word.strip_prefix(kernel_flags::FORMAT_DATA_PREFIX) {
                        // A malformed token is no permission to format.
                        flags.format_data = FormatToken::parse(token);
                    } else if let Some(name) = word.strip_prefix(kernel_flags::HOSTNAME_PREFIX) {
                        // A malformed name is ignored (logged at boot).
                        flags.hostname = Hostname::parse(name);
                    }
                }
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

    #[test]
    fn the_data_disk_flags_carry_a_well_formed_token_or_nothing() {
        let flags = Flags::parse(&format!(
            "console=ttyS0 {}0123456789abcdef {}",
            kernel_flags::FORMAT_DATA_PREFIX,
            kernel_flags::REPAIR_DATA
        ));
        assert_eq!(
            flags.format_data.map(|t| t.as_str().to_string()).as_deref(),
            Some("0123456789abcdef")
        );
        assert!(flags.repair_data);
        for bad in [
            "",
            "0123",
            "0123456789abcdeg",
            "0123456789ABCDEF",
            "0123456789abcdef0",
        ] {
            let flags = Flags::parse(&format!("{}{bad}", kernel_flags::FORMAT_DATA_PREFIX));
            assert_eq!(flags.format_data, None, "{bad:?}");
        }
        assert_eq!(Flags::parse("vmkeep.repair_data=0"), Flags::default());
    }

    #[test]
    fn the_hostname_flag_carries_a_valid_hostname_or_nothing() {
        let flags = Flags::parse("console=ttyS0 vmkeep.hostname=dev-1 quiet");
        assert_eq!(
            flags.hostname.map(|h| h.as_str().to_string()).as_deref(),
            Some("dev-1")
        );
        for bad in ["", "-x", "a_b", "a;b", "é", &"a".repeat(64)] {
            let flags = Flags::parse(&format!("{}{bad}", kernel_flags::HOSTNAME_PREFIX));
            assert_eq!(flags.hostname, None, "{bad:?}");
        }
        let flag = kernel_flags::hostname("ubuntu-24.04").unwrap();
        assert_eq!(
            Flags::parse(&flag)
                .hostname
                .map(|h| h.as_str().to_string())
                .as_deref(),
            Some("ubuntu-24-04")
        );
    }
}
