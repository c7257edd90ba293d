//! lwm2m-gateway: LwM2M devices over CoAP/UDP translated to MQTT.

#![forbid(unsafe_code)]

pub use lwm2m_proto::{coap, formats, json, lwm2m, model};

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dtls;
pub mod engine;
pub mod events;
pub mod metrics;
pub mod mqtt;
pub mod objects;
pub mod sim;
pub mod store;
pub mod watch;
