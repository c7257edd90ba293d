#![no_main]
//! OMA JSON decode and round trip.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::OMA_JSON, data);
});
