//! A shard's own broker connections: the shard publishes what its core produces
//! (registrations, responses, notifications) and receives the commands of the
//! subscriptions it is home to on the same connections, in its own event loop. A
//! command for a device of this shard therefore crosses no thread: broker → shard →
//! device → shard → broker.
//!
//! Timers (reconnect, keepalive, the shutdown deadline) are one `ShardTimer::Mqtt` entry in
//! the shard's wheel, re-armed when the connections' next deadline comes sooner. The
//! connections run on the shard's clock: the `now` of the loop turn, as the `Instant`
//! of that millisecond (what the core and DTLS see too).

use std::sync::Arc;

use super::mail::ShardTimer;
use crate::events::EventFeed;
use crate::lwm2m::MqttOut;
use crate::mqtt::{Delivery, Inbound, MqttClient, Outbound};
use shard::{Clock, TimerWheel};

/// The mio tokens of a shard's broker connections start here.
pub(super) const MQTT_TOKEN_BASE: usize = 16;

/// A command the broker delivered, copied out of the connection's read buffer.
pub(super) struct Delivered {
    pub topic: String,
    pub payload: Vec<u8>,
    pub expiry_s: Option<u32>,
}

/// Collects what the connections deliver while they are being read.
#[derive(Default)]
struct Inbox(Vec<Delivered>);

impl Inbound for Inbox {
    fn on_publish(&mut self, msg: &Delivery<'_>, _replies: &mut Vec<Outbound>) {
        self.0.push(Delivered {
            topic: msg.topic.to_string(),
            payload: msg.payload.to_vec(),
            expiry_s: msg.expiry_s,
        });
    }
}

pub(super) struct MqttSide {
    client: MqttClient,
    registry: mio::Registry,
    clock: Clock,
    inbox: Inbox,
    /// The `ShardTimer::Mqtt` in the wheel (u64::MAX: none).
    armed_at: u64,
    /// Shutting down: publish what is held until this time (ms), then disconnect.
    stop_at: Option<u64>,
    closed: bool,
    /// Above the high watermark until below the low one (see [`MqttSide::congestion`]).
    congested: bool,
    /// In-process listeners of what is published (the API's event stream).
    events: Option<Arc<EventFeed>>,
    /// Command filters are subscribed as MQTT shared subscriptions of this group
    /// (`[store] kind = "redis"`: the nodes of a cluster share each filter, and the broker
    /// delivers each command to one of them).
    share: Option<&'static str>,
    /// Confirmations waiting for SUBACKs: the connection holding the filter, what its
    /// SUBACK gate must have acknowledged, and the notice (oldest first).
    confirms: std::collections::VecDeque<(usize, u64, Confirm)>,
    /// Those whose subscriptions are acknowledged, for [`take_confirmed`](Self::take_confirmed).
    confirmed: Vec<Confirm>,
}

/// A notice for the node a registration was taken from, due once the broker acknowledged
/// the subscription of the registration's command filter here (`ClusterRequest::
/// Subscribed`): that node then gives up the subscription it kept for the handover.
#[derive(Debug)]
pub(crate) struct Confirm {
    pub node: Box<str>,
    pub name: Box<str>,
    pub location: u64,
}

/// Confirmations waiting at most (the oldest go first: their node gives its kept
/// subscription up at its deadline anyway).
const MAX_CONFIRMS: usize = 65_536;

/// The shared-subscription group of every node of a cluster.
pub(super) const SHARE_GROUP: &str = "lwm2m-gateway";

/// A subscription change for a shared subscription of `group` (`$share/{group}/{filter}`);
/// a publish as it is. The broker delivers the commands with their plain topic.
pub(super) fn shared(msg: Outbound, group: Option<&str>) -> Outbound {
    let Some(group) = group else {
        return msg;
    };
    let share = |filter: String| format!("$share/{group}/{filter}");
    match msg {
        Outbound::Subscribe { lane, filter, qos } => Outbound::Subscribe {
            lane,
            filter: share(filter),
            qos,
        },
        Outbound::Unsubscribe { lane, filter } => Outbound::Unsubscribe {
            lane,
            filter: share(filter),
        },
        publish => publish,
    }
}

