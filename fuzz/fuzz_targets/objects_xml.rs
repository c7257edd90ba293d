#![no_main]
//! OMA object XML parsing.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::objects_xml(data);
});
