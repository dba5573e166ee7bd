//! Template resolution: read a template and everything it builds on (Lima's
//! `base:`, one locator or a list: `template:NAME`, relative or absolute
//! paths, `file://` and http(s) URLs), merge them with Lima's rules
//! ([`merge`]), read `file:` scripts and `caCerts.files` into the text, and
//! check the result as an instance config.
//!
//! The result is what an instance stores: the whole template, resolved once
//! at create (as Lima stores its filled template), so a later change to a
//! base file or URL never changes an existing VM, and `start` works offline.
//! Template variables (`{{.User}}`, `{{.Param.X}}`, ...) stay as written and
//! are expanded when the seed is written ([`crate::instance::vars`]); create checks that they
//! expand.
//!
//! Each file is checked on its own first, so an error names the file and the
//! line it is on. Loops (a base that includes itself) and chains deeper than
//! [`MAX_DEPTH`] are refused; every file read is at most [`SIZE_LIMIT`] bytes.

pub mod locator;
pub mod merge;

use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};
use sha2::Digest as _;

use self::locator::LocatorError;
pub use self::locator::Source;
use crate::image::download::{self, DownloadError};
use crate::image::templates;
use crate::instance::config::{Config, Digest, DigestAlgorithm, ParseError, RawConfig};

/// Largest template or script file read (Lima's limit too).
pub const SIZE_LIMIT: u64 = 4 << 20;
/// Longest chain of bases (a template, its base, that base's base, ...).
pub const MAX_DEPTH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the chain is not a valid config on its own.
    #[error("{source_name}: {error}")]
    Invalid {
        source_name: String,
        error: ParseError,
    },
    #[error("{source_name}: the template is not a YAML mapping of settings")]
    NotMapping { source_name: String },
    #[error("{source_name}: cannot read it: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error(
        "{source_name}: more than {SIZE_LIMIT} bytes; a template or script may be at most that large"
    )]
    TooLarge { source_name: String },
    #[error("{source_name}: not UTF-8 text")]
    NotText { source_name: String },
    #[error("cannot fetch {url}: {error}")]
    Fetch { url: String, error: DownloadError },
    #[error("{}", unknown_builtin(name))]
    UnknownBuiltin { name: String },
    #[error("{source_name}: {field}: {error}")]
    Locator {
        source_name: String,
        field: String,
        error: LocatorError,
    },
    #[error("{source_name}: base: {message}")]
    BadBase {
        source_name: String,
        message: String,
    },
    #[error("base: template loop: {}; remove one of these base references", chain.join(" -> "))]
    Loop { chain: Vec<String> },
    #[error("base: more than {MAX_DEPTH} levels of base templates: {}", chain.join(" -> "))]
    TooDeep { chain: Vec<String> },
    #[error("{source_name}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        source_name: String,
        expected: String,
        actual: String,
    },
    /// The merged template is not a valid instance config as a whole.
    #[error("{chain}: {error}")]
    Whole { chain: String, error: ParseError },
}

fn unknown_builtin(name: &str) -> String {
    let shipped = templates::names().join(", ");
    if templates::is_lima_only(name) {
        format!(
            "template:{name} is one of Lima's templates that vmkeep does not ship, and no Lima installation has it \
             (searched ${LIMA_TEMPLATES_PATH} or Lima's share/lima/templates); give Lima's file instead \
             (`vmkeep create ./{}.yaml`, vmkeep reads it as it is), or set {LIMA_TEMPLATES_PATH} to Lima's templates \
             directory. vmkeep's: {shipped}",
            name.rsplit('/').next().unwrap_or(name)
        )
    } else {
        format!("there is no template:{name}; vmkeep's built-in templates: {shipped}")
    }
}

/// A resolved template.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the instance stores as its config.
    pub text: String,
    pub config: Config,
    /// Every file read, the main template first.
    pub sources: Vec<Source>,
}

