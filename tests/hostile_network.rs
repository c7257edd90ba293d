//! Hostile networks.
//!
//! 1. Sans-IO: thousands of simulated devices registering and updating through
//!    several `ShardCore`s sharing one `Directory`, on a virtual clock, with a seeded
//!    PRNG losing (up to 30%), duplicating, delaying and reordering datagrams both
//!    ways, NAT rebinding some devices onto other shards, and delivering cross-shard
//!    messages out of order. Devices retransmit as RFC 7252 says (ACK_TIMEOUT 2 s,
//!    ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4) and register again on 4.04.
//!    Applications publish commands (read, write, execute, observe; some for unknown
//!    endpoints, some malformed); devices answer the gateway's requests through the
//!    same network (piggybacked, empty ACK then a separate CON or NON response, RST,
//!    or never) and notify on observations. Every command gets exactly one final
//!    message on MQTT, counted by reqID.
//! 2. End to end: the real binary under a malformed-datagram sweep while a fleet of
//!    real devices registers and updates.

mod common;

use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::lwm2m::directory::DirEntry;
use lwm2m_gateway::lwm2m::settings::Translator;
use lwm2m_gateway::lwm2m::template::Template;
use lwm2m_gateway::lwm2m::{
    CoreSettings, Directory, Input, MqttOut, Output, RoutedCommand, ShardCore, ShardMsg, Timer,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

const ACK_TIMEOUT_MS: u64 = 2_000;
const MAX_RETRANSMIT: u32 = 4;
const UPDATES: u32 = 2;
/// Commands published per device (at random times in the first 700 s).
const COMMANDS: u32 = 2;
/// Longest a gateway request stays in flight without an answer: the retransmission
/// span (2 s · 1.5 · 31 = 93 s) or EXCHANGE_LIFETIME after an empty ACK, rounded up.
const EXCHANGE_SPAN_MS: u64 = 247_000 + 93_000;

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The default configuration's settings with QoS 1 Register and Update messages,
/// per-endpoint subscriptions and a mountpoint without the command suffix.
fn settings() -> CoreSettings {
    let qos1 = |topic: &str| Translator {
        topic: topic.into(),
        qos: 1,
    };
    CoreSettings {
        mountpoint: Template::parse("lwm2m/${endpoint_name}/"),
        register: qos1("up/resp"),
        update: qos1("up/update"),
        per_endpoint_subscriptions: true,
        ..CoreSettings::defaults()
    }
}

enum Ev {
    ToGateway {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    ToDevice {
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    DeviceTimer {
        dev: usize,
        gen: u64,
    },
    DeviceStart {
        dev: usize,
        gen: u64,
    },
    GatewayTimer {
        shard: usize,
        t: Timer,
    },
    Shard {
        to: u16,
        msg: ShardMsg,
    },
    /// An application publishes a command for device `dev`.
    Command {
        dev: usize,
    },
    /// A device sends something of its own again (a separate response).
    DeviceSend {
        dev: usize,
        bytes: Vec<u8>,
    },
}

/// A command published to the gateway and the final messages it got.
struct Cmd {
    name: String,
    finals: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Register,
    Update,
}

struct Pending {
    kind: Kind,
    mid: u16,
    token: [u8; 4],
    bytes: Vec<u8>,
    tries: u32,
    timeout: u64,
}

struct Device {
    name: String,
    addr: SocketAddr,
    location: Option<String>,
    pending: Option<Pending>,
    gen: u64,
    updates_ok: u32,
    created: u32,
    done: bool,
    next_mid: u16,
    /// Answers to the gateway's requests by message ID (duplicates get the same).
    answers: Vec<(u16, Vec<u8>)>,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Ev>,
    cores: Vec<ShardCore>,
    dir: Arc<Directory>,
    devices: Vec<Device>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Every address a device ever used (its old NAT bindings too).
    owner: HashMap<SocketAddr, usize>,
    gw_timers: usize,
    loss: u64,
    dup: u64,
    /// Publishes per (device, message ID) of the request that caused them.
    publishes: HashMap<(usize, u16), u32>,
    register_msgs: HashMap<String, u32>,
    /// Messages saying a registration ended, per endpoint name.
    end_msgs: HashMap<String, u32>,
    /// Per device: the message IDs the gateway saw, and the last one.
    seen_mids: HashMap<usize, (std::collections::HashSet<u16>, u16)>,
    /// Devices a duplicate of an older request reached after a newer request.
    stale_dups: std::collections::HashSet<usize>,
    datagrams: u64,
    lost: u64,
    duplicated: u64,
    max_timers: usize,
    /// Commands by reqID.
    cmds: HashMap<u64, Cmd>,
    next_req: u64,
    /// Final messages by kind: response, coap_timeout, coap_reset, error.
    outcomes: BTreeMap<&'static str, u64>,
    acks: u64,
    notifies: u64,
    requests_in: u64,
    /// Requests executed again from an old NAT binding (see `note_rebound`).
    rebound: std::collections::HashSet<(usize, u16)>,
}

fn shard_of(addr: &SocketAddr, shards: usize) -> usize {
    // Stands in for the kernel's SO_REUSEPORT 4-tuple hash.
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) => u32::from(v) as u64,
        std::net::IpAddr::V6(_) => 0,
    };
    let h = (ip.wrapping_mul(0x9e37_79b9) ^ addr.port() as u64).wrapping_mul(0x2545_f491);
    (h >> 16) as usize % shards
}

fn dev_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], port))
}

