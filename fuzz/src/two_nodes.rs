//! `core_endpoint` with two nodes sharing one store (mode bits 0x20, or 0x60 with
//! restarts): each node a [`World`] of its own (shards, directory, broker
//! subscriptions), the store a model of the Redis scripts' semantics
//! (`src/store/redis_scripts.rs`: PUT, REMOVE, TAKE, one at a time), and each node's I/O
//! side as ops the fuzz bytes order: its store writer's batch (and its broker's SUBACKs),
//! its cluster thread's takes and the notices other nodes send it (a release after their
//! take or claim; an unsubscribe once their subscription of a taken registration is
//! acknowledged).
//!
//! The broker acknowledges the subscription of a registration taken over from another
//! node only when the fuzz bytes say (the node's `write` op, or time passing: the model
//! assumes a SUBACK within the handover deadline, and before a clean stop); until then it
//! delivers nothing to it. Other subscriptions are acknowledged at once.
//!
//! Checks, beside each node's own (`World::check_always`, `check_quiescent`, one final
//! message per command on the node that received it): no panic; every reply to a
//! request a take held is a reply to it; a command published for a name some node
//! holds always finds a subscriber (the handover keeps the old node's subscription
//! until the new node's is acknowledged); once nothing is in flight anywhere, a name is
//! held by one node at most, the one the store names as its owner, at the store's
//! location; and in the end every command got exactly one final message and everything
//! expired, leaving the store empty.

use super::*;
use lwm2m_gateway::lwm2m::handover::HANDOVER_DEADLINE_MS;
use lwm2m_gateway::lwm2m::record;
use lwm2m_gateway::lwm2m::ClusterRequest;
use lwm2m_gateway::store::{Change, PendingChanges};
use std::collections::HashMap;

/// The store as the Redis scripts keep it: name → (location, record, owner node),
/// location → name, a plain registration's address → location.
#[derive(Default)]
pub struct SharedStore {
    pub regs: BTreeMap<String, (u64, Vec<u8>, usize)>,
    locs: BTreeMap<u64, String>,
    peers: BTreeMap<SocketAddr, u64>,
}

impl SharedStore {
    /// PUT: a claim takes the name; anything else applies while `node` owns the name at
    /// that location, or nobody does. A location another name holds is refused. The
    /// previous owner of the name and its location, when another node.
    fn put(
        &mut self,
        node: usize,
        name: &str,
        loc: u64,
        rec: Vec<u8>,
        claim: bool,
    ) -> Option<(usize, u64)> {
        let old = self.regs.get(name).map(|(l, _, o)| (*l, *o));
        if !claim && old.is_some_and(|o| o != (loc, node)) {
            return None;
        }
        if self.locs.get(&loc).is_some_and(|n| n != name) {
            return None;
        }
        if let Some((l, _)) = old.filter(|(l, _)| *l != loc) {
            self.locs.remove(&l);
        }
        let new_peer = record::plain_peer_of(&rec);
        let old_peer = self
            .regs
            .get(name)
            .and_then(|r| record::plain_peer_of(&r.1));
        if let Some(p) = old_peer.filter(|p| Some(*p) != new_peer) {
            let at = self.peers.get(&p).copied();
            if at == Some(loc) || at.is_some() && at == old.map(|(l, _)| l) {
                self.peers.remove(&p);
            }
        }
        if let Some(p) = new_peer {
            self.peers.insert(p, loc);
        }
        self.regs.insert(name.into(), (loc, rec, node));
        self.locs.insert(loc, name.into());
        old.filter(|(_, o)| *o != node).map(|(l, o)| (o, l))
    }

    /// REMOVE: only `node`'s record at that location.
    fn remove(&mut self, node: usize, name: &str, loc: u64) {
        if self
            .regs
            .get(name)
            .is_some_and(|(l, _, o)| *l == loc && *o == node)
        {
            let (_, rec, _) = self.regs.remove(name).expect("checked");
            self.locs.remove(&loc);
            if let Some(p) = record::plain_peer_of(&rec) {
                if self.peers.get(&p) == Some(&loc) {
                    self.peers.remove(&p);
                }
            }
        }
    }

