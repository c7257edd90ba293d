//! Registrations that outlive the process (`[store]`).
//!
//! The seam: the protocol core speaks only records (`lwm2m::record`) and store changes
//! (`Output::Store`: put a name's record, remove a name's record of one location). A
//! back end ([`Backend`]) keeps records under endpoint names; the one here is the
//! embedded file store (`file.rs`, redb). Another (a shared Redis) is one more
//! implementation of the trait: the writer thread (`writer.rs`), the start's restore
//! (`restore.rs`) and the shards do not change.
//!
//! The shards never wait for the store: each hands its changes to the writer's bounded
//! queue without blocking (a full queue drops the change and counts it), and the writer
//! coalesces them per name and writes them in batches, at most [`FLUSH_INTERVAL`] after
//! they were queued. A clean stop writes everything queued; a crash loses at most what
//! was queued and not yet written (the last `FLUSH_INTERVAL` of changes, plus the time
//! of one write).

mod file;
mod pending;
mod redis_conn;
pub mod redis_scripts;
mod redis_store;
mod restore;
mod stats;
mod writer;

pub use file::{FileStore, FILE_NAME};
pub use pending::PendingChanges;
pub use redis_conn::RedisConn;
pub use redis_store::{RedisStore, RedisStoreStats};
pub use restore::{load, Restored};
pub use stats::{StoreState, StoreStats};
pub use writer::{StoreSender, StoreWriter};

use std::time::Duration;

/// How long a change may wait in the writer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A batch is written at once when it holds this many names.
pub const MAX_BATCH: usize = 16_384;
/// Changes the writer's queue holds before the shards' further changes are dropped.
pub const QUEUE_CAPACITY: usize = 262_144;

/// Why the store cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's files are damaged.
    #[error("{path}: the store is damaged: {detail}")]
    Corrupt { path: String, detail: String },
    /// The store was written by a gateway whose format this one does not read.
    #[error("{path}: {detail}")]
    Incompatible { path: String, detail: String },
    /// The file system refused (permissions, space, a lock held by another process).
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

/// One name's change, as the writer applies it (the last of a batch's changes of the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Keep this record under the name, while this node holds the name (a shared store
    /// refuses the record of a name another node took over; the file store keeps it).
    Put(Vec<u8>),
    /// Keep this record of a new registration under the name, taking the name over
    /// from whichever node held it.
    Claim(Vec<u8>),
    /// Remove the name's record if it is of this location.
    Remove(u64),
}

/// What [`Backend::load`] hands each record to: its name and bytes.
pub type RecordSink<'a> = dyn FnMut(&str, &[u8]) -> Result<(), StoreError> + 'a;

/// Where records are kept: one record per endpoint name.
pub trait Backend: Send {
    /// Hands every record to `f` (name, record bytes); stops at `f`'s first error.
    fn load(&mut self, f: &mut RecordSink<'_>) -> Result<(), StoreError>;

    /// Applies a batch of changes at once (all or none).
    fn write(&mut self, batch: &[(Box<str>, Change)]) -> Result<(), StoreError>;

    /// Where the records are, for logs and errors.
    fn describe(&self) -> String;
}
