//! The per-instance event journal (to be written).
