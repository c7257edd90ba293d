//! The LwM2M Send operation (`POST /dp`) on a virtual clock: the formats, times, the
//! refusals and their counters, retransmissions, queue mode, DTLS identities, block-wise
//! bodies, and a Send that arrives while its registration moves between shards.

use super::harness::*;
use crate::coap::{codes, opt, MsgType};
use crate::formats::fmt_id;
use crate::lwm2m::send::SendRefusal;
use crate::lwm2m::{CoreSettings, PeerIdentity};
use simd_json::prelude::*;

const DEV: u16 = 5000;
/// The wall-clock time of the shard clock's zero in these tests.
const EPOCH_MS: u64 = 1_750_000_000_000;

fn send_settings() -> CoreSettings {
    CoreSettings {
        clock_epoch_ms: EPOCH_MS,
        ..settings()
    }
}

fn registered(h: &mut Harness, shard: usize, ep: &str, port: u16, query: &[&str]) -> String {
    let mut r = Req::register(ep, 1).q("lt=300");
    for q in query {
        r = r.q(q);
    }
    let r = h.one(shard, addr(1, port), &r.body(b"</3/0>,</3303/0>").bytes());
    assert_eq!(r.code(), codes::CREATED);
    r.location()
}

fn send(mid: u16, cf: Option<u16>, body: &[u8]) -> Vec<u8> {
    let mut r = Req::new(codes::POST, "/dp", mid).body(body);
    if let Some(cf) = cf {
        r = r.opt(opt::CONTENT_FORMAT, &cf.to_be_bytes());
    }
    r.bytes()
}

fn sends(h: &Harness) -> Vec<(String, serde_json_lite::Value)> {
    h.published("up/send")
}

fn refused(h: &Harness, why: SendRefusal) -> u64 {
    h.cores
        .iter()
        .map(|c| c.stats.sends_refused[why.index()])
        .sum()
}

