//! One device thread: a share of the simulated devices behind one IP_PKTINFO
//! socket. It registers its devices at the paced rate, retransmits confirmable
//! requests with RFC 7252 timing (ACK_TIMEOUT 2 s × random factor 1.5, doubling,
//! MAX_RETRANSMIT 4), sends Updates and notifications in steady state, and answers
//! every request of the gateway like a real client (`lwm2m_gateway::sim::client`),
//! remembering observations so it can notify on them.
//!
//! Queue-mode devices (`--queue-mode`) send nothing between their Updates; each
//! one knows when it last spoke, so it can tell whether a request of the gateway
//! reached it awake, and it measures how long each MQTT command waited for it.
//! DTLS devices (`--dtls`) each run a dimpl PSK client: the handshake comes
//! first, then every CoAP message goes through the session (records in and out
//! on the same IP_PKTINFO socket, demultiplexed by the device's address).
//!
//! The thread follows the run's phase (set by the conductor in `run.rs`); it
//! never blocks except in `poll`.

use crate::stats::{add, Hist};
use crate::Shared;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::sim::{client, device_addr, device_index};
use mio::{Events, Interest, Poll, Token};
use netio::{RecvBatchPktinfo, SendBatchPktinfo};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PHASE_REGISTER: u8 = 0;
pub const PHASE_OBSERVE_WAIT: u8 = 1;
pub const PHASE_STEADY: u8 = 2;
pub const PHASE_DRAIN: u8 = 3;
pub const PHASE_DEREGISTER: u8 = 4;
pub const PHASE_DONE: u8 = 5;

const ACK_TIMEOUT_US: u64 = 2_000_000;
const MAX_RETRANSMIT: u8 = 4;
/// Queue mode: a request arriving this long after the device's awake window
/// ended counts as "while asleep" (the gateway's window starts when it receives
/// the device's message, a little after the device sent it).
const AWAKE_SLACK_US: u64 = 1_000_000;
const OBJECTS: &str = "</1/0>,</2/0>,</3/0>,</4/0>,</5/0>,</6/0>,</7/0>,</3303/0>";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Update,
    Deregister,
    Notify,
}

struct Pending {
    kind: Kind,
    mid: u16,
    first_us: u64,
    tries: u8,
    timeout_us: u64,
    bytes: Box<[u8]>,
}

struct Obs {
    token: [u8; 8],
    tkl: u8,
    path: [u16; 4],
    plen: u8,
}

impl Obs {
    fn path(&self) -> &[u16] {
        &self.path[..self.plen as usize]
    }
    fn token(&self) -> &[u8] {
        &self.token[..self.tkl as usize]
    }
}

#[derive(Default)]
struct Dev {
    location: Option<Box<str>>,
    pending: Option<Box<Pending>>,
    obs: Vec<Obs>,
    seq: u32,
    in_observed: bool,
    /// When the device last sent anything, and when it last woke (sent after
    /// its awake window had ended); queue mode.
    last_sent_us: Option<u64>,
    woke_us: u64,
    dtls: Option<Box<DtlsConn>>,
    /// Registers this device sent again after a 5.03.
    reg_retries: u8,
    /// Its De-register went out (the deregister phase).
    dereg_sent: bool,
}

/// A device's DTLS session.
struct DtlsConn {
    conn: dimpl::Dtls,
    started_us: u64,
    /// The timer dimpl asked for (u64::MAX: none armed).
    due_us: u64,
    connected: bool,
    failed: bool,
    /// `--dtls-resume`: this handshake replaces an earlier session (offered for
    /// resumption); the device is registered already.
    reconnect: bool,
}

enum DtlsEvent {
    Connected,
    Data(Vec<u8>),
}

/// Histograms a worker fills; merged by the conductor at the end.
#[derive(Default)]
pub struct WorkerHists {
    pub register: Hist,
    pub update: Hist,
    pub notify_ack: Hist,
    /// DTLS handshake durations.
    pub handshake: Hist,
    /// Queue mode: MQTT publish → the command reaching the device.
    pub queue_wait: Hist,
}

