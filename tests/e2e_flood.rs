//! A flood of junk and half registrations from many spoofed loopback addresses at the
//! running binary (plain CoAP), while real devices register and update:
//! - the real devices are all served and their messages all reach MQTT, once each;
//! - the gateway never sends a flooding address more bytes than it sent (counted per
//!   address from the replies that come back to the flood socket);
//! - its resident memory stays under a fixed bound, far below what the flood would cost
//!   if anything were kept per address;
//! - every kind of flood datagram is counted in `/metrics`.

mod common;

use common::fleet::fleet_from;
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use lwm2m_gateway::sim::device_addr;
use netio::{RecvBatchPktinfo, SendBatchPktinfo};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// Flooding addresses start at `device_addr(FLOOD_BASE)` (127.14.x.y), far from the
/// real devices' (127.10.x.y).
const FLOOD_BASE: u32 = 4 * 64_516;
/// Spoofed source addresses, each sending one flood datagram (Block1 starters three).
const ADDRESSES: u32 = 120_000;
/// Datagrams sent before waiting for the replies they are due, so the gateway's socket
/// buffers never overflow and every count below is exact.
const ROUND: usize = 2_000;
/// Payload bytes of the large Block1 starters.
const BIG_BLOCK: usize = 1024;
/// `blockwise.max_body_size` of the test gateway: partial bodies are capped at 16 times
/// this per shard.
const MAX_BODY: u64 = 64 * 1024;
/// How far the gateway's VmRSS may grow during the flood. If it kept only the large
/// Block1 bodies per address it would grow by about 3 × ADDRESSES / 8 × 1 KiB ≈ 44 MiB.
const RSS_GROWTH_BOUND_KIB: u64 = 24 * 1024;

/// What one flooding address sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// Random bytes with CoAP version 0: dropped, no reply.
    BadVersion,
    /// A CON header followed by a reserved option nibble: answered with a 4-byte RST.
    BadOption,
    /// An empty CON (CoAP ping): RST.
    Ping,
    /// An ACK and a RST for nothing: dropped, no reply.
    Orphan,
    /// A Register without `ep`: 4.00 with a diagnostic no longer than the request.
    NoEndpoint,
    /// CON requests to unknown locations: 4.04.
    UnknownLocation,
    /// Block 0 (M=1, 1024 bytes) of three different Registers, never continued.
    BigBlock0,
    /// Block 0 (M=1, 16 bytes) of a Register, never continued.
    TinyBlock0,
}

const KINDS: [Kind; 8] = [
    Kind::BadVersion,
    Kind::BadOption,
    Kind::Ping,
    Kind::Orphan,
    Kind::NoEndpoint,
    Kind::UnknownLocation,
    Kind::BigBlock0,
    Kind::TinyBlock0,
];

