//! One shard thread's application: its UDP socket (SO_REUSEPORT), recvmmsg and
//! sendmmsg batches, the protocol core, its own broker connections (`mqtt_side.rs`),
//! and the plumbing of the core's outputs to the broker, the timer wheel and the
//! other shards' mailboxes.

use super::backlog::{Backlog, Sent};
use super::dtls_side::{DtlsSide, DTLS};
use super::mqtt_side::MqttSide;
use super::router::CommandRouter;
use crate::auth::AuthService;
use crate::lwm2m::command::Arrival;
use crate::lwm2m::{CoreStats, ShardCore, ShardMsg, Timer};
use mio::net::UdpSocket;
use netio::{RecvBatch, SendBatch};
use shard::{MailboxSender, ShardApp, TimerWheel};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The mio token of a shard's UDP socket.
pub const UDP: mio::Token = mio::Token(1);
/// recvmmsg calls per readable event before other work gets a turn.
const READS_PER_TURN: usize = 8;
/// How long shutdown waits for the broker to acknowledge what is still held.
const MQTT_FLUSH_MS: u64 = 5000;

/// Counters a shard shares with the rest of the process (read by metrics and tests).
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub endpoints: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub oversized: AtomicU64,
    pub mailbox_dropped: AtomicU64,
    /// Cross-shard messages that waited for room in a full mailbox (then delivered).
    pub mailbox_deferred: AtomicU64,
    /// Cross-shard messages waiting for room now.
    pub mailbox_backlog: AtomicU64,
    pub send_failed: AtomicU64,
    /// The DTLS server's counters, copied at the end of each loop turn.
    pub dtls: parking_lot::Mutex<crate::dtls::DtlsStats>,
    /// DTLS datagrams longer than a receive slot (dropped).
    pub dtls_oversized: AtomicU64,
    /// Datagrams for a DTLS registration or a DTLS peer that were not sent because
    /// the peer had no DTLS session (never sent in plain text).
    pub dtls_no_session: AtomicU64,
}

pub struct UdpShard {
    pub core: ShardCore,
    pub socket: UdpSocket,
    recv: RecvBatch,
    send: SendBatch,
    mqtt: MqttSide,
    router: Arc<CommandRouter>,
    peers: Arc<Vec<MailboxSender<ShardMsg>>>,
    stop: Arc<AtomicBool>,
    counters: Arc<ShardCounters>,
    /// The core's counters, copied out for metrics at the end of each loop turn.
    snapshot: Arc<parking_lot::Mutex<CoreStats>>,
    auth: AuthService,
    /// The DTLS listener, when configured.
    pub dtls: Option<DtlsSide>,
    /// The time of the input being handled (for DTLS encryption of replies).
    now_ms: u64,
    /// Cross-shard messages a full mailbox refused, retried every turn.
    backlog: Backlog,
    /// A `Timer::MailboxRetry` is in the wheel.
    retry_armed: bool,
    /// Peers whose datagrams could not be encrypted (no session), this turn.
    lost: Vec<std::net::SocketAddr>,
}