impl Sim {
    fn new(devices: usize, shards: usize, seed: u64) -> Self {
        let s = Arc::new(settings());
        let dir = Arc::new(Directory::new());
        let cores = (0..shards)
            .map(|i| ShardCore::new(i as u16, s.clone(), dir.clone(), seed ^ (i as u64 * 7919)))
            .collect();
        let mut sim = Self {
            rng: Rng(seed),
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            cores,
            dir,
            devices: Vec::new(),
            by_addr: HashMap::new(),
            owner: HashMap::new(),
            gw_timers: 0,
            loss: 30,
            dup: 10,
            publishes: HashMap::new(),
            register_msgs: HashMap::new(),
            end_msgs: HashMap::new(),
            seen_mids: HashMap::new(),
            stale_dups: std::collections::HashSet::new(),
            datagrams: 0,
            lost: 0,
            duplicated: 0,
            max_timers: 0,
            cmds: HashMap::new(),
            next_req: 1,
            outcomes: BTreeMap::new(),
            acks: 0,
            notifies: 0,
            requests_in: 0,
            rebound: std::collections::HashSet::new(),
        };
        for i in 0..devices {
            let addr = dev_addr(i, 5683 + (i % 7) as u16);
            sim.by_addr.insert(addr, i);
            sim.owner.insert(addr, i);
            sim.devices.push(Device {
                name: format!("hostile-{i}"),
                addr,
                location: None,
                pending: None,
                gen: 0,
                updates_ok: 0,
                created: 0,
                done: false,
                next_mid: (i as u16).wrapping_mul(977),
                answers: Vec::new(),
            });
            let at = sim.rng.below(20_000);
            sim.at(at, Ev::DeviceStart { dev: i, gen: 0 });
            for _ in 0..COMMANDS {
                let at = sim.rng.below(700_000);
                sim.at(at, Ev::Command { dev: i });
            }
        }
        sim
    }

    fn at(&mut self, t: u64, e: Ev) {
        self.seq += 1;
        self.events.insert((t, self.seq), e);
    }

