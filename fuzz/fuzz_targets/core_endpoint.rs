#![no_main]
//! Stateful: shards sharing a directory driven by arbitrary datagrams, clock jumps, timers,
//! cross-shard deliveries, MQTT commands and device answers (one final message per command).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::core_endpoint(data);
});
