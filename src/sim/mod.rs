//! Simulated LwM2M devices over real UDP, for the end-to-end tests and the load
//! generator. One socket bound to `0.0.0.0:port` speaks for every device: each
//! device has its own loopback source address (all of 127.0.0.0/8 is local on
//! Linux), sent and received with IP_PKTINFO. The gateway sees as many peers as
//! there are devices, spread over its shards by the SO_REUSEPORT hash.

pub mod client;
mod fleet;

pub use fleet::{
    device_addr, device_index, Device, Fleet, FleetConfig, Handler, Outcome, ServerRequest,
};
