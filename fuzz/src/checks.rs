//! Property checks run by the fuzz targets and replayed by `tests/fuzz_regressions.rs`.
//!
//! Every function takes the raw fuzz input, must never panic on its own, and panics
//! (assert) only when the code under test breaks an invariant: a round trip that does
//! not round-trip, a reply that is not CoAP, state that leaks.

#![allow(dead_code)]

use lwm2m_gateway::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use lwm2m_gateway::formats::{self, fmt_id, ContentItem, Value, WriteItem};
use lwm2m_gateway::lwm2m::directory::DirEntry;
use lwm2m_gateway::lwm2m::registration;
use lwm2m_gateway::lwm2m::settings::Translator;
use lwm2m_gateway::lwm2m::template::Template;
use lwm2m_gateway::lwm2m::{
    CoreSettings, Directory, Input, MqttOut, Output, RoutedCommand, ShardCore, ShardMsg, Timer,
};
use lwm2m_gateway::model::{LwPath, ObjectDef, Operations, ResourceDef, ResourceType};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

#[path = "two_nodes.rs"]
pub mod two_nodes;

// ------------------------------------------------------------------ CoAP

/// Parse, iterate every option, re-encode with `MessageWriter` and parse again:
/// the encoding of a parsed message is unique, so it must give back the same bytes.
pub fn coap_message(data: &[u8]) {
    let m = match Message::parse(data) {
        Ok(m) => m,
        Err(e) => {
            if e.header_ok() {
                assert!(
                    Message::peek_header(data).is_some(),
                    "header_ok but peek_header fails"
                );
            }
            return;
        }
    };
    let opts: Vec<(u16, &[u8])> = m.options().collect();
    let mut last = 0u16;
    for &(n, v) in &opts {
        assert!(n >= last, "option numbers decrease");
        last = n;
        let _ = m.option_uint(n);
        if let Some(b) = BlockOpt::decode(v) {
            assert!(b.szx < 7);
            let raw = b.encode();
            let bytes = raw.to_be_bytes();
            let skip = (raw.leading_zeros() / 8) as usize;
            assert_eq!(BlockOpt::decode(&bytes[skip..]), Some(b), "block option");
            assert!((16..=1024).contains(&b.size()));
        }
    }
    for &(n, _) in &opts {
        assert!(m.option(n).is_some());
    }
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, m.mtype, m.code, m.mid, m.token);
    for &(n, v) in &opts {
        w.option(n, v);
    }
    w.payload(m.payload);
    let again = Message::parse(&buf).expect("re-encoded message parses");
    assert_eq!(again.mtype, m.mtype);
    assert_eq!(again.code, m.code);
    assert_eq!(again.mid, m.mid);
    assert_eq!(again.token, m.token);
    assert_eq!(again.payload, m.payload);
    assert_eq!(again.options().collect::<Vec<_>>(), opts);
    assert_eq!(
        buf, data,
        "CoAP encoding is unique: re-encoding gives the input"
    );
}

// ------------------------------------------------------------------ link-format

pub fn link_format(data: &[u8]) {
    if let Ok(list) = registration::parse_object_list(data) {
        let paths: Vec<&str> = list.iter().collect();
        for p in &paths {
            assert!(!p.is_empty() && !p.contains(','), "path {p:?}");
        }
        assert!(!list.alternate_path.is_empty());
        // Serialising the stripped paths as plain links parses to the same paths.
        let text: Vec<String> = paths.iter().map(|p| format!("<{p}>")).collect();
        let again = registration::parse_object_list(text.join(",").as_bytes())
            .expect("re-serialised object list parses");
        assert_eq!(again.iter().collect::<Vec<_>>(), paths);
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let pieces = formats::split_links(s);
    for p in &pieces {
        assert!(!p.is_empty() && p.trim() == *p, "piece {p:?}");
    }
    if let Ok(links) = formats::parse_links(s) {
        assert_eq!(links.len(), pieces.len());
        for l in &links {
            for (k, _) in &l.attrs {
                assert!(!k.is_empty());
                assert!(l.attr(k).is_some());
            }
        }
    }
}

// ------------------------------------------------------------------ content formats

fn res(id: u16, kind: ResourceType, multiple: bool) -> (u16, ResourceDef) {
    (
        id,
        ResourceDef {
            id,
            name: format!("r{id}"),
            kind,
            operations: Operations::from_xml("RW"),
            multiple,
        },
    )
}

/// Device (3) and Temperature (3303), by hand.
pub fn model() -> BTreeMap<u16, ObjectDef> {
    use ResourceType::*;
    let device = [
        res(0, String, false),
        res(1, String, false),
        res(2, String, false),
        res(3, String, false),
        res(4, None, false),
        res(5, None, false),
        res(6, Integer, true),
        res(7, Integer, true),
        res(8, Integer, true),
        res(9, Integer, false),
        res(10, Integer, false),
        res(11, Integer, true),
        res(12, None, false),
        res(13, Time, false),
        res(14, String, false),
        res(15, String, false),
        res(16, String, false),
        res(17, String, false),
        res(18, String, false),
        res(19, String, false),
        res(20, Integer, false),
        res(21, Integer, false),
        res(22, Objlnk, true),
    ];
    let temp = [
        res(5601, Float, false),
        res(5602, Float, false),
        res(5603, Float, false),
        res(5604, Float, false),
        res(5605, None, false),
        res(5700, Float, false),
        res(5701, String, false),
        res(5750, String, false),
        res(5518, Time, false),
        res(6050, Boolean, false),
        res(6051, UnsignedInteger, false),
        res(6052, Opaque, false),
        res(6053, Corelnk, false),
    ];
    let mut m = BTreeMap::new();
    for (id, name, r) in [
        (3u16, "Device", &device[..]),
        (3303, "Temperature", &temp[..]),
    ] {
        m.insert(
            id,
            ObjectDef {
                id,
                name: name.into(),
                multiple: id != 3,
                resources: r.iter().cloned().collect(),
            },
        );
    }
    m
}

const PATHS: &[&[u16]] = &[
    &[],
    &[3],
    &[3, 0],
    &[3, 0, 0],
    &[3, 0, 6],
    &[3, 0, 6, 1],
    &[3, 0, 13],
    &[3, 0, 22],
    &[3303],
    &[3303, 0],
    &[3303, 0, 5700],
    &[3303, 1, 5701],
    &[3303, 0, 6052],
    &[5, 0],
    &[5, 0, 1],
];

/// The request path a decode input is for: chosen by its first byte.
pub fn pick_path(b: u8) -> LwPath {
    LwPath::from_ids(PATHS[b as usize % PATHS.len()]).expect("static path")
}

fn sorted(items: &[ContentItem]) -> Vec<ContentItem> {
    let mut v = items.to_vec();
    v.sort_by_key(|i| i.path);
    v
}

/// Decodes `data[1..]` in `format` at the path picked by `data[0]`; renders the items
/// as the MQTT JSON (must be valid JSON); and where the format has an encoder and it
/// accepts the items, decoding the encoding gives the same items.
pub fn decode_format(format: u16, data: &[u8]) {
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    let path = pick_path(first);
    let m = model();
    let Ok(items) = formats::decode(Some(format), payload, &path, &m) else {
        return;
    };
    let mut json = Vec::new();
    formats::write_content_json(&items, &mut json);
    let mut copy = json.clone();
    if let Err(e) = simd_json::to_owned_value(&mut copy) {
        panic!(
            "content JSON is not JSON ({e}): {}",
            String::from_utf8_lossy(&json)
        );
    }
    if format == fmt_id::LINK || format == fmt_id::OPAQUE {
        return;
    }
    // A CBOR Time goes out untagged (the tag is optional in LwM2M) and comes back
    // typed by the model, so it round-trips only through a Time resource.
    if matches!(
        format,
        fmt_id::CBOR | fmt_id::LWM2M_CBOR | fmt_id::SENML_CBOR
    ) && items.iter().any(|i| matches!(i.value, Value::Time(_)))
    {
        return;
    }
    // text/plain carries untyped bytes as base64, which decodes as the text it is.
    if format == fmt_id::TEXT && items.iter().any(|i| matches!(i.value, Value::Untyped(_))) {
        return;
    }
    let w: Vec<WriteItem> = items
        .iter()
        .map(|i| WriteItem {
            path: i.path,
            value: i.value.clone(),
        })
        .collect();
    let Ok(bytes) = formats::encode(format, &path, &w) else {
        return;
    };
    let again = formats::decode(Some(format), &bytes, &path, &m).unwrap_or_else(|e| {
        panic!("format {format}: decoding our own encoding of {items:?} fails: {e}")
    });
    assert!(
        same_items(&sorted(&again), &sorted(&items)),
        "format {format} path {path}: round trip changed the items\n  decoded {items:?}\n  encoded {bytes:?}\n  again   {again:?}"
    );
}

/// Item lists equal, with floats compared by bits (NaN never reaches an encoder).
fn same_items(a: &[ContentItem], b: &[ContentItem]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.path == y.path
                && match (&x.value, &y.value) {
                    (Value::Float(p), Value::Float(q)) => same_float(*p, *q),
                    // The CBOR encoders write Time as a plain integer (the tag is
                    // optional in LwM2M); an untyped resource then reads it back as one.
                    (Value::Time(p), Value::Integer(q)) | (Value::Integer(p), Value::Time(q)) => {
                        p == q
                    }
                    (p, q) => p == q,
                }
        })
}

/// Floats equal, or the same single-precision value: CBOR decoding widens an f32 to
/// its shortest decimal (`0.1f32` becomes `0.1`), and the encoder writes an f32
/// whenever that is exact, so an exact f32 comes back as its shortest decimal.
fn same_float(p: f64, q: f64) -> bool {
    p == q
        || (p.is_nan() && q.is_nan())
        || (p as f32 == q as f32 && (p as f32 as f64 == p || q as f32 as f64 == q))
}

// ------------------------------------------------------------------ command JSON

const ENCODINGS: &[u16] = &[
    fmt_id::TLV,
    fmt_id::SENML_JSON,
    fmt_id::SENML_CBOR,
    fmt_id::LWM2M_CBOR,
    fmt_id::OMA_JSON,
    fmt_id::TEXT,
];

