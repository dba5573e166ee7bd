//! Lima's edit flags (`--cpus --memory --disk --mount DIR[:w]
//! --mount-writable --port-forward HOST:GUEST[,static=true] --set YQ
//! --param K=V`), as `create`, `start` and `edit` take them: each becomes
//! an assignment to the config, in Lima's order and with Lima's meaning
//! (`--memory 4` is 4 GiB; `--mount` puts its directories before the
//! config's own; `--port-forward` adds a rule after them). Pure: the
//! caller applies the assignments to the config's text
//! (`text::yaml_edit`) and checks the whole.
//!
//! A flag whose syntax is wrong is a [`FlagError::Syntax`] (a command-line
//! error); a value the config field it sets would refuse is a
//! [`FlagError::Value`] (a config error), checked by that field's own
//! parser, so the message is the one the field gives in `vmkeep.yaml`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use crate::instance::config::{Cpus, DiskSize, Memory};
use crate::instance::lima::PortForward;
use crate::instance::provision;
use crate::text::yaml_edit::Assignment;

/// The edit flags of one command line (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditFlags {
    pub cpus: Option<String>,
    /// GiB as Lima writes it (`4`, `0.5`), or a size with its unit (`512MiB`).
    pub memory: Option<String>,
    pub disk: Option<String>,
    /// `DIR` or `DIR:w` (writable).
    pub mounts: Vec<String>,
    pub mount_writable: bool,
    /// `HOST:GUEST` or `HOST:GUEST,static=true`.
    pub port_forwards: Vec<String>,
    /// yq assignments, `.a.b = VALUE` joined by `|`.
    pub set: Vec<String>,
    /// `KEY=VALUE`.
    pub params: Vec<String>,
}

/// Why a flag cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// The flag is malformed (a command-line error).
    #[error("--{flag} {value:?}: {message}")]
    Syntax {
        flag: &'static str,
        value: String,
        message: String,
    },
    /// The value is one the config field refuses (a config error).
    #[error("--{flag} {value:?}: {message}")]
    Value {
        flag: &'static str,
        value: String,
        message: String,
    },
}

impl FlagError {
    /// Whether the command line itself is wrong (else the value).
    pub fn is_syntax(&self) -> bool {
        matches!(self, FlagError::Syntax { .. })
    }
}

/// The assignments of a set of flags, and what to tell the user about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Planned {
    pub assignments: Vec<Assignment>,
    pub notes: Vec<String>,
}

/// Where relative paths and `~` of `--mount` are taken from.
#[derive(Debug, Clone, Copy)]
pub struct HostPaths<'a> {
    pub home: Option<&'a Path>,
    pub cwd: &'a Path,
}

/// Whether `--param` may name a parameter the config does not define
/// (`create` adds them; Lima's `edit` and `start` refuse, to catch typos).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewParams {
    Allowed,
    Refused,
}

impl EditFlags {
    /// No flag was given.
    pub fn is_empty(&self) -> bool {
        *self == EditFlags::default()
    }

