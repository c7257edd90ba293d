//! The shard among the shards: the directory every shard shares (which shard holds a
//! name and a location, which registration rendered a command route, which shard is the
//! home of a command filter), registrations moving between shards (NAT rebinding: a
//! request for a location held elsewhere asks its owner with `Takeover`, the owner hands
//! the endpoint over with `Adopt`, or answers from its reply cache, or says it has none),
//! registrations replaced on another shard (`Evict`), and command subscriptions, done on
//! the broker connections of their filter's home shard.
//!
//! Owns the takeovers this shard has asked for; reads and writes the directory; knows
//! nothing of the endpoint table, which the core passes where a decision needs it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::cx::Cx;
use super::directory::{ClaimError, DirEntry, Directory};
use super::endpoint::Endpoint;
use super::handover::{Handovers, Kept, HANDOVER_DEADLINE_MS};
use super::identity::PeerIdentity;
use super::output::{ClusterRequest, MqttOut, ShardMsg, Timer};
use super::publish::name_hash;
use super::settings::CoreSettings;

/// How long a takeover from another shard may stay unanswered before a request for
/// the registration asks again (the mailboxes normally answer within milliseconds;
/// devices retransmit after 2 s or more).
const TAKEOVER_TIMEOUT_MS: u64 = 2_000;

/// What became of a request for a registration this shard does not hold.
pub(super) enum Elsewhere {
    /// Another shard holds it, made over DTLS, and the request is plain CoAP.
    Forbidden,
    /// Its owner was asked for it (or already is): the request waits.
    Asked,
    /// No shard holds it.
    NotFound,
}

/// Where an adopted registration stands.
pub(super) enum Adoption {
    /// The current registration of its name: insert it.
    Current,
    /// Registered again (here or elsewhere) meanwhile: end it. `superseded`: another
    /// registration holds its name now (see [`Cluster::forget_superseded`]).
    Stale { superseded: bool },
}

pub(super) struct Cluster {
    shard: u16,
    dir: Arc<Directory>,
    /// Locations whose takeover from another shard is in flight, with the time after
    /// which a new request asks again and the address it was asked for.
    pending_takeovers: hashbrown::HashMap<u64, (u64, SocketAddr)>,
    /// The same takeovers by the address they were asked for.
    takeover_peers: hashbrown::HashMap<SocketAddr, u64>,
    /// The location the shared store just said it has no registration at, while the
    /// request for it is answered.
    store_missed: Option<u64>,
    /// Command subscriptions of registrations other nodes took over, kept until the
    /// new node's own is in place.
    handovers: Handovers,
}

impl Cluster {
    pub(super) fn new(shard: u16, dir: Arc<Directory>) -> Self {
        Cluster {
            shard,
            dir,
            pending_takeovers: Default::default(),
            takeover_peers: Default::default(),
            store_missed: None,
            handovers: Handovers::default(),
        }
    }

    pub(super) fn dir(&self) -> &Directory {
        &self.dir
    }

    /// True when the current registration of `name`, on any shard, was made over DTLS.
    pub(super) fn name_is_secure(&self, name: &str) -> bool {
        self.dir.name_is_secure(name)
    }

    /// Registers `name` at `location` on this shard: the one atomic step that decides
    /// between two shards racing (a plain Register is refused when the current
    /// registration of the name was made over DTLS). A registration of the name on
    /// another shard is told to leave (`Evict`), keeping its subscription when it has
    /// the same `mountpoint`.
    pub(super) fn claim(
        &mut self,
        cx: &mut Cx<'_>,
        name: &str,
        location: u64,
        secure: bool,
        mountpoint: &str,
    ) -> Result<bool, ClaimError> {
        let entry = DirEntry {
            shard: self.shard,
            location,
        };
        let old = self.dir.claim(name, entry, secure)?;
        match old {
            Some(old) if old.shard != self.shard => {
                let evict = ShardMsg::Evict {
                    name: name.into(),
                    location: old.location,
                    new_mountpoint: mountpoint.into(),
                };
                cx.out.to_shards.push((old.shard, evict));
            }
            _ => {}
        }
        Ok(old.is_some())
    }

