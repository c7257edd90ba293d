//! One shard thread's application: its UDP socket (SO_REUSEPORT), recvmmsg and
//! sendmmsg batches, the protocol core, its own broker connections (`mqtt_side.rs`),
//! and the plumbing of the core's outputs to the broker, the timer wheel and the
//! other shards' mailboxes.

use super::backlog::{Backlog, Sent};
use super::dtls_side::{DtlsSide, DTLS};
use super::mail::{ShardMail, ShardTimer};
use super::mqtt_side::{Confirm, MqttSide};
use super::router::CommandRouter;
use crate::auth::AuthService;
use crate::lwm2m::command::Arrival;
use crate::lwm2m::{ClusterRequest, CoreStats, Input, Output, RoutedCommand, ShardCore, ShardMsg};
use crate::objects::SharedRegistry;
use mio::net::UdpSocket;
use netio::{RecvBatch, SendBatch};
use shard::{MailboxSender, ShardApp, TimerWheel};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The mio token of a shard's UDP socket.
pub(super) const UDP: mio::Token = mio::Token(1);
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
    /// Datagrams (UDP and DTLS) read and dropped while the gateway was disabled.
    pub disabled_dropped: AtomicU64,
    /// The DTLS server's counters, copied at the end of each loop turn.
    pub dtls: parking_lot::Mutex<crate::dtls::DtlsStats>,
    /// DTLS datagrams longer than a receive slot (dropped).
    pub dtls_oversized: AtomicU64,
    /// Datagrams for a DTLS registration or a DTLS peer that were not sent because
    /// the peer had no DTLS session (never sent in plain text).
    pub dtls_no_session: AtomicU64,
}

pub(super) struct UdpShard {
    pub core: ShardCore,
    pub socket: UdpSocket,
    recv: RecvBatch,
    send: SendBatch,
    mqtt: MqttSide,
    router: Arc<CommandRouter>,
    peers: Arc<Vec<MailboxSender<ShardMail>>>,
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
    /// A `ShardTimer::MailboxRetry` is in the wheel.
    retry_armed: bool,
    /// The object definitions (reloaded by a watcher thread) and the generation the
    /// core has a snapshot of.
    registry: Arc<SharedRegistry>,
    registry_generation: Option<u64>,
    /// The Bootstrap-Server's configurations and outcomes (`[bootstrap] enable`).
    pub bootstrap: Option<Arc<crate::bootstrap::BootstrapStore>>,
    /// The store writer's queue (`[store]`), when registrations are kept.
    pub store: Option<crate::store::StoreSender>,
    /// The cluster thread's queue (`[store] kind = "redis"`).
    pub cluster: Option<crate::cluster::ClusterSender>,
    /// Serving devices (the management API's enable); while false every datagram read
    /// is dropped.
    serving: bool,
}

