//! Registrations taken over from the shared store by the device's address
//! (`CoreSettings::shared_store`). A device a balancer moved to this node speaks here
//! first with whatever it sends next: often a notification of an observation, or a Send,
//! long before its next Update (which finds its registration by location). Such a
//! datagram from an address no registration here has is held while the I/O side looks
//! the address up in the store (`ClusterRequest::TakePeer`): the registration found
//! there is taken over as for an Update (`Input::ClusterAdopt`), and the datagram
//! handled then, so the notification reaches MQTT with its observation's `reqID`
//! instead of being answered with a reset that would end the observation on the device.
//!
//! Only plain CoAP: a DTLS device has no session on this node and handshakes first.
//! Owns the lookups in flight, bounded: one per address per [`PEER_TAKE_TIMEOUT_MS`] at
//! most, at most [`MAX_PEER_TAKES`] at once (past it a datagram is handled as before, as
//! from nobody), and at most [`PEER_TAKES_PER_S`] a second with a burst of as many (past
//! it the datagram is dropped, counted: a confirmable one comes again). A flood of
//! responses from spoofed addresses therefore costs Redis a bounded rate of lookups and
//! cannot crowd the takes of devices' Updates out of the cluster thread's queue.

use std::net::SocketAddr;

/// How long a lookup may stay unanswered before a datagram of the same address asks
/// again (the store answers within milliseconds; devices retransmit after 2 s or more).
pub(super) const PEER_TAKE_TIMEOUT_MS: u64 = 2_000;
/// Lookups in flight at most.
pub(super) const MAX_PEER_TAKES: usize = 2_048;
/// Lookups a second at most (per shard), and the burst allowed.
pub(super) const PEER_TAKES_PER_S: u64 = 1_000;

/// The lookups by address this shard has in flight.
#[derive(Debug, Default)]
pub(super) struct PeerTakes {
    /// Address → the time after which a new datagram from it asks again.
    asked: hashbrown::HashMap<SocketAddr, u64>,
    /// The address the store just said it has no registration for, while the datagram
    /// held for it is handled (as from nobody).
    missed: Option<SocketAddr>,
    /// The rate limit: lookups it allows now (thousandths), as of `refilled` (ms).
    budget_milli: u64,
    refilled: Option<u64>,
}

/// What to do with a datagram from an address no registration here has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerTake {
    /// Ask the store (the caller emits `ClusterRequest::TakePeer` with the datagram).
    Ask,
    /// A lookup of this address is in flight: drop the datagram (the device
    /// retransmits a confirmable one; the held first one is handled with the answer).
    Wait,
    /// Over the rate of lookups: drop the datagram (a confirmable one comes again).
    Limited,
    /// Handle it as from nobody (no shared store, the store just said so, or too many
    /// lookups in flight).
    Unknown,
}

impl PeerTakes {
    /// Whether to ask the store for `peer`'s registration at `now` (recording the
    /// lookup when so).
    pub(super) fn consider(&mut self, now: u64, peer: SocketAddr, shared_store: bool) -> PeerTake {
        if !shared_store || self.missed == Some(peer) {
            return PeerTake::Unknown;
        }
        match self.asked.get(&peer) {
            Some(&until) if now < until => return PeerTake::Wait,
            Some(_) => {}
            None if self.asked.len() >= MAX_PEER_TAKES => {
                self.asked.retain(|_, until| now < *until);
                if self.asked.len() >= MAX_PEER_TAKES {
                    return PeerTake::Unknown;
                }
            }
            None => {}
        }
        if !self.spend(now) {
            return PeerTake::Limited;
        }
        self.asked.insert(peer, now + PEER_TAKE_TIMEOUT_MS);
        PeerTake::Ask
    }

