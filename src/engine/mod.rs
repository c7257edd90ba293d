//! The I/O side: shard threads that drive the sans-IO core with real sockets and
//! their own broker connections, the router that hands a command to the shard
//! holding its endpoint, and the start/stop sequence of the whole gateway.

mod admin;
mod backlog;
mod cluster_metrics;
mod dtls_side;
mod gateway;
mod mail;
mod metrics;
mod mqtt_side;
mod restore;
mod router;
mod udp_shard;

pub use gateway::{Gateway, GatewayError};
