//! Session resumption (RFC 5246 §7.3): the listener's cache of resumable
//! sessions, shared by its shards (a device that comes back from a new port
//! may reach another shard's socket).
//!
//! An entry is what resuming needs and nothing of the connection: the master
//! secret, the cipher suite, the PSK identity and a fingerprint of its key.
//! About 350 bytes each (the map slot, the expiry queue slot, the identity: 351
//! measured over 1,000,000 sessions with 11-byte identities).
//! Entries expire `session_lifetime` after the full handshake that created them
//! (a resumption does not extend it); at `session_cache_size` entries the
//! oldest makes room. A lookup refuses (counted, per shard) an unknown ID, an
//! expired one, and one whose PSK identity is no longer in the PSK file or has
//! another key now (revoked): those clients get a full handshake.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dimpl::crypto::Dtls12CipherSuite;
use dimpl::SessionState;

use super::psk::PskStore;

/// The session IDs the gateway issues (dimpl's: 32 random bytes).
type SessionId = [u8; 32];

struct Entry {
    master_secret: [u8; 48],
    suite: Dtls12CipherSuite,
    expires: Instant,
    identity: Option<Box<[u8]>>,
    /// Fingerprint of the PSK when the session was made: a key changed in
    /// the PSK file revokes the session.
    key_fp: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<SessionId, Entry>,
    /// Insertion order = expiry order (one lifetime for all).
    order: VecDeque<(SessionId, Instant)>,
}

/// The resumable sessions of one DTLS listener.
pub struct ResumptionCache {
    lifetime: Duration,
    capacity: usize,
    psk: Option<Arc<PskStore>>,
    table: Mutex<Table>,
    len: AtomicUsize,
}

impl std::fmt::Debug for ResumptionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumptionCache")
            .field("lifetime", &self.lifetime)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Why a lookup refused a session (each counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unknown,
    Expired,
    Revoked,
}

impl ResumptionCache {
    /// Sessions live `lifetime` after their full handshake, at most
    /// `capacity` of them; a PSK session may be resumed while `psk` still
    /// holds its identity with the same key.
    pub fn new(lifetime: Duration, capacity: usize, psk: Option<Arc<PskStore>>) -> Self {
        ResumptionCache {
            lifetime,
            capacity,
            psk,
            table: Mutex::new(Table::default()),
            len: AtomicUsize::new(0),
        }
    }

    /// Sessions cached now (expired ones linger until the next store).
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// True when no session is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key_fingerprint(&self, identity: Option<&[u8]>) -> Option<u64> {
        let identity = identity?;
        let key = self.psk.as_ref()?.lookup(identity)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        Some(h.finish())
    }

    /// Keeps a completed full handshake's session. Only PSK sessions: a
    /// certificate session's CN is not kept, so it is never resumed (its ID
    /// is unknown when offered: a full handshake).
    pub(crate) fn store(&self, id: &[u8], state: SessionState, now: Instant) {
        let (Ok(id), true) = (SessionId::try_from(id), self.capacity > 0) else {
            return;
        };
        let Some(key_fp) = self.key_fingerprint(state.psk_identity.as_deref()) else {
            return;
        };
        let expires = now + self.lifetime;
        let entry = Entry {
            master_secret: state.master_secret,
            suite: state.cipher_suite,
            expires,
            identity: state.psk_identity.map(Vec::into_boxed_slice),
            key_fp,
        };
        let mut t = self.table();
        while let Some(&(old, at)) = t.order.front() {
            if at > now && t.entries.len() < self.capacity {
                break;
            }
            t.order.pop_front();
            // An ID stored again has a later queue slot: keep that one's entry.
            if t.entries.get(&old).is_some_and(|e| e.expires == at) {
                t.entries.remove(&old);
            }
        }
        t.entries.insert(id, entry);
        t.order.push_back((id, expires));
        self.len.store(t.entries.len(), Relaxed);
    }

    /// The session `id` names, if it may be resumed at `now`.
    pub(crate) fn lookup(&self, id: &[u8], now: Instant) -> Result<SessionState, Refusal> {
        let id = SessionId::try_from(id).map_err(|_| Refusal::Unknown)?;
        let mut t = self.table();
        let e = t.entries.get(&id).ok_or(Refusal::Unknown)?;
        if e.expires <= now {
            t.entries.remove(&id);
            self.len.store(t.entries.len(), Relaxed);
            return Err(Refusal::Expired);
        }
        let (secret, suite, identity, fp) = (
            e.master_secret,
            e.suite,
            e.identity.as_deref().map(<[u8]>::to_vec),
            e.key_fp,
        );
        drop(t);
        if self.key_fingerprint(identity.as_deref()) != Some(fp) {
            return Err(Refusal::Revoked);
        }
        Ok(SessionState {
            cipher_suite: suite,
            master_secret: secret,
            psk_identity: identity,
        })
    }
}

/// What one shard's dimpl configuration holds: the listener's cache and the
/// shard's counts of refused resumptions.
pub(crate) struct ShardCache {
    pub cache: Arc<ResumptionCache>,
    pub refused: [AtomicU64; 3],
}

impl ShardCache {
    pub(crate) fn new(cache: Arc<ResumptionCache>) -> Self {
        ShardCache {
            cache,
            refused: Default::default(),
        }
    }

    /// Refused resumptions: unknown, expired, revoked.
    pub(crate) fn refused(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.refused[i].load(Relaxed))
    }
}

impl dimpl::SessionCache for ShardCache {
    fn store(&self, session_id: &[u8], state: SessionState, now: Instant) {
        self.cache.store(session_id, state, now);
    }

    fn lookup(&self, session_id: &[u8], now: Instant) -> Option<SessionState> {
        match self.cache.lookup(session_id, now) {
            Ok(s) => Some(s),
            Err(r) => {
                self.refused[r as usize].fetch_add(1, Relaxed);
                None
            }
        }
    }
}
