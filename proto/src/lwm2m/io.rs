//! The core's contract with its driver: every input goes through [`ShardCore::handle`], every
//! output comes out of [`ShardCore::drain`], and the management API's questions are answered
//! by return value ([`ShardCore::client_infos`], [`ShardCore::find_client_id`],
//! [`ShardCore::lookup`], and [`ShardCore::kick`], the one input with an answer).
//!
//! A driver's loop turn, for each input it has (a datagram, a due timer, a mailbox message,
//! a command its broker connection delivered):
//!
//! 1. `core.handle(now, input)`, `now` being the shard's clock in milliseconds (the core
//!    never reads a clock);
//! 2. `core.drain(|output| ...)`: datagrams to send (those marked `secure` only over DTLS,
//!    never in plain text), MQTT actions for the shard's broker connections, timers to arm,
//!    authentication requests, messages for other shards, bootstraps' progress, then
//!    store changes (`[store]`), then requests for the other nodes sharing the store,
//!    in that order;
//! 3. what the driver could not do becomes an input again: a secure datagram without a
//!    session is [`Input::SessionClosed`], a command another shard's mailbox could not
//!    take is [`Input::Undelivered`], an authentication request the pool refused is a
//!    denying [`Input::AuthResult`]; then it drains again, until nothing is left.
//!
//! The driver never writes into the core otherwise; the core never blocks, and owns no
//! socket, thread, channel or lock.

use std::net::SocketAddr;
use std::sync::Arc;

use super::core::{cx, dm_env};
use super::endpoint::Endpoint;
use super::identity::PeerIdentity;
use super::output::{
    AuthRequest, BootstrapEvent, ClusterRequest, MqttOut, ShardMsg, StoreChange, Timer,
};
use super::settings::CoreSettings;
use super::ShardCore;
use crate::objects::ObjectRegistry;

/// What a driver hands the core.
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram from `peer`: over plain UDP (`identity` None) or decrypted from the DTLS
    /// session of that identity.
    Datagram {
        peer: SocketAddr,
        data: &'a [u8],
        identity: Option<&'a Arc<PeerIdentity>>,
    },
    /// The DTLS session of `peer` ended (idle, alert, error, replaced), or a datagram
    /// for it could not be encrypted: the registration made over DTLS at that address
    /// gets nothing until a session of an identity allowed to act for it speaks again.
    SessionClosed { peer: SocketAddr },
    /// The DTLS session of `from` authenticated a record from `to` (DTLS Connection
    /// ID): the registration made over DTLS at `from` moves to `to`, so commands
    /// reach the device there before its next Update.
    SessionMoved { from: SocketAddr, to: SocketAddr },
    /// A timer the core armed came due.
    Timer(Timer),
    /// A message from another shard's core, or a command the router resolved for this
    /// shard ([`ShardMsg::Command`]).
    Shard(ShardMsg),
    /// A command for the endpoint `name`, from the management API.
    ApiCommand { name: &'a str, payload: Vec<u8> },
    /// The authentication server's answer about the Register held under `ticket`.
    AuthResult { ticket: u64, allowed: bool },
    /// A message this shard sent that no mailbox will take: a forwarded command is
    /// answered 5.03 (anything else is dropped).
    Undelivered(ShardMsg),
    /// New settings (the management API changed the configuration).
    Settings(Arc<CoreSettings>),
    /// New object definitions (the definitions were reloaded).
    Registry(Arc<ObjectRegistry>),
    /// The shard's broker connections hold more than their high watermark (true) or
    /// fell below their low one (false). While congested the core sheds what it would
    /// otherwise acknowledge and publish (see `shed.rs`), so that nothing it
    /// acknowledged is dropped for lack of room.
    MqttCongested(bool),
    /// How many more events that publish (Registers, Updates, Sends, notifications,
    /// bootstraps) the broker connections take before their high watermark: the core
    /// sheds once it acknowledged that many, until the driver gives the room again
    /// (each loop turn). With `MqttCongested` alone a turn that read a large batch of
    /// datagrams could acknowledge past the buffer's capacity before the driver saw it.
    MqttRoom(u32),
    /// A registration read back from the store at start (`record::decode`), before the
    /// shard serves any device: it is claimed, its lifetime timer armed (a deadline that
    /// passed while the gateway was down ends it at once, `expired`) and, with
    /// per-endpoint subscriptions, its command filter subscribed again. Nothing is
    /// published for it and it is not written back.
    Restore(Box<Endpoint>),
    /// The registration a [`ClusterRequest::Take`] took over from the shared store (it
    /// is this node's now), with the request that asked for it: claimed, its lifetime
    /// armed and its command filter subscribed as a restored one (no register message),
    /// then the request is handled (an Update: 2.04 and its update message). `from`:
    /// the node that held it, which keeps its command subscription until told that this
    /// node's is in place (with per-endpoint subscriptions the core then emits
    /// [`ClusterRequest::Subscribed`] for it).
    ClusterAdopt {
        endpoint: Box<Endpoint>,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
        from: Option<Box<str>>,
    },
    /// A [`ClusterRequest::Take`] found nothing (or the store is unreachable): the
    /// request is answered as for an unknown location (4.04).
    ClusterMiss {
        location: u64,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    },
    /// Another node took the registration `name` at `location` over: it leaves this node
    /// without a message (it lives on there); its commands in progress end with an
    /// error. With per-endpoint subscriptions its command filter stays subscribed for
    /// the handover (commands the broker hands this node meanwhile are forwarded to the
    /// new owner) until [`Input::ClusterUnsubscribe`] or a deadline.
    ClusterRelease { name: Box<str>, location: u64 },
    /// A [`ClusterRequest::TakePeer`] found no registration at the address (or the store
    /// is unreachable): the datagram is handled as from an unknown address.
    ClusterPeerMiss { peer: SocketAddr, datagram: Vec<u8> },
    /// The node that took the registration `name` at `location` over has its command
    /// subscription in place (the broker acknowledged it): the subscription this node
    /// kept for the handover is given up, unless this node holds the name again. A
    /// notice for nothing kept here (or kept on another shard) changes nothing.
    ClusterUnsubscribe { name: Box<str>, location: u64 },
}

