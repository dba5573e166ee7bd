//! Fuzz target: see `vmkeep::fuzzing::guest_sessions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::guest_sessions(data));
