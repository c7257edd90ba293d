//! The MQTT client of the gateway: [`MqttClient`], a few pipelined broker connections (MQTT 5
//! or 3.1.1, see [`Protocol`]) driven by whoever owns a mio loop. Each shard owns one and
//! publishes on it directly (the client's tests drive one on a thread of their own).
//!
//! [`MqttClient::accept`] takes [`Outbound`] messages. A message goes to connection
//! `lane % connections`, so the messages of one lane keep their order and a subscription
//! filter lives on exactly one connection. PUBLISH packets the broker delivers (commands from
//! applications) go to [`Inbound::on_publish`] with their MQTT 5 message-expiry interval; what
//! it answers at once is queued like any other publish.
//!
//! # Delivery
//! - Publishes go out at their own QoS (0, 1 or 2), pipelined: many packets per syscall, at most
//!   `max_inflight` QoS>=1 publishes awaiting their ack per connection (the rest wait in order).
//! - Every connection uses a clean session and reconnects with exponential backoff (100 ms
//!   doubling to 5 s, with jitter) after a connect failure, a socket error, a refused CONNACK,
//!   a malformed packet or 1.5 x keepalive without any packet from the broker. After a reconnect
//!   it re-subscribes every filter it holds (batched into few SUBSCRIBE packets), re-sends every
//!   unacknowledged QoS>=1 PUBLISH with DUP set (PUBREL for those already PUBREC'd), then the
//!   pending ones. A QoS>=1 publish is never lost while it is held (duplicates are possible).
//! - Connections never look the broker's name up: they take its addresses from a
//!   [`BrokerAddrs`] (looked up at start and again on a thread of its own; attempts go
//!   round the addresses). TLS still verifies the certificate against the name.
//! - Subscribe/Unsubscribe requests are batched too: the changes of one loop turn for one
//!   connection go out in packets of at most 256 filters (and `max_packet_size`); a filter
//!   subscribed and unsubscribed before it went out costs nothing. Subscription changes of a
//!   turn are written before that turn's publishes, and a publish waits for the SUBACKs of
//!   the filters subscribed before it on its connection (`suback_gate.rs`): a subscription is
//!   in place before the publishes queued after it can reach an application.
//! - A filter lives on one connection: the one of its subscribe's lane, or the one that holds
//!   it already; its unsubscribe goes to the connection that holds it.
//!
//! # Buffer and overflow policy
//! At most `cap` publishes are held by a client (pending plus in flight, over its
//! connections) while the broker is slow or away. When a new publish arrives with the buffer
//! full, one message is dropped, in this order of preference:
//! 1. the oldest pending QoS 0 publish (of any connection);
//! 2. if there is none and the new publish is QoS 0: the new publish;
//! 3. otherwise the oldest pending publish of any QoS;
//! 4. if everything held is already in flight: the new publish.
//!
//! Publishes in flight are never dropped. Every drop adds one to
//! [`MqttStats::dropped_overflow`]. Publishes that can never be sent (QoS above 2, empty or
//! wildcard topic, larger than `max_packet_size` or than the broker's MQTT 5 Maximum Packet
//! Size) are dropped and counted in [`MqttStats::send_errors`], as are publishes an MQTT 5
//! broker refuses (reason code >= 0x80).

mod buffer;
mod client;
mod codec;
mod connection;
#[cfg(feature = "embedded-broker")]
mod embedded;
mod holders;
#[cfg(not(feature = "embedded-broker"))]
mod no_embedded_broker;
mod resolve;
mod stats;
mod suback_gate;
mod subscriptions;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{tls_for, MqttClient};
pub use codec::Protocol;
#[cfg(feature = "embedded-broker")]
pub use embedded::start_embedded_broker;
#[cfg(not(feature = "embedded-broker"))]
pub use no_embedded_broker::{start_embedded_broker, NO_EMBEDDED_BROKER};
pub use resolve::BrokerAddrs;
pub use stats::MqttStats;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// `mqtt://host:port`
    Tcp { host: String, port: u16 },
    /// `mqtts://host:port`; `ca_file` (PEM) replaces the webpki roots when given.
    Tls {
        host: String,
        port: u16,
        ca_file: Option<PathBuf>,
    },
}

/// Settings of an MQTT client.
#[derive(Clone)]
pub struct MqttOptions {
    pub server: ServerAddr,
    /// Connection `i` uses `"{client_id}-{i}"`.
    pub client_id: String,
    /// Empty: no credentials sent.
    pub username: String,
    pub password: String,
    /// PINGREQ interval; zero disables keepalive.
    pub keepalive: Duration,
    /// Broker connections (at least 1); the gateway spreads them over its shards.
    pub connections: usize,
    /// QoS>=1 publishes awaiting an ack, per connection.
    pub max_inflight: u16,
    /// Publishes held (pending + in flight) while the broker is slow or away.
    pub buffer_messages: usize,
    /// Largest packet sent or accepted, e.g. 1 MiB.
    pub max_packet_size: usize,
    /// The MQTT version spoken to the broker.
    pub protocol: Protocol,
}

impl std::fmt::Debug for MqttOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttOptions")
            .field("server", &self.server)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("keepalive", &self.keepalive)
            .field("connections", &self.connections)
            .field("max_inflight", &self.max_inflight)
            .field("buffer_messages", &self.buffer_messages)
            .field("max_packet_size", &self.max_packet_size)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// A message for the broker: the protocol core's type (see [`crate::lwm2m::MqttOut`]).
pub use crate::lwm2m::MqttOut as Outbound;

/// A PUBLISH the broker delivered to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// The MQTT 5 message-expiry interval it came with (seconds; a broker forwards what is
    /// left of the publisher's). None with MQTT 3.1.1 or when the publisher set none.
    pub expiry_s: Option<u32>,
}

/// Called by the client's owner for every PUBLISH the broker delivers (commands from
/// applications).
/// Must not block.
pub trait Inbound: Send + 'static {
    /// `replies`: publishes to send in answer; the client queues them like messages from
    /// shards (same size checks and overflow policy).
    fn on_publish(&mut self, msg: &Delivery<'_>, replies: &mut Vec<Outbound>);
}