/// Read the template at `source` (not standard input).
pub fn read(source: &Source) -> Result<String, TemplateError> {
    read_bytes(source, None)
}

fn read_bytes(source: &Source, digest: Option<&Digest>) -> Result<String, TemplateError> {
    let source_name = source.to_string();
    let bytes = match source {
        Source::Builtin(name) => {
            if let Some(text) = templates::find(name) {
                return Ok(text.to_string());
            }
            // A name vmkeep does not ship: Lima's own copy, where Lima is installed.
            match lima_template_file(name) {
                Some(path) => read_file(&path)?,
                None => return Err(TemplateError::UnknownBuiltin { name: name.clone() }),
            }
        }
        Source::File(path) => read_file(path)?,
        Source::Url(url) => {
            download::fetch_small(url, SIZE_LIMIT).map_err(|error| match error {
                DownloadError::TooLarge { .. } => TemplateError::TooLarge {
                    source_name: source_name.clone(),
                },
                error => TemplateError::Fetch {
                    url: url.clone(),
                    error,
                },
            })?
        }
        Source::Stdin { .. } | Source::Text { .. } => {
            return Err(TemplateError::BadBase {
                source_name,
                message: "standard input cannot be a base".into(),
            });
        }
    };
    if let Some(expected) = digest {
        let actual = match expected.algorithm {
            DigestAlgorithm::Sha256 => hex::encode(sha2::Sha256::digest(&bytes)),
            DigestAlgorithm::Sha512 => hex::encode(sha2::Sha512::digest(&bytes)),
        };
        if actual != expected.hex {
            return Err(TemplateError::DigestMismatch {
                source_name,
                expected: expected.to_string(),
                actual: format!("{}:{actual}", expected.algorithm.name()),
            });
        }
    }
    String::from_utf8(bytes).map_err(|_| TemplateError::NotText { source_name })
}

/// Environment variable: directories (`:`-separated) holding Lima's
/// templates, searched for `template:NAME` names vmkeep does not ship (Lima
/// reads the same variable).
pub const LIMA_TEMPLATES_PATH: &str = "LIMA_TEMPLATES_PATH";

/// Where Lima installs its templates (`share/lima/templates`).
const LIMA_TEMPLATE_DIRS: [&str; 3] = [
    "/usr/local/share/lima/templates",
    "/opt/homebrew/share/lima/templates",
    "/usr/share/lima/templates",
];

/// Lima's file for a template name vmkeep does not ship: from
/// `$LIMA_TEMPLATES_PATH` when set, else, as Lima's default for it, from
/// `$LIMA_HOME/_templates` (the user's own) and Lima's install directories.
fn lima_template_file(name: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os(LIMA_TEMPLATES_PATH) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => crate::instance::lima_instance::lima_home()
            .map(|home| home.join("_templates"))
            .into_iter()
            .chain(LIMA_TEMPLATE_DIRS.iter().map(PathBuf::from))
            .collect(),
    };
    dirs.into_iter()
        .map(|dir| dir.join(format!("{name}.yaml")))
        .find(|path| path.is_file())
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, TemplateError> {
    use std::io::Read;
    let source_name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| TemplateError::Read {
        source_name: source_name.clone(),
        error,
    })?;
    let mut bytes = Vec::new();
    file.take(SIZE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| TemplateError::Read {
            source_name: source_name.clone(),
            error,
        })?;
    if bytes.len() as u64 > SIZE_LIMIT {
        return Err(TemplateError::TooLarge { source_name });
    }
    Ok(bytes)
}

