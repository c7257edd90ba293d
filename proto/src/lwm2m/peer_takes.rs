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
//! Owns the lookups in flight, bounded: a flood from spoofed addresses costs one
//! lookup per address per [`PEER_TAKE_TIMEOUT_MS`] at most, and past
//! [`MAX_PEER_TAKES`] in flight a datagram is handled as before (as from nobody).

use std::net::SocketAddr;

/// How long a lookup may stay unanswered before a datagram of the same address asks
/// again (the store answers within milliseconds; devices retransmit after 2 s or more).
pub(super) const PEER_TAKE_TIMEOUT_MS: u64 = 2_000;
/// Lookups in flight at most.
pub(super) const MAX_PEER_TAKES: usize = 4_096;

/// The lookups by address this shard has in flight.
#[derive(Debug, Default)]
pub(super) struct PeerTakes {
    /// Address → the time after which a new datagram from it asks again.
    asked: hashbrown::HashMap<SocketAddr, u64>,
    /// The address the store just said it has no registration for, while the datagram
    /// held for it is handled (as from nobody).
    missed: Option<SocketAddr>,
}

/// What to do with a datagram from an address no registration here has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerTake {
    /// Ask the store (the caller emits `ClusterRequest::TakePeer` with the datagram).
    Ask,
    /// A lookup of this address is in flight: drop the datagram (the device
    /// retransmits a confirmable one; the held first one is handled with the answer).
    Wait,
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
        self.asked.insert(peer, now + PEER_TAKE_TIMEOUT_MS);
        PeerTake::Ask
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

    #[test]
    fn lookups_in_flight_are_bounded() {
        let mut t = PeerTakes::default();
        for i in 0..MAX_PEER_TAKES {
            let a = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 5683));
            assert_eq!(t.consider(0, a, true), PeerTake::Ask);
        }
        assert_eq!(t.consider(1, p(9), true), PeerTake::Unknown);
        assert_eq!(t.len(), MAX_PEER_TAKES);
        // Once they time out, room again (the expired ones are dropped).
        assert_eq!(t.consider(PEER_TAKE_TIMEOUT_MS, p(9), true), PeerTake::Ask);
        assert_eq!(t.len(), 1);
    }
}
