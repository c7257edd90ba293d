//! The cluster side's counters, for `/metrics` and `/health`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Registrations taken over from another node (or from the store) for a request.
    pub takeovers: AtomicU64,
    /// Lookups of a registration by a device's address (`ClusterRequest::TakePeer`).
    pub peer_lookups: AtomicU64,
    /// Of those, registrations found there and taken over.
    pub peer_takeovers: AtomicU64,
    /// Takes that found no registration at the location.
    pub take_misses: AtomicU64,
    /// Takes that failed (Redis unreachable, a record that does not decode, the queue
    /// full): answered 4.04, the device registers again.
    pub take_failures: AtomicU64,
    /// Notices sent to other nodes that a registration was taken from them.
    pub releases_sent: AtomicU64,
    /// Notices received that another node took a registration from this one.
    pub releases_received: AtomicU64,
    /// Commands for endpoints another node holds, forwarded to it.
    pub forwards_sent: AtomicU64,
    /// Commands another node forwarded to this one.
    pub forwards_received: AtomicU64,
    /// Commands for endpoints no node holds (answered here as unknown).
    pub forwards_unowned: AtomicU64,
    /// Notices sent to the nodes registrations were taken from that this node's
    /// subscription of their commands is in place (their kept one may go).
    pub unsubscribes_sent: AtomicU64,
    /// Such notices not sent (the cluster queue full, Redis unreachable): the other node
    /// gives its kept subscription up at its deadline.
    pub unsubscribes_unsent: AtomicU64,
    /// Such notices received from other nodes.
    pub unsubscribes_received: AtomicU64,
    /// The cluster side's Redis connections are down.
    unreachable: AtomicBool,
}

impl ClusterStats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn reachable(&self) -> bool {
        !self.unreachable.load(Ordering::Relaxed)
    }

    pub(super) fn set_reachable(&self, ok: bool) {
        let was = self.unreachable.swap(!ok, Ordering::Relaxed);
        if was == ok {
            if ok {
                tracing::info!("Redis is reachable again");
            } else {
                tracing::warn!("Redis is unreachable: devices held here are served, takeovers answer 4.04, store changes wait");
            }
        }
    }
}
