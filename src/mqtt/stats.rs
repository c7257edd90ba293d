//! Counters of the MQTT client (every connection of every shard), readable from any thread (relaxed atomics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of the MQTT client, summed over its connections. Every field is a relaxed atomic: read them with
/// `load(Ordering::Relaxed)` (or [`MqttStats::get`]).
#[derive(Debug, Default)]
pub struct MqttStats {
    /// PUBLISH packets handed to a connection for the first time, by QoS (resends are not counted).
    pub published: [AtomicU64; 3],
    /// QoS>=1 publishes acknowledged by the broker (PUBACK, or PUBCOMP for QoS 2).
    pub acked: AtomicU64,
    /// Connection attempts after the first one of each connection (failures included).
    pub reconnects: AtomicU64,
    /// Gauge: connections that are up (CONNACK accepted).
    pub connected: AtomicU64,
    /// Gauge: publishes held (pending and in flight).
    pub pending: AtomicU64,
    /// Publishes dropped by the overflow policy (see the module documentation).
    pub dropped_overflow: AtomicU64,
    /// PUBLISH packets delivered by the broker and passed to `Inbound::on_publish`.
    pub inbound: AtomicU64,
    /// Filters sent to the broker in SUBSCRIBE packets (re-subscriptions after a reconnect included).
    pub subscribes: AtomicU64,
    /// SUBACK packets received (each answers one SUBSCRIBE, granted or refused).
    pub subacks: AtomicU64,
    /// Filters sent to the broker in UNSUBSCRIBE packets.
    pub unsubscribes: AtomicU64,
    /// Messages that could not be sent at all (too large, invalid topic or filter, QoS > 2),
    /// filters the broker refused in a SUBACK, and publishes an MQTT 5 broker refused (PUBACK or
    /// PUBREC reason code >= 0x80).
    pub send_errors: AtomicU64,
    /// Connections dropped because the broker sent malformed or unexpected packets.
    pub protocol_errors: AtomicU64,
}

impl MqttStats {
    /// Relaxed load of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
