#![no_main]
//! CoAP parse, option iteration, unique re-encoding.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::coap_message(data);
});
