//! A deterministic driver for one or more `ShardCore`s.

use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::lwm2m::template::Template;
use crate::lwm2m::{
    AuthRequest, CoreSettings, Directory, Input, MqttOut, Output, RoutedCommand, ShardCore,
    ShardMsg, StoreChange, Timer,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// The default configuration's settings, with what these tests rely on: a mountpoint
/// without the command suffix, per-endpoint subscriptions, no admission limits, a
/// device cap of max_body_size, and a fixed location key.
pub(super) fn settings() -> CoreSettings {
    CoreSettings {
        mountpoint: Template::parse("lwm2m/${endpoint_name}/"),
        per_endpoint_subscriptions: true,
        max_connections: u64::MAX,
        max_conn_rate: 0,
        block_device_cap: 4 << 20,
        location_key: [0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321],
        ..CoreSettings::defaults()
    }
}

pub(super) fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], port))
}

/// A reply as the device sees it.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    /// The driver must send it encrypted (DTLS) or not at all.
    pub secure: bool,
}

impl Reply {
    pub(super) fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("the core sends well-formed CoAP")
    }
    pub(super) fn code(&self) -> u8 {
        self.msg().code
    }
    pub(super) fn location(&self) -> String {
        let m = self.msg();
        let segs: Vec<_> = m.option_values(opt::LOCATION_PATH).collect();
        assert_eq!(segs[0], b"rd");
        String::from_utf8(segs[1].to_vec()).unwrap()
    }
}

pub(super) struct Harness {
    pub cores: Vec<ShardCore>,
    pub dir: Arc<Directory>,
    pub now: u64,
    timers: Vec<(u64, usize, Timer)>,
    pub replies: Vec<Reply>,
    pub mqtt: Vec<MqttOut>,
    /// Authentication requests: (shard, ticket, request).
    pub auth: Vec<(usize, u64, AuthRequest)>,
    /// Bootstraps' progress, as the driver gets it.
    pub bootstrap: Vec<crate::lwm2m::BootstrapEvent>,
    /// Store changes, as the driver's store writer gets them: (shard, change).
    pub store: Vec<(usize, StoreChange)>,
    /// Requests for the other nodes (shared store): (shard, request).
    pub cluster: Vec<(usize, crate::lwm2m::ClusterRequest)>,
}

impl Harness {
    pub(super) fn new(shards: usize, s: CoreSettings) -> Self {
        Self::build(shards, s, false)
    }

    /// Like `new`, each core knowing how many shards there are (as the engine makes
    /// them: the listener's rate is split over them, bootstraps tell the others).
    pub(super) fn sharded(shards: usize, s: CoreSettings) -> Self {
        Self::build(shards, s, true)
    }

    fn build(shards: usize, s: CoreSettings, counted: bool) -> Self {
        let s = Arc::new(s);
        let dir = Arc::new(Directory::new());
        let dir_xml = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/lwm2m_xml");
        let (reg, errors) = crate::objects::ObjectRegistry::load_dir(std::path::Path::new(dir_xml));
        assert!(errors.is_empty(), "{errors:?}");
        let reg = Arc::new(reg);
        let cores = (0..shards)
            .map(|i| {
                let n = if counted { shards } else { 1 };
                let seed = 1000 * i as u64 + 7;
                let mut c = ShardCore::with_shards(i as u16, n, s.clone(), dir.clone(), seed);
                c.set_registry(reg.clone());
                c
            })
            .collect();
        Self {
            cores,
            dir,
            now: 0,
            timers: Vec::new(),
            replies: Vec::new(),
            mqtt: Vec::new(),
            auth: Vec::new(),
            bootstrap: Vec::new(),
            store: Vec::new(),
            cluster: Vec::new(),
        }
    }

    /// Delivers a datagram to `shard` and runs everything it causes.
    pub(super) fn datagram(&mut self, shard: usize, from: SocketAddr, bytes: &[u8]) {
        let data = Input::Datagram {
            peer: from,
            data: bytes,
            identity: None,
        };
        self.cores[shard].handle(self.now, data);
        self.pump();
    }

