#![no_main]
//! Stateful: shards sharing a directory driven by arbitrary datagrams, clock jumps, timers and cross-shard deliveries.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::checks::core_endpoint(data);
});
