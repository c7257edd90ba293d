//! Commands from MQTT applications to the shard holding the endpoint. Runs on the
//! MQTT thread: a topic match, a directory lookup and a mailbox push, nothing more.
//! A command the shard's full mailbox cannot take is answered at once with a
//! `5.03 service_unavailable` error (never dropped silently, never waited for).

use crate::coap::codes;
use crate::formats::fmt_id;
use crate::lwm2m::command::{self, Arrival, Encoding, Op};
use crate::lwm2m::publish::lane_of;
use crate::lwm2m::settings::Translator;
use crate::lwm2m::stats::UNKNOWN_MSG_TYPE;
use crate::lwm2m::template::{filter_matches, Template};
use crate::lwm2m::{dm_json, Directory, ShardMsg};
use crate::mqtt::{Delivery, Inbound, Outbound};
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
    /// Commands the shard's mailbox had no room for (answered with an error).
    pub mailbox_full: AtomicU64,
    /// The same by msgType (`Op::index`, then `UNKNOWN_MSG_TYPE`).
    pub shed_by_type: [AtomicU64; 10],
}

pub struct CommandRouter {
    pub mountpoint: Template,
    pub command_topic: String,
    /// Where a command the gateway cannot take is answered (mountpoint + this topic).
    pub response: Translator,
    pub dir: Arc<Directory>,
    pub shards: Arc<Vec<MailboxSender<ShardMsg>>>,
    pub counters: Arc<RouterCounters>,
}

/// Where a command topic leads.
struct Route<'t> {
    shard: u16,
    /// The topic's mountpoint (its literal prefix).
    mountpoint: &'t str,
    /// The endpoint name (or the mountpoint when no name can be found).
    name: String,
}

impl CommandRouter {
    /// The shard that holds the endpoint a command topic names. A command for an
    /// endpoint that is not registered goes to a shard too, which answers it 4.00.
    fn route<'t>(&self, topic: &'t str) -> Result<Route<'t>, &AtomicU64> {
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
        let shard = match self.dir.by_name(&name) {
            Some(e) => e.shard,
            None => {
                self.counters
                    .unknown_endpoint
                    .fetch_add(1, Ordering::Relaxed);
                (lane_of(&name) as usize % self.shards.len().max(1)) as u16
            }
        };
        Ok(Route {
            shard,
            mountpoint,
            name,
        })
    }

    /// The error answering a command no shard could take.
    fn overloaded(&self, route: &Route<'_>, mut payload: Vec<u8>) -> Outbound {
        let enc = Encoding {
            format: fmt_id::TLV,
        };
        let echo = match command::parse(&mut payload, &(), enc) {
            Ok(c) => c.echo,
            Err(e) => e.echo,
        };
        let row = echo
            .msg_type
            .as_deref()
            .and_then(Op::from_name)
            .map_or(UNKNOWN_MSG_TYPE, Op::index);
        self.counters.shed_by_type[row].fetch_add(1, Ordering::Relaxed);
        let mut body = Vec::with_capacity(160);
        dm_json::error(
            &mut body,
            &echo,
            codes::SERVICE_UNAVAILABLE,
            "gateway overloaded: the command was not processed (the shard holding the endpoint has a full mailbox); retry later",
        );
        Outbound::Publish {
            lane: lane_of(&route.name),
            topic: format!("{}{}", route.mountpoint, self.response.topic),
            payload: body,
            qos: self.response.qos,
        }
    }
}

impl Inbound for CommandRouter {
    fn on_publish(&mut self, msg: &Delivery<'_>, replies: &mut Vec<Outbound>) {
        let route = match self.route(msg.topic) {
            Ok(r) => r,
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(topic = msg.topic, "not a command topic of this gateway");
                return;
            }
        };
        let cmd = ShardMsg::Command {
            topic: msg.topic.to_string(),
            payload: msg.payload.to_vec(),
            hops: 0,
            arrival: Arrival {
                at_ms: None,
                expiry_s: msg.expiry_s,
            },
        };
        let refused = match self.shards.get(route.shard as usize) {
            Some(s) => match s.try_send(cmd) {
                Ok(()) => {
                    self.counters.routed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => e.into_inner(),
            },
            None => cmd,
        };
        self.counters.mailbox_full.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            topic = msg.topic,
            shard = route.shard,
            "shard mailbox full: command answered 5.03"
        );
        if let ShardMsg::Command { payload, .. } = refused {
            replies.push(self.overloaded(&route, payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(capacity: usize) -> (CommandRouter, shard::MailboxReceiver<ShardMsg>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = shard::mailbox(capacity, waker);
        let r = CommandRouter {
            mountpoint: Template::parse("lwm2m/${endpoint_name}/"),
            command_topic: "dn/#".into(),
            response: Translator {
                topic: "up/resp".into(),
                qos: 1,
            },
            dir: Arc::new(Directory::new()),
            shards: Arc::new(vec![tx]),
            counters: Arc::default(),
        };
        (r, rx, poll)
    }

    fn deliver(
        r: &mut CommandRouter,
        topic: &str,
        payload: &[u8],
        expiry_s: Option<u32>,
    ) -> Vec<Outbound> {
        let mut replies = Vec::new();
        let d = Delivery {
            topic,
            payload,
            expiry_s,
        };
        r.on_publish(&d, &mut replies);
        replies
    }

    /// Every command gets exactly one final message: one the shard cannot take is
    /// answered on the response topic at once, echoing the command.
    #[test]
    fn a_full_mailbox_is_answered_with_an_error() {
        let (mut r, rx, _poll) = router(1);
        let cmd = br#"{"reqID":7,"msgType":"read","data":{"path":"/3/0/1"}}"#;
        assert!(deliver(&mut r, "lwm2m/dev1/dn/cmd", cmd, Some(30)).is_empty());
        match rx.try_recv() {
            Some(ShardMsg::Command { arrival, .. }) => {
                assert_eq!(arrival.expiry_s, Some(30));
                assert_eq!(arrival.at_ms, None);
            }
            other => panic!("expected the command in the mailbox, got {other:?}"),
        }
        assert!(deliver(&mut r, "lwm2m/dev1/dn/cmd", cmd, None).is_empty());
        let replies = deliver(&mut r, "lwm2m/dev1/dn/cmd", cmd, None);
        assert_eq!(replies.len(), 1, "{replies:?}");
        let Outbound::Publish {
            topic,
            payload,
            qos,
            lane,
        } = &replies[0]
        else {
            panic!("{replies:?}")
        };
        assert_eq!(topic, "lwm2m/dev1/up/resp");
        assert_eq!(*qos, 1);
        assert_eq!(*lane, lane_of("dev1"));
        let text = std::str::from_utf8(payload).unwrap();
        assert!(text.contains(r#""reqID":7"#), "{text}");
        assert!(text.contains(r#""msgType":"read""#), "{text}");
        assert!(text.contains(r#""code":"5.03""#), "{text}");
        assert!(text.contains("overloaded"), "{text}");
        assert_eq!(r.counters.mailbox_full.load(Ordering::Relaxed), 1);
        assert_eq!(
            r.counters.shed_by_type[Op::Read.index()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(r.counters.routed.load(Ordering::Relaxed), 2);
        // Not a command topic: nothing routed, nothing answered.
        assert!(deliver(&mut r, "other/dev1/dn/cmd", cmd, None).is_empty());
        assert_eq!(r.counters.foreign_topic.load(Ordering::Relaxed), 1);
    }
}