/// Minimal CBOR writing for the test bodies.
mod cbor {
    pub(super) fn head(major: u8, v: u64, out: &mut Vec<u8>) {
        let m = major << 5;
        match v {
            0..=23 => out.push(m | v as u8),
            24..=0xff => out.extend([m | 24, v as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend((v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend((v as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend(v.to_be_bytes());
            }
        }
    }
    pub(super) fn int(i: i64, out: &mut Vec<u8>) {
        if i >= 0 {
            head(0, i as u64, out)
        } else {
            head(1, (-1 - i) as u64, out)
        }
    }
    pub(super) fn text(s: &str, out: &mut Vec<u8>) {
        head(3, s.len() as u64, out);
        out.extend(s.as_bytes());
    }
    pub(super) fn f64(f: f64, out: &mut Vec<u8>) {
        out.push(0xfb);
        out.extend(f.to_bits().to_be_bytes());
    }
}

#[test]
fn a_senml_json_send_is_published_typed_in_order_with_absolute_times() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    h.advance(5_000);
    let body = br#"[{"bn":"/3303/0/","bt":1700000000,"n":"5700","v":21.5,"t":0.5},
        {"n":"5701","vs":"Cel"},
        {"bn":"/3/0/","n":"9","v":87,"bt":0},
        {"n":"13","v":1700000100,"t":-5},
        {"bn":"/3/0/","n":"0","vs":"Maker"}]"#;
    let r = h.one(0, addr(1, DEV), &send(20, Some(fmt_id::SENML_JSON), body));
    assert_eq!(r.code(), codes::CHANGED);
    assert_eq!(r.msg().mtype, MsgType::Ack);
    let p = sends(&h);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "lwm2m/dev1/up/send");
    let v = &p[0].1;
    assert_eq!(v["msgType"], "send");
    let content = v["data"]["content"].as_array().unwrap();
    let arrival = (EPOCH_MS + 5_000) as f64 / 1000.0;
    let got: Vec<(String, String, Option<f64>)> = content
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["value"].encode(),
                c.get("time").and_then(|t| t.cast_f64()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/3303/0/5700".into(), "21.5".into(), Some(1_700_000_000.5)),
            // The base time persists over the following records.
            (
                "/3303/0/5701".into(),
                "\"Cel\"".into(),
                Some(1_700_000_000.0)
            ),
            // A relative time (below 2^28) is resolved against the arrival.
            ("/3/0/9".into(), "87".into(), Some(arrival)),
            ("/3/0/13".into(), "1700000100".into(), Some(arrival - 5.0)),
            ("/3/0/0".into(), "\"Maker\"".into(), Some(arrival)),
        ]
    );
    assert_eq!(h.cores[0].stats.sends, 1);
    assert_eq!(h.cores[0].stats.sent_values, 5);
}

#[test]
fn a_send_without_times_has_none_and_values_are_typed_from_the_definitions() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    // /3/0/9 (battery level) is an Integer, /3303/0/5700 a Float: a whole number
    // sent for a Float stays a number, a boolean as `vb`.
    let body = br#"[{"n":"/3/0/9","v":87},{"n":"/3303/0/5700","v":21},{"n":"/3/0/7/1","v":3300}]"#;
    let r = h.one(0, addr(1, DEV), &send(2, Some(fmt_id::SENML_JSON), body));
    assert_eq!(r.code(), codes::CHANGED);
    let v = &sends(&h)[0].1;
    let content = v["data"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert!(content.iter().all(|c| c.get("time").is_none()), "{v:?}");
    assert_eq!(content[0]["value"], 87);
    assert_eq!(content[2]["path"], "/3/0/7/1");
}

#[test]
fn senml_cbor_and_lwm2m_cbor_sends() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.2"]);
    // [{-2: "/3303/0/", -3: 1700000000, 0: "5700", 2: 21.5}, {0: "5701", 3: "Cel"}]
    let mut b = Vec::new();
    cbor::head(4, 2, &mut b);
    cbor::head(5, 4, &mut b);
    cbor::int(-2, &mut b);
    cbor::text("/3303/0/", &mut b);
    cbor::int(-3, &mut b);
    cbor::int(1_700_000_000, &mut b);
    cbor::int(0, &mut b);
    cbor::text("5700", &mut b);
    cbor::int(2, &mut b);
    cbor::f64(21.5, &mut b);
    cbor::head(5, 2, &mut b);
    cbor::int(0, &mut b);
    cbor::text("5701", &mut b);
    cbor::int(3, &mut b);
    cbor::text("Cel", &mut b);
    let r = h.one(0, addr(1, DEV), &send(2, Some(fmt_id::SENML_CBOR), &b));
    assert_eq!(r.code(), codes::CHANGED);
    // LwM2M CBOR: {3303: {0: {5700: 22.5}}}
    let mut c = Vec::new();
    cbor::head(5, 1, &mut c);
    cbor::int(3303, &mut c);
    cbor::head(5, 1, &mut c);
    cbor::int(0, &mut c);
    cbor::head(5, 1, &mut c);
    cbor::int(5700, &mut c);
    cbor::f64(22.5, &mut c);
    let r = h.one(0, addr(1, DEV), &send(3, Some(fmt_id::LWM2M_CBOR), &c));
    assert_eq!(r.code(), codes::CHANGED);
    let p = sends(&h);
    assert_eq!(p.len(), 2);
    let first = p[0].1["data"]["content"].as_array().unwrap();
    assert_eq!(first[0]["path"], "/3303/0/5700");
    assert_eq!(first[0]["value"], 21.5);
    assert_eq!(first[0]["time"], 1_700_000_000u64);
    assert_eq!(first[1]["value"], "Cel");
    assert_eq!(first[1]["time"], 1_700_000_000u64);
    let second = p[1].1["data"]["content"].as_array().unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["value"], 22.5);
    assert!(second[0].get("time").is_none());
}

