//! Lima's rules for merging a base template into a template (its
//! `limatmpl` "embedding"), on YAML values:
//!
//! - a setting the template has wins; one it lacks (or sets to `null`) is
//!   taken from the base; maps merge key by key, at any depth;
//! - lists are combined: the template's entries, then the base's; except
//!   `provision` and `probes`, where the base's come first (a base installs
//!   what the template's scripts use), and `dns`, which is the template's
//!   alone when it has one;
//! - `mountTypesUnsupported` keeps each value once; `minimumLimaVersion` (and
//!   `vmOpts.qemu.minimumVersion`) the highest;
//! - once every base is in, `mounts` entries with the same mount point are
//!   combined: the first keeps its settings and takes the missing ones from
//!   the later entries, which are dropped.
//!
//! One deviation: Lima keeps a template's explicit `null` over a base's
//! value; vmkeep reads `null` as "not set" everywhere, so the base's value
//! is taken.

use serde_yaml_ng::{Mapping, Value};

/// Merge `base` into `template` (the template wins).
pub fn merge(template: &mut Mapping, base: &Mapping) {
    merge_at(template, base, 0, "");
}

fn merge_at(template: &mut Mapping, base: &Mapping, depth: usize, top_key: &str) {
    for (key, base_value) in base {
        let name = key.as_str().unwrap_or("");
        let top = if depth == 0 { name } else { top_key };
        if depth == 0 && name == "base" {
            continue;
        }
        match template.get_mut(key) {
            None | Some(Value::Null) => {
                template.insert(key.clone(), base_value.clone());
            }
            Some(Value::Mapping(mine)) => {
                if let Value::Mapping(theirs) = base_value {
                    if depth == 0 && name == "vmOpts" {
                        keep_highest_nested(mine, theirs);
                    }
                    merge_at(mine, theirs, depth + 1, top);
                }
            }
            Some(Value::Sequence(mine)) => {
                let Value::Sequence(theirs) = base_value else {
                    continue;
                };
                match (depth, name) {
                    (0, "dns") => {}
                    (0, "provision" | "probes") => {
                        let mut combined = theirs.clone();
                        combined.append(mine);
                        *mine = combined;
                    }
                    (0, "mountTypesUnsupported") => {
                        for value in theirs {
                            if !mine.contains(value) {
                                mine.push(value.clone());
                            }
                        }
                    }
                    _ => mine.extend(theirs.iter().cloned()),
                }
            }
            Some(mine) => {
                if depth == 0 && name == "minimumLimaVersion" && version_greater(base_value, mine) {
                    *mine = base_value.clone();
                }
            }
        }
    }
}

fn keep_highest_nested(mine: &mut Mapping, theirs: &Mapping) {
    let path = ["qemu", "minimumVersion"];
    let get =
        |m: &Mapping| -> Option<Value> { m.get(path[0])?.as_mapping()?.get(path[1]).cloned() };
    if let (Some(a), Some(b)) = (get(mine), get(theirs))
        && version_greater(&b, &a)
        && let Some(Value::Mapping(qemu)) = mine.get_mut(path[0])
    {
        qemu.insert(Value::from(path[1]), b);
    }
}

