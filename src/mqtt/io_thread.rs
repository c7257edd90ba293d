//! The MQTT I/O thread: one mio `Poll` over every broker connection plus a `Waker` for the
//! outbound channel.
//!
//! Loop turn: drain at most `DRAIN_BATCH` messages from the channel into the connections' queues
//! (overflow policy applied), run the timers, move queued work into the write buffers and flush,
//! then sleep in `poll` until a socket event, a timer or a wake-up. The thread arms
//! `Shared::sleeping` before it sleeps; senders wake it only when that flag is set, so a burst of
//! sends costs one wake-up.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use tracing::{debug, info, warn};

use super::buffer::{make_room, OutMsg, Overflow};
use super::codec::publish_size;
use super::connection::{Connection, Ctx};
use super::stats::MqttStats;
use super::{Inbound, MqttOptions, Outbound};

pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);
/// Messages taken from the channel per loop turn.
const DRAIN_BATCH: usize = 8192;

/// State shared between the handles and the thread.
pub(crate) struct Shared {
    pub waker: Waker,
    /// Armed by the thread before it sleeps; a sender that clears it wakes the thread.
    pub sleeping: AtomicBool,
    pub shutdown: AtomicBool,
    pub flush_timeout_ms: AtomicU64,
    pub done: Mutex<bool>,
    pub done_cv: Condvar,
}

impl Shared {
    /// Called by a sender after a successful send.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                warn!(error = %e, "MQTT waker failed");
            }
        }
    }

    pub fn wake_now(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

pub(crate) struct IoThread {
    pub opts: MqttOptions,
    pub inbound: Box<dyn Inbound>,
    pub poll: Poll,
    pub rx: Receiver<Outbound>,
    pub shared: Arc<Shared>,
    pub stats: Arc<MqttStats>,
    pub tls: Option<Arc<ClientConfig>>,
}

impl IoThread {
    pub fn run(mut self) {
        let start = Instant::now();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = clock ^ ((std::process::id() as u64) << 32);
        let mut conns: Vec<Connection> = (0..self.opts.connections)
            .map(|i| {
                let s = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                Connection::new(i, &self.opts, start, s)
            })
            .collect();
        let mut events = Events::with_capacity(256);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut seq: u64 = 0;
        let mut shutdown_deadline: Option<Instant> = None;
        let cap = self.opts.buffer_messages.max(1);
        let mut read_done = vec![false; conns.len()];
        // Publishes `Inbound::on_publish` answered with, queued after each read.
        let mut replies: Vec<Outbound> = Vec::new();

        loop {
            let now = Instant::now();
            if shutdown_deadline.is_none() && self.shared.shutdown.load(Ordering::SeqCst) {
                let ms = self.shared.flush_timeout_ms.load(Ordering::SeqCst);
                shutdown_deadline = Some(now + Duration::from_millis(ms));
                info!("MQTT shutting down: flushing");
            }
            // Everything queued before shutdown is published: drain it all then.
            let batch = if shutdown_deadline.is_some() {
                usize::MAX
            } else {
                DRAIN_BATCH
            };
            let drained = self.drain(&mut conns, batch, cap, &mut seq);

            let mut ctx = Ctx {
                opts: &self.opts,
                stats: &self.stats,
                inbound: &mut *self.inbound,
                replies: &mut replies,
                registry: self.poll.registry(),
                tls: self.tls.as_ref(),
                now,
                scratch: &mut scratch,
            };
            for c in conns.iter_mut() {
                c.poll_timers(&mut ctx);
                c.pump(&mut ctx);
            }
            let held: usize = conns.iter().map(|c| c.held()).sum();
            MqttStats::set(&self.stats.pending, held as u64);

            if let Some(deadline) = shutdown_deadline {
                let idle = conns.iter().all(|c| c.is_idle());
                if idle || now >= deadline {
                    if !idle {
                        warn!(held, "MQTT shutdown timed out with messages held");
                    }
                    for c in conns.iter_mut() {
                        c.close(&mut ctx);
                    }
                    MqttStats::set(&self.stats.pending, held as u64);
                    break;
                }
            }

            let mut timeout = conns
                .iter()
                .filter_map(|c| c.next_deadline())
                .chain(shutdown_deadline)
                .min()
                .map(|d| d.saturating_duration_since(now));
            if drained == batch || conns.iter().any(|c| c.read_more) {
                timeout = Some(Duration::ZERO);
            }
            if timeout != Some(Duration::ZERO) {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                let stop_pending =
                    shutdown_deadline.is_none() && self.shared.shutdown.load(Ordering::SeqCst);
                if !self.rx.is_empty() || stop_pending {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    timeout = Some(Duration::ZERO);
                }
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    warn!(error = %e, "MQTT poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.shared.sleeping.store(false, Ordering::SeqCst);

            let mut ctx = Ctx {
                opts: &self.opts,
                stats: &self.stats,
                inbound: &mut *self.inbound,
                replies: &mut replies,
                registry: self.poll.registry(),
                tls: self.tls.as_ref(),
                now: Instant::now(),
                scratch: &mut scratch,
            };
            read_done.iter_mut().for_each(|r| *r = false);
            for ev in events.iter() {
                if ev.token() == WAKER_TOKEN {
                    continue;
                }
                let Some(c) = conns.get_mut(ev.token().0) else {
                    continue;
                };
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                c.on_event(&mut ctx, readable, writable);
                read_done[ev.token().0] |= readable;
            }
            for (i, c) in conns.iter_mut().enumerate() {
                if c.read_more && !read_done[i] {
                    c.read(&mut ctx);
                }
            }
            for msg in replies.drain(..) {
                self.accept(&mut conns, msg, cap, &mut seq);
            }
        }
        info!("MQTT I/O thread stopped");
        *self.shared.done.lock() = true;
        self.shared.done_cv.notify_all();
    }

    /// Moves up to `max` messages from the channel into the connections; returns how many.
    fn drain(&mut self, conns: &mut [Connection], max: usize, cap: usize, seq: &mut u64) -> usize {
        let mut count = 0;
        while count < max {
            let Ok(msg) = self.rx.try_recv() else {
                break;
            };
            count += 1;
            self.accept(conns, msg, cap, seq);
        }
        count
    }

    /// Queues one message on its connection (overflow policy applied to publishes).
    fn accept(&self, conns: &mut [Connection], msg: Outbound, cap: usize, seq: &mut u64) {
        let n = conns.len();
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
                let held: usize = conns.iter().map(|c| c.held()).sum();
                if held >= cap {
                    MqttStats::inc(&self.stats.dropped_overflow);
                    let r = make_room(
                        conns.iter_mut().map(|c| &mut c.pending),
                        qos == QoS::AtMostOnce,
                    );
                    if r == Overflow::DropIncoming {
                        return;
                    }
                }
                *seq += 1;
                conns[lane as usize % n].pending.push(OutMsg {
                    seq: *seq,
                    topic,
                    payload: Bytes::from(payload),
                    qos,
                });
            }
            Outbound::Subscribe { lane, filter, qos } => {
                if filter.is_empty() || filter.len() > u16::MAX as usize || qos > 2 {
                    MqttStats::inc(&self.stats.send_errors);
                    return;
                }
                conns[lane as usize % n].subs.subscribe(filter, qos);
            }
            Outbound::Unsubscribe { lane, filter } => {
                conns[lane as usize % n].subs.unsubscribe(filter);
            }
        }
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
