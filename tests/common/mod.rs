//! Helpers shared by the end-to-end tests.
// Helpers each test uses a part of, `pub` for the test files that include them.
#![allow(dead_code, unreachable_pub)]

pub mod app;
pub mod coap;
pub mod dtls_client;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod loadgen;
pub mod mosquitto;
pub mod mqtt_client;
pub mod mqtt_thread;
pub mod pki;
pub mod prometheus;
pub mod redis_server;
pub mod webdriver;

/// A JSON document (an MQTT payload, an HTTP body); anything else fails, showing it.
pub fn json(doc: impl AsRef<[u8]>) -> simd_json::OwnedValue {
    let doc = doc.as_ref();
    simd_json::to_owned_value(&mut doc.to_vec())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(doc)))
}
