//! Setting keys of a YAML document in its text, keeping everything else
//! (comments, order, blank lines) as it was written: what `vmkeep edit
//! --cpus 2` does to a config a person may have commented.
//!
//! The truth is the value tree: each assignment is applied to the parsed
//! document, and the text edit is kept only when it parses back to exactly
//! that tree. Where the text cannot be edited in place (flow-style
//! mappings, anchors, quoted keys, several documents), the whole document
//! is written anew from the tree, its leading comment block kept
//! ([`Edited::comments_kept`] says which it was).

use serde_yaml_ng::{Mapping, Value};

/// One assignment: the keys from the top of the document, and the value.
pub type Assignment = (Vec<String>, Value);

/// The edited text.
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    pub text: String,
    /// The text was edited in place (every comment kept); otherwise it was
    /// written anew from the values, with only its leading comments.
    pub comments_kept: bool,
}

/// Why a document could not be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("the document is not YAML: {0}")]
    NotYaml(String),
    #[error("the document is not a mapping of fields")]
    NotAMapping,
    #[error("`{path}` is not a mapping, so `{key}` cannot be set in it")]
    NotAMappingAt { path: String, key: String },
}

/// The document as a mapping (an empty one, or only comments, is empty).
pub fn parse_mapping(text: &str) -> Result<Mapping, EditError> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Mapping::new());
    }
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) => Ok(map),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(EditError::NotAMapping),
        Err(e) => Err(EditError::NotYaml(e.to_string())),
    }
}

/// Set `path` to `value` in a mapping tree (missing mappings are made).
pub fn set_in_tree(root: &mut Mapping, path: &[String], value: Value) -> Result<(), EditError> {
    let (last, parents) = path.split_last().expect("an assignment names a key");
    let mut node = root;
    for (depth, key) in parents.iter().enumerate() {
        let entry = node
            .entry(Value::from(key.as_str()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if entry.is_null() {
            *entry = Value::Mapping(Mapping::new());
        }
        node = match entry {
            Value::Mapping(map) => map,
            _ => {
                return Err(EditError::NotAMappingAt {
                    path: path[..=depth].join("."),
                    key: path[depth + 1].clone(),
                });
            }
        };
    }
    node.insert(Value::from(last.as_str()), value);
    Ok(())
}

/// Apply `assignments` in order to the document `text`.
pub fn apply(text: &str, assignments: &[Assignment]) -> Result<Edited, EditError> {
    let mut expected = parse_mapping(text)?;
    for (path, value) in assignments {
        set_in_tree(&mut expected, path, value.clone())?;
    }
    let mut edited = Some(text.to_string());
    for (path, value) in assignments {
        edited = edited.and_then(|t| set_in_text(&t, path, value));
    }
    if let Some(edited) = edited
        && parse_mapping(&edited).ok().as_ref() == Some(&expected)
    {
        return Ok(Edited {
            text: edited,
            comments_kept: true,
        });
    }
    let body = if expected.is_empty() {
        String::new()
    } else {
        serde_yaml_ng::to_string(&Value::Mapping(expected)).expect("YAML values serialize")
    };
    Ok(Edited {
        text: format!("{}{body}", leading_comments(text)),
        comments_kept: false,
    })
}

/// The comment lines (and blank lines among them) a document starts with.
fn leading_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        } else {
            break;
        }
    }
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A line that holds no content (blank or a comment).
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The key of a block-mapping line at `indent` (`key: ...`), if it is one.
fn key_of(line: &str, indent: usize) -> Option<&str> {
    if indent_of(line) != indent || is_filler(line) {
        return None;
    }
    let rest = &line[indent..];
    let colon = rest.find(':')?;
    let key = &rest[..colon];
    let after = &rest[colon + 1..];
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (plain && (after.is_empty() || after.starts_with(' '))).then_some(key)
}

/// Lines `start..end` are the block of the key at line `start`: the key's
/// line and every following line indented more (fillers in between), not
/// counting fillers at its end.
fn block_end(lines: &[&str], start: usize, indent: usize) -> usize {
    let mut end = start + 1;
    let mut last_content = start + 1;
    while end < lines.len() {
        let line = lines[end];
        if !is_filler(line) {
            // A sequence may sit at its key's own indent (`key:\n- a`).
            let deeper = indent_of(line) > indent
                || (indent_of(line) == indent && line[indent..].starts_with("- "))
                || (indent_of(line) == indent && line[indent..].trim_end() == "-");
            if !deeper {
                break;
            }
            last_content = end + 1;
        }
        end += 1;
    }
    last_content
}

/// The value's lines under a key at `indent` (`key: scalar`, or `key:`
/// and a block), rendered in block style.
fn render(key: &str, value: &Value, indent: usize) -> Vec<String> {
    let mut map = Mapping::new();
    map.insert(Value::from(key), value.clone());
    let text = serde_yaml_ng::to_string(&Value::Mapping(map)).expect("YAML values serialize");
    let pad = " ".repeat(indent);
    text.lines().map(|l| format!("{pad}{l}")).collect()
}

