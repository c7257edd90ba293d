//! The protocol core of one shard.
//!
//! Flow (LwM2M Registration Interface over CoAP, RFC 7252):
//! ```text
//! device                         core                                MQTT / other shards
//!   POST /rd?ep=..&lt=..  ──────▶ validate, replace any registration
//!                                 of the same name (Evict on its shard),
//!                                 insert, arm lifetime timer ───────▶ publish register, subscribe
//!   ◀────── 2.01 Location-Path rd/<loc>
//!   POST /rd/<loc>        ──────▶ found here? update, re-arm ───────▶ publish update (condition)
//!                                 held by another shard? Takeover ──▶ owner replies Adopt, then
//!                                                                      the datagram is handled here
//!   ◀────── 2.04
//!   DELETE /rd/<loc>      ──────▶ remove ───────────────────────────▶ unsubscribe
//!   ◀────── 2.02
//!   (lifetime timer fires) ─────▶ remove (expiry) ──────────────────▶ unsubscribe
//! ```
//! A retransmitted request (same peer and message ID within EXCHANGE_LIFETIME) is
//! answered with the reply rebuilt from the endpoint's [`LastReply`] and causes no
//! MQTT message. Every input is hostile: parse errors are counted, answered with a
//! Reset where a header was readable, and never panic.

use super::block_server::BlockServer;
use super::blockwise::HeldBytes;
use super::bootstrap::Bootstraps;
use super::cluster::Cluster;
use super::cx::Ids;
use super::directory::Directory;
use super::dm::client_held;
use super::dm::DeviceManagement;
use super::identity::PeerIdentity;
use super::output::{Outputs, ShardMsg, Timer};
use super::peer_takes::PeerTakes;
use super::registrations::Registrations;
use super::security::InputSecurity;
use super::settings::CoreSettings;
use super::stats::CoreStats;
use super::table::EndpointTable;
use crate::coap::{codes, opt, Message, MsgType};
use crate::objects::ObjectRegistry;
use std::net::SocketAddr;
use std::sync::Arc;

/// The longest MQTT topic or filter (its length is a 16-bit field).
pub(super) const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why an endpoint leaves the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    Deregistered,
    Expired,
    /// Removed through the management API.
    Kicked,
    /// Replaced by a new registration of the same name; keep the subscription when
    /// the new registration uses the same mountpoint.
    Replaced {
        keep_subscription: bool,
    },
    /// Another node sharing the store took it over: it lives on there (no message, no
    /// removal of its record, its subscription given up).
    Moved,
}

pub struct ShardCore {
    pub(super) shard: u16,
    /// How many shards there are (bootstraps tell the others when they start).
    pub(super) shards: u16,
    pub(super) settings: Arc<CoreSettings>,
    /// The shard among the shards: the directory, takeovers, subscriptions.
    pub(super) cluster: Cluster,
    /// Registrations asked of the shared store by a device's address (`peer_takes.rs`).
    pub(super) peer_takes: PeerTakes,
    /// The registration interface's admission, locations, held Registers and replies.
    pub(super) regs: Registrations,
    pub(super) table: EndpointTable,
    /// Device management: commands, exchanges, queues, observations, block-wise
    /// transfers of the gateway's requests.
    pub(super) dm: DeviceManagement,
    /// The input's transport and identity.
    pub(super) security: InputSecurity,
    /// Message IDs, tokens and random numbers.
    pub(super) ids: Ids,
    pub(super) stats: CoreStats,
    pub(super) out: Outputs,
    /// Block-wise server: request bodies devices are sending, our responses sent in
    /// blocks (RFC 7959).
    pub(super) blocks: BlockServer,
    /// The Bootstrap-Server's bootstraps in progress.
    pub(super) boot: Bootstraps,
    /// The time of the input being handled.
    pub(super) now: u64,
}

/// The environment device management works in (`dm::Env`), lent for one input.
macro_rules! dm_env {
    ($core:expr) => {
        &mut super::dm::Env {
            table: &mut $core.table,
            cluster: &$core.cluster,
            blocks: &$core.blocks,
            security: &$core.security,
        }
    };
}
pub(super) use dm_env;

