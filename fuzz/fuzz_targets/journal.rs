//! Fuzz target: see `vmkeep::fuzzing::journal`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::journal(data));
