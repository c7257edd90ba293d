//! The store's writer thread: takes the shards' changes from one bounded queue,
//! coalesces them per endpoint name and writes them in batches.

use super::stats::{StoreState, StoreStats};
use super::{Backend, Change, FLUSH_INTERVAL, MAX_BATCH, QUEUE_CAPACITY};
use crate::lwm2m::StoreChange;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Msg {
    Change(StoreChange),
    /// Write everything queued before this and end.
    Stop,
}

/// A shard's handle on the writer: never blocks.
#[derive(Clone)]
pub struct StoreSender {
    tx: Sender<Msg>,
    stats: Arc<StoreStats>,
}

impl StoreSender {
    /// Queues a change; a full queue drops it (counted in `queue_full`).
    pub fn send(&self, c: StoreChange) {
        match self.tx.try_send(Msg::Change(c)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                StoreStats::add(&self.stats.queue_full, 1)
            }
        }
    }
}

/// The writer thread and the way to stop it.
pub struct StoreWriter {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<StoreStats>,
}

impl StoreWriter {
    /// Starts the thread writing into `backend`.
    pub fn start(
        backend: Box<dyn Backend>,
        stats: Arc<StoreStats>,
    ) -> std::io::Result<StoreWriter> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(backend, rx, &s))?;
        Ok(StoreWriter {
            tx,
            thread: Some(thread),
            stats,
        })
    }

    pub fn sender(&self) -> StoreSender {
        StoreSender {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Writes everything queued so far and ends the thread (after the shards stopped).
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Changes of one batch, the last per name.
#[derive(Default)]
struct Batch {
    changes: HashMap<Box<str>, Change>,
    /// When the oldest change of the batch was queued.
    since: Option<Instant>,
}

impl Batch {
    fn add(&mut self, c: StoreChange) {
        self.since.get_or_insert_with(Instant::now);
        match c {
            StoreChange::Put {
                name,
                location: _,
                record,
            } => {
                self.changes.insert(name, Change::Put(record));
            }
            StoreChange::Remove { name, location } => {
                // A put of another location (a newer registration, from another shard)
                // stays; anything else of the name gives way to the removal.
                let newer = matches!(
                    self.changes.get(&name),
                    Some(Change::Put(r)) if crate::lwm2m::record::location_of(r) != Some(location)
                );
                if !newer {
                    self.changes.insert(name, Change::Remove(location));
                }
            }
        }
    }

    fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + FLUSH_INTERVAL)
    }
}

fn run(mut backend: Box<dyn Backend>, rx: Receiver<Msg>, stats: &StoreStats) {
    let mut batch = Batch::default();
    let mut stopping = false;
    while !stopping {
        let wait = match batch.due() {
            Some(due) => due.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(1),
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Change(c)) => {
                batch.add(c);
                // Take what else is queued without waiting.
                while batch.changes.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Change(c)) => batch.add(c),
                        Ok(Msg::Stop) => {
                            stopping = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => stopping = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        stats.queued.store(
            (rx.len() + batch.changes.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let due = batch.due().is_some_and(|d| Instant::now() >= d);
        if stopping || due || batch.changes.len() >= MAX_BATCH {
            flush(&mut *backend, &mut batch, stats, stopping);
        }
    }
}

/// Writes the batch. A failed write keeps it (the next turn tries again); at a stop,
/// it is tried three times and then given up, said in the log.
fn flush(backend: &mut dyn Backend, batch: &mut Batch, stats: &StoreStats, stopping: bool) {
    if batch.changes.is_empty() {
        batch.since = None;
        return;
    }
    let changes: Vec<(Box<str>, Change)> = batch.changes.drain().collect();
    let attempts = if stopping { 3 } else { 1 };
    for attempt in 1..=attempts {
        match backend.write(&changes) {
            Ok(()) => {
                StoreStats::add(&stats.writes, changes.len() as u64);
                StoreStats::add(&stats.batches, 1);
                if stats.state() != StoreState::Ok {
                    tracing::info!(store = %backend.describe(), "store writes succeed again");
                }
                stats.set_state(StoreState::Ok);
                batch.since = None;
                return;
            }
            Err(e) => {
                StoreStats::add(&stats.errors, 1);
                if stats.state() == StoreState::Ok || attempt == attempts {
                    tracing::error!(error = %e, "store write failed; the changes are kept and written again");
                }
                stats.set_state(StoreState::Failing);
            }
        }
    }
    if stopping {
        tracing::error!(
            store = %backend.describe(),
            changes = changes.len(),
            "stopping with store changes that could not be written"
        );
        return;
    }
    // Kept for the next attempt, unless newer changes of the same names came meanwhile
    // (there are none: the batch was empty since the drain).
    batch.changes.extend(changes);
    // Retry after another interval.
    batch.since = Some(Instant::now());
}
