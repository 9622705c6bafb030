#![no_main]
//! See `spate_fuzz::cluster_state` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate_fuzz::cluster_state::check(data));