fn is_json(s: &str) -> bool {
    let mut b = s.as_bytes().to_vec();
    simd_json::to_owned_value(&mut b).is_ok()
}

/// `data[0]` picks the device's write encoding; the rest is the command.
pub fn command_json(data: &[u8]) {
    use lwm2m_gateway::lwm2m::command::{parse, Encoding, Op};
    let Some((&first, cmd)) = data.split_first() else {
        return;
    };
    let format = ENCODINGS[first as usize % ENCODINGS.len()];
    let composite = [fmt_id::SENML_JSON, fmt_id::SENML_CBOR, fmt_id::LWM2M_CBOR]
        [(first as usize / ENCODINGS.len()) % 3];
    let m = model();
    let mut buf = cmd.to_vec();
    let echo = match parse(&mut buf, &m, Encoding { format, composite }) {
        Ok(c) => {
            if let Some((f, body)) = &c.payload {
                if c.op == Op::Write {
                    // What we send must be decodable by the same codecs.
                    if let Err(e) = formats::decode(Some(*f), body, &c.path, &m) {
                        panic!("write payload we encoded does not decode: {e}: {body:?}");
                    }
                }
                if c.op == Op::WriteComposite {
                    // A Write-Composite names every value absolutely, each path once.
                    match formats::decode_composite(Some(*f), *f, body, &m) {
                        Ok(items) => {
                            let mut got: Vec<LwPath> = items.iter().map(|i| i.path).collect();
                            let mut want = c.paths.clone();
                            got.sort();
                            want.sort();
                            assert_eq!(got, want, "write-composite body names other paths");
                        }
                        Err(e) => panic!("write-composite body does not decode: {e}: {body:?}"),
                    }
                }
            }
            if c.op.is_composite() {
                assert!(c.path.is_empty() && c.query.is_empty() && !c.paths.is_empty());
                assert_eq!(c.echo.req_paths.len(), c.paths.len());
            }
            for q in &c.query {
                assert!(!q.is_empty());
            }
            c.echo
        }
        Err(e) => {
            assert!(!e.error.is_empty());
            e.echo
        }
    };
    assert!(
        is_json(&echo.data),
        "echo data is not JSON: {:?}",
        echo.data
    );
    let members = format!("{{{}}}", echo.members);
    assert!(is_json(&members), "echo members are not JSON: {members:?}");
}

// ------------------------------------------------------------------ config, objects

pub fn config_toml(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = lwm2m_gateway::config::Config::from_toml_str(s) else {
        return;
    };
    if c.validate().is_ok() {
        let _ = c.udp_listener();
        let _ = CoreSettings::from(&c);
    }
}

pub fn objects_xml(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objs) = lwm2m_gateway::objects::parse_str(s) else {
        return;
    };
    for o in &objs {
        for (id, r) in &o.def.resources {
            assert_eq!(*id, r.id);
        }
    }
    let reg = lwm2m_gateway::objects::ObjectRegistry::from_parsed(objs);
    for id in reg.ids().collect::<Vec<_>>() {
        assert!(reg.get(id).is_some());
    }
}

// ------------------------------------------------------------------ composite answers

/// Paths a composite command of [`composite_response`] may name (none within another).
const COMPOSITE_PATHS: &[&str] = &["/3/0/9", "/1/0/1", "/3/0/14", "/3303/0", "/5/0/0", "/3/0/7"];

/// The device of [`composite_response`].
const COMPOSITE_DEV: &str = "cdev";

/// One core and one LwM2M 1.1 device driven through read-composite or observe-composite
/// (and cancel-observe-composite) commands and fuzzed answers.
struct CompositeWorld {
    core: ShardCore,
    dir: Arc<Directory>,
    now: u64,
    timers: Vec<(u64, Timer)>,
    peer: SocketAddr,
    paths: Vec<String>,
    /// What every FETCH must carry: Content-Format, Accept and body (the first one's).
    fetch: Option<(Option<u32>, Option<u32>, Vec<u8>)>,
    /// The requests the core sent, latest last: (mid, token).
    sent: Vec<(u16, Vec<u8>)>,
    /// The observe command's token once the core sent it.
    observe_token: Option<Vec<u8>>,
    /// reqID → (msgType, finals published, ack events).
    cmds: BTreeMap<u64, (&'static str, u32, u32)>,
}

impl CompositeWorld {
    fn new(ct: &str, paths: Vec<String>) -> Self {
        static REGISTRY: std::sync::OnceLock<Arc<lwm2m_gateway::objects::ObjectRegistry>> =
            std::sync::OnceLock::new();
        let reg = REGISTRY
            .get_or_init(|| Arc::new(lwm2m_gateway::objects::builtin_registry()))
            .clone();
        let dir = Arc::new(Directory::new());
        let mut core = ShardCore::new(0, Arc::new(core_settings()), dir.clone(), 99);
        core.set_registry(reg);
        let mut w = CompositeWorld {
            core,
            dir,
            now: 1_000,
            timers: Vec::new(),
            peer: peer(1),
            paths,
            fetch: None,
            sent: Vec::new(),
            observe_token: None,
            cmds: BTreeMap::new(),
        };
        let links = format!("</>;rt=\"oma.lwm2m\"{ct},</1/0>,</3/0>,</3303/0>,</5/0>");
        let ep = format!("ep={COMPOSITE_DEV}");
        let reg = request(
            true,
            codes::POST,
            1,
            &[1, 2],
            &[b"rd"],
            &[ep.as_bytes(), b"lt=300", b"lwm2m=1.1", b"b=U"],
            links.as_bytes(),
        );
        let replies = w.datagram(&reg);
        assert_eq!(replies.len(), 1);
        let m = Message::parse(&replies[0]).expect("CoAP");
        assert_eq!(m.code, codes::CREATED, "the Register is accepted");
        w
    }

    /// Delivers a datagram from the device; returns the replies (requests of the core's
    /// own are checked and recorded instead).
    fn datagram(&mut self, d: &[u8]) -> Vec<Vec<u8>> {
        let input = Input::Datagram {
            peer: self.peer,
            data: d,
            identity: None,
        };
        self.core.handle(self.now, input);
        self.collect()
    }

    fn collect(&mut self) -> Vec<Vec<u8>> {
        let mut datagrams = Vec::new();
        let mut publishes = Vec::new();
        let timers = &mut self.timers;
        self.core.drain(|o| match o {
            Output::Datagram { to, bytes, .. } => datagrams.push((to, bytes.to_vec())),
            Output::Mqtt(MqttOut::Publish { topic, payload, .. }) => {
                publishes.push((topic, payload))
            }
            Output::Mqtt(_) => {}
            Output::Timer { at, timer } => timers.push((at, timer)),
            Output::Shard { .. } => panic!("one shard sends nothing to others"),
            Output::Auth { .. } => unreachable!("authentication is off"),
            Output::Bootstrap(_) => unreachable!("bootstrap is off"),
            Output::Store(c) => check_store_change(&c),
            Output::Cluster(_) => unreachable!("the store is not shared"),
        });
        let mut replies = Vec::new();
        for (to, bytes) in datagrams {
            assert_eq!(to, self.peer, "a datagram to another address");
            let m = Message::parse(&bytes).expect("the core sends well-formed CoAP");
            if codes::is_request(m.code) {
                self.check_request(&m);
                self.sent.push((m.mid, m.token.to_vec()));
            } else {
                assert_ne!(m.mtype, MsgType::Con, "a CON reply");
                replies.push(bytes);
            }
        }
        for (topic, payload) in publishes {
            self.mqtt(&topic, &payload);
        }
        replies
    }

    /// Every request is a CON FETCH of the root carrying the first one's Content-Format,
    /// Accept and body (Block2 follow-ups and the cancel repeat them).
    fn check_request(&mut self, m: &Message<'_>) {
        assert_eq!((m.mtype, m.code), (MsgType::Con, codes::FETCH), "{m:?}");
        assert_eq!(m.token.len(), 4);
        assert!(m.option(opt::URI_PATH).is_none(), "a FETCH of the root");
        let cf = m.option_uint(opt::CONTENT_FORMAT);
        let accept = m.option_uint(opt::ACCEPT);
        let this = (cf, accept, m.payload.to_vec());
        match &self.fetch {
            None => {
                assert!(matches!(cf, Some(110) | Some(112)), "paths in SenML");
                assert!(matches!(accept, Some(110) | Some(112) | Some(11544)));
                let f = cf.unwrap_or(0) as u16;
                let paths = formats::decode_composite(Some(f), f, m.payload, &())
                    .expect("the paths we send decode");
                assert!(paths.is_empty(), "names only, no values");
                self.fetch = Some(this);
            }
            Some(first) => assert_eq!(*first, this, "every FETCH says the same"),
        }
        if m.option_uint(opt::OBSERVE) == Some(0) {
            self.observe_token = Some(m.token.to_vec());
        }
    }

    fn mqtt(&mut self, topic: &str, payload: &[u8]) {
        use simd_json::prelude::*;
        let v = parse_json(payload);
        if trace() {
            eprintln!("{topic} {v}");
        }
        let msg_type = v.get("msgType").and_then(|m| m.as_str()).unwrap_or("");
        if msg_type == "register" {
            return;
        }
        if msg_type == "deregister" {
            // The registration ended (its lifetime passed while the input ran).
            let ep = v
                .get("data")
                .and_then(|d| d.get("ep"))
                .and_then(|e| e.as_str());
            assert_eq!(ep, Some(COMPOSITE_DEV), "{v}");
            return;
        }
        let id = req_id(&v).unwrap_or_else(|| panic!("no reqID: {v}"));
        let notify = topic == format!("lwm2m/{COMPOSITE_DEV}/up/notify");
        assert!(
            notify || topic == format!("lwm2m/{COMPOSITE_DEV}/up/resp"),
            "publish on {topic}"
        );
        let (op, finals, acks) = self.cmds.get_mut(&id).expect("a reqID never sent");
        let data = v.get("data").expect("data");
        match msg_type {
            "ack" => {
                assert!(!notify && *finals == 0, "an ack after the final message");
                *acks += 1;
                return;
            }
            "coap_timeout" | "coap_reset" => assert!(!notify),
            "notify" => {
                assert!(notify, "a notification on the response topic");
                assert_eq!(*op, "observe-composite");
                assert_eq!(*finals, 1, "a notification before the observe's response");
            }
            t => {
                assert!(!notify);
                assert_eq!(t, *op, "msgType echoed");
            }
        }
        if !notify {
            *finals += 1;
            assert_eq!(*finals, 1, "a second final message for reqID {id}");
        }
        if matches!(msg_type, "coap_timeout" | "coap_reset") {
            return;
        }
        let want: Vec<&str> = self.paths.iter().map(String::as_str).collect();
        let got: Vec<&str> = data
            .get("reqPath")
            .and_then(|p| p.as_array())
            .expect("reqPath is a list")
            .iter()
            .map(|p| p.as_str().expect("paths are strings"))
            .collect();
        assert_eq!(got, want, "reqPath");
        let code = data.get("code").and_then(|c| c.as_str()).expect("code");
        match data.get("content") {
            Some(c) => {
                assert!(code.starts_with("2."), "content with {code}");
                for item in c.as_array().expect("content is a list") {
                    let path = item.get("path").and_then(|p| p.as_str()).expect("path");
                    assert!(path.starts_with('/'), "path {path}");
                    assert!(item.get("value").is_some(), "an item without a value");
                }
            }
            None => assert!(
                !code.starts_with("2.") || data.get("error").is_some(),
                "a {code} answer to a read without content"
            ),
        }
    }