/// A deterministic pseudo-random stream (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The datagrams flooding address number `i` sends, and how many replies they are due.
fn datagrams(kind: Kind, i: u32, rng: &mut Rng) -> (Vec<Vec<u8>>, usize) {
    let mid = (i % 65_536) as u16;
    let token = i.to_be_bytes();
    let req = |code: u8, build: &dyn Fn(MessageWriter<'_>)| {
        let mut buf = Vec::new();
        build(MessageWriter::new(
            &mut buf,
            MsgType::Con,
            code,
            mid,
            &token,
        ));
        buf
    };
    match kind {
        Kind::BadVersion => {
            let len = 1 + (rng.next() % 48) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            b[0] &= 0x3f;
            (vec![b], 0)
        }
        Kind::BadOption => {
            let mut b = vec![0x40, codes::POST, (mid >> 8) as u8, mid as u8, 0xf1];
            b.extend((0..rng.next() % 16).map(|_| rng.next() as u8));
            (vec![b], 1)
        }
        Kind::Ping => {
            let mut b = Vec::new();
            MessageWriter::new(&mut b, MsgType::Con, codes::EMPTY, mid, &[]).finish();
            (vec![b], 1)
        }
        Kind::Orphan => {
            let mut ack = Vec::new();
            MessageWriter::new(&mut ack, MsgType::Ack, codes::CONTENT, mid, &token)
                .payload(b"nobody asked");
            let mut rst = Vec::new();
            MessageWriter::new(&mut rst, MsgType::Rst, codes::EMPTY, mid ^ 1, &[]).finish();
            (vec![ack, rst], 0)
        }
        Kind::NoEndpoint => {
            let b = req(codes::POST, &|mut w| {
                w.option(opt::URI_PATH, b"rd")
                    .option_uint(opt::CONTENT_FORMAT, 40)
                    .option(opt::URI_QUERY, b"lt=60")
                    .option(opt::URI_QUERY, b"lwm2m=1.1");
                w.payload(b"</3/0>");
            });
            (vec![b], 1)
        }
        Kind::UnknownLocation => {
            let loc = format!("{:x}", rng.next() as u32);
            let a = req(codes::POST, &|mut w| {
                w.option(opt::URI_PATH, b"rd")
                    .option(opt::URI_PATH, loc.as_bytes());
            });
            let b = req(codes::GET, &|mut w| {
                w.option(opt::URI_PATH, b"x").option(opt::URI_PATH, b"y");
            });
            (vec![a, b], 2)
        }
        Kind::BigBlock0 | Kind::TinyBlock0 => {
            let (szx, len, bodies) = if kind == Kind::BigBlock0 {
                (6, BIG_BLOCK, 3)
            } else {
                (0, 16, 1)
            };
            let block = BlockOpt {
                num: 0,
                more: true,
                szx,
            }
            .encode();
            let payload = vec![b'<'; len];
            let out = (0..bodies)
                .map(|k| {
                    let ep = format!("ep=half{i}-{k}");
                    let mut buf = Vec::new();
                    let mut w = MessageWriter::new(
                        &mut buf,
                        MsgType::Con,
                        codes::POST,
                        mid.wrapping_add(k as u16),
                        &token,
                    );
                    w.option(opt::URI_PATH, b"rd")
                        .option_uint(opt::CONTENT_FORMAT, 40)
                        .option(opt::URI_QUERY, ep.as_bytes())
                        .option_uint(opt::BLOCK1, block)
                        .option_uint(opt::SIZE1, 4096);
                    w.payload(&payload);
                    buf
                })
                .collect();
            (out, bodies)
        }
    }
}

/// The flood: one IP_PKTINFO socket speaking for every flooding address, counting bytes
/// both ways per address and replies by code.
struct Flood {
    sock: UdpSocket,
    gw: SocketAddrV4,
    send: SendBatchPktinfo,
    recv: RecvBatchPktinfo,
    sent: HashMap<Ipv4Addr, u64>,
    got: HashMap<Ipv4Addr, u64>,
    replies: HashMap<u8, u64>,
    replies_due: u64,
    replies_got: u64,
}

