//! UDP sockets: SO_REUSEPORT, batching. Every `unsafe` of the project lives in this crate.