impl UdpShard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: ShardCore,
        socket: UdpSocket,
        recv_batch: usize,
        max_datagram: usize,
        mqtt: MqttSide,
        router: Arc<CommandRouter>,
        peers: Arc<Vec<MailboxSender<ShardMsg>>>,
        stop: Arc<AtomicBool>,
        counters: Arc<ShardCounters>,
        snapshot: Arc<parking_lot::Mutex<CoreStats>>,
        auth: AuthService,
    ) -> Self {
        Self {
            core,
            socket,
            recv: RecvBatch::new(recv_batch, max_datagram),
            send: SendBatch::new(recv_batch),
            mqtt,
            router,
            peers: peers.clone(),
            stop,
            counters,
            snapshot,
            auth,
            dtls: None,
            now_ms: 0,
            backlog: Backlog::new(peers.len()),
            retry_armed: false,
            lost: Vec::new(),
        }
    }

    /// Moves everything the core produced to where it goes.
    fn route_outputs(&mut self, timers: &mut TimerWheel<Timer>) {
        let send = &mut self.send;
        let now = self.now_ms;
        match self.dtls.as_mut() {
            Some(d) => {
                // What must be encrypted goes over DTLS or not at all.
                let lost = &mut self.lost;
                self.core.drain_datagrams(|to, secure, b| {
                    if !secure {
                        send.push(to, b)
                    } else if !d.send_app(now, to, b) {
                        lost.push(to)
                    }
                });
                for peer in std::mem::take(&mut self.lost) {
                    self.counters
                        .dtls_no_session
                        .fetch_add(1, Ordering::Relaxed);
                    self.core.secure_session_closed(now, peer);
                }
            }
            None => self.core.out.drain_datagrams(|to, b| send.push(to, b)),
        }
        self.send_mqtt();
        for (at, t) in self.core.out.timers.drain(..) {
            timers.insert(at, t);
        }
        let auth_requests: Vec<_> = self.core.out.auth.drain(..).collect();
        for (ticket, req) in auth_requests {
            // The answer comes back through this shard's mailbox, from an auth thread.
            let me = self.peers[self.core.shard() as usize].clone();
            let done = Box::new(move |o: crate::auth::AuthOutcome| {
                let _ = me.send_timeout(
                    ShardMsg::AuthResult {
                        ticket,
                        allowed: o.allowed(),
                    },
                    std::time::Duration::from_secs(1),
                );
            });
            if self.auth.submit(req, done).is_err() {
                // The auth queue is full: deny now.
                self.core.auth_result(0, ticket, false);
            }
        }
        self.send_to_shards(timers);
    }

    /// The core's MQTT output to this shard's broker connections (written at the
    /// end of the turn).
    fn send_mqtt(&mut self) {
        for m in self.core.out.mqtt.drain(..) {
            self.mqtt.accept(m);
        }
    }

    /// Commands the broker delivered on this shard's connections: handled here when
    /// the endpoint lives here, else handed to its shard.
    fn take_commands(&mut self, now: u64, timers: &mut TimerWheel<Timer>) {
        let me = self.core.shard();
        let mut any = false;
        for d in self.mqtt.take_commands() {
            let Some(shard) = self.router.route(&d.topic) else {
                tracing::debug!(topic = %d.topic, "not a command topic of this gateway");
                continue;
            };
            any = true;
            let cmd = ShardMsg::Command {
                topic: d.topic,
                payload: d.payload,
                hops: 0,
                arrival: Arrival {
                    at_ms: None,
                    expiry_s: d.expiry_s,
                },
            };
            if shard == me {
                self.router.counters.local.fetch_add(1, Ordering::Relaxed);
                self.core.handle_message(now, cmd);
            } else {
                self.core.out.to_shards.push((shard, cmd));
            }
        }
        if any {
            self.route_outputs(timers);
        }
    }

    /// Hands the core's cross-shard messages to the other shards' mailboxes; what a
    /// full mailbox refuses waits in the backlog (never lost: it may carry an
    /// endpoint) and is retried at the end of every turn and by a 1 ms timer. A
    /// forwarded command the backlog does not keep is answered here (5.03).
    fn send_to_shards(&mut self, timers: &mut TimerWheel<Timer>) {
        for (to, m) in self.core.out.to_shards.drain(..) {
            let counter = match self.backlog.send(&self.peers, to, m) {
                Sent::Delivered | Sent::Returned => continue,
                Sent::Deferred => &self.counters.mailbox_deferred,
                Sent::Dropped => &self.counters.mailbox_dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.answer_returned();
        self.arm_retry(timers);
    }

    /// Forwarded commands the backlog handed back get their 5.03 on MQTT now.
    fn answer_returned(&mut self) {
        self.backlog.answer_returned(&mut self.core);
        self.send_mqtt();
    }

    /// Retries the backlog (end of a loop turn).
    fn retry_backlog(&mut self, timers: &mut TimerWheel<Timer>) {
        if self.backlog.is_empty() {
            return;
        }
        let dropped = self.backlog.retry(&self.peers);
        self.counters
            .mailbox_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        self.answer_returned();
        self.arm_retry(timers);
    }

    fn arm_retry(&mut self, timers: &mut TimerWheel<Timer>) {
        self.counters
            .mailbox_backlog
            .store(self.backlog.len() as u64, Ordering::Relaxed);
        if !self.backlog.is_empty() && !self.retry_armed {
            self.retry_armed = true;
            timers.insert(self.now_ms + 1, Timer::MailboxRetry);
        }
    }

    fn read(&mut self, now: u64, timers: &mut TimerWheel<Timer>) -> bool {
        for _ in 0..READS_PER_TURN {
            let n = match self.recv.recv(&self.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::warn!(shard = self.core.shard(), error = %e, "recvmmsg failed");
                    return false;
                }
            };
            for i in 0..n {
                let (peer, data, truncated) = self.recv.get(i);
                if truncated {
                    self.counters.oversized.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.core.handle_datagram(now, peer, data);
            }
            self.route_outputs(timers);
        }
        true
    }

    fn publish_counters(&mut self, now: u64) {
        // Once per loop turn (a batch of datagrams): an uncontended lock and a copy.
        let _ = now;
        *self.snapshot.lock() = self.core.stats;
        if let Some(d) = &self.dtls {
            self.counters.dtls.lock().clone_from(d.stats());
            self.counters
                .dtls_oversized
                .store(d.oversized(), Ordering::Relaxed);
        }
        let c = &self.counters;
        c.endpoints
            .store(self.core.endpoints().len() as u64, Ordering::Relaxed);
        c.datagrams_in
            .store(self.core.stats.datagrams_in, Ordering::Relaxed);
        c.send_failed.store(self.send.failed(), Ordering::Relaxed);
    }
}

impl ShardApp for UdpShard {
    type Msg = ShardMsg;
    type Timer = Timer;

    fn on_io(
        &mut self,
        token: mio::Token,
        readable: bool,
        writable: bool,
        now_ms: u64,
        timers: &mut TimerWheel<Timer>,
    ) -> bool {
        self.now_ms = now_ms;
        if self.mqtt.owns(token) {
            let more = self.mqtt.on_event(token, readable, writable, now_ms);
            self.take_commands(now_ms, timers);
            return more;
        }
        if self.mqtt.stopping() {
            // Shutting down: no more device traffic, only the broker flush.
            return false;
        }
        if token == DTLS {
            let Some(d) = self.dtls.as_mut() else {
                return false;
            };
            if writable {
                d.flush();
            }
            let more = readable && d.read(now_ms, &mut self.core, timers);
            self.route_outputs(timers);
            return more;
        }
        if token != UDP {
            return false;
        }
        if writable && !self.send.is_empty() {
            let _ = self.send.flush(&self.socket);
        }
        readable && self.read(now_ms, timers)
    }

    fn on_message(&mut self, msg: ShardMsg, now_ms: u64, timers: &mut TimerWheel<Timer>) {
        self.now_ms = now_ms;
        self.core.handle_message(now_ms, msg);
        self.route_outputs(timers);
    }

    fn on_timer(&mut self, t: Timer, now_ms: u64, timers: &mut TimerWheel<Timer>) {
        self.now_ms = now_ms;
        if t == Timer::MailboxRetry {
            // The turn's flush retries.
            self.retry_armed = false;
            return;
        }
        if t == Timer::Mqtt {
            // The turn's flush runs the connections' timers.
            self.mqtt.on_timer();
            return;
        }
        if t == Timer::Transport {
            if let Some(d) = self.dtls.as_mut() {
                d.on_timer(now_ms, &mut self.core, timers);
            }
        }
        self.core.handle_timer(now_ms, t);
        self.route_outputs(timers);
    }

    fn flush(&mut self, now_ms: u64, timers: &mut TimerWheel<Timer>) -> bool {
        if !self.core.out.auth.is_empty() || self.core.out.pending_datagrams() > 0 {
            self.route_outputs(timers);
        }
        self.now_ms = now_ms;
        self.retry_backlog(timers);
        if !self.send.is_empty() {
            if let Err(e) = self.send.flush(&self.socket) {
                tracing::warn!(shard = self.core.shard(), error = %e, "sendmmsg failed");
                self.send.clear();
            }
        }
        if let Some(d) = self.dtls.as_mut() {
            d.flush();
        }
        if self.stop.load(Ordering::Relaxed) {
            self.mqtt.begin_stop(now_ms, MQTT_FLUSH_MS);
        }
        self.mqtt.turn(now_ms, timers);
        self.publish_counters(now_ms);
        // Unsent datagrams wait for the socket's writable event; a broker connection
        // with more to read is called again by the loop (its `on_io` said so).
        false
    }

    fn should_stop(&self) -> bool {
        self.mqtt.closed()
    }
}
