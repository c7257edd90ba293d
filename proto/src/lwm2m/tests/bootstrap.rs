//! The Bootstrap-Server on a virtual clock: the exact requests in order (TLV bodies
//! decoded), piggybacked and separate answers, loss and retransmission, a device
//! restarting midway, each failure path (error code, Reset, timeout), no configuration,
//! DTLS identities, and a flood of Bootstrap-Requests.

use std::sync::Arc;

use super::harness::*;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::{self, fmt_id, Value};
use crate::lwm2m::bootstrap::{BootstrapStatus, MAX_RUNS};
use crate::lwm2m::bootstrap_flow::BsRefusal;
use crate::lwm2m::bs_config::default_delete;
use crate::lwm2m::{
    BootstrapConfig, BootstrapConfigs, CoreSettings, PeerIdentity, SecurityMode, ServerAccount,
};
use crate::model::LwPath;
use simd_json::prelude::*;

const DEV: u16 = 6000;

fn accounts() -> Vec<ServerAccount> {
    vec![
        ServerAccount {
            uri: "coap://127.0.0.1:5783".into(),
            security: SecurityMode::NoSec,
            identity: None,
            key: None,
            short_id: 101,
            lifetime: 300,
            binding: "U".into(),
        },
        ServerAccount {
            uri: "coaps://127.0.0.1:5784".into(),
            security: SecurityMode::Psk,
            identity: Some("dev1-id".into()),
            key: Some(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            short_id: 102,
            lifetime: 600,
            binding: "UQ".into(),
        },
    ]
}

fn configs() -> BootstrapConfigs {
    let mut c = BootstrapConfigs::new();
    c.insert(
        "dev1",
        BootstrapConfig {
            delete: default_delete(),
            servers: accounts(),
            objects: vec![],
        },
    );
    c
}

fn bs_settings(c: BootstrapConfigs) -> CoreSettings {
    CoreSettings {
        bootstrap_configs: Some(Arc::new(c)),
        ..settings()
    }
}

fn harness() -> Harness {
    Harness::new(1, bs_settings(configs()))
}

fn bs_request(ep: &str, mid: u16) -> Vec<u8> {
    Req::new(codes::POST, "/bs", mid)
        .q(&format!("ep={ep}"))
        .bytes()
}

/// (method, path, content format, body) of a request of the gateway.
fn describe(r: &Reply) -> (u8, String, Option<u16>, Vec<u8>) {
    let m = r.msg();
    assert_eq!(
        m.mtype,
        MsgType::Con,
        "the gateway's requests are confirmable"
    );
    let path: Vec<String> = m
        .option_values(opt::URI_PATH)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    let cf = m.option_uint(opt::CONTENT_FORMAT).map(|v| v as u16);
    (
        m.code,
        format!("/{}", path.join("/")),
        cf,
        m.payload.to_vec(),
    )
}

/// The device answers `req` (piggybacked ACK) with `code`.
fn ack(req: &Reply, code: u8) -> Vec<u8> {
    let m = req.msg();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token).finish();
    buf
}

fn empty(t: MsgType, req: &Reply) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, t, codes::EMPTY, req.msg().mid, &[]).finish();
    buf
}

/// Starts dev1's bootstrap; returns the first request (the 2.04 checked).
fn start(h: &mut Harness) -> Reply {
    let r = h.exchange(0, addr(1, DEV), &bs_request("dev1", 1));
    assert_eq!(r.len(), 2, "2.04 and the first request: {r:?}");
    assert_eq!(r[0].code(), codes::CHANGED);
    assert_eq!(r[0].msg().mtype, MsgType::Ack);
    r[1].clone()
}