    fn command(&mut self, id: u64, op: &'static str) {
        let paths: Vec<String> = self.paths.iter().map(|p| format!("\"{p}\"")).collect();
        let body = format!(
            r#"{{"reqID":{id},"msgType":"{op}","data":{{"paths":[{}]}}}}"#,
            paths.join(",")
        );
        let topic = format!("lwm2m/{COMPOSITE_DEV}/dn/cmd");
        let c = RoutedCommand::from_topic(
            self.core.settings(),
            &self.dir,
            &topic,
            body.into_bytes(),
            Default::default(),
        )
        .expect("a command topic");
        self.cmds.insert(id, (op, 0, 0));
        self.core
            .handle(self.now, Input::Shard(ShardMsg::Command(c)));
        assert!(self.collect().is_empty(), "a command caused a reply");
    }

    /// Fires the timers due up to `now + ms`, in order.
    fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        loop {
            self.timers.sort_by_key(|t| t.0);
            match self.timers.first() {
                Some(&(at, t)) if at <= until => {
                    self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.core.handle(self.now, Input::Timer(t));
                    assert!(self.collect().is_empty(), "a timer caused a reply");
                }
                _ => break,
            }
        }
        self.now = until;
    }
}

/// A device's answer or notification from fuzz bytes: code, Content-Format, Observe,
/// sometimes Block2, and a payload of up to 64 KiB.
fn composite_message(r: &mut Bytes<'_>, t: MsgType, mid: u16, token: &[u8]) -> Vec<u8> {
    let code = [
        codes::CONTENT,
        codes::CONTENT,
        codes::CONTENT,
        codes::CHANGED,
        codes::NOT_FOUND,
        codes::INTERNAL_SERVER_ERROR,
    ][r.u8() as usize % 6];
    let how = r.u8();
    let cf: Option<u32> = match how % 10 {
        0 => None,
        1 | 2 => Some(110),
        3 | 4 => Some(112),
        5 | 6 => Some(11544),
        7 => Some(60),
        8 => Some(11542),
        _ => Some(r.u16() as u32),
    };
    let observe = (how & 0x10 != 0).then(|| r.u8() as u32);
    let block2 = (how & 0xe0 == 0xe0).then(|| {
        let b = r.u8();
        BlockOpt {
            num: (b & 3) as u32,
            more: b & 4 != 0,
            szx: (b >> 3) % 7,
        }
    });
    let len = match r.u8() {
        255 => r.u16() as usize,
        n => n as usize,
    };
    let payload = r.take(len);
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, t, code, mid, token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(cf) = cf {
        w.option_uint(opt::CONTENT_FORMAT, cf);
    }
    if let Some(b) = block2 {
        w.option_uint(opt::BLOCK2, b.encode());
    }
    w.payload(payload);
    buf
}

/// One LwM2M 1.1 device (its root link's `ct` picked by the first byte: none, 110, 112,
/// 11544 or "11542 112") sent a read-composite or an observe-composite of some paths, then
/// up to 32 device messages from the fuzz bytes: piggybacked and separate answers to the
/// core's latest request (fuzzed code, Content-Format, Observe, Block2 and payload), empty
/// ACKs, notifications on the observation's token, a cancel-observe-composite or another
/// read-composite, and time passing. Checks: no panic; every request of the core is a CON
/// FETCH of the root repeating the first one's Content-Format, Accept and body (its paths
/// in SenML, no values); no reply is CON; every MQTT message is JSON on the device's topics
/// with `reqPath` the list of paths and, when it has `content`, a 2.xx code and items with
/// absolute paths and values; a notification follows its observe's response; at most one
/// final message per command and, once time has run out, exactly one.
pub fn composite_response(data: &[u8]) {
    let mut r = Bytes::new(data);
    let sel = r.u8();
    let ct = ["", ";ct=110", ";ct=112", ";ct=11544", ";ct=\"11542 112\""][sel as usize % 5];
    let mask = r.u8();
    let paths: Vec<String> = COMPOSITE_PATHS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0 || *i == (mask >> 6) as usize)
        .map(|(_, p)| p.to_string())
        .collect();
    let mut w = CompositeWorld::new(ct, paths);
    let observe = sel & 0x80 != 0;
    w.command(
        1,
        if observe {
            "observe-composite"
        } else {
            "read-composite"
        },
    );
    let mut next_id = 2;
    let mut mid = 1000u16;
    for _ in 0..32 {
        if r.done() {
            break;
        }
        mid = mid.wrapping_add(1);
        match r.u8() % 8 {
            0..=2 => {
                // A piggybacked answer to the latest request.
                if let Some((m, t)) = w.sent.last().cloned() {
                    let d = composite_message(&mut r, MsgType::Ack, m, &t);
                    w.datagram(&d);
                }
            }
            3 => {
                // A separate answer (CON or NON) with the latest request's token.
                if let Some((_, t)) = w.sent.last().cloned() {
                    let kind = if r.u8() & 1 == 0 {
                        MsgType::Con
                    } else {
                        MsgType::Non
                    };
                    let d = composite_message(&mut r, kind, mid, &t);
                    w.datagram(&d);
                }
            }
            4 => {
                // A notification on the observation's token.
                if let Some(t) = w.observe_token.clone() {
                    let kind = if r.u8() & 1 == 0 {
                        MsgType::Con
                    } else {
                        MsgType::Non
                    };
                    let d = composite_message(&mut r, kind, mid, &t);
                    w.datagram(&d);
                }
            }
            5 => {
                if let Some((m, _)) = w.sent.last().cloned() {
                    let mut d = Vec::new();
                    MessageWriter::new(&mut d, MsgType::Ack, codes::EMPTY, m, &[]).finish();
                    w.datagram(&d);
                }
            }
            6 => {
                let op = if observe && r.u8() & 1 == 0 {
                    "cancel-observe-composite"
                } else {
                    "read-composite"
                };
                w.command(next_id, op);
                next_id += 1;
            }
            _ => {
                let ms = r.u8() as u64 * 500;
                w.advance(ms);
            }
        }
    }
    // Without the device: every command ends (retransmissions run out, a separate
    // answer is waited for EXCHANGE_LIFETIME at most), one after the other.
    w.advance((next_id + 1) * EXCHANGE_SPAN_MS);
    for (id, (op, finals, _)) in &w.cmds {
        assert_eq!(*finals, 1, "{op} {id}: {finals} final messages");
    }
}

// ------------------------------------------------------------------ stateful core

/// Reads fuzz bytes as op codes and arguments; zeros once exhausted.
pub struct Bytes<'a> {
    d: &'a [u8],
    i: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Self { d, i: 0 }
    }
    pub fn done(&self) -> bool {
        self.i >= self.d.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.d.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let s = self.i.min(self.d.len());
        let e = (s + n).min(self.d.len());
        self.i = s + n;
        &self.d[s..e]
    }
}

/// The default configuration's settings with QoS 1 commands, Register and Update
/// messages, per-endpoint subscriptions and a mountpoint without the command suffix.
pub fn core_settings() -> CoreSettings {
    let qos1 = |topic: &str| Translator {
        topic: topic.into(),
        qos: 1,
    };
    CoreSettings {
        mountpoint: Template::parse("lwm2m/${endpoint_name}/"),
        command: qos1("dn/#"),
        register: qos1("up/resp"),
        update: qos1("up/update"),
        per_endpoint_subscriptions: true,
        // Small queues and a queue TTL: overflow and expiry get exercised too.
        max_queued: 4,
        queue_ttl_ms: 60_000,
        ..CoreSettings::defaults()
    }
}

/// Retransmission span of an unacknowledged request (ACK_TIMEOUT 2 s · 1.5 ·
/// (2^(MAX_RETRANSMIT+1) - 1)) plus EXCHANGE_LIFETIME after an empty ACK, rounded up:
/// the longest a request the core sent can stay in flight without device traffic.
pub const EXCHANGE_SPAN_MS: u64 = 247_000 + 93_000;

const NAMES: &[&str] = &["dev-a", "dev-b", "dev-c", "urn:imei:1", "x", "dev-f"];
const PEERS: u8 = 8;

fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i / 2], 5683 + (i % 2) as u16))
}

/// Builds a request from parts.
#[allow(clippy::too_many_arguments)]
pub fn request(
    con: bool,
    code: u8,
    mid: u16,
    token: &[u8],
    path: &[&[u8]],
    query: &[&[u8]],
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::new();
    let t = if con { MsgType::Con } else { MsgType::Non };
    let mut w = MessageWriter::new(&mut buf, t, code, mid, token);
    for p in path {
        w.option(opt::URI_PATH, p);
    }
    for q in query {
        w.option(opt::URI_QUERY, q);
    }
    w.payload(payload);
    buf
}

