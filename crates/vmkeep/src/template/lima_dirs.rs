//! Where Lima's installed templates are, in Lima's order
//! (`pkg/templatestore`): `$LIMA_TEMPLATES_PATH` when it is set (and then
//! only it); else `$LIMA_HOME/_templates` (`~/.lima/_templates`), then
//! `share/lima/templates` beside the `limactl` found on `PATH` (by the path
//! found, and by where its symlink leads, as Lima looks beside itself), then
//! the prefixes Lima is installed in: `/usr/local`, Homebrew on Linux
//! (`/home/linuxbrew/.linuxbrew`), Homebrew on macOS (`/opt/homebrew`),
//! `/usr`. The order is a pure function of [`LookupEnv`], so it is tested
//! over a fake tree.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable: directories (`:`-separated) holding Lima's
/// templates; when set, the only ones searched (Lima reads it too).
pub const LIMA_TEMPLATES_PATH: &str = "LIMA_TEMPLATES_PATH";

/// The prefixes Lima is installed in, searched last.
pub const INSTALL_PREFIXES: [&str; 4] = [
    "/usr/local",
    "/home/linuxbrew/.linuxbrew",
    "/opt/homebrew",
    "/usr",
];

/// What the lookup depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LookupEnv {
    /// `$LIMA_TEMPLATES_PATH`.
    pub templates_path: Option<OsString>,
    /// `$LIMA_HOME`.
    pub lima_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// Install prefixes ([`INSTALL_PREFIXES`] outside tests).
    pub prefixes: Vec<PathBuf>,
}

impl LookupEnv {
    /// This process's environment.
    pub fn current() -> LookupEnv {
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        LookupEnv {
            templates_path: set(LIMA_TEMPLATES_PATH),
            lima_home: set("LIMA_HOME").map(PathBuf::from),
            home: set("HOME").map(PathBuf::from),
            path: set("PATH"),
            prefixes: INSTALL_PREFIXES.iter().map(PathBuf::from).collect(),
        }
    }
}

/// The directories searched, in order (each once).
pub fn template_dirs(env: &LookupEnv) -> Vec<PathBuf> {
    if let Some(list) = &env.templates_path {
        return std::env::split_paths(list).collect();
    }
    let mut dirs = Vec::new();
    let lima_home =
        crate::instance::lima_instance::lima_home_from(env.lima_home.clone(), env.home.clone());
    dirs.extend(lima_home.map(|h| h.join("_templates")));
    if let Some(limactl) = find_limactl(env.path.as_ref()) {
        let resolved = std::fs::canonicalize(&limactl).ok();
        for program in std::iter::once(limactl).chain(resolved) {
            if let Some(prefix) = program.parent().and_then(Path::parent) {
                dirs.push(share_templates(prefix));
            }
        }
    }
    dirs.extend(env.prefixes.iter().map(|p| share_templates(p)));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

fn share_templates(prefix: &Path) -> PathBuf {
    prefix.join("share/lima/templates")
}

/// The first `limactl` on `path` (as the shell would run it).
fn find_limactl(path: Option<&OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("limactl"))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Lima's file for template `name` (`docker`, `_images/ubuntu`), the first
/// found in `dirs`. A name with `..` is never looked up (Lima's rule).
pub fn find(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains("..") {
        return None;
    }
    let file = format!("{}.yaml", name.strip_suffix(".yaml").unwrap_or(name));
    dirs.iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn limas_order_over_a_fake_tree() {
        use std::os::unix::fs::PermissionsExt;
        let tree = tempfile::tempdir().unwrap();
        let at = |p: &str| tree.path().join(p);
        // Homebrew's layout: bin/limactl is a link into the Cellar.
        write(&at("brew/Cellar/lima/2.2/bin/limactl"), "#!/bin/sh\n");
        std::fs::set_permissions(
            at("brew/Cellar/lima/2.2/bin/limactl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir_all(at("brew/bin")).unwrap();
        std::os::unix::fs::symlink("../Cellar/lima/2.2/bin/limactl", at("brew/bin/limactl"))
            .unwrap();
        // Not executable: not the one the shell would run.
        write(&at("early/bin/limactl"), "");
        let path = std::env::join_paths([at("nowhere"), at("early/bin"), at("brew/bin")]).unwrap();
        let env = LookupEnv {
            templates_path: None,
            lima_home: None,
            home: Some(at("home")),
            path: Some(path),
            prefixes: vec![at("usr/local"), at("linuxbrew"), at("usr")],
        };
        let brew = std::fs::canonicalize(at("brew")).unwrap();
        assert_eq!(
            template_dirs(&env),
            [
                at("home/.lima/_templates"),
                at("brew/share/lima/templates"),
                brew.join("Cellar/lima/2.2/share/lima/templates"),
                at("usr/local/share/lima/templates"),
                at("linuxbrew/share/lima/templates"),
                at("usr/share/lima/templates"),
            ]
        );
        // $LIMA_HOME replaces ~/.lima; $LIMA_TEMPLATES_PATH replaces all.
        let with_home = LookupEnv {
            lima_home: Some(at("lima")),
            ..env.clone()
        };
        assert_eq!(template_dirs(&with_home)[0], at("lima/_templates"));
        let only = LookupEnv {
            templates_path: Some(std::env::join_paths([at("a"), at("b")]).unwrap()),
            ..env.clone()
        };
        assert_eq!(template_dirs(&only), [at("a"), at("b")]);

        // The first directory that has the file wins.
        let dirs = template_dirs(&env);
        write(
            &at("linuxbrew/share/lima/templates/docker.yaml"),
            "cpus: 3\n",
        );
        assert_eq!(
            find("docker", &dirs),
            Some(at("linuxbrew/share/lima/templates/docker.yaml"))
        );
        write(
            &brew.join("Cellar/lima/2.2/share/lima/templates/docker.yaml"),
            "",
        );
        assert_eq!(
            find("docker.yaml", &dirs),
            Some(brew.join("Cellar/lima/2.2/share/lima/templates/docker.yaml"))
        );
        write(&at("home/.lima/_templates/_default/mounts.yaml"), "");
        assert_eq!(
            find("_default/mounts", &dirs),
            Some(at("home/.lima/_templates/_default/mounts.yaml"))
        );
        assert_eq!(find("../../etc/docker", &dirs), None);
        assert_eq!(find("podman", &dirs), None);
    }
}
