//! Where a template comes from (Lima's "locators"): `template:NAME` (also
//! `template://NAME`), an http(s) URL, a `file://` URL, an absolute or
//! relative path, or standard input; and the instance name Lima derives
//! from one.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A resolved template source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// One of vmkeep's built-in templates (`image/templates.rs`).
    Builtin(String),
    /// A file, by absolute path.
    File(PathBuf),
    /// An http(s) URL.
    Url(String),
    /// Standard input (relative bases resolve against `cwd`).
    Stdin { cwd: PathBuf },
    /// Text given directly (relative bases resolve against `cwd`).
    Text { label: String, cwd: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin(name) => write!(f, "template:{name}"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url(url) => f.write_str(url),
            Source::Stdin { .. } => f.write_str("standard input"),
            Source::Text { label, .. } => f.write_str(label),
        }
    }
}

/// Why a locator cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    #[error("{0:?} is an empty template name")]
    Empty(String),
    #[error("{0:?}: github: URLs are not supported by vmkeep; use the file's raw https:// URL")]
    Github(String),
    #[error("{0:?}: unsupported scheme; use template:NAME, http(s)://, file:// or a path")]
    Scheme(String),
    #[error(
        "{locator:?}: Lima resolves {scheme}: with its URL plugin limactl-url-{scheme}, and vmkeep runs no Lima plugins; give the template's file or URL instead"
    )]
    Plugin { locator: String, scheme: String },
    #[error("{0:?}: a file:// URL needs an absolute path")]
    RelativeFileUrl(String),
    #[error("{0:?}: standard input can only be the main template")]
    StdinBase(String),
}

/// Whether `text` reads as a template locator rather than an instance name:
/// `-`, a scheme, a path with `/`, or a `.yaml`/`.yml` file name.
pub fn looks_like_locator(text: &str) -> bool {
    text == "-"
        || text.contains("://")
        || text.starts_with("template:")
        || text.starts_with("github:")
        || text.contains('/')
        || text.ends_with(".yaml")
        || text.ends_with(".yml")
}

/// Resolve `text` (as written in `base:`, `file:` or on the command line)
/// against the source `from` that mentions it.
pub fn resolve(text: &str, from: &Source) -> Result<Source, LocatorError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LocatorError::Empty(text.into()));
    }
    if let Some(name) = text.strip_prefix("template:") {
        let name = name.trim_start_matches("//").trim_end_matches('/');
        let name = name.strip_suffix(".yaml").unwrap_or(name);
        if name.is_empty() {
            return Err(LocatorError::Empty(text.into()));
        }
        return Ok(Source::Builtin(normalize(Path::new(name))));
    }
    if text.starts_with("github:") {
        return Err(LocatorError::Github(text.into()));
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Source::Url(text.to_string()));
    }
    if let Some(path) = text.strip_prefix("file://") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(LocatorError::RelativeFileUrl(text.into()));
        }
        return Ok(Source::File(PathBuf::from(normalize(path))));
    }
    if text.contains("://") {
        return Err(LocatorError::Scheme(text.into()));
    }
    if let Some(scheme) = plugin_scheme(text) {
        return Err(LocatorError::Plugin {
            locator: text.into(),
            scheme: scheme.into(),
        });
    }
    if text == "-" {
        return Err(LocatorError::StdinBase(text.into()));
    }
    let path = expand_home(text);
    if path.is_absolute() {
        return Ok(Source::File(PathBuf::from(normalize(&path))));
    }
    Ok(match from {
        Source::File(file) => {
            let dir = file.parent().unwrap_or(Path::new("/"));
            Source::File(PathBuf::from(normalize(&dir.join(&path))))
        }
        Source::Url(url) => Source::Url(join_url(url, text)),
        Source::Builtin(name) => {
            let dir = Path::new(name).parent().unwrap_or(Path::new(""));
            let joined = normalize(&dir.join(&path));
            Source::Builtin(joined.strip_suffix(".yaml").unwrap_or(&joined).to_string())
        }
        Source::Stdin { cwd } | Source::Text { cwd, .. } => {
            Source::File(PathBuf::from(normalize(&cwd.join(&path))))
        }
    })
}

/// The scheme of a Lima URL-plugin locator (`fedora-rawhide:_images/x`):
/// letters, digits, `+`, `-`, `.` before the first `:`, which comes before
/// any `/`.
fn plugin_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn expand_home(text: &str) -> PathBuf {
    match text.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(rest))
            .unwrap_or_else(|| PathBuf::from(text)),
        None => PathBuf::from(text),
    }
}

/// `a/./b/../c` -> `a/c` (no file system access; `..` above the root stays at it).
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    let absolute = path.is_absolute();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// A relative reference against a URL: drop the last path segment, join,
/// and collapse `.`/`..`.
fn join_url(base: &str, relative: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    };
    let joined = normalize(&Path::new("/").join(dir).join(relative));
    format!("{scheme}://{host}{joined}")
}