/// Answers every request 2.xx until the gateway stops asking; returns the requests.
fn run_through(h: &mut Harness, first: Reply) -> Vec<Reply> {
    let mut seen = vec![first];
    loop {
        let last = seen.last().unwrap().clone();
        let code = match last.msg().code {
            codes::DELETE => codes::DELETED,
            _ => codes::CHANGED,
        };
        let r = h.exchange(0, addr(1, DEV), &ack(&last, code));
        match r.len() {
            0 => return seen,
            1 => seen.push(r[0].clone()),
            n => panic!("{n} datagrams at once: {r:?}"),
        }
    }
}

fn statuses(h: &Harness) -> Vec<(String, String, Option<String>)> {
    h.published("up/bootstrap")
        .into_iter()
        .map(|(t, v)| {
            assert_eq!(v["msgType"].as_str(), Some("bootstrap"));
            let d = &v["data"];
            (
                t,
                d["status"].as_str().unwrap().to_string(),
                d.get("error").and_then(|e| e.as_str()).map(String::from),
            )
        })
        .collect()
}

fn tlv_values(path: &str, body: &[u8]) -> Vec<(String, Value)> {
    let p = LwPath::parse(path).unwrap();
    formats::decode(Some(fmt_id::TLV), body, &p, &())
        .unwrap()
        .into_iter()
        .map(|i| (i.path.to_string(), i.value))
        .collect()
}

#[test]
fn the_sequence_is_delete_write_finish_with_tlv_bodies() {
    let mut h = harness();
    let first = start(&mut h);
    let reqs = run_through(&mut h, first);
    let shown: Vec<(u8, String, Option<u16>)> = reqs
        .iter()
        .map(|r| {
            let (c, p, cf, _) = describe(r);
            (c, p, cf)
        })
        .collect();
    let tlv = Some(fmt_id::TLV);
    assert_eq!(
        shown,
        vec![
            (codes::DELETE, "/0".into(), None),
            (codes::DELETE, "/1".into(), None),
            (codes::PUT, "/0/1".into(), tlv),
            (codes::PUT, "/1/1".into(), tlv),
            (codes::PUT, "/0/2".into(), tlv),
            (codes::PUT, "/1/2".into(), tlv),
            (codes::POST, "/bs".into(), None),
        ]
    );
    // Untyped decoding (no model): the raw bytes of each resource.
    let sec1 = tlv_values("/0/1", &describe(&reqs[2]).3);
    let raw = |s: &str| Value::Untyped(s.as_bytes().to_vec());
    let b = |v: &[u8]| Value::Untyped(v.to_vec());
    assert_eq!(
        sec1,
        vec![
            ("/0/1/0".into(), raw("coap://127.0.0.1:5783")),
            ("/0/1/1".into(), b(&[0])),
            ("/0/1/2".into(), b(&[3])),
            ("/0/1/3".into(), b(&[])),
            ("/0/1/4".into(), b(&[])),
            ("/0/1/5".into(), b(&[])),
            ("/0/1/10".into(), b(&[101])),
        ]
    );
    let srv1 = tlv_values("/1/1", &describe(&reqs[3]).3);
    assert_eq!(
        srv1,
        vec![
            ("/1/1/0".into(), b(&[101])),
            ("/1/1/1".into(), b(&300u16.to_be_bytes())),
            ("/1/1/6".into(), b(&[0])),
            ("/1/1/7".into(), raw("U")),
        ]
    );
    let sec2 = tlv_values("/0/2", &describe(&reqs[4]).3);
    assert_eq!(sec2[0], ("/0/2/0".into(), raw("coaps://127.0.0.1:5784")));
    assert_eq!(sec2[2], ("/0/2/2".into(), b(&[0])), "PSK mode");
    assert_eq!(sec2[3], ("/0/2/3".into(), raw("dev1-id")));
    assert_eq!(sec2[5], ("/0/2/5".into(), b(&(0..16).collect::<Vec<u8>>())));
    assert_eq!(sec2[6], ("/0/2/10".into(), b(&[102])));
    let srv2 = tlv_values("/1/2", &describe(&reqs[5]).3);
    assert_eq!(srv2[3], ("/1/2/7".into(), raw("UQ")));

    assert_eq!(
        statuses(&h),
        vec![
            ("lwm2m/dev1/up/bootstrap".into(), "started".into(), None),
            ("lwm2m/dev1/up/bootstrap".into(), "finished".into(), None),
        ]
    );
    let st = &h.cores[0].stats;
    assert_eq!((st.bootstraps_started, st.bootstraps_finished), (1, 1));
    assert_eq!(st.bootstrap_requests, 7);
    assert_eq!(h.cores[0].boot.len(), 0);
    // The driver learns the outcome and the PSK account the device was given.
    let ev: Vec<_> = h.bootstrap.iter().map(|e| e.status).collect();
    assert_eq!(ev, [BootstrapStatus::Started, BootstrapStatus::Finished]);
    let creds = &h.bootstrap[1].credentials;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].identity, "dev1-id");
    assert_eq!(creds[0].uri, "coaps://127.0.0.1:5784");
    // A later answer is not ours any more: dev management's usual unmatched path.
    let r = h.exchange(0, addr(1, DEV), &ack(&reqs[6], codes::CHANGED));
    assert!(r.is_empty());
}