/// Resolve the template `text` read from `source`.
pub fn resolve(text: &str, source: &Source) -> Result<Resolved, TemplateError> {
    let mut sources = vec![source.clone()];
    let mut inlined = false;
    let mut stack = vec![source.clone()];
    let mut merged = load(text, source, &mut stack, &mut sources, &mut inlined)?;
    merge::combine_mounts(&mut merged);
    let chain = sources
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" + ");
    let stored = if sources.len() == 1 && !inlined {
        text.to_string()
    } else {
        let body = if merged.is_empty() {
            String::new()
        } else {
            serde_yaml_ng::to_string(&Value::Mapping(merged)).expect("YAML values serialize")
        };
        let bases: Vec<String> = sources[1..].iter().map(ToString::to_string).collect();
        format!(
            "# Created by vmkeep from {}{}.\n\
             # The whole template, resolved once when the instance was created:\n\
             # later changes to those files do not change this instance.\n{body}",
            sources[0],
            if bases.is_empty() {
                String::new()
            } else {
                format!(",\n# with its bases {}", bases.join(", "))
            }
        )
    };
    let whole = |error: ParseError| TemplateError::Whole {
        chain: chain.clone(),
        error,
    };
    let config = Config::parse(&stored).map_err(whole)?;
    config.check_whole().map_err(whole)?;
    Ok(Resolved {
        text: stored,
        config,
        sources,
    })
}

/// Check one file, read what it includes, and merge its bases into it.
fn load(
    text: &str,
    source: &Source,
    stack: &mut Vec<Source>,
    sources: &mut Vec<Source>,
    inlined: &mut bool,
) -> Result<Mapping, TemplateError> {
    let source_name = source.to_string();
    RawConfig::parse(text).map_err(|error| TemplateError::Invalid {
        source_name: source_name.clone(),
        error,
    })?;
    let mut doc = match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) => map,
        Ok(Value::Null) => Mapping::new(),
        _ => return Err(TemplateError::NotMapping { source_name }),
    };
    *inlined |= inline_files(&mut doc, source)?;
    let bases = take_bases(&mut doc, &source_name)?;
    for (text_locator, digest) in bases {
        let base =
            locator::resolve(&text_locator, source).map_err(|error| TemplateError::Locator {
                source_name: source_name.clone(),
                field: "base".into(),
                error,
            })?;
        let chain = || {
            stack
                .iter()
                .chain(std::iter::once(&base))
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        if stack.contains(&base) {
            return Err(TemplateError::Loop { chain: chain() });
        }
        if stack.len() > MAX_DEPTH {
            return Err(TemplateError::TooDeep { chain: chain() });
        }
        let base_text = read_bytes(&base, digest.as_ref())?;
        stack.push(base.clone());
        sources.push(base.clone());
        let base_doc = load(&base_text, &base, stack, sources, inlined)?;
        stack.pop();
        merge::merge(&mut doc, &base_doc);
    }
    Ok(doc)
}

/// `base:` as (locator, digest) pairs; removed from `doc`.
fn take_bases(
    doc: &mut Mapping,
    source_name: &str,
) -> Result<Vec<(String, Option<Digest>)>, TemplateError> {
    let bad = |message: String| TemplateError::BadBase {
        source_name: source_name.to_string(),
        message,
    };
    let one = |value: &Value| -> Result<(String, Option<Digest>), TemplateError> {
        match value {
            Value::String(s) => Ok((s.clone(), None)),
            Value::Mapping(map) => {
                let url = map
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("an entry as a map needs url:".into()))?;
                let digest = match map.get("digest") {
                    Some(Value::String(d)) => Some(Digest::parse(d).map_err(bad)?),
                    Some(Value::Null) | None => None,
                    Some(_) => return Err(bad("digest: must be sha256:HEX or sha512:HEX".into())),
                };
                Ok((url.to_string(), digest))
            }
            _ => Err(bad(
                "each entry is a locator (template:NAME, a path or a URL) or {url, digest}".into(),
            )),
        }
    };
    match doc.remove("base") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(list)) => list.iter().map(one).collect(),
        Some(value) => Ok(vec![one(&value)?]),
    }
}