    /// TAKE_PEER: the plain registration at address `peer` becomes `node`'s (not one
    /// `node` holds already, nor one a stale index names): (name, record, previous owner).
    fn take_peer(&mut self, node: usize, peer: SocketAddr) -> Option<(String, Vec<u8>, usize)> {
        let loc = *self.peers.get(&peer)?;
        let name = self.locs.get(&loc)?.clone();
        let reg = self.regs.get_mut(&name)?;
        if reg.0 != loc || record::plain_peer_of(&reg.1) != Some(peer) || reg.2 == node {
            return None;
        }
        let prev = std::mem::replace(&mut reg.2, node);
        Some((name, reg.1.clone(), prev))
    }

    /// TAKE: the registration at `loc` becomes `node`'s: (name, record, previous owner).
    fn take(&mut self, node: usize, loc: u64) -> Option<(String, Vec<u8>, usize)> {
        let name = self.locs.get(&loc)?.clone();
        let reg = self.regs.get_mut(&name)?;
        if reg.0 != loc {
            return None;
        }
        let prev = std::mem::replace(&mut reg.2, node);
        Some((name, reg.1.clone(), prev))
    }
}

/// The nodes, their store, and the notices on their way.
pub struct Nodes {
    pub nodes: Vec<World>,
    pub store: SharedStore,
    /// Release notices not heard yet: (node, name, location).
    pub releases: Vec<(usize, String, u64)>,
    /// Unsubscribe notices not heard yet: (node, name, location).
    pub unsubscribes: Vec<(usize, String, u64)>,
    /// Adoptions' confirmations waiting for their node's SUBACKs: (node that adopted,
    /// node it was taken from, name, location).
    pub confirms: Vec<(usize, usize, String, u64)>,
    /// Unsubscribe notices heard.
    pub confirmed: u64,
    /// Registrations a node let go on hearing a release while the broker delivered
    /// their commands to some node: (node, name, location), with the time it did.
    pub let_go: HashMap<(usize, String, u64), u64>,
    pub next_req: u64,
    /// Registrations a node adopted from the store, and releases heard.
    pub adopted: u64,
    pub released: u64,
    /// Commands forwarded to the owner by a node that did not hold their endpoint.
    pub forwarded: u64,
    /// Commands published while no node subscribed their filter (lost, as on a broker).
    pub unheard: u64,
    /// Records left in the store once every registration expired: none, asserted by
    /// [`finish`].
    pub leaked: u64,
}

impl Nodes {
    pub fn new(shards: usize) -> Self {
        Nodes {
            nodes: (0..2).map(|n| World::node(shards, n as u64)).collect(),
            store: SharedStore::default(),
            releases: Vec::new(),
            unsubscribes: Vec::new(),
            confirms: Vec::new(),
            confirmed: 0,
            let_go: HashMap::new(),
            next_req: 1,
            adopted: 0,
            released: 0,
            forwarded: 0,
            unheard: 0,
            leaked: 0,
        }
    }

