//! Values most registrations share, kept once per shard: the query parameters
//! (`lwm2m=1.1`, `b=U`) and the object list of a fleet are the same for millions of
//! devices, so each endpoint holds an `Arc` of one copy instead of its own.
//!
//! An [`Interner`] is a set of the distinct values handed out. Values no endpoint holds any
//! more are dropped from it when it has doubled since the last sweep, so it stays within
//! twice the distinct values in use (deterministic: no clock, no background work).

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// The fewest values kept before a sweep.
const MIN_SWEEP: usize = 1024;

pub(super) struct Interner<T: ?Sized> {
    set: HashTable<Arc<T>>,
    hasher: DefaultHashBuilder,
    /// The set's size at which the next sweep runs.
    sweep_at: usize,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self {
            set: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<T: Hash + Eq + ?Sized> Interner<T> {
    /// The shared copy of `value`, made with `make` when there is none.
    pub(super) fn get(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let h = self.hasher.hash_one(value);
        if let Some(found) = self.set.find(h, |a| **a == *value) {
            return found.clone();
        }
        let new = make();
        self.insert(h, new.clone());
        new
    }

    /// The shared copy of an owned `value` (moved into a new one when there is none).
    pub(super) fn get_owned(&mut self, value: T) -> Arc<T>
    where
        T: Sized,
    {
        let h = self.hasher.hash_one(&value);
        if let Some(found) = self.set.find(h, |a| **a == value) {
            return found.clone();
        }
        let new = Arc::new(value);
        self.insert(h, new.clone());
        new
    }

    fn insert(&mut self, h: u64, new: Arc<T>) {
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(MIN_SWEEP);
        }
        let hasher = &self.hasher;
        self.set.insert_unique(h, new, |a| hasher.hash_one(&**a));
    }

    /// The shared copy of `value` (the same `Arc` when it is the shared one already).
    pub(super) fn share(&mut self, value: &Arc<T>) -> Arc<T> {
        self.get(value, || value.clone())
    }

    /// Distinct values held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_are_swept() {
        let mut i: Interner<str> = Interner::default();
        let a = i.get("lwm2m=1.1\0b=U", || Arc::from("lwm2m=1.1\0b=U"));
        let b = i.get("lwm2m=1.1\0b=U", || Arc::from("lwm2m=1.1\0b=U"));
        assert!(Arc::ptr_eq(&a, &b));
        let fresh: Arc<str> = Arc::from("lwm2m=1.1\0b=U");
        assert!(Arc::ptr_eq(&i.share(&fresh), &a));
        let c = i.get("lwm2m=1.0", || Arc::from("lwm2m=1.0"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(i.len(), 2);
        // Values nobody holds go at the next sweep; held ones stay.
        drop(c);
        for n in 0..MIN_SWEEP * 3 {
            let v = format!("v{n}");
            drop(i.get(&v, || Arc::from(v.as_str())));
        }
        assert!(i.len() <= MIN_SWEEP + 1, "{}", i.len());
        let again = i.get("lwm2m=1.1\0b=U", || Arc::from("lwm2m=1.1\0b=U"));
        assert!(Arc::ptr_eq(&again, &a));
    }
}
