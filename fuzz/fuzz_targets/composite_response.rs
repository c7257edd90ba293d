#![no_main]
//! Stateful: a LwM2M 1.1 device sent read-composite, observe-composite and
//! cancel-observe-composite commands answers them with fuzzed responses and
//! notifications (formats, codes, Observe, Block2, payloads).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::composite_response(data);
});
