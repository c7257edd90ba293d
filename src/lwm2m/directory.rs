//! The global directory shared by every shard and the MQTT thread: which shard holds
//! an endpoint (by name and by registration location), and for mountpoints that are
//! not keyed by the endpoint name alone, which registration a rendered mountpoint
//! names (the one that owns its command subscription).
//! Lock-free concurrent maps (papaya); only registrations, expiries and takeovers
//! write to it, never an ordinary datagram.

use hashbrown::DefaultHashBuilder;

/// papaya maps with hashbrown's fast (foldhash) hasher instead of SipHash: keys
/// are endpoint names and locations, and this map is on the registration path.
type HashMap<K, V> = papaya::HashMap<K, V, DefaultHashBuilder>;

/// Where an endpoint lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub shard: u16,
    pub location: u64,
}

pub struct Directory {
    names: HashMap<Box<str>, DirEntry>,
    locations: HashMap<u64, u16>,
    /// Rendered mountpoint → (endpoint name, location) of the registration that owns it.
    routes: HashMap<Box<str>, (Box<str>, u64)>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            names: HashMap::with_hasher(DefaultHashBuilder::default()),
            locations: HashMap::with_hasher(DefaultHashBuilder::default()),
            routes: HashMap::with_hasher(DefaultHashBuilder::default()),
        }
    }
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `name` now lives at `entry`; returns the previous entry.
    pub fn claim(&self, name: &str, entry: DirEntry) -> Option<DirEntry> {
        self.locations.pin().insert(entry.location, entry.shard);
        self.names.pin().insert(name.into(), entry).copied()
    }

    /// Moves a location (and the name, if it still points at that location) to `shard`.
    pub fn moved(&self, name: &str, location: u64, shard: u16) {
        self.locations.pin().insert(location, shard);
        self.names.pin().update(name.into(), |e| {
            if e.location == location {
                DirEntry { shard, location }
            } else {
                *e
            }
        });
    }

    /// Forgets a registration: the location always, the name only if it still points
    /// at this location (a newer registration of the same name elsewhere stays).
    pub fn release(&self, name: &str, location: u64) {
        self.locations.pin().remove(&location);
        let _ = self
            .names
            .pin()
            .remove_if(name, |_, e| e.location == location);
    }

    /// Forgets a location only (its name belongs to another registration).
    pub fn forget_location(&self, location: u64) {
        self.locations.pin().remove(&location);
    }

    pub fn by_name(&self, name: &str) -> Option<DirEntry> {
        self.names.pin().get(name).copied()
    }

    pub fn by_location(&self, location: u64) -> Option<u16> {
        self.locations.pin().get(&location).copied()
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

    #[test]
    fn claim_release_and_races() {
        let d = Directory::new();
        assert_eq!(
            d.claim(
                "a",
                DirEntry {
                    shard: 0,
                    location: 1
                }
            ),
            None
        );
        // Re-registration of "a" on shard 1 with a new location.
        let old = d.claim(
            "a",
            DirEntry {
                shard: 1,
                location: 2,
            },
        );
        assert_eq!(
            old,
            Some(DirEntry {
                shard: 0,
                location: 1
            })
        );
        // Shard 0 releases the old registration: the new one stays.
        d.release("a", 1);
        assert_eq!(
            d.by_name("a"),
            Some(DirEntry {
                shard: 1,
                location: 2
            })
        );
        assert_eq!(d.by_location(1), None);
        assert_eq!(d.by_location(2), Some(1));
        d.moved("a", 2, 0);
        assert_eq!(
            d.by_name("a"),
            Some(DirEntry {
                shard: 0,
                location: 2
            })
        );
        d.release("a", 2);
        assert_eq!(d.by_name("a"), None);
        assert!(d.is_empty());
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
