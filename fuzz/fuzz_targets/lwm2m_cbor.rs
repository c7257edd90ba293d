#![no_main]
//! LwM2M CBOR (11544) and plain CBOR (60) decode and round trip.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.first().is_some_and(|b| b & 0x80 != 0) {
        fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::CBOR, &data[1..]);
    } else {
        fuzz_checks::checks::decode_format(lwm2m_gateway::formats::fmt_id::LWM2M_CBOR, data);
    }
});
