//! What a cloud image runs or writes at its first boot (Lima's `provision:`)
//! and what `start` waits for (Lima's `probes:`), as read from the config.
//! How each becomes part of the cloud-init seed is `cloudinit.rs`'s business.

use serde::Deserialize;
use serde::de::Deserializer;

use super::yaml_de::{ScalarString, checked_map, nullable, parse_checked};

/// Who runs a provision step, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionMode {
    /// A script run as root, once, at the first boot.
    #[default]
    System,
    /// A script run as the instance's user, in a login shell, once.
    User,
    /// A script run by /bin/sh early at every boot (cloud-init's bootcmd).
    Boot,
    /// A script run as root before every `system`/`user` step (vmkeep has no
    /// dependency resolution of its own for it to precede).
    Dependency,
    /// A file written into the guest at every boot (or once, with
    /// `overwrite: false`), before the scripts.
    Data,
    /// Lima's `yq` edit of a JSON or YAML file; vmkeep applies the form
    /// `.a.b = VALUE` (several joined by `|`).
    Yq,
}

impl ProvisionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionMode::System => "system",
            ProvisionMode::User => "user",
            ProvisionMode::Boot => "boot",
            ProvisionMode::Dependency => "dependency",
            ProvisionMode::Data => "data",
            ProvisionMode::Yq => "yq",
        }
    }
}

impl<'de> Deserialize<'de> for ProvisionMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| {
            match text {
            "system" => Ok(ProvisionMode::System),
            "user" => Ok(ProvisionMode::User),
            "boot" => Ok(ProvisionMode::Boot),
            "dependency" => Ok(ProvisionMode::Dependency),
            "data" => Ok(ProvisionMode::Data),
            "yq" => Ok(ProvisionMode::Yq),
            "ansible" => Err(
                "mode: ansible is not supported by vmkeep (Lima deprecates it too); run ansible-playbook from a mode: system script"
                    .into(),
            ),
            other => Err(format!(
                "mode: {other:?} is not a provision mode; use system, user, boot, dependency, data or yq"
            )),
        }
        })
    }
}

/// One `provision:` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Provision {
    pub mode: ProvisionMode,
    /// The script (system, user, boot, dependency); empty for data and yq.
    pub script: String,
    /// Lima's `file:` (a path or URL), read into `script` or `content` when
    /// the instance is created; never set in a created instance's config.
    pub file: Option<String>,
    /// The file of a `data` step.
    pub data: Option<DataFile>,
    /// The edit of a `yq` step.
    pub yq: Option<YqEdit>,
}

/// A file a `data` step writes.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// Absolute path in the guest (may use template variables).
    pub path: String,
    pub content: String,
    /// `user:group` (default root:root; may use `{{.User}}`).
    pub owner: String,
    /// Octal mode (default 644).
    pub permissions: u32,
    /// Rewritten at every boot (default) or written only when missing.
    pub overwrite: bool,
}

/// A `yq` step: assignments in a JSON or YAML file.
#[derive(Debug, Clone, PartialEq)]
pub struct YqEdit {
    pub path: String,
    pub expression: String,
    /// `json` or `yaml`; absent: from the file's extension.
    pub format: Option<String>,
    /// Owner of the file (Lima's `user:`/`owner:`), may use `{{.User}}`.
    pub owner: Option<String>,
    pub permissions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProvision {
    #[serde(default, deserialize_with = "nullable")]
    mode: Option<ProvisionMode>,
    #[serde(default, deserialize_with = "nullable")]
    script: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    file: Option<FileLocator>,
    #[serde(default, deserialize_with = "nullable")]
    skip_default_dependency_resolution: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    path: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    content: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    owner: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    permissions: Option<ScalarString>,
    #[serde(default, deserialize_with = "nullable")]
    overwrite: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    expression: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    format: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    user: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    playbook: Option<String>,
}

/// Lima's `file:`: a string, or `{url, digest}` (the digest is unused, as in Lima).
#[derive(Debug, Clone, PartialEq)]
pub struct FileLocator(pub String);

impl<'de> Deserialize<'de> for FileLocator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Map {
                url: String,
                #[allow(dead_code)]
                #[serde(default)]
                digest: Option<String>,
            },
        }
        Ok(match Either::deserialize(d)? {
            Either::Text(url) | Either::Map { url, .. } => FileLocator(url),
        })
    }
}

