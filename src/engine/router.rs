//! Commands from MQTT applications to the shard holding the endpoint. Runs on the
//! MQTT thread: a topic match, a directory lookup and a mailbox push, nothing more.

use crate::lwm2m::template::{filter_matches, Template};
use crate::lwm2m::{Directory, ShardMsg};
use crate::mqtt::Inbound;
use shard::MailboxSender;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct RouterCounters {
    pub routed: AtomicU64,
    /// The topic is not a command topic of this gateway.
    pub foreign_topic: AtomicU64,
    /// No registered endpoint for the topic.
    pub unknown_endpoint: AtomicU64,
    pub mailbox_full: AtomicU64,
}

pub struct CommandRouter {
    pub mountpoint: Template,
    pub command_topic: String,
    pub dir: Arc<Directory>,
    pub shards: Arc<Vec<MailboxSender<ShardMsg>>>,
    pub counters: Arc<RouterCounters>,
}

impl CommandRouter {
    /// The shard that holds the endpoint a command topic names. A command for an
    /// endpoint that is not registered goes to a shard too, which answers it 4.00.
    fn shard_for(&self, topic: &str) -> Result<u16, &AtomicU64> {
        let Some((mountpoint, rest, name)) = self.mountpoint.match_prefix(topic) else {
            return Err(&self.counters.foreign_topic);
        };
        if !filter_matches(&self.command_topic, rest) {
            return Err(&self.counters.foreign_topic);
        }
        let name = match name.filter(|_| self.mountpoint.keyed_by_name()) {
            Some(n) => n.to_string(),
            None => self
                .dir
                .route(mountpoint)
                .unwrap_or_else(|| mountpoint.to_string()),
        };
        Ok(match self.dir.by_name(&name) {
            Some(e) => e.shard,
            None => {
                self.counters
                    .unknown_endpoint
                    .fetch_add(1, Ordering::Relaxed);
                (crate::lwm2m::publish::lane_of(&name) as usize % self.shards.len().max(1)) as u16
            }
        })
    }
}

impl Inbound for CommandRouter {
    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        match self.shard_for(topic) {
            Ok(shard) => {
                let msg = ShardMsg::Command {
                    topic: topic.to_string(),
                    payload: payload.to_vec(),
                    hops: 0,
                    arrival: Default::default(),
                };
                match self.shards.get(shard as usize).map(|s| s.try_send(msg)) {
                    Some(Ok(())) => {
                        self.counters.routed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        self.counters.mailbox_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(topic, "command for no registered endpoint");
            }
        }
    }
}
