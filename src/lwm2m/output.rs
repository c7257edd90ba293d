//! What the core asks its driver to do: datagrams to send, MQTT messages, timers,
//! and messages for other shards. The driver drains these after every input.

use super::endpoint::Endpoint;
use crate::dtls::PeerIdentity;
use std::net::SocketAddr;
use std::sync::Arc;

/// An MQTT action for the shard's broker connections (the MQTT client's own message
/// type, so nothing is converted on the way). For a subscription change, `lane` names
/// the home shard of the filter.
pub use crate::mqtt::Outbound as MqttOut;

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
    /// For the driver's transport (DTLS handshake timers); never armed by the core.
    Transport,
    /// For the driver: retry cross-shard messages a full mailbox refused; never armed
    /// by the core.
    MailboxRetry,
    /// The driver's MQTT connections need their timers run (reconnect, keepalive),
    /// or a shutdown flush reached its deadline; not for the core.
    Mqtt,
}

/// Work for a shard that arrives through its mailbox.
#[derive(Debug)]
pub enum ShardMsg {
    /// The authentication server's answer to the Register held under `ticket`.
    AuthResult { ticket: u64, allowed: bool },
    /// A command from the management API for a named endpoint.
    CommandFor { name: String, payload: Vec<u8> },
    /// The management API asks for this shard's registrations (one, or all).
    Clients {
        name: Option<String>,
        reply: crossbeam_channel::Sender<Vec<crate::api::ClientInfo>>,
    },
    /// The management API asks for the endpoint name of the registration whose
    /// clientid (its `device_id` parameter) is `clientid`.
    FindClientId {
        clientid: String,
        reply: crossbeam_channel::Sender<Option<String>>,
    },
    /// The management API asks for the last result of a read or discover.
    Lookup {
        name: String,
        path: String,
        op: super::command::Op,
        reply: crossbeam_channel::Sender<crate::api::LookupAnswer>,
    },
    /// The management API removes a registration.
    Kick {
        name: String,
        reply: crossbeam_channel::Sender<bool>,
    },
    /// New settings applied at run time; the shard answers once they apply (so the
    /// management API's answer means every shard has them).
    Settings {
        settings: std::sync::Arc<super::CoreSettings>,
        applied: crossbeam_channel::Sender<()>,
    },
    /// A command an MQTT application published (from the shard whose broker connection
    /// received it, or from a shard forwarding it).
    Command {
        topic: String,
        payload: Vec<u8>,
        /// Times it was forwarded between shards (bounded).
        hops: u8,
        /// Its MQTT 5 message-expiry interval and when a shard first took it.
        arrival: super::command::Arrival,
    },
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
    /// The owner no longer had the endpoint.
    TakeoverMiss {
        location: u64,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
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
    pub mqtt: Vec<MqttOut>,
    pub timers: Vec<(u64, Timer)>,
    pub to_shards: Vec<(u16, ShardMsg)>,
    /// Registers to check with the authentication server: (ticket, request).
    pub auth: Vec<(u64, crate::auth::AuthRequest)>,
}

impl Outputs {
    /// Queues a datagram written by `f` into the shared buffer.
    pub fn datagram(&mut self, to: SocketAddr, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        f(&mut self.buf);
        self.datagrams
            .push((to, start as u32, self.buf.len() as u32, self.secure_input));
    }

    /// Hands every queued datagram to `f` and clears them. For a shard without
    /// DTLS; with DTLS use [`ShardCore::drain_datagrams`](super::ShardCore::drain_datagrams),
    /// which says which datagrams must be encrypted.
    pub fn drain_datagrams(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) {
        self.drain_tagged(|to, _, b| f(to, b));
    }

    /// Like `drain_datagrams`, with whether each was written for a DTLS input.
    pub(super) fn drain_tagged(&mut self, mut f: impl FnMut(SocketAddr, bool, &[u8])) {
        for (to, s, e, secure) in self.datagrams.drain(..) {
            f(to, secure, &self.buf[s as usize..e as usize]);
        }
        self.buf.clear();
    }

    pub fn pending_datagrams(&self) -> usize {
        self.datagrams.len()
    }
}
