//! The built-in tiny image (to be written).