impl UdpShard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        core: ShardCore,
        socket: UdpSocket,
        recv_batch: usize,
        max_datagram: usize,
        mqtt: MqttSide,
        router: Arc<CommandRouter>,
        peers: Arc<Vec<MailboxSender<ShardMail>>>,
        stop: Arc<AtomicBool>,
        counters: Arc<ShardCounters>,
        snapshot: Arc<parking_lot::Mutex<CoreStats>>,
        auth: AuthService,
        registry: Arc<SharedRegistry>,
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
            registry,
            registry_generation: None,
            bootstrap: None,
            store: None,
            cluster: None,
            serving: true,
        }
    }

    /// [`route_outputs`](Self::route_outputs) at `now_ms`, outside a loop callback (the
    /// restore at start).
    pub(super) fn route_outputs_at(&mut self, now_ms: u64, timers: &mut TimerWheel<ShardTimer>) {
        self.now_ms = now_ms;
        self.route_outputs(timers);
    }

    /// Hands the core the current object definitions when a reload replaced them (an
    /// atomic load per input; the core never reads the shared registry itself).
    fn refresh_registry(&mut self) {
        let generation = self.registry.generation();
        if self.registry_generation != Some(generation) {
            self.registry_generation = Some(generation);
            self.core.set_registry(self.registry.load());
        }
    }

    /// Moves everything the core produced to where it goes, until it has nothing left:
    /// what could not be done goes back to the core as an input (a secure datagram
    /// without a DTLS session, an authentication request the pool refused, a command no
    /// mailbox takes), which may produce more.
    fn route_outputs(&mut self, timers: &mut TimerWheel<ShardTimer>) {
        let now = self.now_ms;
        loop {
            let mut lost = Vec::new();
            let mut refused = Vec::new();
            let me = self.core.shard();
            let (send, dtls, mqtt) = (&mut self.send, &mut self.dtls, &mut self.mqtt);
            let (backlog, peers, counters, auth) =
                (&mut self.backlog, &self.peers, &self.counters, &self.auth);
            let (bootstrap, store, cluster) = (&self.bootstrap, &self.store, &self.cluster);
            let mut missed = Vec::new();
            let unix_ms = self.core.settings().clock_epoch_ms + now;
            self.core.drain(|o| match o {
                Output::Datagram {
                    to,
                    secure: false,
                    bytes,
                } => send.push(to, bytes),
                // What must be encrypted goes over DTLS or not at all.
                Output::Datagram { to, bytes, .. } => {
                    if !dtls.as_mut().is_some_and(|d| d.send_app(now, to, bytes)) {
                        lost.push(to);
                    }
                }
                Output::Mqtt(m) => mqtt.accept(m),
                // The core's timers are seconds long and most are stale when they come
                // due (a retransmission timer per request): slack lets them share wake-ups.
                Output::Timer { at, timer } => {
                    timers.insert(shard::with_slack(now, at), ShardTimer::Core(timer))
                }
                Output::Auth { ticket, request } => {
                    // The answer comes back through this shard's mailbox, from an auth thread.
                    let home = peers[me as usize].clone();
                    let done = Box::new(move |o: crate::auth::AuthOutcome| {
                        let answer = ShardMail::AuthResult {
                            ticket,
                            allowed: o.allowed(),
                        };
                        let _ = home.send_timeout(answer, std::time::Duration::from_secs(1));
                    });
                    if auth.submit(request, done).is_err() {
                        refused.push(ticket);
                    }
                }
                Output::Bootstrap(e) => {
                    if let Some(b) = bootstrap {
                        b.on_event(&e, unix_ms);
                    }
                }
                Output::Store(c) => {
                    if let Some(s) = store {
                        s.send(c);
                    }
                }
                // The node it was taken from is told once the broker acknowledged the
                // subscribe drained before this (see `MqttSide::confirm_when_subscribed`).
                Output::Cluster(ClusterRequest::Subscribed {
                    node,
                    name,
                    location,
                    filter,
                }) => {
                    if cluster.is_some() {
                        let confirm = Confirm {
                            node,
                            name,
                            location,
                        };
                        mqtt.confirm_when_subscribed(&filter, confirm);
                    }
                }
                Output::Cluster(r) => {
                    let refused = match cluster {
                        Some(c) => c.send(me, r).err(),
                        None => Some(r),
                    };
                    missed.extend(refused);
                }
                Output::Shard { to, msg } => {
                    let counter = match backlog.send(peers, to, msg) {
                        Sent::Delivered | Sent::Returned => return,
                        Sent::Deferred => &counters.mailbox_deferred,
                        Sent::Dropped => &counters.mailbox_dropped,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            let returned = self.backlog.take_returned();
            if lost.is_empty() && refused.is_empty() && returned.is_empty() && missed.is_empty() {
                break;
            }
            for r in missed {
                // The cluster thread's queue is full: answered as a miss now.
                let miss = match r {
                    ClusterRequest::Take {
                        location,
                        peer,
                        datagram,
                        identity,
                    } => Input::ClusterMiss {
                        location,
                        peer,
                        datagram,
                        identity,
                    },
                    // Dropped: asked again once its lookup timed out (a reset would end
                    // an observation on the device).
                    ClusterRequest::TakePeer { .. } | ClusterRequest::Subscribed { .. } => continue,
                };
                self.core.handle(now, miss);
            }
            for peer in lost {
                self.counters
                    .dtls_no_session
                    .fetch_add(1, Ordering::Relaxed);
                self.core.handle(now, Input::SessionClosed { peer });
            }
            for ticket in refused {
                // The auth queue is full: deny now.
                let allowed = false;
                self.core.handle(now, Input::AuthResult { ticket, allowed });
            }
            for m in returned {
                self.core.handle(now, Input::Undelivered(m));
            }
        }
        self.arm_retry(timers);
    }

    /// Commands the broker delivered on this shard's connections, resolved once: handled
    /// here when the endpoint lives here, else handed to its shard.
    fn take_commands(&mut self, now: u64, timers: &mut TimerWheel<ShardTimer>) {
        let delivered: Vec<_> = self.mqtt.take_commands().collect();
        let mut any = false;
        for d in delivered {
            any |= self.command(now, d.topic, d.payload, d.expiry_s, true);
        }
        if any {
            self.route_outputs(timers);
        }
    }

    /// One command published on `topic`: handled here when the endpoint lives here, else
    /// handed to its shard; with `may_forward` and a store shared by several nodes, one
    /// for an endpoint no shard here holds goes to the node holding it (through Redis).
    /// False when it is not a command topic of this gateway.
    fn command(
        &mut self,
        now: u64,
        topic: String,
        payload: Vec<u8>,
        expiry_s: Option<u32>,
        may_forward: bool,
    ) -> bool {
        let me = self.core.shard();
        let Some((shard, to)) = self.router.route(&topic) else {
            tracing::debug!(%topic, "not a command topic of this gateway");
            return false;
        };
        let (topic, payload) = match (&self.cluster, may_forward) {
            (Some(c), true) if self.router.dir.by_name(&to.endpoint).is_none() => {
                match c.forward(me, &to.endpoint, topic, payload, expiry_s) {
                    Ok(()) => return true,
                    Err(back) => back,
                }
            }
            _ => (topic, payload),
        };
        drop(topic);
        {
            let cmd = ShardMsg::Command(RoutedCommand {
                to,
                payload,
                hops: 0,
                arrival: Arrival {
                    at_ms: None,
                    expiry_s,
                },
            });
            if shard == me {
                self.router.counters.local.fetch_add(1, Ordering::Relaxed);
                self.core.handle(now, Input::Shard(cmd));
            } else {
                let counter = match self.backlog.send(&self.peers, shard, cmd) {
                    Sent::Delivered => return true,
                    Sent::Returned => return true, // answered by route_outputs
                    Sent::Deferred => &self.counters.mailbox_deferred,
                    Sent::Dropped => &self.counters.mailbox_dropped,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Retries the backlog (end of a loop turn); commands it gives up on are answered.
    fn retry_backlog(&mut self, timers: &mut TimerWheel<ShardTimer>) {
        if self.backlog.is_empty() {
            return;
        }
        let dropped = self.backlog.retry(&self.peers);
        self.counters
            .mailbox_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        self.route_outputs(timers);
    }

    fn arm_retry(&mut self, timers: &mut TimerWheel<ShardTimer>) {
        self.counters
            .mailbox_backlog
            .store(self.backlog.len() as u64, Ordering::Relaxed);
        if !self.backlog.is_empty() && !self.retry_armed {
            self.retry_armed = true;
            timers.insert(self.now_ms + 1, ShardTimer::MailboxRetry);
        }
    }

    fn read(&mut self, now: u64, timers: &mut TimerWheel<ShardTimer>) -> bool {
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
                if !self.serving {
                    self.counters
                        .disabled_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let identity = None;
                self.core.handle(
                    now,
                    Input::Datagram {
                        peer,
                        data,
                        identity,
                    },
                );
            }
            self.route_outputs(timers);
            if n < self.recv.capacity() {
                // The queue was empty then; a datagram arriving since raises a new
                // (edge-triggered) readiness event, so asking again now would only
                // return EAGAIN: one syscall per turn saved.
                return false;
            }
        }
        true
    }

    fn publish_counters(&mut self, now: u64) {
        // Once per loop turn (a batch of datagrams): an uncontended lock and a copy.
        let _ = now;
        *self.snapshot.lock() = *self.core.stats();
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
            .store(self.core.stats().datagrams_in, Ordering::Relaxed);
        c.send_failed.store(self.send.failed(), Ordering::Relaxed);
    }
}

impl ShardApp for UdpShard {
    type Msg = ShardMail;
    type Timer = ShardTimer;

    fn on_io(
        &mut self,
        token: mio::Token,
        readable: bool,
        writable: bool,
        now_ms: u64,
        timers: &mut TimerWheel<ShardTimer>,
    ) -> bool {
        self.now_ms = now_ms;
        self.refresh_registry();
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
            if !self.serving {
                let (more, dropped) = if readable { d.discard() } else { (false, 0) };
                self.counters
                    .disabled_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                return more;
            }
            let more = readable && d.read(now_ms, &mut self.core, timers);
            while let Some((shard, peer, data)) = d.take_forward() {
                let mail = ShardMail::DtlsRecord { peer, data };
                if self
                    .peers
                    .get(shard)
                    .is_none_or(|p| p.try_send(mail).is_err())
                {
                    d.forward_dropped();
                }
            }
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

    fn on_message(&mut self, mail: ShardMail, now_ms: u64, timers: &mut TimerWheel<ShardTimer>) {
        self.now_ms = now_ms;
        self.refresh_registry();
        let mail = match mail {
            ShardMail::Cluster(crate::cluster::ClusterAnswer::Command {
                topic,
                payload,
                expiry_s,
            }) => {
                // Forwarded by another node (or back from this node's cluster thread):
                // handled here as delivered, never forwarded again.
                self.command(now_ms, topic, payload, expiry_s, false);
                self.route_outputs(timers);
                return;
            }
            other => other,
        };
        let core = &mut self.core;
        match mail {
            ShardMail::Core(m) => core.handle(now_ms, Input::Shard(m)),
            ShardMail::DtlsRecord { .. } if !self.serving => {
                self.counters
                    .disabled_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            ShardMail::DtlsRecord { peer, data } => {
                if let Some(d) = self.dtls.as_mut() {
                    d.forwarded(now_ms, peer, &data, core, timers);
                }
            }
            ShardMail::AuthResult { ticket, allowed } => {
                core.handle(now_ms, Input::AuthResult { ticket, allowed })
            }
            ShardMail::Cluster(a) => core.handle(now_ms, cluster_input(a)),
            ShardMail::ApiCommand { name, payload } => core.handle(
                now_ms,
                Input::ApiCommand {
                    name: &name,
                    payload,
                },
            ),
            ShardMail::Clients { name, reply } => {
                let _ = reply.send(core.client_infos(name.as_deref()));
            }
            ShardMail::FindClientId { clientid, reply } => {
                let _ = reply.send(core.find_client_id(&clientid));
            }
            ShardMail::Lookup {
                name,
                path,
                op,
                reply,
            } => {
                let _ = reply.send(core.lookup(&name, &path, op));
            }
            ShardMail::Kick { name, reply } => {
                let _ = reply.send(core.kick(now_ms, &name));
            }
            ShardMail::Settings { settings, applied } => {
                core.handle(now_ms, Input::Settings(settings));
                let _ = applied.send(());
            }
            ShardMail::Serve { on, ended } => {
                self.serving = on;
                let mut n = 0;
                if !on {
                    for c in core.client_infos(None) {
                        n += usize::from(core.kick(now_ms, &c.endpoint_name));
                    }
                }
                let _ = ended.send(n);
            }
        }
        self.route_outputs(timers);
    }

    fn on_timer(&mut self, t: ShardTimer, now_ms: u64, timers: &mut TimerWheel<ShardTimer>) {
        self.now_ms = now_ms;
        self.refresh_registry();
        match t {
            // The turn's flush retries.
            ShardTimer::MailboxRetry => self.retry_armed = false,
            // The turn's flush runs the connections' timers.
            ShardTimer::Mqtt => self.mqtt.on_timer(),
            ShardTimer::Transport => {
                if let Some(d) = self.dtls.as_mut() {
                    d.on_timer(now_ms, &mut self.core, timers);
                }
                self.route_outputs(timers);
            }
            ShardTimer::Core(t) => {
                self.core.handle(now_ms, Input::Timer(t));
                self.route_outputs(timers);
            }
        }
    }

    fn flush(&mut self, now_ms: u64, timers: &mut TimerWheel<ShardTimer>) -> bool {
        if self.core.has_output() {
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
        if let Some(c) = &self.cluster {
            for confirm in self.mqtt.take_confirmed() {
                c.unsubscribe_elsewhere(confirm.node, confirm.name, confirm.location);
            }
        }
        if let Some(on) = self.mqtt.congestion() {
            self.core.handle(now_ms, Input::MqttCongested(on));
        }
        // What the next turn may acknowledge: never past the buffer's high watermark,
        // however many datagrams it reads before this end of turn comes again.
        self.core
            .handle(now_ms, Input::MqttRoom(self.mqtt.room_before_shedding()));
        self.publish_counters(now_ms);
        // Unsent datagrams wait for the socket's writable event; a broker connection
        // with more to read is called again by the loop (its `on_io` said so).
        false
    }

    fn should_stop(&self) -> bool {
        self.mqtt.closed()
    }
}

/// The cluster side's answer as the core's input.
fn cluster_input(a: crate::cluster::ClusterAnswer) -> Input<'static> {
    use crate::cluster::ClusterAnswer;
    match a {
        ClusterAnswer::Adopt {
            endpoint,
            peer,
            datagram,
            identity,
            from,
        } => Input::ClusterAdopt {
            endpoint,
            peer,
            datagram,
            identity,
            from,
        },
        ClusterAnswer::Miss {
            location,
            peer,
            datagram,
            identity,
        } => Input::ClusterMiss {
            location,
            peer,
            datagram,
            identity,
        },
        ClusterAnswer::PeerMiss { peer, datagram } => Input::ClusterPeerMiss { peer, datagram },
        ClusterAnswer::Release { name, location } => Input::ClusterRelease { name, location },
        ClusterAnswer::Unsubscribe { name, location } => {
            Input::ClusterUnsubscribe { name, location }
        }
        ClusterAnswer::Command { .. } => unreachable!("handled by on_message"),
    }
}
