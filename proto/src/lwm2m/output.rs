//! What the core asks its driver to do: datagrams to send, MQTT messages, timers,
//! authentication requests and messages for other shards, held until the driver drains
//! them (`io.rs`).

use super::endpoint::Endpoint;
use super::identity::PeerIdentity;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the core asks of the shard's broker connections (the MQTT client takes it as
/// it is). `lane` chooses the connection: messages with equal lanes go out on one
/// connection, in order. A publish's lane is its endpoint's [`name_hash`], so one
/// endpoint's messages keep their order; a subscribe's is the lane of the registration
/// that asks for it, so its register message waits on the same connection for the
/// SUBACK. An unsubscribe goes to whichever connection holds the filter (its lane is
/// the filter's home shard).
///
/// [`name_hash`]: super::publish::name_hash
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttOut {
    Publish {
        lane: u32,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    Subscribe {
        lane: u32,
        filter: String,
        qos: u8,
    },
    Unsubscribe {
        lane: u32,
        filter: String,
    },
}

/// A timer the core arms; it comes back through `handle_timer` when due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Registration lifetime of the endpoint in `slot`, valid while the slot's
    /// generation equals `gen`.
    Expire { slot: u32, gen: u32 },
    /// Retransmission or separate-response wait of the exchange with `token`, for
    /// the endpoint of incarnation `inc` in `slot`.
    Retransmit { slot: u32, token: u32, inc: u32 },
    /// Deadline of a queued command (its MQTT message expiry or `queue.default_ttl`).
    QueueTtl { slot: u32, token: u32 },
    /// Lifetime of a partial block-wise request body a device is sending.
    BlockExpire { id: u32 },
    /// A Register waited too long for the authentication server.
    AuthTimeout { ticket: u64 },
    /// A takeover of the registration at `location` from another shard got no answer
    /// in time: the next request for it asks again.
    TakeoverTimeout { location: u64 },
    /// The command subscription of the registration at `location`, which another node
    /// took over, was kept for the handover (`handover.rs`): give it up now if the
    /// other node has not said that its own is in place.
    HandoverDeadline { location: u64 },
    /// The request in flight of bootstrap `id` (`bootstrap.rs`): retransmit it or time it
    /// out; stale unless `seq` is the run's latest.
    Bootstrap { id: u32, seq: u32 },
}

/// What one shard's core tells another's (through the engine's mailboxes), and commands
/// the router resolved for a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A command an MQTT application published (from the shard whose broker connection
    /// received it, or from a shard forwarding it to the endpoint's).
    Command(super::routing::RoutedCommand),
    /// A command subscription change for this shard's broker connections, from the
    /// shard whose registration `(name, location)` asked for it (this shard was the
    /// filter's home when it was sent).
    Subscription {
        change: MqttOut,
        name: Box<str>,
        location: u64,
    },
    /// The endpoint registered again on another shard: drop this registration.
    /// The subscription stays when the new registration uses the same mountpoint.
    Evict {
        name: Box<str>,
        location: u64,
        new_mountpoint: Box<str>,
    },
    /// A datagram for a registration this shard holds arrived at shard `from`
    /// (NAT rebinding): hand the endpoint over.
    Takeover {
        location: u64,
        from: u16,
        peer: SocketAddr,
        datagram: Vec<u8>,
        /// The DTLS identity the datagram arrived with (None: plain CoAP).
        identity: Option<Arc<PeerIdentity>>,
    },
    /// The endpoint handed over, with the datagram that asked for it.
    Adopt {
        endpoint: Box<Endpoint>,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
    /// The datagram that asked for a takeover was a retransmission the owner had
    /// answered already: the receiving shard sends the cached reply.
    CachedReply {
        peer: SocketAddr,
        reply: super::endpoint::LastReply,
        location: u64,
        /// The retransmitted request (handed back, not copied).
        datagram: Vec<u8>,
        /// It arrived over DTLS: the reply goes back encrypted.
        secure: bool,
    },
    /// A bootstrap of `name` started on shard `from` at `at_ms` (the device asked again
    /// from an address another shard serves): an older run of that name here ends
    /// without a message, so a device has one bootstrap at a time across the shards.
    BootstrapStarted {
        name: Box<str>,
        from: u16,
        at_ms: u64,
    },
    /// The owner no longer had the endpoint.
    TakeoverMiss {
        location: u64,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
}

/// A change of the stored registrations (`[store]`), for the driver's store writer.
/// Changes of one shard arrive in order; those of different shards do not, which
/// [`StoreChange::Remove`] allows for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// The registration's record (`record.rs`), kept under its name (replacing any).
    /// `claim`: a new registration (a Register), which takes the name over from
    /// whichever node of a cluster held it; any other change (an Update, an
    /// observation) applies only while this node still holds the name.
    Put {
        name: Box<str>,
        location: u64,
        record: Vec<u8>,
        claim: bool,
    },
    /// The registration of `name` at `location` ended: its record goes, unless the one
    /// kept under the name is of another location (a newer registration, possibly
    /// written by another shard first).
    Remove { name: Box<str>, location: u64 },
}

