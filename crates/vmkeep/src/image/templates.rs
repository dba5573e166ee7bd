//! Built-in templates: `vmkeep create NAME --template NAME` takes one of these
//! when no file of that name exists. `tiny` (the default) works offline;
//! the others download pinned, digest-checked distribution cloud images.

use crate::instance::config::DEFAULT_TEMPLATE;

/// (name, YAML) of every built-in template.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("tiny", DEFAULT_TEMPLATE),
    ("debian-12", include_str!("templates/debian-12.yaml")),
    ("ubuntu-24.04", include_str!("templates/ubuntu-24.04.yaml")),
    ("fedora-42", include_str!("templates/fedora-42.yaml")),
];

/// The built-in template called `name`.
pub fn find(name: &str) -> Option<&'static str> {
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The names, for messages.
pub fn names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Config;
    use crate::instance::config::{DigestAlgorithm, ImageArch, Location};

    #[test]
    fn every_template_is_valid_and_cloud_ones_are_pinned() {
        for (name, text) in BUILT_IN {
            let config = Config::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            if *name == "tiny" {
                assert!(!config.is_cloud());
                continue;
            }
            assert!(config.is_cloud(), "{name}");
            assert!(
                config.images.iter().any(|i| i.arch == ImageArch::X86_64),
                "{name}"
            );
            for image in &config.images {
                let Location::Url(url) = &image.location else {
                    panic!("{name}: {:?} is not a URL", image.location)
                };
                assert!(url.starts_with("https://"), "{name}: {url}");
                let digest = image
                    .digest
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: {url} unpinned"));
                assert!(matches!(
                    digest.algorithm,
                    DigestAlgorithm::Sha256 | DigestAlgorithm::Sha512
                ));
            }
        }
        assert_eq!(
            find("debian-12").map(|t| t.contains("bookworm")),
            Some(true)
        );
        assert!(find("nope").is_none());
    }
}