/// The instance name Lima derives from a template: the file name without
/// `.yaml`/`.yml`, lower-cased (`./Docker.yaml` -> `docker`,
/// `template:_images/ubuntu-24.04` -> `ubuntu-24.04`). None for stdin.
pub fn instance_name_of(source: &Source) -> Option<String> {
    let base = match source {
        Source::Builtin(name) => name.rsplit('/').next()?.to_string(),
        Source::File(path) => path.file_name()?.to_string_lossy().into_owned(),
        Source::Url(url) => {
            let path = url.split(['?', '#']).next()?;
            path.trim_end_matches('/').rsplit('/').next()?.to_string()
        }
        Source::Stdin { .. } | Source::Text { .. } => return None,
    };
    let lower = base.to_ascii_lowercase();
    let name = lower
        .strip_suffix(".yaml")
        .or_else(|| lower.strip_suffix(".yml"))
        .unwrap_or(&lower);
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Source {
        Source::File(p.into())
    }

    #[test]
    fn every_locator_form_resolves() {
        let from = file("/srv/t/docker.yaml");
        for (text, expected) in [
            (
                "template:_images/ubuntu-24.04",
                Source::Builtin("_images/ubuntu-24.04".into()),
            ),
            (
                "template://_default/mounts",
                Source::Builtin("_default/mounts".into()),
            ),
            ("template:docker.yaml", Source::Builtin("docker".into())),
            (
                "https://h.example/t/a.yaml",
                Source::Url("https://h.example/t/a.yaml".into()),
            ),
            ("file:///etc/x.yaml", file("/etc/x.yaml")),
            ("/abs/b.yaml", file("/abs/b.yaml")),
            ("base.yaml", file("/srv/t/base.yaml")),
            ("../common/./b.yaml", file("/srv/common/b.yaml")),
        ] {
            assert_eq!(resolve(text, &from).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn relative_bases_follow_their_parent() {
        let url = Source::Url("http://127.0.0.1:8/a/b/main.yaml?x=1".into());
        assert_eq!(
            resolve("../c/base.yaml", &url).unwrap(),
            Source::Url("http://127.0.0.1:8/a/c/base.yaml".into())
        );
        assert_eq!(
            resolve("base.yaml", &url).unwrap(),
            Source::Url("http://127.0.0.1:8/a/b/base.yaml".into())
        );
        let builtin = Source::Builtin("_images/ubuntu".into());
        assert_eq!(
            resolve("../_default/mounts.yaml", &builtin).unwrap(),
            Source::Builtin("_default/mounts".into())
        );
        let stdin = Source::Stdin {
            cwd: "/home/u".into(),
        };
        assert_eq!(resolve("b.yaml", &stdin).unwrap(), file("/home/u/b.yaml"));
    }

    #[test]
    fn unusable_locators_say_why() {
        let from = file("/t/x.yaml");
        assert!(matches!(
            resolve("github:lima-vm/lima/templates/docker", &from),
            Err(LocatorError::Github(_))
        ));
        assert!(matches!(
            resolve("ftp://x/y.yaml", &from),
            Err(LocatorError::Scheme(_))
        ));
        assert!(matches!(
            resolve("file://rel.yaml", &from),
            Err(LocatorError::RelativeFileUrl(_))
        ));
        assert!(matches!(
            resolve("template:", &from),
            Err(LocatorError::Empty(_))
        ));
        assert!(matches!(
            resolve("-", &from),
            Err(LocatorError::StdinBase(_))
        ));
        let plugin = resolve("fedora-rawhide:_images/fedora-rawhide", &from).unwrap_err();
        assert!(
            plugin.to_string().contains("limactl-url-fedora-rawhide"),
            "{plugin}"
        );
        // A colon after a slash is a path.
        assert_eq!(resolve("./a:b.yaml", &from).unwrap(), file("/t/a:b.yaml"));
    }

    #[test]
    fn names_come_from_the_file_name_as_in_lima() {
        assert_eq!(
            instance_name_of(&file("/x/Docker.yaml")).as_deref(),
            Some("docker")
        );
        assert_eq!(
            instance_name_of(&file("/x/ubuntu-24.04.yml")).as_deref(),
            Some("ubuntu-24.04")
        );
        assert_eq!(
            instance_name_of(&Source::Builtin("_images/fedora-42".into())).as_deref(),
            Some("fedora-42")
        );
        assert_eq!(
            instance_name_of(&Source::Url("https://h/t/k3s.yaml?raw=1".into())).as_deref(),
            Some("k3s")
        );
        assert_eq!(instance_name_of(&Source::Stdin { cwd: "/".into() }), None);
        assert!(looks_like_locator("./ubuntu.yaml") && looks_like_locator("template:docker"));
        assert!(looks_like_locator("-") && looks_like_locator("docker.yml"));
        assert!(!looks_like_locator("docker") && !looks_like_locator("ubuntu-24.04"));
    }
}
