//! Instance names: validated once, in `FromStr`, before anything is written.

use std::fmt;
use std::str::FromStr;

/// A valid instance name: 1 to [`InstanceName::MAX_LEN`] ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit. Such a name can
/// never be `.`, `..`, contain `/`, look like a command-line flag or like a
/// hidden file (vmkeep's own staging directories start with `.`). Dots are
/// allowed as Lima allows them: `ubuntu-24.04.yaml` makes `ubuntu-24.04`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(String);

/// Why a string is not a valid instance name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the instance name is empty; use letters, digits, '-' and '_', e.g. \"dev\"")]
    Empty,
    #[error("the instance name {name:?} is {len} characters long; use at most {max}")]
    TooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("the instance name {name:?} must start with a letter or a digit")]
    BadStart { name: String },
    #[error(
        "the instance name {name:?} contains {found:?}; use only ASCII letters, digits, '-', '_' and '.'"
    )]
    BadCharacter { name: String, found: char },
}

impl InstanceName {
    pub const MAX_LEN: usize = 48;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The instance `vmkeep start` uses when none is named.
    pub fn default_instance() -> Self {
        InstanceName("default".to_string())
    }
}

impl FromStr for InstanceName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, NameError> {
        let owned = || name.to_string();
        let first = name.chars().next().ok_or(NameError::Empty)?;
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadCharacter {
                name: owned(),
                found,
            });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart { name: owned() });
        }
        if name.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                name: owned(),
                len: name.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(InstanceName(owned()))
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for name in [
            "default",
            "dev-1",
            "a",
            "build_box",
            "9lives",
            "ubuntu-24.04",
            &"x".repeat(InstanceName::MAX_LEN),
        ] {
            assert_eq!(name.parse::<InstanceName>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        type Expect = fn(&NameError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, NameError::Empty)),
            (".", |e| matches!(e, NameError::BadStart { .. })),
            ("..", |e| matches!(e, NameError::BadStart { .. })),
            (".ssh", |e| matches!(e, NameError::BadStart { .. })),
            ("a/b", |e| {
                matches!(e, NameError::BadCharacter { found: '/', .. })
            }),
            ("../etc", |e| matches!(e, NameError::BadCharacter { .. })),
            ("-rf", |e| matches!(e, NameError::BadStart { .. })),
            ("_x", |e| matches!(e, NameError::BadStart { .. })),
            ("with space", |e| {
                matches!(e, NameError::BadCharacter { found: ' ', .. })
            }),
            ("ünï", |e| matches!(e, NameError::BadCharacter { .. })),
            ("a\0b", |e| {
                matches!(e, NameError::BadCharacter { found: '\0', .. })
            }),
        ];
        for (name, expected) in cases {
            let err = name.parse::<InstanceName>().unwrap_err();
            assert!(expected(&err), "{name:?} gave {err:?}");
        }
        let long = "x".repeat(InstanceName::MAX_LEN + 1);
        assert!(matches!(
            long.parse::<InstanceName>(),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn errors_say_what_to_use_instead() {
        let text = "a/b".parse::<InstanceName>().unwrap_err().to_string();
        assert!(
            text.contains("'/'") && text.contains("letters, digits"),
            "{text}"
        );
    }
}
