//! The I/O side: shard threads that drive the sans-IO core with real sockets, the
//! MQTT router that hands commands to the shard holding an endpoint, and the
//! start/stop sequence of the whole gateway.

mod admin;
mod backlog;
mod dtls_side;
mod gateway;
mod metrics;
mod router;
mod udp_shard;

pub use gateway::{Gateway, GatewayError};