/// Several shards sharing a directory, driven op by op from fuzz bytes.
pub struct World {
    pub cores: Vec<ShardCore>,
    pub dir: Arc<Directory>,
    pub now: u64,
    pub timers: Vec<(u64, usize, Timer)>,
    /// Cross-shard messages not delivered yet (delivered in any order).
    pub mailbox: Vec<(u16, ShardMsg)>,
    /// Names that got a register message on MQTT.
    pub names: HashSet<String>,
    pub locations: Vec<String>,
    /// (shard, filter): the command filters each shard's broker connections hold.
    pub subscribed: HashSet<(usize, String)>,
    /// Register and update messages published.
    pub publishes: u64,
    /// Messages saying a registration ended (`deregister`).
    pub ends: u64,
    pub last: Option<(u8, Vec<u8>)>,
    /// Commands published on MQTT, by reqID.
    pub cmds: BTreeMap<u64, Cmd>,
    pub next_req: u64,
    /// Final messages without a reqID (answers to commands that are not JSON).
    pub anon_finals: u64,
    /// The latest requests the core sent to devices (newest last).
    pub sent: Vec<Sent>,
    /// Command messages seen on MQTT: finals, "ack" events, notifications.
    pub finals: u64,
    pub acks: u64,
    pub notifies: u64,
    pub requests: u64,
    /// Ops run so far.
    pub ops: usize,
    /// The store as its writer keeps it: every `Output::Store` applied in order
    /// (name → location and record).
    pub store: BTreeMap<String, (u64, Vec<u8>)>,
    /// Restarts so far, and the commands they ended without a final message (commands
    /// waiting or in flight are not stored, by design).
    pub restarts: u64,
    pub lost_at_restart: u64,
    /// The settings of the cores (a node of a cluster: a shared store and a location
    /// key of its own).
    pub settings: Arc<CoreSettings>,
    /// A node sharing its store with others (`two_nodes`): store changes wait in
    /// `unwritten` for the node's writer and takes in `takes` for its cluster thread,
    /// instead of going to `store` at once.
    pub shared: bool,
    pub unwritten: Vec<lwm2m_gateway::lwm2m::StoreChange>,
    /// The takes the shards asked for, with the shard that asked.
    pub takes: Vec<(usize, lwm2m_gateway::lwm2m::ClusterRequest)>,
    /// (shard, filter): subscriptions sent to the broker and not acknowledged yet (a
    /// node of several: those of a registration taken over from another node, while
    /// `defer_acks` is set), which the broker delivers nothing to.
    pub unacked: HashSet<(usize, String)>,
    pub defer_acks: bool,
}

/// A command published to the core, and what came back for it.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The endpoint name in the command topic.
    pub name: String,
    pub msg_type: Option<String>,
    /// Not valid JSON: its final may carry no reqID.
    pub broken: bool,
    pub finals: u32,
}

/// A request the core sent to a device.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub to: u8,
    pub mid: u16,
    pub token: [u8; 4],
    /// An observe registration (Observe: 0).
    pub observe: bool,
}

/// What one delivery produced.
struct Effects {
    /// Datagrams other than requests the core sent on its own.
    replies: Vec<(SocketAddr, Vec<u8>)>,
    /// Requests the core sent to devices (commands, retransmissions, block steps).
    requests: usize,
    /// Register and update messages.
    publishes: usize,
}

fn peer_index(a: SocketAddr) -> Option<u8> {
    (0..PEERS).find(|&i| peer(i) == a)
}

/// `reqID` of a JSON object, when it is an unsigned integer.
fn req_id(v: &simd_json::OwnedValue) -> Option<u64> {
    use simd_json::prelude::*;
    v.get("reqID").and_then(|x| x.as_u64())
}