    /// Hands `shard` an input (as the driver would) and runs everything it causes; the
    /// replies it produced.
    pub(super) fn input(&mut self, shard: usize, input: Input<'_>) -> Vec<Reply> {
        let n = self.replies.len();
        self.cores[shard].handle(self.now, input);
        self.pump();
        self.replies.split_off(n)
    }

    /// Delivers a message to `shard` (as from its mailbox) and runs everything it causes.
    pub(super) fn message(&mut self, shard: usize, m: ShardMsg) -> Vec<Reply> {
        let n = self.replies.len();
        self.cores[shard].handle(self.now, Input::Shard(m));
        self.pump();
        self.replies.split_off(n)
    }

    /// Delivers a datagram that arrived over a DTLS session with `identity` and
    /// returns the replies it produced.
    pub(super) fn secure(
        &mut self,
        shard: usize,
        from: SocketAddr,
        identity: &crate::lwm2m::PeerIdentity,
        bytes: &[u8],
    ) -> Vec<Reply> {
        let n = self.replies.len();
        let id = Arc::new(identity.clone());
        let data = Input::Datagram {
            peer: from,
            data: bytes,
            identity: Some(&id),
        };
        self.cores[shard].handle(self.now, data);
        self.pump();
        self.replies.split_off(n)
    }

    /// The DTLS session of `peer` on `shard` ended.
    pub(super) fn session_closed(&mut self, shard: usize, peer: SocketAddr) -> Vec<Reply> {
        let n = self.replies.len();
        self.cores[shard].handle(self.now, Input::SessionClosed { peer });
        self.pump();
        self.replies.split_off(n)
    }

    /// The DTLS session of `from` moved to `to` (a Connection ID record).
    pub(super) fn session_moved(&mut self, shard: usize, from: SocketAddr, to: SocketAddr) {
        self.cores[shard].handle(self.now, Input::SessionMoved { from, to });
        self.pump();
    }

    /// Delivers and returns the replies it produced.
    pub(super) fn exchange(&mut self, shard: usize, from: SocketAddr, bytes: &[u8]) -> Vec<Reply> {
        let n = self.replies.len();
        self.datagram(shard, from, bytes);
        self.replies.split_off(n)
    }

    /// Like `exchange`, expecting exactly one reply.
    pub(super) fn one(&mut self, shard: usize, from: SocketAddr, bytes: &[u8]) -> Reply {
        let mut r = self.exchange(shard, from, bytes);
        assert_eq!(r.len(), 1, "expected one reply, got {r:?}");
        r.pop().unwrap()
    }

    /// An MQTT application publishes a command on `topic`.
    pub(super) fn command(&mut self, shard: usize, topic: &str, json: &str) -> Vec<Reply> {
        self.command_expiring(shard, topic, json, None)
    }

    /// Like `command`, delivered with an MQTT 5 message-expiry interval (seconds).
    pub(super) fn command_expiring(
        &mut self,
        shard: usize,
        topic: &str,
        json: &str,
        expiry_s: Option<u32>,
    ) -> Vec<Reply> {
        let n = self.replies.len();
        let arrival = crate::lwm2m::command::Arrival {
            at_ms: None,
            expiry_s,
        };
        // What the engine's router does: resolve the topic once, hand the core the result.
        let core = &mut self.cores[shard];
        let payload = json.as_bytes().to_vec();
        if let Some(c) =
            RoutedCommand::from_topic(core.settings(), &self.dir, topic, payload, arrival)
        {
            core.handle(self.now, Input::Shard(ShardMsg::Command(c)));
        }
        self.pump();
        self.replies.split_off(n)
    }

    /// Number of MQTT messages so far (to take only the new ones later).
    pub(super) fn mark(&self) -> usize {
        self.mqtt.len()
    }

