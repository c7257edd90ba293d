#![no_main]
//! text/plain, opaque and link-format content decode and round trip.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.first().map(|b| b % 3) {
        Some(0) => {
            fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::TEXT, &data[1..])
        }
        Some(1) => {
            fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::OPAQUE, &data[1..])
        }
        Some(_) => {
            fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::LINK, &data[1..])
        }
        None => {}
    }
});
