//! The host agent (to be written).