#[test]
fn typed_against_the_object_definitions() {
    // With the OMA definitions of objects 0 and 1, the resources have their types.
    let mut h = harness();
    let first = start(&mut h);
    let reqs = run_through(&mut h, first);
    let model = h.cores[0].dm.registry();
    let p = LwPath::parse("/0/2").unwrap();
    let items = formats::decode(Some(fmt_id::TLV), &describe(&reqs[4]).3, &p, model).unwrap();
    let v: Vec<(String, Value)> = items
        .into_iter()
        .map(|i| (i.path.to_string(), i.value))
        .collect();
    assert_eq!(v[1], ("/0/2/1".into(), Value::Boolean(false)));
    assert_eq!(v[2], ("/0/2/2".into(), Value::Integer(0)));
    assert_eq!(v[3], ("/0/2/3".into(), Value::Opaque(b"dev1-id".to_vec())));
    assert_eq!(v[6], ("/0/2/10".into(), Value::Integer(102)));
    let p = LwPath::parse("/1/2").unwrap();
    let items = formats::decode(Some(fmt_id::TLV), &describe(&reqs[5]).3, &p, model).unwrap();
    assert_eq!(items[1].value, Value::Integer(600));
    assert_eq!(items[3].value, Value::String("UQ".into()));
}

#[test]
fn the_announced_format_is_used() {
    let mut h = harness();
    let req = Req::new(codes::POST, "/bs", 1)
        .q("ep=dev1")
        .q("pct=110")
        .bytes();
    let r = h.exchange(0, addr(1, DEV), &req);
    let reqs = run_through(&mut h, r[1].clone());
    let (code, path, cf, body) = describe(&reqs[2]);
    assert_eq!((code, path.as_str(), cf), (codes::PUT, "/0/1", Some(110)));
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("\"coap://127.0.0.1:5783\""), "{text}");
    // An unknown one falls back to TLV.
    let mut h = harness();
    let req = Req::new(codes::POST, "/bs", 1)
        .q("ep=dev1")
        .q("pct=40")
        .bytes();
    let r = h.exchange(0, addr(1, DEV), &req);
    let reqs = run_through(&mut h, r[1].clone());
    assert_eq!(describe(&reqs[2]).2, Some(fmt_id::TLV));
}