    /// The assignments these flags make to `current` (the config as a
    /// mapping), in Lima's order: cpus, memory, mounts, mount-writable,
    /// set, param, disk, port-forward.
    pub fn plan(
        &self,
        current: &Mapping,
        paths: HostPaths<'_>,
        new_params: NewParams,
    ) -> Result<Planned, FlagError> {
        let mut planned = Planned::default();
        let mut set = |key: &str, value: Value| {
            planned.assignments.push((vec![key.to_string()], value));
        };
        if let Some(cpus) = &self.cpus {
            checked::<Cpus>("cpus", cpus, cpus)?;
            set("cpus", yaml_scalar(cpus));
        }
        if let Some(memory) = &self.memory {
            let size = in_gib(memory);
            checked::<Memory>("memory", memory, &size)?;
            set("memory", Value::from(size));
        }
        let mut mounts = sequence(current, "mounts");
        let mounts_changed = !self.mounts.is_empty() || self.mount_writable;
        if !self.mounts.is_empty() {
            // Lima: `.mounts = [the flags', last first] + .mounts`.
            let mut added = self
                .mounts
                .iter()
                .map(|m| mount_entry(m, paths))
                .collect::<Result<Vec<_>, _>>()?;
            added.reverse();
            added.extend(mounts);
            mounts = added;
        }
        if self.mount_writable {
            for mount in &mut mounts {
                if let Value::Mapping(map) = mount {
                    map.insert("writable".into(), true.into());
                }
            }
        }
        if mounts_changed {
            set("mounts", Value::Sequence(mounts));
        }
        for expression in &self.set {
            for (keys, value) in set_expression(expression)? {
                planned.assignments.push((keys, value));
            }
        }
        let defined = match current.get("param") {
            Some(Value::Mapping(map)) => map
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for param in &self.params {
            let Some((key, value)) = param.split_once('=') else {
                return Err(syntax("param", param, "write it as KEY=VALUE"));
            };
            if key.is_empty() {
                return Err(syntax("param", param, "the KEY before `=` is empty"));
            }
            if new_params == NewParams::Refused && !defined.iter().any(|d| d == key) {
                return Err(FlagError::Value {
                    flag: "param",
                    value: param.clone(),
                    message: format!(
                        "the config defines no param {key:?} ({}); add one with --set '.param.{key} = \"{value}\"'",
                        if defined.is_empty() {
                            "it has none".to_string()
                        } else {
                            format!("its params are {}", defined.join(", "))
                        }
                    ),
                });
            }
            planned
                .assignments
                .push((vec!["param".into(), key.into()], Value::from(value)));
        }
        if let Some(disk) = &self.disk {
            let size = in_gib(disk);
            checked::<DiskSize>("disk", disk, &size)?;
            planned
                .assignments
                .push((vec!["disk".into()], Value::from(size)));
        }
        if !self.port_forwards.is_empty() {
            let mut rules = sequence(current, "portForwards");
            for spec in &self.port_forwards {
                let (rule, static_asked) = port_forward_rule(spec)?;
                if static_asked {
                    planned.notes.push(format!(
                        "--port-forward {spec}: static=true is Lima's forward made before its guest agent runs; \
                         vmkeep applies every rule the same way (from the moment the guest listens), so the rule is kept without it"
                    ));
                }
                rules.push(rule);
            }
            planned
                .assignments
                .push((vec!["portForwards".into()], Value::Sequence(rules)));
        }
        Ok(planned)
    }
}

fn syntax(flag: &'static str, value: &str, message: impl Into<String>) -> FlagError {
    FlagError::Syntax {
        flag,
        value: value.to_string(),
        message: message.into(),
    }
}

/// Check `text` with the parser of the field the flag sets.
fn checked<T: DeserializeOwned>(
    flag: &'static str,
    given: &str,
    text: &str,
) -> Result<T, FlagError> {
    serde_yaml_ng::from_str::<T>(&serde_json::to_string(text).expect("a string serializes"))
        .map_err(|e| FlagError::Value {
            flag,
            value: given.to_string(),
            message: without_location(&e.to_string()),
        })
}

/// A parser's message without serde's "at line 1 column 1".
fn without_location(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string()
}

/// A number as a number, anything else as a string.
fn yaml_scalar(text: &str) -> Value {
    match text.trim().parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(text.trim()),
    }
}

/// Lima's `--memory`/`--disk` are GiB (`4`, `1.5`); a value with its own
/// unit is taken as written.
fn in_gib(text: &str) -> String {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        format!("{text}GiB")
    } else {
        text.to_string()
    }
}

