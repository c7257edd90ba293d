//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod gateway;
pub mod http;
pub mod mosquitto;
pub mod mqtt_client;
pub mod mqtt_thread;
pub mod pki;
pub mod prometheus;
