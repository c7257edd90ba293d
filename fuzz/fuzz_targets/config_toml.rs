#![no_main]
//! Configuration TOML parse and validation.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::config_toml(data);
});