#[test]
fn lost_requests_are_retransmitted_then_time_out() {
    let mut h = harness();
    let first = start(&mut h);
    // ACK_TIMEOUT 2 s × [1, 1.5): nothing before 2 s, the first copy by 3 s.
    assert!(h.advance_collect(1_999).is_empty());
    let again = h.advance_collect(1_001);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bytes, first.bytes, "the same datagram again");
    // The copy is answered: the sequence goes on.
    let next = h.exchange(0, addr(1, DEV), &ack(&again[0], codes::DELETED));
    assert_eq!(describe(&next[0]).1, "/1");
    // Now silence: 4 retransmissions (doubling), then `failed`.
    let mut copies = 0;
    for _ in 0..200 {
        copies += h.advance_collect(1_000).len();
    }
    assert_eq!(copies, 4);
    let s = statuses(&h);
    assert_eq!(s.last().unwrap().1, "failed");
    assert_eq!(s.last().unwrap().2.as_deref(), Some("delete /1: timeout"));
    let st = &h.cores[0].stats;
    assert_eq!(st.bootstrap_retransmissions, 5);
    assert_eq!((st.bootstrap_timeouts, st.bootstraps_failed), (1, 1));
    assert_eq!(h.cores[0].boot.len(), 0);
    assert!(h.advance_collect(300_000).is_empty(), "nothing more");
}

#[test]
fn separate_responses_are_acknowledged_and_count() {
    let mut h = harness();
    let first = start(&mut h);
    // Empty ACK now, the response later (CON): acknowledged, and the next step follows.
    assert!(h
        .exchange(0, addr(1, DEV), &empty(MsgType::Ack, &first))
        .is_empty());
    // Past the retransmission times nothing is sent again.
    assert!(h.advance_collect(60_000).is_empty());
    let mut resp = Vec::new();
    MessageWriter::new(
        &mut resp,
        MsgType::Con,
        codes::DELETED,
        0x7777,
        first.msg().token,
    )
    .finish();
    let r = h.exchange(0, addr(1, DEV), &resp);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].msg().mtype, MsgType::Ack);
    assert_eq!(r[0].msg().mid, 0x7777);
    assert_eq!(describe(&r[1]).1, "/1");
    // The response again (its ACK was lost): acknowledged again, the sequence unmoved.
    let again = h.exchange(0, addr(1, DEV), &resp);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].msg().mtype, MsgType::Ack);
    assert_eq!(again[0].msg().mid, 0x7777);
    // A separate response that never comes: EXCHANGE_LIFETIME after the ACK, failed.
    assert!(h
        .exchange(0, addr(1, DEV), &empty(MsgType::Ack, &r[1]))
        .is_empty());
    h.advance(247_000);
    let s = statuses(&h);
    assert_eq!(s.last().unwrap().2.as_deref(), Some("delete /1: timeout"));
}

#[test]
fn an_error_code_or_a_reset_fails_the_step() {
    let mut h = harness();
    let first = start(&mut h);
    let r = h.exchange(0, addr(1, DEV), &ack(&first, codes::DELETED));
    let r = h.exchange(0, addr(1, DEV), &ack(&r[0], codes::DELETED));
    // The device refuses the Security instance.
    let after = h.exchange(0, addr(1, DEV), &ack(&r[0], codes::BAD_REQUEST));
    assert!(after.is_empty(), "nothing more is sent: {after:?}");
    let s = statuses(&h);
    assert_eq!(s.last().unwrap().1, "failed");
    assert_eq!(
        s.last().unwrap().2.as_deref(),
        Some("write /0/1: 4.00 bad_request")
    );
    assert_eq!(h.cores[0].stats.bootstrap_errors, 1);
    assert_eq!(h.bootstrap.last().unwrap().status, BootstrapStatus::Failed);

    let mut h = harness();
    let first = start(&mut h);
    assert!(h
        .exchange(0, addr(1, DEV), &empty(MsgType::Rst, &first))
        .is_empty());
    let s = statuses(&h);
    assert_eq!(s.last().unwrap().2.as_deref(), Some("delete /0: reset"));
    assert_eq!(h.cores[0].stats.bootstrap_resets, 1);
    assert!(
        h.advance_collect(300_000).is_empty(),
        "its timers are stale"
    );
}

