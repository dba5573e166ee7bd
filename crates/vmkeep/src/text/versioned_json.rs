//! A JSON state file that states its format version (`crate::formats`): its
//! `"format"` field, written first and read before the rest, so that a file
//! of a newer format is refused as such rather than misread.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::formats::{self, Format, TooNew};

/// `value` (a struct) as a pretty JSON object with `"format": N` first.
pub fn to_vec<T: Serialize>(format: Format, value: &T) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        format: u32,
        #[serde(flatten)]
        value: &'a T,
    }
    serde_json::to_vec_pretty(&Versioned {
        format: format.current,
        value,
    })
}

/// The file at `path` (its `bytes`) is of a version this build reads: its
/// `format` (absent: 1) is not newer. Bytes that are no JSON object pass:
/// the parse that follows says what is wrong with them.
pub fn check(format: Format, path: &Path, bytes: &[u8]) -> Result<(), TooNew> {
    #[derive(Deserialize)]
    struct FormatOnly {
        #[serde(default = "formats::unversioned")]
        format: u32,
    }
    match serde_json::from_slice::<FormatOnly>(bytes) {
        Ok(FormatOnly { format: found }) => format.check(path, Some(found)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        a: u32,
    }

    #[test]
    fn the_format_comes_first_and_only_a_newer_one_is_refused() {
        let bytes = to_vec(formats::AUTOSTART, &Thing { a: 7 }).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\n  \"format\": 1,"), "{text}");
        let path = Path::new("/x/autostart.json");
        assert_eq!(check(formats::AUTOSTART, path, &bytes), Ok(()));
        assert_eq!(check(formats::AUTOSTART, path, b"{\"a\":1}"), Ok(()));
        assert_eq!(check(formats::AUTOSTART, path, b"garbage"), Ok(()));
        let refused = check(formats::AUTOSTART, path, b"{\"format\":2}").unwrap_err();
        assert_eq!(refused.found, 2);
    }
}
