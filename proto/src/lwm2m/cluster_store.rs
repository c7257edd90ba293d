//! Registrations moving between the nodes that share a store (`CoreSettings::
//! shared_store`): one taken over from the store for a request that reached this node
//! (`Input::ClusterAdopt`, after the I/O side ran its take), a take that found nothing
//! (`Input::ClusterMiss`), and one another node took over (`Input::ClusterRelease`);
//! the same taken over by a device's address (`peer_takes.rs`: `Input::ClusterPeerMiss`
//! when the store has none).

use std::net::SocketAddr;
use std::sync::Arc;

use super::core::{cx, Removal};
use super::endpoint::Endpoint;
use super::identity::PeerIdentity;
use super::output::ClusterRequest;
use super::peer_takes::PeerTake;
use super::ShardCore;

impl ShardCore {
    /// The registration the I/O side took over from the store for the request
    /// `datagram`: claimed here as a restored one (lifetime armed, command filter
    /// subscribed, nothing published), its record written as this node's, then the
    /// request handled. A name or location this node holds already (registered here
    /// again meanwhile) keeps the local registration: the request is answered as a miss,
    /// and the taken record is removed (nobody holds that registration any more). A
    /// record this node itself owned (`from` None) is not taken in either: no shard here
    /// holds its registration, so it ended here (its record's removal still on its way
    /// to the store, behind this take) or another shard of this node is taking it in
    /// from the node that held it; taken in, an ended registration would live again.
    /// The request is answered as a miss (the device registers again).
    pub(super) fn cluster_adopt(
        &mut self,
        now: u64,
        endpoint: Box<Endpoint>,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<Arc<PeerIdentity>>,
        from: Option<Box<str>>,
    ) {
        let location = endpoint.location;
        self.cluster.takeover_answered(location);
        self.peer_takes.answered(peer);
        let Some(from) = from else {
            // Its removal, if it ended here, is queued already (counted as a miss).
            self.adoption_refused(now, location, peer, datagram, identity);
            return;
        };
        let taken = self.table.find_name(&endpoint.name).is_some()
            || self.table.find_location(location).is_some()
            || self.cluster.is_registered(&endpoint.name)
            || !self.cluster.location_free(location)
            || self
                .cluster
                .claim(
                    cx!(self),
                    &endpoint.name,
                    location,
                    endpoint.secure,
                    &endpoint.mountpoint,
                )
                .is_err();
        if taken {
            // The take made the record this node's, but the registration is not taken
            // in: unless this node holds the name at that very location, nobody holds
            // that registration now, and its record goes (the node it was taken from
            // lets it go when it hears of the take).
            let held = self.cluster.dir().by_name(&endpoint.name);
            if held.is_none_or(|e| e.location != location) {
                self.record_removed(&endpoint);
            }
            self.adoption_refused(now, location, peer, datagram, identity);
            return;
        }
        self.security.registration_here(endpoint.secure);
        let slot = self.table.insert(*endpoint);
        self.arm_expiry(slot);
        let ep = self.table.get(slot).expect("inserted");
        self.cluster.registered(cx!(self), ep);
        self.cluster.adopted_from(cx!(self), ep, from);
        self.out.stored(slot);
        self.stats.cluster_adopted += 1;
        if self.table.get(slot).is_some_and(|e| e.expires_ms <= now) {
            // Its lifetime ran out while no node served it (its node down, or stopped):
            // it ends here as its expiry would have (`expired`, the record removed), and
            // the request is answered as for an unknown location: the device registers
            // again, as after a restart past its deadline. Taken in, the request would
            // have renewed a registration that is over.
            self.stats.expiries += 1;
            self.remove_endpoint(slot, Removal::Expired);
            self.adoption_refused(now, location, peer, datagram, identity);
            return;
        }
        self.with_identity(identity, |c| c.handle_datagram(now, peer, datagram));
    }

