#![no_main]
//! See `spate_fuzz::dns` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate_fuzz::dns::check_structured(data));
