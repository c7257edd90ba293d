//! The stand-alone MQTT I/O thread: an [`MqttClient`] on its own mio `Poll`, fed through a
//! channel with a `Waker` (the gateway's shards drive their own clients instead; this thread
//! serves other users of the module, e.g. the tests of the client against real brokers).
//!
//! Loop turn: drain at most `DRAIN_BATCH` messages from the channel into the client (overflow
//! policy applied), run its turn (timers, queued work into the write buffers and out), then
//! sleep in `poll` until a socket event, a timer or a wake-up. The thread arms
//! `Shared::sleeping` before it sleeps; senders wake it only when that flag is set, so a burst of
//! sends costs one wake-up.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use rustls::ClientConfig;
use tracing::{info, warn};

use super::client::MqttClient;
use super::resolve::BrokerAddrs;
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
        let addrs = BrokerAddrs::new(&self.opts.server);
        // A name that gives nothing now is looked up again by the resolver.
        let _ = addrs.resolve_now();
        let _ = addrs.spawn_resolver();
        let mut client = MqttClient::new(
            self.opts.clone(),
            0,
            self.opts.connections,
            0,
            self.opts.buffer_messages,
            self.stats.clone(),
            self.tls.clone(),
            addrs,
            seed,
            start,
        );
        let mut events = Events::with_capacity(256);
        let mut shutdown_deadline: Option<Instant> = None;
        let mut read = Vec::new();

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
            let mut drained = 0;
            while drained < batch {
                let Ok(msg) = self.rx.try_recv() else {
                    break;
                };
                drained += 1;
                client.accept(msg);
            }
            let registry = self.poll.registry();
            client.turn(registry, &mut *self.inbound, now);

            if let Some(deadline) = shutdown_deadline {
                let idle = client.is_idle();
                if idle || now >= deadline {
                    if !idle {
                        warn!(
                            held = client.held(),
                            "MQTT shutdown timed out with messages held"
                        );
                    }
                    client.close(registry, &mut *self.inbound, now);
                    break;
                }
            }

            let mut timeout = client
                .next_deadline()
                .into_iter()
                .chain(shutdown_deadline)
                .min()
                .map(|d| d.saturating_duration_since(now));
            if drained == batch || client.read_more() {
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

            let registry = self.poll.registry();
            let now = Instant::now();
            read.clear();
            for ev in events.iter() {
                if ev.token() == WAKER_TOKEN {
                    continue;
                }
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                client.on_event(
                    registry,
                    &mut *self.inbound,
                    ev.token(),
                    readable,
                    writable,
                    now,
                );
                if readable {
                    read.push(ev.token());
                }
            }
            // Connections whose read budget ran out last turn and had no event now.
            if client.read_more() {
                client.read_pending(registry, &mut *self.inbound, now, &read);
            }
        }
        info!("MQTT I/O thread stopped");
        *self.shared.done.lock() = true;
        self.shared.done_cv.notify_all();
    }
}
