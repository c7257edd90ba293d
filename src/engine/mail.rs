//! What a shard's mailbox carries and what its timer wheel holds: its core's inputs from
//! other shards, and the requests of the management API and the authentication pool,
//! which the shard answers by asking its core (the core answers by return value and
//! never sees a channel); and the shard's own timers beside the core's.

use crate::api::{ClientInfo, LookupAnswer};
use crate::lwm2m::command::Op;
use crate::lwm2m::{CoreSettings, ShardMsg, Timer};
use crossbeam_channel::Sender;
use std::net::SocketAddr;
use std::sync::Arc;

/// A message in a shard's mailbox.
#[derive(Debug)]
pub(super) enum ShardMail {
    /// For the core: from another shard's core, or a command routed here.
    Core(ShardMsg),
    /// A DTLS datagram from `peer` with a connection ID this shard issued, received
    /// by another shard's socket (the device's new address hashed there).
    DtlsRecord { peer: SocketAddr, data: Vec<u8> },
    /// The cluster side's answer (`[store] kind = "redis"`): a registration taken over
    /// from the store, a take that found nothing, a registration another node took.
    Cluster(crate::cluster::ClusterAnswer),
    /// The authentication server's answer to the Register held under `ticket`.
    AuthResult { ticket: u64, allowed: bool },
    /// A command from the management API for a named endpoint.
    ApiCommand { name: String, payload: Vec<u8> },
    /// The management API asks for this shard's registrations (one, or all).
    Clients {
        name: Option<String>,
        reply: Sender<Vec<ClientInfo>>,
    },
    /// The management API asks for the endpoint name of the registration whose
    /// clientid (its `device_id` parameter) is `clientid`.
    FindClientId {
        clientid: String,
        reply: Sender<Option<String>>,
    },
    /// The management API asks for the last result of a read or discover.
    Lookup {
        name: String,
        path: String,
        op: Op,
        reply: Sender<LookupAnswer>,
    },
    /// The management API removes a registration.
    Kick { name: String, reply: Sender<bool> },
    /// New settings applied at run time; the shard answers once they apply (so the
    /// management API's answer means every shard has them).
    Settings {
        settings: Arc<CoreSettings>,
        applied: Sender<()>,
    },
    /// Serve devices or not (the management API's enable); when `on` is false the shard
    /// ends every registration it holds (as kicked) and answers how many.
    Serve { on: bool, ended: Sender<usize> },
}

/// An entry of a shard's timer wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ShardTimer {
    /// The core's.
    Core(Timer),
    /// The DTLS server's handshake and idle timers.
    Transport,
    /// Retry cross-shard messages a full mailbox refused.
    MailboxRetry,
    /// The broker connections need their timers run (reconnect, keepalive), or a
    /// shutdown flush reached its deadline.
    Mqtt,
}