#[test]
fn the_finish_refused_is_reported() {
    let mut h = harness();
    let mut req = start(&mut h);
    for _ in 0..6 {
        req = h.one(0, addr(1, DEV), &ack(&req, codes::CHANGED));
    }
    assert_eq!(describe(&req).1, "/bs");
    let code = codes::code(4, 6);
    assert!(h.exchange(0, addr(1, DEV), &ack(&req, code)).is_empty());
    let s = statuses(&h);
    assert_eq!(
        s.last().unwrap().2.as_deref(),
        Some("finish: 4.06 not_acceptable")
    );
    assert!(h.bootstrap.last().unwrap().credentials.is_empty());
}

#[test]
fn a_new_request_restarts_and_a_retransmitted_one_does_not() {
    let mut h = harness();
    let first = start(&mut h);
    // The request again (same MID): 2.04 again, nothing restarted.
    let r = h.exchange(0, addr(1, DEV), &bs_request("dev1", 1));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code(), codes::CHANGED);
    let second = h.one(0, addr(1, DEV), &ack(&first, codes::DELETED));
    assert_eq!(describe(&second).1, "/1");
    // The device starts over midway (a new MID): from the top.
    let r = h.exchange(0, addr(1, DEV), &bs_request("dev1", 2));
    assert_eq!(r.len(), 2);
    assert_eq!(describe(&r[1]).1, "/0");
    // The old step's answer is no longer matched.
    assert!(h
        .exchange(0, addr(1, DEV), &ack(&second, codes::DELETED))
        .is_empty());
    let reqs = run_through(&mut h, r[1].clone());
    assert_eq!(reqs.len(), 7);
    let s: Vec<String> = statuses(&h).into_iter().map(|s| s.1).collect();
    assert_eq!(s, ["started", "started", "finished"]);
    assert_eq!(h.cores[0].stats.bootstraps_restarted, 1);
    // From another address, the same name restarts too (one bootstrap per device).
    let _ = start(&mut h);
    let r = h.exchange(0, addr(2, DEV), &bs_request("dev1", 9));
    assert_eq!(r.len(), 2);
    assert_eq!(h.cores[0].boot.len(), 1);
    assert!(h
        .exchange(0, addr(1, DEV), &ack(&r[1], codes::DELETED))
        .is_empty());
}

#[test]
fn no_configuration_is_4_00_and_a_failed_message() {
    let mut h = harness();
    let r = h.exchange(0, addr(1, DEV), &bs_request("stranger", 1));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code(), codes::BAD_REQUEST);
    let s = statuses(&h);
    assert_eq!(
        s,
        vec![(
            "lwm2m/stranger/up/bootstrap".into(),
            "failed".into(),
            Some("no bootstrap configuration for this endpoint".into())
        )]
    );
    let i = BsRefusal::NoConfiguration.index();
    assert_eq!(h.cores[0].stats.bootstraps_refused[i], 1);
    // No name at all: 4.00, nothing published.
    let req = Req::new(codes::POST, "/bs", 2).bytes();
    assert_eq!(h.one(0, addr(1, DEV), &req).code(), codes::BAD_REQUEST);
    assert_eq!(statuses(&h).len(), 1);
    // `default` serves any other name.
    let mut c = configs();
    c.insert(
        "default",
        BootstrapConfig {
            delete: vec![],
            servers: accounts()[..1].to_vec(),
            objects: vec![],
        },
    );
    let mut h = Harness::new(1, bs_settings(c));
    let r = h.exchange(0, addr(1, DEV), &bs_request("stranger", 1));
    let reqs = run_through(&mut h, r[1].clone());
    let paths: Vec<String> = reqs.iter().map(|r| describe(r).1).collect();
    assert_eq!(paths, ["/0/1", "/1/1", "/bs"]);
}

#[test]
fn disabled_bootstrap_is_not_found() {
    let mut h = Harness::new(1, settings());
    let r = h.one(0, addr(1, DEV), &bs_request("dev1", 1));
    assert_eq!(r.code(), codes::NOT_FOUND);
    assert!(statuses(&h).is_empty());
}