    /// The broker acknowledged node `n`'s subscriptions: the confirmations waiting for
    /// them go out as unsubscribe notices.
    pub fn acknowledge(&mut self, n: usize) {
        self.nodes[n].acknowledge();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirms)
            .into_iter()
            .partition(|c| c.0 == n);
        self.confirms = waiting;
        for (_, to, name, location) in due {
            self.unsubscribes.push((to, name, location));
        }
    }

    fn acknowledge_all(&mut self) {
        for n in 0..self.nodes.len() {
            self.acknowledge(n);
        }
    }

    /// Node `n`'s store writer writes its batch (its broker connection read the SUBACKs
    /// meanwhile), coalesced per name as the real writer does ([`PendingChanges`]); the
    /// owners a claim replaced are told.
    pub fn write(&mut self, n: usize) {
        self.acknowledge(n);
        let mut batch = PendingChanges::default();
        for c in std::mem::take(&mut self.nodes[n].unwritten) {
            batch.add(c);
        }
        for (name, c) in batch.take_sorted() {
            let claim = matches!(c, Change::Claim(_));
            if trace() {
                let had = self.store.regs.get(&*name).map(|r| (r.0, r.2));
                let what = match &c {
                    Change::Put(r) | Change::Claim(r) => {
                        format!("put {:x?} (claim {claim})", record::location_of(r))
                    }
                    Change::Remove(l) => format!("remove {l:x}"),
                };
                eprintln!("  node {n} writes {name}: {what}; the store had {had:x?}");
            }
            match c {
                Change::Put(record) | Change::Claim(record) => {
                    let location = record::location_of(&record).expect("a record's location");
                    if let Some((prev, l)) = self.store.put(n, &name, location, record, claim) {
                        self.releases.push((prev, name.to_string(), l));
                    }
                }
                Change::Remove(location) => self.store.remove(n, &name, location),
            }
        }
    }

    /// Notice `i` of those on their way (releases, then unsubscribes) reaches its node.
    pub fn hear_notice(&mut self, i: usize) {
        let all = self.releases.len() + self.unsubscribes.len();
        if all == 0 {
            return;
        }
        let i = i % all;
        if i < self.releases.len() {
            self.hear_release(i);
        } else {
            self.hear_unsubscribe(i - self.releases.len());
        }
    }

    /// Unsubscribe notice `i` reaches its node: to every shard, as the notice listener
    /// does (the shard keeping the subscription acts).
    fn hear_unsubscribe(&mut self, i: usize) {
        let (n, name, location) = self.unsubscribes.remove(i);
        if trace() {
            eprintln!("  node {n} hears the unsubscribe of {name} at {location:x}");
        }
        let w = &mut self.nodes[n];
        for core in &mut w.cores {
            let name = name.as_str().into();
            core.handle(w.now, Input::ClusterUnsubscribe { name, location });
        }
        let fx = w.collect();
        assert!(fx.replies.is_empty(), "an unsubscribe sent a datagram");
        assert_eq!(fx.publishes, 0, "an unsubscribe published");
        self.confirmed += 1;
    }

    /// Release notice `i` (of those on their way) reaches its node: to the shard its
    /// directory names for that registration, as the notice listener does.
    pub fn hear_release(&mut self, i: usize) {
        if self.releases.is_empty() {
            return;
        }
        let (n, name, location) = self.releases.remove(i % self.releases.len());
        // The listener asks the store first: a notice older than this node's own take
        // of the registration (two nodes took it in turn) is stale.
        if self.store.regs.get(&name).map(|r| (r.0, r.2)) == Some((location, n)) {
            return;
        }
        // Whether the broker delivers the name's commands to some node as it is let go:
        // if not (the registration was itself taken in from the store while no node
        // subscribed, e.g. from a node that had ended it, its record's removal not yet
        // written, and is taken over again before its SUBACK), the handover has no
        // subscription in place to keep, and the gap that follows is that of the
        // registration taken in.
        let filter = format!("lwm2m/{name}/dn/#");
        let heard = self
            .nodes
            .iter()
            .any(|v| v.subscribed.iter().any(|(_, f)| *f == filter));
        let w = &mut self.nodes[n];
        let Some(at) = w.dir.by_name(&name).filter(|e| e.location == location) else {
            return;
        };
        if trace() {
            eprintln!("  node {n} hears the release of {name} at {location:x}");
        }
        let core = &mut w.cores[at.shard as usize];
        let before = core.stats().cluster_released;
        let input = Input::ClusterRelease {
            name: name.as_str().into(),
            location,
        };
        core.handle(w.now, input);
        if core.stats().cluster_released != before && heard {
            self.let_go.insert((n, name, location), w.now);
        }
        let fx = w.collect();
        assert!(fx.replies.is_empty(), "a release sent a datagram");
        assert_eq!(fx.publishes, 0, "a release published a register message");
        self.released += 1;
    }

    /// Node `n`'s cluster thread runs its takes, one at a time, and hands each answer
    /// to the shard that asked.
    pub fn run_takes(&mut self, n: usize) {
        for (shard, r) in std::mem::take(&mut self.nodes[n].takes) {
            self.take(n, shard, r);
        }
    }

    fn take(&mut self, n: usize, shard: usize, r: ClusterRequest) {
        let (location, peer, datagram, identity) = match r {
            ClusterRequest::Take {
                location,
                peer,
                datagram,
                identity,
            } => (Some(location), peer, datagram, identity),
            ClusterRequest::TakePeer { peer, datagram } => (None, peer, datagram, None),
            ClusterRequest::Subscribed {
                node,
                name,
                location,
                filter,
            } => {
                assert_eq!(filter, format!("lwm2m/{name}/dn/#"), "the filter confirmed");
                let to: usize = node.parse().expect("a node of the model");
                assert_ne!(to, n, "a confirmation to the node itself");
                self.confirms.push((n, to, name.into(), location));
                return;
            }
        };
        let epoch = self.nodes[n].settings.clock_epoch_ms;
        let found = match location {
            Some(location) => self.store.take(n, location),
            None => self.store.take_peer(n, peer),
        };
        let input = match found {
            Some((name, rec, prev)) => {
                // Taken back (or taken) by node `n`: a handover of the name from `n` is
                // over, its newer registration owns the subscription (and may end at
                // once, with the request the take held).
                self.let_go.retain(|(m, k, _), _| *m != n || *k != name);
                let ep = record::decode(&rec, epoch).expect("a record in the store decodes");
                if prev != n {
                    self.releases.push((prev, name, ep.location));
                }
                self.adopted += 1;
                Input::ClusterAdopt {
                    endpoint: Box::new(ep),
                    peer,
                    datagram: datagram.clone(),
                    identity,
                    from: (prev != n).then(|| prev.to_string().into()),
                }
            }
            None => match location {
                Some(location) => Input::ClusterMiss {
                    location,
                    peer,
                    datagram: datagram.clone(),
                    identity,
                },
                None => Input::ClusterPeerMiss {
                    peer,
                    datagram: datagram.clone(),
                },
            },
        };
        if trace() {
            eprintln!("  node {n} shard {shard} take of {location:x?} / {peer}: {input:?}");
        }
        let w = &mut self.nodes[n];
        let core = &mut w.cores[shard];
        let dups = core.stats().duplicates;
        let before = core.endpoints().find_peer(&peer).is_some();
        core.handle(w.now, input);
        let core = &w.cores[shard];
        let dup = core.stats().duplicates != dups;
        let proven = before || core.endpoints().find_peer(&peer).is_some();
        // The subscription of a registration taken over waits for its SUBACK.
        w.defer_acks = true;
        let fx = w.collect();
        w.defer_acks = false;
        check_replies(&fx, peer, &datagram, dup, proven);
        if dup {
            assert_eq!(
                fx.publishes, 0,
                "a duplicate answered from the cache published"
            );
        }
    }

    /// A command published on MQTT for a name from the fuzz bytes: the broker hands it
    /// to one node subscribing its filter (none: lost); a node that does not hold the
    /// endpoint forwards it to the store's owner, which handles it as delivered.
    pub fn command(&mut self, p: u8, r: &mut Bytes<'_>) {
        let k = r.u8();
        let name = if k >= 240 {
            format!("nobody-{}", k % 3)
        } else {
            NAMES[k as usize % NAMES.len()].to_string()
        };
        let id = self.next_req;
        self.next_req += 1;
        let (t, body, broken) = command_body(r, id);
        let filter = format!("lwm2m/{name}/dn/#");
        let subscribers: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].subscribed.iter().any(|(_, f)| *f == filter))
            .collect();
        let Some(&first) = subscribers.get(p as usize % subscribers.len().max(1)) else {
            self.assert_unheld(&name);
            self.unheard += 1;
            return;
        };
        let mut n = first;
        if self.nodes[n].dir.by_name(&name).is_none() {
            if let Some(&(_, _, owner)) = self.store.regs.get(&name) {
                if owner != n {
                    n = owner;
                    self.forwarded += 1;
                }
            }
        }
        self.nodes[n].command(p as usize, id, &name, t, body, broken);
    }

    /// A command for `name` found no subscriber: no node may hold `name` (but while
    /// its registration is on its way between two shards of a node, whose
    /// subscription stays at its home shard).
    fn assert_unheld(&self, name: &str) {
        for (n, w) in self.nodes.iter().enumerate() {
            if !w.mailbox.is_empty() {
                continue;
            }
            let held = w.cores.iter().any(|c| {
                c.endpoints()
                    .find_name(name)
                    .and_then(|s| c.endpoints().get(s))
                    .is_some_and(|ep| {
                        let filter = format!("{}dn/#", ep.mountpoint);
                        !self.exempt(n, name, ep.location, &filter)
                    })
            });
            assert!(
                !held,
                "a command for {name}, held by node {n}, found no subscriber (subscribed: {:?}, unacknowledged: {:?})",
                w.subscribed, w.unacked
            );
        }
    }

    /// The clock of every node moves forward (the broker acknowledged every
    /// subscription before: a SUBACK comes within the handover deadline).
    pub fn advance(&mut self, ms: u64) {
        self.acknowledge_all();
        for w in &mut self.nodes {
            w.advance(ms);
        }
    }

    /// Node `n` stops cleanly (its shards drained, its writer's batch written, the
    /// release notices for it heard) and starts again on the records it owns.
    pub fn restart(&mut self, n: usize) {
        // A clean stop takes longer than the other node's SUBACK.
        self.acknowledge_all();
        self.nodes[n].deliver_all();
        self.write(n);
        while let Some(i) = self.unsubscribes.iter().position(|r| r.0 == n) {
            self.hear_unsubscribe(i);
        }
        while let Some(i) = self.releases.iter().position(|r| r.0 == n) {
            self.hear_release(i);
            self.nodes[n].deliver_all();
            self.write(n);
        }
        let owned = self
            .store
            .regs
            .iter()
            .filter(|(_, r)| r.2 == n)
            .map(|(name, (l, rec, _))| (name.clone(), (*l, rec.clone())));
        // The subscriptions it kept for handovers end with the process (a known limit,
        // docs/deployment.md): the registrations it let go are no longer handed over.
        self.let_go.retain(|(m, ..), _| *m != n);
        let w = &mut self.nodes[n];
        w.store = owned.collect();
        // A process draws a new location key at every start: the locations it hands
        // out from then on do not repeat those of before, which another node may hold.
        let mut settings = (*w.settings).clone();
        settings.location_key[1] ^= 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(w.restarts + 1);
        w.settings = Arc::new(settings);
        w.restart();
        w.store.clear();
    }

    /// Nothing in flight: no shard message, batch, take, SUBACK, confirmation or notice.
    pub fn idle(&self) -> bool {
        self.releases.is_empty()
            && self.unsubscribes.is_empty()
            && self.confirms.is_empty()
            && self.nodes.iter().all(|w| w.unacked.is_empty())
            && self
                .nodes
                .iter()
                .all(|w| w.mailbox.is_empty() && w.unwritten.is_empty() && w.takes.is_empty())
    }

    /// Delivers, writes, takes and hears until nothing is in flight.
    pub fn settle(&mut self) {
        let mut rounds = 0;
        while !self.idle() {
            for n in 0..self.nodes.len() {
                self.nodes[n].deliver_all();
                self.write(n);
                self.run_takes(n);
            }
            while !self.releases.is_empty() {
                self.hear_release(0);
            }
            while !self.unsubscribes.is_empty() {
                self.hear_unsubscribe(0);
            }
            rounds += 1;
            assert!(rounds < 1_000, "the nodes never settle");
        }
    }

    /// Every node knows every name that got a register message and every location a
    /// node handed out (a device may take either to another node).
    fn share_names(&mut self) {
        let mut names = HashSet::new();
        let mut locations = Vec::new();
        for w in &self.nodes {
            names.extend(w.names.iter().cloned());
            for l in &w.locations {
                if !locations.contains(l) {
                    locations.push(l.clone());
                }
            }
        }
        for w in &mut self.nodes {
            w.names = names.clone();
            w.locations = locations.clone();
        }
    }

    /// Every node knows every observe command answered on any node: an observation moves
    /// with its registration (taken over by its location or by the device's address),
    /// and the new node publishes its notifications with that command's reqID. A copy
    /// keeps its count of final messages, so a second final for it on the new node
    /// still fails.
    fn share_observes(&mut self) {
        let mut answered = Vec::new();
        for w in &self.nodes {
            for (id, c) in &w.cmds {
                if c.msg_type.as_deref() == Some("observe") && c.finals >= 1 {
                    answered.push((*id, c.clone()));
                }
            }
        }
        for w in &mut self.nodes {
            for (id, c) in &answered {
                w.cmds.entry(*id).or_insert_with(|| c.clone());
            }
        }
    }

    pub fn check_always(&self) {
        for w in &self.nodes {
            w.check_always();
            if w.mailbox.is_empty() {
                w.check_quiescent();
            }
        }
        if self.idle() {
            self.check_one_owner();
        }
        self.check_heard();
    }

    /// A node that let a registration go and holds its name again (taken back, or
    /// registered anew there) owns the name's subscription again: the handover is over.
    fn forget_handovers_of_held_names(&mut self) {
        let nodes = &self.nodes;
        self.let_go.retain(|(m, name, _), _| {
            !nodes[*m]
                .cores
                .iter()
                .any(|c| c.endpoints().find_name(name).is_some())
        });
    }

    /// A name some node holds has a subscriber the broker delivers to (checked while no
    /// registration is on its way between a node's shards), but see [`exempt`](Self::exempt).
    pub fn check_heard(&self) {
        if self.nodes.iter().any(|w| !w.mailbox.is_empty()) {
            return;
        }
        for (n, w) in self.nodes.iter().enumerate() {
            for c in &w.cores {
                for (_, ep) in c.endpoints().slots() {
                    let filter = format!("{}dn/#", ep.mountpoint);
                    let heard = self
                        .nodes
                        .iter()
                        .any(|v| v.subscribed.iter().any(|(_, f)| *f == filter));
                    assert!(
                        heard || self.exempt(n, &ep.name, ep.location, &filter),
                        "{} (held by node {n}) has no subscriber the broker delivers to",
                        ep.name
                    );
                }
            }
        }
    }

    /// A registration node `n` took over whose subscription awaits its SUBACK, which no
    /// node let go on hearing a release (or the node that did registered the name again
    /// since, or restarted): the node it was taken from had a newer registration of the
    /// name (the device registered there again), and that newer registration's end gave
    /// the subscription up, which is not a handover (the device left the registration
    /// taken over; see `finish` on stale records); or the old node stopped during the
    /// handover, taking its subscription with it, or its 10 s deadline passed before
    /// the registration was taken in (e.g. a take whose adoption the core refused,
    /// asked again later): the documented limits of the handover. Nor does a node that
    /// let the registration go while no node had a subscription the broker delivers to
    /// count (it was itself taken in from the store with nobody subscribed, e.g. from a
    /// node that had ended it, its record not yet removed, and taken over again before
    /// its SUBACK): its subscription, kept for the handover, is the one that awaits its
    /// SUBACK; there was none in place to hand over.
    fn exempt(&self, n: usize, name: &str, location: u64, filter: &str) -> bool {
        let awaiting = self.nodes[n].unacked.iter().any(|(_, f)| f == filter);
        let now = self.nodes[n].now;
        let handed_over = (0..self.nodes.len()).any(|m| {
            self.let_go
                .get(&(m, name.to_string(), location))
                .is_some_and(|&at| now < at + HANDOVER_DEADLINE_MS)
        });
        awaiting && !handed_over
    }

    /// With nothing in flight: a name is held by one node at most, the store's owner
    /// of it, at the store's location.
    pub fn check_one_owner(&self) {
        let mut held: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
        for (n, w) in self.nodes.iter().enumerate() {
            for c in &w.cores {
                for (_, ep) in c.endpoints().slots() {
                    let e = held.entry(ep.name.to_string()).or_default();
                    e.push((n, ep.location));
                }
            }
        }
        for (name, holders) in &held {
            assert_eq!(
                holders.len(),
                1,
                "{name} is held by several nodes: {holders:?}"
            );
            let (n, l) = holders[0];
            let stored = self.store.regs.get(name).map(|r| (r.2, r.0));
            assert_eq!(
                stored,
                Some((n, l)),
                "{name} is held by node {n} at {l:x}; the store says (owner, location) {stored:?}"
            );
        }
    }

    pub fn check_all_final(&self, why: &str) {
        for w in &self.nodes {
            w.check_all_final(why);
        }
    }
}