    /// Puts a datagram on the lossy network.
    fn send(&mut self, e: impl Fn() -> Ev) {
        self.datagrams += 1;
        if self.rng.chance(self.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        self.duplicated += copies - 1;
        for _ in 0..copies {
            let mut delay = 5 + self.rng.below(300);
            if self.rng.chance(5) {
                delay += 1_000 + self.rng.below(3_000);
            }
            let t = self.now + delay;
            self.at(t, e());
        }
    }

    fn request(&mut self, dev: usize, kind: Kind) {
        let d = &mut self.devices[dev];
        d.next_mid = d.next_mid.wrapping_add(1);
        let mid = d.next_mid;
        let token = (self.rng.next() as u32).to_be_bytes();
        let d = &mut self.devices[dev];
        let mut bytes = Vec::new();
        let mut w = MessageWriter::new(&mut bytes, MsgType::Con, codes::POST, mid, &token);
        match kind {
            Kind::Register => {
                w.option(opt::URI_PATH, b"rd");
                w.option(opt::URI_QUERY, format!("ep={}", d.name).as_bytes());
                w.option(opt::URI_QUERY, b"lt=7200");
                w.option(opt::URI_QUERY, b"lwm2m=1.1");
                w.option(opt::URI_QUERY, b"b=U");
                w.payload(b"</1/0>,</3/0>,</3303/0>");
            }
            Kind::Update => {
                let loc = d.location.clone().expect("registered");
                w.option(opt::URI_PATH, b"rd");
                w.option(opt::URI_PATH, loc.as_bytes());
                w.finish();
            }
        }
        let timeout = ACK_TIMEOUT_MS + self.rng.below(ACK_TIMEOUT_MS / 2);
        let d = &mut self.devices[dev];
        d.gen += 1;
        d.pending = Some(Pending {
            kind,
            mid,
            token,
            bytes: bytes.clone(),
            tries: 0,
            timeout,
        });
        let (gen, from) = (d.gen, d.addr);
        let t = self.now + timeout;
        self.at(t, Ev::DeviceTimer { dev, gen });
        self.send(|| Ev::ToGateway {
            from,
            bytes: bytes.clone(),
        });
    }

    fn device_start(&mut self, dev: usize, gen: u64) {
        let d = &mut self.devices[dev];
        if d.gen != gen || d.pending.is_some() || d.done {
            return;
        }
        if d.location.is_none() {
            self.request(dev, Kind::Register);
            return;
        }
        // Some devices come back from behind a new NAT binding.
        if self.rng.chance(5) {
            let d = &mut self.devices[dev];
            self.by_addr.remove(&d.addr);
            let port = d.addr.port().wrapping_add(1000);
            d.addr = SocketAddr::new(d.addr.ip(), port);
            self.by_addr.insert(d.addr, dev);
            self.owner.insert(d.addr, dev);
        }
        self.request(dev, Kind::Update);
    }

    fn device_timer(&mut self, dev: usize, gen: u64) {
        let d = &mut self.devices[dev];
        if d.gen != gen {
            return;
        }
        let Some(p) = d.pending.as_mut() else {
            return;
        };
        if p.tries == MAX_RETRANSMIT {
            // Give up; start over a little later.
            d.pending = None;
            d.gen += 1;
            let gen = d.gen;
            let t = self.now + 5_000 + self.rng.below(5_000);
            self.at(t, Ev::DeviceStart { dev, gen });
            return;
        }
        p.tries += 1;
        p.timeout *= 2;
        let (bytes, timeout, from) = (p.bytes.clone(), p.timeout, d.addr);
        let t = self.now + timeout;
        self.at(t, Ev::DeviceTimer { dev, gen });
        self.send(|| Ev::ToGateway {
            from,
            bytes: bytes.clone(),
        });
    }

    fn device_receive(&mut self, to: SocketAddr, bytes: &[u8]) {
        let Some(&dev) = self.by_addr.get(&to) else {
            return; // an old NAT binding: gone
        };
        let m = Message::parse(bytes).expect("the gateway sends well-formed CoAP");
        if codes::class(m.code) == 0 && m.code != codes::EMPTY {
            self.device_request(dev, &m);
            return;
        }
        let d = &mut self.devices[dev];
        let Some(p) = d.pending.as_ref() else {
            return;
        };
        if m.mtype != MsgType::Ack || m.mid != p.mid || m.token != p.token {
            return; // a late duplicate of an earlier exchange
        }
        let kind = p.kind;
        d.pending = None;
        d.gen += 1;
        let gen = d.gen;
        match (kind, m.code) {
            (Kind::Register, codes::CREATED) => {
                let segs: Vec<&[u8]> = m.option_values(opt::LOCATION_PATH).collect();
                assert_eq!(segs.len(), 2);
                d.location = Some(String::from_utf8(segs[1].to_vec()).unwrap());
                d.created += 1;
            }
            (Kind::Update, codes::CHANGED) => {
                d.updates_ok += 1;
                if d.updates_ok == UPDATES {
                    d.done = true;
                    return;
                }
            }
            (Kind::Update, codes::NOT_FOUND) => d.location = None,
            (k, c) => panic!("{}: unexpected {c:#x} to {k:?}", d.name),
        }
        let t = self.now + 1_000 + self.rng.below(30_000);
        self.at(t, Ev::DeviceStart { dev, gen });
    }

    /// A device answers a request of the gateway (a command), through the network.
    fn device_request(&mut self, dev: usize, m: &Message<'_>) {
        assert_eq!(m.mtype, MsgType::Con, "the gateway's requests are CON");
        assert_eq!(m.token.len(), 4, "the gateway's tokens are 4 bytes");
        self.requests_in += 1;
        let from = self.devices[dev].addr;
        if let Some((_, a)) = self.devices[dev]
            .answers
            .iter()
            .find(|(mid, _)| *mid == m.mid)
        {
            // A retransmission: the same answer again (RFC 7252 §4.5).
            let a = a.clone();
            if !a.is_empty() {
                self.send(|| Ev::ToGateway {
                    from,
                    bytes: a.clone(),
                });
            }
            return;
        }
        let observe = m.option_uint(opt::OBSERVE) == Some(0);
        let response = |t: MsgType, mid: u16, seq: Option<u32>| {
            let mut b = Vec::new();
            let mut w = MessageWriter::new(&mut b, t, codes::CONTENT, mid, m.token);
            if let Some(s) = seq {
                w.option_uint(opt::OBSERVE, s);
            }
            w.option_uint(opt::CONTENT_FORMAT, 0);
            w.payload(b"21.5");
            b
        };
        let roll = self.rng.below(100);
        let answer = if roll < 65 {
            response(MsgType::Ack, m.mid, observe.then_some(1))
        } else if roll < 85 {
            // Empty ACK now, the response separately (CON, sent three times
            // whatever happens, or NON once).
            let d = &mut self.devices[dev];
            d.next_mid = d.next_mid.wrapping_add(1);
            let con = self.rng.chance(50);
            let t = if con { MsgType::Con } else { MsgType::Non };
            let sep = response(t, d.next_mid, observe.then_some(1));
            let first = self.now + 500 + self.rng.below(3_000);
            for i in 0..if con { 3 } else { 1 } {
                self.at(
                    first + i * 3_000,
                    Ev::DeviceSend {
                        dev,
                        bytes: sep.clone(),
                    },
                );
            }
            let mut b = Vec::new();
            MessageWriter::new(&mut b, MsgType::Ack, codes::EMPTY, m.mid, &[]).finish();
            b
        } else if roll < 95 {
            let mut b = Vec::new();
            MessageWriter::new(&mut b, MsgType::Rst, codes::EMPTY, m.mid, &[]).finish();
            b
        } else {
            Vec::new() // never answers this one
        };
        if observe && roll < 85 {
            // A notification later (stale or unwanted ones are reset by the gateway).
            let d = &mut self.devices[dev];
            d.next_mid = d.next_mid.wrapping_add(1);
            let n = response(MsgType::Non, d.next_mid, Some(2));
            let t = self.now + 5_000 + self.rng.below(30_000);
            self.at(t, Ev::DeviceSend { dev, bytes: n });
        }
        let d = &mut self.devices[dev];
        d.answers.push((m.mid, answer.clone()));
        if d.answers.len() > 8 {
            d.answers.remove(0);
        }
        if !answer.is_empty() {
            self.send(|| Ev::ToGateway {
                from,
                bytes: answer.clone(),
            });
        }
    }

    /// An application publishes a command for device `dev` (or a name nobody has),
    /// on the shard holding the endpoint or on any shard.
    fn command(&mut self, dev: usize) {
        let id = self.next_req;
        self.next_req += 1;
        let roll = self.rng.below(100);
        let name = if roll < 5 {
            format!("nobody-{dev}")
        } else {
            self.devices[dev].name.clone()
        };
        let body = match roll % 5 {
            _ if (5..10).contains(&roll) => {
                format!(r#"{{"reqID":{id},"msgType":"launch","data":{{"path":"/3/0"}}}}"#)
            }
            0 => format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"/3/0/0"}}}}"#),
            1 => format!(
                r#"{{"reqID":{id},"msgType":"write","data":{{"path":"/3/0/14","type":"String","value":"+01"}}}}"#
            ),
            2 => format!(r#"{{"reqID":{id},"msgType":"execute","data":{{"path":"/3/0/4"}}}}"#),
            3 => {
                format!(r#"{{"reqID":{id},"msgType":"observe","data":{{"path":"/3303/0/5700"}}}}"#)
            }
            _ => format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"/3303/0"}}}}"#),
        };
        self.cmds.insert(
            id,
            Cmd {
                name: name.clone(),
                finals: 0,
            },
        );
        let shard = match self.dir.by_name(&name) {
            Some(e) if self.rng.chance(80) => e.shard as usize,
            _ => self.rng.below(self.cores.len() as u64) as usize,
        };
        let topic = format!("lwm2m/{name}/dn/cmd");
        let core = &mut self.cores[shard];
        let cmd = RoutedCommand::from_topic(
            core.settings(),
            &self.dir,
            &topic,
            body.into_bytes(),
            Default::default(),
        )
        .expect("a command topic");
        core.handle(self.now, Input::Shard(ShardMsg::Command(cmd)));
        self.pump(None);
    }

    /// The end of a registration on MQTT: for its own endpoint, with a known reason.
    fn end_message(&mut self, name: &str, payload: &[u8]) {
        let mut b = payload.to_vec();
        let v = simd_json::to_owned_value(&mut b).expect("deregister message is JSON");
        use simd_json::prelude::*;
        assert_eq!(v["data"]["ep"].as_str(), Some(name), "{v}");
        let reason = v["data"]["reason"].as_str().unwrap_or("");
        assert!(
            matches!(reason, "deregister" | "expired" | "kicked" | "replaced"),
            "{v}"
        );
        *self.end_msgs.entry(name.to_string()).or_default() += 1;
    }

    /// A command message on MQTT: a final one is counted for its reqID (at most one).
    fn command_message(&mut self, name: &str, payload: &[u8]) {
        use simd_json::prelude::*;
        let mut copy = payload.to_vec();
        let v = simd_json::to_owned_value(&mut copy).expect("command messages are JSON");
        let msg_type = v.get("msgType").and_then(|m| m.as_str()).unwrap_or("");
        let id = v
            .get("reqID")
            .and_then(|x| x.as_u64())
            .unwrap_or_else(|| panic!("a command message without reqID: {v}"));
        let c = self
            .cmds
            .get_mut(&id)
            .unwrap_or_else(|| panic!("a message for reqID {id}, never sent: {v}"));
        assert_eq!(
            c.name, name,
            "reqID {id} answered on another endpoint's topic"
        );
        match msg_type {
            "notify" => {
                self.notifies += 1;
                return;
            }
            "ack" => {
                assert_eq!(c.finals, 0, "an ack event after the final message of {id}");
                self.acks += 1;
                return;
            }
            _ => {}
        }
        c.finals += 1;
        assert_eq!(
            c.finals, 1,
            "two final messages for reqID {id}: the second {v}"
        );
        let data = v.get("data");
        let kind = match msg_type {
            "coap_timeout" => "coap_timeout",
            "coap_reset" => "coap_reset",
            _ if data.and_then(|d| d.get("error")).is_some() => "error",
            _ => {
                assert!(
                    data.and_then(|d| d.get("code")).is_some(),
                    "a response without code: {v}"
                );
                "response"
            }
        };
        *self.outcomes.entry(kind).or_default() += 1;
    }

    /// Drains what the cores produced; publishes are charged to `cause`.
    fn pump(&mut self, cause: Option<(usize, u16)>) {
        let mut out = Vec::new();
        let mut timers = Vec::new();
        let mut msgs = Vec::new();
        let mut mqtt = Vec::new();
        for (i, c) in self.cores.iter_mut().enumerate() {
            c.drain(|o| match o {
                Output::Datagram { to, bytes, .. } => out.push((to, bytes.to_vec())),
                Output::Mqtt(m) => mqtt.push(m),
                Output::Timer { at, timer } => timers.push((at, i, timer)),
                Output::Shard { to, msg } => msgs.push((to, msg)),
                Output::Auth { .. } => unreachable!("authentication is off"),
                Output::Bootstrap(_) => unreachable!("bootstrap is off"),
                Output::Store(c) => check_store_change(&c),
                Output::Cluster(_) => unreachable!("the store is not shared"),
            });
        }
        for m in mqtt {
            if let MqttOut::Publish { topic, payload, .. } = m {
                let rest = topic.strip_prefix("lwm2m/").expect("mountpoint");
                if let Some(n) = rest.strip_suffix("/up/notify") {
                    self.command_message(n, &payload);
                    continue;
                }
                if let Some(n) = rest.strip_suffix("/up/resp") {
                    // The end of a registration shares the topic too.
                    if payload.starts_with(b"{\"msgType\":\"deregister\"") {
                        self.end_message(n, &payload);
                        continue;
                    }
                    // Register messages and command messages share the topic.
                    if !payload.starts_with(b"{\"msgType\":\"register\"") {
                        self.command_message(n, &payload);
                        continue;
                    }
                    *self.register_msgs.entry(n.to_string()).or_default() += 1;
                }
                let key = cause.expect("register and update messages only for a datagram");
                *self.publishes.entry(key).or_default() += 1;
            }
        }
        for (to, bytes) in out {
            self.send(|| Ev::ToDevice {
                to,
                bytes: bytes.clone(),
            });
        }
        for (at, shard, t) in timers {
            self.gw_timers += 1;
            self.at(at.max(self.now), Ev::GatewayTimer { shard, t });
        }
        for (to, msg) in msgs {
            let t = self.now + self.rng.below(20);
            self.at(t, Ev::Shard { to, msg });
        }
        self.max_timers = self.max_timers.max(self.gw_timers);
    }

    /// A request re-executed although answered before, arriving from an address the
    /// device has left (a delayed duplicate from its old NAT binding): see
    /// `core_duplicate_from_an_old_nat_binding` in tests/fuzz_regressions.rs.
    fn note_rebound(
        &mut self,
        cause: Option<(usize, u16)>,
        from: Option<SocketAddr>,
        before: Option<u32>,
        after: Option<u32>,
    ) {
        let (Some(key), Some(from)) = (cause, from) else {
            return;
        };
        let left = self.by_addr.get(&from) != Some(&key.0);
        if left && before.is_some() && after > before {
            self.rebound.insert(key);
        }
    }

    fn cause_of(&self, from: SocketAddr, bytes: &[u8]) -> Option<(usize, u16)> {
        let dev = *self.owner.get(&from)?;
        Some((dev, Message::parse(bytes).ok()?.mid))
    }

    fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.events.pop_first() else {
            return false;
        };
        self.now = t;
        match ev {
            Ev::ToGateway { from, bytes } => {
                let shard = shard_of(&from, self.cores.len());
                let cause = self.cause_of(from, &bytes);
                let dups = self.cores[shard].stats().duplicates;
                let request = Message::parse(&bytes)
                    .is_ok_and(|m| codes::class(m.code) == 0 && m.code != codes::EMPTY);
                if let (Some((dev, mid)), true) = (cause, request) {
                    let (seen, last) = self.seen_mids.entry(dev).or_default();
                    if seen.contains(&mid) && *last != mid {
                        self.stale_dups.insert(dev);
                    }
                    seen.insert(mid);
                    *last = mid;
                }
                let count = |s: &Self| cause.and_then(|c| s.publishes.get(&c).copied());
                let before = count(self);
                let data = Input::Datagram {
                    peer: from,
                    data: &bytes,
                    identity: None,
                };
                self.cores[shard].handle(t, data);
                let dup = self.cores[shard].stats().duplicates != dups;
                self.pump(cause);
                self.note_rebound(cause, Some(from), before, count(self));
                if dup {
                    assert_eq!(
                        before,
                        count(self),
                        "a request answered from the cache published"
                    );
                }
            }
            Ev::ToDevice { to, bytes } => self.device_receive(to, &bytes),
            Ev::DeviceTimer { dev, gen } => self.device_timer(dev, gen),
            Ev::DeviceStart { dev, gen } => self.device_start(dev, gen),
            Ev::Command { dev } => self.command(dev),
            Ev::DeviceSend { dev, bytes } => {
                let from = self.devices[dev].addr;
                self.send(|| Ev::ToGateway {
                    from,
                    bytes: bytes.clone(),
                });
            }
            Ev::GatewayTimer { shard, t: timer } => {
                self.gw_timers -= 1;
                self.cores[shard].handle(t, Input::Timer(timer));
                self.pump(None);
            }
            Ev::Shard { to, msg } => {
                let (cause, from) = match &msg {
                    ShardMsg::Adopt { peer, datagram, .. }
                    | ShardMsg::TakeoverMiss { peer, datagram, .. } => {
                        (self.cause_of(*peer, datagram), Some(*peer))
                    }
                    _ => (None, None),
                };
                let count = |s: &Self| cause.and_then(|c| s.publishes.get(&c).copied());
                let before = count(self);
                self.cores[to as usize].handle(t, Input::Shard(msg));
                self.pump(cause);
                self.note_rebound(cause, from, before, count(self));
            }
        }
        true
    }

    /// Runs every event due up to `horizon`; the clock then reads `horizon`.
    fn run_until(&mut self, horizon: u64) {
        while let Some((&(t, _), _)) = self.events.first_key_value() {
            if t > horizon {
                break;
            }
            self.step();
        }
        self.now = self.now.max(horizon);
    }

    fn endpoints(&self) -> usize {
        self.cores.iter().map(|c| c.endpoints().len()).sum()
    }
}