    /// A new registration is in place: its command route (for a mountpoint not keyed by
    /// the name) and, with per-endpoint subscriptions, its command filter.
    pub(super) fn registered(&mut self, cx: &mut Cx<'_>, ep: &Endpoint) {
        if !cx.settings.mountpoint.keyed_by_name() {
            self.dir.set_route(&ep.mountpoint, &ep.name, ep.location);
        }
        self.subscribe(cx, ep);
    }

    /// A registration left: its name and location are released (unless they already
    /// name a newer one), and its subscription unless `keep_subscription` (a newer
    /// registration with the same mountpoint owns it now).
    pub(super) fn released(&mut self, cx: &mut Cx<'_>, ep: &Endpoint, keep_subscription: bool) {
        self.dir.release(&ep.name, ep.location);
        if !keep_subscription {
            self.release_subscription(cx, &ep.name, &ep.mountpoint, ep.location);
        }
    }

    /// A registration another node took over left: its name and location are
    /// released, but with per-endpoint subscriptions its command route and subscription
    /// are kept (a command the broker hands this node meanwhile finds no registration
    /// here and is forwarded to the new owner) until the new node says its own
    /// subscription is in place ([`end_handover`](Self::end_handover)) or
    /// [`HANDOVER_DEADLINE_MS`] passed.
    pub(super) fn moved_away(&mut self, cx: &mut Cx<'_>, ep: &Endpoint) {
        self.dir.release(&ep.name, ep.location);
        self.keep_for_handover(cx, ep);
    }

    /// The route and subscription of `ep`, which another node took over, are kept
    /// (see [`moved_away`](Self::moved_away)).
    fn keep_for_handover(&mut self, cx: &mut Cx<'_>, ep: &Endpoint) {
        if !cx.settings.per_endpoint_subscriptions {
            self.release_subscription(cx, &ep.name, &ep.mountpoint, ep.location);
            return;
        }
        let until = cx.now + HANDOVER_DEADLINE_MS;
        let kept = Kept {
            name: ep.name.clone(),
            mountpoint: ep.mountpoint.clone(),
            until,
        };
        self.handovers.keep(ep.location, kept);
        cx.stats.handovers_kept += 1;
        let location = ep.location;
        cx.out
            .timers
            .push((until, Timer::HandoverDeadline { location }));
    }

    /// The node that took `name` at `location` over has its subscription in place: the
    /// one kept here is given up. True if one was kept.
    pub(super) fn end_handover(&mut self, cx: &mut Cx<'_>, name: &str, location: u64) -> bool {
        let Some(kept) = self.handovers.take(name, location) else {
            return false;
        };
        cx.stats.handovers_confirmed += 1;
        self.give_up_kept(cx, kept, location);
        true
    }

    /// The handover deadline of the subscription kept for `location`: given up now if it
    /// still is kept (the new node's notice never came).
    pub(super) fn handover_due(&mut self, cx: &mut Cx<'_>, location: u64) {
        match self.handovers.due(cx.now, location) {
            Ok(kept) => {
                cx.stats.handovers_timed_out += 1;
                self.give_up_kept(cx, kept, location);
            }
            // Not due yet (the timer came early): armed again for its deadline.
            Err(Some(until)) => {
                let timer = Timer::HandoverDeadline { location };
                cx.out.timers.push((until, timer));
            }
            Err(None) => {}
        }
    }

    /// Gives up a kept subscription, unless the registration is held here again (taken
    /// back: it owns its route and subscription) or a newer registration of the name
    /// owns them (`release_subscription` decides).
    fn give_up_kept(&mut self, cx: &mut Cx<'_>, kept: Kept, location: u64) {
        if self.dir.by_name(&kept.name).map(|e| e.location) == Some(location) {
            return;
        }
        if !self.still_kept(cx.settings, &kept.mountpoint) {
            return;
        }
        self.release_subscription(cx, &kept.name, &kept.mountpoint, location);
    }

    /// Whether the filter of a kept subscription is still subscribed here: a newer
    /// registration of the name on this node owned it meanwhile, and its end gave it up
    /// (the device registered here again, then left): nothing is kept any more.
    fn still_kept(&self, settings: &CoreSettings, mountpoint: &str) -> bool {
        let filter = settings.command_filter(mountpoint);
        self.dir.sub_home_of(&filter).is_some()
    }

