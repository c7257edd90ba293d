//! The management API's view of every node's registrations: the records in Redis,
//! read (SCAN) and decoded on the API's worker threads, never on a shard.

use super::ClusterStats;
use crate::api::ClientInfo;
use crate::lwm2m::info::client_info;
use crate::lwm2m::record;
use crate::store::{redis_scripts, RedisConn, StoreError};
use parking_lot::Mutex;
use std::sync::Arc;

/// Keys asked for per SCAN step.
const SCAN_COUNT: usize = 1000;

pub struct ClusterView {
    /// This node's name.
    pub node: String,
    pub stats: Arc<ClusterStats>,
    con: Mutex<RedisConn>,
    epoch_ms: u64,
}

impl ClusterView {
    pub(super) fn new(
        url: &str,
        node: &str,
        epoch_ms: u64,
        stats: Arc<ClusterStats>,
    ) -> Result<Self, StoreError> {
        Ok(ClusterView {
            node: node.to_string(),
            stats,
            con: Mutex::new(RedisConn::new(url)?),
            epoch_ms,
        })
    }

    /// The registrations other nodes hold (times on this node's clock; `node` names
    /// the holder). Redis unreachable: none (the API lists this node's own).
    pub fn others(&self) -> Vec<ClientInfo> {
        let pattern = format!("{}reg:*", redis_scripts::PREFIX);
        let mut out = Vec::new();
        let mut con = self.con.lock();
        let mut cursor: u64 = 0;
        loop {
            let step: Result<(u64, Vec<String>), _> = con.with(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            });
            let Ok((next, keys)) = step else {
                return out;
            };
            for k in keys {
                if let Some(c) = self.read(&mut con, &k) {
                    out.push(c);
                }
            }
            cursor = next;
            if cursor == 0 {
                return out;
            }
        }
    }

    /// The registration `name` when another node holds it.
    pub fn other(&self, name: &str) -> Option<ClientInfo> {
        let mut con = self.con.lock();
        self.read(&mut con, &redis_scripts::reg_key(name))
    }

    fn read(&self, con: &mut RedisConn, key: &str) -> Option<ClientInfo> {
        let (owner, rec): (Option<String>, Option<Vec<u8>>) = con
            .with(|c| {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("owner")
                    .arg("rec")
                    .query(c)
            })
            .ok()?;
        let owner = owner.filter(|o| *o != self.node)?;
        let ep = record::decode(&rec?, self.epoch_ms).ok()?;
        let mut info = client_info(&ep, 0, false);
        info.node = Some(owner);
        Some(info)
    }
}