/// Read `file:` of provision steps and probes into `script`/`content`, and
/// `caCerts.files` into `caCerts.certs`, relative to the file that names
/// them (as Lima does). Returns whether anything was read.
fn inline_files(doc: &mut Mapping, source: &Source) -> Result<bool, TemplateError> {
    let source_name = source.to_string();
    let mut any = false;
    let fetch = |text: &str, field: &str| -> Result<String, TemplateError> {
        let at = locator::resolve(text, source).map_err(|error| TemplateError::Locator {
            source_name: source_name.clone(),
            field: field.to_string(),
            error,
        })?;
        read(&at)
    };
    for list in ["provision", "probes"] {
        let Some(Value::Sequence(entries)) = doc.get_mut(list) else {
            continue;
        };
        for (i, entry) in entries.iter_mut().enumerate() {
            let Value::Mapping(step) = entry else {
                continue;
            };
            let file = match step.remove("file") {
                Some(Value::String(url)) => url,
                Some(Value::Mapping(map)) => match map.get("url").and_then(Value::as_str) {
                    Some(url) => url.to_string(),
                    None => continue,
                },
                _ => continue,
            };
            let content = fetch(&file, &format!("{list}[{i}].file"))?;
            let is_data = step.get("mode").and_then(Value::as_str) == Some("data");
            step.insert(
                Value::from(if is_data { "content" } else { "script" }),
                Value::from(content),
            );
            any = true;
        }
    }
    if let Some(Value::Mapping(certs)) = doc.get_mut("caCerts")
        && let Some(Value::Sequence(files)) = certs.remove("files")
    {
        let mut read_certs = Vec::new();
        for (i, file) in files.iter().enumerate() {
            if let Some(path) = file.as_str() {
                read_certs.push(Value::from(fetch(path, &format!("caCerts.files[{i}]"))?));
            }
        }
        if !read_certs.is_empty() {
            any = true;
            match certs.get_mut("certs") {
                Some(Value::Sequence(existing)) => existing.extend(read_certs),
                _ => {
                    certs.insert(Value::from("certs"), Value::Sequence(read_certs));
                }
            }
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn resolve_file(path: &std::path::Path) -> Result<Resolved, TemplateError> {
        let text = std::fs::read_to_string(path).unwrap();
        resolve(&text, &Source::File(path.to_path_buf()))
    }

    #[test]
    fn a_chain_across_files_and_builtins_merges_with_limas_rules() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "common/base.yaml",
            "cpus: 3\nmemory: 3GiB\nprovision:\n- mode: system\n  script: echo base\nparam:\n  Who: base\n  Extra: true\n",
        );
        write(
            dir.path(),
            "scripts/hello.sh",
            "#!/bin/sh\necho hello {{.Param.Who}}\n",
        );
        let main = write(
            dir.path(),
            "app.yaml",
            "minimumLimaVersion: 1.1.0\nbase:\n- ./common/base.yaml\n- template:_images/debian-12\n- template://_default/mounts\n\
             cpus: 1\nparam:\n  Who: app\nprovision:\n- mode: user\n  file: scripts/hello.sh\n",
        );
        let resolved = resolve_file(&main).unwrap();
        let c = &resolved.config;
        assert_eq!(c.cpus.0, 1, "the template wins");
        assert_eq!(c.memory.0.to_string(), "3GiB", "the base fills in");
        assert!(c.is_cloud(), "images from template:_images/debian-12");
        let params = c.raw.params();
        assert_eq!(
            (params["Who"].as_str(), params["Extra"].as_str()),
            ("app", "true")
        );
        let scripts: Vec<&str> = c.provision.iter().map(|p| p.script.as_str()).collect();
        assert_eq!(
            scripts,
            ["echo base", "#!/bin/sh\necho hello {{.Param.Who}}\n"]
        );
        assert_eq!(c.raw.mounts.as_ref().map(Vec::len), Some(2));
        assert_eq!(resolved.sources.len(), 4);
        assert!(
            resolved.text.starts_with("# Created by vmkeep from "),
            "{}",
            resolved.text
        );
        assert!(!resolved.text.contains("base:"), "{}", resolved.text);
        assert_eq!(Config::parse(&resolved.text).unwrap(), resolved.config);
    }

    #[test]
    fn a_template_without_bases_is_stored_as_written() {
        let text = "# mine\ncpus: 2\n";
        let resolved = resolve(
            text,
            &Source::Text {
                label: "t".into(),
                cwd: "/".into(),
            },
        )
        .unwrap();
        assert_eq!(resolved.text, text);
    }

    #[test]
    fn an_error_in_a_base_names_that_file_and_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "b.yaml", "cpus: 2\nmemroy: 1GiB\n");
        let main = write(dir.path(), "m.yaml", "base: b.yaml\n");
        let err = resolve_file(&main).unwrap_err().to_string();
        assert!(
            err.contains(&base.display().to_string())
                && err.contains("line 2")
                && err.contains("did you mean `memory`"),
            "{err}"
        );
    }

    #[test]
    fn loops_depth_and_unknown_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", "base: b.yaml\n");
        write(dir.path(), "b.yaml", "base: ./a.yaml\n");
        let err = resolve_file(&dir.path().join("a.yaml")).unwrap_err();
        assert!(matches!(err, TemplateError::Loop { .. }), "{err}");
        assert!(err.to_string().contains("a.yaml -> "), "{err}");
        for i in 0..=MAX_DEPTH + 1 {
            write(
                dir.path(),
                &format!("d{i}.yaml"),
                &format!("base: d{}.yaml\n", i + 1),
            );
        }
        write(dir.path(), &format!("d{}.yaml", MAX_DEPTH + 2), "cpus: 1\n");
        let err = resolve_file(&dir.path().join("d0.yaml")).unwrap_err();
        assert!(matches!(err, TemplateError::TooDeep { .. }), "{err}");
        let err = resolve(
            "base: template:docker\n",
            &Source::Text {
                label: "t".into(),
                cwd: "/".into(),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("does not ship") && err.contains("./docker.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_base_digest_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yaml", "cpus: 2\n");
        let sum = hex::encode(sha2::Sha256::digest(b"cpus: 2\n"));
        let good = write(
            dir.path(),
            "good.yaml",
            &format!("base:\n- url: b.yaml\n  digest: sha256:{sum}\n"),
        );
        assert_eq!(resolve_file(&good).unwrap().config.cpus.0, 2);
        let bad = write(
            dir.path(),
            "bad.yaml",
            &format!(
                "base:\n- url: b.yaml\n  digest: sha256:{}\n",
                "0".repeat(64)
            ),
        );
        assert!(matches!(
            resolve_file(&bad).unwrap_err(),
            TemplateError::DigestMismatch { .. }
        ));
    }

    #[test]
    fn ca_cert_files_are_read_into_the_config() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
        );
        let main = write(
            dir.path(),
            "m.yaml",
            "images:\n- location: /i.qcow2\ncaCerts:\n  files:\n  - ca.pem\n  certs:\n  - inline\n",
        );
        let resolved = resolve_file(&main).unwrap();
        let certs = resolved.config.raw.ca_certs.clone().unwrap().certs.unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs[1].contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn every_builtin_resolves_and_cloud_ones_are_pinned() {
        for (name, _) in templates::BUILT_IN {
            let source = Source::Builtin(name.to_string());
            let resolved =
                resolve(&read(&source).unwrap(), &source).unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.starts_with("_default") || *name == "tiny" {
                assert!(!resolved.config.is_cloud(), "{name}");
                continue;
            }
            assert!(resolved.config.is_cloud(), "{name}");
            for image in &resolved.config.images {
                assert!(image.location.to_string().starts_with("https://"), "{name}");
                assert!(image.digest.is_some(), "{name}: unpinned");
            }
        }
    }
}
