//! The subscription filters of one connection: the set the broker holds (or will hold again after
//! a reconnect) and the changes not yet sent, coalesced per filter.
//!
//! Flow: `subscribe`/`unsubscribe` record a change; once per loop turn a connected connection
//! calls `take_changes`, which applies them to the active set and returns the filters to put in
//! SUBSCRIBE and UNSUBSCRIBE packets. After a reconnect (clean session) `resubscribe_all` returns
//! the whole active set, with the unsent changes folded in.

// hashbrown's default hasher (foldhash, seeded per process): a subscribe looks its filter up
// on every connection of its shard (`MqttClient::holder`).
use hashbrown::HashMap;

/// Per-connection filter set.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Filters the broker has been asked for, with their QoS.
    active: HashMap<String, u8>,
    /// Unsent changes: `Some(qos)` subscribe, `None` unsubscribe.
    changes: HashMap<String, Option<u8>>,
}

/// Filters to send, grouped by packet kind.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub subscribe: Vec<(String, u8)>,
    pub unsubscribe: Vec<String>,
}

impl Subscriptions {
    pub(super) fn subscribe(&mut self, filter: String, qos: u8) {
        if self.active.get(&filter) == Some(&qos) {
            self.changes.remove(&filter);
        } else {
            self.changes.insert(filter, Some(qos));
        }
    }

    pub(super) fn unsubscribe(&mut self, filter: String) {
        if self.active.contains_key(&filter) {
            self.changes.insert(filter, None);
        } else {
            // Subscribed and unsubscribed before it went out: nothing to send.
            self.changes.remove(&filter);
        }
    }

    /// Whether `filter` is subscribed, or about to be.
    pub(super) fn holds(&self, filter: &str) -> bool {
        match self.changes.get(filter) {
            Some(change) => change.is_some(),
            None => self.active.contains_key(filter),
        }
    }

    pub(super) fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Number of filters active (changes not yet sent left out).
    pub(super) fn len(&self) -> usize {
        self.active.len()
    }

    /// Applies the unsent changes and returns them.
    pub(super) fn take_changes(&mut self) -> Changes {
        let mut out = Changes::default();
        for (filter, change) in self.changes.drain() {
            match change {
                Some(qos) => {
                    self.active.insert(filter.clone(), qos);
                    out.subscribe.push((filter, qos));
                }
                None => {
                    self.active.remove(&filter);
                    out.unsubscribe.push(filter);
                }
            }
        }
        out
    }

    /// Applies the unsent changes and returns every active filter (for a fresh session).
    pub(super) fn resubscribe_all(&mut self) -> Vec<(String, u8)> {
        self.take_changes();
        self.active.iter().map(|(f, q)| (f.clone(), *q)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_then_unsubscribe_cancels() {
        let mut s = Subscriptions::default();
        s.subscribe("a".into(), 1);
        s.unsubscribe("a".into());
        assert!(!s.has_changes());
        s.subscribe("b".into(), 1);
        let c = s.take_changes();
        assert_eq!(c.subscribe, vec![("b".to_string(), 1)]);
        s.unsubscribe("b".into());
        s.subscribe("b".into(), 1);
        assert!(!s.has_changes());
        s.unsubscribe("b".into());
        let c = s.take_changes();
        assert_eq!(c.unsubscribe, vec!["b".to_string()]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn resubscribe_folds_changes() {
        let mut s = Subscriptions::default();
        s.subscribe("a".into(), 0);
        s.take_changes();
        s.subscribe("b".into(), 1);
        s.unsubscribe("a".into());
        let mut all = s.resubscribe_all();
        all.sort();
        assert_eq!(all, vec![("b".to_string(), 1)]);
        assert!(!s.has_changes());
    }
}
