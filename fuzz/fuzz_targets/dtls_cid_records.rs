#![no_main]
//! Records with a DTLS connection ID (RFC 9146) against an established session:
//! genuine, replayed, altered, forged, another shard's.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::dtls_cid_records(data);
});