/// The loan of one input to a machine (`cx.rs`): borrows only the fields it names,
/// so the machine's own field can be borrowed beside it.
macro_rules! cx {
    ($core:expr) => {
        &mut super::cx::Cx {
            now: $core.now,
            settings: &$core.settings,
            out: &mut $core.out,
            stats: &mut $core.stats,
            ids: &mut $core.ids,
        }
    };
}
pub(super) use cx;

/// The decoded Uri-Path of a request, as far as the gateway routes on it.
pub(super) enum Route<'a> {
    Register,
    Registration(&'a [u8]),
    /// LwM2M 1.1 Send (`/dp`).
    Send,
    /// Bootstrap-Request (`/bs`).
    Bootstrap,
    Other,
}

impl ShardCore {
    /// `shards` is how many cores share the listener's registration rate.
    pub fn new(shard: u16, settings: Arc<CoreSettings>, dir: Arc<Directory>, seed: u64) -> Self {
        Self::with_shards(shard, 1, settings, dir, seed)
    }

    pub fn with_shards(
        shard: u16,
        shards: usize,
        settings: Arc<CoreSettings>,
        dir: Arc<Directory>,
        seed: u64,
    ) -> Self {
        let block_held = HeldBytes::default();
        Self {
            shards: shards.clamp(1, u16::MAX as usize) as u16,
            regs: Registrations::new(&settings, shards),
            security: InputSecurity::default(),
            shard,
            settings,
            cluster: Cluster::new(shard, dir),
            peer_takes: PeerTakes::default(),
            table: EndpointTable::new(),
            dm: DeviceManagement::new(block_held.clone()),
            ids: Ids::new(seed),
            stats: CoreStats::default(),
            out: Outputs::default(),
            blocks: BlockServer::new(block_held),
            boot: Bootstraps::default(),
            now: 0,
        }
    }

    /// Uses these object definitions to type values from now on.
    pub fn set_registry(&mut self, registry: Arc<ObjectRegistry>) {
        self.dm.set_registry(registry);
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    pub fn endpoints(&self) -> &EndpointTable {
        &self.table
    }

    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// Bytes block-wise state of this shard holds now.
    pub fn blockwise_held_bytes(&self) -> u64 {
        self.dm.held_bytes()
    }

    /// Partial request bodies devices are sending to this shard.
    pub fn blockwise_partials(&self) -> usize {
        self.blocks.len()
    }

    /// Responses of ours stored for Block2 follow-ups.
    pub fn blockwise_stored_replies(&self) -> usize {
        self.blocks.replies()
    }

    /// The core's counters (the engine copies them out for `/metrics`).
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// One datagram from `peer`.
    pub(super) fn handle_datagram(&mut self, now: u64, peer: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        if !self.security.secure() && self.security.any_secure() && self.secure_peer(&peer) {
            // Plain CoAP from the address of a DTLS registration: never matched to
            // it (no ACK, response, ping or block may act for it), never answered.
            self.stats.plain_from_secure_peer += 1;
            return;
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                if e.header_ok() {
                    if let Some((MsgType::Con | MsgType::Non, mid)) = Message::peek_header(data) {
                        self.send_reset(peer, mid);
                    }
                }
                return;
            }
        };
        match msg.mtype {
            MsgType::Con | MsgType::Non if msg.is_request() => {
                self.handle_request(now, peer, &msg, data)
            }
            MsgType::Con if msg.is_empty() => {
                // CoAP ping. From a registered device it also says the device is awake.
                self.stats.pings += 1;
                self.send_reset(peer, msg.mid);
                if let Some(slot) = self.table.find_peer(&peer) {
                    self.dm.touch(cx!(self), dm_env!(self), slot);
                }
            }
            MsgType::Con | MsgType::Non if msg.is_response() => {
                let secure = self.security.secure();
                if self.boot.talks_to(&peer) && self.boot.on_response(cx!(self), peer, secure, &msg)
                {
                    return;
                }
                if self.table.find_peer(&peer).is_none() && self.held_for_peer_take(peer, data) {
                    return;
                }
                self.dm.on_response(cx!(self), dm_env!(self), peer, &msg)
            }
            MsgType::Ack | MsgType::Rst => {
                let secure = self.security.secure();
                if self.boot.talks_to(&peer)
                    && self.boot.on_ack_or_reset(cx!(self), peer, secure, &msg)
                {
                    return;
                }
                self.dm
                    .on_ack_or_reset(cx!(self), dm_env!(self), peer, &msg)
            }
            _ => {
                // NON pings, requests and responses with odd codes.
                self.stats.unmatched += 1;
            }
        }
    }