#[test]
fn refusals_are_answered_counted_and_publish_nothing() {
    let mut h = Harness::new(1, send_settings());
    let ok = br#"[{"n":"/3/0/9","v":87}]"#;
    // Nobody registered at this address.
    let r = h.one(0, addr(1, 9), &send(1, Some(fmt_id::SENML_JSON), ok));
    assert_eq!(r.code(), codes::NOT_FOUND);
    assert_eq!(refused(&h, SendRefusal::NotRegistered), 1);
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    let cases: &[(Option<u16>, &[u8], u8, SendRefusal)] = &[
        // Formats a Send may not use.
        (
            Some(fmt_id::TEXT),
            b"87",
            codes::UNSUPPORTED_CONTENT_FORMAT,
            SendRefusal::UnsupportedFormat,
        ),
        (
            Some(fmt_id::TLV),
            b"\xc1\x09\x57",
            codes::UNSUPPORTED_CONTENT_FORMAT,
            SendRefusal::UnsupportedFormat,
        ),
        (
            None,
            ok,
            codes::UNSUPPORTED_CONTENT_FORMAT,
            SendRefusal::UnsupportedFormat,
        ),
        // Truncated, the wrong shape, wrong types, paths that are not resources.
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"n":"/3/0/9","v":8"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"{"n":"/3/0/9","v":87}"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"n":"/3/0/9","v":"87"}]"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"n":"/3/0/9","v":1,"t":"now"}]"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"n":"/3/0","v":1}]"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"v":1}]"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            br#"[{"n":"/70000/0/1","v":1}]"#,
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_JSON),
            b"",
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::SENML_CBOR),
            b"\x81\xa1\x02",
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        // SenML CBOR whose v is text.
        (
            Some(fmt_id::SENML_CBOR),
            b"\x81\xa2\x00\x66/3/0/9\x02\x62hi",
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
        (
            Some(fmt_id::LWM2M_CBOR),
            b"\xa1\x03\xa1\x00",
            codes::BAD_REQUEST,
            SendRefusal::Malformed,
        ),
    ];
    for (i, (cf, body, code, why)) in cases.iter().enumerate() {
        let before = refused(&h, *why);
        let r = h.one(0, addr(1, DEV), &send(100 + i as u16, *cf, body));
        assert_eq!(r.code(), *code, "case {i}");
        assert_eq!(refused(&h, *why), before + 1, "case {i}");
        if *code == codes::BAD_REQUEST {
            assert!(
                !r.msg().payload.is_empty(),
                "case {i}: a diagnostic says why"
            );
        }
    }
    assert!(sends(&h).is_empty());
    assert_eq!(h.cores[0].stats.sends, 0);
    // GET /dp is not a Send.
    let r = h.one(0, addr(1, DEV), &Req::new(codes::GET, "/dp", 300).bytes());
    assert_eq!(r.code(), codes::METHOD_NOT_ALLOWED);
}

#[test]
fn a_retransmitted_send_is_answered_again_and_published_once() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    let s = send(40, Some(fmt_id::SENML_JSON), br#"[{"n":"/3/0/9","v":87}]"#);
    let a = h.one(0, addr(1, DEV), &s);
    let b = h.one(0, addr(1, DEV), &s);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(sends(&h).len(), 1);
    // A NON Send gets a NON 2.04.
    let mut non = Req::new(codes::POST, "/dp", 41)
        .non()
        .body(br#"[{"n":"/3/0/9","v":86}]"#);
    non = non.opt(opt::CONTENT_FORMAT, &fmt_id::SENML_JSON.to_be_bytes());
    let r = h.one(0, addr(1, DEV), &non.bytes());
    assert_eq!(r.msg().mtype, MsgType::Non);
    assert_eq!(r.code(), codes::CHANGED);
    assert_eq!(sends(&h).len(), 2);
}

#[test]
fn a_send_wakes_a_queue_mode_device() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1", "b=U", "Q"]);
    h.advance(30_000);
    let held = h.command(
        0,
        "lwm2m/dev1/dn/cmd",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#,
    );
    assert!(held.is_empty(), "asleep: the command waits");
    let out = h.exchange(
        0,
        addr(1, DEV),
        &send(7, Some(fmt_id::SENML_JSON), br#"[{"n":"/3/0/9","v":87}]"#),
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].code(), codes::CHANGED);
    assert_eq!(out[1].code(), codes::GET);
    assert_eq!(out[1].msg().mtype, MsgType::Con);
}

#[test]
fn over_dtls_a_send_needs_an_identity_that_may_act_for_the_registration() {
    let mut s = send_settings();
    s.dtls_psk = Some(std::sync::Arc::new(OwnName));
    let mut h = Harness::new(1, s);
    let reg = Req::register("dev1", 1).q("lt=300").bytes();
    let r = h.secure(0, addr(1, DEV), &psk("dev1"), &reg);
    assert_eq!(r[0].code(), codes::CREATED);
    let body = br#"[{"n":"/3/0/9","v":87}]"#;
    // The session of another identity at the same address.
    let r = h.secure(
        0,
        addr(1, DEV),
        &psk("dev2"),
        &send(2, Some(fmt_id::SENML_JSON), body),
    );
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    assert!(r[0].secure);
    assert_eq!(refused(&h, SendRefusal::Forbidden), 1);
    // Plain CoAP from the address is never matched to it (nor answered).
    assert!(h
        .exchange(0, addr(1, DEV), &send(3, Some(fmt_id::SENML_JSON), body))
        .is_empty());
    assert!(sends(&h).is_empty());
    // Its own identity.
    let r = h.secure(
        0,
        addr(1, DEV),
        &psk("dev1"),
        &send(4, Some(fmt_id::SENML_JSON), body),
    );
    assert_eq!(r[0].code(), codes::CHANGED);
    assert!(r[0].secure);
    assert_eq!(sends(&h).len(), 1);
}

