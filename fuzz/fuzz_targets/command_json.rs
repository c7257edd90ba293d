#![no_main]
//! MQTT command JSON parsing (and the write values and payloads it builds).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::command_json(data);
});