fn run(devices: usize, shards: usize, seed: u64) {
    let mut sim = Sim::new(devices, shards, seed);
    // Ten minutes of hostile network, then a clean one until every device is done.
    sim.run_until(600_000);
    sim.loss = 0;
    sim.dup = 0;
    while sim.devices.iter().any(|d| !d.done) {
        assert!(sim.step(), "devices stuck");
        assert!(sim.now < 3_600_000, "devices still not done after an hour");
    }
    // Let in-flight duplicates, shard messages and the last commands' exchanges
    // land (no expiry yet: lt=7200); two commands per device, NSTART 1.
    sim.run_until(sim.now.max(700_000) + (COMMANDS as u64 + 1) * EXCHANGE_SPAN_MS);
    assert!(sim.now < 7_200_000, "registrations would expire");

    // Every command got exactly one final message before any registration expired,
    // and nothing waits or is in flight any more.
    let issued = sim.cmds.len() as u64;
    assert_eq!(issued, devices as u64 * COMMANDS as u64);
    for (id, c) in &sim.cmds {
        assert_eq!(
            c.finals, 1,
            "reqID {id} for {}: {} final messages",
            c.name, c.finals
        );
    }
    let finals: u64 = sim.outcomes.values().sum();
    assert_eq!(finals, issued, "final messages");
    for c in &sim.cores {
        for (_, ep) in c.endpoints().slots() {
            if let Some(s) = ep.session.as_ref() {
                assert!(
                    s.queue.is_empty() && s.inflight.is_empty(),
                    "{}: commands left in its session",
                    ep.name
                );
            }
        }
    }

    // Every device that got a 2.01 is registered exactly once, where it believes.
    let mut names: HashMap<&str, (usize, u64)> = HashMap::new();
    for (s, c) in sim.cores.iter().enumerate() {
        for (_, ep) in c.endpoints().slots() {
            let prev = names.insert(&ep.name, (s, ep.location));
            assert!(prev.is_none(), "{} registered twice", ep.name);
            assert_eq!(
                sim.dir.by_name(&ep.name),
                Some(DirEntry {
                    shard: s as u16,
                    location: ep.location
                }),
                "directory entry of {}",
                ep.name
            );
            assert_eq!(sim.dir.by_location(ep.location), Some(s as u16));
        }
    }
    for d in &sim.devices {
        assert!(d.created >= 1 && d.done, "{} never finished", d.name);
        let (_, loc) = names
            .get(d.name.as_str())
            .unwrap_or_else(|| panic!("{} lost its registration", d.name));
        let believed = d.location.as_deref().unwrap();
        assert_eq!(
            lwm2m_gateway::lwm2m::endpoint::Endpoint::location_str(*loc),
            believed,
            "{} is registered elsewhere than it believes",
            d.name
        );
        let regs = sim.register_msgs.get(&d.name).copied().unwrap_or(0);
        assert!(regs >= 1, "{} has no register message", d.name);
    }
    assert_eq!(names.len(), devices, "registrations lost or invented");
    assert_eq!(sim.dir.len(), devices, "directory size");
    // No request caused more than one MQTT message, even when a duplicate of an
    // older request arrived after a newer one, or from an address the device has
    // left (both counted).
    for (&(dev, mid), &n) in &sim.publishes {
        assert!(n <= 1, "{} mid {mid}: {n} publishes", sim.devices[dev].name);
    }
    let rebound = sim.rebound.len();
    let reordered = sim.stale_dups.len();
    // Bounded state: pending gateway timers stay in proportion to the devices.
    assert!(
        sim.max_timers <= devices * 2 * (2 + UPDATES as usize + COMMANDS as usize),
        "{} timers outstanding for {devices} devices",
        sim.max_timers
    );

    // Everything expires and leaves nothing behind.
    sim.run_until(sim.now + 8_000_000);
    assert_eq!(sim.endpoints(), 0, "endpoints outlive their lifetime");
    assert_eq!(sim.dir.len(), 0, "directory keeps expired names");
    // Every registration announced ended exactly once (replaced or expired).
    for d in &sim.devices {
        let regs = sim.register_msgs.get(&d.name).copied().unwrap_or(0);
        let ends = sim.end_msgs.get(&d.name).copied().unwrap_or(0);
        assert_eq!(
            ends, regs,
            "{}: {regs} register messages, {ends} ends",
            d.name
        );
    }

    // Commands and their final messages outlive nothing either.
    for (id, c) in &sim.cmds {
        assert_eq!(c.finals, 1, "reqID {id}: a late final message");
    }

    let stats: u64 = sim.cores.iter().map(|c| c.stats().duplicates).sum();
    eprintln!(
        "{devices} devices, {shards} shards, seed {seed}: {} datagrams, {} lost, {} duplicated, {stats} answered from the cache, max {} timers, {reordered} devices saw a stale duplicate after a newer request, {rebound} requests executed again from an old NAT binding; {issued} commands, {} requests reached devices, {} ack events, {} notifications, final messages {:?}",
        sim.datagrams, sim.lost, sim.duplicated, sim.max_timers, sim.requests_in, sim.acks, sim.notifies, sim.outcomes
    );
}