    /// A datagram that arrived over a DTLS session with `identity`.
    pub(super) fn handle_secure_datagram(
        &mut self,
        now: u64,
        peer: SocketAddr,
        identity: &Arc<PeerIdentity>,
        data: &[u8],
    ) {
        self.with_identity(Some(identity.clone()), |c| {
            c.handle_datagram(now, peer, data)
        });
    }

    /// Hands every queued datagram to `f` with whether it must go encrypted: it
    /// answers an input that came over DTLS, or it is for the address of a
    /// registration made over DTLS. The driver never sends such a datagram in
    /// plain text (without a session it drops it and calls
    /// [`secure_session_closed`](Self::secure_session_closed)).
    pub(super) fn drain_datagrams(&mut self, mut f: impl FnMut(SocketAddr, bool, &[u8])) {
        let table = &self.table;
        let check = self.security.any_secure();
        self.out.drain_tagged(|to, secure, b| {
            let secure = secure
                || (check
                    && table
                        .find_peer(&to)
                        .and_then(|s| table.get(s))
                        .is_some_and(|e| e.secure));
            f(to, secure, b)
        });
    }

    /// A timer armed earlier came due.
    pub(super) fn handle_timer(&mut self, now: u64, t: Timer) {
        match t {
            Timer::Retransmit { slot, token, inc } => {
                if self.table.incarnation(slot) == inc {
                    self.dm.on_retransmit(cx!(self), dm_env!(self), slot, token)
                }
            }
            Timer::QueueTtl { slot, token } => {
                self.dm.on_queue_ttl(cx!(self), dm_env!(self), slot, token)
            }
            Timer::BlockExpire { id } => self.blocks.on_expire(cx!(self), id),
            Timer::Bootstrap { id, seq } => self.boot.on_timer(cx!(self), id, seq),
            Timer::TakeoverTimeout { location } => {
                if self.cluster.takeover_timed_out(now, location) {
                    self.stats.takeover_timeouts += 1;
                }
            }
            Timer::HandoverDeadline { location } => self.handover_deadline(location),
            Timer::AuthTimeout { ticket } => {
                if self.regs.holds(ticket) {
                    self.stats.auth_timeouts += 1;
                    self.auth_result(now, ticket, false);
                }
            }
            Timer::Expire { slot, gen } => {
                if self.table.generation(slot) != gen {
                    return;
                }
                let Some(ep) = self.table.get(slot) else {
                    return;
                };
                if ep.expires_ms > now {
                    // Re-armed without a generation bump (adoption); not due yet.
                    let at = ep.expires_ms;
                    self.out.timers.push((at, Timer::Expire { slot, gen }));
                    return;
                }
                self.stats.expiries += 1;
                self.remove_endpoint(slot, Removal::Expired);
            }
        }
    }

    /// A message from another shard's core, or a command the router resolved for this one.
    pub(super) fn handle_message(&mut self, now: u64, m: ShardMsg) {
        match m {
            ShardMsg::Command(c) => self.dm.handle_routed(cx!(self), dm_env!(self), c),
            ShardMsg::Subscription {
                change,
                name,
                location,
            } => self
                .cluster
                .subscription_arrived(cx!(self), change, &name, location),
            ShardMsg::Evict {
                name,
                location,
                new_mountpoint,
            } => self.on_evict(&name, location, &new_mountpoint),
            ShardMsg::Takeover {
                location,
                from,
                peer,
                datagram,
                identity,
            } => self.on_takeover(now, location, from, peer, datagram, identity),
            ShardMsg::Adopt {
                endpoint,
                peer,
                datagram,
                identity,
            } => self.on_adopt(now, endpoint, peer, &datagram, identity),
            ShardMsg::CachedReply {
                peer,
                reply,
                location,
                secure,
                ..
            } => {
                self.cluster.takeover_answered(location);
                self.stats.duplicates += 1;
                let prev = std::mem::replace(&mut self.out.secure_input, secure);
                self.write_reply(peer, &reply, Some(location));
                self.out.secure_input = prev;
            }
            ShardMsg::BootstrapStarted { name, from, at_ms } => {
                let newer =
                    |started: u64| started < at_ms || (started == at_ms && from > self.shard);
                if self.boot.drop_older(&name, newer) {
                    self.stats.bootstraps_restarted += 1;
                }
            }
            ShardMsg::TakeoverMiss {
                location,
                peer,
                datagram,
                identity,
            } => {
                self.cluster.takeover_answered(location);
                self.with_identity(identity, |c| c.handle_datagram(now, peer, &datagram));
            }
        }
    }

