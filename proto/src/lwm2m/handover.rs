//! Command subscriptions kept for a handover between nodes (`CoreSettings::shared_store`
//! with per-endpoint subscriptions). When another node takes a registration over, this
//! node lets the registration go at once but keeps its command subscription until the
//! new node says its own is in place (the broker acknowledged its SUBSCRIBE), or until a
//! deadline: the broker then always has a subscriber for the device's commands, and a
//! command it hands this node meanwhile is forwarded to the new owner through the store.
//!
//! Only the bookkeeping lives here (which registrations' subscriptions are kept, and
//! until when); the cluster machine decides what to subscribe and unsubscribe.

/// How long a subscription is kept for a handover at most: the new node's SUBACK and its
/// notice normally arrive within milliseconds; a lost notice or a new node that died
/// leaves the subscription this long, then it is given up anyway (counted).
pub const HANDOVER_DEADLINE_MS: u64 = 10_000;

/// A registration another node took over whose command subscription is kept here.
#[derive(Debug, Clone)]
pub(super) struct Kept {
    pub name: Box<str>,
    pub mountpoint: Box<str>,
    /// When it is given up anyway (ms on the shard's clock).
    pub until: u64,
}

/// The subscriptions this shard keeps for handovers, by the registration's location.
#[derive(Debug, Default)]
pub(super) struct Handovers {
    kept: hashbrown::HashMap<u64, Kept>,
}

impl Handovers {
    /// Keeps the subscription of `name` at `location` until `until` (a registration
    /// taken back and taken over again keeps it until the later deadline).
    pub(super) fn keep(&mut self, location: u64, kept: Kept) {
        self.kept.insert(location, kept);
    }

    /// The kept subscription of `name` at `location`, now given up (the new node's notice).
    pub(super) fn take(&mut self, name: &str, location: u64) -> Option<Kept> {
        match self.kept.get(&location) {
            Some(k) if &*k.name == name => self.kept.remove(&location),
            _ => None,
        }
    }

    /// The kept subscription at `location` whose deadline passed by `now`; otherwise
    /// the deadline of the one kept there, if any (a timer that came early, or an older
    /// timer of a subscription kept again later: the caller arms it again).
    pub(super) fn due(&mut self, now: u64, location: u64) -> Result<Kept, Option<u64>> {
        match self.kept.get(&location) {
            Some(k) if k.until <= now => Ok(self.kept.remove(&location).expect("found")),
            Some(k) => Err(Some(k.until)),
            None => Err(None),
        }
    }

    /// The mountpoints of the subscriptions kept (the fuzz checks read them).
    pub(super) fn mountpoints(&self) -> impl Iterator<Item = &str> {
        self.kept.values().map(|k| &*k.mountpoint)
    }

    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }
}