/// `core_endpoint` in two-node mode: after the shard count and mode, each op is an op
/// byte, a peer byte and a node byte, then the op's arguments. The ops of one node
/// (`core_op`: datagrams, timers, shard messages, device answers) run on the node the
/// node byte picks (the balancer sends a device to either); the clock moves both;
/// commands go through the broker (`Nodes::command`); beyond them: a node's batch
/// written, its takes run, a release notice heard, and (mode 0x60) a node restarted.
/// Then everything in flight settles, commands end without device traffic and every
/// registration expires ([`finish`]).
pub fn run(data: &[u8]) -> Nodes {
    let mut c = run_ops(data);
    finish(&mut c);
    c
}

/// The ops of [`run`], then everything in flight settles (no time passes).
pub fn run_ops(data: &[u8]) -> Nodes {
    let mut r = Bytes::new(data);
    let shards = 1 + (r.u8() % 4) as usize;
    let mode = r.u8();
    let settle = mode & 1 == 1;
    let base = if mode & 0x80 != 0 { 16 } else { 10 };
    let restarts = mode & 0x40 != 0;
    let n_ops = base + 3 + restarts as u8;
    let mut c = Nodes::new(shards);
    let mut ops = 0;
    while !r.done() && ops < 256 {
        ops += 1;
        for w in &mut c.nodes {
            w.ops = ops;
        }
        let op = r.u8() % n_ops;
        let p = r.u8() % PEERS;
        let n = (r.u8() & 1) as usize;
        if trace() {
            eprintln!("op {op} peer {p} node {n} at {} ms", c.nodes[0].now);
        }
        match op {
            6 => {
                let ms = match r.u8() {
                    255 => 2 * 86_400_000,
                    k => k as u64 * 1_500,
                };
                c.advance(ms);
            }
            10..=12 if base == 16 => c.command(p, &mut r),
            op if op < base => core_op(&mut c.nodes[n], op, p, &mut r),
            op => match op - base {
                0 => c.write(n),
                1 => c.run_takes(n),
                2 => {
                    let i = r.u8() as usize;
                    c.hear_notice(i);
                }
                _ => c.restart(n),
            },
        }
        c.share_names();
        c.share_observes();
        c.forget_handovers_of_held_names();
        if settle {
            c.settle();
        }
        c.check_always();
    }
    c.settle();
    c.check_always();
    c
}