/// Set `path` in the text; `None` when the text cannot be edited in place.
fn set_in_text(text: &str, path: &[String], value: &Value) -> Option<String> {
    if text
        .lines()
        .any(|l| l.trim_end() == "---" || l.starts_with('\t'))
    {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    // The region the current mapping spans, and its indent.
    let (mut from, mut to, mut indent) = (0usize, lines.len(), 0usize);
    for (depth, key) in path.iter().enumerate() {
        let found = (from..to).find(|&i| key_of(lines[i], indent) == Some(key.as_str()));
        let last = depth == path.len() - 1;
        match found {
            Some(at) => {
                let end = block_end(&lines, at, indent);
                if last {
                    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
                    out.extend(render(key, value, indent));
                    out.extend(lines[end..].iter().map(|l| l.to_string()));
                    return Some(join(out));
                }
                // Go into the block mapping under this key.
                let inline = lines[at][indent + key.len() + 1..].trim();
                if !(inline.is_empty() || inline.starts_with('#')) {
                    return None;
                }
                let child = (at + 1..end).find(|&i| !is_filler(lines[i]))?;
                let child_indent = indent_of(lines[child]);
                if child_indent <= indent || lines[child][child_indent..].starts_with('-') {
                    return None;
                }
                (from, to, indent) = (at + 1, end, child_indent);
            }
            None => {
                // Insert the rest of the path at the end of this mapping.
                let mut nested = value.clone();
                for k in path[depth + 1..].iter().rev() {
                    let mut map = Mapping::new();
                    map.insert(Value::from(k.as_str()), nested);
                    nested = Value::Mapping(map);
                }
                let at = (from..to)
                    .rev()
                    .find(|&i| !is_filler(lines[i]))
                    .map(|i| i + 1)
                    .unwrap_or(to);
                let at = if depth == 0 { lines.len() } else { at };
                let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
                out.extend(render(key, &nested, indent));
                out.extend(lines[at..].iter().map(|l| l.to_string()));
                return Some(join(out));
            }
        }
    }
    None
}

fn join(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    fn yaml(v: &str) -> Value {
        serde_yaml_ng::from_str(v).unwrap()
    }

    fn set(text: &str, p: &str, v: &str) -> Edited {
        apply(text, &[(path(p), yaml(v))]).unwrap()
    }

    #[test]
    fn a_scalar_is_replaced_in_place_keeping_every_comment() {
        let text = "# header\nvmType: qemu\n# Number of CPUs.\ncpus: 1\n# memory\nmemory: 256MiB # small\n";
        let edited = set(text, "cpus", "2");
        assert!(edited.comments_kept);
        assert_eq!(
            edited.text,
            "# header\nvmType: qemu\n# Number of CPUs.\ncpus: 2\n# memory\nmemory: 256MiB # small\n"
        );
        let edited = set(text, "memory", "1GiB");
        assert_eq!(
            edited.text,
            "# header\nvmType: qemu\n# Number of CPUs.\ncpus: 1\n# memory\nmemory: 1GiB\n"
        );
    }

    #[test]
    fn a_missing_key_is_added_and_nested_keys_are_found_or_made() {
        let text = "cpus: 1\nssh:\n  # the port\n  localPort: 2222\n  forwardAgent: true\n# trailing comment\n";
        let edited = set(text, "ssh.localPort", "0");
        assert!(edited.comments_kept);
        assert_eq!(
            edited.text,
            "cpus: 1\nssh:\n  # the port\n  localPort: 0\n  forwardAgent: true\n# trailing comment\n"
        );
        let edited = set(text, "ssh.loadDotSSHPubKeys", "true");
        assert_eq!(
            edited.text,
            "cpus: 1\nssh:\n  # the port\n  localPort: 2222\n  forwardAgent: true\n  loadDotSSHPubKeys: true\n# trailing comment\n"
        );
        let edited = set(text, "param.KEY", "\"v\"");
        assert!(edited.comments_kept);
        assert!(
            edited
                .text
                .ends_with("# trailing comment\nparam:\n  KEY: v\n"),
            "{}",
            edited.text
        );
        let edited = set("", "disk", "\"4GiB\"");
        assert_eq!(edited.text, "disk: 4GiB\n");
    }

    #[test]
    fn a_list_value_replaces_the_whole_block() {
        let text = "mounts:\n- location: ~\n  writable: false\n- location: /tmp/lima\ncpus: 2\n";
        let edited = set(
            text,
            "mounts",
            "[{location: /src, writable: true}, {location: '~'}]",
        );
        assert!(edited.comments_kept);
        assert_eq!(
            parse_mapping(&edited.text).unwrap(),
            parse_mapping(
                "mounts:\n- location: /src\n  writable: true\n- location: '~'\ncpus: 2\n"
            )
            .unwrap()
        );
        assert!(edited.text.ends_with("cpus: 2\n"), "{}", edited.text);
    }

    #[test]
    fn what_cannot_be_edited_in_place_is_written_anew_with_its_header() {
        let text = "# header line\n\nssh: {localPort: 2222}\ncpus: 1\n";
        let edited = set(text, "ssh.localPort", "0");
        assert!(!edited.comments_kept);
        assert!(
            edited.text.starts_with("# header line\n\n"),
            "{}",
            edited.text
        );
        assert_eq!(
            parse_mapping(&edited.text).unwrap(),
            parse_mapping("ssh: {localPort: 0}\ncpus: 1\n").unwrap()
        );
    }

    #[test]
    fn several_assignments_apply_in_order() {
        let edited = apply(
            "cpus: 1\n",
            &[
                (path("cpus"), yaml("2")),
                (path("memory"), yaml("1GiB")),
                (path("cpus"), yaml("4")),
            ],
        )
        .unwrap();
        assert_eq!(edited.text, "cpus: 4\nmemory: 1GiB\n");
    }

    #[test]
    fn setting_inside_a_scalar_is_refused() {
        let err = apply("ssh: 3\n", &[(path("ssh.localPort"), yaml("0"))]).unwrap_err();
        assert_eq!(
            err,
            EditError::NotAMappingAt {
                path: "ssh".into(),
                key: "localPort".into()
            }
        );
        assert_eq!(
            apply("- a\n", &[(path("x"), yaml("1"))]).unwrap_err(),
            EditError::NotAMapping
        );
    }
}
