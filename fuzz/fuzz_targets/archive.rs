//! Fuzz target: see `vmkeep_protocol::fuzzing::archive`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep_protocol::fuzzing::archive(data));