    /// Publishes after `mark`, as (topic, JSON).
    pub(super) fn published_since(&self, mark: usize) -> Vec<(String, serde_json_lite::Value)> {
        self.mqtt[mark..]
            .iter()
            .filter_map(|m| match m {
                MqttOut::Publish { topic, payload, .. } => {
                    Some((topic.clone(), serde_json_lite::parse(payload)))
                }
                _ => None,
            })
            .collect()
    }

    /// Advances time and returns the datagrams sent meanwhile.
    pub(super) fn advance_collect(&mut self, ms: u64) -> Vec<Reply> {
        let n = self.replies.len();
        self.advance(ms);
        self.replies.split_off(n)
    }

    /// The authentication server answers ticket `t` of `shard`.
    pub(super) fn auth_answer(&mut self, shard: usize, t: u64, allowed: bool) -> Vec<Reply> {
        let n = self.replies.len();
        let answer = Input::AuthResult { ticket: t, allowed };
        self.cores[shard].handle(self.now, answer);
        self.pump();
        self.replies.split_off(n)
    }

    /// Hands `shard` a registration read back from the store and runs what it causes.
    pub(super) fn restore(&mut self, shard: usize, ep: crate::lwm2m::endpoint::Endpoint) {
        self.cores[shard].handle(self.now, Input::Restore(Box::new(ep)));
        self.pump();
    }

    /// The driver says whether `shard`'s broker connections are congested.
    pub(super) fn congested(&mut self, shard: usize, on: bool) {
        self.cores[shard].handle(self.now, Input::MqttCongested(on));
        self.pump();
    }

    /// The driver gives `shard` room for `room` more publishing events this turn.
    pub(super) fn mqtt_room(&mut self, shard: usize, room: u32) {
        self.cores[shard].handle(self.now, Input::MqttRoom(room));
        self.pump();
    }

    /// The management API removes `name` through `shard`; whether it was there.
    pub(super) fn kick(&mut self, shard: usize, name: &str) -> bool {
        let found = self.cores[shard].kick(self.now, name);
        self.pump();
        found
    }

