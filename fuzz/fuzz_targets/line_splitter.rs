//! Fuzz target: see `vmkeep::fuzzing::line_splitter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkeep::fuzzing::line_splitter(data));
