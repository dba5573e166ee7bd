//! QMP client (to be written).
