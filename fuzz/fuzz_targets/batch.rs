#![no_main]
//! See `spate_fuzz::intake` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate_fuzz::intake::check_batch(data));
