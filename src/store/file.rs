//! The embedded file store: one redb database file, `registrations.redb`, in the store's
//! directory. Records live in the `registrations` table under their endpoint name; the
//! `meta` table says which format wrote them. Every batch is one transaction committed
//! with an fsync: a batch is on disk entirely or not at all, whatever stops the process.

use super::{Backend, Change, RecordSink, StoreError};
use crate::lwm2m::record;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key of the format version: the record encoding's version.
const FORMAT: &str = "format";
/// The database file in the store's directory.
pub const FILE_NAME: &str = "registrations.redb";

pub struct FileStore {
    db: Database,
    path: PathBuf,
}

impl FileStore {
    /// Opens (creating when missing) the store in `dir`. A damaged file, a file of
    /// another format, or one another process holds is an error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let io = |detail: String| StoreError::Io {
            path: shown.display().to_string(),
            detail,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| io(format!("cannot create the store's directory: {e}")))?;
        let db = Database::create(&path).map_err(|e| open_error(&shown, e))?;
        let store = FileStore { db, path: shown };
        store.check_format()?;
        Ok(store)
    }

    /// A new file gets this gateway's format; an existing one must have it.
    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get(FORMAT)
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                Some(v) if v == record::VERSION as u64 => {}
                Some(v) => {
                    return Err(StoreError::Incompatible {
                        path: self.describe(),
                        detail: format!(
                            "the store holds records of format {v}; this gateway reads format {} \
                             (move the store away to start empty, or run the gateway that wrote it)",
                            record::VERSION
                        ),
                    })
                }
                None => {
                    meta.insert(FORMAT, record::VERSION as u64)
                        .map_err(|e| self.err(e))?;
                }
            }
            txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        classify(&self.path, e.into())
    }
}

impl Backend for FileStore {
    fn load(&mut self, f: &mut RecordSink<'_>) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    fn write(&mut self, batch: &[(Box<str>, Change)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            for (name, change) in batch {
                match change {
                    Change::Put(bytes) | Change::Claim(bytes) => {
                        table
                            .insert(&**name, bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Change::Remove(location) => {
                        let current = table
                            .get(&**name)
                            .map_err(|e| self.err(e))?
                            .map(|v| record::location_of(v.value()));
                        // Only the record of that registration: a newer one of the name
                        // (another location) stays.
                        if current == Some(Some(*location)) {
                            table.remove(&**name).map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// An error opening the database, said for an operator.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let p = path.display().to_string();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::Io {
                path: p,
                detail: "the store is in use by another process".into(),
            }
        }
        redb::DatabaseError::UpgradeRequired(v) => StoreError::Incompatible {
            path: p,
            detail: format!("the store's file format {v} is older than this gateway reads"),
        },
        other => classify(path, other.into()),
    }
}

/// Any redb error: damage, or the file system's refusal.
fn classify(path: &Path, e: redb::Error) -> StoreError {
    let p = path.display().to_string();
    match e {
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path: p, detail },
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path: p,
                detail: format!("not a store file ({io})"),
            }
        }
        other => StoreError::Io {
            path: p,
            detail: other.to_string(),
        },
    }
}