pub struct Worker {
    sock: mio::net::UdpSocket,
    poll: Poll,
    recv: RecvBatchPktinfo,
    st: State,
}

struct State {
    send: SendBatchPktinfo,
    gateway: SocketAddrV4,
    /// Global index of local device 0.
    base: u32,
    devs: Vec<Dev>,
    heap: BinaryHeap<Reverse<(u64, u32, u16)>>,
    /// Registers to send again after a 5.03: (when, local index).
    reg_retry: BinaryHeap<Reverse<(u64, u32)>>,
    mid: u16,
    rng: u64,
    sh: Arc<Shared>,
    hists: WorkerHists,
    /// Local indices of devices with at least one observation.
    observed: Vec<u32>,
    obs_cursor: usize,
    reg_next: usize,
    reg_rate: f64,
    reg_start_us: Option<u64>,
    upd_cursor: usize,
    upd_round: u64,
    notify_done: u64,
    notify_rate: f64,
    notify_con: bool,
    dereg_queued: bool,
    buf: Vec<u8>,
    queue_mode: bool,
    qwindow_us: u64,
    /// DTLS: the key, dimpl's timers (lazy: stale entries are skipped), the
    /// handshake deadlines (in start order), events to handle after a drain,
    /// and the output buffer of `poll_output`.
    psk_key: Option<Vec<u8>>,
    dtls_timers: BinaryHeap<Reverse<(u64, u32)>>,
    hs_deadlines: VecDeque<(u64, u32)>,
    hs_timeout_us: u64,
    events: VecDeque<(u32, DtlsEvent)>,
    dbuf: Vec<u8>,
}

impl Worker {
    /// Devices `base .. base + count` (global address indices).
    pub fn new(sh: Arc<Shared>, base: u32, count: usize, threads: usize) -> io::Result<Self> {
        let SocketAddr::V4(gateway) = sh.opts.gateway else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the gateway address must be IPv4",
            ));
        };
        let opts = netio::SocketOptions {
            reuse_port: false,
            rcvbuf: 32 << 20,
            sndbuf: 32 << 20,
        };
        let std_sock = netio::bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), &opts)?;
        netio::enable_pktinfo(&std_sock)?;
        let mut sock = mio::net::UdpSocket::from_std(std_sock);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, Token(0), Interest::READABLE)?;
        let threads = threads.max(1) as f64;
        let psk_key = if sh.opts.dtls {
            Some(crate::dtls::key(&sh.opts)?)
        } else {
            None
        };
        let st = State {
            send: SendBatchPktinfo::new(512),
            gateway,
            base,
            devs: (0..count).map(|_| Dev::default()).collect(),
            heap: BinaryHeap::new(),
            reg_retry: BinaryHeap::new(),
            mid: (base as u16).wrapping_mul(7919),
            rng: 0x9e37_79b9_7f4a_7c15 ^ base as u64,
            hists: WorkerHists::default(),
            observed: Vec::new(),
            obs_cursor: 0,
            reg_next: 0,
            reg_rate: sh.opts.rate / threads,
            reg_start_us: None,
            upd_cursor: 0,
            upd_round: 0,
            notify_done: 0,
            notify_rate: sh.opts.notify_rate / threads,
            notify_con: sh.opts.notify_con,
            dereg_queued: false,
            buf: Vec::with_capacity(256),
            queue_mode: sh.opts.queue_mode,
            qwindow_us: (sh.opts.qmode_window.max(0.0) * 1e6) as u64,
            psk_key,
            dtls_timers: BinaryHeap::new(),
            hs_deadlines: VecDeque::new(),
            hs_timeout_us: (sh.opts.handshake_timeout.max(0.1) * 1e6) as u64,
            events: VecDeque::new(),
            dbuf: vec![0; 16 << 10],
            sh,
        };
        Ok(Self {
            sock,
            poll,
            recv: RecvBatchPktinfo::new(512, 4096),
            st,
        })
    }

    /// Runs until the phase is DONE; returns the histograms.
    pub fn run(mut self) -> io::Result<WorkerHists> {
        let mut events = Events::with_capacity(16);
        let mut busy = false;
        loop {
            let phase = self.st.sh.phase.load(Ordering::Acquire);
            if phase == PHASE_DONE {
                break;
            }
            let now = self.st.sh.clock.us();
            self.st.tick(phase, now);
            self.st.flush(&self.sock);
            let wait = if busy || !self.st.send.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            };
            self.poll.poll(&mut events, Some(wait))?;
            busy = self.receive()?;
            self.st.flush(&self.sock);
        }
        Ok(self.st.hists)
    }

    /// Drains the socket (bounded); true when it may hold more.
    fn receive(&mut self) -> io::Result<bool> {
        for _ in 0..32 {
            let n = match self.recv.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            let now = self.st.sh.clock.us();
            for k in 0..n {
                let (_, dst, data, truncated) = self.recv.get(k);
                if !truncated {
                    self.st.on_datagram(now, dst, data);
                }
            }
            self.st.flush(&self.sock);
        }
        Ok(true)
    }
}

