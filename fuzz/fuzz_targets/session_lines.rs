//! Fuzz target: see `vmkeep_protocol::fuzzing::session_lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep_protocol::fuzzing::session_lines(data));
