//! Which of a client's connections holds a filter, found in one lookup instead of asking
//! every connection (a subscribe asked each of its shard's connections, up to 32, and with
//! a filter per device that was a tenth of the gateway's CPU in a per-endpoint storm).
//!
//! Kept small: a filter's hash (not the filter) with the connection it went to and how many
//! held filters share that hash. A hash nobody holds answers "no connection" at once; a
//! hash some filter holds names a candidate the caller checks, and on a mismatch (two
//! filters with one hash) the caller asks every connection as before.

use hashbrown::{DefaultHashBuilder, HashMap};
use std::hash::BuildHasher;

#[derive(Debug, Default)]
pub(crate) struct Holders {
    hasher: DefaultHashBuilder,
    /// Filter hash → (the connection of the first filter with it, filters held with it).
    by_hash: HashMap<u64, (u32, u32)>,
}

/// What [`Holders::lookup`] knows about a filter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No connection holds it.
    Nowhere,
    /// Probably this connection: check it, and ask every connection if it does not.
    Candidate(usize),
}

impl Holders {
    pub(crate) fn hash(&self, filter: &str) -> u64 {
        self.hasher.hash_one(filter)
    }

    pub(crate) fn lookup(&self, hash: u64) -> Lookup {
        match self.by_hash.get(&hash) {
            Some(&(conn, _)) => Lookup::Candidate(conn as usize),
            None => Lookup::Nowhere,
        }
    }

    /// A filter nobody held is now held on `conn`.
    pub(crate) fn added(&mut self, hash: u64, conn: usize) {
        self.by_hash.entry(hash).or_insert((conn as u32, 0)).1 += 1;
    }

    /// A held filter is held no more.
    pub(crate) fn removed(&mut self, hash: u64) {
        if let Some(e) = self.by_hash.get_mut(&hash) {
            e.1 -= 1;
            if e.1 == 0 {
                self.by_hash.remove(&hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_held_until_its_last_filter_goes() {
        let mut h = Holders::default();
        assert_eq!(h.lookup(7), Lookup::Nowhere);
        h.added(7, 3);
        h.added(7, 5); // another filter with the same hash
        assert_eq!(h.lookup(7), Lookup::Candidate(3));
        h.removed(7);
        assert_eq!(h.lookup(7), Lookup::Candidate(3));
        h.removed(7);
        assert_eq!(h.lookup(7), Lookup::Nowhere);
        assert_eq!(h.hash("a/b"), h.hash("a/b"));
    }
}