    /// A take answered with a registration not taken in (see [`cluster_adopt`](Self::cluster_adopt)):
    /// the request is answered as for an unknown location, and a datagram held for a take
    /// by address as from an unknown address, without asking the store again (two nodes
    /// would take the record from each other without end).
    fn adoption_refused(
        &mut self,
        now: u64,
        location: u64,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<Arc<PeerIdentity>>,
    ) {
        self.peer_takes.missed(peer);
        self.cluster_miss(now, location, peer, datagram, identity);
        self.peer_takes.handled();
    }

    /// The store has no registration at `location` (or was unreachable): the request
    /// is answered as for an unknown location.
    pub(super) fn cluster_miss(
        &mut self,
        now: u64,
        location: u64,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<Arc<PeerIdentity>>,
    ) {
        self.stats.cluster_missed += 1;
        self.cluster.store_missed(location);
        self.with_identity(identity, |c| c.handle_datagram(now, peer, datagram));
        self.cluster.store_answered();
    }

    /// A plain datagram from `peer`, an address no registration here has (a response,
    /// a Send): true when it is held for a lookup of the address in the shared store
    /// (`ClusterRequest::TakePeer`, handled again with the answer), or dropped while one
    /// is in flight (the device retransmits); false: handle it as from nobody.
    pub(super) fn held_for_peer_take(&mut self, peer: SocketAddr, datagram: &[u8]) -> bool {
        if self.security.secure() {
            return false; // a DTLS device handshakes with this node first
        }
        match self
            .peer_takes
            .consider(self.now, peer, self.settings.shared_store)
        {
            PeerTake::Unknown => false,
            PeerTake::Wait => {
                self.stats.peer_takes_waiting += 1;
                true
            }
            PeerTake::Limited => {
                self.stats.peer_takes_limited += 1;
                true
            }
            PeerTake::Ask => {
                self.stats.peer_takes_asked += 1;
                self.out.cluster.push(ClusterRequest::TakePeer {
                    peer,
                    datagram: datagram.to_vec(),
                });
                true
            }
        }
    }

    /// The store has no registration at `peer`'s address (or was unreachable): the
    /// datagram held for the lookup is handled as from an unknown address.
    pub(super) fn cluster_peer_miss(&mut self, now: u64, peer: SocketAddr, datagram: &[u8]) {
        self.peer_takes.missed(peer);
        self.with_identity(None, |c| c.handle_datagram(now, peer, datagram));
        self.peer_takes.handled();
    }

    /// Another node took the registration `name` at `location` over: it leaves this
    /// node silently (no deregister message: it lives on there), its commands in
    /// progress end with an error, and its command subscription is kept for the
    /// handover (`Cluster::moved_away`). One on its way to
    /// another shard of this node (a `Takeover` answered, its `Adopt` in a mailbox) loses
    /// its directory entry: the adopting shard finds it superseded and ends it.
    pub(super) fn cluster_release(&mut self, name: &str, location: u64) {
        let Some(slot) = self.table.find_location(location) else {
            if self.cluster.release_in_transit(name, location) {
                self.stats.cluster_released += 1;
            }
            return;
        };
        if self.table.get(slot).map(|e| &*e.name == name) != Some(true) {
            return;
        }
        self.stats.cluster_released += 1;
        self.remove_endpoint(slot, Removal::Moved);
    }

    /// The node that took `name` at `location` over has its subscription in place: the
    /// one this shard kept for the handover is given up.
    pub(super) fn cluster_unsubscribe(&mut self, name: &str, location: u64) {
        self.cluster.end_handover(cx!(self), name, location);
        self.stats.handovers_pending = self.cluster.kept_len() as u64;
    }

    /// The handover deadline of the subscription kept for `location`.
    pub(super) fn handover_deadline(&mut self, location: u64) {
        self.cluster.handover_due(cx!(self), location);
        self.stats.handovers_pending = self.cluster.kept_len() as u64;
    }

    /// The mountpoints of the command subscriptions this shard keeps for handovers
    /// (registrations other nodes took over, until their subscriptions are in place).
    pub fn kept_for_handover(&self) -> impl Iterator<Item = &str> {
        self.cluster.kept_mountpoints(&self.settings)
    }
}
