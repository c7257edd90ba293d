//! The store's counters and state, shared by the writer, the shards and `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// What `/health` says of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// Its last write succeeded (or none was needed).
    Ok,
    /// Its last write failed; the changes are kept and written again.
    Failing,
}

impl StoreState {
    pub fn name(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Failing => "failing",
        }
    }
}

#[derive(Debug, Default)]
pub struct StoreStats {
    /// Records written or removed.
    pub writes: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Changes the shards dropped because the writer's queue was full.
    pub queue_full: AtomicU64,
    /// Batches that failed to commit.
    pub errors: AtomicU64,
    /// Changes waiting in the writer's queue and batch.
    pub queued: AtomicU64,
    /// Registrations read back at start, and how long the reading took.
    pub restored: AtomicU64,
    pub restore_ms: AtomicU64,
    /// 0 while writes succeed, 1 after a failed one.
    failing: AtomicU8,
}

impl StoreStats {
    pub fn state(&self) -> StoreState {
        if self.failing.load(Ordering::Relaxed) == 0 {
            StoreState::Ok
        } else {
            StoreState::Failing
        }
    }

    pub(super) fn set_state(&self, s: StoreState) {
        self.failing
            .store((s == StoreState::Failing) as u8, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(super) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
