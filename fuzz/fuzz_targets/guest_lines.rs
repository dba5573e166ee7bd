//! Fuzz target: see `vmkeep::fuzzing::guest_lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::guest_lines(data));
