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
use super::blockwise::{client_held, HeldBytes};
use super::cluster::{Adoption, Cluster, Elsewhere};
use super::cx::Ids;
use super::directory::{ClaimError, Directory};
use super::endpoint::{merge_params, Endpoint, EndpointCounters, LastReply};
use super::identity::PeerIdentity;
use super::output::{AuthRequest, MqttOut, Outputs, ShardMsg, Timer};
use super::publish::{name_hash, registration_json};
use super::registration::{
    check_endpoint_name, parse_object_list, parse_params, BadRequest, ObjectList, Params,
};
use super::registrations::{HeldRegister, NotHeld, Registrations};
use super::settings::CoreSettings;
use super::stats::CoreStats;
use super::table::EndpointTable;
use super::template::{check_level_value, Placeholder, Vars};
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::objects::ObjectRegistry;
use std::net::SocketAddr;
use std::sync::Arc;

/// The longest MQTT topic or filter (its length is a 16-bit field).
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why an endpoint leaves the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Deregistered,
    Expired,
    /// Removed through the management API.
    Kicked,
    /// Replaced by a new registration of the same name; keep the subscription when
    /// the new registration uses the same mountpoint.
    Replaced {
        keep_subscription: bool,
    },
}

pub struct ShardCore {
    pub(super) shard: u16,
    pub(super) settings: Arc<CoreSettings>,
    /// The shard among the shards: the directory, takeovers, subscriptions.
    pub(super) cluster: Cluster,
    /// The registration interface's admission, locations, held Registers and replies.
    regs: Registrations,
    pub(super) table: EndpointTable,
    /// Object definitions that type values (the driver hands over a new snapshot
    /// after a reload).
    pub(super) registry: Arc<ObjectRegistry>,
    /// The DTLS identity of the datagram being handled (None: plain UDP).
    input_identity: Option<Arc<PeerIdentity>>,
    /// A registration made over DTLS has lived on this shard (from then on plain
    /// datagrams are checked against the addresses of such registrations).
    has_secure: bool,
    /// Message IDs, tokens and random numbers.
    pub(super) ids: Ids,
    pub(super) stats: CoreStats,
    pub(super) out: Outputs,
    /// Block-wise server: request bodies devices are sending, our responses sent in
    /// blocks (RFC 7959).
    pub(super) blocks: BlockServer,
    /// Bytes held by block-wise state, both directions (the server's and the
    /// transfers of commands).
    pub(super) block_held: HeldBytes,
    /// The time of the input being handled.
    pub(super) now: u64,
}

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

