//! The global directory shared by every shard: which shard holds
//! an endpoint (by name and by registration location), and for mountpoints that are
//! not keyed by the endpoint name alone, which registration a rendered mountpoint
//! names (the one that owns its command subscription), and which shard's broker
//! connections hold each command subscription (its "home").
//! Lock-free concurrent maps (papaya); only registrations, expiries and takeovers
//! write to it, never an ordinary datagram.

use hashbrown::DefaultHashBuilder;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// papaya maps with hashbrown's fast (foldhash) hasher instead of SipHash: keys
/// are endpoint names and locations, and this map is on the registration path.
type HashMap<K, V> = papaya::HashMap<K, V, DefaultHashBuilder>;
use papaya::{Compute, Operation};

/// Where an endpoint lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub shard: u16,
    pub location: u64,
}

/// Why [`Directory::claim`] refused a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The name is held by a registration made over DTLS and the claim is not.
    Secure(DirEntry),
}

/// A name's entry and whether its registration was made over DTLS (then plain
/// CoAP may neither replace nor update it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    entry: DirEntry,
    secure: bool,
}

pub struct Directory {
    names: HashMap<Box<str>, Held>,
    /// Location → (shard, secure).
    locations: HashMap<u64, (u16, bool)>,
    /// Rendered mountpoint → (endpoint name, location) of the registration that owns it.
    routes: HashMap<Box<str>, (Box<str>, u64)>,
    /// Command filter (keyed hash of its text) → the shard whose broker connections
    /// hold its subscription. The first registration to subscribe a filter makes its
    /// own shard the home, so its commands arrive where it lives; a registration of
    /// the same filter elsewhere later reuses that home rather than subscribing twice
    /// (which would deliver every command twice).
    sub_homes: HashMap<u64, u16>,
    /// The key of `sub_homes` (random per process: device names cannot be chosen to
    /// collide with another device's filter).
    sub_key: std::collections::hash_map::RandomState,
    /// Set before the first DTLS registration is claimed: until then no name is
    /// secure, and the per-Register check for one costs no lookup.
    secure_seen: AtomicBool,
    /// Names held by registrations made over DTLS (for the DTLS listener's
    /// `max_connections`).
    secure_names: AtomicUsize,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            names: HashMap::with_hasher(DefaultHashBuilder::default()),
            locations: HashMap::with_hasher(DefaultHashBuilder::default()),
            routes: HashMap::with_hasher(DefaultHashBuilder::default()),
            sub_homes: HashMap::with_hasher(DefaultHashBuilder::default()),
            sub_key: std::collections::hash_map::RandomState::new(),
            secure_seen: AtomicBool::new(false),
            secure_names: AtomicUsize::new(0),
        }
    }
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory whose tables are sized at once for `names` registrations and
    /// `filters` command filters with a shard of their own (per-endpoint
    /// subscriptions). Growing a concurrent table copies every entry into a new
    /// one: a registration storm of 300,000 cost 20.9 µs of gateway CPU per
    /// registration with growing tables and 13.0 µs with sized ones
    /// (`bench/results/2026-12-07-0300-directory-presize.md`). The tables take about
    /// 36 bytes per name up front, whether or not it registers.
    pub fn with_capacity(names: usize, filters: usize) -> Self {
        fn sized<K, V>(n: usize) -> HashMap<K, V> {
            papaya::HashMap::builder()
                .capacity(n)
                .hasher(DefaultHashBuilder::default())
                .build()
        }
        Self {
            names: sized(names),
            locations: sized(names),
            sub_homes: sized(filters),
            ..Self::default()
        }
    }

    /// Records that `name` now lives at `entry` (`secure`: registered over DTLS);
    /// returns the previous entry. One atomic step per name: a plain claim of a
    /// name held by a DTLS registration is refused and changes nothing, so two
    /// shards registering the same name at once cannot let plain CoAP displace a
    /// DTLS registration.
    pub fn claim(
        &self,
        name: &str,
        entry: DirEntry,
        secure: bool,
    ) -> Result<Option<DirEntry>, ClaimError> {
        if secure {
            self.secure_seen.store(true, Ordering::Release);
        }
        let names = self.names.pin();
        let result = names.compute(name.into(), |old| match old {
            Some((_, h)) if h.secure && !secure => Operation::Abort(h.entry),
            _ => Operation::Insert(Held { entry, secure }),
        });
        let (previous, was_secure) = match result {
            Compute::Aborted(e) => return Err(ClaimError::Secure(e)),
            Compute::Updated { old, .. } => (Some(old.1.entry), old.1.secure),
            _ => (None, false),
        };
        match (was_secure, secure) {
            (false, true) => {
                self.secure_names.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.secure_names.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.locations
            .pin()
            .insert(entry.location, (entry.shard, secure));
        Ok(previous)
    }

    /// Moves a location (and the name, if it still points at that location) to `shard`.
    pub fn moved(&self, name: &str, location: u64, shard: u16) {
        let locations = self.locations.pin();
        let secure = locations.get(&location).is_some_and(|e| e.1);
        locations.insert(location, (shard, secure));
        self.names.pin().update(name.into(), |h| {
            if h.entry.location == location {
                Held {
                    entry: DirEntry { shard, location },
                    secure: h.secure,
                }
            } else {
                *h
            }
        });
    }

    /// Forgets a registration: the location always, the name only if it still points
    /// at this location (a newer registration of the same name elsewhere stays).
    pub fn release(&self, name: &str, location: u64) {
        self.locations.pin().remove(&location);
        let names = self.names.pin();
        let removed = names.remove_if(name, |_, h| h.entry.location == location);
        if matches!(removed, Ok(Some((_, h))) if h.secure) {
            self.secure_names.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets a name only if it still points at `location`; the location stays (a
    /// registration on its way between shards that another node took over: its
    /// location is not free for a take from the store until the adopting shard finds
    /// it superseded and forgets the location).
    pub fn release_name(&self, name: &str, location: u64) {
        let names = self.names.pin();
        let removed = names.remove_if(name, |_, h| h.entry.location == location);
        if matches!(removed, Ok(Some((_, h))) if h.secure) {
            self.secure_names.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Names held by registrations made over DTLS.
    pub fn secure_len(&self) -> usize {
        self.secure_names.load(Ordering::Relaxed)
    }

    /// Forgets a location only (its name belongs to another registration).
    pub fn forget_location(&self, location: u64) {
        self.locations.pin().remove(&location);
    }

    pub fn by_name(&self, name: &str) -> Option<DirEntry> {
        self.names.pin().get(name).map(|h| h.entry)
    }

    /// True when the current registration of `name` was made over DTLS.
    pub fn name_is_secure(&self, name: &str) -> bool {
        self.secure_seen.load(Ordering::Acquire)
            && self.names.pin().get(name).is_some_and(|h| h.secure)
    }

    pub fn by_location(&self, location: u64) -> Option<u16> {
        self.locations.pin().get(&location).map(|e| e.0)
    }

    /// True when the registration at `location` was made over DTLS.
    pub fn location_is_secure(&self, location: u64) -> bool {
        self.locations.pin().get(&location).is_some_and(|e| e.1)
    }

    /// Records that the registration `(name, location)` owns a rendered mountpoint (and
    /// its command subscription), taking it over from any earlier one.
    pub fn set_route(&self, mountpoint: &str, name: &str, location: u64) {
        self.routes
            .pin()
            .insert(mountpoint.into(), (name.into(), location));
    }

    /// Forgets a route if registration `(name, location)` still owns it; true if it did
    /// (then nobody else needs the mountpoint's command subscription).
    pub fn release_route(&self, mountpoint: &str, name: &str, location: u64) -> bool {
        matches!(
            self.routes
                .pin()
                .remove_if(mountpoint, |_, (n, l)| &**n == name && *l == location),
            Ok(Some(_))
        )
    }

    /// The endpoint name of a rendered mountpoint.
    pub fn route(&self, mountpoint: &str) -> Option<String> {
        self.routes
            .pin()
            .get(mountpoint)
            .map(|(n, _)| n.to_string())
    }

    fn sub_hash(&self, filter: &str) -> u64 {
        use std::hash::BuildHasher;
        self.sub_key.hash_one(filter)
    }

    /// The home of `filter`'s subscription, made `shard` if it has none.
    pub fn sub_home(&self, filter: &str, shard: u16) -> u16 {
        *self
            .sub_homes
            .pin()
            .get_or_insert(self.sub_hash(filter), shard)
    }

    /// The home of `filter`'s subscription, if it has one.
    pub fn sub_home_of(&self, filter: &str) -> Option<u16> {
        self.sub_homes.pin().get(&self.sub_hash(filter)).copied()
    }

    /// Forgets `filter`'s home (its subscription is being given up); returns it.
    pub fn take_sub_home(&self, filter: &str) -> Option<u16> {
        self.sub_homes.pin().remove(&self.sub_hash(filter)).copied()
    }

    /// Filters with a home (as many as command subscriptions held, over the shards).
    pub fn sub_homes(&self) -> usize {
        self.sub_homes.len()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(shard: u16, location: u64) -> DirEntry {
        DirEntry { shard, location }
    }

    #[test]
    fn subscription_homes() {
        let d = Directory::new();
        assert_eq!(d.sub_home_of("gw/a/dn/#"), None);
        assert_eq!(d.sub_home("gw/a/dn/#", 1), 1);
        // A later registration of the same filter on shard 0 keeps shard 1's.
        assert_eq!(d.sub_home("gw/a/dn/#", 0), 1);
        assert_eq!(d.sub_home("gw/b/dn/#", 0), 0);
        assert_eq!(d.take_sub_home("gw/a/dn/#"), Some(1));
        assert_eq!(d.take_sub_home("gw/a/dn/#"), None);
        assert_eq!(d.sub_home_of("gw/b/dn/#"), Some(0));
    }

    #[test]
    fn claim_release_and_races() {
        let d = Directory::new();
        assert_eq!(d.claim("a", e(0, 1), false), Ok(None));
        // Re-registration of "a" on shard 1 with a new location.
        assert_eq!(d.claim("a", e(1, 2), false), Ok(Some(e(0, 1))));
        // Shard 0 releases the old registration: the new one stays.
        d.release("a", 1);
        assert_eq!(d.by_name("a"), Some(e(1, 2)));
        assert_eq!(d.by_location(1), None);
        assert_eq!(d.by_location(2), Some(1));
        d.moved("a", 2, 0);
        assert_eq!(d.by_name("a"), Some(e(0, 2)));
        d.release("a", 2);
        assert_eq!(d.by_name("a"), None);
        assert!(d.is_empty());
    }

    #[test]
    fn a_plain_claim_never_displaces_a_secure_one() {
        let d = Directory::new();
        assert_eq!(d.claim("s", e(0, 1), false), Ok(None));
        // DTLS may replace plain, and DTLS.
        assert_eq!(d.claim("s", e(1, 2), true), Ok(Some(e(0, 1))));
        assert_eq!(d.claim("s", e(0, 3), true), Ok(Some(e(1, 2))));
        // Plain may not: nothing changes, not even the location map.
        assert_eq!(
            d.claim("s", e(1, 4), false),
            Err(ClaimError::Secure(e(0, 3)))
        );
        assert_eq!(d.by_name("s"), Some(e(0, 3)));
        assert!(d.name_is_secure("s"));
        assert_eq!(d.by_location(4), None);
        assert!(d.location_is_secure(3));
        // Moving keeps the mark.
        d.moved("s", 3, 1);
        assert_eq!(d.by_name("s"), Some(e(1, 3)));
        assert!(d.name_is_secure("s") && d.location_is_secure(3));
        d.release("s", 3);
        assert!(!d.name_is_secure("s"));
        assert_eq!(d.claim("s", e(1, 5), false), Ok(None));
    }

    #[test]
    fn concurrent_secure_and_plain_claims_end_secure() {
        // Two shards register the same names at once, one over DTLS, one in plain
        // CoAP: whatever the interleaving, every name ends with the DTLS one.
        let d = std::sync::Arc::new(Directory::new());
        let names: Vec<String> = (0..20_000).map(|i| format!("n{i}")).collect();
        let names = std::sync::Arc::new(names);
        let run = |secure: bool, shard: u16| {
            let (d, names) = (d.clone(), names.clone());
            std::thread::spawn(move || {
                for (i, n) in names.iter().enumerate() {
                    let loc = ((shard as u64) << 32) | i as u64 | 1;
                    let _ = d.claim(n, e(shard, loc), secure);
                }
            })
        };
        let a = run(true, 0);
        let b = run(false, 1);
        a.join().unwrap();
        b.join().unwrap();
        for n in names.iter() {
            assert!(d.name_is_secure(n), "{n}");
            assert_eq!(d.by_name(n).unwrap().shard, 0, "{n}");
        }
    }

    #[test]
    fn routes() {
        let d = Directory::new();
        d.set_route("gw/imei1/", "a", 1);
        assert_eq!(d.route("gw/imei1/").as_deref(), Some("a"));
        assert!(!d.release_route("gw/imei1/", "b", 1));
        assert!(
            !d.release_route("gw/imei1/", "a", 2),
            "another registration of a"
        );
        assert!(d.route("gw/imei1/").is_some());
        // A newer registration of the same name takes the mountpoint over.
        d.set_route("gw/imei1/", "a", 2);
        assert!(!d.release_route("gw/imei1/", "a", 1));
        assert!(d.release_route("gw/imei1/", "a", 2));
        assert!(d.route("gw/imei1/").is_none());
        assert!(!d.release_route("gw/imei1/", "a", 2));
    }
}
