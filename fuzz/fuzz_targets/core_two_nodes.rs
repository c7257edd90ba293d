#![no_main]
//! `core_endpoint` in its two-node mode only (two nodes sharing a store, with restarts
//! when bit 0x40 of the second byte is set): the second byte's bits 0x02..0x40 forced.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::core_two_nodes(data);
});