/// What the core asks of the nodes sharing its store (`CoreSettings::shared_store`); the
/// driver's I/O side answers a take through [`Input::ClusterAdopt`] or
/// [`Input::ClusterMiss`].
///
/// [`Input::ClusterAdopt`]: super::io::Input::ClusterAdopt
/// [`Input::ClusterMiss`]: super::io::Input::ClusterMiss
#[derive(Debug)]
pub enum ClusterRequest {
    /// The registration `name` at `location`, taken over from node `node`, had its
    /// command filter `filter` subscribed (the `MqttOut::Subscribe` drained just before
    /// this, on this shard's broker connections, coalesced when the filter was held
    /// already). Node `node` keeps its own subscription of the filter meanwhile: once
    /// the broker acknowledged every subscribe queued up to here on the connection
    /// holding `filter`, tell it (`Input::ClusterUnsubscribe` there) to give its own
    /// up; at once when no connection of this shard holds `filter` (its home is another
    /// shard of this node, where it was subscribed before). Nothing is answered to the
    /// core.
    Subscribed {
        node: Box<str>,
        name: Box<str>,
        location: u64,
        filter: String,
    },
    /// A request (`datagram` from `peer`, with `identity`) for the registration at
    /// `location`, which no shard of this node holds: take it over from the store (it
    /// becomes this node's), and hand it back with the request.
    Take {
        location: u64,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
    /// A plain CoAP `datagram` (a notification, a Send in one datagram) from `peer`, an address no
    /// registration of this node has: take over the registration the store has at that
    /// address, if any (`peer_takes.rs`), and hand it back with the datagram
    /// ([`Input::ClusterAdopt`]; none: [`Input::ClusterPeerMiss`]). When the store cannot
    /// be asked (unreachable, the I/O side's queue full) nothing is answered: the
    /// datagrams of that address are dropped until the lookup times out
    /// (`peer_takes.rs`), then asked again; a reset would end an observation on the
    /// device.
    ///
    /// [`Input::ClusterPeerMiss`]: super::io::Input::ClusterPeerMiss
    TakePeer { peer: SocketAddr, datagram: Vec<u8> },
}

/// What the authentication server is told about a registering device.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthRequest {
    pub endpoint_name: String,
    pub clientid: String,
    pub username: String,
    pub password: String,
    /// The device's IP address, without port.
    pub peerhost: String,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("endpoint_name", &self.endpoint_name)
            .field("clientid", &self.clientid)
            .field("username", &self.username)
            .field("password", &"***")
            .field("peerhost", &self.peerhost)
            .finish()
    }
}

/// How a bootstrap went, as published (`status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapStatus {
    Started,
    Finished,
    Failed,
}

impl BootstrapStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }
}

/// PSK credentials a finished bootstrap gave the device for a server.
#[derive(Clone, PartialEq, Eq)]
pub struct PskCredential {
    pub uri: String,
    pub identity: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PskCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskCredential")
            .field("uri", &self.uri)
            .field("identity", &self.identity)
            .field("key", &"***")
            .finish()
    }
}