fn psk(id: &str) -> PeerIdentity {
    PeerIdentity::Psk(id.into())
}

/// Each PSK identity may act for the endpoint of its own name only.
#[derive(Debug)]
struct OwnName;

impl crate::lwm2m::PskPolicy for OwnName {
    fn may_register(&self, identity: &str, endpoint: &str) -> bool {
        identity == endpoint
    }
}

#[test]
fn a_long_send_arrives_block_wise() {
    let mut h = Harness::new(1, send_settings());
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    let mut body = String::from("[");
    for i in 0..40 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(r#"{{"n":"/3303/{i}/5700","v":{i}.5,"t":-{i}}}"#));
    }
    body.push(']');
    let body = body.into_bytes();
    let size = 64usize;
    let blocks = body.len().div_ceil(size);
    for n in 0..blocks {
        let more = n + 1 < blocks;
        let chunk = &body[n * size..((n + 1) * size).min(body.len())];
        let b1 = ((n as u32) << 4) | ((more as u32) << 3) | 2;
        let req = Req::new(codes::POST, "/dp", 500 + n as u16)
            .opt(opt::CONTENT_FORMAT, &fmt_id::SENML_JSON.to_be_bytes())
            .opt(opt::BLOCK1, &encode_uint(b1))
            .body(chunk);
        let r = h.one(0, addr(1, DEV), &req.bytes());
        let want = if more {
            codes::CONTINUE
        } else {
            codes::CHANGED
        };
        assert_eq!(r.code(), want, "block {n}");
    }
    let p = sends(&h);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["data"]["content"].as_array().unwrap().len(), 40);
}

fn encode_uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

#[test]
fn a_send_while_the_registration_moves_between_shards_waits_for_it() {
    let mut h = Harness::new(2, send_settings());
    let loc = registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    // The device's NAT binding changed: its Update arrives at shard 1, whose
    // takeover request to shard 0 is still in the mailbox.
    let moved = addr(2, 7000);
    let held = h.datagram_holding_mail(1, moved, &Req::update(&loc, 2).bytes());
    assert_eq!(held.len(), 1);
    // Its Send from the new address meanwhile: not refused, not answered.
    let s = send(3, Some(fmt_id::SENML_JSON), br#"[{"n":"/3/0/9","v":87}]"#);
    assert!(h.exchange(1, moved, &s).is_empty());
    assert_eq!(h.cores[1].stats.sends_deferred, 1);
    assert_eq!(refused(&h, SendRefusal::NotRegistered), 0);
    // The takeover completes (the Update is answered); the device retransmits.
    for (to, m) in held {
        h.message(to as usize, m);
    }
    let r = h.one(1, moved, &s);
    assert_eq!(r.code(), codes::CHANGED);
    let p = sends(&h);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "lwm2m/dev1/up/send");
    // A Send from an address no takeover is asked for is refused at once.
    let r = h.one(1, addr(3, 1), &s);
    assert_eq!(r.code(), codes::NOT_FOUND);
}

#[test]
fn the_send_translator_names_the_topic_and_qos() {
    let mut s = send_settings();
    s.send = crate::lwm2m::settings::Translator {
        topic: "telemetry".into(),
        qos: 1,
    };
    let mut h = Harness::new(1, s);
    registered(&mut h, 0, "dev1", DEV, &["lwm2m=1.1"]);
    let r = h.one(
        0,
        addr(1, DEV),
        &send(2, Some(fmt_id::SENML_JSON), br#"[{"n":"/3/0/9","v":87}]"#),
    );
    assert_eq!(r.code(), codes::CHANGED);
    let qos: Vec<u8> = h
        .mqtt
        .iter()
        .filter_map(|m| match m {
            crate::lwm2m::MqttOut::Publish { topic, qos, .. }
                if topic == "lwm2m/dev1/telemetry" =>
            {
                Some(*qos)
            }
            _ => None,
        })
        .collect();
    assert_eq!(qos, [1]);
}
