//! Which shard a command from an MQTT application goes to. Runs on the shard whose
//! broker connection the command arrived on (the home of its subscription): a topic
//! match and a directory lookup, nothing more. The command is handled there when the
//! endpoint lives there (the usual case: a registration subscribes on its own shard's
//! connection), else handed to the endpoint's shard like any cross-shard message
//! (never dropped; answered 5.03 only when the cross-shard backlog is full).

use crate::lwm2m::publish::name_hash;
use crate::lwm2m::routing::{resolve, Resolved};
use crate::lwm2m::template::Template;
use crate::lwm2m::Directory;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct RouterCounters {
    /// Commands handed to a shard (their own or another).
    pub routed: AtomicU64,
    /// Commands that arrived on the shard holding their endpoint (no hand-off).
    pub local: AtomicU64,
    /// The topic is not a command topic of this gateway.
    pub foreign_topic: AtomicU64,
    /// No registered endpoint for the topic.
    pub unknown_endpoint: AtomicU64,
}

pub(super) struct CommandRouter {
    pub mountpoint: Template,
    pub command_topic: String,
    pub dir: Arc<Directory>,
    pub shards: usize,
    pub counters: Arc<RouterCounters>,
}

impl CommandRouter {
    /// What a command topic names and the shard that holds it; counted. A command for an
    /// endpoint that is not registered goes to a shard too (the one its name hashes to),
    /// which answers it 4.00. None: not a command topic of this gateway (counted).
    pub(super) fn route(&self, topic: &str) -> Option<(u16, Resolved)> {
        let Some(to) = resolve(&self.mountpoint, &self.command_topic, &self.dir, topic) else {
            self.counters.foreign_topic.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let shard = match self.dir.by_name(&to.endpoint) {
            Some(e) => e.shard,
            None => {
                self.counters
                    .unknown_endpoint
                    .fetch_add(1, Ordering::Relaxed);
                (name_hash(&to.endpoint) as usize % self.shards.max(1)) as u16
            }
        };
        self.counters.routed.fetch_add(1, Ordering::Relaxed);
        Some((shard, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::directory::DirEntry;

    fn router(mountpoint: &str) -> CommandRouter {
        CommandRouter {
            mountpoint: Template::parse(mountpoint),
            command_topic: "dn/#".into(),
            dir: Arc::new(Directory::new()),
            shards: 2,
            counters: Arc::default(),
        }
    }

    #[test]
    fn commands_go_to_the_endpoints_shard() {
        let r = router("lwm2m/${endpoint_name}/");
        let at = |shard, location| DirEntry { shard, location };
        r.dir.claim("dev1", at(1, 7), false).unwrap();
        assert_eq!(r.route("lwm2m/dev1/dn/cmd").map(|r| r.0), Some(1));
        // Unregistered: the shard its name hashes to answers it.
        let expect = (name_hash("dev2") % 2) as u16;
        assert_eq!(r.route("lwm2m/dev2/dn/cmd").map(|r| r.0), Some(expect));
        assert_eq!(r.counters.unknown_endpoint.load(Ordering::Relaxed), 1);
        assert_eq!(r.counters.routed.load(Ordering::Relaxed), 2);
        // Not a command topic.
        assert_eq!(r.route("other/dev1/dn/cmd"), None);
        assert_eq!(r.route("lwm2m/dev1/up/resp"), None);
        assert_eq!(r.counters.foreign_topic.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn mountpoints_not_keyed_by_name_use_the_route() {
        let r = router("gw/${clientid}/");
        r.dir
            .claim(
                "dev1",
                DirEntry {
                    shard: 1,
                    location: 3,
                },
                false,
            )
            .unwrap();
        r.dir.set_route("gw/imei9/", "dev1", 3);
        assert_eq!(r.route("gw/imei9/dn/cmd").map(|r| r.0), Some(1));
        assert_eq!(r.counters.unknown_endpoint.load(Ordering::Relaxed), 0);
    }
}