/// A bootstrap's progress, for the driver (`Output::Bootstrap`): the management API keeps
/// each device's last outcome, and a finished bootstrap's PSK credentials for this
/// gateway go into its PSK store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapEvent {
    pub endpoint: String,
    pub status: BootstrapStatus,
    /// Failed: which step and what the device answered.
    pub error: Option<String>,
    /// Finished: the PSK accounts the device was given.
    pub credentials: Vec<PskCredential>,
}

/// Output buffers, owned by the core and drained by the driver.
#[derive(Debug, Default)]
pub struct Outputs {
    /// (to, start, end, written while handling a DTLS input).
    datagrams: Vec<(SocketAddr, u32, u32, bool)>,
    buf: Vec<u8>,
    /// Set while the core handles an input that arrived over DTLS: what it
    /// writes meanwhile (replies) must go back encrypted.
    pub(super) secure_input: bool,
    /// The driver's broker connections are congested (`Input::MqttCongested`): shed
    /// new events rather than acknowledge them.
    pub(super) congested: bool,
    /// How many more events that publish may be acknowledged before the driver looks
    /// at its broker connections again (`Input::MqttRoom`); None: no limit given.
    pub(super) room: Option<u32>,
    pub mqtt: Vec<MqttOut>,
    pub timers: Vec<(u64, Timer)>,
    pub to_shards: Vec<(u16, ShardMsg)>,
    /// Registers to check with the authentication server: (ticket, request).
    pub auth: Vec<(u64, AuthRequest)>,
    /// Bootstraps' progress, for the driver.
    pub bootstrap: Vec<BootstrapEvent>,
    /// Registrations that ended, for the store.
    pub store: Vec<StoreChange>,
    /// Requests for the other nodes sharing the store.
    pub cluster: Vec<ClusterRequest>,
    /// Table slots whose registration changed what its stored record holds; their
    /// records are written when the outputs are drained (once per slot and drain).
    pub store_dirty: Vec<u32>,
    /// Those of them that are new registrations (their record claims the name).
    pub store_claimed: Vec<u32>,
}

impl Outputs {
    /// Whether the next event that would publish (a Register, an Update, a Send, a
    /// notification, a bootstrap) must be shed rather than acknowledged: the broker
    /// connections are congested, or the room the driver gave (`Input::MqttRoom`) is
    /// used up. An event not shed is counted against the room.
    pub(super) fn shed_next(&mut self) -> bool {
        if self.congested || self.room == Some(0) {
            return true;
        }
        if let Some(r) = &mut self.room {
            *r -= 1;
        }
        false
    }

    /// Queues a datagram written by `f` into the shared buffer.
    pub fn datagram(&mut self, to: SocketAddr, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        f(&mut self.buf);
        self.datagrams
            .push((to, start as u32, self.buf.len() as u32, self.secure_input));
    }

    /// Queues a datagram that must go encrypted (`secure`) or may go plain, whatever
    /// input is being handled (a request of the gateway's own, or its retransmission).
    pub fn datagram_tagged(&mut self, to: SocketAddr, secure: bool, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        f(&mut self.buf);
        self.datagrams
            .push((to, start as u32, self.buf.len() as u32, secure));
    }

    /// Hands every queued datagram to `f` with whether it was written for a DTLS input,
    /// and clears them.
    pub(super) fn drain_tagged(&mut self, mut f: impl FnMut(SocketAddr, bool, &[u8])) {
        for (to, s, e, secure) in self.datagrams.drain(..) {
            f(to, secure, &self.buf[s as usize..e as usize]);
        }
        self.buf.clear();
    }

    /// The registration in `slot` changed what its stored record holds.
    pub fn stored(&mut self, slot: u32) {
        self.store_dirty.push(slot);
    }

    /// The registration in `slot` is new (a Register): its record claims the name.
    pub fn claimed(&mut self, slot: u32) {
        self.store_dirty.push(slot);
        self.store_claimed.push(slot);
    }

    pub fn pending_datagrams(&self) -> usize {
        self.datagrams.len()
    }
}