#[derive(Debug)]
struct Only(&'static str);
impl crate::lwm2m::PskPolicy for Only {
    fn may_register(&self, identity: &str, endpoint: &str) -> bool {
        identity == self.0 && endpoint.starts_with("dev")
    }
}

#[test]
fn over_dtls_the_identity_must_be_allowed_and_requests_go_encrypted() {
    let s = CoreSettings {
        dtls_psk: Some(Arc::new(Only("boot"))),
        ..bs_settings(configs())
    };
    let mut h = Harness::new(1, s);
    let stranger = PeerIdentity::Psk("other".into());
    let r = h.secure(0, addr(1, DEV), &stranger, &bs_request("dev1", 1));
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    assert!(r[0].secure);
    let i = BsRefusal::Forbidden.index();
    assert_eq!(h.cores[0].stats.bootstraps_refused[i], 1);
    let id = PeerIdentity::Psk("boot".into());
    // No configuration over DTLS: 4.03.
    let r = h.secure(0, addr(1, DEV), &id, &bs_request("devX", 2));
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    let r = h.secure(0, addr(1, DEV), &id, &bs_request("dev1", 3));
    assert_eq!(r.len(), 2);
    assert!(
        r.iter().all(|d| d.secure),
        "answers and requests go encrypted"
    );
    // A plain datagram from the same address is not the device's answer.
    assert!(h
        .exchange(0, addr(1, DEV), &ack(&r[1], codes::DELETED))
        .is_empty());
    // Retransmissions (a timer, no input) go encrypted too.
    let again = h.advance_collect(3_000);
    assert_eq!(again.len(), 1);
    assert!(again[0].secure);
    let mut req = h.secure(0, addr(1, DEV), &id, &ack(&r[1], codes::DELETED));
    loop {
        assert!(req.iter().all(|d| d.secure));
        let Some(last) = req.pop() else { break };
        let code = if last.msg().code == codes::DELETE {
            codes::DELETED
        } else {
            codes::CHANGED
        };
        req = h.secure(0, addr(1, DEV), &id, &ack(&last, code));
    }
    let s: Vec<String> = statuses(&h).into_iter().map(|s| s.1).collect();
    assert_eq!(s, ["failed", "started", "finished"]);
    // The session of a device being bootstrapped ends: failed at once.
    let r = h.secure(0, addr(1, DEV), &id, &bs_request("dev1", 30));
    assert_eq!(r.len(), 2);
    // A plain session end elsewhere changes nothing.
    assert!(h.session_closed(0, addr(2, DEV)).is_empty());
    assert_eq!(h.cores[0].boot.len(), 1);
    assert!(h.session_closed(0, addr(1, DEV)).is_empty());
    assert_eq!(h.cores[0].boot.len(), 0);
    let last = statuses(&h).pop().unwrap();
    assert_eq!(last.2.as_deref(), Some("delete /0: DTLS session closed"));
    assert!(h.advance_collect(300_000).is_empty());
}

#[test]
fn a_flood_from_spoofed_addresses_is_bounded() {
    // max_conn_rate 100/s on one shard: a burst of 100, then 5.03.
    let s = CoreSettings {
        max_conn_rate: 100,
        ..bs_settings({
            let mut c = configs();
            c.insert(
                "default",
                BootstrapConfig {
                    delete: default_delete(),
                    servers: accounts(),
                    objects: vec![],
                },
            );
            c
        })
    };
    let mut h = Harness::new(1, s);
    let mut unavailable = 0;
    for i in 0..1000u32 {
        let peer = std::net::SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 7000));
        let r = h.exchange(0, peer, &bs_request(&format!("spoof{i}"), 1));
        if r[0].code() == codes::SERVICE_UNAVAILABLE {
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, 900);
    assert_eq!(h.cores[0].boot.len(), 100);
    let i = BsRefusal::RateLimited.index();
    assert_eq!(h.cores[0].stats.bootstraps_refused[i], 900);
    // Nobody answers: every run times out and the memory is given back.
    h.advance(120_000);
    assert_eq!(h.cores[0].boot.len(), 0);
    assert_eq!(h.cores[0].stats.bootstrap_timeouts, 100);
    const { assert!(MAX_RUNS >= 100) };
}