#[test]
fn thousands_of_devices_under_loss_duplication_and_reordering() {
    run(10_000, 4, 0x5eed_0001);
}

#[test]
fn other_seeds_and_shard_counts() {
    for (n, s, seed) in [(500, 1, 7), (500, 2, 11), (800, 3, 12345)] {
        run(n, s, seed);
    }
}

// ------------------------------------------------------------------ end to end

mod e2e {
    use super::common::gateway::{Broker, GatewayProc};
    use super::common::mqtt_client::MqttClient;
    use super::Rng;
    use lwm2m_gateway::coap::{codes, opt, MessageWriter, MsgType};
    use lwm2m_gateway::sim::{Fleet, FleetConfig};
    use std::collections::HashSet;
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(20);

    fn register(mid: u16, ep: &str) -> Vec<u8> {
        let mut b = Vec::new();
        let mut w = MessageWriter::new(&mut b, MsgType::Con, codes::POST, mid, &[1, 2, 3, 4]);
        w.option(opt::URI_PATH, b"rd");
        w.option(opt::URI_QUERY, format!("ep={ep}").as_bytes());
        w.option(opt::URI_QUERY, b"lt=300");
        w.option(opt::URI_QUERY, b"lwm2m=1.1");
        w.payload(b"</1/0>,</3/0>");
        b
    }

