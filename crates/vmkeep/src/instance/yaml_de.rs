//! Deserialization helpers that keep the YAML location of an error.
//!
//! serde_yaml_ng attaches the line and column of the value being read to an
//! error raised *while* a visitor runs; an error raised after a value was
//! read gets the position of an enclosing value instead. So every check
//! here runs inside a visitor: the error then names the offending value's
//! own line.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess};

/// `null` means "not set" (Lima's templates write `cpus: null` for "the
/// default"): a field with this is `None` both when absent and when null.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// Deserialize a scalar (string, number or boolean) as text and check it;
/// the error message becomes serde's, which carries the YAML location.
pub fn parse_checked<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    /// Takes the scalar as text. Visiting (rather than buffering through an
    /// untagged enum) keeps the parser at the value, so an error carries the
    /// value's own line.
    struct ScalarText<F>(F);

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> de::Visitor<'de> for ScalarText<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, a string or a boolean")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.0)(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
            self.visit_str(if b { "true" } else { "false" })
        }

        /// `null` reaches a check only where the field is not an `Option`
        /// (the `MustBe...` settings): as the empty text.
        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            self.visit_str("")
        }
    }

    d.deserialize_any(ScalarText(parse))
}

/// Deserialize a mapping as `R` (a derived struct, with its own unknown-field
/// checks) and then check it as a whole; a failed check names the mapping's
/// own line.
pub fn checked_map<'de, D, R, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct Whole<R, F> {
        expecting: &'static str,
        check: F,
        raw: PhantomData<R>,
    }

    impl<'de, R, T, F> de::Visitor<'de> for Whole<R, F>
    where
        R: Deserialize<'de>,
        F: FnOnce(R) -> Result<T, String>,
    {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.check)(raw).map_err(de::Error::custom)
        }
    }

    d.deserialize_map(Whole {
        expecting,
        check,
        raw: PhantomData,
    })
}

/// Why a Lima setting cannot be used here, and what to do instead.
pub trait Refusal {
    const MESSAGE: &'static str;
}

/// A list or map setting vmkeep does not implement: accepted only when
/// empty (or null), else refused with [`Refusal::MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MustBeEmpty<R>(PhantomData<R>);

impl<'de, R: Refusal> Deserialize<'de> for MustBeEmpty<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<R>(PhantomData<R>);

        impl<'de, R: Refusal> de::Visitor<'de> for Visitor<R> {
            type Value = MustBeEmpty<R>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an empty list or map")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(R::MESSAGE));
                }
                Ok(MustBeEmpty(PhantomData))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(R::MESSAGE));
                }
                Ok(MustBeEmpty(PhantomData))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MustBeEmpty(PhantomData))
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MustBeEmpty(PhantomData))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(E::custom(R::MESSAGE))
            }
        }

        d.deserialize_any(Visitor(PhantomData))
    }
}

/// A boolean setting vmkeep cannot honour when it is on: `false` (or null)
/// is accepted, `true` refused with [`Refusal::MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MustBeOff<R>(PhantomData<R>);

impl<'de, R: Refusal> Deserialize<'de> for MustBeOff<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| match text {
            "false" | "" => Ok(MustBeOff(PhantomData)),
            "true" => Err(R::MESSAGE.to_string()),
            other => Err(format!("{other:?} is not true or false")),
        })
    }
}

/// Any scalar, kept as text (Lima writes `param:` values and `env:` values
/// as strings, numbers or booleans alike).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_checked(d, |text| Ok(ScalarString(text.to_string())))
    }
}