impl Flood {
    fn new(gw: SocketAddr) -> Self {
        let SocketAddr::V4(gw) = gw else {
            panic!("IPv4 gateway")
        };
        let opts = netio::SocketOptions {
            reuse_port: false,
            rcvbuf: 32 << 20,
            sndbuf: 16 << 20,
        };
        let sock = netio::bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), &opts).unwrap();
        netio::enable_pktinfo(&sock).unwrap();
        Flood {
            sock,
            gw,
            send: SendBatchPktinfo::new(256),
            recv: RecvBatchPktinfo::new(256, 65_536),
            sent: HashMap::new(),
            got: HashMap::new(),
            replies: HashMap::new(),
            replies_due: 0,
            replies_got: 0,
        }
    }

    fn push(&mut self, from: Ipv4Addr, bytes: &[u8]) {
        *self.sent.entry(from).or_default() += bytes.len() as u64;
        self.send.push(from, self.gw, bytes);
        if self.send.len() >= 256 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        while !self.send.is_empty() {
            self.send.flush(&self.sock).unwrap();
            if !self.send.is_empty() {
                self.drain();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert_eq!(self.send.failed(), 0, "the kernel refused flood datagrams");
    }

    /// Reads every reply waiting on the socket.
    fn drain(&mut self) {
        loop {
            let n = match self.recv.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("flood recv: {e}"),
            };
            if n == 0 {
                return;
            }
            for k in 0..n {
                let (_, dst, data, truncated) = self.recv.get(k);
                assert!(!truncated);
                *self.got.entry(dst).or_default() += data.len() as u64;
                let code = Message::parse(data).map(|m| m.code).unwrap_or(0xff);
                *self.replies.entry(code).or_default() += 1;
                self.replies_got += 1;
            }
        }
    }

    /// Waits until every reply due so far has arrived.
    fn settle(&mut self) {
        self.flush();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.replies_got < self.replies_due {
            assert!(
                Instant::now() < deadline,
                "{} of {} replies to the flood arrived",
                self.replies_got,
                self.replies_due
            );
            self.drain();
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

#[test]
fn spoofed_flood_of_junk_and_half_registrations() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        &format!(
            "[engine]\nshards = 2\n\n[blockwise]\nmax_body_size = \"{}KB\"\n",
            MAX_BODY / 1024
        ),
        "",
    );
    let mut mq = MqttClient::subscriber(broker.addr(), "flood-app", "lwm2m/+/up/#", 0);

    // Half the real devices register before the flood, to measure a working baseline.
    const REAL: usize = 500;
    let mut early = fleet_from(gw.udp, "real-a", REAL, 0);
    assert_eq!(
        early
            .register_all(None, Duration::from_secs(60))
            .unwrap()
            .ok,
        REAL
    );
    let mut app_msgs = Vec::new();
    while app_msgs.len() < REAL {
        app_msgs.push(
            mq.recv_publish(Duration::from_secs(10))
                .expect("register message"),
        );
    }
    let before = gw.metrics_when(|m| m.sum("lwm2m_registrations_total", &[]) >= REAL as f64);
    let rss_before = gw.rss_kib();

    // The other half registers, and the first half updates, during the flood.
    let udp = gw.udp;
    let devices = std::thread::spawn(move || {
        let mut late = fleet_from(udp, "real-b", REAL, 1000);
        let reg = late.register_all(None, Duration::from_secs(120)).unwrap();
        let upd = early.update_all(Duration::from_secs(120)).unwrap();
        let upd_late = late.update_all(Duration::from_secs(120)).unwrap();
        (reg, upd, upd_late)
    });

    let mut flood = Flood::new(gw.udp);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut per_kind: HashMap<Kind, u64> = HashMap::new();
    let mut in_round = 0;
    for i in 0..ADDRESSES {
        let kind = KINDS[(i % 8) as usize];
        let from = device_addr(FLOOD_BASE + i);
        let (dgrams, replies) = datagrams(kind, i, &mut rng);
        *per_kind.entry(kind).or_default() += dgrams.len() as u64;
        for d in &dgrams {
            flood.push(from, d);
        }
        flood.replies_due += replies as u64;
        in_round += dgrams.len();
        if in_round >= ROUND {
            flood.settle();
            in_round = 0;
        }
    }
    flood.settle();
    // Anything more than due would show up here.
    std::thread::sleep(Duration::from_millis(500));
    flood.drain();

    let (reg, upd, upd_late) = devices.join().unwrap();
    assert_eq!(
        (reg.ok, upd.ok, upd_late.ok),
        (REAL, REAL, REAL),
        "{reg:?} {upd:?} {upd_late:?}"
    );
    let rss_after = gw.rss_kib();

    // Every real device's register and updates reach MQTT, once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app_msgs.len() < 4 * REAL && Instant::now() < deadline {
        if let Some(m) = mq.recv_publish(Duration::from_secs(1)) {
            app_msgs.push(m);
        }
    }
    while let Some(m) = mq.recv_publish(Duration::from_secs(2)) {
        app_msgs.push(m);
    }
    let mut per_topic: HashMap<&str, usize> = HashMap::new();
    for (t, _) in &app_msgs {
        *per_topic.entry(t.as_str()).or_default() += 1;
    }
    for (prefix, first) in [("real-a", 0), ("real-b", 1000)] {
        for i in first..first + REAL {
            for kind in ["resp", "update"] {
                let t = format!("lwm2m/{prefix}{i}/up/{kind}");
                assert_eq!(per_topic.get(t.as_str()), Some(&1), "{t}");
            }
        }
    }
    assert_eq!(
        app_msgs.len(),
        4 * REAL,
        "no message from the flood reached MQTT"
    );

    // No amplification: per flooding address, and in all.
    assert_eq!(flood.replies_got, flood.replies_due, "{:?}", flood.replies);
    let amplified: Vec<_> = flood
        .got
        .iter()
        .filter(|(a, n)| **n > flood.sent.get(a).copied().unwrap_or(0))
        .take(5)
        .collect();
    assert!(
        amplified.is_empty(),
        "sent more than received to {amplified:?}"
    );
    let (sent, got): (u64, u64) = (flood.sent.values().sum(), flood.got.values().sum());
    assert!(
        got <= sent,
        "{got} bytes of replies for {sent} bytes of flood"
    );
    assert!(
        flood.got.keys().all(|a| flood.sent.contains_key(a)),
        "replies only to addresses that sent"
    );

    // Memory: bounded, though the flood offered far more than the bound to keep.
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "flood: {} datagrams ({sent} bytes) from {ADDRESSES} addresses, {got} bytes of replies \
         {:?}; VmRSS {rss_before} KiB -> {rss_after} KiB",
        per_kind.values().sum::<u64>(),
        flood.replies
    );
    assert!(
        grown <= RSS_GROWTH_BOUND_KIB,
        "VmRSS grew by {grown} KiB ({rss_before} -> {rss_after}) during the flood"
    );

    // Every kind is counted.
    let after = gw.metrics_when(|m| {
        m.sum("lwm2m_datagrams_dropped_total", &[("reason", "malformed")])
            - before.sum("lwm2m_datagrams_dropped_total", &[("reason", "malformed")])
            >= (per_kind[&Kind::BadVersion] + per_kind[&Kind::BadOption]) as f64
    });
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    assert_eq!(
        delta("lwm2m_datagrams_dropped_total", &[("reason", "malformed")]),
        (per_kind[&Kind::BadVersion] + per_kind[&Kind::BadOption]) as f64,
        "junk counted as malformed"
    );
    assert_eq!(
        delta("lwm2m_requests_refused_total", &[("reason", "ping")]),
        per_kind[&Kind::Ping] as f64
    );
    assert_eq!(
        delta("lwm2m_requests_refused_total", &[("reason", "not_found")]),
        per_kind[&Kind::UnknownLocation] as f64
    );
    assert!(
        delta("lwm2m_datagrams_dropped_total", &[("reason", "unmatched")])
            >= per_kind[&Kind::Orphan] as f64,
        "orphan ACKs and RSTs counted"
    );
    assert!(delta("lwm2m_bad_requests_total", &[]) >= per_kind[&Kind::NoEndpoint] as f64);
    let blocks = per_kind[&Kind::BigBlock0] + per_kind[&Kind::TinyBlock0];
    // A starter is either held (possibly evicting an older one that never went on,
    // which counts as an abort) or refused (an abort): held ≤ sent ≤ held + aborts.
    let received = delta("lwm2m_blocks_received_total", &[]);
    let aborts = delta("lwm2m_block_aborts_total", &[]);
    assert!(
        received <= blocks as f64 && received + aborts >= blocks as f64,
        "every Block1 starter held or refused: {blocks} sent, {received} held, {aborts} aborted"
    );
    let limits = delta("lwm2m_block_limit_hits_total", &[]);
    assert!(
        aborts > 0.0 && limits > 0.0,
        "the shard's bounds on partial bodies refused or evicted some ({limits} limit hits)"
    );
    let held = after.sum("lwm2m_block_bytes_held", &[]);
    assert!(
        held <= (16 * MAX_BODY * 2) as f64,
        "partial bodies held: {held} bytes"
    );
    assert!(
        delta("lwm2m_datagrams_in_total", &[]) >= per_kind.values().sum::<u64>() as f64,
        "every flood datagram reached a shard"
    );
    assert_eq!(
        after.sum("lwm2m_registrations_total", &[]),
        (2 * REAL) as f64,
        "only the real devices registered"
    );
}