impl MqttSide {
    /// `client` made with a `now` of `clock`.
    pub(super) fn new(client: MqttClient, registry: mio::Registry, clock: Clock) -> Self {
        MqttSide {
            client,
            registry,
            clock,
            inbox: Inbox::default(),
            armed_at: u64::MAX,
            stop_at: None,
            closed: false,
            congested: false,
            events: None,
            share: None,
            confirms: Default::default(),
            confirmed: Vec::new(),
        }
    }

    /// `confirm` is due once the broker acknowledged every subscribe queued so far on
    /// the connection holding `filter` (the adoption's subscribe among them; one of a
    /// filter held already is acknowledged at once). A filter no connection of this
    /// shard holds is another shard's, subscribed there before: due at once.
    pub(super) fn confirm_when_subscribed(&mut self, filter: &str, confirm: Confirm) {
        let filter = match self.share {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_string(),
        };
        let Some((conn, barrier)) = self.client.subscription_barrier(&filter) else {
            self.confirmed.push(confirm);
            return;
        };
        if self.confirms.len() >= MAX_CONFIRMS {
            self.confirms.pop_front();
        }
        self.confirms.push_back((conn, barrier, confirm));
    }

    /// The confirmations whose subscriptions the broker acknowledged since the last call.
    pub(super) fn take_confirmed(&mut self) -> std::vec::Drain<'_, Confirm> {
        let client = &self.client;
        let mut waiting = std::collections::VecDeque::with_capacity(self.confirms.len());
        for (conn, barrier, c) in self.confirms.drain(..) {
            if client.subscribed_through(conn, barrier) {
                self.confirmed.push(c);
            } else {
                waiting.push_back((conn, barrier, c));
            }
        }
        self.confirms = waiting;
        self.confirmed.drain(..)
    }

    /// Subscribes command filters as shared subscriptions of `group`.
    pub(super) fn with_share(mut self, group: Option<&'static str>) -> Self {
        self.share = group;
        self
    }

    /// Hands every publish to `feed` as well (one atomic load while nobody listens).
    pub(super) fn with_events(mut self, feed: Arc<EventFeed>) -> Self {
        self.events = Some(feed);
        self
    }

    pub(super) fn owns(&self, token: mio::Token) -> bool {
        self.client.owns(token)
    }

    /// A readiness event of one of the connections; true when it has more to read.
    /// Commands it delivered wait in [`take_commands`](Self::take_commands).
    pub(super) fn on_event(
        &mut self,
        token: mio::Token,
        readable: bool,
        writable: bool,
        now_ms: u64,
    ) -> bool {
        let now = self.clock.instant_at(now_ms);
        self.client.on_event(
            &self.registry,
            &mut self.inbox,
            token,
            readable,
            writable,
            now,
        )
    }

    /// The commands delivered since the last call.
    pub(super) fn take_commands(&mut self) -> std::vec::Drain<'_, Delivered> {
        self.inbox.0.drain(..)
    }

    /// Queues one of the core's MQTT messages (the core sends only the subscription
    /// changes this shard is home to). A subscribe goes to the connection of its lane, the
    /// registration's, where its register message waits for the SUBACK; an unsubscribe to
    /// the connection that holds the filter.
    pub(super) fn accept(&mut self, msg: MqttOut) {
        if let (Some(feed), Outbound::Publish { topic, payload, .. }) = (&self.events, &msg) {
            feed.publish(topic, payload);
        }
        self.client.accept(shared(msg, self.share));
    }

    /// End of a loop turn: connection timers, then everything queued out (one write per
    /// connection). While stopping, disconnects once nothing is held or the deadline passed.
    pub(super) fn turn(&mut self, now_ms: u64, timers: &mut TimerWheel<ShardTimer>) {
        if self.closed {
            return;
        }
        let now = self.clock.instant_at(now_ms);
        self.client.turn(&self.registry, &mut self.inbox, now);
        if let Some(stop_at) = self.stop_at {
            let idle = self.client.is_idle();
            if idle || now_ms >= stop_at {
                if !idle {
                    tracing::warn!(
                        held = self.client.held(),
                        "MQTT shutdown timed out with messages held"
                    );
                }
                self.client.close(&self.registry, &mut self.inbox, now);
                self.closed = true;
                return;
            }
        }
        let next = self
            .client
            .next_deadline()
            .map(|d| self.clock.ms_at(d))
            .into_iter()
            .chain(self.stop_at)
            .min();
        if let Some(at) = next {
            let at = at.max(now_ms + 1);
            if at < self.armed_at {
                self.armed_at = at;
                timers.insert(at, ShardTimer::Mqtt);
            }
        }
    }

    /// Whether the connections became congested (`Some(true)`: they hold half their
    /// capacity) or stopped being so (`Some(false)`: below a quarter) since the last call.
    /// The core sheds new events while congested, so the half above the high watermark
    /// is room for what it acknowledged before and what it does not shed: nothing
    /// acknowledged meets the overflow policy.
    pub(super) fn congestion(&mut self) -> Option<bool> {
        let (held, cap) = (self.client.held(), self.client.capacity());
        let now = if self.congested {
            held >= cap / 4
        } else {
            held >= cap / 2
        };
        if now == self.congested {
            return None;
        }
        self.congested = now;
        if now {
            tracing::warn!(
                held,
                cap,
                "MQTT congested: shedding new registrations, updates, sends and notifications"
            );
        } else {
            tracing::info!(held, cap, "MQTT congestion cleared");
        }
        Some(now)
    }

    /// How many more publishes the connections take before their high watermark (half
    /// their capacity): what the core may acknowledge until the next end of turn.
    pub(super) fn room_before_shedding(&self) -> u32 {
        let (held, cap) = (self.client.held(), self.client.capacity());
        (cap / 2).saturating_sub(held).min(u32::MAX as usize) as u32
    }

    /// The `ShardTimer::Mqtt` fired (the turn's end runs the connections' timers).
    pub(super) fn on_timer(&mut self) {
        self.armed_at = u64::MAX;
    }

    /// Shutdown: from now on publish what is held, for at most `grace_ms`.
    pub(super) fn begin_stop(&mut self, now_ms: u64, grace_ms: u64) {
        if self.stop_at.is_none() {
            self.stop_at = Some(now_ms + grace_ms);
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop_at.is_some()
    }

    /// Disconnected after a shutdown.
    pub(super) fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{BrokerAddrs, MqttOptions, MqttStats, Protocol, ServerAddr};
    use std::sync::Arc;
    use std::time::Duration;

    /// The connections' deadlines come from the loop turn's `now`, never from a clock of
    /// their own: a turn an hour after the shard clock's start (the real time is about
    /// its start) arms the connect timeout (10 s) an hour and 10 s after it.
    #[test]
    fn the_connections_run_on_the_turns_now() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let opts = MqttOptions {
            server: server.clone(),
            client_id: "clock-test".into(),
            username: String::new(),
            password: String::new(),
            keepalive: Duration::from_secs(30),
            connections: 1,
            max_inflight: 16,
            buffer_messages: 16,
            max_packet_size: 1 << 20,
            protocol: Protocol::V311,
        };
        let clock = Clock::new();
        let t = 3_600_000;
        let poll = mio::Poll::new().unwrap();
        let client = MqttClient::new(
            opts,
            0,
            1,
            MQTT_TOKEN_BASE,
            16,
            Arc::new(MqttStats::default()),
            None,
            BrokerAddrs::new(&server),
            1,
            clock.instant_at(t),
        );
        let mut side = MqttSide::new(client, poll.registry().try_clone().unwrap(), clock);
        let mut timers = TimerWheel::new(t);
        side.turn(t, &mut timers);
        let mut fired = Vec::new();
        timers.advance(t + 9_999, &mut fired);
        assert!(fired.is_empty(), "nothing due before the connect timeout");
        timers.advance(t + 10_000, &mut fired);
        assert_eq!(fired, [ShardTimer::Mqtt]);
    }
}
