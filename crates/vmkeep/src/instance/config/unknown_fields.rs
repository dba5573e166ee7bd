//! Lima's parsing policy, in one place: a field vmkeep does not know is
//! noted and left out, never a refusal (Lima loads such a template with a
//! warning, "Non-strict YAML detected"), so a template written for a newer
//! Lima still works; `vmkeep create --strict` refuses it instead
//! ([`FieldPolicy::Refuse`]), with its line and the nearest known name.
//!
//! The schema keeps serde's `deny_unknown_fields`: it is what names the
//! field, its line and the names it could have meant. A refusal of an
//! unknown field is turned into a note by blanking that field (its key and
//! its value; every other line stays where it was, so later errors still
//! name their own line) and reading the text again, taking the blanked text
//! only if it reads as the same document without exactly that field.

use std::borrow::Cow;

use super::ParseError;

/// What an unknown field does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldPolicy {
    /// Noted and left out (Lima's policy; the default).
    #[default]
    Note,
    /// Refused, like any invalid field (`create --strict`).
    Refuse,
}

/// A field the text has and vmkeep does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Where it is, as Lima would write it: `user.passwordlessSudo`,
    /// `portForwards[0].static`, `tpm`.
    pub path: String,
    /// 1-based line of the field.
    pub line: Option<u32>,
    /// The known field it most likely meant (a misspelling).
    pub suggestion: Option<String>,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: not a field vmkeep knows; ignored", self.path)?;
        match &self.suggestion {
            Some(near) => write!(f, " (did you mean `{near}`?)"),
            None => Ok(()),
        }
    }
}

/// Most unknown fields noted in one text; beyond, the next one is refused
/// (each costs a new reading of the text).
pub const MAX_UNKNOWN: usize = 64;

/// Read `text` with `read` (which refuses unknown fields), noting and
/// leaving out each unknown field under [`FieldPolicy::Note`].
pub fn read_noting<T>(
    text: &str,
    policy: FieldPolicy,
    read: impl Fn(&str) -> Result<T, ParseError>,
) -> Result<(T, Vec<UnknownField>), ParseError> {
    let mut current = Cow::Borrowed(text);
    let mut unknown = Vec::new();
    loop {
        let error = match read(&current) {
            Ok(value) => return Ok((value, unknown)),
            Err(error) => error,
        };
        let (Some(field), Some(at)) = (error.unknown_field.as_deref(), error.at) else {
            return Err(error);
        };
        if policy == FieldPolicy::Refuse || unknown.len() >= MAX_UNKNOWN {
            return Err(error);
        }
        let enclosing = enclosing_path(&error.message);
        let Some(blanked) = without_entry(&current, at as usize, &enclosing, field) else {
            return Err(error);
        };
        unknown.push(UnknownField {
            path: match enclosing.as_str() {
                "" => field.to_string(),
                path => format!("{path}.{field}"),
            },
            line: error.line,
            suggestion: error.suggestion.clone(),
        });
        current = Cow::Owned(blanked);
    }
}

/// `user` of serde's "user: unknown field `passwordlessSudo`, ..." (the
/// parser puts the path of the enclosing mapping first; empty at the top).
fn enclosing_path(message: &str) -> String {
    message
        .split_once("unknown field `")
        .map(|(before, _)| before.trim_end().trim_end_matches(':').to_string())
        .unwrap_or_default()
}

/// `text` without the entry `key` of the mapping at `enclosing` (a path as
/// serde writes it: `portForwards[0]`), whose key starts at byte `at`: the
/// entry is blanked as a block entry, or as a flow one, and the result is
/// taken only if it reads as the same document without exactly that entry.
fn without_entry(text: &str, at: usize, enclosing: &str, key: &str) -> Option<String> {
    let mut expected: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let map = at_path(&mut expected, enclosing)?.as_mapping_mut()?;
    map.remove(key)?;
    let expected = empty_as_null(expected);
    [EntryForm::Block, EntryForm::Flow]
        .into_iter()
        .filter_map(|form| blank_entry(text, at, form))
        .find(|candidate| {
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(candidate)
                .is_ok_and(|value| empty_as_null(value) == expected)
        })
}

/// The value at a serde path (`a.b[2].c`; empty: the document).
fn at_path<'v>(
    mut value: &'v mut serde_yaml_ng::Value,
    path: &str,
) -> Option<&'v mut serde_yaml_ng::Value> {
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indices) = segment.split_once('[').unwrap_or((segment, ""));
        if !name.is_empty() {
            value = value.as_mapping_mut()?.get_mut(name)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            value = value.as_sequence_mut()?.get_mut(index)?;
        }
    }
    Some(value)
}

/// An empty mapping and nothing mean the same to the config ("not set"),
/// and blanking a mapping's only entry leaves nothing.
fn empty_as_null(value: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    match value {
        Value::Mapping(map) if map.is_empty() => Value::Null,
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| (k, empty_as_null(v)))
                .collect(),
        ),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(empty_as_null).collect()),
        other => other,
    }
}

/// How a mapping entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryForm {
    /// `key: value` on its own line, its value below it, indented.
    Block,
    /// `{a: 1, key: value}`.
    Flow,
}

