//! One broker connection: its state machine, buffers, in-flight window and filter set.
//!
//! Protocol flow (MQTT 3.1.1 clean session, or MQTT 5 clean start with session expiry 0; the
//! version-specific bytes are in `codec.rs`):
//! ```text
//! Waiting --(backoff elapsed)--> Connecting --(TCP up)--> send CONNECT --> AwaitConnack
//! AwaitConnack --(CONNACK success)--> Up: SUBSCRIBE every held filter (batched),
//!                                   re-send unacked PUBLISH (DUP) / PUBREL, then pending ones
//! AwaitConnack --(CONNACK refused, or MQTT 5 reason >= 0x80)--> Waiting
//! Up: PUBLISH qos0 ............................ written, forgotten
//!     PUBLISH qos1 -> PUBACK .................. acked (MQTT 5 reason >= 0x80: refused, counted)
//!     PUBLISH qos2 -> PUBREC -> PUBREL -> PUBCOMP acked (PUBREC >= 0x80 ends it, counted)
//!     PINGREQ every keepalive; nothing received for 1.5 x keepalive -> dead
//!     broker PUBLISH qos1 -> PUBACK; qos2 -> PUBREC, PUBREL -> PUBCOMP (delivered once)
//!     broker DISCONNECT (MQTT 5) -> Waiting
//! any error, timeout, EOF or malformed packet --> Waiting (backoff 100 ms doubling to 5 s, jitter)
//! ```
//! MQTT 5 limits from the CONNACK are respected: at most Receive Maximum QoS>=1 publishes in
//! flight (and at most `max_inflight`), no packet above the broker's Maximum Packet Size (a
//! publish larger than it is dropped and counted), QoS capped at its Maximum QoS, and its
//! Server Keep Alive replaces ours.
//!
//! Writes go to a per-connection buffer flushed when the socket is writable: many packets per
//! syscall, no round trip waited per message.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use tracing::{debug, info, warn};

use super::buffer::{OutMsg, PendingQueue};
use super::codec::{publish_size, DecodeError, In, Limits, Out, Protocol};
use super::resolve::AddrCache;
use super::stats::MqttStats;
use super::suback_gate::SubackGate;
use super::subscriptions::Subscriptions;
use super::transport::{ReadStatus, Transport};
use super::{Delivery, Inbound, MqttOptions, Outbound, ServerAddr};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending publishes move to the write buffer while it holds less than this.
const WBUF_HIGH: usize = 256 * 1024;
/// Bytes read per connection per loop turn before others get their turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Fixed header (1) + longest remaining length (4).
const MAX_FIXED_HEADER: usize = 5;
/// Filters per SUBSCRIBE packet at most: a turn's subscriptions go out in several packets,
/// whose SUBACKs release the publishes behind them a packet at a time.
const FILTERS_PER_SUBSCRIBE: usize = 256;

/// What the connection needs from its thread for one call.
pub(crate) struct Ctx<'a> {
    pub opts: &'a MqttOptions,
    pub stats: &'a MqttStats,
    pub inbound: &'a mut dyn Inbound,
    /// Publishes `inbound` asks to send in answer (queued by the thread after the read).
    pub replies: &'a mut Vec<Outbound>,
    pub registry: &'a Registry,
    pub tls: Option<&'a Arc<ClientConfig>>,
    /// The broker's addresses: connections never look its name up themselves.
    pub addrs: &'a mut AddrCache,
    pub now: Instant,
    pub scratch: &'a mut [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting { until: Instant },
    Connecting { deadline: Instant },
    AwaitConnack { deadline: Instant },
    Up,
    Closed,
}

/// A QoS>=1 publish awaiting its ack, kept as what encodes it in either protocol version.
struct Inflight {
    topic: String,
    payload: Bytes,
    qos: QoS,
    pkid: u16,
    /// PUBREC received, PUBREL sent (QoS 2).
    released: bool,
}

/// Packet identifiers in use (publishes in flight, SUBSCRIBE/UNSUBSCRIBE awaiting their ack).
struct PacketIds {
    used: Vec<bool>,
    next: u16,
    count: usize,
}

impl PacketIds {
    fn new() -> Self {
        PacketIds {
            used: vec![false; 65536],
            next: 0,
            count: 0,
        }
    }