#[test]
fn the_cap_on_runs_holds_without_a_rate() {
    let mut c = configs();
    c.insert(
        "default",
        BootstrapConfig {
            delete: default_delete(),
            servers: vec![],
            objects: vec![],
        },
    );
    let mut h = Harness::new(1, bs_settings(c));
    for i in 0..(MAX_RUNS as u32 + 10) {
        let peer = std::net::SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 7000));
        let _ = h.exchange(0, peer, &bs_request(&format!("s{i}"), 1));
    }
    assert_eq!(h.cores[0].boot.len(), MAX_RUNS);
    let i = BsRefusal::Busy.index();
    assert_eq!(h.cores[0].stats.bootstraps_refused[i], 10);
}

#[test]
fn a_registered_device_still_gets_its_commands_answered() {
    // A device registered at the same address as a bootstrap: answers that are not the
    // bootstrap's go to device management as before.
    let mut h = harness();
    let r = h.one(0, addr(1, DEV), &Req::register("dev1", 50).bytes());
    assert_eq!(r.code(), codes::CREATED);
    let first = start(&mut h);
    let _ = Message::parse(&first.bytes).unwrap();
    let reqs = run_through(&mut h, first);
    assert_eq!(reqs.len(), 7);
}

#[test]
fn restarts_are_held_to_the_rate_too() {
    let s = CoreSettings {
        max_conn_rate: 10,
        ..bs_settings(configs())
    };
    let mut h = Harness::new(1, s);
    let mut unavailable = 0;
    for i in 0..100u16 {
        let peer = std::net::SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7000));
        let r = h.exchange(0, peer, &bs_request("dev1", i + 1));
        if r[0].code() == codes::SERVICE_UNAVAILABLE {
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, 90);
    assert_eq!(h.cores[0].boot.len(), 1, "one bootstrap per device");
    assert_eq!(h.cores[0].stats.bootstraps_restarted, 9);
}

#[test]
fn other_object_instances_are_written_after_the_accounts() {
    let mut c = BootstrapConfigs::new();
    c.insert(
        "dev1",
        BootstrapConfig {
            delete: vec![],
            servers: accounts()[..1].to_vec(),
            objects: vec![crate::lwm2m::bs_config::InstanceWrite {
                path: LwPath::parse("/3/0").unwrap(),
                values: vec![
                    (14, Value::String("+02".into())),
                    (13, Value::Time(1_700_000_000)),
                ],
            }],
        },
    );
    let mut h = Harness::new(1, bs_settings(c));
    let first = start(&mut h);
    let reqs = run_through(&mut h, first);
    let paths: Vec<String> = reqs.iter().map(|r| describe(r).1).collect();
    assert_eq!(paths, ["/0/1", "/1/1", "/3/0", "/bs"]);
    let model = h.cores[0].dm.registry();
    let p = LwPath::parse("/3/0").unwrap();
    let items = formats::decode(Some(fmt_id::TLV), &describe(&reqs[2]).3, &p, model).unwrap();
    let v: Vec<(String, Value)> = items
        .into_iter()
        .map(|i| (i.path.to_string(), i.value))
        .collect();
    assert_eq!(
        v,
        vec![
            ("/3/0/13".into(), Value::Time(1_700_000_000)),
            ("/3/0/14".into(), Value::String("+02".into())),
        ]
    );
}

#[test]
fn congested_broker_connections_defer_bootstraps() {
    let mut h = harness();
    h.congested(0, true);
    let r = h.one(0, addr(1, DEV), &bs_request("dev1", 1));
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    assert!(statuses(&h).is_empty());
    assert_eq!(
        h.cores[0].stats.bootstraps_refused[BsRefusal::Busy.index()],
        1
    );
    h.congested(0, false);
    let _ = start(&mut h);
}

