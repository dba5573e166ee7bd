//! Fuzz target: see `vmkeep::fuzzing::qmp_lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::qmp_lines(data));
