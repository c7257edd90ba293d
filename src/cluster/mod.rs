//! Several nodes acting as one gateway through one Redis (`[store] kind = "redis"`):
//! the node's I/O side towards the other nodes. The shards never wait for Redis: they
//! hand their requests (`lwm2m::ClusterRequest`) to the `cluster` thread through a
//! bounded queue (full: the request is answered as a miss at once, counted), and the
//! answers come back through their mailboxes (the [`Deliver`] callback).
//!
//! - `takes.rs`, the `cluster` thread: takes a registration over from the store (the
//!   TAKE script: it becomes this node's), hands it to the shard that asked, and tells
//!   the node that held it;
//! - `notices.rs`, the `cluster-notices` thread: this node's pub/sub channel, where the
//!   other nodes say which registrations they took from it (each is handed to the shard
//!   holding it, which lets it go silently but keeps its command subscription) and,
//!   once their own subscription of its commands is in place, that the kept one may go
//!   (handed to every shard);
//! - `view.rs`: the management API's reads of every node's registrations.

mod notices;
mod stats;
mod takes;
mod view;

pub use stats::ClusterStats;
pub use takes::{ClusterSender, ClusterSide};
pub use view::ClusterView;

use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::identity::PeerIdentity;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the cluster side hands a shard's core (as `Input::ClusterAdopt`, `ClusterMiss`,
/// `ClusterRelease`, `ClusterUnsubscribe`).
#[derive(Debug)]
pub enum ClusterAnswer {
    Adopt {
        endpoint: Box<Endpoint>,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
        /// The node it was taken from (None: nobody, or this node).
        from: Option<Box<str>>,
    },
    Miss {
        location: u64,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
    /// A take by address found no registration there (or failed).
    PeerMiss {
        peer: SocketAddr,
        datagram: Vec<u8>,
    },
    Release {
        name: Box<str>,
        location: u64,
    },
    /// The node that took `name` at `location` over has its subscription in place.
    Unsubscribe {
        name: Box<str>,
        location: u64,
    },
    /// A command for an endpoint this node holds, forwarded by the node the broker
    /// delivered it to (or one the owner could not be found for, handed back): handled
    /// as delivered, never forwarded again.
    Command {
        topic: String,
        payload: Vec<u8>,
        expiry_s: Option<u32>,
    },
}

/// Hands an answer to shard `shard`'s mailbox.
pub type Deliver = Arc<dyn Fn(u16, ClusterAnswer) + Send + Sync>;
