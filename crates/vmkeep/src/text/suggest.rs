//! "Did you mean ...?" for misspelt field and name words.

/// The candidate closest to `word`, if it is close enough to be a likely
/// misspelling (a normalised Damerau-Levenshtein similarity of at least 0.7,
/// or the same word in another case).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let score = if candidate.to_ascii_lowercase() == lower {
            1.0
        } else {
            strsim::normalized_damerau_levenshtein(&lower, &candidate.to_ascii_lowercase())
        };
        if score >= 0.7 && best.is_none_or(|(_, s)| score > s) {
            best = Some((candidate, score));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_words_are_suggested_and_far_ones_not() {
        let fields = ["cpus", "memory", "disk", "provision", "portForwards"];
        assert_eq!(closest("cpu", fields), Some("cpus"));
        assert_eq!(closest("memroy", fields), Some("memory"));
        assert_eq!(closest("provisions", fields), Some("provision"));
        assert_eq!(closest("portforwards", fields), Some("portForwards"));
        assert_eq!(closest("zzz", fields), None);
    }
}