impl State {
    fn next_mid(&mut self) -> u16 {
        self.mid = self.mid.wrapping_add(1);
        self.mid
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn addr(&self, li: usize) -> Ipv4Addr {
        device_addr(self.base + li as u32)
    }

    fn flush(&mut self, sock: &mio::net::UdpSocket) {
        let before = self.send.failed();
        let _ = self.send.flush(sock);
        let failed = self.send.failed() - before;
        if failed > 0 {
            add(&self.sh.c.send_failed, failed);
        }
    }

    fn tick(&mut self, phase: u8, now: u64) {
        match phase {
            PHASE_REGISTER => self.register_some(now),
            PHASE_STEADY => {
                let start = self.sh.steady_start_us.load(Ordering::Acquire);
                self.updates(now, start);
                if !self.queue_mode {
                    self.notifications(now, start);
                }
            }
            // Queued commands reach the devices only at their next Update.
            PHASE_DRAIN if self.queue_mode => {
                let start = self.sh.steady_start_us.load(Ordering::Acquire);
                self.updates(now, start);
            }
            // A device with a request still in flight (an Update that left just
            // before the phase began, behind a DTLS resumption) de-registers once it is
            // answered or given up: the phase ends when every registered device's
            // De-register went out.
            PHASE_DEREGISTER if !self.dereg_queued => {
                let mut waiting = false;
                for li in 0..self.devs.len() {
                    let d = &self.devs[li];
                    if d.location.is_none() || d.dereg_sent {
                        continue;
                    }
                    if d.pending.is_some() {
                        waiting = true;
                        continue;
                    }
                    self.devs[li].dereg_sent = true;
                    self.start_registration_request(li, Kind::Deregister, now);
                }
                if !waiting {
                    self.dereg_queued = true;
                    add(&self.sh.dereg_queued, 1);
                }
            }
            _ => {}
        }
        self.retransmit(now);
        self.retry_registers(now);
        if self.psk_key.is_some() {
            self.dtls_timers(now);
        }
    }

    fn register_some(&mut self, now: u64) {
        let start = *self.reg_start_us.get_or_insert(now);
        let n = self.devs.len();
        let allowed = if self.reg_rate > 0.0 {
            (((now - start) as f64 / 1e6 * self.reg_rate) as usize + 1).min(n)
        } else {
            n
        };
        let mut burst = 0;
        while self.reg_next < allowed && burst < 512 {
            let li = self.reg_next;
            self.reg_next += 1;
            burst += 1;
            if self.psk_key.is_some() {
                // The Register follows the handshake.
                self.start_handshake(li, now);
            } else {
                self.send_register(li, now);
            }
        }
    }

    /// Sends the Registers whose retry after a 5.03 is due.
    fn retry_registers(&mut self, now: u64) {
        while let Some(&Reverse((due, li))) = self.reg_retry.peek() {
            if due > now {
                return;
            }
            self.reg_retry.pop();
            let li = li as usize;
            if self.devs[li].pending.is_none() && self.devs[li].location.is_none() {
                self.send_register(li, now);
            }
        }
    }

    /// A Register answered 5.03: true when the device will send it again (after
    /// Max-Age, 60 s when absent, plus up to half of it at random).
    fn schedule_register_retry(&mut self, li: usize, now: u64, msg: &Message<'_>) -> bool {
        if self.devs[li].reg_retries >= self.sh.opts.register_retries {
            return false;
        }
        self.devs[li].reg_retries += 1;
        let max_age = msg
            .option_values(opt::MAX_AGE)
            .next()
            .map_or(60, |v| v.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
        let wait_us = max_age.max(1) * 1_000_000;
        let due = now + wait_us + self.rand() % (wait_us / 2 + 1);
        self.reg_retry.push(Reverse((due, li as u32)));
        true
    }

    fn send_register(&mut self, li: usize, now: u64) {
        self.buf.clear();
        let mid = self.next_mid();
        let o = &self.sh.opts;
        let name = crate::dtls::endpoint(o, self.base + li as u32);
        let mut w = MessageWriter::new(
            &mut self.buf,
            MsgType::Con,
            codes::POST,
            mid,
            &mid.to_be_bytes(),
        );
        // Queue mode: the binding's Q in LwM2M 1.0, the Q parameter from 1.1 on.
        let v10 = o.lwm2m == "1.0";
        let binding: &[u8] = if o.queue_mode && v10 { b"b=UQ" } else { b"b=U" };
        w.option(opt::URI_PATH, b"rd")
            .option_uint(opt::CONTENT_FORMAT, 40)
            .option(opt::URI_QUERY, format!("ep={name}").as_bytes())
            .option(opt::URI_QUERY, format!("lt={}", o.lifetime).as_bytes())
            .option(opt::URI_QUERY, format!("lwm2m={}", o.lwm2m).as_bytes())
            .option(opt::URI_QUERY, binding);
        if o.queue_mode && !v10 {
            w.option(opt::URI_QUERY, b"Q");
        }
        w.payload(OBJECTS.as_bytes());
        let bytes = self.buf.clone().into_boxed_slice();
        self.start(li, Kind::Register, mid, bytes, now);
        add(&self.sh.c.reg_sent, 1);
    }

    fn instant(&self, us: u64) -> Instant {
        self.sh.clock.0 + Duration::from_micros(us)
    }

    /// Starts the device's DTLS handshake (identity = its endpoint name).
    fn start_handshake(&mut self, li: usize, now: u64) {
        self.start_handshake_offering(li, now, None);
    }

    /// `--dtls-resume`: the device drops its session and handshakes again,
    /// offering it for resumption; what it sends meanwhile waits in dimpl.
    fn reconnect_dtls(&mut self, li: usize, now: u64) {
        let Some(d) = self.devs[li].dtls.as_ref() else {
            return;
        };
        if d.failed || !d.connected {
            return;
        }
        let offer = d.conn.resumption();
        add(&self.sh.c.hs_reconnects, 1);
        self.start_handshake_offering(li, now, offer.as_ref());
    }

    fn start_handshake_offering(&mut self, li: usize, now: u64, offer: Option<&dimpl::Resumption>) {
        add(&self.sh.c.hs_started, 1);
        let name = crate::dtls::endpoint(&self.sh.opts, self.base + li as u32);
        let key = self.psk_key.as_deref().unwrap_or_default();
        let config = match crate::dtls::client_config(name.as_bytes(), key) {
            Ok(c) => c,
            Err(_) => {
                add(&self.sh.c.hs_failed, 1);
                add(&self.sh.c.reg_failed, 1);
                return;
            }
        };
        let at = self.instant(now);
        let mut conn = dimpl::Dtls::new_12_psk(config, at);
        conn.set_active(true);
        if self.sh.opts.dtls_cid {
            conn.set_connection_id(&[]);
        }
        if let Some(r) = offer {
            conn.offer_resumption(r);
        }
        let ok = conn.handle_timeout(at).is_ok();
        self.devs[li].dtls = Some(Box::new(DtlsConn {
            conn,
            started_us: now,
            due_us: u64::MAX,
            connected: false,
            failed: false,
            reconnect: self.devs[li].dtls.is_some(),
        }));
        if !ok {
            self.fail_dtls(li);
            return;
        }
        self.hs_deadlines
            .push_back((now + self.hs_timeout_us, li as u32));
        self.drain_dtls(li);
        self.process_events(now);
    }

    /// The session is unusable: a failed handshake fails the registration too.
    fn fail_dtls(&mut self, li: usize) {
        let Some(d) = self.devs[li].dtls.as_mut() else {
            return;
        };
        if d.failed {
            return;
        }
        d.failed = true;
        if d.connected {
            add(&self.sh.c.dtls_session_errors, 1);
        } else {
            add(&self.sh.c.hs_failed, 1);
            add(&self.sh.c.reg_failed, 1);
        }
    }

    /// Sends what dimpl has for the device and queues its events.
    fn drain_dtls(&mut self, li: usize) {
        let from = self.addr(li);
        let base = self.sh.clock.0;
        let Some(d) = self.devs[li].dtls.as_mut() else {
            return;
        };
        loop {
            match d.conn.poll_output(&mut self.dbuf) {
                dimpl::Output::Packet(p) => self.send.push(from, self.gateway, p),
                dimpl::Output::Connected => {
                    d.connected = true;
                    self.events.push_back((li as u32, DtlsEvent::Connected));
                }
                dimpl::Output::ApplicationData(a) => {
                    self.events
                        .push_back((li as u32, DtlsEvent::Data(a.to_vec())));
                }
                dimpl::Output::Timeout(t) => {
                    let due = t.saturating_duration_since(base).as_micros() as u64;
                    if due != d.due_us {
                        d.due_us = due;
                        self.dtls_timers.push(Reverse((due, li as u32)));
                    }
                    return;
                }
                dimpl::Output::BufferTooSmall { needed } => {
                    let n = needed.max(self.dbuf.len() * 2);
                    self.dbuf.resize(n, 0);
                }
                _ => {}
            }
        }
    }

    /// Connected sessions register; decrypted CoAP messages are handled.
    fn process_events(&mut self, now: u64) {
        while let Some((li, ev)) = self.events.pop_front() {
            let li = li as usize;
            match ev {
                DtlsEvent::Connected => {
                    let Some(d) = self.devs[li].dtls.as_ref() else {
                        continue;
                    };
                    let (started, reconnect) = (d.started_us, d.reconnect);
                    if d.conn.is_resumed() {
                        add(&self.sh.c.hs_resumed, 1);
                    }
                    add(&self.sh.c.hs_ok, 1);
                    self.hists.handshake.record(now.saturating_sub(started));
                    if !reconnect {
                        self.send_register(li, now);
                    }
                }
                DtlsEvent::Data(data) => self.on_coap(li, now, &data),
            }
        }
    }

    /// dimpl's timers (handshake retransmissions) and the handshake deadlines.
    fn dtls_timers(&mut self, now: u64) {
        while let Some(&Reverse((due, li))) = self.dtls_timers.peek() {
            if due > now {
                break;
            }
            self.dtls_timers.pop();
            let li = li as usize;
            let at = self.instant(now);
            let Some(d) = self.devs[li].dtls.as_mut() else {
                continue;
            };
            if d.due_us != due || d.failed {
                continue;
            }
            d.due_us = u64::MAX;
            if d.conn.handle_timeout(at).is_err() {
                self.fail_dtls(li);
                continue;
            }
            self.drain_dtls(li);
            // A deadline dimpl names that is already due is looked at again in a
            // millisecond, not in this loop (which would then never end).
            if let Some(d) = self.devs[li].dtls.as_mut() {
                if d.due_us <= now {
                    d.due_us = now + 1_000;
                    self.dtls_timers.push(Reverse((d.due_us, li as u32)));
                }
            }
        }
        while let Some(&(deadline, li)) = self.hs_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hs_deadlines.pop_front();
            let li = li as usize;
            if self.devs[li].dtls.as_ref().is_some_and(|d| !d.connected) {
                self.fail_dtls(li);
            }
        }
        self.process_events(now);
    }

    /// Sends a CoAP message from the device: in clear, or through its session.
    fn emit(&mut self, li: usize, now: u64, coap: &[u8]) {
        let d = &mut self.devs[li];
        if d.last_sent_us.is_none_or(|t| now > t + self.qwindow_us) {
            d.woke_us = now;
        }
        d.last_sent_us = Some(now);
        match d.dtls.as_mut() {
            None => {
                let from = self.addr(li);
                self.send.push(from, self.gateway, coap);
            }
            Some(c) if c.failed || (!c.connected && !c.reconnect) => {}
            Some(c) => {
                if c.conn.send_application_data(coap).is_err() {
                    self.fail_dtls(li);
                    return;
                }
                self.drain_dtls(li);
            }
        }
    }

    /// [`emit`](Self::emit) of `self.buf`.
    fn emit_buf(&mut self, li: usize, now: u64) {
        let b = std::mem::take(&mut self.buf);
        self.emit(li, now, &b);
        self.buf = b;
    }

    /// Updates: every registered device once per `lifetime × fraction`, spread evenly.
    fn updates(&mut self, now: u64, start: u64) {
        let f = self.sh.opts.update_fraction;
        let n = self.devs.len();
        if f <= 0.0 || n == 0 {
            return;
        }
        let interval = (self.sh.opts.lifetime as f64 * f * 1e6) as u64;
        let mut burst = 0;
        loop {
            let due =
                start + self.upd_round * interval + interval * self.upd_cursor as u64 / n as u64;
            if due > now || burst >= 512 {
                return;
            }
            let li = self.upd_cursor;
            self.upd_cursor += 1;
            if self.upd_cursor == n {
                self.upd_cursor = 0;
                self.upd_round += 1;
            }
            burst += 1;
            if self.devs[li].location.is_some() && self.devs[li].pending.is_none() {
                if self.sh.opts.dtls_resume {
                    self.reconnect_dtls(li, now);
                }
                self.start_registration_request(li, Kind::Update, now);
                add(&self.sh.c.updates_sent, 1);
            }
        }
    }

    fn start_registration_request(&mut self, li: usize, kind: Kind, now: u64) {
        let Some(loc) = self.devs[li].location.clone() else {
            return;
        };
        let mid = self.next_mid();
        let code = if kind == Kind::Deregister {
            codes::DELETE
        } else {
            codes::POST
        };
        self.buf.clear();
        let mut w = MessageWriter::new(&mut self.buf, MsgType::Con, code, mid, &mid.to_be_bytes());
        w.option(opt::URI_PATH, b"rd")
            .option(opt::URI_PATH, loc.as_bytes());
        w.finish();
        let bytes = self.buf.clone().into_boxed_slice();
        self.start(li, kind, mid, bytes, now);
    }

    /// Notifications at the thread's share of the rate, round-robin over the observed devices.
    fn notifications(&mut self, now: u64, start: u64) {
        if self.notify_rate <= 0.0 || self.observed.is_empty() {
            return;
        }
        let target = ((now - start) as f64 / 1e6 * self.notify_rate) as u64;
        let mut burst = 0;
        while self.notify_done < target && burst < 1024 {
            let mut tried = 0;
            let li = loop {
                if tried == self.observed.len() {
                    // Every observed device has a notification in flight.
                    self.notify_done = target;
                    return;
                }
                tried += 1;
                self.obs_cursor = (self.obs_cursor + 1) % self.observed.len();
                let li = self.observed[self.obs_cursor] as usize;
                let d = &self.devs[li];
                let busy = self.notify_con && d.pending.is_some();
                if !d.obs.is_empty() && !busy {
                    break li;
                }
            };
            self.notify_done += 1;
            burst += 1;
            self.notify(li, now);
        }
    }

    fn notify(&mut self, li: usize, now: u64) {
        let mid = self.next_mid();
        let global = self.base + li as u32;
        let d = &mut self.devs[li];
        d.seq = (d.seq + 1) & 0xff_ffff;
        let seq = d.seq;
        let o = &d.obs[seq as usize % d.obs.len()];
        let mtype = if self.notify_con {
            MsgType::Con
        } else {
            MsgType::Non
        };
        self.buf.clear();
        client::write_notification(
            mtype,
            mid,
            o.token(),
            seq,
            o.path(),
            global,
            seq,
            &mut self.buf,
        );
        if let Some(t) = &self.sh.notify_sent {
            t.insert(global, seq, now);
        }
        add(&self.sh.c.notify_sent, 1);
        if self.notify_con {
            let bytes = self.buf.clone().into_boxed_slice();
            self.start(li, Kind::Notify, mid, bytes, now);
        } else {
            self.emit_buf(li, now);
        }
    }

    /// Sends a confirmable request and arms its retransmission timer.
    fn start(&mut self, li: usize, kind: Kind, mid: u16, bytes: Box<[u8]>, now: u64) {
        self.emit(li, now, &bytes);
        let timeout = ACK_TIMEOUT_US + self.rand() % (ACK_TIMEOUT_US / 2);
        self.heap.push(Reverse((now + timeout, li as u32, mid)));
        if self.devs[li].pending.is_none() {
            add(&self.sh.pending, 1);
        }
        self.devs[li].pending = Some(Box::new(Pending {
            kind,
            mid,
            first_us: now,
            tries: 0,
            timeout_us: timeout,
            bytes,
        }));
    }

    fn retransmit(&mut self, now: u64) {
        while let Some(&Reverse((due, li, mid))) = self.heap.peek() {
            if due > now {
                return;
            }
            self.heap.pop();
            let li = li as usize;
            let Some(p) = self.devs[li].pending.as_mut() else {
                continue;
            };
            if p.mid != mid {
                continue;
            }
            if p.tries >= MAX_RETRANSMIT {
                let kind = p.kind;
                self.devs[li].pending = None;
                add(&self.sh.pending_done, 1);
                let c = &self.sh.c;
                match kind {
                    Kind::Register => add(&c.reg_timed_out, 1),
                    Kind::Update => add(&c.updates_timed_out, 1),
                    Kind::Notify => add(&c.notify_timed_out, 1),
                    Kind::Deregister => {}
                }
                continue;
            }
            p.tries += 1;
            p.timeout_us *= 2;
            let due = now + p.timeout_us;
            let bytes = p.bytes.clone();
            self.emit(li, now, &bytes);
            self.heap.push(Reverse((due, li as u32, mid)));
            add(&self.sh.c.retransmissions, 1);
        }
    }

    fn on_datagram(&mut self, now: u64, dst: Ipv4Addr, data: &[u8]) {
        let Some(g) = device_index(dst) else { return };
        let Some(li) = g.checked_sub(self.base).map(|l| l as usize) else {
            return;
        };
        if li >= self.devs.len() {
            return;
        }
        if self.psk_key.is_some() {
            let at = self.instant(now);
            let Some(d) = self.devs[li].dtls.as_mut() else {
                return;
            };
            if d.failed {
                return;
            }
            if d.conn.handle_timeout(at).is_err() {
                self.fail_dtls(li);
                return;
            }
            if d.conn.handle_packet(data).is_err() {
                add(&self.sh.c.dtls_bad_records, 1);
            }
            self.drain_dtls(li);
            self.process_events(now);
        } else {
            self.on_coap(li, now, data);
        }
    }

    /// A CoAP message for the device (received in clear or decrypted).
    fn on_coap(&mut self, li: usize, now: u64, data: &[u8]) {
        let g = self.base + li as u32;
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        if msg.is_request() {
            self.on_request(li, g, now, &msg);
        } else if matches!(msg.mtype, MsgType::Ack | MsgType::Rst) {
            self.on_answer(li, now, &msg);
        } else if msg.mtype == MsgType::Con {
            // A separate response or ping: acknowledge it.
            self.buf.clear();
            MessageWriter::new(&mut self.buf, MsgType::Ack, codes::EMPTY, msg.mid, &[]).finish();
            self.emit_buf(li, now);
        }
    }

    fn on_answer(&mut self, li: usize, now: u64, msg: &Message<'_>) {
        let d = &mut self.devs[li];
        match &d.pending {
            Some(p) if p.mid == msg.mid => {}
            _ => return,
        }
        let p = d.pending.take().expect("checked");
        add(&self.sh.pending_done, 1);
        let lat = now.saturating_sub(p.first_us);
        let reset = msg.mtype == MsgType::Rst;
        let c = &self.sh.c;
        match p.kind {
            Kind::Register => {
                if !reset && msg.code == codes::CREATED {
                    let segs: Vec<_> = msg.option_values(opt::LOCATION_PATH).collect();
                    if segs.len() == 2 && segs[0] == b"rd" {
                        d.location = std::str::from_utf8(segs[1]).ok().map(Into::into);
                    }
                    add(&c.reg_ok, 1);
                    self.hists.register.record(lat);
                    if let Ok(mut r) = self.sh.registered.lock() {
                        r.push(self.base + li as u32);
                    }
                } else if !reset && msg.code == codes::SERVICE_UNAVAILABLE {
                    add(&c.reg_unavailable, 1);
                    if self.schedule_register_retry(li, now, msg) {
                        add(&self.sh.c.reg_retried, 1);
                    } else {
                        add(&self.sh.c.reg_failed, 1);
                    }
                } else {
                    add(&c.reg_failed, 1);
                }
            }
            Kind::Update => {
                if !reset && msg.code == codes::CHANGED {
                    add(&c.updates_ok, 1);
                    self.hists.update.record(lat);
                } else {
                    add(&c.updates_failed, 1);
                    if msg.code == codes::NOT_FOUND {
                        d.location = None;
                    }
                }
            }
            Kind::Deregister => {
                if !reset && msg.code == codes::DELETED {
                    add(&c.dereg_ok, 1);
                }
                d.location = None;
            }
            Kind::Notify => {
                if reset {
                    // The gateway no longer wants this observation (RFC 7641 §3.6).
                    let token = Message::parse(&p.bytes).map(|m| m.token.to_vec());
                    if let Ok(t) = token {
                        d.obs.retain(|o| o.token() != t.as_slice());
                    }
                    add(&c.notify_reset, 1);
                } else {
                    add(&c.notify_acked, 1);
                    self.hists.notify_ack.record(lat);
                }
            }
        }
    }

    fn on_request(&mut self, li: usize, g: u32, now: u64, msg: &Message<'_>) {
        add(&self.sh.c.server_requests, 1);
        if self.queue_mode {
            self.queue_mode_request(li, g, now, msg);
        }
        let d = &mut self.devs[li];
        let a = client::answer(msg, g, d.seq);
        if let Some(path) = &a.start_observe {
            let mut o = Obs {
                token: [0; 8],
                tkl: msg.token.len() as u8,
                path: [0; 4],
                plen: path.len() as u8,
            };
            o.token[..msg.token.len()].copy_from_slice(msg.token);
            o.path[..path.len()].copy_from_slice(path);
            d.obs.retain(|x| x.path() != path.as_slice());
            d.obs.push(o);
            add(&self.sh.c.observations, 1);
            if !d.in_observed {
                d.in_observed = true;
                self.observed.push(li as u32);
            }
        }
        if let Some(path) = &a.cancel_observe {
            d.obs.retain(|x| x.path() != path.as_slice());
        }
        let mid = self.next_mid();
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        client::write_response(msg, &a, mid, &mut b);
        self.emit(li, now, &b);
        self.buf = b;
    }

    /// Queue mode: was the device awake, and if this is one of the driver's
    /// commands (a GET without Observe), how long did it wait?
    fn queue_mode_request(&mut self, li: usize, g: u32, now: u64, msg: &Message<'_>) {
        let d = &self.devs[li];
        let awake = d
            .last_sent_us
            .is_some_and(|t| now <= t + self.qwindow_us + AWAKE_SLACK_US);
        let c = &self.sh.c;
        if !awake {
            add(&c.requests_while_asleep, 1);
        }
        let command = msg.code == codes::GET && msg.option_uint(opt::OBSERVE).is_none();
        let Some(t) = self
            .sh
            .cmd_queued
            .as_ref()
            .filter(|_| command)
            .and_then(|q| q.pop(g))
        else {
            return;
        };
        add(&c.cmd_delivered, 1);
        if !awake {
            add(&c.cmd_delivered_asleep, 1);
        }
        if t < d.woke_us {
            // Published before the device woke: the gateway held it.
            add(&c.cmd_held, 1);
        }
        self.hists.queue_wait.record(now.saturating_sub(t));
    }
}
