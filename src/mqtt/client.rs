//! A set of broker connections driven by whoever owns a mio `Poll`: a shard thread (the
//! gateway: each shard publishes on its own connections) or a thread of the client's tests
//! (`tests/common/mqtt_thread.rs`).
//!
//! The owner registers nothing itself: connections register their sockets with the
//! `Registry` they are given, under tokens `token_base..token_base + count`. The owner
//! hands every event of those tokens to [`MqttClient::on_event`], calls
//! [`MqttClient::turn`] once per loop turn (timers, then queued work into the write
//! buffers and out), and wakes up by [`MqttClient::next_deadline`] at the latest.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mio::{Registry, Token};
use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use tracing::debug;

use super::buffer::{make_room, OutMsg, Overflow};
use super::codec::publish_size;
use super::connection::{Connection, Ctx};
use super::holders::{Holders, Lookup};
use super::resolve::{AddrCache, BrokerAddrs};
use super::stats::MqttStats;
use super::{Inbound, MqttOptions, Outbound, ServerAddr};

pub struct MqttClient {
    opts: MqttOptions,
    conns: Vec<Connection>,
    token_base: usize,
    stats: Arc<MqttStats>,
    tls: Option<Arc<ClientConfig>>,
    /// Where the broker is: connections take its addresses from here.
    addrs: AddrCache,
    /// Publishes held (pending + in flight) at most, over this client's connections.
    cap: usize,
    seq: u64,
    scratch: Vec<u8>,
    /// Publishes `Inbound::on_publish` answered with, queued after each read.
    replies: Vec<Outbound>,
    /// What this client last added to the shared `pending` gauge.
    held_reported: u64,
    /// Which connection holds each filter (`holder`).
    holders: Holders,
}

/// The TLS settings for `opts.server` (None for plain TCP); reads the CA file once.
pub fn tls_for(opts: &MqttOptions) -> std::io::Result<Option<Arc<ClientConfig>>> {
    match &opts.server {
        ServerAddr::Tls { ca_file, .. } => {
            Ok(Some(super::transport::tls_config(ca_file.as_deref())?))
        }
        ServerAddr::Tcp { .. } => Ok(None),
    }
}