fn parse_json(bytes: &[u8]) -> simd_json::OwnedValue {
    let mut copy = bytes.to_vec();
    simd_json::to_owned_value(&mut copy).unwrap_or_else(|e| {
        panic!(
            "MQTT payload is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

impl World {
    pub fn new(shards: usize) -> Self {
        Self::with_settings(shards, core_settings(), 0)
    }

    /// Node `node` of several sharing one store: its own location key and seeds.
    pub fn node(shards: usize, node: u64) -> Self {
        let mut s = core_settings();
        s.shared_store = true;
        s.location_key = [0x0123_4567_89ab_cdef ^ node, 0x0fed_cba9_8765_4321];
        let mut w = Self::with_settings(shards, s, 500 * node);
        w.shared = true;
        w
    }

    fn with_settings(shards: usize, settings: CoreSettings, seed: u64) -> Self {
        let s = Arc::new(settings);
        let dir = Arc::new(Directory::new());
        let cores = (0..shards)
            .map(|i| {
                let seed = seed + 77 + 1000 * i as u64;
                ShardCore::new(i as u16, s.clone(), dir.clone(), seed)
            })
            .collect();
        Self {
            cores,
            dir,
            now: 1_000,
            timers: Vec::new(),
            mailbox: Vec::new(),
            names: HashSet::new(),
            locations: Vec::new(),
            subscribed: HashSet::new(),
            publishes: 0,
            ends: 0,
            last: None,
            cmds: BTreeMap::new(),
            next_req: 1,
            anon_finals: 0,
            sent: Vec::new(),
            finals: 0,
            acks: 0,
            notifies: 0,
            requests: 0,
            ops: 0,
            store: BTreeMap::new(),
            restarts: 0,
            lost_at_restart: 0,
            settings: s,
            shared: false,
            unwritten: Vec::new(),
            takes: Vec::new(),
            unacked: HashSet::new(),
            defer_acks: false,
        }
    }

    /// The broker acknowledged every subscription sent so far.
    pub fn acknowledge(&mut self) {
        let acked: Vec<_> = self.unacked.drain().collect();
        self.subscribed.extend(acked);
    }

    /// The gateway stops cleanly and starts again on its store: everything in flight
    /// between the shards is delivered first (a clean stop drains the shards), the
    /// cores and the directory are replaced by new ones fed the stored records. Every
    /// registration comes back as it was (name, location, address, deadline,
    /// observations); commands waiting or in flight end without a final message.
    pub fn restart(&mut self) {
        self.deliver_all();
        let snapshot = |cores: &[ShardCore], now: u64| {
            let mut m = BTreeMap::new();
            for c in cores {
                for (_, ep) in c.endpoints().slots() {
                    if ep.expires_ms <= now {
                        continue; // due at once: ended by its timer, before or after.
                    }
                    let mut tokens: Vec<u32> = ep.session.as_ref().map_or(Vec::new(), |s| {
                        s.observations.iter().map(|o| o.token).collect()
                    });
                    tokens.sort_unstable();
                    m.insert(
                        ep.name.to_string(),
                        (ep.location, ep.peer, ep.expires_ms, ep.lifetime_s, tokens),
                    );
                }
            }
            m
        };
        let before = snapshot(&self.cores, self.now);
        let shards = self.cores.len();
        let s = self.settings.clone();
        self.dir = Arc::new(Directory::new());
        self.restarts += 1;
        self.cores = (0..shards)
            .map(|i| {
                let seed = 77 + 1000 * i as u64 + 7919 * self.restarts;
                ShardCore::new(i as u16, s.clone(), self.dir.clone(), seed)
            })
            .collect();
        self.timers.clear();
        self.subscribed.clear();
        self.unacked.clear();
        self.takes.clear();
        for (name, (_, bytes)) in &self.store {
            let ep = lwm2m_gateway::lwm2m::record::decode(bytes, s.clock_epoch_ms)
                .unwrap_or_else(|e| panic!("the stored record of {name} does not decode: {e}"));
            let shard = lwm2m_gateway::lwm2m::publish::name_hash(name) as usize % shards;
            self.cores[shard].handle(self.now, Input::Restore(Box::new(ep)));
        }
        let fx = self.collect();
        assert!(
            fx.replies.is_empty() && fx.publishes == 0,
            "a restore says nothing"
        );
        self.deliver_all();
        let after = snapshot(&self.cores, self.now);
        if self.shared {
            // A node of several: every registration it held comes back; the store may
            // also name it owner of a record it no longer held (a known defect, see
            // `two_nodes::finish`), which it restores too.
            for (name, reg) in &before {
                let back = after.get(name);
                assert_eq!(back, Some(reg), "the registration of {name} restored");
            }
        } else {
            assert_eq!(after, before, "the registrations restored from the store");
        }
        for c in self.cmds.values_mut() {
            if c.finals == 0 && !c.broken {
                c.finals = 1;
                self.lost_at_restart += 1;
            }
        }
    }

    fn shard_of(&self, p: u8) -> usize {
        p as usize % self.cores.len()
    }

    /// Collects the outputs of every core.
    fn collect(&mut self) -> Effects {
        let mut fx = Effects {
            replies: Vec::new(),
            requests: 0,
            publishes: 0,
        };
        let mut datagrams = Vec::new();
        let mut mqtt = Vec::new();
        let mut stored = Vec::new();
        let shared = self.shared;
        for (i, c) in self.cores.iter_mut().enumerate() {
            let (timers, mailbox, takes) = (&mut self.timers, &mut self.mailbox, &mut self.takes);
            c.drain(|o| match o {
                Output::Datagram { to, bytes, .. } => datagrams.push((to, bytes.to_vec())),
                Output::Mqtt(m) => mqtt.push((i, m)),
                Output::Timer { at, timer } => timers.push((at, i, timer)),
                Output::Shard { to, msg } => mailbox.push((to, msg)),
                Output::Auth { .. } => unreachable!("authentication is off"),
                Output::Bootstrap(_) => unreachable!("bootstrap is off"),
                Output::Store(c) => {
                    check_store_change(&c);
                    stored.push(c);
                }
                Output::Cluster(r) if shared => takes.push((i, r)),
                Output::Cluster(_) => unreachable!("the store is not shared"),
            });
        }
        if shared {
            self.unwritten.extend(stored);
        } else {
            for c in stored {
                self.apply_store_change(c);
            }
        }
        for (shard, m) in mqtt {
            match m {
                MqttOut::Publish { topic, payload, .. } => {
                    if self.mqtt_message(&topic, &payload) {
                        fx.publishes += 1;
                    }
                }
                MqttOut::Subscribe { filter, .. } => {
                    // Its lane is the registration's (the connection of its register
                    // message); the shard that output it is its home.
                    if self.defer_acks && !self.subscribed.contains(&(shard, filter.clone())) {
                        self.unacked.insert((shard, filter));
                    } else {
                        self.subscribed.insert((shard, filter));
                    }
                }
                MqttOut::Unsubscribe { filter, lane } => {
                    assert_eq!(lane as usize, shard, "an unsubscribe names another shard");
                    self.unacked.remove(&(shard, filter.clone()));
                    self.subscribed.remove(&(shard, filter));
                }
            }
        }
        for (to, b) in datagrams {
            let m = Message::parse(&b)
                .unwrap_or_else(|e| panic!("datagram from the core is not CoAP ({e}): {b:?}"));
            if codes::class(m.code) != 0 || m.code == codes::EMPTY {
                fx.replies.push((to, b));
                continue;
            }
            // A request of the core's own: a command sent to a device.
            assert_eq!(
                m.mtype,
                MsgType::Con,
                "the core sent a request that is not CON"
            );
            assert_eq!(m.token.len(), 4, "request token of {} bytes", m.token.len());
            let to = peer_index(to).unwrap_or_else(|| panic!("request to {to}, not a device"));
            let observe = m.option_uint(opt::OBSERVE) == Some(0);
            let token = <[u8; 4]>::try_from(m.token).expect("4 bytes");
            self.sent.push(Sent {
                to,
                mid: m.mid,
                token,
                observe,
            });
            if self.sent.len() > 32 {
                self.sent.remove(0);
            }
            fx.requests += 1;
            self.requests += 1;
        }
        self.publishes += fx.publishes as u64;
        for (_, r) in &fx.replies {
            if let Ok(m) = Message::parse(r) {
                if m.code == codes::CREATED {
                    let segs: Vec<&[u8]> = m.option_values(opt::LOCATION_PATH).collect();
                    assert_eq!(segs.len(), 2, "2.01 carries rd/<location>");
                    assert_eq!(segs[0], b"rd");
                    let loc = String::from_utf8(segs[1].to_vec()).expect("location is text");
                    if !self.locations.contains(&loc) {
                        self.locations.push(loc);
                    }
                }
            }
        }
        fx
    }

    /// What the store writer does with a change: a put replaces the name's record, a
    /// removal takes it only when it is of the removal's location.
    fn apply_store_change(&mut self, c: lwm2m_gateway::lwm2m::StoreChange) {
        use lwm2m_gateway::lwm2m::StoreChange;
        match c {
            StoreChange::Put {
                name,
                location,
                record,
                ..
            } => {
                self.store.insert(name.to_string(), (location, record));
            }
            StoreChange::Remove { name, location } => {
                if self.store.get(&*name).is_some_and(|(l, _)| *l == location) {
                    self.store.remove(&*name);
                }
            }
        }
    }

    /// One MQTT message: true for a register or update message; a command message
    /// is checked against the commands published (one final per reqID).
    fn mqtt_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        use simd_json::prelude::*;
        let rest = topic
            .strip_prefix("lwm2m/")
            .unwrap_or_else(|| panic!("publish outside the mountpoint: {topic}"));
        if rest.ends_with("/up/update") {
            return true;
        }
        let v = parse_json(payload);
        let msg_type = v
            .get("msgType")
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let id = req_id(&v);
        if let Some(n) = rest.strip_suffix("/up/notify") {
            self.notifies += 1;
            let id = id.unwrap_or_else(|| panic!("notification without a reqID: {v}"));
            let c = self
                .cmds
                .get(&id)
                .expect("notification for a reqID never sent");
            assert_eq!(c.name, n, "notification on another endpoint's topic");
            assert_eq!(
                c.msg_type.as_deref(),
                Some("observe"),
                "notify of a non-observe"
            );
            assert_eq!(c.finals, 1, "notification before the observe's response");
            assert_eq!(msg_type.as_deref(), Some("notify"));
            return false;
        }
        let n = rest
            .strip_suffix("/up/resp")
            .unwrap_or_else(|| panic!("publish on an unexpected topic: {topic}"));
        if msg_type.as_deref() == Some("register")
            && id.is_none()
            && v.get("data").and_then(|d| d.get("ep")).is_some()
        {
            // lwm2m/<name>/up/resp is also where register messages go.
            self.names.insert(n.to_string());
            return true;
        }
        if msg_type.as_deref() == Some("deregister") && id.is_none() {
            // The end of a registration (also on the register topic): its endpoint and
            // one of the four reasons.
            let d = v.get("data").expect("deregister message without data");
            assert_eq!(d.get("ep").and_then(|e| e.as_str()), Some(n), "{v}");
            let reason = d.get("reason").and_then(|r| r.as_str());
            assert!(
                matches!(
                    reason,
                    Some("deregister" | "expired" | "kicked" | "replaced")
                ),
                "deregister message with an unknown reason: {v}"
            );
            self.ends += 1;
            return false;
        }
        if msg_type.as_deref() == Some("ack") {
            // The device acknowledged; the response comes separately. Not final.
            self.acks += 1;
            let id = id.unwrap_or_else(|| panic!("ack event without a reqID: {v}"));
            let c = self
                .cmds
                .get(&id)
                .expect("ack event for a reqID never sent");
            assert_eq!(
                c.finals, 0,
                "ack event after the final message of reqID {id}"
            );
            return false;
        }
        self.finals += 1;
        let event = matches!(msg_type.as_deref(), Some("coap_timeout" | "coap_reset"));
        if !event {
            assert!(
                v.get("data").and_then(|d| d.get("code")).is_some(),
                "final message without data.code: {v}"
            );
        }
        let Some(id) = id else {
            self.anon_finals += 1;
            let broken = self.cmds.values().filter(|c| c.broken).count() as u64;
            assert!(
                self.anon_finals <= broken,
                "a final message nobody asked for: {v}"
            );
            return false;
        };
        let c = self
            .cmds
            .get_mut(&id)
            .unwrap_or_else(|| panic!("final message for reqID {id}, never sent: {v}"));
        c.finals += 1;
        assert_eq!(
            c.finals, 1,
            "two final messages for reqID {id}: the second {v}"
        );
        assert_eq!(c.name, n, "final message on another endpoint's topic");
        if !event {
            assert_eq!(
                msg_type, c.msg_type,
                "final message echoes another msgType: {v}"
            );
        }
        false
    }

    /// Publishes a command for endpoint `name` on shard `shard` (any shard: the
    /// core forwards it to the endpoint's).
    pub fn command(
        &mut self,
        shard: usize,
        id: u64,
        name: &str,
        msg_type: Option<&str>,
        body: String,
        broken: bool,
    ) {
        assert!(
            !self.cmds.contains_key(&id),
            "reqID {id} reused by the checker"
        );
        self.cmds.insert(
            id,
            Cmd {
                name: name.to_string(),
                msg_type: msg_type.map(str::to_string),
                broken,
                finals: 0,
            },
        );
        let topic = format!("lwm2m/{name}/dn/cmd");
        let shard = shard % self.cores.len();
        let core = &mut self.cores[shard];
        match RoutedCommand::from_topic(
            core.settings(),
            &self.dir,
            &topic,
            body.into_bytes(),
            Default::default(),
        ) {
            Some(c) => core.handle(self.now, Input::Shard(ShardMsg::Command(c))),
            None => unreachable!("a command topic"),
        }
        let fx = self.collect();
        assert!(fx.replies.is_empty(), "a command caused a reply datagram");
        assert_eq!(fx.publishes, 0, "a command caused a register message");
    }

    /// Commands without their final message yet.
    pub fn open_commands(&self) -> Vec<u64> {
        self.cmds
            .iter()
            .filter(|(_, c)| c.finals == 0)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Checks that every command got exactly one final message.
    pub fn check_all_final(&self, why: &str) {
        let broken_unanswered = self
            .cmds
            .values()
            .filter(|c| c.broken && c.finals == 0)
            .count() as u64;
        assert_eq!(
            self.anon_finals, broken_unanswered,
            "{why}: final messages without reqID vs commands that are not JSON"
        );
        for (id, c) in &self.cmds {
            assert!(
                c.finals == 1 || (c.finals == 0 && c.broken),
                "{why}: reqID {id} ({:?} for {}) got {} final messages",
                c.msg_type,
                c.name,
                c.finals
            );
        }
    }

    /// Delivers a datagram from peer `p` and checks the reply.
    pub fn datagram(&mut self, p: u8, bytes: &[u8]) {
        let shard = self.shard_of(p);
        let from = peer(p);
        let dups = self.cores[shard].stats().duplicates;
        if trace() {
            match Message::parse(bytes) {
                Ok(m) => {
                    let path: Vec<String> = m
                        .option_values(opt::URI_PATH)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    let q: Vec<String> = m
                        .option_values(opt::URI_QUERY)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    eprintln!(
                        "  datagram from {from} to shard {shard}: {:?} code {} mid {} {path:?} {q:?}",
                        m.mtype, m.code, m.mid
                    );
                }
                Err(e) => eprintln!("  datagram from {from} to shard {shard}: {e}"),
            }
        }
        let before = self.cores[shard].endpoints().find_peer(&from).is_some();
        let data = Input::Datagram {
            peer: from,
            data: bytes,
            identity: None,
        };
        self.cores[shard].handle(self.now, data);
        let dup = self.cores[shard].stats().duplicates != dups;
        let proven = before || self.cores[shard].endpoints().find_peer(&from).is_some();
        let fx = self.collect();
        check_replies(&fx, from, bytes, dup, proven);
        if dup {
            assert_eq!(
                fx.publishes, 0,
                "a duplicate answered from the cache published"
            );
        }
        self.last = Some((p, bytes.to_vec()));
    }

    /// Delivers cross-shard message `i` of the mailbox.
    pub fn deliver(&mut self, i: usize) {
        if self.mailbox.is_empty() {
            return;
        }
        let (to, m) = self.mailbox.remove(i % self.mailbox.len());
        if trace() {
            eprintln!("  deliver to shard {to}: {m:?}");
        }
        let carried = match &m {
            ShardMsg::Adopt { peer, datagram, .. }
            | ShardMsg::TakeoverMiss { peer, datagram, .. }
            | ShardMsg::CachedReply { peer, datagram, .. } => Some((*peer, datagram.clone())),
            _ => None,
        };
        let dups = self.cores[to as usize].stats().duplicates;
        let registered = |c: &ShardCore| {
            carried
                .as_ref()
                .is_some_and(|(p, _)| c.endpoints().find_peer(p).is_some())
        };
        let before = registered(&self.cores[to as usize]);
        self.cores[to as usize].handle(self.now, Input::Shard(m));
        let proven = before || registered(&self.cores[to as usize]);
        let dup = self.cores[to as usize].stats().duplicates != dups;
        let fx = self.collect();
        match carried {
            Some((from, d)) => {
                check_replies(&fx, from, &d, dup, proven);
                if dup {
                    assert_eq!(
                        fx.publishes, 0,
                        "a duplicate answered from the cache published"
                    );
                }
            }
            None => assert!(fx.replies.is_empty(), "a shard message caused a datagram"),
        }
    }

    pub fn deliver_all(&mut self) {
        let mut n = 0;
        while !self.mailbox.is_empty() {
            self.deliver(0);
            n += 1;
            assert!(n < 10_000, "shard messages never settle");
        }
    }

    /// Fires timer `i` now, due or not.
    pub fn fire(&mut self, i: usize) {
        if self.timers.is_empty() {
            return;
        }
        let (_, shard, t) = self.timers.remove(i % self.timers.len());
        self.cores[shard].handle(self.now, Input::Timer(t));
        let fx = self.collect();
        assert!(
            fx.replies.is_empty() && fx.publishes == 0,
            "a timer caused a reply or a register message"
        );
    }

    /// Moves the clock forward, firing due timers in order.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        loop {
            let next = self
                .timers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.0 <= target)
                .min_by_key(|(_, t)| t.0)
                .map(|(i, t)| (i, t.0));
            let Some((i, at)) = next else { break };
            self.now = self.now.max(at);
            self.fire(i);
        }
        self.now = target;
    }

    /// Invariants that hold at every step.
    pub fn check_always(&self) {
        let total: usize = self.cores.iter().map(|c| c.endpoints().len()).sum();
        assert!(
            total <= self.names.len() * self.cores.len(),
            "more endpoints ({total}) than names ({})",
            self.names.len()
        );
        // Every endpoint has a live expiry timer, else it would never expire.
        for (s, c) in self.cores.iter().enumerate() {
            let t = c.endpoints();
            for (slot, ep) in t.slots() {
                let gen = t.generation(slot);
                let armed = self
                    .timers
                    .iter()
                    .any(|&(_, ts, tm)| ts == s && tm == Timer::Expire { slot, gen });
                assert!(armed, "endpoint {} on shard {s} has no live timer", ep.name);
                let Some(session) = ep.session.as_ref() else {
                    continue;
                };
                // Outstanding state is bounded: NSTART in flight, max_queued waiting.
                assert!(
                    session.inflight.len() <= c.settings().nstart,
                    "{} requests in flight to {}",
                    session.inflight.len(),
                    ep.name
                );
                assert!(
                    session.queue.len() <= c.settings().max_queued,
                    "{} commands queued for {}",
                    session.queue.len(),
                    ep.name
                );
                assert!(session.observations.len() <= CMD_PATHS.len());
                // Every request in flight has a timer (else it never ends), and
                // not many.
                let inc = c.endpoints().incarnation(slot);
                for ex in &session.inflight {
                    let token = ex.token;
                    let n = self
                        .timers
                        .iter()
                        .filter(|&&(_, ts, tm)| {
                            ts == s && tm == Timer::Retransmit { slot, token, inc }
                        })
                        .count();
                    assert!(
                        (1..=3).contains(&n),
                        "request {token:08x} in flight to {} has {n} timers",
                        ep.name
                    );
                }
            }
        }
        assert!(
            self.timers.len() <= 64 + 8 * self.ops,
            "{} timers after {} ops",
            self.timers.len(),
            self.ops
        );
    }

    /// Invariants that hold when no shard message is in flight.
    pub fn check_quiescent(&self) {
        assert!(self.mailbox.is_empty());
        let mut seen = HashSet::new();
        let mut filters = HashSet::new();
        let mut total = 0;
        for (s, c) in self.cores.iter().enumerate() {
            for (_, ep) in c.endpoints().slots() {
                total += 1;
                assert!(
                    self.names.contains(&*ep.name),
                    "{} never registered",
                    ep.name
                );
                filters.insert(format!("{}dn/#", ep.mountpoint));
                let entry = Some(DirEntry {
                    shard: s as u16,
                    location: ep.location,
                });
                assert!(
                    seen.insert(ep.name.to_string()),
                    "{} registered twice",
                    ep.name
                );
                assert_eq!(
                    self.dir.by_name(&ep.name),
                    entry,
                    "directory entry of {}",
                    ep.name
                );
                assert_eq!(self.dir.by_location(ep.location), Some(s as u16));
            }
        }
        assert_eq!(self.dir.len(), total, "directory names leak");
        for loc in &self.locations {
            let Some(l) = lwm2m_gateway::lwm2m::endpoint::Endpoint::parse_location(loc.as_bytes())
            else {
                continue;
            };
            if let Some(s) = self.dir.by_location(l) {
                assert!(
                    self.cores[s as usize]
                        .endpoints()
                        .find_location(l)
                        .is_some(),
                    "directory location {loc} points at shard {s} which lacks it"
                );
            }
        }
        // Every command without its final message waits in exactly one session (queued
        // or in flight), and every command in a session is such a command.
        let mut waiting: BTreeMap<u64, u32> = BTreeMap::new();
        for c in &self.cores {
            for (_, ep) in c.endpoints().slots() {
                let Some(session) = ep.session.as_ref() else {
                    continue;
                };
                let echoes = session
                    .queue
                    .iter()
                    .map(|q| &q.cmd.echo)
                    .chain(session.inflight.iter().map(|e| &e.cmd.echo));
                for echo in echoes {
                    let v = parse_json(format!("{{{}}}", echo.members).as_bytes());
                    let id = req_id(&v)
                        .unwrap_or_else(|| panic!("a command without reqID in {}", ep.name));
                    *waiting.entry(id).or_default() += 1;
                }
            }
        }
        for (id, n) in &waiting {
            let c = self
                .cmds
                .get(id)
                .expect("a session holds a command never sent");
            assert_eq!(c.finals, 0, "reqID {id} is final but still in a session");
            assert_eq!(*n, 1, "reqID {id} is in {n} sessions");
        }
        let broken_open = self
            .cmds
            .values()
            .filter(|c| c.broken && c.finals == 0)
            .count() as u64;
        assert_eq!(
            self.anon_finals, broken_open,
            "commands that are not JSON unanswered"
        );
        for id in self.open_commands() {
            let c = &self.cmds[&id];
            assert!(
                waiting.contains_key(&id) || c.broken,
                "reqID {id} ({:?} for {}) was lost: no final message, in no session",
                c.msg_type,
                c.name
            );
        }
        // Every current filter, and every one kept for a handover (a registration
        // another node took over, until that node's subscription is in place), is held
        // by exactly one shard, its home; nothing else is.
        for c in &self.cores {
            filters.extend(c.kept_for_handover().map(|m| format!("{m}dn/#")));
        }
        let subs = || self.subscribed.iter().chain(&self.unacked);
        let held: HashSet<String> = subs().map(|(_, f)| f.clone()).collect();
        assert_eq!(held, filters, "subscriptions disagree with the tables");
        for (shard, f) in subs() {
            assert_eq!(
                self.dir.sub_home_of(f),
                Some(*shard as u16),
                "{f} held by shard {shard}, not its home (held by {:?})",
                subs()
                    .filter(|(_, g)| g == f)
                    .map(|(s, _)| s)
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// `proven`: the sender's address has a registration (it may get error replies
/// longer than its request, one block of a diagnostic at most).
fn check_replies(fx: &Effects, from: SocketAddr, req: &[u8], dup: bool, proven: bool) {
    assert!(
        fx.replies.len() <= 1,
        "{} replies to one datagram",
        fx.replies.len()
    );
    assert!(
        fx.publishes <= 1,
        "{} publishes for one datagram",
        fx.publishes
    );
    let req_msg = Message::parse(req).ok();
    for (to, r) in &fx.replies {
        assert_eq!(*to, from, "reply to another address");
        let m = Message::parse(r).unwrap_or_else(|e| panic!("reply is not CoAP ({e}): {r:?}"));
        let error = m.mtype == MsgType::Rst || matches!(codes::class(m.code), 4 | 5);
        if error && proven {
            assert!(
                m.payload.len() <= 1024,
                "error reply with {} payload bytes (more than a block)",
                m.payload.len()
            );
        } else if error {
            assert!(
                r.len() <= req.len(),
                "error reply of {} bytes to a request of {}",
                r.len(),
                req.len()
            );
        }
        match m.mtype {
            MsgType::Ack | MsgType::Rst => {
                let mid = u16::from_be_bytes([req[2], req[3]]);
                assert_eq!(m.mid, mid, "ACK/RST message ID");
            }
            MsgType::Non => {}
            MsgType::Con => panic!("the core sent a CON reply"),
        }
        if let (Some(q), false) = (req_msg, dup || m.mtype == MsgType::Rst) {
            // An empty ACK to a device's separate response carries no token.
            let empty_ack = m.mtype == MsgType::Ack && m.code == codes::EMPTY;
            if !(empty_ack && codes::class(q.code) >= 2) {
                assert_eq!(m.token, q.token, "reply token");
            }
        }
    }
}

/// Paths commands name (objects of the core's model and others).
const CMD_PATHS: &[&str] = &[
    "/3/0/1",
    "/3/0",
    "/3303/0/5700",
    "/3303/0",
    "/1/0/1",
    "/3/0/4",
    "/5/0/1",
    "/3303",
];

const RESP_CODES: &[u8] = &[
    codes::CONTENT,
    codes::CHANGED,
    codes::DELETED,
    codes::CREATED,
    codes::NOT_FOUND,
    codes::METHOD_NOT_ALLOWED,
    codes::BAD_REQUEST,
    codes::INTERNAL_SERVER_ERROR,
];

/// A command's JSON from fuzz bytes: (msgType as sent, body, not valid JSON).
fn command_body(r: &mut Bytes<'_>, id: u64) -> (Option<&'static str>, String, bool) {
    let kind = r.u8();
    let path = CMD_PATHS[r.u8() as usize % CMD_PATHS.len()];
    let extra = if kind & 0x80 != 0 {
        r#","mheaders":{"ttl":0}"#
    } else {
        ""
    };
    let (t, data) = match kind % 11 {
        0 => ("read", format!(r#"{{"path":"{path}"}}"#)),
        1 => (
            "write",
            r#"{"path":"/3303/0/5750","type":"String","value":"x"}"#.to_string(),
        ),
        2 => (
            "write",
            r#"{"path":"/3/0/14","type":"String","value":"+02"}"#.to_string(),
        ),
        3 => ("observe", format!(r#"{{"path":"{path}"}}"#)),
        4 => ("execute", r#"{"path":"/3/0/4"}"#.to_string()),
        5 => ("delete", format!(r#"{{"path":"{path}"}}"#)),
        6 => ("cancel-observe", format!(r#"{{"path":"{path}"}}"#)),
        7 => ("discover", format!(r#"{{"path":"{path}"}}"#)),
        // Malformed but JSON: the reqID is echoed with the error.
        8 => ("read", r#"{"path":"/x/y"}"#.to_string()),
        9 => ("launch", r#"{"path":"/3/0"}"#.to_string()),
        _ => ("write", "5".to_string()),
    };
    let body = format!(r#"{{"reqID":{id},"msgType":"{t}","data":{data}{extra}}}"#);
    if kind & 0x40 != 0 {
        // Not JSON: cut short (every proper prefix of an object is invalid).
        let cut = r.u8() as usize % body.len();
        return (Some(t), body[..cut].to_string(), true);
    }
    (Some(t), body, false)
}

/// A device's answer to a request the core sent, from fuzz bytes.
fn device_answer(r: &mut Bytes<'_>, s: &Sent) -> Vec<u8> {
    let how = r.u8();
    let code = RESP_CODES[(how >> 3) as usize % RESP_CODES.len()];
    let observe = (s.observe && how & 0x40 != 0).then(|| r.u16() as u32);
    let payload: &[u8] = if how & 0x20 != 0 { b"42" } else { b"" };
    let mut buf = Vec::new();
    let msg = |buf: &mut Vec<u8>, t: MsgType, mid: u16, token: &[u8]| {
        let mut w = MessageWriter::new(buf, t, code, mid, token);
        if let Some(o) = observe {
            w.option_uint(opt::OBSERVE, o);
        }
        if !payload.is_empty() {
            w.option_uint(opt::CONTENT_FORMAT, 0);
        }
        w.payload(payload);
    };
    match how % 6 {
        // Piggybacked response.
        0 => msg(&mut buf, MsgType::Ack, s.mid, &s.token),
        // Empty ACK: the response follows separately.
        1 => MessageWriter::new(&mut buf, MsgType::Ack, codes::EMPTY, s.mid, &[]).finish(),
        // Separate response, CON or NON, with the request's token.
        2 => msg(&mut buf, MsgType::Con, r.u16(), &s.token),
        3 => msg(&mut buf, MsgType::Non, r.u16(), &s.token),
        4 => MessageWriter::new(&mut buf, MsgType::Rst, codes::EMPTY, s.mid, &[]).finish(),
        // A piggybacked response with another token.
        _ => {
            let mut t = s.token;
            t[3] ^= 1 + r.u8() % 255;
            msg(&mut buf, MsgType::Ack, s.mid, &t)
        }
    }
    buf
}

/// Arbitrary operation sequences against 1-4 shards sharing a directory.
///
/// The second byte: bit 0 delivers cross-shard messages after every op; bit 7
/// enables the device-management ops (commands, device answers, notifications),
/// so inputs from before they existed replay as they did.
///
/// With 0x20 or 0x60 alone among the bits 0x02..0x40 (no earlier input has them): two
/// nodes sharing a store ([`two_nodes`]), 0x60 with restarts of a node.
pub fn core_endpoint(data: &[u8]) {
    if data.len() > 1 && matches!(data[1] & 0x7e, 0x20 | 0x60) {
        two_nodes::run(data);
    } else {
        run_core(data);
    }
}

/// `core_endpoint` in its two-node mode whatever the second byte says (its bits 0x02..0x40
/// become 0x20, or 0x60 with restarts when 0x40 was set).
pub fn core_two_nodes(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let mut d = data.to_vec();
    d[1] = d[1] & 0x81 | 0x20 | d[1] & 0x40;
    two_nodes::run(&d);
}

/// `core_endpoint`, returning the world it leaves (for tests that count).
pub fn run_core(data: &[u8]) -> World {
    let mut r = Bytes::new(data);
    let shards = 1 + (r.u8() % 4) as usize;
    let mode = r.u8();
    let settle = mode & 1 == 1;
    let n_ops = if mode & 0x80 != 0 { 16 } else { 10 };
    // With 0x40 alone among the bits 0x02..0x40 (no earlier input has it), one more op:
    // a restart on the store (`World::restart`).
    let restarts = mode & 0x7e == 0x40;
    let n_ops = n_ops + restarts as u8;
    let mut w = World::new(shards);
    let mut ops = 0;
    while !r.done() && ops < 256 {
        ops += 1;
        w.ops = ops;
        let op = r.u8() % n_ops;
        let p = r.u8() % PEERS;
        if restarts && op == n_ops - 1 {
            w.restart();
            w.check_always();
            w.check_quiescent();
            continue;
        }
        if trace() {
            eprintln!("op {op} peer {p} at {} ms", w.now);
        }
        core_op(&mut w, op, p, &mut r);
        if settle {
            w.deliver_all();
        }
        w.check_always();
        if w.mailbox.is_empty() {
            w.check_quiescent();
        }
    }
    w.deliver_all();
    w.check_always();
    w.check_quiescent();
    if !w.cmds.is_empty() {
        // Without device traffic every command ends: a request in flight within
        // EXCHANGE_SPAN_MS, then the next queued one (NSTART 1, up to max_queued
        // waiting); a sleeping device's commands by the queue TTL.
        let per_ep = 1 + core_settings().max_queued as u64;
        w.advance((per_ep + 1) * EXCHANGE_SPAN_MS);
        w.deliver_all();
        w.check_always();
        w.check_quiescent();
        w.check_all_final("after the exchanges' time without device traffic");
    }
    // Everything expires in the end and leaves nothing behind.
    w.advance(3 * 86_400_000);
    w.deliver_all();
    w.check_all_final("after every endpoint expired");
    for c in &w.cores {
        assert_eq!(c.endpoints().len(), 0, "endpoints outlive their lifetime");
    }
    assert_eq!(w.dir.len(), 0, "directory keeps expired names");
    assert!(w.store.is_empty(), "the store keeps expired registrations");
    assert!(
        w.subscribed.is_empty(),
        "subscriptions outlive the endpoints"
    );
    assert_eq!(
        w.dir.sub_homes(),
        0,
        "subscription homes outlive the endpoints"
    );
    let live = w.timers.len();
    assert_eq!(live, 0, "timers left after everything expired");
    w
}

/// One op of `core_endpoint` (`op` below 16, from peer `p`) on the world `w`.
fn core_op(w: &mut World, op: u8, p: u8, r: &mut Bytes<'_>) {
    match op {
        0 | 1 => {
            let k = r.u8();
            let name: String = if k >= 240 {
                let n = (r.u8() % 12) as usize;
                String::from_utf8_lossy(r.take(n)).into_owned()
            } else {
                NAMES[k as usize % NAMES.len()].to_string()
            };
            let lt = r.u8();
            let flags = r.u8();
            let mid = r.u16();
            let tkl = (r.u8() % 9) as usize;
            let token = r.take(tkl).to_vec();
            let payload: Vec<u8> = match flags >> 4 & 3 {
                0 => Vec::new(),
                1 => b"</1/0>,</3/0>".to_vec(),
                2 => b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3303/0>".to_vec(),
                _ => {
                    let n = r.u8() as usize;
                    r.take(n).to_vec()
                }
            };
            let ep = format!("ep={name}");
            let lts = format!("lt={}", lt as u32 * 7);
            let mut q: Vec<&[u8]> = vec![ep.as_bytes()];
            if lt != 0 {
                q.push(lts.as_bytes());
            }
            if flags & 4 != 0 {
                q.push(b"lwm2m=1.1");
            }
            if flags & 8 != 0 {
                q.push(b"b=UQ");
            }
            let bytes = request(
                flags & 1 == 0,
                codes::POST,
                mid,
                &token,
                &[b"rd"],
                &q,
                &payload,
            );
            w.datagram(p, &bytes);
        }
        2 | 3 => {
            let k = r.u8();
            let loc = if w.locations.is_empty() || k == 255 {
                format!("{:x}", r.u16())
            } else {
                w.locations[k as usize % w.locations.len()].clone()
            };
            let flags = r.u8();
            let mid = r.u16();
            let code = if flags & 1 == 0 {
                codes::POST
            } else {
                codes::DELETE
            };
            let lts = format!("lt={}", r.u8() as u32 * 11);
            let q: Vec<&[u8]> = if flags & 2 != 0 {
                vec![lts.as_bytes()]
            } else {
                vec![]
            };
            let payload: &[u8] = if flags & 4 != 0 {
                b"</3/0>,</5/0>"
            } else {
                b""
            };
            let bytes = request(
                flags & 8 == 0,
                code,
                mid,
                &mid.to_be_bytes(),
                &[b"rd", loc.as_bytes()],
                &q,
                payload,
            );
            w.datagram(p, &bytes);
        }
        4 => {
            let n = r.u8() as usize;
            let raw = r.take(n).to_vec();
            w.datagram(p, &raw);
        }
        5 => {
            // A duplicate of the last datagram, or a mutated / truncated copy.
            if let Some((lp, mut bytes)) = w.last.clone() {
                let how = r.u8();
                let at = r.u8() as usize;
                let v = r.u8();
                if !bytes.is_empty() {
                    match how % 3 {
                        0 => {}
                        1 => {
                            let i = at % bytes.len();
                            bytes[i] ^= v;
                        }
                        _ => bytes.truncate(at % bytes.len()),
                    }
                }
                let target = if how & 0x80 != 0 { p } else { lp };
                w.datagram(target, &bytes);
            }
        }
        6 => {
            let ms = match r.u8() {
                255 => 2 * 86_400_000,
                k => k as u64 * 1_500,
            };
            w.advance(ms);
        }
        7 => {
            let i = r.u16() as usize;
            w.fire(i);
        }
        8 => {
            let i = r.u8() as usize;
            w.deliver(i);
        }
        9 => w.deliver_all(),
        10..=12 => {
            // An MQTT command, to a known name or one never registered.
            let k = r.u8();
            let name = if k >= 240 {
                format!("nobody-{}", k % 3)
            } else {
                NAMES[k as usize % NAMES.len()].to_string()
            };
            let id = w.next_req;
            w.next_req += 1;
            let (t, body, broken) = command_body(r, id);
            w.command(p as usize, id, &name, t, body, broken);
        }
        13 | 14 => {
            // A device answers one of the latest requests (the peer it went
            // to, or another one).
            if !w.sent.is_empty() {
                let i = r.u8() as usize % w.sent.len();
                let s = w.sent[w.sent.len() - 1 - i];
                let other = r.u8() & 0x80 != 0;
                let bytes = device_answer(r, &s);
                w.datagram(if other { p } else { s.to }, &bytes);
            }
        }
        _ => {
            // A notification on an observe request's token.
            let observes: Vec<Sent> = w.sent.iter().filter(|s| s.observe).copied().collect();
            if !observes.is_empty() {
                let s = observes[r.u8() as usize % observes.len()];
                let how = r.u8();
                let t = if how & 1 == 0 {
                    MsgType::Con
                } else {
                    MsgType::Non
                };
                let code = if how & 6 == 6 {
                    codes::NOT_FOUND
                } else {
                    codes::CONTENT
                };
                let mid = r.u16();
                let mut buf = Vec::new();
                let mut mw = MessageWriter::new(&mut buf, t, code, mid, &s.token);
                if how & 8 == 0 {
                    mw.option_uint(opt::OBSERVE, r.u16() as u32);
                }
                mw.option_uint(opt::CONTENT_FORMAT, 0);
                mw.payload(b"21.5");
                w.datagram(s.to, &buf);
            }
        }
    }
}

// ------------------------------------------------------------------ DTLS records

/// A DTLS server (PSK) fed datagrams from 8 peers with clock steps: the input is a
/// sequence of `[peer][len][bytes...][time step]` records. Invariants: no panic,
/// the half-open and session tables stay within their caps, every transmit goes
/// to a peer that sent something, and a peer that has not completed the cookie
/// exchange is never sent more bytes than it sent. The seeds hold ClientHellos with
/// the record versions 0xFEFD and 0xFE00 (mbedTLS 2.x; the server takes any {254, x}
/// on a ClientHello record and nowhere else).
pub fn dtls_records(data: &[u8]) {
    use lwm2m_gateway::dtls::{DtlsServer, DtlsSettings, PskStore, PskTable};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};
    let table = PskTable::parse(
        "dev-1:000102030405060708090a0b0c0d0e0f\n",
        std::path::Path::new("psk.txt"),
    )
    .expect("PSK table");
    let settings = DtlsSettings {
        psk: Some(Arc::new(PskStore::with_table("psk.txt", table))),
        max_half_open: 4,
        max_half_open_per_addr: 2,
        max_sessions: 4,
        ..DtlsSettings::default()
    };
    let mut server = DtlsServer::new(settings).expect("DTLS server");
    let start = Instant::now();
    let mut now = start;
    let mut received: HashMap<SocketAddr, usize> = HashMap::new();
    let mut sent: HashMap<SocketAddr, usize> = HashMap::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let peer = SocketAddr::from(([10, 0, 0, 1 + rest[0] % 8], 5000 + (rest[0] % 3) as u16));
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize % 1500;
        let end = (3 + len).min(rest.len());
        let datagram = &rest[3..end];
        let step = rest.get(end).copied().unwrap_or(0);
        rest = rest.get(end + 1..).unwrap_or(&[]);
        *received.entry(peer).or_default() += datagram.len();
        server.handle_datagram(now, peer, datagram);
        now += Duration::from_millis(step as u64 * 37);
        server.handle_timeout(now);
        while let Some((to, bytes)) = server.poll_transmit() {
            assert!(
                received.contains_key(&to),
                "sent to {to}, which never spoke"
            );
            *sent.entry(to).or_default() += bytes.len();
        }
        while server.poll_event().is_some() {}
        assert!(server.half_open_count() <= 4, "half-open cap");
        assert!(server.session_count() <= 4, "session cap");
    }
    for (peer, n) in &sent {
        if !server.has_session(*peer) {
            // Nothing here completes a handshake by chance in practice; without a
            // session the peer's cookie was never verified.
            assert!(
                *n <= received[peer],
                "{peer} got {n} bytes for {} received",
                received[peer]
            );
        }
    }
}

/// `FUZZ_TRACE=1`: print every op of the stateful target (for reducing a crash).
fn trace() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// A PSK client with a connection ID (RFC 9146) completes its handshake with the
/// server (shard 0 of 2); then each op of `data` sends a record with that CID: a
/// genuine one from a chosen address, a replay, one with a byte changed, or fuzz
/// bytes behind a tls12_cid header naming this shard's session or another shard.
/// Only genuine records yield data and move the session; another shard's CID is
/// handed on as it came; nothing panics.
pub fn dtls_cid_records(data: &[u8]) {
    use lwm2m_gateway::dtls::{DtlsEvent, DtlsServer, DtlsSettings, PskStore, PskTable};
    use std::time::{Duration, Instant};
    struct Key;
    impl dimpl::PskResolver for Key {
        fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
            Some((0u8..16).collect())
        }
    }
    let table = PskTable::parse(
        "dev-1:000102030405060708090a0b0c0d0e0f\n",
        std::path::Path::new("psk.txt"),
    )
    .expect("PSK table");
    let settings = DtlsSettings {
        psk: Some(Arc::new(PskStore::with_table("psk.txt", table))),
        ..DtlsSettings::default()
    };
    let mut server = DtlsServer::new(settings).expect("DTLS server");
    server.set_shard(0, 2);
    let config = dimpl::Config::builder()
        .dtls13_cipher_suites(&[])
        .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
        .with_psk_client(b"dev-1".to_vec(), Arc::new(Key))
        .build()
        .expect("client configuration");
    let mut now = Instant::now();
    let mut client = dimpl::Dtls::new_12_psk(Arc::new(config), now);
    client.set_active(true);
    assert!(client.set_connection_id(&[]));
    let home = SocketAddr::from(([10, 0, 0, 1], 5000));
    let mut buf = vec![0u8; 4096];
    let mut connected = false;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut drain = |client: &mut dimpl::Dtls, pending: &mut Vec<Vec<u8>>, connected: &mut bool| loop {
        match client.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => pending.push(p.to_vec()),
            dimpl::Output::Connected => *connected = true,
            dimpl::Output::BufferTooSmall { needed } => buf.resize(needed, 0),
            dimpl::Output::Timeout(_) => return,
            _ => {}
        }
    };
    for _ in 0..64 {
        drain(&mut client, &mut pending, &mut connected);
        for d in pending.drain(..) {
            server.handle_datagram(now, home, &d);
        }
        while let Some((_, d)) = server.poll_transmit() {
            let _ = client.handle_packet(&d);
        }
        while server.poll_event().is_some() {}
        if connected && server.has_session(home) {
            break;
        }
        now += Duration::from_millis(10);
        client.handle_timeout(now).expect("client timer");
        server.handle_timeout(now);
    }
    assert!(
        connected && server.has_session(home),
        "the handshake completes"
    );
    let cid = client.peer_connection_id().expect("a CID").to_vec();
    let mut at = home;
    let mut seq = 0u32;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, who, arg) = (rest[0] % 4, rest[1], rest[2]);
        rest = &rest[3..];
        let from = SocketAddr::from(([10, 0, 1, who % 4], 6000 + (who / 4 % 4) as u16));
        let mut genuine = false;
        let datagram = match op {
            0 => {
                seq += 1;
                let msg = seq.to_be_bytes().to_vec();
                client.send_application_data(&msg).expect("client send");
                drain(&mut client, &mut pending, &mut connected);
                sent.push(msg);
                genuine = true;
                let d = pending.drain(..).next_back().expect("a record");
                last = Some(d.clone());
                d
            }
            1 => match &last {
                Some(d) => d.clone(),
                None => continue,
            },
            2 => match &last {
                Some(d) => {
                    let mut d = d.clone();
                    let i = arg as usize % d.len();
                    d[i] ^= 1 | rest.first().copied().unwrap_or(0x80);
                    d
                }
                None => continue,
            },
            _ => {
                let n = (arg as usize).min(rest.len());
                let mut d = vec![25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, arg];
                let mut c = cid.clone();
                if arg & 1 == 1 {
                    c[1] = 1; // the other shard's
                }
                d.extend(&c);
                d.extend((n as u16).to_be_bytes());
                d.extend(&rest[..n]);
                rest = &rest[n..];
                d
            }
        };
        let before = server.stats().cid_forwarded;
        server.handle_datagram(now, from, &datagram);
        if server.stats().cid_forwarded > before {
            let (shard, src, d) = server.poll_forward().expect("handed on");
            assert_eq!((shard, src), (1, from));
            assert_eq!(d, datagram, "handed on as it came");
        }
        assert!(server.poll_forward().is_none());
        while let Some((to, d)) = server.poll_transmit() {
            assert!(to == at || to == from, "sent to {to}");
            let _ = client.handle_packet(&d);
        }
        while let Some(e) = server.poll_event() {
            match e {
                DtlsEvent::Moved { from: old, to } => {
                    assert!(genuine, "only a genuine record moves the session");
                    assert_eq!((old, to), (at, from));
                    at = from;
                }
                DtlsEvent::Data { peer, plaintext } => {
                    assert!(genuine, "data only from a genuine record");
                    assert_eq!(peer, from);
                    assert_eq!(Some(&plaintext), sent.last());
                }
                DtlsEvent::Connected { .. } => panic!("no new handshake"),
                // A malformed record from the session's own address ends it.
                DtlsEvent::Closed { peer, .. } => {
                    assert_eq!(peer, at);
                    assert!(!genuine);
                    return;
                }
            }
        }
        assert!(server.session_count() <= 1);
        if genuine {
            assert!(
                server.has_session(from),
                "the session follows the genuine record"
            );
        }
        now += Duration::from_millis(arg as u64);
        server.handle_timeout(now);
        let _ = client.handle_timeout(now);
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
