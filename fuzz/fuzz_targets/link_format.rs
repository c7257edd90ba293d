#![no_main]
//! Registration object lists and link-format parsing.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::link_format(data);
});
