#![no_main]
//! The LwM2M Send path (`POST /dp`): arbitrary bodies in any content format, whole or
//! block-wise, from the registered address or another.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::send::send(data);
});