    fn alloc(&mut self) -> Option<u16> {
        if self.count >= 65535 {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            let slot = &mut self.used[self.next as usize];
            if !*slot {
                *slot = true;
                self.count += 1;
                return Some(self.next);
            }
        }
    }

    fn free(&mut self, id: u16) {
        let slot = &mut self.used[id as usize];
        if *slot {
            *slot = false;
            self.count -= 1;
        }
    }
}

/// Why a connection went down.
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Protocol(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "I/O error: {e}"),
            Failure::Protocol(s) => write!(f, "protocol error: {s}"),
            Failure::Other(s) => f.write_str(s),
        }
    }
}

pub(crate) struct Connection {
    index: usize,
    token: Token,
    client_id: String,
    state: State,
    transport: Option<Transport>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub pending: PendingQueue,
    inflight: VecDeque<Inflight>,
    /// In-flight entries (at the back) not yet re-sent on this connection after a reconnect.
    unsent: usize,
    pub subs: Subscriptions,
    /// Publishes wait here for the SUBACKs of the subscriptions queued before them.
    pub gate: SubackGate,
    /// SUBSCRIBE/UNSUBSCRIBE packet ids awaiting their ack.
    sub_ids: HashSet<u16>,
    /// Incoming QoS 2 packet ids delivered, awaiting PUBREL.
    inbound_qos2: HashSet<u16>,
    ids: PacketIds,
    protocol: Protocol,
    max_inflight: usize,
    /// The broker's limits from its CONNACK (MQTT 5).
    limits: Limits,
    keepalive: Duration,
    backoff: Duration,
    attempts: u64,
    /// Failures since the connection was last up (logs the first at warn, the rest at debug).
    failures: u64,
    last_rx: Instant,
    last_ping: Instant,
    /// The read budget ran out: read again without waiting for an event.
    pub read_more: bool,
    rng: u64,
}

impl Connection {
    pub(super) fn new(
        index: usize,
        token: Token,
        opts: &MqttOptions,
        now: Instant,
        seed: u64,
    ) -> Self {
        Connection {
            index,
            token,
            client_id: format!("{}-{}", opts.client_id, index),
            state: State::Waiting { until: now },
            transport: None,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            pending: PendingQueue::default(),
            inflight: VecDeque::new(),
            unsent: 0,
            subs: Subscriptions::default(),
            gate: SubackGate::default(),
            sub_ids: HashSet::new(),
            inbound_qos2: HashSet::new(),
            ids: PacketIds::new(),
            protocol: opts.protocol,
            max_inflight: (opts.max_inflight as usize).clamp(1, 65000),
            limits: Limits::default(),
            keepalive: opts.keepalive,
            backoff: BACKOFF_MIN,
            attempts: 0,
            failures: 0,
            last_rx: now,
            last_ping: now,
            read_more: false,
            rng: seed | 1,
        }
    }

    /// Publishes held: pending and in flight.
    pub(super) fn held(&self) -> usize {
        self.pending.len() + self.inflight.len()
    }

