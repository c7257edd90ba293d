//! The `cluster-notices` thread: this node's pub/sub channel. Another node that took
//! a registration over says so here; the shard holding it lets it go, unless this node
//! took it back since (two nodes that took it in turn each hear of the other's take:
//! the older notice must not end the newer adoption). That node says again once its
//! own subscription of the registration's commands is in place: the subscription kept
//! here for the handover goes (every shard is told; the one keeping it acts).

use super::{ClusterAnswer, ClusterStats, Deliver};
use crate::lwm2m::Directory;
use crate::store::redis_scripts;
use crate::store::RedisConn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a read waits before the stop flag is looked at again.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Between connection attempts while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(500);

pub(super) struct Listener {
    pub(super) con: RedisConn,
    pub(super) channel: String,
    /// A connection of its own for the owner look-up of a release (the other one is
    /// in subscriber mode).
    pub(super) lookup: RedisConn,
    /// This node's name, as owners are written.
    pub(super) node: String,
    pub(super) dir: Arc<Directory>,
    pub(super) deliver: Deliver,
    pub(super) stats: Arc<ClusterStats>,
    /// How many shards this node has (an unsubscribe notice goes to each).
    pub(super) shards: u16,
}

impl Listener {
    /// Subscribes (again after each failure) and hands every notice on, until `stop`.
    pub(super) fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let mut con = match self.con.open_another(READ_TIMEOUT) {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            let mut sub = con.as_pubsub();
            if sub.subscribe(&self.channel).is_err() {
                std::thread::sleep(RETRY);
                continue;
            }
            tracing::debug!(channel = %self.channel, "listening for registrations taken by other nodes");
            while !stop.load(Ordering::SeqCst) {
                match sub.get_message() {
                    Ok(m) => self.notice(m.get_payload_bytes()),
                    Err(e) if e.is_timeout() => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// A release (to the shard holding that registration) or a forwarded command (to
    /// shard 0, which routes it as delivered).
    fn notice(&mut self, payload: &[u8]) {
        if let Some((topic, payload, expiry_s)) = redis_scripts::parse_command_notice(payload) {
            ClusterStats::add(&self.stats.forwards_received, 1);
            let command = ClusterAnswer::Command {
                topic,
                payload,
                expiry_s,
            };
            (self.deliver)(0, command);
            return;
        }
        let text = std::str::from_utf8(payload).unwrap_or("");
        if let Some((location, name)) = redis_scripts::parse_unsubscribe_notice(text) {
            ClusterStats::add(&self.stats.unsubscribes_received, 1);
            // The shard that kept the subscription is not in the directory any more
            // (the registration left it): each shard looks at its own.
            for shard in 0..self.shards {
                let name = name.into();
                (self.deliver)(shard, ClusterAnswer::Unsubscribe { name, location });
            }
            return;
        }
        let Some((location, name)) = redis_scripts::parse_release_notice(text) else {
            tracing::warn!(payload = %String::from_utf8_lossy(payload), "an unknown cluster notice");
            return;
        };
        ClusterStats::add(&self.stats.releases_received, 1);
        if self.owned_here(name, location) {
            tracing::debug!(
                name,
                location,
                "a stale release: taken back by this node since"
            );
            return;
        }
        let Some(at) = self.dir.by_name(name).filter(|e| e.location == location) else {
            return;
        };
        (self.deliver)(
            at.shard,
            ClusterAnswer::Release {
                name: name.into(),
                location,
            },
        );
    }

    /// Whether Redis names this node the owner of `name` at `location`: it took the
    /// registration (back) after the take that sent a release. Unknown (Redis
    /// unreachable): false, the release applies.
    fn owned_here(&mut self, name: &str, location: u64) -> bool {
        let key = redis_scripts::reg_key(name);
        let found = self.lookup.with(|c| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("owner")
                .arg("loc")
                .query::<(Option<String>, Option<String>)>(c)
        });
        matches!(found, Ok((Some(owner), Some(loc)))
            if owner == self.node && loc == location.to_string())
    }
}
