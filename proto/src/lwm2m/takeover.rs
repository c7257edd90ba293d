//! Registrations moving between shards, as the owner and as the new home (NAT rebinding:
//! a device's new address hashed to another shard), and registrations another shard
//! replaced. The cluster machine decides from the directory; the core moves the
//! endpoint and its session.

use std::net::SocketAddr;
use std::sync::Arc;

use super::cluster::Adoption;
use super::core::{cx, dm_env, Removal};
use super::endpoint::Endpoint;
use super::identity::PeerIdentity;
use super::output::{ShardMsg, Timer};
use super::ShardCore;
use crate::coap::Message;

impl ShardCore {
    /// Another shard registered `name` again: this shard's registration at `location`
    /// (if still here and still that name's) leaves; its subscription stays when the new
    /// registration has the same mountpoint. An Evict that finds the name held here at
    /// that very location again is stale: the newer registration ended before it
    /// arrived, and this shard took the registration at `location` back in meanwhile
    /// (its record, not yet removed from the shared store, taken for a request to that
    /// location); it is the name's current registration and owns the subscription.
    pub(super) fn on_evict(&mut self, name: &str, location: u64, new_mountpoint: &str) {
        if self.cluster.holds_here(name, location) {
            return;
        }
        if let Some(slot) = self.table.find_location(location) {
            let same = self.table.get(slot).map(|e| &*e.name == name) == Some(true);
            if same {
                let keep = self
                    .table
                    .get(slot)
                    .map(|e| &*e.mountpoint == new_mountpoint)
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

    /// Shard `from` got a request (`datagram` from `peer`, with `identity`) for the
    /// registration at `location`: hand the endpoint over (`Adopt`), answer a late copy of
    /// a request already answered from the reply cache (`CachedReply`, the endpoint stays
    /// here), or say it is not here (`TakeoverMiss`).
    pub(super) fn on_takeover(
        &mut self,
        now: u64,
        location: u64,
        from: u16,
        peer: SocketAddr,
        datagram: Vec<u8>,
        identity: Option<Arc<PeerIdentity>>,
    ) {
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

    /// The endpoint another shard handed over, with the request that asked for it: kept
    /// as this shard's registration when it is the current one of its name (ended
    /// otherwise), then the request is handled here, with the identity it arrived with.
    pub(super) fn on_adopt(
        &mut self,
        now: u64,
        endpoint: Box<Endpoint>,
        peer: SocketAddr,
        datagram: &[u8],
        identity: Option<Arc<PeerIdentity>>,
    ) {
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
                self.dm
                    .finish_session(cx!(self), &mut stale, "endpoint registered again");
                if superseded {
                    // Its record goes if it is still of this location (nothing changes
                    // when the newer registration's record replaced it): another node
                    // that took the name may have ended its registration while a change
                    // of this one, made before the shard let it go, waited in this
                    // node's writer.
                    self.record_removed(&stale);
                    self.cluster.forget_superseded(cx!(self), &stale);
                    self.stats.handovers_pending = self.cluster.kept_len() as u64;
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
                self.security.registration_here(endpoint.secure);
                let slot = self.table.insert(*endpoint);
                // What changed on the old shard since its last drain is written here.
                self.out.stored(slot);
                let gen = self.table.generation(slot);
                self.out.timers.push((expires, Timer::Expire { slot, gen }));
                self.dm.rearm_session(cx!(self), dm_env!(self), slot);
            }
        }
        // With the identity it arrived with: an Update over the new DTLS
        // session of a moved registration is that registration's own.
        self.with_identity(identity, |c| c.handle_datagram(now, peer, datagram));
    }
}