/// The sequence at `key` of the config (empty when absent or not a list).
fn sequence(current: &Mapping, key: &str) -> Vec<Value> {
    match current.get(key) {
        Some(Value::Sequence(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// `DIR` or `DIR:w` as Lima's mount entry: the location (with `~` and a
/// relative path made absolute), mounted at the same path in the guest.
fn mount_entry(spec: &str, paths: HostPaths<'_>) -> Result<Value, FlagError> {
    let (dir, writable) = match spec.strip_suffix(":w") {
        Some(dir) => (dir, true),
        None => (spec, false),
    };
    if dir.is_empty() {
        return Err(syntax(
            "mount",
            spec,
            "name a host directory, e.g. --mount ~/src:w",
        ));
    }
    let expanded = if dir == "~" || dir.starts_with("~/") {
        let Some(home) = paths.home else {
            return Err(syntax("mount", spec, "~ needs HOME set"));
        };
        home.join(dir.trim_start_matches('~').trim_start_matches('/'))
    } else {
        paths.cwd.join(dir)
    };
    let location = expanded.to_string_lossy().trim_end_matches('/').to_string();
    let location = if location.is_empty() {
        "/".to_string()
    } else {
        location
    };
    let mut map = Mapping::new();
    map.insert("location".into(), location.clone().into());
    map.insert("mountPoint".into(), location.into());
    map.insert("writable".into(), writable.into());
    Ok(Value::Mapping(map))
}

/// `HOST:GUEST[,static=true]` as a `portForwards` rule, checked as the
/// config checks one; whether `static=true` was asked.
fn port_forward_rule(spec: &str) -> Result<(Value, bool), FlagError> {
    let format = "write it as HOST:GUEST or HOST:GUEST,static=true, e.g. 8080:80";
    let mut parts = spec.split(',');
    let ports = parts.next().unwrap_or_default().trim();
    let static_asked = match parts.next().map(str::trim) {
        None => false,
        Some(option) => match option.strip_prefix("static=") {
            Some("true") => true,
            Some("false") => false,
            _ => return Err(syntax("port-forward", spec, format)),
        },
    };
    if parts.next().is_some() {
        return Err(syntax("port-forward", spec, format));
    }
    let Some((host, guest)) = ports.split_once(':') else {
        return Err(syntax("port-forward", spec, format));
    };
    let port = |text: &str| -> Result<u32, FlagError> {
        text.trim()
            .parse::<u32>()
            .map_err(|_| syntax("port-forward", spec, format))
    };
    let mut map = Mapping::new();
    map.insert("guestPort".into(), port(guest)?.into());
    map.insert("hostPort".into(), port(host)?.into());
    let rule = Value::Mapping(map);
    serde_yaml_ng::from_value::<PortForward>(rule.clone()).map_err(|e| FlagError::Value {
        flag: "port-forward",
        value: spec.to_string(),
        message: without_location(&e.to_string()),
    })?;
    Ok((rule, static_asked))
}

/// One `--set` expression: yq assignments `.a.b = VALUE` joined by `|`.
pub fn set_expression(expression: &str) -> Result<Vec<Assignment>, FlagError> {
    let parsed = provision::assignments(expression).ok_or_else(|| {
        syntax(
            "set",
            expression,
            "vmkeep applies yq assignments of the form `.a.b = VALUE` (several joined by `|`), \
             as in Lima's provision yq steps; for any other change edit the config with `vmkeep edit NAME`",
        )
    })?;
    Ok(parsed
        .into_iter()
        .map(|(keys, value)| {
            let value = serde_yaml_ng::from_str(&value).expect("checked by the parser");
            (keys, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> HostPaths<'static> {
        HostPaths {
            home: Some(Path::new("/home/ann")),
            cwd: Path::new("/work"),
        }
    }

    fn plan(flags: &EditFlags, current: &str) -> Result<Planned, FlagError> {
        let current = crate::text::yaml_edit::parse_mapping(current).unwrap();
        flags.plan(&current, paths(), NewParams::Refused)
    }

    fn keys(planned: &Planned) -> Vec<String> {
        planned
            .assignments
            .iter()
            .map(|(k, _)| k.join("."))
            .collect()
    }

    #[test]
    fn sizes_are_gib_as_in_lima_or_taken_with_their_unit() {
        let flags = EditFlags {
            cpus: Some("4".into()),
            memory: Some("1.5".into()),
            disk: Some("512MiB".into()),
            ..Default::default()
        };
        let planned = plan(&flags, "").unwrap();
        assert_eq!(keys(&planned), ["cpus", "memory", "disk"]);
        assert_eq!(planned.assignments[0].1, Value::from(4u64));
        assert_eq!(planned.assignments[1].1, Value::from("1.5GiB"));
        assert_eq!(planned.assignments[2].1, Value::from("512MiB"));
    }

    #[test]
    fn a_value_the_field_refuses_is_a_value_error_with_the_fields_message() {
        for (flags, says) in [
            (
                EditFlags {
                    cpus: Some("0".into()),
                    ..Default::default()
                },
                "1 to 64",
            ),
            (
                EditFlags {
                    cpus: Some("two".into()),
                    ..Default::default()
                },
                "1 to 64",
            ),
            (
                EditFlags {
                    memory: Some("0.01".into()),
                    ..Default::default()
                },
                "between 64MiB",
            ),
            (
                EditFlags {
                    disk: Some("lots".into()),
                    ..Default::default()
                },
                "not a size",
            ),
            (
                EditFlags {
                    port_forwards: vec!["70000:80".into()],
                    ..Default::default()
                },
                "not a port",
            ),
        ] {
            let err = plan(&flags, "").unwrap_err();
            assert!(!err.is_syntax(), "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(!err.to_string().contains("line 1"), "{err}");
        }
    }

    #[test]
    fn malformed_flags_are_syntax_errors() {
        for flags in [
            EditFlags {
                port_forwards: vec!["8080".into()],
                ..Default::default()
            },
            EditFlags {
                port_forwards: vec!["8080:80,static=maybe".into()],
                ..Default::default()
            },
            EditFlags {
                port_forwards: vec!["a:80".into()],
                ..Default::default()
            },
            EditFlags {
                mounts: vec![":w".into()],
                ..Default::default()
            },
            EditFlags {
                set: vec![".mounts += [{}]".into()],
                ..Default::default()
            },
            EditFlags {
                set: vec!["del(.cpus)".into()],
                ..Default::default()
            },
            EditFlags {
                params: vec!["KEY".into()],
                ..Default::default()
            },
        ] {
            let err = plan(&flags, "").unwrap_err();
            assert!(err.is_syntax(), "{flags:?}: {err}");
        }
        let err = plan(
            &EditFlags {
                set: vec![".a += 1".into()],
                ..Default::default()
            },
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("vmkeep edit NAME"), "{err}");
    }

    #[test]
    fn mounts_go_first_last_flag_first_and_writable_applies_to_all() {
        let flags = EditFlags {
            mounts: vec!["~/src:w".into(), "data".into()],
            mount_writable: false,
            ..Default::default()
        };
        let planned = plan(&flags, "mounts:\n- location: /old\n").unwrap();
        let (key, value) = &planned.assignments[0];
        assert_eq!(key, &["mounts"]);
        let expected: Value = serde_yaml_ng::from_str(
            "- {location: /work/data, mountPoint: /work/data, writable: false}\n\
             - {location: /home/ann/src, mountPoint: /home/ann/src, writable: true}\n\
             - {location: /old}\n",
        )
        .unwrap();
        assert_eq!(value, &expected);
        let writable = EditFlags {
            mount_writable: true,
            ..Default::default()
        };
        let planned = plan(&writable, "mounts:\n- location: /old\n").unwrap();
        let expected: Value =
            serde_yaml_ng::from_str("- {location: /old, writable: true}\n").unwrap();
        assert_eq!(planned.assignments[0].1, expected);
    }

    #[test]
    fn port_forwards_are_added_after_the_configs_own() {
        let flags = EditFlags {
            port_forwards: vec!["8080:80".into(), "9090:9090,static=true".into()],
            ..Default::default()
        };
        let planned = plan(&flags, "portForwards:\n- guestPort: 22\n  ignore: true\n").unwrap();
        let expected: Value = serde_yaml_ng::from_str(
            "- {guestPort: 22, ignore: true}\n- {guestPort: 80, hostPort: 8080}\n- {guestPort: 9090, hostPort: 9090}\n",
        )
        .unwrap();
        assert_eq!(planned.assignments[0].1, expected);
        assert_eq!(planned.notes.len(), 1);
        assert!(planned.notes[0].contains("static=true"));
    }

    #[test]
    fn set_and_param_become_assignments_and_unknown_params_are_refused() {
        let flags = EditFlags {
            set: vec![".ssh.localPort = 2222 | .env.A = \"x=y\"".into()],
            params: vec!["VERSION=2".into()],
            ..Default::default()
        };
        let planned = plan(&flags, "param:\n  VERSION: '1'\n").unwrap();
        assert_eq!(keys(&planned), ["ssh.localPort", "env.A", "param.VERSION"]);
        assert_eq!(planned.assignments[1].1, Value::from("x=y"));
        assert_eq!(planned.assignments[2].1, Value::from("2"));
        let err = plan(&flags, "").unwrap_err();
        assert!(!err.is_syntax());
        assert!(err.to_string().contains(".param.VERSION"), "{err}");
        let current = Mapping::new();
        let allowed = flags.plan(&current, paths(), NewParams::Allowed).unwrap();
        assert_eq!(allowed.assignments.len(), 3);
    }
}
