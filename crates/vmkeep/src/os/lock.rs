//! Locks (to be written).
