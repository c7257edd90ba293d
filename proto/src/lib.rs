//! lwm2m-proto: the protocol core of lwm2m-gateway, sans-IO and deterministic.
//!
//! A shard's [`lwm2m::ShardCore`] takes every input through one
//! [`handle(now, Input)`](lwm2m::ShardCore::handle) and hands every output to its driver
//! through one [`drain`](lwm2m::ShardCore::drain) (see [`lwm2m::io`]): it owns no socket,
//! thread, channel or lock and never reads a clock; `now` comes in with each input. The
//! types it speaks (what to publish, authentication requests, peer identities, what the
//! management API sees) are its own, and the gateway's I/O side imports them.
//!
//! - [`coap`]: CoAP (RFC 7252) messages, parsed as borrowed views and written into a
//!   caller's buffer.
//! - [`formats`]: the LwM2M content formats, decoded into typed values and encoded for
//!   writes.
//! - [`model`], [`objects`]: paths, resource types and the OMA object definitions.
//! - [`lwm2m`]: the shard's machines (registrations, cluster, device management,
//!   block-wise server) and their dispatcher.
//! - [`json`]: the JSON writing the MQTT payloads share.

#![forbid(unsafe_code)]

pub mod coap;
pub mod formats;
pub mod json;
pub mod lwm2m;
pub mod model;
pub mod objects;