/// Whether version `a` is greater than `b` (numeric dot-separated parts).
fn version_greater(a: &Value, b: &Value) -> bool {
    let parts = |v: &Value| -> Vec<u64> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        text.trim_start_matches('v')
            .split(['.', '-', '+'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a) > parts(b)
}

/// Combine `mounts` entries that share a mount point (the mount point is the
/// location when not given), after every base is merged.
pub fn combine_mounts(config: &mut Mapping) {
    let Some(Value::Sequence(mounts)) = config.get_mut("mounts") else {
        return;
    };
    let point = |entry: &Value| -> Option<Value> {
        let map = entry.as_mapping()?;
        match map.get("mountPoint") {
            Some(Value::Null) | None => map.get("location").cloned(),
            Some(p) => Some(p.clone()),
        }
    };
    let mut combined: Vec<Value> = Vec::new();
    for entry in mounts.drain(..) {
        let key = point(&entry);
        let earlier = key
            .as_ref()
            .and_then(|k| combined.iter().position(|e| point(e).as_ref() == Some(k)));
        match (earlier, entry) {
            (Some(i), Value::Mapping(later)) => {
                if let Value::Mapping(first) = &mut combined[i] {
                    merge_at(first, &later, 1, "mounts");
                }
            }
            (_, entry) => combined.push(entry),
        }
    }
    *mounts = combined;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Mapping {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn merged(template: &str, base: &str) -> Mapping {
        let mut t = yaml(template);
        merge(&mut t, &yaml(base));
        t
    }

    #[test]
    fn the_template_wins_and_missing_settings_come_from_the_base() {
        let m = merged(
            "cpus: 4\nmemory: null\nssh:\n  localPort: 2222\n",
            "cpus: 2\nmemory: 8GiB\ndisk: 50GiB\nssh:\n  localPort: 60022\n  loadDotSSHPubKeys: true\nbase: x.yaml\n",
        );
        assert_eq!(m["cpus"], Value::from(4));
        assert_eq!(m["memory"], Value::from("8GiB"), "null is not set");
        assert_eq!(m["disk"], Value::from("50GiB"));
        assert_eq!(m["ssh"]["localPort"], Value::from(2222));
        assert_eq!(m["ssh"]["loadDotSSHPubKeys"], Value::from(true));
        assert!(!m.contains_key("base"), "a base's own base is not copied");
    }

    #[test]
    fn lists_append_but_provision_and_probes_prepend() {
        let m = merged(
            "images:\n- location: /mine\nprovision:\n- script: mine\nprobes:\n- script: mine\ndns: [1.1.1.1]\nmountTypesUnsupported: [9p]\n",
            "images:\n- location: /base\nprovision:\n- script: base\nprobes:\n- script: base\ndns: [8.8.8.8]\nmountTypesUnsupported: [9p, virtiofs]\n",
        );
        let locations: Vec<_> = m["images"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| i["location"].clone())
            .collect();
        assert_eq!(locations, [Value::from("/mine"), Value::from("/base")]);
        let scripts: Vec<_> = m["provision"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| i["script"].clone())
            .collect();
        assert_eq!(scripts, [Value::from("base"), Value::from("mine")]);
        assert_eq!(m["probes"][0]["script"], Value::from("base"));
        assert_eq!(m["dns"].as_sequence().unwrap().len(), 1);
        assert_eq!(m["mountTypesUnsupported"].as_sequence().unwrap().len(), 2);
    }

    #[test]
    fn the_highest_minimum_version_is_kept() {
        let m = merged(
            "minimumLimaVersion: 1.1.0\n",
            "minimumLimaVersion: 1.10.0\n",
        );
        assert_eq!(m["minimumLimaVersion"], Value::from("1.10.0"));
        let m = merged("minimumLimaVersion: 2.0.0\n", "minimumLimaVersion: 1.1.0\n");
        assert_eq!(m["minimumLimaVersion"], Value::from("2.0.0"));
        let m = merged(
            "vmOpts:\n  qemu:\n    minimumVersion: 7.0.0\n",
            "vmOpts:\n  qemu:\n    minimumVersion: 8.2.1\n",
        );
        assert_eq!(m["vmOpts"]["qemu"]["minimumVersion"], Value::from("8.2.1"));
    }

    #[test]
    fn mounts_with_one_mount_point_are_combined() {
        let mut m = yaml(
            "mounts:\n- location: \"~\"\n  writable: true\n- location: /tmp/lima\n- location: \"~\"\n  writable: false\n  sshfs: {cache: false}\n",
        );
        combine_mounts(&mut m);
        let mounts = m["mounts"].as_sequence().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[0]["writable"],
            Value::from(true),
            "the first entry wins"
        );
        assert_eq!(
            mounts[0]["sshfs"]["cache"],
            Value::from(false),
            "and takes what it lacks"
        );
    }
}
