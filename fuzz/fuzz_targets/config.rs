//! Fuzz target: see `vmkeep::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::config(data));
