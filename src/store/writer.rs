//! The store's writer thread: takes the shards' changes from one bounded queue,
//! coalesces them per endpoint name and writes them in batches.

use super::pending::PendingChanges;
use super::stats::{StoreState, StoreStats};
use super::{Backend, FLUSH_INTERVAL, MAX_BATCH, QUEUE_CAPACITY};
use crate::lwm2m::StoreChange;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
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
    changes: PendingChanges,
    /// When the oldest change of the batch was queued.
    since: Option<Instant>,
}

impl Batch {
    fn add(&mut self, c: StoreChange) {
        self.since.get_or_insert_with(Instant::now);
        self.changes.add(c);
    }

    fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + FLUSH_INTERVAL)
    }
}

fn run(mut backend: Box<dyn Backend>, rx: Receiver<Msg>, stats: &StoreStats) {
    let mut batch = Batch::default();
    let mut stopping = false;
    while !stopping {
        match batch.due() {
            // Nothing waits: block for the first change of the next batch.
            None => match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Change(c)) => batch.add(c),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => stopping = true,
                Err(RecvTimeoutError::Timeout) => {}
            },
            // A batch waits: sleep until it is due, then take what came meanwhile. Not
            // blocked on the queue, the writer is woken once per batch, not by every
            // change (each wake-up would cost the sending shard a system call).
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() && batch.changes.len() < MAX_BATCH {
                    std::thread::sleep(wait);
                }
            }
        }
        // Take what is queued without waiting.
        while !stopping && batch.changes.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Change(c)) => batch.add(c),
                Ok(Msg::Stop) => stopping = true,
                Err(_) => break,
            }
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
    let changes = batch.changes.take_sorted();
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
    // Kept for the next attempt (no newer changes of the same names came meanwhile:
    // the batch was empty since the drain).
    batch.changes.restore(changes);
    // Retry after another interval.
    batch.since = Some(Instant::now());
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::lwm2m::endpoint::Endpoint;
    use crate::store::FileStore;

    /// A record of `name` at `location`, as the core writes it.
    pub(in crate::store) fn record(name: &str, location: u64) -> Vec<u8> {
        let mut ep = crate::lwm2m::record::decode(&base_record(), 0).expect("base");
        ep.name = name.into();
        ep.location = location;
        let mut out = Vec::new();
        crate::lwm2m::record::encode(&ep, 0, &mut out);
        out
    }

    /// The smallest valid record (version 1, every optional field absent).
    fn base_record() -> Vec<u8> {
        let mut b = vec![1];
        b.extend(1u32.to_le_bytes());
        b.push(b'x');
        b.extend(7u64.to_le_bytes());
        b.push(4);
        b.extend([127, 0, 0, 1]);
        b.extend(5683u16.to_le_bytes());
        b.extend(60u32.to_le_bytes());
        b.extend([0u8; 24]); // deadline, registration and last-seen times
        b.extend(0u32.to_le_bytes()); // mountpoint
        b.extend(0u32.to_le_bytes()); // parameters
        b.extend([0, 0, 0, 0, 0]); // alternate path, object list, flags, formats
        b.extend(0u32.to_le_bytes()); // observations
        b
    }

    fn stored(dir: &std::path::Path) -> Vec<(String, u64)> {
        let mut s = FileStore::open(dir).expect("open");
        let mut out = Vec::new();
        s.load(&mut |name, bytes| {
            let ep: Endpoint = crate::lwm2m::record::decode(bytes, 0).expect("record");
            out.push((name.to_string(), ep.location));
            Ok(())
        })
        .expect("load");
        out
    }

    #[test]
    fn changes_from_two_shards_in_either_order_keep_the_newest_registration() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(StoreStats::default());
        let w = StoreWriter::start(
            Box::new(FileStore::open(dir.path()).unwrap()),
            stats.clone(),
        )
        .unwrap();
        let (a, b) = (w.sender(), w.sender());
        let put = |name: &str, location| StoreChange::Put {
            name: name.into(),
            location,
            record: record(name, location),
            claim: true,
        };
        let remove = |name: &str, location| StoreChange::Remove {
            name: name.into(),
            location,
        };
        // "dev1" registered again on shard b (location 2) while shard a removes its old
        // registration (location 1): the removal arrives after the new record.
        a.send(put("dev1", 1));
        b.send(put("dev1", 2));
        a.send(remove("dev1", 1));
        // "dev2": the removal first, then the new record.
        a.send(put("dev2", 3));
        a.send(remove("dev2", 3));
        b.send(put("dev2", 4));
        // "dev3" de-registered.
        a.send(put("dev3", 5));
        a.send(remove("dev3", 5));
        w.stop();
        let mut s = stored(dir.path());
        s.sort();
        assert_eq!(s, [("dev1".to_string(), 2), ("dev2".to_string(), 4)]);
        assert!(StoreStats::get(&stats.batches) >= 1);
        assert_eq!(StoreStats::get(&stats.queue_full), 0);
        assert_eq!(stats.state(), StoreState::Ok);

        // A removal of an old location in a later batch leaves the newer record.
        let w = StoreWriter::start(Box::new(FileStore::open(dir.path()).unwrap()), stats).unwrap();
        w.sender().send(remove("dev1", 1));
        w.sender().send(remove("dev2", 4));
        w.stop();
        assert_eq!(stored(dir.path()), [("dev1".to_string(), 2)]);
    }
}