    /// Every malformed datagram the sweep sends, in order.
    fn sweep(rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let reg = register(7, "junk-sweep");
        let mut upd = Vec::new();
        let mut w = MessageWriter::new(&mut upd, MsgType::Con, codes::POST, 8, &[9; 8]);
        w.option(opt::URI_PATH, b"rd");
        w.option(opt::URI_PATH, b"0123456789abcdef");
        w.option(opt::URI_QUERY, b"lt=60");
        w.payload(b"</3/0>");
        for m in [&reg, &upd] {
            for n in 0..m.len() {
                v.push(m[..n].to_vec());
            }
        }
        for _ in 0..500 {
            let n = rng.below(200) as usize;
            v.push((0..n).map(|_| rng.next() as u8).collect());
        }
        for size in [1_400, 9_000, 65_000] {
            let mut big = reg.clone();
            big.resize(size, b'x');
            v.push(big);
        }
        for ver in [0u8, 2, 3] {
            let mut b = reg.clone();
            b[0] = (b[0] & 0x3f) | ver << 6;
            v.push(b);
        }
        // Option floods: thousands of Uri-Query options, and every critical number.
        let mut flood = Vec::new();
        let mut w = MessageWriter::new(&mut flood, MsgType::Con, codes::POST, 9, &[]);
        w.option(opt::URI_PATH, b"rd");
        for i in 0..3_000 {
            w.option(opt::URI_QUERY, format!("k{i}=v").as_bytes());
        }
        w.finish();
        v.push(flood);
        for n in [1u16, 5, 9, 13, 61, 2049, 65_001] {
            let mut b = Vec::new();
            let mut w = MessageWriter::new(&mut b, MsgType::Con, codes::POST, 10, &[1]);
            w.option(opt::URI_PATH, b"rd");
            w.option(n.max(11), b"x");
            w.finish();
            v.push(b);
        }
        // Token lengths 9..15 (reserved) and a token longer than the datagram.
        for tkl in 9u8..16 {
            let mut b = reg.clone();
            b[0] = (b[0] & 0xf0) | tkl;
            v.push(b);
        }
        v.push(vec![0x48, 0x02, 0, 1, 1, 2]);
        v
    }

