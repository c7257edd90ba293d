//! The management API's view of every node's registrations: the records in Redis,
//! read (SCAN) and decoded on the API's worker threads, never on a shard.

use super::{ClusterSender, ClusterStats};
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
    /// The cluster thread's queue, for the API's commands to other nodes' devices.
    sender: ClusterSender,
}

impl ClusterView {
    pub(super) fn new(
        url: &str,
        node: &str,
        epoch_ms: u64,
        stats: Arc<ClusterStats>,
        sender: ClusterSender,
    ) -> Result<Self, StoreError> {
        Ok(ClusterView {
            node: node.to_string(),
            stats,
            con: Mutex::new(RedisConn::new(url)?),
            epoch_ms,
            sender,
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

    /// Hands a command of the management API for `name`, which another node holds, to
    /// that node: as an MQTT command delivered on the device's command topic (its
    /// mountpoint and `command_topic`, the translator's filter without its wildcard), so
    /// the node holding it runs it and publishes the response there. Err: no other node
    /// holds `name`, or the cluster thread's queue is full.
    pub fn forward_command(
        &self,
        name: &str,
        command_topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let ep = {
            let mut con = self.con.lock();
            self.read_endpoint(&mut con, &redis_scripts::reg_key(name))
        };
        let Some((_, ep)) = ep else {
            return Err(format!("client {name:?} is not registered"));
        };
        let suffix = command_topic
            .strip_suffix("/#")
            .or_else(|| command_topic.strip_suffix('#'))
            .unwrap_or(command_topic);
        let topic = format!("{}{suffix}", ep.mountpoint);
        self.sender
            .forward(0, &ep.name, topic, payload, None)
            .map_err(|_| "the gateway is overloaded".to_string())
    }

    fn read(&self, con: &mut RedisConn, key: &str) -> Option<ClientInfo> {
        let (owner, ep) = self.read_endpoint(con, key)?;
        let mut info = client_info(&ep, 0, false);
        info.node = Some(owner);
        Some(info)
    }

    /// The registration under `key` and its holder, when another node holds it.
    fn read_endpoint(
        &self,
        con: &mut RedisConn,
        key: &str,
    ) -> Option<(String, crate::lwm2m::endpoint::Endpoint)> {
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
        Some((owner, ep))
    }
}