fn octal(text: &str, field: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            format!("{field}: {text:?} is not an octal file mode; write it like 644 or \"0600\"")
        })
}

impl<'de> Deserialize<'de> for Provision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, "a provision step", |raw: RawProvision| {
            // Accepted, and without effect: vmkeep has no dependency resolution of its own.
            let _ = raw.skip_default_dependency_resolution;
            let mode = raw.mode.unwrap_or_default();
            let file = raw.file.map(|f| f.0);
            let name = mode.as_str();
            let unexpected = |field: &str, present: bool| -> Result<(), String> {
                if present {
                    Err(format!("{field} does not belong to a mode: {name} step"))
                } else {
                    Ok(())
                }
            };
            if raw.playbook.is_some() {
                return Err("playbook: mode: ansible is not supported by vmkeep; run ansible-playbook from a mode: system script".into());
            }
            match mode {
                ProvisionMode::System
                | ProvisionMode::User
                | ProvisionMode::Boot
                | ProvisionMode::Dependency => {
                    unexpected("path", raw.path.is_some())?;
                    unexpected("content", raw.content.is_some())?;
                    unexpected("expression", raw.expression.is_some())?;
                    let script = raw.script.unwrap_or_default();
                    match (script.is_empty(), file.is_some()) {
                        (true, false) => {
                            return Err(format!("a mode: {name} step needs a script (or a file)"));
                        }
                        (false, true) => return Err("give either script or file, not both".into()),
                        _ => {}
                    }
                    Ok(Provision {
                        mode,
                        script,
                        file,
                        data: None,
                        yq: None,
                    })
                }
                ProvisionMode::Data => {
                    unexpected("script", raw.script.is_some())?;
                    unexpected("expression", raw.expression.is_some())?;
                    let path = raw.path.ok_or("a mode: data step needs a path")?;
                    let content = raw.content.unwrap_or_default();
                    if !content.is_empty() && file.is_some() {
                        return Err("give either content or file, not both".into());
                    }
                    let permissions = match raw.permissions {
                        Some(p) => octal(&p.0, "permissions")?,
                        None => 0o644,
                    };
                    Ok(Provision {
                        mode,
                        script: String::new(),
                        file,
                        data: Some(DataFile {
                            path,
                            content,
                            owner: raw.owner.or(raw.user).unwrap_or_else(|| "root:root".into()),
                            permissions,
                            overwrite: raw.overwrite.unwrap_or(true),
                        }),
                        yq: None,
                    })
                }
                ProvisionMode::Yq => {
                    unexpected("script", raw.script.is_some())?;
                    unexpected("content", raw.content.is_some())?;
                    let path = raw.path.ok_or("a mode: yq step needs a path")?;
                    let expression = raw
                        .expression
                        .ok_or("a mode: yq step needs an expression")?;
                    let permissions = raw
                        .permissions
                        .map(|p| octal(&p.0, "permissions"))
                        .transpose()?;
                    Ok(Provision {
                        mode,
                        script: String::new(),
                        file,
                        data: None,
                        yq: Some(YqEdit {
                            path,
                            expression,
                            format: raw.format,
                            owner: raw.user.or(raw.owner),
                            permissions,
                        }),
                    })
                }
            }
        })
    }
}

/// One `probes:` entry: a readiness check run as the instance's user until
/// it exits 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub description: Option<String>,
    pub script: String,
    /// Read into `script` when the instance is created.
    pub file: Option<String>,
    /// Shown when the probe has not passed by the boot deadline.
    pub hint: Option<String>,
}

