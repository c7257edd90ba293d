//! The sans-IO LwM2M core: everything a shard does with datagrams, commands and
//! timers, as state machines that take `now` and produce outputs. No sockets, no
//! clock, no threads here.

pub mod admission;
pub mod block_server;
pub mod blockwise;
pub mod bootstrap;
pub mod bootstrap_flow;
pub mod bs_config;
mod cluster;
mod cluster_store;
pub mod command;
mod cx;
pub mod directory;
mod dm;
pub mod dm_json;
pub mod endpoint;
pub mod handover;
pub mod identity;
pub mod info;
mod intern;
pub mod io;
pub mod location;
pub mod output;
mod peer_takes;
pub mod publish;
pub mod record;
mod register;
pub mod registration;
mod registrations;
mod replies;
mod restore;
pub mod routing;
mod security;
pub mod send;
pub mod session;
pub mod settings;
pub mod shed;
pub mod stats;
pub mod table;
mod takeover;
pub mod template;
mod transfer;

mod core;

pub use self::core::ShardCore;
pub use bootstrap::{BootstrapEvent, BootstrapStatus, PskCredential};
pub use bootstrap_flow::BsRefusal;
pub use bs_config::{
    BootstrapConfig, BootstrapConfigs, BootstrapSource, SecurityMode, ServerAccount,
};
pub use directory::Directory;
pub use identity::{PeerIdentity, PskPolicy};
pub use io::{Input, Output};
pub use output::{AuthRequest, ClusterRequest, MqttOut, Outputs, ShardMsg, StoreChange, Timer};
pub use routing::{Resolved, RoutedCommand};
pub use settings::CoreSettings;
pub use stats::CoreStats;

#[cfg(test)]
mod tests;