/// What the core asks its driver to do.
#[derive(Debug)]
pub enum Output<'a> {
    /// Send `bytes` to `to`; when `secure`, only over its DTLS session (it answers a
    /// DTLS input, or goes to a registration made over DTLS).
    Datagram {
        to: SocketAddr,
        secure: bool,
        bytes: &'a [u8],
    },
    /// For the shard's broker connections.
    Mqtt(MqttOut),
    /// Hand back `timer` as [`Input::Timer`] at `at` (ms on the shard's clock).
    Timer { at: u64, timer: Timer },
    /// Ask the authentication server; its answer comes back as [`Input::AuthResult`].
    Auth { ticket: u64, request: AuthRequest },
    /// For shard `to`'s core ([`Input::Shard`] there).
    Shard { to: u16, msg: ShardMsg },
    /// A bootstrap started, finished (with the PSK credentials it gave the device) or
    /// failed: the driver keeps the outcome and adds the credentials to its PSK store.
    Bootstrap(BootstrapEvent),
    /// A change of the stored registrations (`CoreSettings::store_records`): coalesced
    /// per registration and drain, removals first.
    Store(StoreChange),
    /// For the nodes sharing the store (`CoreSettings::shared_store`).
    Cluster(ClusterRequest),
}

impl ShardCore {
    /// Takes one input (see the module documentation).
    pub fn handle(&mut self, now: u64, input: Input<'_>) {
        self.now = now;
        match input {
            Input::Datagram {
                peer,
                data,
                identity: None,
            } => self.handle_datagram(now, peer, data),
            Input::Datagram {
                peer,
                data,
                identity: Some(id),
            } => self.handle_secure_datagram(now, peer, id, data),
            Input::SessionClosed { peer } => self.secure_session_closed(now, peer),
            Input::SessionMoved { from, to } => self.secure_session_moved(from, to),
            Input::Timer(t) => self.handle_timer(now, t),
            Input::Shard(m) => self.handle_message(now, m),
            Input::ApiCommand { name, payload } => match self.table.find_name(name) {
                Some(slot) => self.dm.command_for(cx!(self), dm_env!(self), slot, payload),
                None => self.stats.commands_rejected += 1,
            },
            Input::AuthResult { ticket, allowed } => self.auth_result(now, ticket, allowed),
            Input::Undelivered(m) => self.dm.undelivered(cx!(self), m),
            Input::Settings(s) => self.apply_settings(s),
            Input::Registry(r) => self.dm.set_registry(r),
            Input::MqttCongested(on) => {
                self.out.congested = on;
                self.stats.congested = on as u64;
            }
            Input::MqttRoom(room) => self.out.room = Some(room),
            Input::Restore(ep) => self.restore(*ep),
            Input::ClusterAdopt {
                endpoint,
                peer,
                datagram,
                identity,
                from,
            } => self.cluster_adopt(now, endpoint, peer, &datagram, identity, from),
            Input::ClusterMiss {
                location,
                peer,
                datagram,
                identity,
            } => self.cluster_miss(now, location, peer, &datagram, identity),
            Input::ClusterRelease { name, location } => self.cluster_release(&name, location),
            Input::ClusterPeerMiss { peer, datagram } => {
                self.cluster_peer_miss(now, peer, &datagram)
            }
            Input::ClusterUnsubscribe { name, location } => {
                self.cluster_unsubscribe(&name, location)
            }
        }
        self.stats.bootstraps_active = self.boot.len() as u64;
    }

    /// Hands every output to `f`, in the documented order, and forgets them.
    pub fn drain(&mut self, mut f: impl FnMut(Output<'_>)) {
        self.drain_datagrams(|to, secure, bytes| f(Output::Datagram { to, secure, bytes }));
        for m in self.out.mqtt.drain(..) {
            f(Output::Mqtt(m));
        }
        for (at, timer) in self.out.timers.drain(..) {
            f(Output::Timer { at, timer });
        }
        for (ticket, request) in self.out.auth.drain(..) {
            f(Output::Auth { ticket, request });
        }
        for (to, msg) in self.out.to_shards.drain(..) {
            f(Output::Shard { to, msg });
        }
        for e in self.out.bootstrap.drain(..) {
            f(Output::Bootstrap(e));
        }
        for c in self.out.store.drain(..) {
            f(Output::Store(c));
        }
        self.drain_records(|c| f(Output::Store(c)));
        for r in self.out.cluster.drain(..) {
            f(Output::Cluster(r));
        }
    }

    /// Whether [`drain`](Self::drain) has anything to hand out.
    pub fn has_output(&self) -> bool {
        self.out.pending_datagrams() > 0
            || !self.out.mqtt.is_empty()
            || !self.out.timers.is_empty()
            || !self.out.auth.is_empty()
            || !self.out.to_shards.is_empty()
            || !self.out.bootstrap.is_empty()
            || !self.out.store.is_empty()
            || !self.out.store_dirty.is_empty()
            || !self.out.cluster.is_empty()
    }
}
