//! Sans-IO tests of the core on a virtual clock: several shards, a shared directory,
//! cross-shard messages delivered synchronously, timers fired by advancing time.

mod block_server;
mod blocks;
mod blockwise;
mod bootstrap;
mod cluster_store;
mod composite;
mod dm;
mod dtls;
mod harness;
mod registration;
mod send;
mod shed;
mod store;
