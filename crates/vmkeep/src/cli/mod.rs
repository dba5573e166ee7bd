//! Command-line verbs (to be written).