    /// The mountpoints of the subscriptions kept for handovers (and still subscribed).
    pub(super) fn kept_mountpoints<'a>(
        &'a self,
        settings: &'a CoreSettings,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.handovers
            .mountpoints()
            .filter(move |m| self.still_kept(settings, m))
    }

    /// How many subscriptions are kept for handovers.
    pub(super) fn kept_len(&self) -> usize {
        self.handovers.len()
    }

    /// The registration `ep`, taken over from node `from`, was just subscribed (with
    /// per-endpoint subscriptions): once the broker acknowledged the subscribe, the I/O
    /// side tells `from` to give its own up. When the filter's home is another shard of
    /// this node, its subscription was made there before (kept for an earlier handover,
    /// or another registration's with the same mountpoint) and this shard's connections
    /// do not hold it: the I/O side tells `from` at once.
    pub(super) fn adopted_from(&mut self, cx: &mut Cx<'_>, ep: &Endpoint, from: Box<str>) {
        if !cx.settings.per_endpoint_subscriptions {
            return;
        }
        let filter = cx.settings.command_filter(&ep.mountpoint);
        cx.out.cluster.push(ClusterRequest::Subscribed {
            node: from,
            name: ep.name.clone(),
            location: ep.location,
            filter,
        });
    }

    /// A registration `name` at `location` another node took over, which this shard's
    /// directory entry names but its table does not hold (handed to another shard, its
    /// `Adopt` on the way): the name's entry is released, so that the adoption finds the
    /// registration superseded (and forgets the location). The location stays taken
    /// meanwhile: a take of the same registration back from the store (a late datagram
    /// from the device's old address) must not adopt it a second time while this copy
    /// is on its way. True if it was.
    pub(super) fn release_in_transit(&mut self, name: &str, location: u64) -> bool {
        if !self.holds_here(name, location) {
            return false;
        }
        self.dir.release_name(name, location);
        true
    }

    /// Whether the directory names this shard the holder of `name` at `location`.
    pub(super) fn holds_here(&self, name: &str, location: u64) -> bool {
        let here = DirEntry {
            shard: self.shard,
            location,
        };
        self.dir.by_name(name) == Some(here)
    }

    /// Whether a location is free for a new registration.
    pub(super) fn location_free(&self, location: u64) -> bool {
        self.dir.by_location(location).is_none()
    }

    /// Registered endpoints on every shard made over DTLS (`secure`) or plain CoAP.
    pub(super) fn registrations_over(&self, secure: bool) -> usize {
        let dtls = self.dir.secure_len();
        if secure {
            dtls
        } else {
            self.dir.len().saturating_sub(dtls)
        }
    }

    /// Whether `name` is registered on some shard.
    pub(super) fn is_registered(&self, name: &str) -> bool {
        self.dir.by_name(name).is_some()
    }

    /// The shard holding `name`'s registration, when another one does.
    pub(super) fn holder_elsewhere(&self, name: &str) -> Option<u16> {
        self.dir
            .by_name(name)
            .map(|e| e.shard)
            .filter(|&s| s != self.shard)
    }

    /// A request (`datagram` from `peer`, with `identity`) for the registration at
    /// `location`, which this shard does not hold. Its owner is asked for it once;
    /// retransmissions meanwhile are dropped (the device retries), and an owner that
    /// does not answer in time is asked again by the next one.
    pub(super) fn request_for(
        &mut self,
        cx: &mut Cx<'_>,
        location: u64,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<&Arc<PeerIdentity>>,
    ) -> Elsewhere {
        let owner = match self.dir.by_location(location) {
            Some(owner) if owner != self.shard => owner,
            Some(_) => return Elsewhere::NotFound,
            None => return self.ask_store(cx, location, peer, datagram, identity),
        };
        if identity.is_none() && self.dir.location_is_secure(location) {
            // Plain CoAP may not move (nor touch) a DTLS registration.
            return Elsewhere::Forbidden;
        }
        if self.begin_takeover(cx, location, peer) {
            let takeover = ShardMsg::Takeover {
                location,
                from: self.shard,
                peer,
                datagram: datagram.to_vec(),
                identity: identity.cloned(),
            };
            cx.out.to_shards.push((owner, takeover));
        }
        Elsewhere::Asked
    }

    /// No shard of this node holds `location`: with a store shared by several nodes,
    /// the I/O side is asked to take the registration over from it (once; the request
    /// waits as for a takeover from another shard), unless it just answered that it
    /// found nothing ([`store_missed`](Self::store_missed)).
    fn ask_store(
        &mut self,
        cx: &mut Cx<'_>,
        location: u64,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<&Arc<PeerIdentity>>,
    ) -> Elsewhere {
        if !cx.settings.shared_store || self.store_missed == Some(location) {
            return Elsewhere::NotFound;
        }
        if self.begin_takeover(cx, location, peer) {
            cx.out.cluster.push(ClusterRequest::Take {
                location,
                peer,
                datagram: datagram.to_vec(),
                identity: identity.cloned(),
            });
        }
        Elsewhere::Asked
    }

    /// Records a takeover of `location` asked for on behalf of `peer` (with its timeout
    /// timer), unless one is in flight and not yet due. True when the caller must ask
    /// (another shard, or the shared store); false: the request waits for the answer
    /// already asked for.
    fn begin_takeover(&mut self, cx: &mut Cx<'_>, location: u64, peer: SocketAddr) -> bool {
        let now = cx.now;
        let asked = self.pending_takeovers.get(&location);
        if asked.is_some_and(|&(until, _)| now < until) {
            return false;
        }
        let until = now + TAKEOVER_TIMEOUT_MS;
        self.forget_takeover(location);
        self.pending_takeovers.insert(location, (until, peer));
        self.takeover_peers.insert(peer, location);
        cx.out
            .timers
            .push((until, Timer::TakeoverTimeout { location }));
        true
    }

    /// The shared store has no registration at `location` (or could not be asked): the
    /// request handled until [`store_answered`](Self::store_answered) is answered 4.04.
    pub(super) fn store_missed(&mut self, location: u64) {
        self.forget_takeover(location);
        self.store_missed = Some(location);
    }

    /// The request a [`store_missed`](Self::store_missed) was about was handled.
    pub(super) fn store_answered(&mut self) {
        self.store_missed = None;
    }

    /// The takeover of `location` was answered (adopted, answered from a cache, or
    /// missed).
    pub(super) fn takeover_answered(&mut self, location: u64) {
        self.forget_takeover(location);
    }

    fn forget_takeover(&mut self, location: u64) {
        if let Some((_, peer)) = self.pending_takeovers.remove(&location) {
            if self.takeover_peers.get(&peer) == Some(&location) {
                self.takeover_peers.remove(&peer);
            }
        }
    }

    /// Whether a takeover this shard asked for on behalf of `peer` is in flight.
    pub(super) fn awaits_takeover(&self, peer: SocketAddr) -> bool {
        self.takeover_peers
            .get(&peer)
            .is_some_and(|l| self.pending_takeovers.contains_key(l))
    }

    /// The takeover timer of `location`: a takeover still unanswered is forgotten, so
    /// the next request asks again. True if one was.
    pub(super) fn takeover_timed_out(&mut self, now: u64, location: u64) -> bool {
        let due = self
            .pending_takeovers
            .get(&location)
            .is_some_and(|&(until, _)| now >= until);
        if due {
            self.forget_takeover(location);
        }
        due
    }

    /// An endpoint another shard handed over. In transit a registration keeps its
    /// directory entry (the owner does not release it): any other entry, or none,
    /// means it was replaced or removed meanwhile; `held_here`: this shard holds its
    /// location already. A current one is recorded as this shard's.
    pub(super) fn adopt(&mut self, ep: &Endpoint, held_here: bool) -> Adoption {
        let superseded = self.dir.by_name(&ep.name).map(|e| e.location) != Some(ep.location);
        if superseded || held_here {
            return Adoption::Stale { superseded };
        }
        self.dir.moved(&ep.name, ep.location, self.shard);
        Adoption::Current
    }

    /// A superseded adopted registration (see [`adopt`](Self::adopt)): its location is
    /// forgotten and its command subscription released, unless the newer registration
    /// uses the same mountpoint. One that no registration of its name superseded was let
    /// go in transit because another node took it over
    /// ([`release_in_transit`](Self::release_in_transit)): its subscription is kept for
    /// the handover, as for one released from the table.
    pub(super) fn forget_superseded(&mut self, cx: &mut Cx<'_>, ep: &Endpoint) {
        self.dir.forget_location(ep.location);
        if cx.settings.shared_store && self.dir.by_name(&ep.name).is_none() {
            self.keep_for_handover(cx, ep);
            return;
        }
        self.release_subscription(cx, &ep.name, &ep.mountpoint, ep.location);
    }

    /// Gives up the command route and subscription of a registration that left, unless
    /// a newer registration of the same name (here or on another shard, whose Evict
    /// may still be on its way) uses the same mountpoint. Call after its name and
    /// location were released from the directory.
    fn release_subscription(
        &mut self,
        cx: &mut Cx<'_>,
        name: &str,
        mountpoint: &str,
        location: u64,
    ) {
        let owned = if cx.settings.mountpoint.keyed_by_name() {
            // The mountpoint follows from the name: any newer registration has it.
            self.dir.by_name(name).is_none()
        } else {
            // The route names the registration that rendered the mountpoint last;
            // a newer one with another mountpoint (`${peerhost}` after a move, a new
            // device_id) leaves this one's to be released here.
            self.dir.release_route(mountpoint, name, location)
        };
        if owned && cx.settings.per_endpoint_subscriptions {
            let filter = cx.settings.command_filter(mountpoint);
            // Forgotten first: whoever subscribes the filter from now on makes a new home.
            let home = self.dir.take_sub_home(&filter).unwrap_or(self.shard);
            let change = MqttOut::Unsubscribe {
                lane: home as u32,
                filter,
            };
            self.subscription_change(cx, home, change, name, location);
        }
    }

    /// Subscribes the registration's command filter on the broker connections of the
    /// filter's home shard: this one, unless another registration of it holds it elsewhere.
    /// On the registration's own lane, so that its register message, queued after it on the
    /// same connection, waits for the SUBACK.
    fn subscribe(&mut self, cx: &mut Cx<'_>, ep: &Endpoint) {
        if !cx.settings.per_endpoint_subscriptions {
            return;
        }
        let filter = cx.settings.command_filter(&ep.mountpoint);
        let home = self.dir.sub_home(&filter, self.shard);
        let change = MqttOut::Subscribe {
            lane: ep.lane,
            filter,
            qos: cx.settings.command.qos,
        };
        self.subscription_change(cx, home, change, &ep.name, ep.location);
    }

    /// A subscription change of registration `(name, location)` goes out on the home
    /// shard's connections (`lane` names it).
    fn subscription_change(
        &mut self,
        cx: &mut Cx<'_>,
        home: u16,
        change: MqttOut,
        name: &str,
        location: u64,
    ) {
        if home == self.shard {
            cx.out.mqtt.push(change);
        } else {
            let msg = ShardMsg::Subscription {
                change,
                name: name.into(),
                location,
            };
            cx.out.to_shards.push((home, msg));
        }
    }

    /// A subscription change another shard sent to this one, the filter's home when it
    /// was sent. A subscribe is done only while the registration that asked for it is
    /// the current one of its name (else it left, giving the filter up, or a newer one
    /// subscribed for itself) and the filter's home is still here; an unsubscribe whose
    /// filter a newer registration brought back here is not done.
    pub(super) fn subscription_arrived(
        &mut self,
        cx: &mut Cx<'_>,
        change: MqttOut,
        name: &str,
        location: u64,
    ) {
        let me = self.shard;
        match change {
            MqttOut::Subscribe { filter, qos, .. } => {
                let current = self.dir.by_name(name).map(|e| e.location) == Some(location);
                if current && self.dir.sub_home(&filter, me) == me {
                    cx.out.mqtt.push(MqttOut::Subscribe {
                        lane: name_hash(name),
                        filter,
                        qos,
                    });
                }
            }
            MqttOut::Unsubscribe { filter, .. } => {
                if self.dir.sub_home_of(&filter) != Some(me) {
                    cx.out.mqtt.push(MqttOut::Unsubscribe {
                        lane: me as u32,
                        filter,
                    });
                }
            }
            MqttOut::Publish { .. } => cx.out.mqtt.push(change),
        }
    }
}
