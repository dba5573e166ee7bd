//! VM images: the built-in tiny image.

pub mod tiny;