impl Probe {
    /// How messages name it.
    pub fn label(&self, index: usize) -> String {
        match &self.description {
            Some(d) => format!("probe {index} ({})", d.trim()),
            None => format!("probe {index}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbe {
    #[serde(default, deserialize_with = "nullable")]
    mode: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    script: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    file: Option<FileLocator>,
    #[serde(default, deserialize_with = "nullable")]
    hint: Option<String>,
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, "a probe", |raw: RawProbe| {
            if let Some(mode) = raw.mode.as_deref()
                && mode != "readiness"
            {
                return Err(format!(
                    "mode: {mode:?} is not a probe mode; only readiness probes exist (as in Lima)"
                ));
            }
            let script = raw.script.unwrap_or_default();
            let file = raw.file.map(|f| f.0);
            match (script.is_empty(), file.is_some()) {
                (true, false) => return Err("a probe needs a script (or a file)".into()),
                (false, true) => return Err("give either script or file, not both".into()),
                _ => {}
            }
            if !script.is_empty() && !script.starts_with("#!") {
                return Err(
                    "a probe script must start with a #! line (as Lima requires), e.g. #!/bin/sh"
                        .into(),
                );
            }
            Ok(Probe {
                description: raw.description,
                script,
                file,
                hint: raw.hint,
            })
        })
    }
}

/// The assignments of a `yq` step: (path of keys, YAML value text).
pub fn yq_assignments(expression: &str) -> Result<Vec<(Vec<String>, String)>, String> {
    assignments(expression).ok_or_else(|| {
        format!(
            "expression {expression:?}: vmkeep applies yq assignments of the form `.a.b = VALUE` (several joined by `|`); \
             write other edits as a mode: system script"
        )
    })
}

/// The yq assignments vmkeep understands, `.a.b = VALUE` joined by `|`:
/// (path of keys, YAML value text); `None` for any other expression.
pub fn assignments(expression: &str) -> Option<Vec<(Vec<String>, String)>> {
    let mut out = Vec::new();
    for part in split_pipes(expression)? {
        let (path, value) = part.split_once('=')?;
        if path.ends_with(['|', '+', '-', '*', '/']) || value.starts_with('=') {
            return None;
        }
        let path = path.trim();
        let value = value.trim();
        let keys = path.strip_prefix('.')?;
        let segments = path_keys(keys)?;
        if value.is_empty() || serde_yaml_ng::from_str::<serde_yaml_ng::Value>(value).is_err() {
            return None;
        }
        out.push((segments, value.to_string()));
    }
    Some(out)
}

/// The parts of `a | b | c` split at each `|` outside quotes and brackets;
/// `None` for yq's `|=` (an update, not an assignment).
fn split_pipes(expression: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut depth, mut quote) = (0usize, 0i32, None::<char>);
    let bytes: Vec<char> = expression.chars().collect();
    let mut offset = 0usize;
    for (i, &c) in bytes.iter().enumerate() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{' | '(') => depth += 1,
            (None, ']' | '}' | ')') => depth -= 1,
            (None, '|') if depth == 0 => {
                if bytes.get(i + 1) == Some(&'=') {
                    return None;
                }
                parts.push(&expression[start..offset]);
                start = offset + 1;
            }
            _ => {}
        }
        offset += c.len_utf8();
    }
    parts.push(&expression[start..]);
    Some(parts)
}

