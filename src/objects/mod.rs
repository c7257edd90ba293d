//! The object definitions as the gateway shares them: the protocol core's registry
//! (`lwm2m_proto::objects`), held by every shard as a snapshot of one [`SharedRegistry`]
//! that a watcher thread reloads when the directory changes or on SIGHUP.
//!
//! - [`SharedRegistry`] holds the current registry behind an `Arc`; readers take
//!   a snapshot with [`SharedRegistry::load`], reloads swap it atomically.
//! - [`spawn_watcher`] reloads when the directory changes or on SIGHUP.

pub mod reload;

pub use lwm2m_proto::objects::*;
pub use reload::{spawn_watcher, ReloadError, Reloaded, SharedRegistry};
