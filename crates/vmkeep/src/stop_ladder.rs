//! The stop ladder (to be written).