    #[test]
    fn malformed_datagram_sweep_while_devices_work() {
        let gw = GatewayProc::start(Broker::Embedded, "");
        let mut mq = MqttClient::subscriber(gw.mqtt, "hostile-sub", "lwm2m/+/up/resp", 0);
        mq.subscribe("lwm2m/+/up/update", 0).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let attacker = {
            let (stop, sent, target) = (stop.clone(), sent.clone(), gw.udp);
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut rng = Rng(99);
                let all = sweep(&mut rng);
                while !stop.load(Ordering::Relaxed) {
                    for d in &all {
                        // Sending may fail for datagrams above the loopback MTU: fine.
                        let _ = sock.send_to(d, target);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };

        let n = 300;
        let cfg = FleetConfig {
            devices: n,
            name_prefix: "hostile-e2e".into(),
            ..Default::default()
        };
        let mut fleet = Fleet::new(cfg, gw.udp).expect("fleet socket");
        let reg = fleet.register_all(None, WAIT).unwrap();
        let upd = fleet.update_all(WAIT).unwrap();
        assert_eq!(reg.ok, n, "registrations under attack: {reg:?}");
        assert_eq!(upd.ok, n, "updates under attack: {upd:?}");

        // Malformed MQTT commands for registered and unknown endpoints.
        let mut publ = MqttClient::connect(gw.mqtt, "hostile-pub", true).unwrap();
        let deep = "[".repeat(100_000);
        let huge = format!(
            "{{\"msgType\":\"read\",\"data\":{{\"path\":\"{}\"}}}}",
            "9".repeat(1 << 20)
        );
        let junk: Vec<&[u8]> = vec![
            b"",
            b"{",
            b"null",
            b"[1,2,3]",
            b"\xff\xfe\x00",
            b"{\"msgType\":\"launch\",\"data\":{}}",
            b"{\"msgType\":\"write\",\"data\":{\"path\":\"/3/0/13\",\"value\":{}}}",
            b"{\"msgType\":\"write\",\"data\":{\"basePath\":\"/3/0\",\"content\":[]}}",
            b"{\"msgType\":\"read\",\"data\":{\"path\":\"/70000/0\"}}",
            b"{\"msgType\":\"execute\",\"data\":{\"path\":\"/3/0/4\",\"args\":[1]}}",
            b"{\"msgType\":\"write-attr\",\"data\":{\"path\":\"/3/0/9\",\"pmin\":\"x\"}}",
            deep.as_bytes(),
            huge.as_bytes(),
        ];
        let mut commands = 0u64;
        for i in 0..20 {
            let topic = if i % 5 == 4 {
                format!("lwm2m/nobody-{i}/dn/dm")
            } else {
                format!("lwm2m/hostile-e2e{i}/dn/dm")
            };
            for j in &junk {
                publ.publish(&topic, j, 1).unwrap();
                commands += 1;
            }
        }
        let upd2 = fleet.update_all(WAIT).unwrap();
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        assert_eq!(upd2.ok, n, "updates after malformed commands: {upd2:?}");

        let mut registers = HashSet::new();
        let mut updates = 0;
        while registers.len() < n || updates < 2 * n {
            let Some((topic, _)) = mq.recv_publish(WAIT) else {
                break;
            };
            if !topic.starts_with("lwm2m/hostile-e2e") {
                continue;
            }
            if topic.ends_with("/up/update") {
                updates += 1;
            } else {
                registers.insert(topic);
            }
        }
        assert_eq!(registers.len(), n, "register messages on MQTT");
        assert!(updates >= 2 * n, "update messages on MQTT: {updates}");
        eprintln!(
            "{} malformed datagrams and {commands} malformed commands sent while {n} devices registered and updated twice",
            sent.load(Ordering::Relaxed)
        );
    }
}

/// A store change the core emitted: a record decodes, and is of the name and location
/// it is filed under.
fn check_store_change(c: &lwm2m_gateway::lwm2m::StoreChange) {
    if let lwm2m_gateway::lwm2m::StoreChange::Put {
        name,
        location,
        record,
        ..
    } = c
    {
        let ep = lwm2m_gateway::lwm2m::record::decode(record, 0)
            .expect("a record the core wrote decodes");
        assert_eq!((&*ep.name, ep.location), (&**name, *location));
    }
}