    pub(super) fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        loop {
            self.timers.sort_by_key(|t| t.0);
            match self.timers.first() {
                Some(&(at, shard, t)) if at <= target => {
                    self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.cores[shard].handle(self.now, Input::Timer(t));
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    fn pump(&mut self) {
        loop {
            let mut msgs = Vec::new();
            for i in 0..self.cores.len() {
                msgs.extend(self.collect(i));
            }
            if msgs.is_empty() {
                return;
            }
            for (to, m) in msgs {
                self.cores[to as usize].handle(self.now, Input::Shard(m));
            }
        }
    }

    /// Takes what core `i` produced: replies, MQTT, timers and authentication requests
    /// into the harness; its messages for other shards are returned.
    fn collect(&mut self, i: usize) -> Vec<(u16, ShardMsg)> {
        let mut msgs = Vec::new();
        let (replies, mqtt) = (&mut self.replies, &mut self.mqtt);
        let (timers, auth) = (&mut self.timers, &mut self.auth);
        let (bootstrap, store, cluster) = (&mut self.bootstrap, &mut self.store, &mut self.cluster);
        self.cores[i].drain(|o| match o {
            Output::Datagram { to, secure, bytes } => replies.push(Reply {
                to,
                bytes: bytes.to_vec(),
                secure,
            }),
            Output::Mqtt(m) => mqtt.push(m),
            Output::Timer { at, timer } => timers.push((at, i, timer)),
            Output::Auth { ticket, request } => auth.push((i, ticket, request)),
            Output::Shard { to, msg } => msgs.push((to, msg)),
            Output::Bootstrap(e) => bootstrap.push(e),
            Output::Store(c) => store.push((i, c)),
            Output::Cluster(r) => cluster.push((i, r)),
        });
        msgs
    }

    /// Delivers a datagram to `shard` like [`datagram`](Self::datagram), holding back
    /// the messages it sends other shards (a mailbox that has not delivered yet): they
    /// are returned, for the test to deliver (`message`), delay or lose.
    pub(super) fn datagram_holding_mail(
        &mut self,
        shard: usize,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Vec<(u16, ShardMsg)> {
        let data = Input::Datagram {
            peer: from,
            data: bytes,
            identity: None,
        };
        self.cores[shard].handle(self.now, data);
        self.collect(shard)
    }

    /// Publishes so far on topics ending with `suffix`, as (topic, JSON).
    pub(super) fn published(&self, suffix: &str) -> Vec<(String, serde_json_lite::Value)> {
        self.mqtt
            .iter()
            .filter_map(|m| match m {
                MqttOut::Publish { topic, payload, .. } if topic.ends_with(suffix) => {
                    Some((topic.clone(), serde_json_lite::parse(payload)))
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn subscriptions(&self) -> (Vec<String>, Vec<String>) {
        let mut subs = Vec::new();
        let mut unsubs = Vec::new();
        for m in &self.mqtt {
            match m {
                MqttOut::Subscribe { filter, .. } => subs.push(filter.clone()),
                MqttOut::Unsubscribe { filter, .. } => unsubs.push(filter.clone()),
                _ => {}
            }
        }
        (subs, unsubs)
    }

    pub(super) fn endpoints(&self) -> usize {
        self.cores.iter().map(|c| c.endpoints().len()).sum()
    }
}

/// JSON parsing for assertions, through simd-json's owned values.
pub(super) mod serde_json_lite {
    pub(crate) use simd_json::OwnedValue as Value;

    pub(crate) fn parse(bytes: &[u8]) -> Value {
        let mut b = bytes.to_vec();
        simd_json::to_owned_value(&mut b).expect("published payload is JSON")
    }
}

/// Builds a request as a device would send it.
pub(super) struct Req {
    pub mtype: MsgType,
    pub code: u8,
    pub mid: u16,
    pub token: Vec<u8>,
    pub path: Vec<String>,
    pub query: Vec<String>,
    pub payload: Vec<u8>,
    pub extra: Vec<(u16, Vec<u8>)>,
}

impl Req {
    pub(super) fn new(code: u8, path: &str, mid: u16) -> Self {
        Self {
            mtype: MsgType::Con,
            code,
            mid,
            token: mid.to_be_bytes().to_vec(),
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            query: Vec::new(),
            payload: Vec::new(),
            extra: Vec::new(),
        }
    }
    pub(super) fn register(ep: &str, mid: u16) -> Self {
        Self::new(codes::POST, "/rd", mid)
            .q(&format!("ep={ep}"))
            .q("lt=300")
            .q("lwm2m=1.0")
            .q("b=U")
            .body(b"</1/0>,</3/0>")
    }
    pub(super) fn update(loc: &str, mid: u16) -> Self {
        Self::new(codes::POST, &format!("/rd/{loc}"), mid)
    }
    pub(super) fn q(mut self, q: &str) -> Self {
        self.query.push(q.into());
        self
    }
    pub(super) fn body(mut self, b: &[u8]) -> Self {
        self.payload = b.to_vec();
        self
    }
    pub(super) fn non(mut self) -> Self {
        self.mtype = MsgType::Non;
        self
    }
    pub(super) fn opt(mut self, n: u16, v: &[u8]) -> Self {
        self.extra.push((n, v.to_vec()));
        self
    }
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut opts: Vec<(u16, Vec<u8>)> = self.extra.clone();
        for p in &self.path {
            opts.push((opt::URI_PATH, p.as_bytes().to_vec()));
        }
        for q in &self.query {
            opts.push((opt::URI_QUERY, q.as_bytes().to_vec()));
        }
        opts.sort_by_key(|o| o.0);
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, self.mtype, self.code, self.mid, &self.token);
        for (n, v) in &opts {
            w.option(*n, v);
        }
        w.payload(&self.payload);
        buf
    }
}
