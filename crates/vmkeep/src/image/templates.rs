//! Built-in templates, for `vmkeep create template:NAME` (or `--template
//! NAME`) and for `base: template:NAME` in any template.
//!
//! vmkeep's own: `tiny` (the default, offline), `debian-12`, `ubuntu-24.04`,
//! `fedora-42` (pinned, digest-checked cloud images). Lima's names, in Lima's
//! shape and written by vmkeep (not copied from Lima): `default`, `ubuntu`,
//! `ubuntu-lts`, `debian`, `fedora`, and the pieces Lima's own templates are
//! built from: `_images/ubuntu-24.04` (also `_images/ubuntu`,
//! `_images/ubuntu-lts`), `_images/debian-12` (`_images/debian`),
//! `_images/fedora-42` (`_images/fedora`) and `_default/mounts`. Where Lima's
//! name means a newer release than vmkeep pins (`ubuntu`, `debian`,
//! `fedora`), vmkeep's is the release it pins; [`NOT_SHIPPED`] lists Lima's
//! templates vmkeep does not ship.

use crate::instance::config::DEFAULT_TEMPLATE;

const UBUNTU_IMAGES: &str = include_str!("templates/_images/ubuntu-24.04.yaml");
const DEBIAN_IMAGES: &str = include_str!("templates/_images/debian-12.yaml");
const FEDORA_IMAGES: &str = include_str!("templates/_images/fedora-42.yaml");
const LIMA_UBUNTU: &str = include_str!("templates/lima-ubuntu.yaml");

/// (name, YAML) of every built-in template.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("tiny", DEFAULT_TEMPLATE),
    ("debian-12", include_str!("templates/debian-12.yaml")),
    ("ubuntu-24.04", include_str!("templates/ubuntu-24.04.yaml")),
    ("fedora-42", include_str!("templates/fedora-42.yaml")),
    ("default", LIMA_UBUNTU),
    ("ubuntu", LIMA_UBUNTU),
    ("ubuntu-lts", LIMA_UBUNTU),
    ("debian", include_str!("templates/lima-debian.yaml")),
    ("fedora", include_str!("templates/lima-fedora.yaml")),
    ("_images/ubuntu-24.04", UBUNTU_IMAGES),
    ("_images/ubuntu-lts", UBUNTU_IMAGES),
    ("_images/ubuntu", UBUNTU_IMAGES),
    ("_images/debian-12", DEBIAN_IMAGES),
    ("_images/debian", DEBIAN_IMAGES),
    ("_images/fedora-42", FEDORA_IMAGES),
    ("_images/fedora", FEDORA_IMAGES),
    (
        "_default/mounts",
        include_str!("templates/_default/mounts.yaml"),
    ),
];

/// Templates Lima ships that vmkeep does not: use Lima's file instead
/// (`vmkeep create ./docker.yaml`), which vmkeep reads in its own form.
pub const NOT_SHIPPED: &[&str] = &[
    "almalinux",
    "alpine",
    "alpine-iso",
    "amazonlinux",
    "apptainer",
    "apptainer-rootful",
    "archlinux",
    "buildkit",
    "centos-stream",
    "debian-11",
    "debian-13",
    "docker",
    "docker-rootful",
    "fedora-41",
    "fedora-43",
    "faasd",
    "k0s",
    "k3s",
    "k8s",
    "opensuse",
    "opensuse-leap",
    "oraclelinux",
    "podman",
    "podman-rootful",
    "rocky",
    "ubuntu-22.04",
    "ubuntu-25.04",
    "ubuntu-25.10",
    "ubuntu-26.04",
    "_default/docker-tuning",
    "_default/memory-tuning",
];

/// Built-in templates where Lima's own, when Lima is installed, is the one
/// to use: vmkeep's `_default/mounts` is Lima's as of 2.0 (the home,
/// read-only), for when Lima is not there.
const LIMAS_FIRST: &[&str] = &["_default/mounts"];

/// Whether Lima's installed copy of `name` goes before vmkeep's.
pub fn prefers_limas(name: &str) -> bool {
    LIMAS_FIRST.contains(&name.strip_suffix(".yaml").unwrap_or(name))
}

/// The built-in template called `name` (`.yaml` may be added, as Lima allows).
pub fn find(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The names users pick from (not the `_images/`, `_default/` pieces).
pub fn names() -> Vec<&'static str> {
    BUILT_IN
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.starts_with('_'))
        .collect()
}

/// Whether `name` is one of Lima's templates vmkeep does not ship.
pub fn is_lima_only(name: &str) -> bool {
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    NOT_SHIPPED.contains(&name)
        || NOT_SHIPPED.iter().any(|n| {
            name.starts_with(&format!("{n}-")) || name.starts_with(&format!("_images/{n}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_with_or_without_yaml_and_limas_others_are_known() {
        assert!(find("debian-12").is_some_and(|t| t.contains("_images/debian-12")));
        assert!(find("_images/debian-12.yaml").is_some_and(|t| t.contains("bookworm")));
        assert!(find("nope").is_none());
        assert!(is_lima_only("docker") && is_lima_only("ubuntu-22.04") && !is_lima_only("debian"));
        assert!(!names().iter().any(|n| n.starts_with('_')));
    }
}
