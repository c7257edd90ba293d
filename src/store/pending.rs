//! The changes waiting for the store writer's next batch, coalesced per endpoint name:
//! what the writer writes, and what the fuzz model of several nodes writes too.
//!
//! Per name, the last change of each location, in the order the locations first came
//! (a later change of a location takes its earlier one's place: an Update of an older
//! registration stays ahead of a newer registration's claim, which is written last).
//! Changes of different locations of one name are all kept: each is conditional on the
//! record the store holds when it applies (a removal takes only the record of its
//! location, an Update applies only to this node's record of its location), so dropping
//! one could leave a record nobody holds: e.g. a registration this node took from the
//! store but did not take in, then another of the name it let go, both removed in one
//! batch.

use super::Change;
use crate::lwm2m::record::location_of;
use crate::lwm2m::StoreChange;
use std::collections::HashMap;

/// A name's changes: the last of each location, in the order the locations came.
type OfName = Vec<(u64, Change)>;

/// The changes of each name waiting to be written.
#[derive(Default)]
pub struct PendingChanges {
    changes: HashMap<Box<str>, OfName>,
}

impl PendingChanges {
    /// Takes a change in after those before it (a shard's changes come in order).
    pub fn add(&mut self, c: StoreChange) {
        let (name, location, change) = match c {
            StoreChange::Put {
                name,
                location,
                record,
                claim,
            } => (name, location, Some((record, claim))),
            StoreChange::Remove { name, location } => (name, location, None),
        };
        let of_name = self.changes.entry(name).or_default();
        let earlier = of_name.iter_mut().find(|(l, _)| *l == location);
        let claimed = matches!(earlier, Some((_, Change::Claim(_))));
        let change = match change {
            // An Update right after its Register (same location) still claims.
            Some((record, claim)) if claim || claimed => Change::Claim(record),
            Some((record, _)) => Change::Put(record),
            None => Change::Remove(location),
        };
        match earlier {
            Some((_, c)) => *c = change,
            None => of_name.push((location, change)),
        }
    }

    /// Names with changes waiting.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Everything waiting, in name order (the B-tree of the file store then fills its
    /// pages front to back instead of inserting all over them in the hash map's order),
    /// the changes of one name in their order.
    pub fn take_sorted(&mut self) -> Vec<(Box<str>, Change)> {
        let mut names: Vec<(Box<str>, OfName)> = self.changes.drain().collect();
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(names.len());
        for (name, changes) in names {
            let last = changes.len() - 1;
            let mut name = Some(name);
            for (i, (_, c)) in changes.into_iter().enumerate() {
                let name = if i == last { name.take() } else { name.clone() };
                out.push((name.expect("the name"), c));
            }
        }
        out
    }

    /// The changes of a write that failed, to be written again (taken before any change
    /// that came since).
    pub fn restore(&mut self, changes: Vec<(Box<str>, Change)>) {
        for (name, change) in changes.into_iter().rev() {
            let location = match &change {
                Change::Put(r) | Change::Claim(r) => location_of(r).unwrap_or(u64::MAX),
                Change::Remove(l) => *l,
            };
            let of_name = self.changes.entry(name).or_default();
            if !of_name.iter().any(|(l, _)| *l == location) {
                of_name.insert(0, (location, change));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(location: u64, claim: bool) -> StoreChange {
        let record = crate::store::writer::tests::record("dev", location);
        StoreChange::Put {
            name: "dev".into(),
            location,
            record,
            claim,
        }
    }

    fn remove(location: u64) -> StoreChange {
        StoreChange::Remove {
            name: "dev".into(),
            location,
        }
    }

    /// What a batch writes: (location, claim) of puts, (location, None) of removals.
    fn written(changes: Vec<StoreChange>) -> Vec<(u64, Option<bool>)> {
        let mut p = PendingChanges::default();
        for c in changes {
            p.add(c);
        }
        assert_eq!(p.len(), 1);
        p.take_sorted()
            .into_iter()
            .map(|(_, c)| match c {
                Change::Put(r) => (location_of(&r).unwrap(), Some(false)),
                Change::Claim(r) => (location_of(&r).unwrap(), Some(true)),
                Change::Remove(l) => (l, None),
            })
            .collect()
    }

    #[test]
    fn each_location_keeps_its_last_change_where_it_first_came() {
        // An Update after its Register still claims.
        assert_eq!(
            written(vec![put(1, true), put(1, false)]),
            [(1, Some(true))]
        );
        // A release cancels the Update waiting before it.
        assert_eq!(written(vec![put(1, false), remove(1)]), [(1, None)]);
        // Two removals of two locations are both written.
        assert_eq!(written(vec![remove(2), remove(1)]), [(2, None), (1, None)]);
        // An older registration's Update stays ahead of the newer one's claim.
        assert_eq!(
            written(vec![put(1, true), put(2, true), put(1, false)]),
            [(1, Some(true)), (2, Some(true))]
        );
        // A registration taken back after its release: its Update is written.
        assert_eq!(
            written(vec![put(1, false), remove(1), put(1, false)]),
            [(1, Some(false))]
        );
    }
}
