//! Why a config cannot be used: it cannot be read ([`ConfigError`]), or its
//! text is not valid ([`ParseError`], naming the field, its line and, for a
//! misspelt field, the nearest known one).

use std::path::PathBuf;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message includes the field and its line and column.
    #[error(
        "invalid config {path}: {source}\n  fix the field named above; `vmkeep create --help` lists the fields"
    )]
    Invalid { path: PathBuf, source: ParseError },
}

/// Why YAML text is not a valid config: the message names the field, its
/// line and column and, for a misspelt field, the nearest known one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    /// 1-based line of the offending value, when known.
    pub line: Option<u32>,
    /// Byte offset of the offending value (for an unknown field: its key)
    /// in the text, when known (a template is at most a few MiB).
    pub at: Option<u32>,
    /// The misspelt field of an "unknown field" error.
    pub unknown_field: Option<String>,
    /// The known field it most likely meant.
    pub suggestion: Option<String>,
}

impl ParseError {
    /// A whole-config problem (no single line).
    pub fn whole(message: impl Into<String>) -> ParseError {
        ParseError {
            message: message.into(),
            line: None,
            at: None,
            unknown_field: None,
            suggestion: None,
        }
    }

    pub(super) fn from_yaml(error: &serde_yaml_ng::Error, text: &str) -> ParseError {
        let mut message = without_repeated_field(&error.to_string());
        let mut line = error.location().and_then(|l| u32::try_from(l.line()).ok());
        let mut at = error.location().and_then(|l| u32::try_from(l.index()).ok());
        let mut unknown_field = None;
        let mut suggestion = None;
        if let Some((field, expected)) = unknown_field_of(&message) {
            if message.starts_with("unknown field") {
                // A top-level key: serde_yaml_ng gives the position of the
                // document, not of the key, and prints none; find the key.
                let mut offset = 0;
                for (n, l) in text.split_inclusive('\n').enumerate() {
                    if l.strip_prefix(field.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with(':'))
                    {
                        line = u32::try_from(n + 1).ok();
                        at = u32::try_from(offset).ok();
                        break;
                    }
                    offset += l.len();
                }
            }
            suggestion = crate::text::suggest::closest(&field, expected.iter().map(String::as_str))
                .map(str::to_string);
            if let Some(near) = &suggestion {
                message.push_str(&format!("; did you mean `{near}`?"));
            }
            unknown_field = Some(field);
        }
        if let Some(n) = line
            && !message.contains(" line ")
        {
            message.push_str(&format!(" at line {n}"));
        }
        ParseError {
            message,
            line,
            at,
            unknown_field,
            suggestion,
        }
    }
}

/// (field, expected fields) of serde's "unknown field `x`, expected one of
/// `a`, `b`" (or "expected `a` or `b`").
fn unknown_field_of(message: &str) -> Option<(String, Vec<String>)> {
    let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
    let (field, rest) = rest.split_once('`')?;
    let expected_part = rest.split(" at line ").next().unwrap_or(rest);
    let expected: Vec<String> = expected_part
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

/// The YAML parser prefixes an error with the field's path; the value
/// checks below name their field themselves. Say it once.
fn without_repeated_field(message: &str) -> String {
    if let Some((field, rest)) = message.split_once(": ")
        && rest.starts_with(&format!("{field}: "))
    {
        return rest.to_string();
    }
    message.to_string()
}
