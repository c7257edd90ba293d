#![no_main]
//! DTLS records and handshakes from several peers against the sans-IO DTLS server.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::dtls_records(data);
});