#[test]
fn a_device_answering_garbage_is_timed_out_and_reported() {
    let mut h = harness();
    let first = start(&mut h);
    let m = first.msg();
    // Malformed bytes, an ACK for another message, a response with another token, a
    // piggybacked answer for the right MID with a wrong token: none answers the step.
    let mut wrong_mid = Vec::new();
    MessageWriter::new(
        &mut wrong_mid,
        MsgType::Ack,
        codes::DELETED,
        m.mid ^ 1,
        m.token,
    )
    .finish();
    let mut wrong_token = Vec::new();
    MessageWriter::new(&mut wrong_token, MsgType::Con, codes::DELETED, 9, b"zz").finish();
    let mut wrong_piggy = Vec::new();
    MessageWriter::new(&mut wrong_piggy, MsgType::Ack, codes::DELETED, m.mid, b"zz").finish();
    for junk in [
        &[0xff, 0x00, 0x12][..],
        &[0x40][..],
        &wrong_mid,
        &wrong_token,
        &wrong_piggy,
    ] {
        for r in h.exchange(0, addr(1, DEV), junk) {
            let code = r.msg().code;
            assert!(
                r.msg().mtype == MsgType::Rst || code == codes::DELETE,
                "only Resets to the junk: {r:?}"
            );
        }
    }
    assert_eq!(h.cores[0].boot.len(), 1);
    h.advance(120_000);
    assert_eq!(h.cores[0].boot.len(), 0);
    let last = statuses(&h).pop().unwrap();
    assert_eq!(last.2.as_deref(), Some("delete /0: timeout"));
}

#[test]
fn a_device_has_one_bootstrap_across_the_shards() {
    // The device starts on shard 0, then (a new port, another shard) on shard 1: the
    // run on shard 0 ends without a message; shard 1's finishes, and nothing fails later.
    let mut h = Harness::sharded(2, bs_settings(configs()));
    let r = h.exchange(0, addr(1, DEV), &bs_request("dev1", 1));
    assert_eq!(r.len(), 2);
    h.advance(10);
    let r = h.exchange(1, addr(1, DEV + 1), &bs_request("dev1", 1));
    assert_eq!(r.len(), 2);
    assert_eq!(h.cores[0].boot.len(), 0, "the older run ended");
    assert_eq!(h.cores[1].boot.len(), 1);
    let mut req = r[1].clone();
    loop {
        let code = if req.msg().code == codes::DELETE {
            codes::DELETED
        } else {
            codes::CHANGED
        };
        let n = h.exchange(1, addr(1, DEV + 1), &ack(&req, code));
        match n.first() {
            Some(x) => req = x.clone(),
            None => break,
        }
    }
    h.advance(300_000);
    let s: Vec<String> = statuses(&h).into_iter().map(|s| s.1).collect();
    assert_eq!(s, ["started", "started", "finished"]);
    // The other way round: shard 1 first, then shard 0.
    let mut h = Harness::sharded(2, bs_settings(configs()));
    let _ = h.exchange(1, addr(1, DEV + 1), &bs_request("dev1", 1));
    h.advance(10);
    let _ = h.exchange(0, addr(1, DEV), &bs_request("dev1", 1));
    let runs: Vec<usize> = h.cores.iter().map(|c| c.boot.len()).collect();
    assert_eq!(runs, [1, 0]);
    // Both at the same millisecond, each notice delivered after both started: the
    // higher shard's run is kept, never both dropped.
    let mut h = Harness::sharded(2, bs_settings(configs()));
    let held0 = h.datagram_holding_mail(0, addr(1, DEV), &bs_request("dev1", 1));
    let held1 = h.datagram_holding_mail(1, addr(1, DEV + 1), &bs_request("dev1", 1));
    for (to, m) in held0.into_iter().chain(held1) {
        let _ = h.message(to as usize, m);
    }
    let runs: Vec<usize> = h.cores.iter().map(|c| c.boot.len()).collect();
    assert_eq!(runs, [0, 1]);
}
