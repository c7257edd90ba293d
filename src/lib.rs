//! lwm2m-gateway: LwM2M devices over CoAP/UDP translated to MQTT.

pub mod api;
pub mod auth;
pub mod cli;
pub mod coap;
pub mod config;
pub mod dtls;
pub mod engine;
pub mod formats;
pub mod json;
pub mod lwm2m;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod objects;
pub mod sim;
pub mod watch;