    /// New settings (the management API changed the configuration at run time).
    pub(super) fn apply_settings(&mut self, s: Arc<CoreSettings>) {
        self.regs.settings_changed(&self.settings, &s);
        self.settings = s;
    }

    /// Removes the registration of `name` (the management API's kick), ending its
    /// commands and giving up its subscription; false when this shard has none.
    pub fn kick(&mut self, now: u64, name: &str) -> bool {
        self.now = now;
        let found = self.table.find_name(name);
        if let Some(slot) = found {
            self.stats.kicked += 1;
            self.remove_endpoint(slot, Removal::Kicked);
        }
        found.is_some()
    }

    /// The endpoint name of this shard's registration whose clientid (its `device_id`
    /// parameter) is `clientid`.
    pub fn find_client_id(&self, clientid: &str) -> Option<String> {
        self.table
            .slots()
            .find(|(_, ep)| ep.param("device_id") == Some(clientid))
            .map(|(_, ep)| ep.name.to_string())
    }

    fn handle_request(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>, data: &[u8]) {
        if self.answer_duplicate(now, peer, msg) {
            return;
        }
        if let Some(n) = unknown_critical_option(msg) {
            self.stats.bad_options += 1;
            let text = format!("unsupported critical option {n}");
            self.reply_error(peer, msg, codes::BAD_OPTION, &text, data.len());
            return;
        }
        // A later block of a response of ours is served from its stored copy.
        if self.blocks.block2_request(cx!(self), peer, msg, data.len()) {
            return;
        }
        // Block1 bodies are reassembled first; the last block is the whole request.
        let whole: Vec<u8>;
        let parsed: Message<'_>;
        let client_held = self
            .table
            .find_peer(&peer)
            .map(|slot| client_held(&self.table, Some(slot)));
        let admission = self.regs.admission(self.security.secure());
        let arrived = self.blocks.block1_request(
            cx!(self),
            admission,
            self.cluster.dir(),
            client_held,
            peer,
            msg,
            data.len(),
        );
        let whole_datagram = matches!(arrived, super::block_server::Block1In::Whole);
        let (msg, data) = match arrived {
            super::block_server::Block1In::Whole => (msg, data),
            super::block_server::Block1In::Answered => return,
            super::block_server::Block1In::Complete(b) => {
                whole = b;
                let Ok(m) = Message::parse(&whole) else {
                    return;
                };
                parsed = m;
                (&parsed, &whole[..])
            }
        };
        let route = route_of(msg);
        match (msg.code, route) {
            (codes::POST, Route::Register) => self.register(now, peer, msg, data, false),
            (codes::POST, Route::Registration(loc)) => {
                self.on_registration(now, peer, msg, data, loc, true)
            }
            (codes::DELETE, Route::Registration(loc)) => {
                self.on_registration(now, peer, msg, data, loc, false)
            }
            (codes::POST, Route::Send) => {
                // A Send (in one datagram) from a device another node holds: taken over
                // by its address first (`peer_takes.rs`).
                if whole_datagram
                    && self.table.find_peer(&peer).is_none()
                    && !self.cluster.awaits_takeover(peer)
                    && self.held_for_peer_take(peer, data)
                {
                    return;
                }
                self.on_send(now, peer, msg, data.len())
            }
            (codes::POST, Route::Bootstrap) => {
                self.on_bootstrap_request(now, peer, msg, data.len())
            }
            (_, Route::Register | Route::Registration(_) | Route::Send | Route::Bootstrap) => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::METHOD_NOT_ALLOWED, "", data.len());
            }
            (_, Route::Other) => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            }
        }
    }

    // The input's transport: which identity it came with, and what it may do.

    /// Runs `f` as the handling of an input with `identity` (None: plain CoAP):
    /// identity checks use it and the datagrams written meanwhile are marked for
    /// encryption.
    pub(super) fn with_identity<R>(
        &mut self,
        identity: Option<Arc<PeerIdentity>>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let secure = identity.is_some();
        let prev = self.security.swap(identity);
        let prev_secure = std::mem::replace(&mut self.out.secure_input, secure);
        let r = f(self);
        self.security.swap(prev);
        self.out.secure_input = prev_secure;
        r
    }

    /// The DTLS session of `peer` ended (idle, error, alert, or replaced by a new
    /// handshake that may belong to another identity). A registration made over
    /// DTLS at that address gets nothing until a session of an identity allowed to
    /// act for it speaks for it again: its commands wait in its queue (TTL and
    /// `max_queued` apply), `mheaders.ttl = 0` commands are refused.
    pub(super) fn secure_session_closed(&mut self, _now: u64, peer: SocketAddr) {
        if self.boot.talks_to(&peer) {
            self.boot.session_closed(cx!(self), peer);
        }
        let Some(slot) = self.table.find_peer(&peer) else {
            return;
        };
        if let Some(ep) = self.table.get_mut(slot) {
            if ep.secure && !ep.session_lost {
                ep.session_lost = true;
                self.stats.dtls_sessions_lost += 1;
            }
        }
    }

    /// The DTLS session of `from` speaks from `to` now: its registration follows (one
    /// already at `to` keeps its address; the device's next Update settles it).
    pub(super) fn secure_session_moved(&mut self, from: SocketAddr, to: SocketAddr) {
        let Some(slot) = self.table.find_peer(&from) else {
            return;
        };
        if self.table.find_peer(&to).is_some() || !self.table.get(slot).is_some_and(|e| e.secure) {
            return;
        }
        self.table.set_peer(slot, to);
        self.stats.rebinds += 1;
        // The stored record holds the address: a restart finds the device where it is.
        self.out.stored(slot);
    }

    /// True when the current registration of `name` (here or on another shard) was
    /// made over DTLS.
    pub(super) fn name_is_secure(&self, name: &str) -> bool {
        self.cluster.name_is_secure(name)
            || self
                .table
                .find_name(name)
                .and_then(|s| self.table.get(s))
                .is_some_and(|e| e.secure)
    }

    /// True when `peer` is the address of a registration made over DTLS.
    pub(super) fn secure_peer(&self, peer: &SocketAddr) -> bool {
        self.table
            .find_peer(peer)
            .and_then(|s| self.table.get(s))
            .is_some_and(|e| e.secure)
    }

    /// May the current input's DTLS identity act for endpoint `name`?
    pub(super) fn identity_may_act(
        &self,
        name: &str,
        secure_registration: bool,
    ) -> Result<(), String> {
        self.security
            .may_act(&self.settings, name, secure_registration)
    }
}

pub(super) fn route_of<'a>(msg: &Message<'a>) -> Route<'a> {
    let mut segs = msg.option_values(opt::URI_PATH);
    match (segs.next(), segs.next(), segs.next()) {
        (Some(b"rd"), None, None) => Route::Register,
        (Some(b"rd"), Some(loc), None) => Route::Registration(loc),
        (Some(b"dp"), None, None) => Route::Send,
        (Some(b"bs"), None, None) => Route::Bootstrap,
        _ => Route::Other,
    }
}

/// The first critical option a registration request carries that the gateway does
/// not understand (RFC 7252 §5.4.1 requires rejecting it with 4.02).
fn unknown_critical_option(msg: &Message<'_>) -> Option<u16> {
    msg.options().map(|(n, _)| n).find(|&n| {
        opt::is_critical(n)
            && !matches!(
                n,
                opt::IF_MATCH
                    | opt::URI_HOST
                    | opt::URI_PORT
                    | opt::URI_PATH
                    | opt::URI_QUERY
                    | opt::BLOCK1
                    | opt::BLOCK2
            )
    })
}