    /// Takes one lookup from the rate limit's budget, refilled at [`PEER_TAKES_PER_S`]
    /// up to as many; false when it is empty.
    fn spend(&mut self, now: u64) -> bool {
        let full = PEER_TAKES_PER_S * 1_000;
        let elapsed = self.refilled.map_or(u64::MAX, |t| now.saturating_sub(t));
        let refill = elapsed.saturating_mul(PEER_TAKES_PER_S);
        self.budget_milli = self.budget_milli.saturating_add(refill).min(full);
        self.refilled = Some(now);
        if self.budget_milli < 1_000 {
            return false;
        }
        self.budget_milli -= 1_000;
        true
    }

    /// The lookup of `peer` was answered with a registration (taken in or not).
    pub(super) fn answered(&mut self, peer: SocketAddr) {
        self.asked.remove(&peer);
    }

    /// The store has no registration for `peer`: the datagram handled until
    /// [`handled`](Self::handled) is handled as from nobody.
    pub(super) fn missed(&mut self, peer: SocketAddr) {
        self.asked.remove(&peer);
        self.missed = Some(peer);
    }

    /// The datagram a [`missed`](Self::missed) was about was handled.
    pub(super) fn handled(&mut self) {
        self.missed = None;
    }

    /// Lookups in flight.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.asked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn one_lookup_per_address_until_answered_or_timed_out() {
        let mut t = PeerTakes::default();
        assert_eq!(t.consider(0, p(1), false), PeerTake::Unknown);
        assert_eq!(t.consider(0, p(1), true), PeerTake::Ask);
        assert_eq!(t.consider(10, p(1), true), PeerTake::Wait);
        assert_eq!(t.consider(10, p(2), true), PeerTake::Ask);
        // Unanswered past the timeout: asked again.
        assert_eq!(t.consider(PEER_TAKE_TIMEOUT_MS, p(1), true), PeerTake::Ask);
        t.answered(p(2));
        assert_eq!(t.consider(20, p(2), true), PeerTake::Ask);
        // A miss: the held datagram is handled as from nobody, once.
        t.missed(p(2));
        assert_eq!(t.consider(30, p(2), true), PeerTake::Unknown);
        t.handled();
        assert_eq!(t.consider(40, p(2), true), PeerTake::Ask);
    }

    fn spoofed(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 5683))
    }

    #[test]
    fn lookups_are_rate_limited() {
        let mut t = PeerTakes::default();
        let per_s = PEER_TAKES_PER_S as usize;
        // The burst, then nothing more at the same instant.
        for i in 0..per_s {
            assert_eq!(t.consider(0, spoofed(i), true), PeerTake::Ask);
            t.missed(spoofed(i));
            t.handled();
        }
        assert_eq!(t.consider(0, spoofed(per_s), true), PeerTake::Limited);
        // A tenth of a second later, a tenth of the rate.
        let mut asked = 0;
        for i in 0..per_s {
            if t.consider(100, spoofed(per_s + 1 + i), true) == PeerTake::Ask {
                asked += 1;
            }
        }
        assert_eq!(asked, per_s / 10);
        // After a quiet second, the whole burst again.
        assert_eq!(t.consider(1_200, p(7), true), PeerTake::Ask);
    }

    #[test]
    fn lookups_in_flight_are_bounded() {
        // Never answered (Redis away), at the rate the limit lets through: the burst at
        // once, then one a millisecond.
        let mut t = PeerTakes::default();
        let per_s = PEER_TAKES_PER_S as usize;
        let mut unknown = 0;
        let mut now = 0;
        for i in 0..3 * per_s {
            now = i.saturating_sub(per_s) as u64 * 1_000 / PEER_TAKES_PER_S;
            if t.consider(now, spoofed(i), true) == PeerTake::Unknown {
                unknown += 1;
            }
            assert!(t.len() <= MAX_PEER_TAKES);
        }
        assert!(unknown > 0, "the bound was reached");
        // Once they time out, room again (the expired ones are dropped).
        let later = now + PEER_TAKE_TIMEOUT_MS;
        assert_eq!(t.consider(later, p(9), true), PeerTake::Ask);
        assert!(t.len() < MAX_PEER_TAKES);
    }
}
