//! A shard's endpoint table: a slab of endpoints indexed by location, peer address
//! and name. The indices hold only slot numbers (hashbrown `HashTable<u32>`), so
//! each costs a few bytes per endpoint. The parameters and object lists of its
//! endpoints are shared copies ([`Interner`]). Owned by one shard: no locks.

use super::endpoint::{Endpoint, Objects};
use super::intern::Interner;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Default)]
pub struct EndpointTable {
    slots: Vec<Option<Endpoint>>,
    /// Generation per slot, bumped on every re-arm and removal: a timer carrying an
    /// older generation is stale.
    gens: Vec<u32>,
    /// Incarnation per slot, bumped only when an endpoint is inserted: exchange
    /// timers of an earlier occupant of the slot carry an older one.
    incarnations: Vec<u32>,
    free: Vec<u32>,
    by_location: HashTable<u32>,
    by_peer: HashTable<u32>,
    by_name: HashTable<u32>,
    hasher: DefaultHashBuilder,
    len: usize,
    params: Interner<str>,
    objects: Interner<Objects>,
}

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn h<T: Hash + ?Sized>(&self, v: &T) -> u64 {
        self.hasher.hash_one(v)
    }

    fn ep(&self, slot: u32) -> &Endpoint {
        self.slots[slot as usize]
            .as_ref()
            .expect("indexed slot is occupied")
    }

    pub fn get(&self, slot: u32) -> Option<&Endpoint> {
        self.slots.get(slot as usize).and_then(|s| s.as_ref())
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Endpoint> {
        self.slots.get_mut(slot as usize).and_then(|s| s.as_mut())
    }

    pub fn generation(&self, slot: u32) -> u32 {
        self.gens.get(slot as usize).copied().unwrap_or(0)
    }

    /// The incarnation of the endpoint in `slot` (see the field).
    pub fn incarnation(&self, slot: u32) -> u32 {
        self.incarnations.get(slot as usize).copied().unwrap_or(0)
    }

    /// Invalidates timers armed for `slot` and returns the new generation.
    pub fn bump_generation(&mut self, slot: u32) -> u32 {
        let g = &mut self.gens[slot as usize];
        *g = g.wrapping_add(1);
        *g
    }

    /// The shared copy of a parameter string (`k=v` joined by NUL).
    pub fn share_params(&mut self, params: &str) -> Arc<str> {
        self.params.get(params, || Arc::from(params))
    }

    /// The shared copy of an object list.
    pub fn share_objects(&mut self, objects: Objects) -> Arc<Objects> {
        self.objects.get_owned(objects)
    }

    /// Inserts an endpoint. The caller has removed any endpoint with the same name or
    /// location. An existing peer mapping is taken over by the new endpoint. Its
    /// parameters and object list become the shard's shared copies.
    pub fn insert(&mut self, mut ep: Endpoint) -> u32 {
        ep.params = self.params.share(&ep.params);
        if let Some(o) = &ep.objects {
            ep.objects = Some(self.objects.share(o));
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                self.incarnations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let (hl, hp, hn) = (self.h(&ep.location), self.h(&ep.peer), self.h(&*ep.name));
        self.slots[slot as usize] = Some(ep);
        self.bump_generation(slot);
        let inc = &mut self.incarnations[slot as usize];
        *inc = inc.wrapping_add(1);
        let slots = &self.slots;
        let hasher = &self.hasher;
        let rehash_loc = |s: &u32| hasher.hash_one(slots[*s as usize].as_ref().unwrap().location);
        self.by_location.insert_unique(hl, slot, rehash_loc);
        self.index_peer(slot, hp);
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.by_name.insert_unique(hn, slot, |s| {
            hasher.hash_one(&*slots[*s as usize].as_ref().unwrap().name)
        });
        self.len += 1;
        slot
    }

    fn index_peer(&mut self, slot: u32, hp: u64) {
        let peer = self.ep(slot).peer;
        let slots = &self.slots;
        let hasher = &self.hasher;
        match self
            .by_peer
            .find_mut(hp, |s| slots[*s as usize].as_ref().unwrap().peer == peer)
        {
            Some(s) => *s = slot,
            None => {
                self.by_peer.insert_unique(hp, slot, |s| {
                    hasher.hash_one(slots[*s as usize].as_ref().unwrap().peer)
                });
            }
        }
    }

    fn unindex_peer(&mut self, slot: u32) {
        let peer = self.ep(slot).peer;
        let hp = self.h(&peer);
        if let Ok(e) = self.by_peer.find_entry(hp, |s| *s == slot) {
            e.remove();
        }
    }

    /// Removes the endpoint in `slot`.
    pub fn remove(&mut self, slot: u32) -> Option<Endpoint> {
        self.get(slot)?;
        let (hl, hn) = {
            let ep = self.ep(slot);
            (self.h(&ep.location), self.h(&*ep.name))
        };
        self.unindex_peer(slot);
        if let Ok(e) = self.by_location.find_entry(hl, |s| *s == slot) {
            e.remove();
        }
        if let Ok(e) = self.by_name.find_entry(hn, |s| *s == slot) {
            e.remove();
        }
        self.bump_generation(slot);
        self.free.push(slot);
        self.len -= 1;
        self.slots[slot as usize].take()
    }

    /// Moves an endpoint to a new peer address (NAT rebinding).
    pub fn set_peer(&mut self, slot: u32, peer: SocketAddr) {
        if self.ep(slot).peer == peer {
            return;
        }
        self.unindex_peer(slot);
        self.slots[slot as usize].as_mut().unwrap().peer = peer;
        let hp = self.h(&peer);
        self.index_peer(slot, hp);
    }

    pub fn find_location(&self, location: u64) -> Option<u32> {
        let slots = &self.slots;
        self.by_location
            .find(self.h(&location), |s| {
                slots[*s as usize].as_ref().unwrap().location == location
            })
            .copied()
    }

    pub fn find_peer(&self, peer: &SocketAddr) -> Option<u32> {
        let slots = &self.slots;
        self.by_peer
            .find(self.h(peer), |s| {
                slots[*s as usize].as_ref().unwrap().peer == *peer
            })
            .copied()
    }

    pub fn find_name(&self, name: &str) -> Option<u32> {
        let slots = &self.slots;
        self.by_name
            .find(self.h(name), |s| {
                &*slots[*s as usize].as_ref().unwrap().name == name
            })
            .copied()
    }

    /// Every occupied slot.
    pub fn slots(&self) -> impl Iterator<Item = (u32, &Endpoint)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|e| (i as u32, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::endpoint::LastReply;

    fn ep(name: &str, loc: u64, port: u16) -> Endpoint {
        Endpoint {
            name: name.into(),
            location: loc,
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            lifetime_s: 60,
            expires_ms: 0,
            lane: 0,
            mountpoint: "".into(),
            params: "".into(),
            objects: None,
            queue_mode: false,
            secure: false,
            session_lost: false,
            last_reply: LastReply::default(),
            prev_reply: LastReply::default(),
            registered_ms: 0,
            last_seen_ms: 0,
            counters: Default::default(),
            session: None,
        }
    }

    #[test]
    fn index_insert_find_remove() {
        let mut t = EndpointTable::new();
        let mut slots = Vec::new();
        for i in 0..1000u64 {
            slots.push(t.insert(ep(&format!("d{i}"), i * 7, 1000 + i as u16)));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.find_name("d500"), Some(slots[500]));
        assert_eq!(t.find_location(7 * 500), Some(slots[500]));
        let p = SocketAddr::from(([127, 0, 0, 1], 1500));
        assert_eq!(t.find_peer(&p), Some(slots[500]));
        let g = t.generation(slots[500]);
        t.remove(slots[500]).unwrap();
        assert_ne!(t.generation(slots[500]), g);
        assert_eq!(t.find_name("d500"), None);
        assert_eq!(t.find_location(3500), None);
        assert_eq!(t.find_peer(&p), None);
        // The slot is reused.
        let s = t.insert(ep("new", 1, 9));
        assert_eq!(s, slots[500]);
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn peer_moves_and_shared_peer() {
        let mut t = EndpointTable::new();
        let a = t.insert(ep("a", 1, 1));
        let new_peer = SocketAddr::from(([127, 0, 0, 2], 2));
        t.set_peer(a, new_peer);
        assert_eq!(t.find_peer(&new_peer), Some(a));
        assert_eq!(t.find_peer(&SocketAddr::from(([127, 0, 0, 1], 1))), None);
        // A second endpoint from the same address takes the peer index over; removing
        // the first must not drop the second's mapping.
        let b = t.insert(ep("b", 2, 0));
        t.set_peer(b, new_peer);
        assert_eq!(t.find_peer(&new_peer), Some(b));
        t.remove(a);
        assert_eq!(t.find_peer(&new_peer), Some(b));
    }

    #[test]
    fn an_endpoint_slot_stays_compact() {
        // The slab's share of the bytes per endpoint (docs/architecture.md, "Memory per
        // endpoint"): a field added here costs it for every registration.
        let size = size_of::<Option<Endpoint>>();
        assert!(size <= 208, "Option<Endpoint> is {size} bytes");
    }

    #[test]
    fn endpoints_share_their_parameters_and_object_lists() {
        let objects = || Objects {
            alternate_path: "/".into(),
            list: "/1/0,/3/0".into(),
            content_format: None,
            composite_format: None,
        };
        let mut t = EndpointTable::new();
        let mut a = ep("a", 1, 1);
        a.params = "lwm2m=1.1\0b=U".into();
        a.objects = Some(Arc::new(objects()));
        let mut b = ep("b", 2, 2);
        b.params = "lwm2m=1.1\0b=U".into();
        b.objects = Some(t.share_objects(objects()));
        let (a, b) = (t.insert(a), t.insert(b));
        let (a, b) = (t.get(a).unwrap(), t.get(b).unwrap());
        assert!(Arc::ptr_eq(&a.params, &b.params));
        assert!(Arc::ptr_eq(
            a.objects.as_ref().unwrap(),
            b.objects.as_ref().unwrap()
        ));
        assert_eq!(b.object_list(), Some("/1/0,/3/0"));
        let a_params = a.params.clone();
        assert!(Arc::ptr_eq(&t.share_params("lwm2m=1.1\0b=U"), &a_params));
    }
}
