//! The MQTT client of the library ([`MqttClient`]) on a thread of its own, fed through a
//! channel: how the tests of the client drive it against real brokers (the gateway's shards
//! drive their own clients in their event loops instead).
//!
//! Loop turn: drain at most `DRAIN_BATCH` messages from the channel into the client (overflow
//! policy applied), run its turn (timers, queued work into the write buffers and out), then
//! sleep in `poll` until a socket event, a timer or a wake-up. The thread arms
//! `Shared::sleeping` before it sleeps; senders wake it only when that flag is set, so a burst of
//! sends costs one wake-up.
//!
//! The channel into the thread is bounded by `buffer_messages`: when it is full,
//! [`MqttHandle::send`] returns the message. [`MqttHandle::shutdown`] publishes everything
//! queued, waits up to its timeout for the QoS>=1 acks, sends DISCONNECT and ends the thread.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use lwm2m_gateway::mqtt::{
    tls_for, BrokerAddrs, Inbound, MqttClient, MqttOptions, MqttStats, Outbound,
};
use mio::{Events, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use rustls::ClientConfig;
use tracing::{info, warn};

const WAKER_TOKEN: Token = Token(usize::MAX);
/// Messages taken from the channel per loop turn.
const DRAIN_BATCH: usize = 8192;

/// State shared between the handles and the thread.
struct Shared {
    waker: Waker,
    /// Armed by the thread before it sleeps; a sender that clears it wakes the thread.
    sleeping: AtomicBool,
    shutdown: AtomicBool,
    flush_timeout_ms: AtomicU64,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    /// Called by a sender after a successful send.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                warn!(error = %e, "MQTT waker failed");
            }
        }
    }

    fn wake_now(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

struct IoThread {
    opts: MqttOptions,
    inbound: Box<dyn Inbound>,
    poll: Poll,
    rx: Receiver<Outbound>,
    shared: Arc<Shared>,
    stats: Arc<MqttStats>,
    tls: Option<Arc<ClientConfig>>,
}

impl IoThread {
    fn run(mut self) {
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

/// Cheap to clone; every clone talks to the same thread.
#[derive(Clone)]
pub struct MqttHandle {
    tx: Sender<Outbound>,
    shared: Arc<Shared>,
    stats: Arc<MqttStats>,
}

impl MqttHandle {
    /// Non-blocking. The queue to the thread is bounded (capacity = buffer_messages); Err gives
    /// the message back when full or when the thread has stopped (the caller counts a drop).
    pub fn send(&self, msg: Outbound) -> Result<(), Outbound> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.shared.notify();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    pub fn stats(&self) -> &Arc<MqttStats> {
        &self.stats
    }

    /// Stop: publish everything queued, wait up to `flush_timeout` for QoS>=1 acks, send
    /// DISCONNECT, end the thread. Blocks until the thread has finished (or `flush_timeout`
    /// plus a grace second has passed); join the thread's `JoinHandle` afterwards. Never call it
    /// from `Inbound::on_publish` (it runs on the thread being stopped).
    pub fn shutdown(&self, flush_timeout: Duration) {
        let ms = flush_timeout.as_millis().min(u64::MAX as u128) as u64;
        if !self.shared.shutdown.load(Ordering::SeqCst) {
            self.shared.flush_timeout_ms.store(ms, Ordering::SeqCst);
            self.shared.shutdown.store(true, Ordering::SeqCst);
        }
        self.shared.wake_now();
        let deadline = Instant::now() + flush_timeout + Duration::from_secs(1);
        let mut done = self.shared.done.lock();
        while !*done {
            if self
                .shared
                .done_cv
                .wait_until(&mut done, deadline)
                .timed_out()
            {
                break;
            }
        }
    }
}

/// Starts the MQTT I/O thread. Fails on invalid options or an unreadable CA file; connecting to
/// the broker happens on the thread (and is retried for ever).
pub fn spawn(
    opts: MqttOptions,
    inbound: Box<dyn Inbound>,
) -> std::io::Result<(MqttHandle, std::thread::JoinHandle<()>)> {
    use std::io::{Error, ErrorKind};
    if opts.connections == 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "connections must be >= 1",
        ));
    }
    if opts.max_packet_size < 64 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "max_packet_size too small",
        ));
    }
    let tls = tls_for(&opts)?;
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
    let (tx, rx) = crossbeam_channel::bounded(opts.buffer_messages.max(1));
    let shared = Arc::new(Shared {
        waker,
        sleeping: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        flush_timeout_ms: AtomicU64::new(0),
        done: Mutex::new(false),
        done_cv: Condvar::new(),
    });
    let stats = Arc::new(MqttStats::default());
    let thread = IoThread {
        opts,
        inbound,
        poll,
        rx,
        shared: shared.clone(),
        stats: stats.clone(),
        tls,
    };
    let join = std::thread::Builder::new()
        .name("mqtt-io".into())
        .spawn(move || thread.run())?;
    Ok((MqttHandle { tx, shared, stats }, join))
}