/// `text` with the mapping entry whose key starts at byte `at`, written in
/// `form`, blanked (newlines kept, so every other line stays where it is).
/// `None` when `at` is not inside `text`.
fn blank_entry(text: &str, at: usize, form: EntryForm) -> Option<String> {
    if at >= text.len() || !text.is_char_boundary(at) {
        return None;
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut out = String::with_capacity(text.len());
    match form {
        EntryForm::Flow => {
            let end = flow_entry_end(text, at);
            out.push_str(&text[..at]);
            out.extend(
                text[at..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' }),
            );
            out.push_str(&text[end..]);
        }
        EntryForm::Block => {
            // Whole lines go, emptied rather than filled with spaces: a
            // line of spaces after a block scalar (`script: |`) would be
            // read as part of it.
            let end = block_entry_end(text, at, at - line_start);
            out.push_str(text[..at].trim_end_matches(' '));
            out.extend(text[at..end].chars().filter(|c| *c == '\n'));
            out.push_str(&text[end..]);
        }
    }
    Some(out)
}

/// The end of an entry of a flow mapping (`{a: 1, key: [x, y], b: 2}`):
/// through its comma, or up to the closing bracket.
fn flow_entry_end(text: &str, at: usize) -> usize {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = text[at..].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => {
                // '' is a quote inside a single-quoted scalar.
                if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') if depth == 0 => return at + i,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => return at + i + 1,
            _ => {}
        }
    }
    text.len()
}

/// The end of an entry of a block mapping whose key is at `column`: the
/// rest of its line, and every following line that belongs to its value
/// (blank, a comment, indented deeper, or a `- ` entry of a sequence at the
/// key's own indentation).
fn block_entry_end(text: &str, at: usize, column: usize) -> usize {
    let mut end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    while end < text.len() {
        let next_start = end + 1;
        let next_end = text[next_start..]
            .find('\n')
            .map_or(text.len(), |i| next_start + i);
        let line = &text[next_start..next_end];
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = line.trim_start();
        let belongs = rest.is_empty()
            || rest.starts_with('#')
            || indent > column
            || (indent == column && (rest == "-" || rest.starts_with("- ")));
        if !belongs {
            break;
        }
        end = next_end;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without(text: &str, enclosing: &str, key: &str) -> Option<String> {
        let at = text.find(&format!("{key}:")).unwrap();
        let out = without_entry(text, at, enclosing, key.trim_matches('\''))?;
        assert_eq!(
            out.lines().count(),
            text.lines().count(),
            "lines stay: {out:?}"
        );
        Some(out)
    }

    fn value(text: &str) -> serde_yaml_ng::Value {
        empty_as_null(serde_yaml_ng::from_str(text).unwrap())
    }

    #[test]
    fn a_block_entry_goes_with_its_value_and_its_siblings_stay() {
        for (text, enclosing, key, left) in [
            (
                "user:\n  name: x\n  passwordlessSudo: true\n  uid: 5\ncpus: 1\n",
                "user",
                "passwordlessSudo",
                "user:\n  name: x\n  uid: 5\ncpus: 1\n",
            ),
            // A nested value, blank lines and comments, a sequence at the
            // key's own indentation.
            (
                "tpm:\n  enabled: true\n\n  # c\n  x: [1,\n    2]\nmounts: []\n",
                "",
                "tpm",
                "mounts: []\n",
            ),
            (
                "future:\n- a\n-\n  - b\nmounts: []\n",
                "",
                "future",
                "mounts: []\n",
            ),
            // A key that opens a sequence entry: the entry's other keys stay.
            (
                "pf:\n- static: true\n  guestPort: 80\n- hostPort: 1\n",
                "pf[0]",
                "static",
                "pf:\n- guestPort: 80\n- hostPort: 1\n",
            ),
            // The only entry: the mapping is left empty ("not set").
            (
                "user:\n  passwordlessSudo: true\ncpus: 1\n",
                "user",
                "passwordlessSudo",
                "user:\ncpus: 1\n",
            ),
            (
                "script: |\n  a: {\nfuture: 1\n",
                "",
                "future",
                "script: |\n  a: {\n",
            ),
        ] {
            let out = without(text, enclosing, key).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(value(&out), value(left), "{text:?} gave {out:?}");
        }
    }

    #[test]
    fn a_flow_entry_goes_through_its_comma_and_quotes_and_brackets_are_skipped() {
        for (text, enclosing, key, left) in [
            (
                "a: {x: 1, static: true, y: 2}\n",
                "a",
                "static",
                "a: {x: 1, y: 2}\n",
            ),
            ("a: {x: 1, static: true}\n", "a", "static", "a: {x: 1}\n"),
            (
                "a: {static: [1, {b: \"},\"}], y: 2}\n",
                "a",
                "static",
                "a: {y: 2}\n",
            ),
            (
                "a: [{x: 1, 'k': 'it''s, }'}]\n",
                "a[0]",
                "'k'",
                "a: [{x: 1}]\n",
            ),
            (
                "a: {x: 1,\n  static: true, z: 3,\n  y: 2}\n",
                "a",
                "static",
                "a: {x: 1, z: 3, y: 2}\n",
            ),
        ] {
            let out = without(text, enclosing, key).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(value(&out), value(left), "{text:?} gave {out:?}");
        }
    }

    #[test]
    fn what_cannot_be_blanked_exactly_is_not_blanked() {
        // The key is not in that mapping.
        assert_eq!(without("a:\n  b: 1\n", "", "b"), None);
        assert_eq!(blank_entry("a: 1\n", 99, EntryForm::Block), None);
    }

    #[test]
    fn paths_are_written_as_serde_does() {
        assert_eq!(
            enclosing_path("user: unknown field `passwordlessSudo`, expected one of"),
            "user"
        );
        assert_eq!(
            enclosing_path("portForwards[0]: unknown field `static`, expected"),
            "portForwards[0]"
        );
        assert_eq!(enclosing_path("unknown field `tpm`, expected"), "");
        let mut doc = value("a:\n- b: [x, {c: 1}]\n");
        assert_eq!(
            at_path(&mut doc, "a[0].b[1]").cloned(),
            Some(value("c: 1\n"))
        );
        assert_eq!(at_path(&mut doc, "a[3]"), None);
    }
}
