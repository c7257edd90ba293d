//! The Redis store (`[store] kind = "redis"`): the records of every node of a cluster in
//! one Redis, each under its owner node's name (`redis_scripts.rs` has the keys and the
//! scripts). A node loads the records it owns at start; its writes are scripts, one
//! pipeline per batch, that claim a name for a new registration and otherwise apply
//! only while the node still holds the name.
//!
//! The connection is made lazily and again after an error, at most once per backoff
//! (100 ms doubling to 2 s): while Redis is unreachable a write fails at once and the
//! writer keeps its batch.

use super::redis_conn::RedisConn;
use super::redis_scripts::{self, PutOutcome};
use super::{Backend, Change, RecordSink, StoreError};
use crate::lwm2m::record;
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Keys asked for per SCAN step at start.
const SCAN_COUNT: usize = 1000;

/// What the Redis store refused (counted for `/metrics`).
#[derive(Debug, Default)]
pub struct RedisStoreStats {
    /// Records not written because another node holds the name now.
    pub not_owner: AtomicU64,
    /// Records not written because another name holds their location.
    pub location_clashes: AtomicU64,
    /// Registrations this node took from another node by registering them again here
    /// (that node was told to let them go).
    pub claimed_from_others: AtomicU64,
}

pub struct RedisStore {
    con: RedisConn,
    node: String,
    put: Script,
    remove: Script,
    stats: Arc<RedisStoreStats>,
}

impl RedisStore {
    /// Connects to `url` as node `node` and checks the store's record format (a store
    /// written in another format refuses the start; an empty one gets this gateway's).
    pub fn open(url: &str, node: &str) -> Result<RedisStore, StoreError> {
        let mut store = RedisStore {
            con: RedisConn::new(url)?,
            node: node.to_string(),
            put: redis_scripts::put(),
            remove: redis_scripts::remove(),
            stats: Arc::default(),
        };
        store.check_format()?;
        Ok(store)
    }

    pub fn stats(&self) -> Arc<RedisStoreStats> {
        self.stats.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn check_format(&mut self) -> Result<(), StoreError> {
        let key = redis_scripts::format_key();
        let want = record::VERSION as u64;
        let found: u64 = self.con.with(|c| {
            redis::cmd("SET").arg(&key).arg(want).arg("NX").exec(c)?;
            redis::cmd("GET").arg(&key).query(c)
        })?;
        if found != want {
            return Err(StoreError::Incompatible {
                path: self.describe(),
                detail: format!(
                    "the store holds records of format {found}; this gateway reads format {want}"
                ),
            });
        }
        Ok(())
    }

    /// Tells the nodes that held names this node claimed to let them go.
    fn tell_previous_owners(&mut self, released: &[(String, u64, &str)]) -> Result<(), StoreError> {
        if released.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (owner, location, name) in released {
            pipe.cmd("PUBLISH")
                .arg(redis_scripts::node_channel(owner))
                .arg(redis_scripts::release_notice(*location, name))
                .ignore();
        }
        self.stats
            .claimed_from_others
            .fetch_add(released.len() as u64, Ordering::Relaxed);
        self.con.with(|c| pipe.exec(c))
    }
}

impl Backend for RedisStore {
    /// The records this node owns (a restarted node resumes what it held; the others'
    /// stay theirs).
    fn load(&mut self, f: &mut RecordSink<'_>) -> Result<(), StoreError> {
        let pattern = format!("{}reg:*", redis_scripts::PREFIX);
        let strip = redis_scripts::PREFIX.len() + "reg:".len();
        let node = self.node.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.con.with(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            })?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg("owner").arg("rec");
                }
                let rows: Vec<(Option<String>, Option<Vec<u8>>)> =
                    self.con.with(|c| pipe.query(c))?;
                for (k, (owner, rec)) in keys.iter().zip(rows) {
                    if let (Some(owner), Some(rec)) = (owner, rec) {
                        if owner == node {
                            f(&k[strip..], &rec)?;
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    fn write(&mut self, batch: &[(Box<str>, Change)]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        // Loaded with every batch: Redis may have restarted (and forgotten them) since.
        pipe.load_script(&self.put).ignore();
        pipe.load_script(&self.remove).ignore();
        let mut puts = Vec::new();
        for (i, (name, change)) in batch.iter().enumerate() {
            let key = redis_scripts::reg_key(name);
            match change {
                Change::Put(rec) | Change::Claim(rec) => {
                    let Some(location) = record::location_of(rec) else {
                        continue;
                    };
                    let claim = matches!(change, Change::Claim(_));
                    let peer = record::plain_peer_of(rec).map_or(String::new(), |p| p.to_string());
                    pipe.invoke_script(
                        self.put
                            .key(key)
                            .arg(rec.as_slice())
                            .arg(location)
                            .arg(&self.node)
                            .arg(if claim { "1" } else { "0" })
                            .arg(redis_scripts::PREFIX)
                            .arg(&**name)
                            .arg(peer),
                    );
                    puts.push(i);
                }
                Change::Remove(location) => {
                    pipe.invoke_script(
                        self.remove
                            .key(key)
                            .arg(*location)
                            .arg(&self.node)
                            .arg(redis_scripts::PREFIX),
                    )
                    .ignore();
                }
            }
        }
        let codes: Vec<(i64, String, String)> = self.con.with(|c| pipe.query(c))?;
        let mut released = Vec::new();
        for ((code, owner, oldloc), i) in codes.into_iter().zip(puts) {
            match PutOutcome::from_code(code) {
                PutOutcome::Written => {
                    if !owner.is_empty() && owner != self.node {
                        if let Ok(l) = oldloc.parse::<u64>() {
                            released.push((owner, l, &*batch[i].0));
                        }
                    }
                }
                PutOutcome::NotOwner => {
                    self.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                }
                PutOutcome::LocationTaken => {
                    self.stats.location_clashes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        endpoint = %batch[i].0,
                        "the registration's location is another endpoint's in the Redis store: not written"
                    );
                }
            }
        }
        self.tell_previous_owners(&released)
    }

    fn describe(&self) -> String {
        format!("{} (node {})", self.con.url(), self.node)
    }
}
