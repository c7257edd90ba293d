//! The registration interface's own state: where new registrations are admitted (the
//! shard's share of `max_conn_rate`), the locations it hands out, the Registers held while
//! the authentication server is asked, and the replies to de-registrations, kept for their
//! retransmissions after the endpoint is gone. The flows (Register, Update, De-register)
//! are sequenced by the core with the table, the cluster and device management.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::admission::TokenBucket;
use super::cluster::Cluster;
use super::cx::Cx;
use super::endpoint::LastReply;
use super::identity::PeerIdentity;
use super::location::LocationCipher;
use super::output::{AuthRequest, Timer};
use super::settings::CoreSettings;

/// Replies to requests whose endpoint is gone (de-registrations), kept so that a
/// retransmitted DELETE gets the same 2.02. Bounded.
const RECENT_REPLIES: usize = 1024;

/// Registers held for the authentication server, at most (then 5.03).
const MAX_HELD: usize = 4096;

/// A Register waiting for the authentication server.
pub(super) struct HeldRegister {
    pub peer: SocketAddr,
    pub mid: u16,
    pub datagram: Vec<u8>,
    /// The DTLS identity it arrived with (None: plain CoAP).
    pub identity: Option<Arc<PeerIdentity>>,
}

/// Why a Register could not be held for the authentication server.
pub(super) enum NotHeld {
    /// A retransmission of one held already.
    Duplicate,
    /// Too many are held.
    Full,
}

pub(super) struct Registrations {
    /// The shard's share of each listener's `max_conn_rate` (UDP, DTLS), and how many
    /// shards share it.
    admission: TokenBucket,
    dtls_admission: TokenBucket,
    shards: usize,
    /// Registrations numbered so far; a location is this number under `locations`.
    location_seq: u64,
    locations: LocationCipher,
    /// Registers waiting for the authentication server, by ticket.
    held: hashbrown::HashMap<u64, HeldRegister>,
    tickets: u64,
    /// (peer, reply, the request came over DTLS).
    recent: VecDeque<(SocketAddr, LastReply, bool)>,
}

impl Registrations {
    pub(super) fn new(settings: &CoreSettings, shards: usize) -> Self {
        Registrations {
            admission: TokenBucket::new(share(settings, false, shards)),
            dtls_admission: TokenBucket::new(share(settings, true, shards)),
            shards,
            location_seq: 0,
            locations: LocationCipher::new(settings.location_key),
            held: Default::default(),
            tickets: 0,
            recent: VecDeque::new(),
        }
    }

    /// The rate bucket of the listener a Register came through (`secure`: DTLS); a
    /// block-wise Register body takes its token at its first block.
    pub(super) fn admission(&mut self, secure: bool) -> &mut TokenBucket {
        if secure {
            &mut self.dtls_admission
        } else {
            &mut self.admission
        }
    }

    /// A new rate: the bucket starts afresh.
    pub(super) fn settings_changed(&mut self, old: &CoreSettings, new: &CoreSettings) {
        if new.max_conn_rate != old.max_conn_rate {
            self.admission = TokenBucket::new(share(new, false, self.shards));
        }
        if new.dtls_max_conn_rate != old.dtls_max_conn_rate {
            self.dtls_admission = TokenBucket::new(share(new, true, self.shards));
        }
    }

    /// A token for a Register at `now` through the UDP or (`secure`) the DTLS listener;
    /// Err carries the Max-Age of the 5.03.
    pub(super) fn take_token(&mut self, now: u64, secure: bool) -> Result<(), u32> {
        self.admission(secure).take(now)
    }

    /// A location for a new registration of shard `shard`: the number (shard,
    /// sequence) under the secret keyed permutation. Distinct numbers give distinct
    /// locations, so shards never collide, and without the key a location cannot be
    /// derived from another (see `location.rs`). The directory check only matters
    /// after 2^48 registrations of one shard.
    pub(super) fn new_location(&mut self, shard: u16, cluster: &Cluster) -> u64 {
        loop {
            self.location_seq = self.location_seq.wrapping_add(1) & ((1 << 48) - 1);
            let n = (shard as u64) << 48 | self.location_seq;
            let z = self.locations.encrypt(n);
            if z != 0 && cluster.location_free(z) {
                return z;
            }
        }
    }

    /// Holds a Register while the authentication server is asked (`request`), with a
    /// timer for the server's silence.
    pub(super) fn hold(
        &mut self,
        cx: &mut Cx<'_>,
        register: HeldRegister,
        request: AuthRequest,
    ) -> Result<(), NotHeld> {
        let (peer, mid) = (register.peer, register.mid);
        if self.held.values().any(|p| p.peer == peer && p.mid == mid) {
            return Err(NotHeld::Duplicate);
        }
        if self.held.len() >= MAX_HELD {
            return Err(NotHeld::Full);
        }
        self.tickets += 1;
        let ticket = self.tickets;
        self.held.insert(ticket, register);
        cx.out.auth.push((ticket, request));
        let at = cx.now + cx.settings.auth_timeout_ms;
        cx.out.timers.push((at, Timer::AuthTimeout { ticket }));
        Ok(())
    }

    /// The Register held under `ticket`, released for the server's answer.
    pub(super) fn release(&mut self, ticket: u64) -> Option<HeldRegister> {
        self.held.remove(&ticket)
    }

    /// Whether `ticket` still waits for its answer.
    pub(super) fn holds(&self, ticket: u64) -> bool {
        self.held.contains_key(&ticket)
    }

    /// Keeps the reply to a de-registration for its retransmissions.
    pub(super) fn remember(&mut self, peer: SocketAddr, reply: LastReply, secure: bool) {
        if self.recent.len() == RECENT_REPLIES {
            self.recent.pop_front();
        }
        self.recent.push_back((peer, reply, secure));
    }

    /// The reply kept for a retransmission from `peer` that `fresh` recognises
    /// (`secure`: the retransmission came over DTLS).
    pub(super) fn recent_reply(
        &self,
        peer: SocketAddr,
        secure: bool,
        fresh: impl Fn(&LastReply) -> bool,
    ) -> Option<LastReply> {
        self.recent
            .iter()
            .find(|(p, r, s)| *p == peer && *s == secure && fresh(r))
            .map(|(_, r, _)| *r)
    }
}

/// This shard's share of a listener's `max_conn_rate` (`secure`: the DTLS listener's).
fn share(settings: &CoreSettings, secure: bool, shards: usize) -> f64 {
    settings.limits(secure).1 as f64 / shards.max(1) as f64
}