impl MqttClient {
    /// `count` connections named `{client_id}-{first_index + i}`, polled under tokens
    /// `token_base + i`, holding at most `cap` publishes together, connecting to the
    /// addresses `addrs` holds for `opts.server`. They connect on the first
    /// [`turn`](Self::turn).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: MqttOptions,
        first_index: usize,
        count: usize,
        token_base: usize,
        cap: usize,
        stats: Arc<MqttStats>,
        tls: Option<Arc<ClientConfig>>,
        addrs: Arc<BrokerAddrs>,
        seed: u64,
        now: Instant,
    ) -> Self {
        let conns = (0..count.max(1))
            .map(|i| {
                let s = seed ^ ((first_index + i) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                Connection::new(first_index + i, Token(token_base + i), &opts, now, s)
            })
            .collect();
        MqttClient {
            opts,
            conns,
            token_base,
            stats,
            tls,
            addrs: AddrCache::new(addrs),
            cap: cap.max(1),
            seq: 0,
            scratch: vec![0u8; 64 * 1024],
            replies: Vec::new(),
            held_reported: 0,
            holders: Holders::default(),
        }
    }

    /// Whether `token` is one of this client's connections.
    pub fn owns(&self, token: Token) -> bool {
        (self.token_base..self.token_base + self.conns.len()).contains(&token.0)
    }

    /// Queues one message (size checks and the overflow policy applied to publishes) on
    /// connection `lane % count`: the messages of one lane keep their order, and a publish
    /// waits for the SUBACKs of the filters subscribed before it on its connection (so a
    /// registration's subscription, on its lane, is in place before its register message
    /// goes out). A filter already held stays on its connection; an unsubscribe goes to
    /// the connection that holds the filter, whatever its lane.
    pub fn accept(&mut self, msg: Outbound) {
        let n = self.conns.len();
        match msg {
            Outbound::Publish {
                lane,
                topic,
                payload,
                qos,
            } => {
                if let Err(why) = self.check_publish(&topic, payload.len(), qos) {
                    debug!(%topic, why, "MQTT publish rejected");
                    MqttStats::inc(&self.stats.send_errors);
                    return;
                }
                let qos = to_qos(qos);
                if self.held() >= self.cap {
                    MqttStats::inc(&self.stats.dropped_overflow);
                    let r = make_room(
                        self.conns.iter_mut().map(|c| &mut c.pending),
                        qos == QoS::AtMostOnce,
                    );
                    if r == Overflow::DropIncoming {
                        return;
                    }
                }
                self.seq += 1;
                let conn = &mut self.conns[lane as usize % n];
                conn.pending.push(OutMsg {
                    seq: self.seq,
                    topic,
                    payload: Bytes::from(payload),
                    qos,
                    after_sub: conn.gate.barrier(),
                });
            }
            Outbound::Subscribe { lane, filter, qos } => {
                if filter.is_empty() || filter.len() > u16::MAX as usize || qos > 2 {
                    MqttStats::inc(&self.stats.send_errors);
                    return;
                }
                // A filter lives on one connection: a second subscribe of it (another
                // registration with the same command topic) stays where the first went.
                let hash = self.holders.hash(&filter);
                let i = match self.holder_hashed(&filter, hash) {
                    Some(i) => i,
                    None => {
                        let i = lane as usize % n;
                        self.holders.added(hash, i);
                        i
                    }
                };
                let conn = &mut self.conns[i];
                conn.subs.subscribe(filter, qos);
                conn.gate.request();
            }
            Outbound::Unsubscribe { filter, .. } => {
                let hash = self.holders.hash(&filter);
                if let Some(i) = self.holder_hashed(&filter, hash) {
                    self.conns[i].subs.unsubscribe(filter);
                    self.holders.removed(hash);
                }
            }
        }
    }

    /// The connection holding `filter` (subscribed, or about to be) and the point its
    /// SUBACK gate must reach for every subscribe queued on it so far to be acknowledged
    /// ([`subscribed_through`](Self::subscribed_through)); None when no connection holds it.
    pub fn subscription_barrier(&self, filter: &str) -> Option<(usize, u64)> {
        let i = self.holder_hashed(filter, self.holders.hash(filter))?;
        Some((i, self.conns[i].gate.barrier()))
    }

    /// Whether connection `conn`'s subscribes up to `barrier` are acknowledged by the
    /// broker (after a reconnect: the whole set subscribed again). An unknown connection:
    /// false.
    pub fn subscribed_through(&self, conn: usize, barrier: u64) -> bool {
        self.conns.get(conn).is_some_and(|c| c.gate.open(barrier))
    }

    /// The connection that holds `filter` (subscribed, or about to be), if any.
    #[cfg(test)]
    fn holder(&self, filter: &str) -> Option<usize> {
        self.holder_hashed(filter, self.holders.hash(filter))
    }

    /// `holder`, given the filter's hash (`Holders::hash`).
    fn holder_hashed(&self, filter: &str, hash: u64) -> Option<usize> {
        match self.holders.lookup(hash) {
            Lookup::Nowhere => None,
            Lookup::Candidate(i) if self.conns[i].subs.holds(filter) => Some(i),
            Lookup::Candidate(_) => self.conns.iter().position(|c| c.subs.holds(filter)),
        }
    }

    /// A readiness event for one of this client's tokens. True when a connection's read
    /// budget ran out: call [`read_pending`](Self::read_pending) without waiting for an event.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        inbound: &mut dyn Inbound,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) -> bool {
        let Some(i) = token.0.checked_sub(self.token_base) else {
            return false;
        };
        let mut more = false;
        self.each(registry, inbound, now, Some(i), |c, ctx| {
            c.on_event(ctx, readable, writable);
            more = c.read_more;
        });
        self.accept_replies();
        more
    }

    /// Reads again every connection whose read budget ran out, but those in `skip` (read
    /// this turn already). True if one still has more.
    pub fn read_pending(
        &mut self,
        registry: &Registry,
        inbound: &mut dyn Inbound,
        now: Instant,
        skip: &[Token],
    ) -> bool {
        let mut more = false;
        for i in 0..self.conns.len() {
            let token = Token(self.token_base + i);
            if self.conns[i].read_more && !skip.contains(&token) {
                more |= self.on_event(registry, inbound, token, true, false, now);
            }
        }
        more
    }

    /// One loop turn: reconnects, connect and keepalive timers, then filter changes and
    /// queued publishes into the write buffers and out.
    pub fn turn(&mut self, registry: &Registry, inbound: &mut dyn Inbound, now: Instant) {
        self.each(registry, inbound, now, None, |c, ctx| {
            c.poll_timers(ctx);
            c.pump(ctx);
        });
        self.accept_replies();
        self.report_held();
    }

    /// Sends DISCONNECT on every connection that is up and closes them all.
    pub fn close(&mut self, registry: &Registry, inbound: &mut dyn Inbound, now: Instant) {
        self.each(registry, inbound, now, None, |c, ctx| c.close(ctx));
        self.report_held();
    }

    /// The earliest reconnect, connect timeout or keepalive of the connections.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().filter_map(|c| c.next_deadline()).min()
    }

    /// A connection has data left to read (its budget ran out).
    pub fn read_more(&self) -> bool {
        self.conns.iter().any(|c| c.read_more)
    }

    /// Nothing left to send or to wait for on any connection.
    pub fn is_idle(&self) -> bool {
        self.conns.iter().all(|c| c.is_idle())
    }

    /// The most publishes held at once (`mqtt.buffer_messages`); beyond it the overflow
    /// policy drops.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Publishes held: pending and in flight.
    pub fn held(&self) -> usize {
        self.conns.iter().map(|c| c.held()).sum()
    }

    /// Runs `f` on connection `only` (or on every one) with the context a connection
    /// needs for one call.
    fn each(
        &mut self,
        registry: &Registry,
        inbound: &mut dyn Inbound,
        now: Instant,
        only: Option<usize>,
        mut f: impl FnMut(&mut Connection, &mut Ctx),
    ) {
        let Self {
            opts,
            conns,
            stats,
            tls,
            addrs,
            scratch,
            replies,
            ..
        } = self;
        let mut ctx = Ctx {
            opts,
            stats,
            inbound,
            replies,
            registry,
            tls: tls.as_ref(),
            addrs,
            now,
            scratch,
        };
        match only {
            Some(i) => {
                if let Some(c) = conns.get_mut(i) {
                    f(c, &mut ctx);
                }
            }
            None => conns.iter_mut().for_each(|c| f(c, &mut ctx)),
        }
    }

    fn accept_replies(&mut self) {
        if self.replies.is_empty() {
            return;
        }
        for msg in std::mem::take(&mut self.replies) {
            self.accept(msg);
        }
    }

    /// Keeps the shared `pending` gauge equal to the sum over every client.
    fn report_held(&mut self) {
        let held = self.held() as u64;
        if held > self.held_reported {
            MqttStats::add(&self.stats.pending, held - self.held_reported);
        } else if held < self.held_reported {
            MqttStats::sub(&self.stats.pending, self.held_reported - held);
        }
        self.held_reported = held;
    }

    fn check_publish(&self, topic: &str, payload_len: usize, qos: u8) -> Result<(), &'static str> {
        if qos > 2 {
            return Err("QoS above 2");
        }
        if topic.is_empty() || topic.len() > u16::MAX as usize {
            return Err("topic empty or too long");
        }
        if topic.contains(['+', '#', '\0']) {
            return Err("wildcard or NUL in topic");
        }
        let size = publish_size(self.opts.protocol, topic.len(), payload_len, to_qos(qos));
        if size > self.opts.max_packet_size {
            return Err("larger than max_packet_size");
        }
        Ok(())
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Delivery, Protocol};
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Nothing;
    impl Inbound for Nothing {
        fn on_publish(&mut self, _: &Delivery<'_>, _: &mut Vec<Outbound>) {}
    }

    fn options(server: ServerAddr) -> MqttOptions {
        MqttOptions {
            server,
            client_id: "resolve-test".into(),
            username: String::new(),
            password: String::new(),
            keepalive: Duration::from_secs(30),
            connections: 1,
            max_inflight: 16,
            buffer_messages: 16,
            max_packet_size: 1 << 20,
            protocol: Protocol::V311,
        }
    }

    fn offline_client(connections: usize) -> MqttClient {
        let server = ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 9,
        };
        MqttClient::new(
            options(server.clone()),
            0,
            connections,
            0,
            1000,
            Arc::new(MqttStats::default()),
            None,
            BrokerAddrs::new(&server),
            1,
            Instant::now(),
        )
    }

    fn publish(lane: u32) -> Outbound {
        Outbound::Publish {
            lane,
            topic: format!("lwm2m/{lane}/up/resp"),
            payload: b"{}".to_vec(),
            qos: 0,
        }
    }

    /// Per-endpoint filters follow their registration's lane, so they spread over the
    /// connections as the endpoints' messages do, and the register message queued after a
    /// filter on its connection waits for that filter's SUBACK. A filter lives on one
    /// connection: subscribed again with another lane it stays, and its unsubscribe finds
    /// it whatever lane it comes with.
    #[test]
    fn filters_spread_with_their_lanes_and_stay_where_they_went() {
        let mut c = offline_client(8);
        let mut per_conn = [0usize; 8];
        for i in 0..8000 {
            let name = format!("dev-{i}");
            let lane = crate::lwm2m::publish::name_hash(&name);
            let filter = format!("lwm2m/{name}/dn/#");
            c.accept(Outbound::Subscribe {
                lane,
                filter: filter.clone(),
                qos: 0,
            });
            let at = c.holder(&filter).expect("held");
            assert_eq!(at, lane as usize % 8);
            per_conn[at] += 1;
        }
        for n in per_conn {
            assert!((800..=1200).contains(&n), "uneven spread: {per_conn:?}");
        }

        let filter = "lwm2m/dev-0/dn/#".to_string();
        let home = c.holder(&filter).unwrap();
        let other = (home as u32 + 1) % 8;
        c.accept(Outbound::Subscribe {
            lane: other,
            filter: filter.clone(),
            qos: 0,
        });
        assert_eq!(
            c.holder(&filter),
            Some(home),
            "a filter lives on one connection"
        );
        c.accept(Outbound::Unsubscribe {
            lane: other,
            filter: filter.clone(),
        });
        assert_eq!(c.holder(&filter), None, "unsubscribed from where it was");

        // The publish behind the subscriptions waits for their SUBACKs; the publish of a
        // connection that subscribed nothing does not wait.
        let mut fresh = offline_client(2);
        fresh.accept(Outbound::Subscribe {
            lane: 0,
            filter: "lwm2m/a/dn/#".into(),
            qos: 0,
        });
        fresh.accept(publish(0));
        fresh.accept(publish(1));
        let held = fresh.conns[0].pending.front().unwrap().after_sub;
        assert!(!fresh.conns[0].gate.open(held), "register message waits");
        let free = fresh.conns[1].pending.front().unwrap().after_sub;
        assert!(fresh.conns[1].gate.open(free));
    }

    /// A handover's confirmation waits for the SUBACK of the filter it follows, on the
    /// connection holding the filter (wherever its lane would put it), and not for
    /// another connection's; a filter nobody holds has no barrier.
    #[test]
    fn a_subscription_barrier_is_passed_once_its_subacks_arrived() {
        let mut c = offline_client(2);
        assert_eq!(c.subscription_barrier("lwm2m/a/dn/#"), None);
        c.accept(Outbound::Subscribe {
            lane: 1,
            filter: "lwm2m/a/dn/#".into(),
            qos: 1,
        });
        c.accept(Outbound::Subscribe {
            lane: 0,
            filter: "lwm2m/b/dn/#".into(),
            qos: 1,
        });
        let (conn, barrier) = c.subscription_barrier("lwm2m/a/dn/#").expect("held");
        assert_eq!(conn, 1);
        assert!(!c.subscribed_through(conn, barrier), "not sent yet");
        c.conns[1].gate.sent([7]);
        assert!(!c.subscribed_through(conn, barrier), "sent, no SUBACK");
        c.conns[1].gate.acked(7);
        assert!(c.subscribed_through(conn, barrier));
        assert!(!c.subscribed_through(9, 0), "no such connection");
        // A filter held already: its barrier is what its connection has acknowledged.
        c.accept(Outbound::Subscribe {
            lane: 0,
            filter: "lwm2m/a/dn/#".into(),
            qos: 1,
        });
        let (again, b2) = c.subscription_barrier("lwm2m/a/dn/#").expect("held");
        assert_eq!(again, 1, "a filter stays on its connection");
        c.conns[1].gate.sent([]);
        assert!(
            c.subscribed_through(again, b2),
            "coalesced: nothing to wait for"
        );
    }

    /// The broker's name does not resolve and the connection is given no address at
    /// first: it fails without looking the name up, its failure gets the resolver to look
    /// up again (on its own thread), and the next attempt connects to the address found
    /// and sends CONNECT.
    #[test]
    fn connections_take_the_addresses_they_are_given_and_never_look_names_up() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let at = listener.local_addr().unwrap();
        let server = ServerAddr::Tcp {
            host: "no-such-host.invalid".into(),
            port: at.port(),
        };
        let caller = std::thread::current().id();
        let lookups = Arc::new(AtomicUsize::new(0));
        let on_caller = Arc::new(AtomicUsize::new(0));
        let (l, c) = (lookups.clone(), on_caller.clone());
        let lookup = move |_: &str, _: u16| -> std::io::Result<Vec<SocketAddr>> {
            l.fetch_add(1, Ordering::SeqCst);
            if std::thread::current().id() == caller {
                c.fetch_add(1, Ordering::SeqCst);
            }
            Ok(vec![at])
        };
        let addrs = BrokerAddrs::with_lookup(&server, Arc::new(lookup));
        addrs.spawn_resolver().unwrap();

        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(16);
        let stats = Arc::new(MqttStats::default());
        let start = Instant::now();
        let mut client = MqttClient::new(
            options(server),
            0,
            1,
            0,
            16,
            stats.clone(),
            None,
            addrs,
            1,
            start,
        );
        let mut inbox = Nothing;
        client.turn(poll.registry(), &mut inbox, start);
        assert_eq!(MqttStats::get(&stats.connected), 0, "no address yet");

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut broker = None;
        let mut first = [0u8; 1];
        loop {
            assert!(Instant::now() < deadline, "no CONNECT reached the address");
            poll.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            let now = Instant::now();
            for ev in events.iter() {
                client.on_event(poll.registry(), &mut inbox, ev.token(), true, true, now);
            }
            client.turn(poll.registry(), &mut inbox, now);
            if broker.is_none() {
                broker = listener.accept().ok().map(|(s, _)| s);
            }
            if let Some(s) = broker.as_mut() {
                s.set_nonblocking(true).unwrap();
                if s.read(&mut first).is_ok_and(|n| n == 1) {
                    break;
                }
            }
        }
        assert_eq!(first[0], 0x10, "CONNECT");
        assert!(
            lookups.load(Ordering::SeqCst) >= 1,
            "the resolver looked up"
        );
        assert_eq!(
            on_caller.load(Ordering::SeqCst),
            0,
            "no lookup on the thread driving the connections"
        );
        assert!(MqttStats::get(&stats.reconnects) >= 1);
    }
}