    /// Nothing left to send or to wait for.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.inflight.is_empty()
            && self.wbuf.is_empty()
            && !self.transport.as_ref().is_some_and(|t| t.has_unsent())
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let keepalive = self.keepalive;
        match self.state {
            State::Waiting { until } => Some(until),
            State::Connecting { deadline } | State::AwaitConnack { deadline } => Some(deadline),
            State::Up if !keepalive.is_zero() => {
                Some((self.last_ping + keepalive).min(self.last_rx + keepalive * 3 / 2))
            }
            State::Up | State::Closed => None,
        }
    }

    /// Timers: reconnect, connect timeout, keepalive.
    pub(super) fn poll_timers(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let keepalive = self.keepalive;
        match self.state {
            State::Waiting { until } if now >= until => self.start_connect(ctx),
            State::Connecting { deadline } | State::AwaitConnack { deadline }
                if now >= deadline =>
            {
                self.fail(ctx, Failure::Other("connect timed out".into()))
            }
            State::Up if !keepalive.is_zero() => {
                if now >= self.last_rx + keepalive * 3 / 2 {
                    self.fail(ctx, Failure::Other("keepalive timeout".into()));
                } else if now >= self.last_ping + keepalive {
                    self.last_ping = now;
                    self.write_packet(&Out::PingReq);
                }
            }
            _ => {}
        }
    }

    /// A readiness event for this connection's socket.
    pub(super) fn on_event(&mut self, ctx: &mut Ctx, readable: bool, writable: bool) {
        if let State::Connecting { .. } = self.state {
            match self.check_connected() {
                Ok(true) => self.send_connect(ctx),
                Ok(false) => return,
                Err(e) => return self.fail(ctx, Failure::Io(e)),
            }
        }
        if readable {
            self.read(ctx);
        }
        if writable {
            self.flush(ctx);
        }
    }

    /// Reads what the socket has and handles every complete packet.
    pub(super) fn read(&mut self, ctx: &mut Ctx) {
        self.read_more = false;
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if matches!(self.state, State::Connecting { .. } | State::Closed) {
            return;
        }
        let status = match t.read_into(&mut self.rbuf, ctx.scratch, READ_BUDGET) {
            Ok(s) => s,
            Err(e) => return self.fail(ctx, Failure::Io(e)),
        };
        loop {
            match self
                .protocol
                .decode(&mut self.rbuf, ctx.opts.max_packet_size)
            {
                Ok(packet) => {
                    self.last_rx = ctx.now;
                    if let Err(f) = self.handle(ctx, packet) {
                        return self.fail(ctx, f);
                    }
                    if self.transport.is_none() {
                        return; // refused CONNACK, or the broker disconnected
                    }
                }
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::Malformed(e)) => return self.fail(ctx, Failure::Protocol(e)),
            }
        }
        match status {
            ReadStatus::Eof => self.fail(ctx, Failure::Other("closed by the broker".into())),
            ReadStatus::More => self.read_more = true,
            ReadStatus::Drained => {}
        }
        // TLS may have handshake or alert records to send; acks were written too.
        self.flush(ctx);
    }

    /// Moves filter changes and pending publishes into the write buffer and flushes it.
    pub(super) fn pump(&mut self, ctx: &mut Ctx) {
        if self.state != State::Up {
            return;
        }
        if self.subs.has_changes() {
            let changes = self.subs.take_changes();
            let pkids = self.write_subscribes(ctx, changes.subscribe);
            self.write_unsubscribes(ctx, changes.unsubscribe);
            self.gate.sent(pkids);
        } else {
            // Requests coalesced away, or a filter subscribed again as it was.
            self.gate.sent([]);
        }
        self.resend_inflight(ctx);
        let max_out = self.max_out_packet(ctx);
        while self.wbuf.len() < WBUF_HIGH && self.unsent == 0 {
            let Some(front) = self.pending.front() else {
                break;
            };
            if !self.gate.open(front.after_sub) {
                break; // behind a subscription not yet acknowledged
            }
            let qos = self.cap_qos(front.qos);
            if publish_size(self.protocol, front.topic.len(), front.payload.len(), qos) > max_out {
                let dropped = self.pending.pop_front();
                warn!(
                    conn = self.index,
                    topic = dropped.as_ref().map(|m| m.topic.as_str()),
                    "MQTT publish larger than the broker's maximum packet size: dropped"
                );
                MqttStats::inc(&ctx.stats.send_errors);
                continue;
            }
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                if self.inflight.len() >= self.window() {
                    break;
                }
                match self.ids.alloc() {
                    Some(id) => id,
                    None => break,
                }
            };
            let Some(OutMsg { topic, payload, .. }) = self.pending.pop_front() else {
                break;
            };
            MqttStats::inc(&ctx.stats.published[qos as usize]);
            self.write_packet(&Out::Publish {
                topic: &topic,
                payload: &payload,
                qos,
                pkid,
                dup: false,
            });
            if qos != QoS::AtMostOnce {
                self.inflight.push_back(Inflight {
                    topic,
                    payload,
                    qos,
                    pkid,
                    released: false,
                });
            }
        }
        self.flush(ctx);
    }

    /// QoS>=1 publishes in flight at once: `max_inflight`, and the broker's Receive Maximum.
    fn window(&self) -> usize {
        let receive_max = self.limits.receive_max.map_or(usize::MAX, usize::from);
        self.max_inflight.min(receive_max).max(1)
    }

    /// The largest packet we may send: ours, and the broker's Maximum Packet Size.
    fn max_out_packet(&self, ctx: &Ctx) -> usize {
        let broker = self
            .limits
            .max_packet_size
            .map_or(usize::MAX, |m| m as usize);
        ctx.opts.max_packet_size.min(broker)
    }

    /// MQTT 5 §3.2.2.3.4: never above the broker's Maximum QoS.
    fn cap_qos(&self, qos: QoS) -> QoS {
        match self.limits.max_qos {
            Some(0) => QoS::AtMostOnce,
            Some(1) if qos == QoS::ExactlyOnce => QoS::AtLeastOnce,
            _ => qos,
        }
    }

    /// After a reconnect: re-sends unacknowledged publishes (DUP) and PUBRELs, in order, as
    /// far as the window allows (the broker's Receive Maximum may be smaller than before).
    fn resend_inflight(&mut self, ctx: &mut Ctx) {
        let max_out = self.max_out_packet(ctx);
        while self.unsent > 0 && self.wbuf.len() < WBUF_HIGH {
            let i = self.inflight.len() - self.unsent;
            if i >= self.window() {
                return;
            }
            let e = &self.inflight[i];
            let size = publish_size(self.protocol, e.topic.len(), e.payload.len(), e.qos);
            if !e.released && size > max_out {
                let e = self.inflight.remove(i).expect("index");
                self.unsent -= 1;
                self.ids.free(e.pkid);
                warn!(conn = self.index, topic = %e.topic, "MQTT publish larger than the broker's maximum packet size: dropped");
                MqttStats::inc(&ctx.stats.send_errors);
                continue;
            }
            self.unsent -= 1;
            let e = &self.inflight[i];
            let packet = if e.released {
                Out::PubRel(e.pkid)
            } else {
                Out::Publish {
                    topic: &e.topic,
                    payload: &e.payload,
                    qos: e.qos,
                    pkid: e.pkid,
                    dup: true,
                }
            };
            if let Err(err) = self.protocol.encode(&packet, &mut self.wbuf) {
                warn!(conn = self.index, error = %err, "MQTT encoding failed");
            }
        }
    }

    /// Writes the buffered bytes until the socket would block.
    pub(super) fn flush(&mut self, ctx: &mut Ctx) {
        if matches!(self.state, State::Connecting { .. } | State::Waiting { .. }) {
            return;
        }
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if self.wbuf.is_empty() && !t.has_unsent() {
            return;
        }
        if let Err(e) = t.write_from(&mut self.wbuf) {
            self.fail(ctx, Failure::Io(e));
        }
    }

    /// Sends DISCONNECT (if up), closes the socket and stops reconnecting.
    pub(super) fn close(&mut self, ctx: &mut Ctx) {
        if self.state == State::Up {
            self.write_packet(&Out::Disconnect);
            if let Some(t) = self.transport.as_mut() {
                let _ = t.write_from(&mut self.wbuf);
                t.close();
                let _ = t.write_from(&mut self.wbuf);
                // Read what is left so closing does not reset the connection.
                let _ = t.read_into(&mut self.rbuf, ctx.scratch, READ_BUDGET);
            }
            MqttStats::dec(&ctx.stats.connected);
            info!(conn = self.index, client_id = %self.client_id, "MQTT disconnected");
        }
        self.drop_transport(ctx);
        self.state = State::Closed;
    }

    fn start_connect(&mut self, ctx: &mut Ctx) {
        if self.attempts > 0 {
            MqttStats::inc(&ctx.stats.reconnects);
        }
        let attempt = self.attempts;
        self.attempts += 1;
        let Some(addr) = ctx.addrs.pick(attempt) else {
            let name = ctx.addrs.shared().name();
            let why = format!("{name}: no address (the name has not resolved)");
            return self.fail(ctx, Failure::Other(why));
        };
        let mut sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.fail(ctx, Failure::Io(e)),
        };
        if let Err(e) = ctx.registry.register(
            &mut sock,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(ctx, Failure::Io(e));
        }
        let _ = sock.set_nodelay(true);
        let transport = match ctx.tls {
            Some(config) => match Transport::tls(sock, config.clone(), server_name(ctx.opts)) {
                Ok(t) => t,
                Err(e) => return self.fail(ctx, Failure::Io(e)),
            },
            None => Transport::Tcp(sock),
        };
        debug!(conn = self.index, %addr, "MQTT connecting");
        self.transport = Some(transport);
        self.state = State::Connecting {
            deadline: ctx.now + CONNECT_TIMEOUT,
        };
    }

    fn check_connected(&mut self) -> io::Result<bool> {
        let Some(t) = self.transport.as_mut() else {
            return Ok(false);
        };
        let sock = t.socket();
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        match sock.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send_connect(&mut self, ctx: &mut Ctx) {
        let opts = ctx.opts;
        let login =
            (!opts.username.is_empty()).then_some((opts.username.as_str(), opts.password.as_str()));
        let client_id = std::mem::take(&mut self.client_id);
        self.write_packet(&Out::Connect {
            client_id: &client_id,
            keep_alive: opts.keepalive.as_secs().min(u16::MAX as u64) as u16,
            login,
            max_packet_size: u32::try_from(opts.max_packet_size).unwrap_or(u32::MAX),
        });
        self.client_id = client_id;
        self.state = State::AwaitConnack {
            deadline: ctx.now + CONNECT_TIMEOUT,
        };
        self.flush(ctx);
    }

    fn on_connack_accepted(&mut self, ctx: &mut Ctx, limits: Limits) {
        self.state = State::Up;
        self.limits = limits;
        self.keepalive = match limits.server_keep_alive {
            Some(s) => Duration::from_secs(s.into()),
            None => ctx.opts.keepalive,
        };
        self.backoff = BACKOFF_MIN;
        self.failures = 0;
        self.last_ping = ctx.now;
        MqttStats::inc(&ctx.stats.connected);
        info!(
            conn = self.index,
            client_id = %self.client_id,
            protocol = %self.protocol,
            filters = self.subs.len(),
            unacked = self.inflight.len(),
            receive_max = self.limits.receive_max,
            max_packet_size = self.limits.max_packet_size,
            "MQTT connected"
        );
        let filters = self.subs.resubscribe_all();
        let pkids = self.write_subscribes(ctx, filters);
        self.gate.resubscribed(pkids);
        self.unsent = self.inflight.len();
        self.resend_inflight(ctx);
    }

    /// Handles one packet from the broker; Err drops the connection.
    fn handle(&mut self, ctx: &mut Ctx, packet: In) -> Result<(), Failure> {
        let awaiting_connack = matches!(self.state, State::AwaitConnack { .. });
        match packet {
            In::ConnAck(result) if awaiting_connack => {
                match result {
                    Ok(limits) => self.on_connack_accepted(ctx, limits),
                    Err(why) => self.fail(ctx, Failure::Other(format!("CONNACK refused: {why}"))),
                }
                return Ok(());
            }
            In::Disconnect(why) => {
                self.fail(
                    ctx,
                    Failure::Other(format!("disconnected by the broker: {why}")),
                );
                return Ok(());
            }
            _ if awaiting_connack => {
                return Err(Failure::Protocol("packet before CONNACK".into()));
            }
            In::Publish {
                topic,
                payload,
                qos,
                pkid,
                expiry_s,
            } => {
                let delivery = Delivery {
                    topic: &topic,
                    payload: &payload,
                    expiry_s,
                };
                self.on_inbound_publish(ctx, &delivery, qos, pkid);
            }
            In::PubAck(pkid, result) => {
                let ok = self.refused(ctx, pkid, result);
                self.complete(ctx, pkid, ok);
            }
            In::PubRec(pkid, Ok(())) => {
                if let Some(e) = self.inflight.iter_mut().find(|e| e.pkid == pkid) {
                    e.released = true;
                }
                self.write_packet(&Out::PubRel(pkid));
            }
            In::PubRec(pkid, result) => {
                // MQTT 5 §4.3.3: a failed PUBREC ends the exchange; no PUBREL.
                let ok = self.refused(ctx, pkid, result);
                self.complete(ctx, pkid, ok);
            }
            In::PubComp(pkid) => self.complete(ctx, pkid, true),
            In::PubRel(pkid) => {
                self.inbound_qos2.remove(&pkid);
                self.write_packet(&Out::PubComp(pkid));
            }
            In::SubAck(pkid, refused) => {
                if self.sub_ids.remove(&pkid) {
                    self.ids.free(pkid);
                }
                // Refused filters release their publishes too: the refusal is counted.
                self.gate.acked(pkid);
                MqttStats::inc(&ctx.stats.subacks);
                if !refused.is_empty() {
                    warn!(
                        conn = self.index,
                        refused = refused.len(),
                        reasons = ?refused,
                        "MQTT broker refused subscriptions"
                    );
                    MqttStats::add(&ctx.stats.send_errors, refused.len() as u64);
                }
            }
            In::UnsubAck(pkid) => {
                if self.sub_ids.remove(&pkid) {
                    self.ids.free(pkid);
                }
            }
            In::PingResp => {}
            In::ConnAck(_) | In::Unexpected(_) => {
                return Err(Failure::Protocol(format!(
                    "unexpected packet from broker: {packet:?}"
                )))
            }
        }
        Ok(())
    }

    /// An MQTT 5 PUBACK or PUBREC with a failure reason: the broker refused the publish
    /// (logged and counted). True when it did not.
    fn refused(&mut self, ctx: &mut Ctx, pkid: u16, result: Result<(), String>) -> bool {
        if let Err(why) = &result {
            let topic = self
                .inflight
                .iter()
                .find(|e| e.pkid == pkid)
                .map(|e| e.topic.as_str());
            warn!(conn = self.index, pkid, topic, reason = %why, "MQTT broker refused a publish");
            MqttStats::inc(&ctx.stats.send_errors);
        }
        result.is_ok()
    }

    fn on_inbound_publish(&mut self, ctx: &mut Ctx, d: &Delivery<'_>, qos: QoS, pkid: u16) {
        let deliver = match qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                self.write_packet(&Out::PubAck(pkid));
                true
            }
            QoS::ExactlyOnce => {
                self.write_packet(&Out::PubRec(pkid));
                self.inbound_qos2.insert(pkid)
            }
        };
        if deliver {
            MqttStats::inc(&ctx.stats.inbound);
            ctx.inbound.on_publish(d, ctx.replies);
        }
    }

    /// PUBACK or PUBCOMP (or a refusal): the publish with `pkid` is done; `acked` counts it.
    fn complete(&mut self, ctx: &mut Ctx, pkid: u16, acked: bool) {
        match self.inflight.iter().position(|e| e.pkid == pkid) {
            Some(i) => {
                if i >= self.inflight.len() - self.unsent {
                    // Acknowledged before we re-sent it: a broker that kept state.
                    self.unsent -= 1;
                }
                self.inflight.remove(i);
                self.ids.free(pkid);
                if acked {
                    MqttStats::inc(&ctx.stats.acked);
                }
            }
            None => debug!(conn = self.index, pkid, "ack for unknown packet id"),
        }
    }

    /// Writes `filters` in as few SUBSCRIBE packets as the packet size and
    /// `FILTERS_PER_SUBSCRIBE` allow; returns their packet ids.
    fn write_subscribes(&mut self, ctx: &mut Ctx, filters: Vec<(String, u8)>) -> Vec<u16> {
        let max = self.max_out_packet(ctx);
        let mut pkids = Vec::new();
        let mut batch: Vec<(String, u8)> = Vec::new();
        // Packet id, and the (empty) property block of MQTT 5.
        let head = 2 + (self.protocol == Protocol::V5) as usize;
        let mut len = head;
        for (filter, qos) in filters {
            let flen = 2 + filter.len() + 1;
            if MAX_FIXED_HEADER + head + flen > max {
                warn!(conn = self.index, %filter, "MQTT filter too long for max_packet_size");
                MqttStats::inc(&ctx.stats.send_errors);
                continue;
            }
            let full = batch.len() >= FILTERS_PER_SUBSCRIBE || MAX_FIXED_HEADER + len + flen > max;
            if !batch.is_empty() && full {
                pkids.extend(self.emit_subscribe(ctx, std::mem::take(&mut batch)));
                len = head;
            }
            let qos = self.cap_qos(to_qos(qos)) as u8;
            batch.push((filter, qos));
            len += flen;
        }
        if !batch.is_empty() {
            pkids.extend(self.emit_subscribe(ctx, batch));
        }
        pkids
    }

    fn emit_subscribe(&mut self, ctx: &mut Ctx, filters: Vec<(String, u8)>) -> Option<u16> {
        let Some(pkid) = self.ids.alloc() else {
            warn!(
                conn = self.index,
                "MQTT packet ids exhausted, SUBSCRIBE lost"
            );
            MqttStats::add(&ctx.stats.send_errors, filters.len() as u64);
            return None;
        };
        self.sub_ids.insert(pkid);
        MqttStats::add(&ctx.stats.subscribes, filters.len() as u64);
        self.write_packet(&Out::Subscribe {
            pkid,
            filters: &filters,
        });
        Some(pkid)
    }

    fn write_unsubscribes(&mut self, ctx: &mut Ctx, filters: Vec<String>) {
        let max = self.max_out_packet(ctx);
        let mut batch: Vec<String> = Vec::new();
        let head = 2 + (self.protocol == Protocol::V5) as usize;
        let mut len = head;
        for filter in filters {
            let flen = 2 + filter.len();
            if MAX_FIXED_HEADER + head + flen > max {
                MqttStats::inc(&ctx.stats.send_errors);
                continue;
            }
            if !batch.is_empty() && MAX_FIXED_HEADER + len + flen > max {
                self.emit_unsubscribe(ctx, std::mem::take(&mut batch));
                len = head;
            }
            batch.push(filter);
            len += flen;
        }
        if !batch.is_empty() {
            self.emit_unsubscribe(ctx, batch);
        }
    }

    fn emit_unsubscribe(&mut self, ctx: &mut Ctx, topics: Vec<String>) {
        let Some(pkid) = self.ids.alloc() else {
            MqttStats::add(&ctx.stats.send_errors, topics.len() as u64);
            return;
        };
        self.sub_ids.insert(pkid);
        MqttStats::add(&ctx.stats.unsubscribes, topics.len() as u64);
        self.write_packet(&Out::Unsubscribe {
            pkid,
            filters: &topics,
        });
    }

    fn write_packet(&mut self, packet: &Out<'_>) {
        // Sizes are checked when messages enter the thread; encoding cannot fail here.
        if let Err(e) = self.protocol.encode(packet, &mut self.wbuf) {
            warn!(conn = self.index, error = %e, "MQTT encoding failed");
        }
    }

    fn drop_transport(&mut self, ctx: &mut Ctx) {
        if let Some(mut t) = self.transport.take() {
            let _ = ctx.registry.deregister(t.socket());
        }
        self.rbuf.clear();
        self.wbuf.clear();
        self.read_more = false;
    }

    /// The connection is lost: schedule a reconnect after the backoff.
    fn fail(&mut self, ctx: &mut Ctx, why: Failure) {
        if matches!(why, Failure::Protocol(_)) {
            MqttStats::inc(&ctx.stats.protocol_errors);
        }
        if self.state == State::Up {
            MqttStats::dec(&ctx.stats.connected);
            warn!(conn = self.index, client_id = %self.client_id, error = %why, "MQTT connection lost");
        } else if self.failures == 0 {
            warn!(conn = self.index, client_id = %self.client_id, error = %why, "MQTT connect failed");
        } else {
            debug!(conn = self.index, error = %why, "MQTT connect failed");
        }
        self.failures += 1;
        ctx.addrs.shared().connect_failed();
        self.drop_transport(ctx);
        // A new session: the broker forgets our subscriptions and its QoS 2 state.
        for id in self.sub_ids.drain() {
            self.ids.free(id);
        }
        self.gate.lost();
        self.inbound_qos2.clear();
        self.limits = Limits::default();
        let delay = self.jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.state = State::Waiting {
            until: ctx.now + delay,
        };
    }

    /// A delay in [d/2, d) from a xorshift PRNG.
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d.as_micros() as u64 / 2;
        Duration::from_micros(half + self.rng % half.max(1))
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The broker's host name, as TLS verifies its certificate against it.
fn server_name(opts: &MqttOptions) -> &str {
    match &opts.server {
        ServerAddr::Tcp { host, .. } | ServerAddr::Tls { host, .. } => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile bytes from a broker: the codec returns errors, never panics.
    #[test]
    fn codec_survives_random_input() {
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let mut buf = BytesMut::new();
            // Valid packet types with random flags and bodies, plus plain noise.
            let first = (next() % 16) as u8;
            buf.extend_from_slice(&[(first << 4) | (next() % 16) as u8, len as u8]);
            for _ in 0..len {
                buf.extend_from_slice(&[next() as u8]);
            }
            let mut buf5 = buf.clone();
            while let Ok(_p) = Protocol::V311.decode(&mut buf, 1024) {}
            while let Ok(_p) = Protocol::V5.decode(&mut buf5, 1024) {}
        }
    }

    #[test]
    fn packet_ids_skip_used_and_zero() {
        let mut ids = PacketIds::new();
        let a = ids.alloc().unwrap();
        assert_eq!(a, 1);
        ids.next = u16::MAX - 1;
        assert_eq!(ids.alloc(), Some(u16::MAX));
        assert_eq!(ids.alloc(), Some(2)); // 0 skipped, 1 in use
        ids.free(1);
        ids.free(1);
        assert_eq!(ids.count, 2);
    }
}
