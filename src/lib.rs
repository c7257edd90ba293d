//! lwm2m-gateway: LwM2M devices over CoAP/UDP translated to MQTT.

pub mod model;
pub mod coap;
pub mod config;
pub mod cli;
pub mod objects;
pub mod json;
pub mod lwm2m;
pub mod formats;
pub mod mqtt;