/// Commands end without device traffic, then every registration expires and leaves
/// nothing behind, on either node or in the store.
pub fn finish(c: &mut Nodes) {
    if c.nodes.iter().any(|w| !w.cmds.is_empty()) {
        let per_ep = 1 + core_settings().max_queued as u64;
        c.advance((per_ep + 1) * EXCHANGE_SPAN_MS);
        c.settle();
        c.check_always();
        c.check_all_final("after the exchanges' time without device traffic");
    }
    c.advance(3 * 86_400_000);
    c.settle();
    c.check_all_final("after every endpoint expired");
    for w in &c.nodes {
        for core in &w.cores {
            assert_eq!(
                core.endpoints().len(),
                0,
                "endpoints outlive their lifetime"
            );
        }
        assert_eq!(w.dir.len(), 0, "directory keeps expired names");
        assert!(
            w.subscribed.is_empty() && w.unacked.is_empty(),
            "subscriptions outlive the endpoints"
        );
        for core in &w.cores {
            assert_eq!(
                core.kept_for_handover().count(),
                0,
                "subscriptions kept for handovers outlive their deadline"
            );
        }
        assert_eq!(
            w.dir.sub_homes(),
            0,
            "subscription homes outlive the endpoints"
        );
        assert_eq!(w.timers.len(), 0, "timers left after everything expired");
    }
    // No record outlives every registration: each way a node stops holding a
    // registration (ended, replaced, let go to another node, a take it did not take in,
    // an adoption found superseded) queues the record's removal behind every change of
    // it the node made before, and the writer keeps each location's last change.
    c.leaked = c.store.regs.len() as u64;
    assert_eq!(
        c.leaked,
        0,
        "records outlive every registration (name, location, owner): {:x?}",
        c.store
            .regs
            .iter()
            .map(|(n, r)| (n, r.0, r.2))
            .collect::<Vec<_>>()
    );
}