/// `a.b."c.d".e` -> [a, b, c.d, e]; None for anything else.
fn path_keys(keys: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = keys.chars().peekable();
    loop {
        let mut key = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    c => key.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return None;
                }
                key.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return None;
        }
        out.push(key);
        match chars.next() {
            None => return Some(out),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Provision>, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn every_mode_parses_in_limas_shape() {
        let steps = parse(
            "- mode: boot\n  script: systemctl disable x\n\
             - mode: dependency\n  skipDefaultDependencyResolution: false\n  script: \"#!/bin/sh\\ntrue\"\n\
             - mode: data\n  path: /etc/conf.d/example\n  content: |\n    FOO=bar\n  owner: \"{{.User}}\"\n  permissions: 600\n  overwrite: false\n\
             - mode: yq\n  path: \"{{.Home}}/.config/docker/daemon.json\"\n  expression: .features.containerd-snapshotter = {{.Param.x}}\n  user: \"{{.User}}\"\n\
             - script: echo default is system\n",
        )
        .unwrap();
        let modes: Vec<_> = steps.iter().map(|s| s.mode).collect();
        assert_eq!(
            modes,
            [
                ProvisionMode::Boot,
                ProvisionMode::Dependency,
                ProvisionMode::Data,
                ProvisionMode::Yq,
                ProvisionMode::System
            ]
        );
        let data = steps[2].data.as_ref().unwrap();
        assert_eq!(
            (
                data.path.as_str(),
                data.content.as_str(),
                data.owner.as_str(),
                data.permissions,
                data.overwrite
            ),
            (
                "/etc/conf.d/example",
                "FOO=bar\n",
                "{{.User}}",
                0o600,
                false
            )
        );
        let yq = steps[3].yq.as_ref().unwrap();
        assert_eq!(yq.owner.as_deref(), Some("{{.User}}"));
        let defaults = parse("- mode: data\n  path: /x\n  content: y\n").unwrap();
        let data = defaults[0].data.as_ref().unwrap();
        assert_eq!(
            (data.owner.as_str(), data.permissions, data.overwrite),
            ("root:root", 0o644, true)
        );
    }

    #[test]
    fn bad_steps_name_their_line_and_the_fix() {
        for (yaml, says, line) in [
            (
                "- mode: system\n  script: a\n- mode: ansible\n  playbook: p.yaml\n",
                "ansible",
                3,
            ),
            (
                "- mode: system\n  script: a\n- mode: data\n  content: x\n",
                "needs a path",
                3,
            ),
            ("- mode: user\n", "needs a script", 1),
            (
                "- mode: system\n  script: a\n  path: /x\n",
                "path does not belong",
                1,
            ),
            ("- mode: data\n  path: /x\n  permissions: rw\n", "octal", 1),
            (
                "- mode: system\n  script: a\n  scirpt: b\n",
                "unknown field `scirpt`",
                3,
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(
                err.contains(says) && err.contains(&format!("line {line}")),
                "{yaml:?} gave {err}"
            );
        }
    }

    #[test]
    fn probes_need_a_shebang_and_only_readiness_exists() {
        let probes: Vec<Probe> = serde_yaml_ng::from_str(
            "- description: docker\n  script: |\n    #!/bin/sh\n    command -v docker\n  hint: see the log\n",
        )
        .unwrap();
        assert_eq!(probes[0].label(0), "probe 0 (docker)");
        for (yaml, says) in [
            ("- script: command -v docker\n", "#!"),
            ("- mode: liveness\n  script: \"#!/bin/sh\"\n", "readiness"),
        ] {
            let err = serde_yaml_ng::from_str::<Vec<Probe>>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says) && err.contains("line 1"), "{err}");
        }
    }

    #[test]
    fn yq_assignments_are_read_and_other_forms_refused() {
        assert_eq!(
            yq_assignments(".features.containerd-snapshotter = false").unwrap(),
            [(
                vec!["features".to_string(), "containerd-snapshotter".to_string()],
                "false".to_string()
            )]
        );
        assert_eq!(
            yq_assignments(".a = 1 | .\"b.c\".d = \"x\"").unwrap().len(),
            2
        );
        assert_eq!(
            yq_assignments(".a=1|.b = \"x|y\"").unwrap(),
            [
                (vec!["a".to_string()], "1".to_string()),
                (vec!["b".to_string()], "\"x|y\"".to_string())
            ]
        );
        for bad in [
            ".a |= 1",
            "del(.a)",
            ".a += [1]",
            ".a == 1",
            "a = 1",
            ".a = 1 |",
        ] {
            assert!(
                yq_assignments(bad).unwrap_err().contains("mode: system"),
                "{bad}"
            );
        }
    }
}
