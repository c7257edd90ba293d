//! Holds a connection's publishes behind the SUBACKs of the subscriptions queued before them,
//! so that a device's command subscription is in place before its register message can reach
//! an application: an application that sees the register message and commands the device at
//! once finds the subscription there.
//!
//! Every subscribe request adds one to a generation counter; a publish queued afterwards
//! records the counter ([`SubackGate::barrier`]) and may be written once every request up to
//! it is acknowledged ([`SubackGate::open`]). The SUBSCRIBE packets of one loop turn cover every
//! request made so far; a request coalesced away (subscribed and unsubscribed before it went
//! out) is covered without a packet. After a reconnect the whole filter set is subscribed
//! again, and every publish waits for those SUBACKs: the new session holds nothing before.
//!
//! Nothing waits while no subscription is outstanding, so publishes keep flowing at full rate
//! while SUBSCRIBEs are pipelined ahead of them.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct SubackGate {
    /// Subscribe requests made so far.
    requested: u64,
    /// Requests the SUBSCRIBE packets sent so far cover.
    covered: u64,
    /// SUBSCRIBE packets awaiting their SUBACK, in the order sent: packet id, and the
    /// requests acknowledged once every packet before it is.
    unacked: VecDeque<(u16, u64)>,
}

impl SubackGate {
    /// A subscribe request was queued.
    pub(super) fn request(&mut self) {
        self.requested += 1;
    }

    /// What a publish queued now waits for.
    pub(super) fn barrier(&self) -> u64 {
        self.requested
    }

    /// The requests queued so far went out: `pkids` are their SUBSCRIBE packets (none when
    /// every one was coalesced away).
    pub(super) fn sent(&mut self, pkids: impl IntoIterator<Item = u16>) {
        let before = self.covered;
        self.unacked
            .extend(pkids.into_iter().map(|pkid| (pkid, before)));
        self.covered = self.requested;
    }

    /// A new session subscribes the whole set again in `pkids`: every publish waits for them.
    pub(super) fn resubscribed(&mut self, pkids: impl IntoIterator<Item = u16>) {
        self.unacked.clear();
        self.unacked.extend(pkids.into_iter().map(|pkid| (pkid, 0)));
        self.covered = self.requested;
    }

    /// The SUBACK of `pkid` arrived.
    pub(super) fn acked(&mut self, pkid: u16) {
        if let Some(i) = self.unacked.iter().position(|&(id, _)| id == pkid) {
            self.unacked.remove(i);
        }
    }

    /// The connection went down: the SUBACKs awaited will not come.
    pub(super) fn lost(&mut self) {
        self.unacked.clear();
    }

    /// Every request up to this one is acknowledged.
    fn acknowledged(&self) -> u64 {
        match self.unacked.front() {
            Some(&(_, before)) => before,
            None => self.covered,
        }
    }

    /// A publish with `barrier` may be written.
    pub(super) fn open(&self, barrier: u64) -> bool {
        barrier <= self.acknowledged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_waits_for_the_subscribes_queued_before_it() {
        let mut g = SubackGate::default();
        assert!(g.open(g.barrier()), "nothing subscribed: nothing waits");
        g.request();
        let first = g.barrier();
        assert!(!g.open(first), "not sent yet");
        g.sent([1]);
        assert!(!g.open(first), "sent, not acknowledged");
        g.request();
        let second = g.barrier();
        g.sent([2, 3]);
        g.acked(1);
        assert!(g.open(first));
        assert!(!g.open(second));
        g.acked(3);
        assert!(!g.open(second), "packet 2 of the same turn still out");
        g.acked(2);
        assert!(g.open(second));
        assert!(g.unacked.is_empty());
    }

    #[test]
    fn a_subscribe_coalesced_away_holds_nothing() {
        let mut g = SubackGate::default();
        g.request();
        let b = g.barrier();
        g.sent([]);
        assert!(g.open(b));
    }

    #[test]
    fn after_a_reconnect_everything_waits_for_the_resubscription() {
        let mut g = SubackGate::default();
        g.request();
        g.sent([1]);
        g.acked(1);
        let old = g.barrier();
        assert!(g.open(old));
        g.request();
        let newer = g.barrier();
        g.sent([2]);
        g.lost();
        g.resubscribed([7, 8]);
        assert!(!g.open(old), "the new session holds no filter yet");
        assert!(g.open(0), "what waited for no subscription still goes");
        g.acked(7);
        g.acked(8);
        assert!(g.open(old) && g.open(newer));
        // An unknown or late SUBACK changes nothing.
        g.acked(2);
        assert!(g.open(newer));
    }
}