/// The decoded Uri-Path of a request, as far as the gateway routes on it.
enum Route<'a> {
    Register,
    Registration(&'a [u8]),
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
            regs: Registrations::new(&settings, shards),
            input_identity: None,
            has_secure: false,
            shard,
            settings,
            cluster: Cluster::new(shard, dir),
            table: EndpointTable::new(),
            registry: Arc::new(ObjectRegistry::empty()),
            ids: Ids::new(seed),
            stats: CoreStats::default(),
            out: Outputs::default(),
            blocks: BlockServer::new(block_held.clone()),
            block_held,
            now: 0,
        }
    }

    /// Uses these object definitions to type values from now on.
    pub fn set_registry(&mut self, registry: Arc<ObjectRegistry>) {
        self.registry = registry;
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

    /// The core's counters (the engine copies them out for `/metrics`).
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// One datagram from `peer`.
    pub(super) fn handle_datagram(&mut self, now: u64, peer: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        if self.input_identity.is_none() && self.has_secure && self.secure_peer(&peer) {
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
                    self.touch(now, slot);
                }
            }
            MsgType::Con | MsgType::Non if msg.is_response() => self.on_response(now, peer, &msg),
            MsgType::Ack | MsgType::Rst => self.on_ack_or_reset(now, peer, &msg),
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

    /// Runs `f` as the handling of an input with `identity` (None: plain CoAP):
    /// identity checks use it and the datagrams written meanwhile are marked for
    /// encryption.
    fn with_identity<R>(
        &mut self,
        identity: Option<Arc<PeerIdentity>>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let secure = identity.is_some();
        let prev = std::mem::replace(&mut self.input_identity, identity);
        let prev_secure = std::mem::replace(&mut self.out.secure_input, secure);
        let r = f(self);
        self.input_identity = prev;
        self.out.secure_input = prev_secure;
        r
    }

    /// The DTLS session of `peer` ended (idle, error, alert, or replaced by a new
    /// handshake that may belong to another identity). A registration made over
    /// DTLS at that address gets nothing until a session of an identity allowed to
    /// act for it speaks for it again: its commands wait in its queue (TTL and
    /// `max_queued` apply), `mheaders.ttl = 0` commands are refused.
    pub(super) fn secure_session_closed(&mut self, _now: u64, peer: SocketAddr) {
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

    /// Hands every queued datagram to `f` with whether it must go encrypted: it
    /// answers an input that came over DTLS, or it is for the address of a
    /// registration made over DTLS. The driver never sends such a datagram in
    /// plain text (without a session it drops it and calls
    /// [`secure_session_closed`](Self::secure_session_closed)).
    pub(super) fn drain_datagrams(&mut self, mut f: impl FnMut(SocketAddr, bool, &[u8])) {
        let table = &self.table;
        let check = self.has_secure;
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

    /// True when the current registration of `name` (here or on another shard) was
    /// made over DTLS.
    fn name_is_secure(&self, name: &str) -> bool {
        self.cluster.name_is_secure(name)
            || self
                .table
                .find_name(name)
                .and_then(|s| self.table.get(s))
                .is_some_and(|e| e.secure)
    }

    /// True when `peer` is the address of a registration made over DTLS.
    fn secure_peer(&self, peer: &SocketAddr) -> bool {
        self.table
            .find_peer(peer)
            .and_then(|s| self.table.get(s))
            .is_some_and(|e| e.secure)
    }

    /// True when the current input may speak for `ep` as far as its transport
    /// goes: plain CoAP for plain registrations, a DTLS identity allowed to act for
    /// the name for DTLS ones.
    pub(super) fn input_speaks_for(&self, ep: &super::endpoint::Endpoint) -> bool {
        !ep.secure || self.identity_may_act(&ep.name, true).is_ok()
    }

    /// May the current input's DTLS identity act for endpoint `name`? Plain UDP
    /// may act only for registrations made over plain UDP.
    fn identity_may_act(&self, name: &str, secure_registration: bool) -> Result<(), String> {
        match self.input_identity.as_deref() {
            None if secure_registration => {
                Err("this registration was made over DTLS; plain CoAP may not change it".into())
            }
            None => Ok(()),
            Some(PeerIdentity::Psk(id)) => match &self.settings.dtls_psk {
                Some(store) if !store.may_register(id, name) => Err(format!(
                    "PSK identity {id:?} may not register endpoint {name:?}"
                )),
                _ => Ok(()),
            },
            Some(PeerIdentity::Cert { cn }) => {
                if self.settings.dtls_require_cn && cn != name {
                    Err(format!(
                        "certificate CN {cn:?} is not the endpoint name {name:?}"
                    ))
                } else {
                    Ok(())
                }
            }
            Some(PeerIdentity::Anonymous) => Ok(()),
        }
    }

    /// A timer armed earlier came due.
    pub(super) fn handle_timer(&mut self, now: u64, t: Timer) {
        match t {
            Timer::Retransmit { slot, token, inc } => {
                if self.table.incarnation(slot) == inc {
                    self.on_retransmit(now, slot, token)
                }
            }
            Timer::QueueTtl { slot, token } => self.on_queue_ttl(slot, token),
            Timer::BlockExpire { id } => self.blocks.on_expire(cx!(self), id),
            Timer::TakeoverTimeout { location } => {
                if self.cluster.takeover_timed_out(now, location) {
                    self.stats.takeover_timeouts += 1;
                }
            }
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
            ShardMsg::Command(c) => self.handle_routed(now, c),
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
            } => {
                if let Some(slot) = self.table.find_location(location) {
                    let same = self.table.get(slot).map(|e| e.name == name) == Some(true);
                    if same {
                        let keep = self.table.get(slot).map(|e| e.mountpoint == new_mountpoint)
                            == Some(true);
                        self.stats.replaced += 1;
                        self.remove_endpoint(
                            slot,
                            Removal::Replaced {
                                keep_subscription: keep,
                            },
                        );
                    }
                }
            }
            ShardMsg::Takeover {
                location,
                from,
                peer,
                datagram,
                identity,
            } => {
                // A late copy of a request already answered (from the address the
                // device left): answer it from the cache, keep the endpoint here.
                let cached = match self.table.find_location(location) {
                    Some(_) => self.with_identity(identity.clone(), |c| {
                        Message::parse(&datagram)
                            .ok()
                            .and_then(|m| c.cached_reply(now, peer, &m))
                    }),
                    None => None,
                };
                match self.table.find_location(location) {
                    Some(_) if cached.is_some() => {
                        let (reply, _) = cached.expect("checked");
                        // The shard the datagram came to answers it (it holds the
                        // DTLS session, if any).
                        self.out.to_shards.push((
                            from,
                            ShardMsg::CachedReply {
                                peer,
                                reply,
                                location,
                                datagram,
                                secure: identity.is_some(),
                            },
                        ));
                    }
                    Some(slot) => {
                        let ep = self.table.remove(slot).expect("found slot");
                        self.stats.takeovers_out += 1;
                        self.stats.unqueued(super::dm::queued_len(&ep));
                        self.out.to_shards.push((
                            from,
                            ShardMsg::Adopt {
                                endpoint: Box::new(ep),
                                peer,
                                datagram,
                                identity,
                            },
                        ));
                    }
                    None => self.out.to_shards.push((
                        from,
                        ShardMsg::TakeoverMiss {
                            location,
                            peer,
                            datagram,
                            identity,
                        },
                    )),
                }
            }
            ShardMsg::Adopt {
                endpoint,
                peer,
                datagram,
                identity,
            } => {
                let location = endpoint.location;
                self.cluster.takeover_answered(location);
                // Its queued commands are this shard's now (whether it is kept or finished).
                self.stats.commands_waiting += super::dm::queued_len(&endpoint);
                let held_here = self.table.find_location(location).is_some();
                match self.cluster.adopt(&endpoint, held_here) {
                    Adoption::Stale { superseded } => {
                        // Registered again (here or on another shard) meanwhile: the
                        // adopted registration is stale. Its commands get their final
                        // message; the name (if anyone holds it) stays with the newer
                        // registration, which also owns the subscription.
                        let mut stale = *endpoint;
                        self.finish_session(&mut stale, "endpoint registered again");
                        if superseded {
                            self.cluster.forget_superseded(cx!(self), &stale);
                        }
                    }
                    Adoption::Current => {
                        // A local copy of the same name is an older one whose Evict is
                        // still on its way.
                        if let Some(old) = self.table.find_name(&endpoint.name) {
                            let keep = self
                                .table
                                .get(old)
                                .map(|e| e.mountpoint == endpoint.mountpoint)
                                == Some(true);
                            self.stats.replaced += 1;
                            self.remove_endpoint(
                                old,
                                Removal::Replaced {
                                    keep_subscription: keep,
                                },
                            );
                        }
                        self.stats.takeovers_in += 1;
                        let expires = endpoint.expires_ms;
                        self.has_secure |= endpoint.secure;
                        let slot = self.table.insert(*endpoint);
                        let gen = self.table.generation(slot);
                        self.out.timers.push((expires, Timer::Expire { slot, gen }));
                        self.rearm_session(now, slot);
                    }
                }
                // With the identity it arrived with: an Update over the new DTLS
                // session of a moved registration is that registration's own.
                self.with_identity(identity, |c| c.handle_datagram(now, peer, &datagram));
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
        let client_held = client_held(&self.table, self.table.find_peer(&peer));
        let admission = self.regs.admission();
        let arrived = self.blocks.block1_request(
            cx!(self),
            admission,
            self.cluster.dir(),
            client_held,
            peer,
            msg,
            data.len(),
        );
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
            (_, Route::Register | Route::Registration(_)) => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::METHOD_NOT_ALLOWED, "", data.len());
            }
            (_, Route::Other) => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            }
        }
    }

    /// Answers a retransmitted request from the reply cache. True if it was one.
    fn answer_duplicate(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>) -> bool {
        let Some((r, location)) = self.cached_reply(now, peer, msg) else {
            return false;
        };
        self.stats.duplicates += 1;
        self.write_reply(peer, &r, location);
        true
    }

    /// The cached reply to `msg` if it is a retransmission: (reply, location).
    fn cached_reply(
        &self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) -> Option<(LastReply, Option<u64>)> {
        let lifetime = self.settings.exchange_lifetime_ms;
        let fresh = |r: &LastReply| {
            r.valid
                && r.mid == msg.mid
                && r.con == (msg.mtype == MsgType::Con)
                && now.saturating_sub(r.at_ms) < lifetime
        };
        // Plain CoAP is never answered from a DTLS registration's cache.
        let plain = self.input_identity.is_none();
        let cached = match self.table.find_peer(&peer) {
            Some(slot) if !(plain && self.table.get(slot).is_some_and(|e| e.secure)) => {
                let ep = self.table.get(slot).expect("indexed");
                // The last two replies: a delayed duplicate of the previous request
                // may arrive after the next one was answered.
                [ep.last_reply, ep.prev_reply]
                    .into_iter()
                    .find(|r| fresh(r))
                    .map(|r| (r, Some(ep.location)))
            }
            _ => None,
        };
        // From another address (a NAT binding the device has left): the same
        // message ID and token for the registration the request names.
        let cached = cached.or_else(|| {
            let Route::Registration(loc) = route_of(msg) else {
                return None;
            };
            let slot = self.table.find_location(Endpoint::parse_location(loc)?)?;
            let ep = self.table.get(slot)?;
            if plain && ep.secure {
                return None;
            }
            [ep.last_reply, ep.prev_reply]
                .into_iter()
                .find(|r| fresh(r) && r.token() == msg.token)
                .map(|r| (r, Some(ep.location)))
        });
        cached.or_else(|| Some((self.regs.recent_reply(peer, !plain, fresh)?, None)))
    }

    /// A Register; `authorized` when the authentication server already allowed it.
    fn register(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        authorized: bool,
    ) {
        let req_len = data.len();
        let parsed = parse_params(msg).and_then(|p| {
            check_endpoint_name(p.ep)?;
            let objects = if msg.payload.is_empty() {
                None
            } else {
                Some(parse_object_list(msg.payload)?)
            };
            Ok((p, objects))
        });
        let (params, objects) = match parsed {
            Ok(v) => v,
            Err(BadRequest(text)) => {
                self.stats.bad_requests += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        let name = params.ep.expect("checked");
        let secure = self.input_identity.is_some();
        let allowed = self.identity_may_act(name, false).and_then(|()| {
            if !secure && self.name_is_secure(name) {
                Err(format!(
                    "endpoint {name:?} is registered over DTLS; plain CoAP may not replace it"
                ))
            } else {
                Ok(())
            }
        });
        if let Err(e) = allowed {
            self.stats.forbidden += 1;
            self.reply_error(peer, msg, codes::FORBIDDEN, &e, req_len);
            return;
        }
        if !authorized {
            if let Err(max_age) = self.admit(now, name) {
                self.reply_unavailable(peer, msg, max_age);
                return;
            }
        }
        let mountpoint = match self.render_mountpoint(name, &params, peer) {
            Ok(m) => m,
            Err(text) => {
                self.stats.bad_requests += 1;
                self.stats.bad_topics += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        if !authorized && self.settings.auth_enabled() {
            self.ask_auth(peer, msg, data, name, &params);
            return;
        }
        if authorized {
            // Held while the authentication server was asked: registrations made
            // meanwhile count against max_connections too.
            if let Err(max_age) = self.admit_capacity(name) {
                self.reply_unavailable(peer, msg, max_age);
                return;
            }
        }

        // The same name registered again replaces the old registration, wherever it
        // is: here, on another shard (the directory's answer to the claim below), or
        // both (when an Evict is still on its way).
        if let Some(slot) = self.table.find_name(name) {
            let keep = self.table.get(slot).map(|e| *e.mountpoint == *mountpoint) == Some(true);
            self.stats.replaced += 1;
            self.remove_endpoint(
                slot,
                Removal::Replaced {
                    keep_subscription: keep,
                },
            );
        }

        let location = self.regs.new_location(self.shard, &self.cluster);
        // The claim is the one atomic step that decides: a plain Register racing a
        // DTLS one of the same name on another shard is refused here, before it
        // has any effect beyond the local copy it replaced (which the DTLS one
        // replaces too).
        if let Err(ClaimError::Secure(_)) =
            self.cluster
                .claim(cx!(self), name, location, secure, &mountpoint)
        {
            self.stats.forbidden += 1;
            let e =
                format!("endpoint {name:?} is registered over DTLS; plain CoAP may not replace it");
            self.reply_error(peer, msg, codes::FORBIDDEN, &e, req_len);
            return;
        }
        let lifetime_s = self.settings.clamp_lifetime(params.lt);
        let (alternate_path, object_list, content_format) = match objects {
            Some(ObjectList {
                alternate_path,
                paths,
                content_format,
            }) => (
                Some(alternate_path.into()),
                Some(paths.into()),
                content_format,
            ),
            None => (None, None, None),
        };
        let mut others = Vec::with_capacity(params.others.len() + 2);
        if let Some(v) = params.lwm2m {
            others.push(("lwm2m", v));
        }
        if let Some(b) = params.binding {
            others.push(("b", b));
        }
        others.extend_from_slice(&params.others);
        let ep = Endpoint {
            name: name.into(),
            location,
            peer,
            lifetime_s,
            expires_ms: now + lifetime_s as u64 * 1000,
            lane: name_hash(name),
            mountpoint: mountpoint.into_boxed_str(),
            params: merge_params(std::iter::empty(), &others),
            alternate_path,
            object_list,
            queue_mode: params.queue || params.binding.is_some_and(|b| b.contains('Q')),
            secure,
            session_lost: false,
            content_format,
            last_reply: LastReply::default(),
            prev_reply: LastReply::default(),
            registered_ms: now,
            last_seen_ms: now,
            // The Register itself.
            counters: EndpointCounters {
                recv: 1,
                ..Default::default()
            },
            session: None,
        };
        self.has_secure |= secure;
        let slot = self.table.insert(ep);
        self.arm_expiry(slot);
        let ep = self.table.get(slot).expect("inserted");
        self.cluster.registered(cx!(self), ep);
        self.stats.registrations += 1;
        self.publish_registration(slot, "register");
        self.reply_to_endpoint(now, slot, msg, codes::CREATED);
        self.auto_observe(now, slot);
    }

    /// Holds a Register while the authentication server is asked (off this thread).
    fn ask_auth(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        name: &str,
        params: &Params<'_>,
    ) {
        let find = |k: &str| {
            params
                .others
                .iter()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| *v)
        };
        let password = msg
            .option_values(opt::URI_QUERY)
            .filter_map(|q| std::str::from_utf8(q).ok())
            .find_map(|q| q.strip_prefix("password="))
            .unwrap_or("");
        let request = AuthRequest {
            endpoint_name: name.to_string(),
            clientid: find("device_id").unwrap_or(name).to_string(),
            username: find("imei").unwrap_or(name).to_string(),
            password: password.to_string(),
            peerhost: peer.ip().to_string(),
        };
        let held = HeldRegister {
            peer,
            mid: msg.mid,
            datagram: data.to_vec(),
            identity: self.input_identity.clone(),
        };
        match self.regs.hold(cx!(self), held, request) {
            Ok(()) => self.stats.auth_requests += 1,
            // A retransmission while the first is being checked.
            Err(NotHeld::Duplicate) => self.stats.duplicates += 1,
            Err(NotHeld::Full) => {
                self.stats.auth_overflow += 1;
                self.reply_unavailable(peer, msg, 1);
            }
        }
    }

    /// The authentication server's answer (or its absence, `allowed = false`).
    pub(super) fn auth_result(&mut self, now: u64, ticket: u64, allowed: bool) {
        let Some(p) = self.regs.release(ticket) else {
            return;
        };
        let Ok(msg) = Message::parse(&p.datagram) else {
            return;
        };
        // The Register is handled as it arrived: over DTLS with its identity, or not.
        self.with_identity(p.identity.clone(), |c| {
            if allowed {
                c.register(now, p.peer, &msg, &p.datagram, true);
            } else {
                c.stats.auth_denied += 1;
                let len = p.datagram.len();
                c.reply_error(
                    p.peer,
                    &msg,
                    codes::UNAUTHORIZED,
                    "authentication failed",
                    len,
                );
            }
        });
    }

    /// Admission before allocation: the rate bucket for every Register, the
    /// capacity cap for names not registered yet. Err carries the Max-Age.
    fn admit(&mut self, now: u64, name: &str) -> Result<(), u32> {
        if let Err(wait_s) = self.regs.take_token(now) {
            self.stats.rate_limited += 1;
            return Err(wait_s);
        }
        self.admit_capacity(name)
    }

    /// The `max_connections` cap for a name not registered yet. Err carries the Max-Age.
    fn admit_capacity(&mut self, name: &str) -> Result<(), u32> {
        // A name registered already replaces itself; the lookups are needed only
        // at the cap.
        if self.cluster.registrations() as u64 >= self.settings.max_connections
            && self.table.find_name(name).is_none()
            && !self.cluster.is_registered(name)
        {
            self.stats.over_capacity += 1;
            return Err(60);
        }
        Ok(())
    }

    /// 5.03 Service Unavailable with Max-Age (RFC 7252 §5.9.3.4).
    fn reply_unavailable(&mut self, peer: SocketAddr, msg: &Message<'_>, max_age: u32) {
        let r = self.reply_header(msg, codes::SERVICE_UNAVAILABLE);
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(
                buf,
                mtype,
                codes::SERVICE_UNAVAILABLE,
                r.reply_mid,
                r.token(),
            );
            w.option_uint(opt::MAX_AGE, max_age);
            w.finish();
        });
    }

    /// Update (`is_update`) or De-register of the registration at `loc`.
    fn on_registration(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        loc: &[u8],
        is_update: bool,
    ) {
        let Some(location) = Endpoint::parse_location(loc) else {
            self.stats.not_found += 1;
            self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            return;
        };
        let slot = match self.table.find_location(location) {
            Some(s) => s,
            None => {
                self.takeover_or_not_found(peer, msg, data, location);
                return;
            }
        };
        let (name, secure) = {
            let ep = self.table.get(slot).expect("found");
            (ep.name.clone(), ep.secure)
        };
        if let Err(e) = self.identity_may_act(&name, secure) {
            self.stats.forbidden += 1;
            self.reply_error(peer, msg, codes::FORBIDDEN, &e, data.len());
            return;
        }
        if is_update {
            self.update(now, peer, slot, msg, data.len());
        } else {
            let reply = LastReply {
                at_ms: now,
                ..self.reply_header(msg, codes::DELETED)
            };
            self.stats.deregistrations += 1;
            self.remove_endpoint(slot, Removal::Deregistered);
            let secure = self.input_identity.is_some();
            self.regs.remember(peer, reply, secure);
            self.write_reply(peer, &reply, None);
        }
    }

    /// A request for a registration this shard does not hold: its owner is asked for
    /// it (NAT rebinding), or it is refused.
    fn takeover_or_not_found(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        location: u64,
    ) {
        let identity = self.input_identity.clone();
        let asked = self
            .cluster
            .request_for(cx!(self), location, peer, data, identity.as_ref());
        match asked {
            Elsewhere::Asked => {}
            Elsewhere::Forbidden => {
                self.stats.forbidden += 1;
                let e = "this registration was made over DTLS; plain CoAP may not change it";
                self.reply_error(peer, msg, codes::FORBIDDEN, e, data.len());
            }
            Elsewhere::NotFound => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            }
        }
    }

    fn update(&mut self, now: u64, peer: SocketAddr, slot: u32, msg: &Message<'_>, req_len: usize) {
        let parsed = parse_params(msg).and_then(|p| {
            let objects = if msg.payload.is_empty() {
                None
            } else {
                Some(parse_object_list(msg.payload)?)
            };
            Ok((p, objects))
        });
        let (params, objects) = match parsed {
            Ok(v) => v,
            Err(BadRequest(text)) => {
                self.stats.bad_requests += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        if self.table.get(slot).map(|e| e.peer) != Some(peer) {
            self.stats.rebinds += 1;
            self.table.set_peer(slot, peer);
        }
        let lifetime_s = params.lt.map(|lt| self.settings.clamp_lifetime(Some(lt)));
        let has_objects = objects.is_some();
        {
            let ep = self.table.get_mut(slot).expect("found");
            if let Some(lt) = lifetime_s {
                ep.lifetime_s = lt;
            }
            ep.expires_ms = now + ep.lifetime_s as u64 * 1000;
            ep.last_seen_ms = now;
            let mut new: Vec<(&str, &str)> = Vec::with_capacity(params.others.len() + 1);
            if let Some(b) = params.binding {
                new.push(("b", b));
                // LwM2M 1.0 says queue mode in the binding (`UQ`), so an Update's binding
                // changes it; from 1.1 on it is the Register's `Q` parameter, which an Update
                // does not repeat: a binding without `Q` leaves it as it was.
                let v1_0 = matches!(ep.param("lwm2m"), None | Some("1") | Some("1.0"))
                    || ep.param("lwm2m").is_some_and(|v| v.starts_with("1.0."));
                if b.contains('Q') || v1_0 {
                    ep.queue_mode = b.contains('Q') || params.queue;
                }
            }
            if params.queue {
                ep.queue_mode = true;
            }
            new.extend_from_slice(&params.others);
            if !new.is_empty() {
                let merged = merge_params(ep.params(), &new);
                ep.params = merged;
            }
            if let Some(list) = objects {
                if list.content_format.is_some() {
                    ep.content_format = list.content_format;
                }
                // The object list's `rt="oma.lwm2m"` link sets alternatePath ("/" without one).
                ep.alternate_path = Some(list.alternate_path.into());
                ep.object_list = Some(list.paths.into());
            }
        }
        self.arm_expiry(slot);
        self.stats.updates += 1;
        if has_objects || !self.settings.update_needs_object_list {
            self.publish_registration(slot, "update");
        }
        self.reply_to_endpoint(now, slot, msg, codes::CHANGED);
        // The device is awake: send what waited for it.
        self.touch(now, slot);
    }

    fn remove_endpoint(&mut self, slot: u32, why: Removal) {
        let Some(mut ep) = self.table.remove(slot) else {
            return;
        };
        let reason = match why {
            Removal::Deregistered => "endpoint de-registered",
            Removal::Expired => "endpoint registration expired",
            Removal::Kicked => "endpoint removed by the management API",
            Removal::Replaced { .. } => "endpoint registered again",
        };
        self.finish_session(&mut ep, reason);
        // Replaced by a registration with the same mountpoint: that one owns the
        // route and the subscription now.
        let keep_sub = why
            == Removal::Replaced {
                keep_subscription: true,
            };
        self.cluster.released(cx!(self), &ep, keep_sub);
    }

    fn publish_registration(&mut self, slot: u32, kind: &str) {
        let ep = self.table.get(slot).expect("slot");
        let t = if kind == "register" {
            &self.settings.register
        } else {
            &self.settings.update
        };
        let mut topic = String::with_capacity(ep.mountpoint.len() + t.topic.len());
        topic.push_str(&ep.mountpoint);
        topic.push_str(&t.topic);
        let mut payload = Vec::with_capacity(128);
        registration_json(kind, ep, &mut payload);
        self.stats.published += 1;
        self.out.mqtt.push(MqttOut::Publish {
            lane: ep.lane,
            topic,
            payload,
            qos: t.qos,
        });
    }

    fn arm_expiry(&mut self, slot: u32) {
        let gen = self.table.bump_generation(slot);
        let at = self.table.get(slot).expect("slot").expires_ms;
        self.out.timers.push((at, Timer::Expire { slot, gen }));
    }

    /// The registration's mountpoint. Err (a diagnostic for the 4.00) when a value
    /// the device sent would make an invalid MQTT topic or filter, or one that a
    /// command topic could not be matched back to: a subscription the broker refuses
    /// would cost the gateway its connection, after every reconnect.
    fn render_mountpoint(
        &self,
        name: &str,
        p: &Params<'_>,
        peer: SocketAddr,
    ) -> Result<String, String> {
        let find = |k: &str| p.others.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        let host = peer.ip().to_string();
        let vars = Vars {
            endpoint_name: name,
            clientid: find("device_id").unwrap_or(name),
            username: find("imei").unwrap_or(name),
            peerhost: &host,
        };
        let t = &self.settings.mountpoint;
        for (placeholder, key, value) in [
            (Placeholder::ClientId, "device_id", vars.clientid),
            (Placeholder::Username, "imei", vars.username),
        ] {
            if t.uses(placeholder) {
                check_level_value(value).map_err(|why| {
                    format!("{key} {why}: it is a level of this device's MQTT topics")
                })?;
            }
        }
        let mut s = String::new();
        t.render(&vars, &mut s);
        if s.len() + self.settings.longest_topic() > MAX_TOPIC_LEN {
            return Err(format!(
                "this device's MQTT topics would be longer than {MAX_TOPIC_LEN} bytes"
            ));
        }
        Ok(s)
    }

    fn reply_header(&mut self, msg: &Message<'_>, code: u8) -> LastReply {
        let con = msg.mtype == MsgType::Con;
        let mut token = [0u8; 8];
        token[..msg.token.len()].copy_from_slice(msg.token);
        LastReply {
            valid: true,
            con,
            mid: msg.mid,
            reply_mid: if con { msg.mid } else { self.fresh_mid() },
            code,
            tkl: msg.token.len() as u8,
            token,
            at_ms: 0,
        }
    }

    /// Replies to a request tied to an endpoint and caches the reply for duplicates.
    fn reply_to_endpoint(&mut self, now: u64, slot: u32, msg: &Message<'_>, code: u8) {
        let r = LastReply {
            at_ms: now,
            ..self.reply_header(msg, code)
        };
        let ep = self.table.get_mut(slot).expect("slot");
        ep.prev_reply = ep.last_reply;
        ep.last_reply = r;
        ep.counters.sent = ep.counters.sent.wrapping_add(1);
        let (peer, location) = (ep.peer, ep.location);
        self.write_reply(peer, &r, Some(location));
    }

    fn write_reply(&mut self, peer: SocketAddr, r: &LastReply, location: Option<u64>) {
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        // The answer to the last block of a block-wise body names it (RFC 7959 §2.3).
        let block1 = self
            .blocks
            .final_block1(&self.settings, peer, r.mid, r.at_ms);
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, r.code, r.reply_mid, r.token());
            if r.code == codes::CREATED {
                if let Some(loc) = location {
                    w.option(opt::LOCATION_PATH, b"rd");
                    w.option(opt::LOCATION_PATH, Endpoint::location_str(loc).as_bytes());
                }
            }
            if let Some(b) = block1 {
                w.option_uint(opt::BLOCK1, b.encode());
            }
            w.finish();
        });
    }

    /// An error reply with a diagnostic payload. To an address that has not
    /// proven itself (no registration from it, no DTLS session) it is never larger
    /// than the request (so a spoofed source cannot use us as an amplifier) nor
    /// than a block; a proven device gets a text longer than a block in Block2
    /// blocks (RFC 7959 §2.4, `block_server.rs`).
    fn reply_error(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        text: &str,
        req_len: usize,
    ) {
        use super::block_server::Diagnostic;
        let r = self.reply_header(msg, code);
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        let bound = (self.blocks).reply_bound(&self.settings, self.now, peer, msg.mid, req_len);
        let room = bound.saturating_sub(4 + r.tkl as usize + 1);
        let slot = self.table.find_peer(&peer);
        let proven = slot.is_some() || self.input_identity.is_some();
        let client_held = client_held(&self.table, slot);
        let d = self
            .blocks
            .diagnostic(cx!(self), client_held, peer, msg, code, text, room, proven);
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, code, r.reply_mid, r.token());
            match d {
                Diagnostic::Plain(n) => w.payload(&text.as_bytes()[..n]),
                Diagnostic::Block { block, size2 } => {
                    w.option_uint(opt::BLOCK2, block.encode())
                        .option_uint(opt::SIZE2, size2);
                    w.payload(&text.as_bytes()[..block.size()]);
                }
            }
        });
    }

    pub(super) fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        self.stats.resets_sent += 1;
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            MessageWriter::new(buf, MsgType::Rst, codes::EMPTY, mid, &[]).finish()
        });
    }

    pub(super) fn fresh_mid(&mut self) -> u16 {
        self.ids.mid()
    }
}

fn route_of<'a>(msg: &Message<'a>) -> Route<'a> {
    let mut segs = msg.option_values(opt::URI_PATH);
    match (segs.next(), segs.next(), segs.next()) {
        (Some(b"rd"), None, None) => Route::Register,
        (Some(b"rd"), Some(loc), None) => Route::Registration(loc),
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
