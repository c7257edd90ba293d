//! A cluster's command subscriptions change hands without a gap (`[store] kind =
//! "redis"`). When a registration moves to another node, the new node subscribes its
//! command filter (a shared subscription, `$share/<group>/<filter>`) and the old node is
//! told to let the registration go, which unsubscribes the filter there. Both travel
//! separately to the broker, so the old node's UNSUBSCRIBE could arrive before the new
//! node's SUBSCRIBE, and a command published in between would have no subscriber. The
//! old node therefore keeps the filter for [`HANDOVER_GRACE_MS`] more: the broker hands
//! each command to exactly one member of the group, and one that reaches the old node
//! meanwhile is forwarded to the node that holds the registration now.
//!
//! A filter subscribed again before its delayed unsubscribe is due (the device came
//! back to this node) cancels it: the late UNSUBSCRIBE would otherwise take the new
//! subscription away.

use std::collections::VecDeque;

/// How long a released command filter stays subscribed (covers the other node's
/// SUBSCRIBE reaching the broker, normally milliseconds).
pub(super) const HANDOVER_GRACE_MS: u64 = 2_000;

/// Unsubscribes waiting for their time, in the order they are due.
#[derive(Default)]
pub(super) struct DelayedUnsubscribes {
    /// (due, lane, filter); an entry whose filter is no longer in `live` with this
    /// due time was cancelled.
    queue: VecDeque<(u64, u32, String)>,
    live: hashbrown::HashMap<String, u64>,
}

impl DelayedUnsubscribes {
    /// Holds the unsubscribe of `filter` until `now_ms` + [`HANDOVER_GRACE_MS`].
    pub(super) fn delay(&mut self, now_ms: u64, lane: u32, filter: String) {
        let due = now_ms + HANDOVER_GRACE_MS;
        self.live.insert(filter.clone(), due);
        self.queue.push_back((due, lane, filter));
    }

    /// `filter` is subscribed again: its pending unsubscribe, if any, is dropped.
    pub(super) fn cancel(&mut self, filter: &str) {
        self.live.remove(filter);
    }

    /// The unsubscribes due at `now_ms` (lane, filter).
    pub(super) fn due(&mut self, now_ms: u64, mut f: impl FnMut(u32, String)) {
        while let Some((at, _, _)) = self.queue.front() {
            if *at > now_ms {
                break;
            }
            let (at, lane, filter) = self.queue.pop_front().expect("front");
            if self.live.get(&filter) == Some(&at) {
                self.live.remove(&filter);
                f(lane, filter);
            }
        }
    }

    /// When the next one is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.queue.front().map(|(at, _, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(d: &mut DelayedUnsubscribes, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        d.due(now, |_, f| out.push(f));
        out
    }

    #[test]
    fn an_unsubscribe_waits_for_the_grace_period() {
        let mut d = DelayedUnsubscribes::default();
        d.delay(1_000, 3, "a/dn/#".into());
        assert_eq!(d.next_due(), Some(1_000 + HANDOVER_GRACE_MS));
        assert!(due(&mut d, 1_000 + HANDOVER_GRACE_MS - 1).is_empty());
        assert_eq!(due(&mut d, 1_000 + HANDOVER_GRACE_MS), ["a/dn/#"]);
        assert!(due(&mut d, 10_000_000).is_empty(), "once");
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_subscribe_again_cancels_the_pending_unsubscribe() {
        let mut d = DelayedUnsubscribes::default();
        d.delay(0, 0, "a".into());
        d.delay(10, 0, "b".into());
        d.cancel("a");
        assert_eq!(due(&mut d, 1_000_000), ["b"]);
    }

    #[test]
    fn released_again_after_coming_back_unsubscribes_at_the_later_time() {
        let mut d = DelayedUnsubscribes::default();
        d.delay(0, 0, "a".into());
        d.cancel("a");
        d.delay(500, 0, "a".into());
        assert!(
            due(&mut d, HANDOVER_GRACE_MS).is_empty(),
            "the first was cancelled"
        );
        assert_eq!(due(&mut d, 500 + HANDOVER_GRACE_MS), ["a"]);
    }
}
