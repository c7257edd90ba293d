//! Device management and information reporting on a virtual clock: every command
//! type, piggybacked and separate responses, resets, timeouts, NSTART, observe and
//! notifications, queue mode, alternate paths, malformed commands.

use super::harness::*;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::fmt_id;
use crate::lwm2m::settings::AutoObserveSet;
use crate::lwm2m::stats::{Outcome, UNKNOWN_MSG_TYPE};
use crate::lwm2m::{Input, Output, RoutedCommand, ShardMsg};
use simd_json::prelude::*;

const DEV: u16 = 5000;
const TOPIC: &str = "lwm2m/dev1/dn/cmd";

fn registered(h: &mut Harness, query: &[&str], payload: &[u8]) -> String {
    let mut r = Req::new(codes::POST, "/rd", 1).q("ep=dev1").q("lt=300");
    for q in query {
        r = r.q(q);
    }
    let r = h.one(0, addr(1, DEV), &r.body(payload).bytes());
    assert_eq!(r.code(), codes::CREATED);
    r.location()
}

fn setup() -> Harness {
    let mut h = Harness::new(1, settings());
    registered(&mut h, &["lwm2m=1.0", "b=U"], b"</1/0>,</3/0>,</31024/11>");
    h
}

/// The device's answer to `req` (piggybacked ACK).
fn answer(req: &Reply, code: u8, cf: Option<u16>, payload: &[u8], observe: Option<u32>) -> Vec<u8> {
    let m = req.msg();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(cf) = cf {
        w.option_uint(opt::CONTENT_FORMAT, cf as u32);
    }
    w.payload(payload);
    buf
}

/// A response or notification the device sends on its own (CON or NON).
fn unsolicited(
    t: MsgType,
    mid: u16,
    token: &[u8],
    code: u8,
    cf: Option<u16>,
    observe: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, t, code, mid, token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(cf) = cf {
        w.option_uint(opt::CONTENT_FORMAT, cf as u32);
    }
    w.payload(payload);
    buf
}

fn path_of(m: &Message<'_>) -> String {
    m.option_values(opt::URI_PATH)
        .map(|s| format!("/{}", String::from_utf8_lossy(s)))
        .collect()
}

fn one_request(rs: Vec<Reply>) -> Reply {
    assert_eq!(
        rs.len(),
        1,
        "expected one request to the device, got {rs:?}"
    );
    let r = rs.into_iter().next().unwrap();
    assert_eq!(r.to, addr(1, DEV));
    r
}

#[test]
fn read_with_piggybacked_response() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"},"cacheID":"c"}"#,
    ));
    let m = req.msg();
    assert_eq!((m.mtype, m.code), (MsgType::Con, codes::GET));
    assert_eq!(path_of(&m), "/3/0/1");
    assert_eq!(m.token.len(), 4);
    assert_eq!(m.option_uint(opt::ACCEPT), Some(fmt_id::TEXT as u32));
    h.datagram(
        0,
        addr(1, DEV),
        &answer(
            &req,
            codes::CONTENT,
            Some(0),
            b"Lightweight M2M Client",
            None,
        ),
    );
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    let v = &p[0].1;
    assert_eq!(v["reqID"], 1);
    assert_eq!(v["cacheID"], "c");
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["reqPath"], "/3/0/1");
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(v["data"]["codeMsg"], "content");
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/1", "value": "Lightweight M2M Client"}])
    );
}

#[test]
fn read_instance_decodes_tlv_with_types() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":2,"msgType":"read","data":{"path":"3/0"}}"#,
    ));
    assert_eq!(req.msg().option_uint(opt::ACCEPT), Some(fmt_id::TLV as u32));
    // Resource 9 (battery level, Integer) = 100, resource 1 (String).
    let tlv = [0xc1, 9, 100, 0xc3, 1, b'a', b'b', b'c'];
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CONTENT, Some(fmt_id::TLV), &tlv, None),
    );
    let v = &h.published_since(mark)[0].1;
    assert_eq!(v["data"]["reqPath"], "/3/0");
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/9", "value": 100}, {"path": "/3/0/1", "value": "abc"}])
    );
}

/// Data for an object nobody defined, and a payload that is not what its content format says,
/// are delivered untyped (base64, flagged) with their path, and answered like any response.
#[test]
fn undefined_objects_and_undecodable_payloads_are_delivered_untyped() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/31024/11/1"}}"#,
    ));
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CONTENT, Some(0), b"raw", None),
    );
    let v = &h.published_since(mark)[0].1;
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/31024/11/1", "value": "cmF3", "type": "untyped"}])
    );
    // TLV that ends in the middle of an element.
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0"}}"#,
    ));
    let bad = [0xC8, 0x00, 0x14, b'O', b'p'];
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CONTENT, Some(fmt_id::TLV), &bad, None),
    );
    let v = &h.published_since(mark)[1].1;
    assert_eq!(v["reqID"], 2);
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(v["data"]["content"][0]["path"], "/3/0");
    assert_eq!(v["data"]["content"][0]["type"], "untyped");
    assert_eq!(v["data"]["content"][0]["value"], "yAAUT3A=");
}

#[test]
fn separate_response_ack_event_and_duplicate_suppression() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":3,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    ));
    let m = req.msg();
    // Empty ACK: the response will come separately.
    let mut ack = Vec::new();
    MessageWriter::new(&mut ack, MsgType::Ack, codes::EMPTY, m.mid, &[]).finish();
    assert!(h.exchange(0, addr(1, DEV), &ack).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["msgType"], "ack");
    assert_eq!(p[0].1["reqID"], 3);
    assert_eq!(p[0].1["data"]["path"], "/3/0/0");
    // The separate CON response with a new message ID is acknowledged and delivered once.
    let sep = unsolicited(
        MsgType::Con,
        999,
        m.token,
        codes::CONTENT,
        Some(0),
        None,
        b"ACME",
    );
    let acks = h.exchange(0, addr(1, DEV), &sep);
    assert_eq!(acks.len(), 1);
    let a = acks[0].msg();
    assert_eq!((a.mtype, a.mid, a.code), (MsgType::Ack, 999, codes::EMPTY));
    let again = h.exchange(0, addr(1, DEV), &sep);
    assert_eq!(again.len(), 1, "a duplicate is acknowledged again");
    let a = again[0].msg();
    assert_eq!(
        (a.mtype, a.mid, a.code),
        (MsgType::Ack, 999, codes::EMPTY),
        "with an ACK (RFC 7252 §4.5), not a Reset, although the exchange is over"
    );
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2, "and delivered once");
    assert_eq!(p[1].1["msgType"], "read");
    assert_eq!(p[1].1["data"]["content"][0]["value"], "ACME");
}

#[test]
fn reset_and_timeout_then_next_command_goes_out() {
    let mut h = setup();
    let mark = h.mark();
    let r1 = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    ));
    // NSTART = 1: the second waits.
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/1"}}"#
        )
        .is_empty());
    let mut rst = Vec::new();
    MessageWriter::new(&mut rst, MsgType::Rst, codes::EMPTY, r1.msg().mid, &[]).finish();
    let next = one_request(h.exchange(0, addr(1, DEV), &rst));
    assert_eq!(path_of(&next.msg()), "/3/0/1");
    let p = h.published_since(mark);
    assert_eq!(p[0].1["msgType"], "coap_reset");
    assert_eq!(p[0].1["reqID"], 1);
    // No answer at all: 4 retransmissions with doubling timeouts, then coap_timeout.
    let mut sent = vec![next.clone()];
    for _ in 0..200 {
        sent.extend(h.advance_collect(500));
    }
    assert_eq!(sent.len(), 5, "1 transmission + MAX_RETRANSMIT 4");
    assert!(
        sent.iter().all(|r| r.bytes == next.bytes),
        "retransmissions are identical"
    );
    let p = h.published_since(mark);
    assert_eq!(p.last().unwrap().1["msgType"], "coap_timeout");
    assert_eq!(p.last().unwrap().1["reqID"], 2);
    assert_eq!(h.cores[0].stats.retransmissions, 4);
}

#[test]
fn retransmission_schedule_follows_rfc7252() {
    let mut h = setup();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    ));
    let _ = req;
    let mut times = vec![];
    for step in 1..=100_000u64 {
        if !h.advance_collect(1).is_empty() {
            times.push(step);
        }
        if times.len() == 4 {
            break;
        }
    }
    // First timeout in [2 s, 3 s), then doubling.
    assert!((2000..3000).contains(&times[0]), "{times:?}");
    let t0 = times[0];
    assert_eq!(times[1] - times[0], 2 * t0);
    assert_eq!(times[2] - times[1], 4 * t0);
    assert_eq!(times[3] - times[2], 8 * t0);
}

#[test]
fn every_command_type_builds_the_right_request() {
    let mut h = setup();
    /// (command, CoAP method, path, Accept, Uri-Query)
    type Case<'a> = (&'a str, u8, &'a str, Option<u16>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            r#"{"reqID":1,"msgType":"discover","data":{"path":"/3/0"}}"#,
            codes::GET,
            "/3/0",
            Some(fmt_id::LINK),
            vec![],
        ),
        (
            r#"{"reqID":2,"msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1700000000}}"#,
            codes::PUT,
            "/3/0/13",
            None,
            vec![],
        ),
        (
            r#"{"reqID":3,"msgType":"write","data":{"basePath":"/31024/11/","content":[{"path":"1","type":"String","value":"a"}]}}"#,
            codes::POST,
            "/31024/11",
            None,
            vec![],
        ),
        (
            r#"{"reqID":4,"msgType":"write-attr","data":{"path":"/3/0/9","pmin":"10","pmax":60,"gt":null,"lt":null,"st":null}}"#,
            codes::PUT,
            "/3/0/9",
            None,
            vec!["pmin=10", "pmax=60"],
        ),
        (
            r#"{"reqID":5,"msgType":"execute","data":{"path":"3/0/4","args":"0"}}"#,
            codes::POST,
            "/3/0/4",
            None,
            vec![],
        ),
        (
            r#"{"reqID":6,"msgType":"create","data":{"basePath":"/31024","content":[{"path":"12/1","type":"String","value":"x"}]}}"#,
            codes::POST,
            "/31024",
            None,
            vec![],
        ),
        (
            r#"{"reqID":7,"msgType":"delete","data":{"path":"/31024/12"}}"#,
            codes::DELETE,
            "/31024/12",
            None,
            vec![],
        ),
        (
            r#"{"reqID":8,"msgType":"read","data":{"path":"/3/0/1?foo=bar"}}"#,
            codes::GET,
            "/3/0/1",
            Some(fmt_id::TEXT),
            vec!["foo=bar"],
        ),
    ];
    for (json, code, path, accept, query) in cases {
        let mark = h.mark();
        let req = one_request(h.command(0, TOPIC, json));
        let m = req.msg();
        assert_eq!(m.code, code, "{json}");
        assert_eq!(path_of(&m), path, "{json}");
        assert_eq!(
            m.option_uint(opt::ACCEPT).map(|a| a as u16),
            accept,
            "{json}"
        );
        let q: Vec<_> = m
            .option_values(opt::URI_QUERY)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert_eq!(q, query, "{json}");
        if code == codes::PUT && path == "/3/0/13" {
            assert_eq!(m.option_uint(opt::CONTENT_FORMAT), Some(fmt_id::TLV as u32));
            assert_eq!(m.payload, &[0xc4, 13, 0x65, 0x53, 0xf1, 0x00]);
        }
        if path == "/3/0/4" {
            assert_eq!(m.payload, b"0");
        }
        let reply_code = match code {
            codes::DELETE => codes::DELETED,
            codes::POST if path == "/31024" => codes::CREATED,
            codes::GET => codes::CONTENT,
            _ => codes::CHANGED,
        };
        let payload: &[u8] = if accept == Some(fmt_id::LINK) {
            b"</3/0>;pmin=10,</3/0/1>,</3/0/2>"
        } else {
            b""
        };
        h.datagram(
            0,
            addr(1, DEV),
            &answer(&req, reply_code, accept, payload, None),
        );
        let p = h.published_since(mark);
        assert_eq!(p.len(), 1, "{json}");
        let v = &p[0].1;
        let t = json
            .split("\"msgType\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(v["msgType"], t);
        assert!(
            v["data"]["reqPath"].as_str().unwrap().starts_with(path),
            "reqPath as the command gave it"
        );
        if t == "discover" {
            assert_eq!(
                v["data"]["content"],
                simd_json::json!(["</3/0>;pmin=10", "</3/0/1>", "</3/0/2>"])
            );
        }
        if matches!(t, "write" | "execute" | "delete" | "write-attr" | "create") {
            assert!(v["data"].get("content").is_none(), "{json}");
        }
    }
}

#[test]
fn observe_notify_stale_and_cancel() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":10,"msgType":"observe","data":{"path":"/3/0/13"}}"#,
    ));
    let m = req.msg();
    assert_eq!(m.option_uint(opt::OBSERVE), Some(0));
    let token = m.token.to_vec();
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CONTENT, Some(0), b"1700000000", Some(5)),
    );
    let p = h.published_since(mark);
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    assert_eq!(p[0].1["msgType"], "observe");
    assert_eq!(p[0].1["data"]["content"][0]["value"], 1700000000);
    // A CON notification: acknowledged, published with seqNum on the notify topic.
    let n = unsolicited(
        MsgType::Con,
        100,
        &token,
        codes::CONTENT,
        Some(0),
        Some(6),
        b"1700000001",
    );
    let acks = h.exchange(0, addr(1, DEV), &n);
    assert_eq!(acks[0].msg().mtype, MsgType::Ack);
    // A NON notification.
    h.datagram(
        0,
        addr(1, DEV),
        &unsolicited(
            MsgType::Non,
            101,
            &token,
            codes::CONTENT,
            Some(0),
            Some(8),
            b"1700000003",
        ),
    );
    // An older one arriving late is not delivered (RFC 7641 §3.4).
    h.datagram(
        0,
        addr(1, DEV),
        &unsolicited(
            MsgType::Non,
            102,
            &token,
            codes::CONTENT,
            Some(0),
            Some(7),
            b"1700000002",
        ),
    );
    let p = h.published_since(mark);
    let notes: Vec<_> = p.iter().filter(|m| m.1["msgType"] == "notify").collect();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].0, "lwm2m/dev1/up/notify");
    assert_eq!(notes[0].1["seqNum"], 6);
    assert_eq!(notes[0].1["reqID"], 10);
    assert_eq!(notes[0].1["data"]["content"][0]["value"], 1700000001);
    assert_eq!(notes[1].1["seqNum"], 8);
    assert_eq!(h.cores[0].stats.stale_notifications, 1);
    // Cancel: the GET carries Observe=1 and the observation's token.
    let c = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":11,"msgType":"cancel-observe","data":{"path":"/3/0/13"}}"#,
    ));
    assert_eq!(c.msg().option_uint(opt::OBSERVE), Some(1));
    assert_eq!(c.msg().token, &token[..]);
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&c, codes::CONTENT, Some(0), b"1700000004", None),
    );
    // Later notifications on that token are rejected with RST and not published.
    let before = h.mark();
    let r = h.exchange(
        0,
        addr(1, DEV),
        &unsolicited(
            MsgType::Con,
            103,
            &token,
            codes::CONTENT,
            Some(0),
            Some(9),
            b"1",
        ),
    );
    assert_eq!(r[0].msg().mtype, MsgType::Rst);
    assert!(h.published_since(before).is_empty());
}

#[test]
fn observations_end_with_the_registration() {
    let mut h = setup();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"observe","data":{"path":"/3/0/13"}}"#,
    ));
    let token = req.msg().token.to_vec();
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CONTENT, Some(0), b"1", Some(1)),
    );
    // Re-registration drops the old observation.
    let r = h.one(0, addr(1, DEV), &Req::register("dev1", 77).bytes());
    assert_eq!(r.code(), codes::CREATED);
    let r = h.exchange(
        0,
        addr(1, DEV),
        &unsolicited(
            MsgType::Con,
            5,
            &token,
            codes::CONTENT,
            Some(0),
            Some(2),
            b"2",
        ),
    );
    assert_eq!(r[0].msg().mtype, MsgType::Rst);
}

#[test]
fn malformed_and_unknown_endpoint_commands_get_400() {
    let mut h = setup();
    let mark = h.mark();
    assert!(h.command(0, TOPIC, "{not json").is_empty());
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":5,"msgType":"read","data":{"path":"/x/y"}}"#
        )
        .is_empty());
    assert!(h
        .command(
            0,
            "lwm2m/ghost/dn/cmd",
            r#"{"reqID":6,"msgType":"read","data":{"path":"/3/0/1"}}"#
        )
        .is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 3);
    for (t, v) in &p {
        assert!(t.ends_with("/up/resp"));
        assert_eq!(v["data"]["code"], "4.00");
        assert_eq!(v["data"]["codeMsg"], "bad_request");
        assert!(v["data"]["error"].as_str().unwrap().len() > 5);
    }
    assert_eq!(p[1].1["reqID"], 5);
    assert_eq!(p[2].0, "lwm2m/ghost/up/resp");
    assert_eq!(p[2].1["reqID"], 6);
    assert!(p[2].1["data"]["error"]
        .as_str()
        .unwrap()
        .contains("unknown endpoint"));
}

/// The format a device announces in an Update's object list replaces the Register's.
#[test]
fn update_with_a_new_ct_changes_the_write_format() {
    let mut h = Harness::new(1, settings());
    let loc = registered(
        &mut h,
        &["lwm2m=1.1"],
        b"</>;rt=\"oma.lwm2m\";ct=\"60 110\",</3/0>",
    );
    let write =
        r#"{"reqID":1,"msgType":"write","data":{"path":"/3/0/14","type":"String","value":"+01"}}"#;
    let w = one_request(h.command(0, TOPIC, write));
    assert_eq!(
        w.msg().option_uint(opt::CONTENT_FORMAT),
        Some(fmt_id::SENML_JSON as u32),
        "CBOR (60) carries one value only: SenML JSON, the next one listed"
    );
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&w, codes::CHANGED, None, b"", None),
    );
    let up = Req::update(&loc, 60).body(b"</>;rt=\"oma.lwm2m\";ct=112,</3/0>");
    assert_eq!(h.one(0, addr(1, DEV), &up.bytes()).code(), codes::CHANGED);
    let w = one_request(h.command(0, TOPIC, write));
    assert_eq!(
        w.msg().option_uint(opt::CONTENT_FORMAT),
        Some(fmt_id::SENML_CBOR as u32)
    );
}

#[test]
fn alternate_path_prefixes_downlinks() {
    let mut h = Harness::new(1, settings());
    registered(
        &mut h,
        &["lwm2m=1.1"],
        b"</lwm2m>;rt=\"oma.lwm2m\";ct=110,</lwm2m/3/0>",
    );
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0"}}"#,
    ));
    assert_eq!(path_of(&req.msg()), "/lwm2m/3/0");
    assert_eq!(
        req.msg().option_uint(opt::ACCEPT),
        Some(fmt_id::SENML_JSON as u32),
        "the device's ct"
    );
    let w = one_request({
        let mark = h.mark();
        let senml = br#"[{"bn":"/3/0/","n":"0","vs":"ACME"}]"#;
        h.datagram(
            0,
            addr(1, DEV),
            &answer(&req, codes::CONTENT, Some(fmt_id::SENML_JSON), senml, None),
        );
        let v = &h.published_since(mark)[0].1;
        assert_eq!(
            v["data"]["content"],
            simd_json::json!([{"path": "/3/0/0", "value": "ACME"}])
        );
        h.command(0, TOPIC, r#"{"reqID":2,"msgType":"write","data":{"path":"/3/0/14","type":"String","value":"+01"}}"#)
    });
    assert_eq!(
        w.msg().option_uint(opt::CONTENT_FORMAT),
        Some(fmt_id::SENML_JSON as u32)
    );
}

/// A 1.1 device in queue mode (`Q`) stays in it when an Update says `b=U` (1.1 moved queue
/// mode out of the binding); a CoAP ping from it wakes it like any message.
#[test]
fn queue_mode_survives_a_1_1_binding_update_and_a_ping_wakes_the_device() {
    let mut h = Harness::new(1, settings());
    let loc = registered(&mut h, &["lwm2m=1.1", "b=U", "Q"], b"</3/0>");
    let out = h.exchange(0, addr(1, DEV), &Req::update(&loc, 50).q("b=U").bytes());
    assert_eq!(out[0].code(), codes::CHANGED);
    h.advance(23_000);
    assert!(
        h.command(
            0,
            TOPIC,
            r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#
        )
        .is_empty(),
        "still in queue mode: held while asleep"
    );
    let mut ping = Vec::new();
    MessageWriter::new(&mut ping, MsgType::Con, codes::EMPTY, 77, &[]).finish();
    let out = h.exchange(0, addr(1, DEV), &ping);
    assert_eq!(out.len(), 2, "the Reset to the ping, then the held command");
    assert_eq!(out[0].msg().mtype, MsgType::Rst);
    assert_eq!(path_of(&out[1].msg()), "/3/0/1");

    // A 1.0 device leaves queue mode with `b=U`.
    let r = Req::new(codes::POST, "/rd", 2)
        .q("ep=dev-10")
        .q("lwm2m=1.0")
        .q("b=UQ")
        .body(b"</3/0>");
    let loc = h.one(0, addr(1, DEV + 1), &r.bytes()).location();
    h.exchange(0, addr(1, DEV + 1), &Req::update(&loc, 51).q("b=U").bytes());
    h.advance(23_000);
    assert_eq!(
        h.command(
            0,
            "lwm2m/dev-10/dn/dm",
            r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/1"}}"#
        )
        .len(),
        1,
        "sent at once"
    );
}

#[test]
fn queue_mode_holds_commands_until_the_device_speaks() {
    let mut h = Harness::new(1, settings());
    let loc = registered(&mut h, &["lwm2m=1.0", "b=UQ"], b"</3/0>");
    // Awake right after registering.
    let r = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    ));
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&r, codes::CONTENT, Some(0), b"x", None),
    );
    // Asleep after the window: held.
    h.advance(23_000);
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/1"}}"#
        )
        .is_empty());
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":3,"msgType":"read","data":{"path":"/3/0/2"}}"#
        )
        .is_empty());
    // mheaders.ttl = 0 goes at once.
    let now = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":4,"msgType":"read","data":{"path":"/3/0/3"},"mheaders":{"ttl":0}}"#,
    ));
    assert_eq!(path_of(&now.msg()), "/3/0/3");
    // Its answer shows the device awake: the held commands follow, in order.
    let next = one_request(h.exchange(
        0,
        addr(1, DEV),
        &answer(&now, codes::CONTENT, Some(0), b"x", None),
    ));
    assert_eq!(path_of(&next.msg()), "/3/0/1");
    let next = one_request(h.exchange(
        0,
        addr(1, DEV),
        &answer(&next, codes::CONTENT, Some(0), b"x", None),
    ));
    assert_eq!(path_of(&next.msg()), "/3/0/2");
    assert!(h
        .exchange(
            0,
            addr(1, DEV),
            &answer(&next, codes::CONTENT, Some(0), b"x", None)
        )
        .is_empty());
    // Asleep again; an Update wakes it: 2.04, then the held command.
    h.advance(23_000);
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":5,"msgType":"read","data":{"path":"/3/0/9"}}"#
        )
        .is_empty());
    let out = h.exchange(0, addr(1, DEV), &Req::update(&loc, 50).bytes());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].code(), codes::CHANGED);
    assert_eq!(path_of(&out[1].msg()), "/3/0/9");
}

#[test]
fn queue_overflow_and_expiry_are_answered() {
    let mut s = settings();
    s.max_queued = 2;
    s.queue_ttl_ms = 60_000;
    let mut h = Harness::new(1, s);
    registered(&mut h, &["lwm2m=1.1", "Q"], b"</3/0>");
    h.advance(30_000);
    let mark = h.mark();
    for i in 1..=3 {
        h.command(
            0,
            TOPIC,
            &format!(r#"{{"reqID":{i},"msgType":"read","data":{{"path":"/3/0/0"}}}}"#),
        );
    }
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["reqID"], 3);
    assert!(p[0].1["data"]["error"].as_str().unwrap().contains("full"));
    h.advance(61_000);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 3);
    assert!(p[1..]
        .iter()
        .all(|m| m.1["data"]["error"].as_str().unwrap().contains("expired")));
}

#[test]
fn deregistration_ends_pending_commands() {
    let mut h = Harness::new(1, settings());
    let loc = registered(&mut h, &["lwm2m=1.0"], b"</3/0>");
    one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    ));
    h.command(
        0,
        TOPIC,
        r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/1"}}"#,
    );
    let mark = h.mark();
    h.one(
        0,
        addr(1, DEV),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 9).bytes(),
    );
    let p = h.published_since(mark);
    let ids: Vec<_> = p
        .iter()
        .filter(|m| m.0.ends_with("up/resp") && m.1["msgType"].as_str() != Some("deregister"))
        .map(|m| m.1["reqID"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "both commands get a final message: {p:?}");
}

#[test]
fn auto_observe_observes_registered_instances_except_management() {
    let mut s = settings();
    s.auto_observe = AutoObserveSet::All;
    let mut h = Harness::new(1, s);
    let mut r = Req::register("dev1", 1).body(b"</1/0>,</3/0>,</5/0>,</3303/0>,</3303/1>");
    r.payload = b"</1/0>,</3/0>,</5/0>,</3303/0>,</3303/1>".to_vec();
    let out = h.exchange(0, addr(1, DEV), &r.bytes());
    assert_eq!(out[0].code(), codes::CREATED);
    // NSTART 1: the first observe goes out with the 2.01, the others follow.
    let mut observed = vec![];
    let mut pending: Vec<Reply> = out[1..].to_vec();
    while let Some(req) = pending.pop() {
        let m = req.msg();
        assert_eq!(m.option_uint(opt::OBSERVE), Some(0));
        observed.push(path_of(&m));
        pending.extend(h.exchange(
            0,
            addr(1, DEV),
            &answer(&req, codes::CONTENT, Some(fmt_id::TLV), &[], Some(1)),
        ));
    }
    assert_eq!(observed, ["/3/0", "/3303/0", "/3303/1"]);
    let mut s = settings();
    s.auto_observe = AutoObserveSet::Paths(vec![
        crate::model::LwPath::parse("/3303/0/5700").unwrap(),
        crate::model::LwPath::parse("/9/0").unwrap(),
    ]);
    let mut h = Harness::new(1, s);
    let out = h.exchange(0, addr(1, DEV), &r.bytes());
    assert_eq!(out.len(), 2);
    assert_eq!(path_of(&out[1].msg()), "/3303/0/5700");
}

#[test]
fn commands_follow_an_endpoint_to_another_shard() {
    let mut h = Harness::new(2, settings());
    let r = h.one(0, addr(1, DEV), &Req::register("dev1", 1).bytes());
    let loc = r.location();
    // NAT rebinding moves dev1 to shard 1; a command delivered to shard 0 is forwarded.
    h.one(1, addr(2, 7), &Req::update(&loc, 2).bytes());
    let req = one_request_to(
        h.command(
            0,
            TOPIC,
            r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
        ),
        addr(2, 7),
    );
    assert_eq!(path_of(&req.msg()), "/3/0/0");
}

fn one_request_to(rs: Vec<Reply>, to: std::net::SocketAddr) -> Reply {
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].to, to);
    rs.into_iter().next().unwrap()
}

fn read(id: u32, path: &str) -> String {
    format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"{path}"}}}}"#)
}

/// The `error` of the one response published since `mark`, checked to answer `req_id`.
fn one_error(h: &Harness, mark: usize, req_id: i32) -> String {
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    assert_eq!(p[0].1["reqID"], req_id, "{p:?}");
    assert_eq!(p[0].1["msgType"], "read");
    assert_eq!(p[0].1["data"]["code"], "5.03");
    p[0].1["data"]["error"].as_str().unwrap().to_string()
}

#[test]
fn a_queued_command_expires_at_its_mqtt_message_expiry_or_the_default_ttl() {
    let mut s = settings();
    s.queue_ttl_ms = 60_000;
    let mut h = Harness::new(1, s);
    let loc = registered(&mut h, &["lwm2m=1.0", "b=UQ"], b"</3/0>");
    h.advance(23_000); // asleep
    let mark = h.mark();
    // MQTT expiry shorter than the default TTL (10 s, 20 s), and longer (120 s).
    assert!(h
        .command_expiring(0, TOPIC, &read(1, "/3/0/0"), Some(10))
        .is_empty());
    assert!(h
        .command_expiring(0, TOPIC, &read(2, "/3/0/1"), Some(120))
        .is_empty());
    assert!(h
        .command_expiring(0, TOPIC, &read(3, "/3/0/2"), Some(20))
        .is_empty());
    h.advance(9_999);
    assert!(h.published_since(mark).is_empty());
    h.advance(1);
    let e = one_error(&h, mark, 1);
    assert!(
        e.contains("expired while the device was sleeping")
            && e.contains("MQTT message-expiry interval (10 s) ran out"),
        "{e}"
    );
    let mark = h.mark();
    h.advance(10_000);
    let e = one_error(&h, mark, 3);
    assert!(e.contains("(20 s)"), "{e}");
    // The device wakes at 30 s: only the command still valid goes out.
    h.advance(10_000);
    let mark = h.mark();
    let out = h.exchange(0, addr(1, DEV), &Req::update(&loc, 50).bytes());
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].code(), codes::CHANGED);
    assert_eq!(path_of(&out[1].msg()), "/3/0/1");
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&out[1], codes::CONTENT, Some(0), b"x", None),
    );
    let p: Vec<_> = h
        .published_since(mark)
        .into_iter()
        .filter(|m| m.0.ends_with("up/resp"))
        .collect();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].1["reqID"], 2);
    assert_eq!(p[0].1["data"]["code"], "2.05");
    // Asleep again: a command whose MQTT expiry is longer than the default TTL expires at
    // the TTL, and the message names it.
    h.advance(23_000);
    let mark = h.mark();
    assert!(h
        .command_expiring(0, TOPIC, &read(4, "/3/0/3"), Some(120))
        .is_empty());
    h.advance(59_999);
    assert!(h.published_since(mark).is_empty());
    h.advance(1);
    let e = one_error(&h, mark, 4);
    assert!(e.contains("queue.default_ttl (60 s) ran out"), "{e}");
    assert_eq!(h.cores[0].stats.commands_expired, 3);
}

#[test]
fn the_mqtt_expiry_alone_limits_the_wait_without_a_default_ttl() {
    let mut h = Harness::new(1, settings()); // queue.default_ttl 0: no expiry of its own
    registered(&mut h, &["lwm2m=1.1", "Q"], b"</3/0>");
    h.advance(23_000);
    let mark = h.mark();
    assert!(h
        .command_expiring(0, TOPIC, &read(1, "/3/0/0"), Some(200))
        .is_empty());
    assert!(h.command(0, TOPIC, &read(2, "/3/0/1")).is_empty());
    h.advance(199_999);
    assert!(h.published_since(mark).is_empty());
    h.advance(1);
    let e = one_error(&h, mark, 1);
    assert!(e.contains("(200 s)"), "{e}");
    // The one without an expiry waits for ever; a ping wakes the device and it goes out.
    let mut ping = Vec::new();
    MessageWriter::new(&mut ping, MsgType::Con, codes::EMPTY, 77, &[]).finish();
    let out = h.exchange(0, addr(1, DEV), &ping);
    assert_eq!(out.len(), 2);
    assert_eq!(path_of(&out[1].msg()), "/3/0/1");
}

#[test]
fn a_forwarded_command_keeps_its_absolute_deadline() {
    let mut h = Harness::new(2, settings());
    let r = Req::new(codes::POST, "/rd", 1)
        .q("ep=dev1")
        .q("lt=300")
        .q("lwm2m=1.0")
        .q("b=UQ")
        .body(b"</3/0>");
    assert_eq!(h.one(1, addr(1, DEV), &r.bytes()).code(), codes::CREATED);
    h.advance(23_000);
    let mark = h.mark();
    let arrived = h.now;
    let arrival = crate::lwm2m::command::Arrival {
        at_ms: None,
        expiry_s: Some(30),
    };
    // Shard 0 takes the command but dev1 lives on shard 1: forwarded with its arrival time.
    let core = &mut h.cores[0];
    let payload = read(1, "/3/0/0").into_bytes();
    let cmd = RoutedCommand::from_topic(core.settings(), &h.dir, TOPIC, payload, arrival).unwrap();
    core.handle(h.now, Input::Shard(ShardMsg::Command(cmd)));
    let mut fwd = Vec::new();
    core.drain(|o| {
        if let Output::Shard { to, msg } = o {
            fwd.push((to, msg));
        }
    });
    assert_eq!(fwd.len(), 1);
    let (to, msg) = fwd.pop().unwrap();
    assert_eq!(to, 1);
    match &msg {
        ShardMsg::Command(RoutedCommand { arrival, hops, .. }) => {
            assert_eq!(*hops, 1);
            assert_eq!(arrival.at_ms, Some(arrived));
            assert_eq!(arrival.expiry_s, Some(30));
        }
        other => panic!("{other:?}"),
    }
    // The forward takes 20 s to be handled: 10 s are left, not 30.
    h.advance(20_000);
    assert!(h.message(1, msg).is_empty());
    h.advance(9_999);
    assert!(h.published_since(mark).is_empty());
    h.advance(1);
    let e = one_error(&h, mark, 1);
    assert!(e.contains("(30 s)"), "{e}");
}

#[test]
fn commands_bypassing_the_queue_keep_their_order() {
    let mut h = setup();
    let first = one_request(h.command(0, TOPIC, &read(1, "/3/0/0")));
    // Behind NSTART: an ordinary command, then two with mheaders.ttl = 0.
    assert!(h.command(0, TOPIC, &read(2, "/3/0/1")).is_empty());
    for (id, path) in [(3, "/3/0/2"), (4, "/3/0/3")] {
        let json = format!(
            r#"{{"reqID":{id},"msgType":"read","data":{{"path":"{path}"}},"mheaders":{{"ttl":0}}}}"#
        );
        assert!(h.command(0, TOPIC, &json).is_empty());
    }
    let mut order = Vec::new();
    let mut req = first;
    for _ in 0..3 {
        req = one_request(h.exchange(
            0,
            addr(1, DEV),
            &answer(&req, codes::CONTENT, Some(0), b"x", None),
        ));
        order.push(path_of(&req.msg()));
    }
    assert_eq!(
        order,
        ["/3/0/2", "/3/0/3", "/3/0/1"],
        "the ttl=0 ones first, in the order they came"
    );
}

#[test]
fn waiting_for_nstart_is_not_sleeping() {
    let mut s = settings();
    s.queue_ttl_ms = 10_000;
    let mut h = Harness::new(1, s);
    registered(&mut h, &["lwm2m=1.0", "b=U"], b"</3/0>");
    let mark = h.mark();
    let first = one_request(h.command(0, TOPIC, &read(1, "/3/0/0")));
    assert!(h.command(0, TOPIC, &read(2, "/3/0/1")).is_empty());
    // The device never answers: 93 s of retransmissions, much longer than the default TTL,
    // which is for commands held for a sleeping (queue-mode) device.
    let mut sent = Vec::new();
    for _ in 0..200 {
        sent.extend(h.advance_collect(500));
    }
    let second: Vec<_> = sent.iter().filter(|r| r.bytes != first.bytes).collect();
    assert!(!second.is_empty(), "the second command went out");
    assert_eq!(path_of(&second[0].msg()), "/3/0/1");
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].1["msgType"], "coap_timeout");
    assert_eq!(h.cores[0].stats.commands_expired, 0);
    // An MQTT expiry does limit the wait for NSTART, and the error says what it waited for.
    let mark = h.mark();
    assert!(h
        .command_expiring(0, TOPIC, &read(3, "/3/0/2"), Some(5))
        .is_empty());
    h.advance(5_000);
    let p: Vec<_> = h
        .published_since(mark)
        .into_iter()
        .filter(|m| m.1["reqID"] == 3)
        .collect();
    assert_eq!(p.len(), 1, "{p:?}");
    let e = p[0].1["data"]["error"].as_str().unwrap();
    assert!(
        e.contains("while earlier commands to the device were in progress")
            && e.contains("MQTT message-expiry interval (5 s)"),
        "{e}"
    );
    assert!(!e.contains("sleeping"), "{e}");
}

#[test]
fn a_notification_during_cancel_observe_is_a_notification() {
    let mut h = setup();
    let obs = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":10,"msgType":"observe","data":{"path":"/3/0/13"}}"#,
    ));
    let token = obs.msg().token.to_vec();
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&obs, codes::CONTENT, Some(0), b"1700000000", Some(5)),
    );
    let cancel = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":11,"msgType":"cancel-observe","data":{"path":"/3/0/13"}}"#,
    ));
    assert_eq!(cancel.msg().token, &token[..]);
    let mark = h.mark();
    // The device acknowledges the cancel (the response will be separate)...
    let mut ack = Vec::new();
    MessageWriter::new(&mut ack, MsgType::Ack, codes::EMPTY, cancel.msg().mid, &[]).finish();
    h.datagram(0, addr(1, DEV), &ack);
    // ... a notification on the same token crosses it (it carries Observe) ...
    let n = unsolicited(
        MsgType::Con,
        300,
        &token,
        codes::CONTENT,
        Some(0),
        Some(6),
        b"1700000006",
    );
    let acks = h.exchange(0, addr(1, DEV), &n);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].msg().mtype, MsgType::Ack);
    // ... then the cancel's response (RFC 7641 §3.6: no Observe option).
    let resp = unsolicited(
        MsgType::Con,
        301,
        &token,
        codes::CONTENT,
        Some(0),
        None,
        b"1700000007",
    );
    h.datagram(0, addr(1, DEV), &resp);
    let p = h.published_since(mark);
    let kinds: Vec<_> = p.iter().map(|m| m.1["msgType"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ack", "notify", "cancel-observe"], "{p:?}");
    assert_eq!(p[1].0, "lwm2m/dev1/up/notify");
    assert_eq!(p[1].1["seqNum"], 6);
    assert_eq!(p[1].1["data"]["content"][0]["value"], 1700000006);
    assert_eq!(p[2].0, "lwm2m/dev1/up/resp");
    assert_eq!(p[2].1["reqID"], 11);
    assert_eq!(p[2].1["data"]["content"][0]["value"], 1700000007);
    // The observation is over: a later notification is refused.
    let late = unsolicited(
        MsgType::Con,
        302,
        &token,
        codes::CONTENT,
        Some(0),
        Some(7),
        b"1",
    );
    assert_eq!(
        h.exchange(0, addr(1, DEV), &late)[0].msg().mtype,
        MsgType::Rst
    );
}

#[test]
fn nstart_two_pipelines_two_commands_and_the_third_waits() {
    let mut s = settings();
    s.nstart = 2;
    let mut h = Harness::new(1, s);
    registered(&mut h, &["lwm2m=1.0", "b=U"], b"</3/0>");
    let mark = h.mark();
    let a = one_request(h.command(0, TOPIC, &read(1, "/3/0/0")));
    let b = one_request(h.command(0, TOPIC, &read(2, "/3/0/1")));
    assert_ne!(a.msg().token, b.msg().token);
    assert!(
        h.command(0, TOPIC, &read(3, "/3/0/2")).is_empty(),
        "NSTART 2"
    );
    // Answers out of order: the first one back frees a place for the third.
    let c = one_request(h.exchange(
        0,
        addr(1, DEV),
        &answer(&b, codes::CONTENT, Some(0), b"b", None),
    ));
    assert_eq!(path_of(&c.msg()), "/3/0/2");
    for r in [&a, &c] {
        assert!(h
            .exchange(
                0,
                addr(1, DEV),
                &answer(r, codes::CONTENT, Some(0), b"x", None)
            )
            .is_empty());
    }
    let ids: Vec<_> = h
        .published_since(mark)
        .iter()
        .map(|m| m.1["reqID"].to_string())
        .collect();
    assert_eq!(ids, ["2", "1", "3"]);
}

#[test]
fn a_notification_wakes_a_queue_mode_device() {
    let mut h = Harness::new(1, settings());
    registered(&mut h, &["lwm2m=1.0", "b=UQ"], b"</3/0>");
    let obs = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"observe","data":{"path":"/3/0/13"}}"#,
    ));
    let token = obs.msg().token.to_vec();
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&obs, codes::CONTENT, Some(0), b"1700000000", Some(1)),
    );
    h.advance(23_000);
    assert!(h.command(0, TOPIC, &read(2, "/3/0/1")).is_empty(), "asleep");
    for (t, mid, seq) in [(MsgType::Non, 400, 2), (MsgType::Con, 401, 3)] {
        let out = h.exchange(
            0,
            addr(1, DEV),
            &unsolicited(t, mid, &token, codes::CONTENT, Some(0), Some(seq), b"1"),
        );
        if t == MsgType::Non {
            // The held command follows the notification at once.
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(path_of(&out[0].msg()), "/3/0/1");
            h.datagram(
                0,
                addr(1, DEV),
                &answer(&out[0], codes::CONTENT, Some(0), b"x", None),
            );
            h.advance(23_000);
            assert!(h.command(0, TOPIC, &read(3, "/3/0/2")).is_empty());
        } else {
            // Acknowledged, and the held command follows.
            assert_eq!(out.len(), 2, "{out:?}");
            let ack = out.iter().find(|r| r.msg().mtype == MsgType::Ack).unwrap();
            assert_eq!(ack.msg().mid, 401);
            let req = out.iter().find(|r| r.msg().mtype == MsgType::Con).unwrap();
            assert_eq!(path_of(&req.msg()), "/3/0/2");
        }
    }
}

#[test]
fn batch_write_to_a_resource_is_a_put_of_its_instances() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":5,"msgType":"write","data":{"basePath":"/3/0/6","content":[{"path":"0","type":"Integer","value":1},{"path":"1","value":"5"}]}}"#,
    ));
    let m = req.msg();
    assert_eq!(m.code, codes::PUT);
    assert_eq!(path_of(&m), "/3/0/6");
    assert_eq!(m.option_uint(opt::CONTENT_FORMAT), Some(fmt_id::TLV as u32));
    // A multiple-resource TLV of two instances, as in the specification's Device example.
    assert_eq!(m.payload, &[0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]);
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CHANGED, None, b"", None),
    );
    let p = h.published_since(mark);
    assert_eq!(p[0].1["msgType"], "write");
    assert_eq!(p[0].1["data"]["code"], "2.04");
    assert_eq!(p[0].1["data"]["reqPath"], "/3/0/6");
}

#[test]
fn hex_encoded_write_values() {
    let mut h = setup();
    let mark = h.mark();
    let req = one_request(h.command(
        0,
        TOPIC,
        r#"{"reqID":6,"msgType":"write","encoding":"hex","data":{"basePath":"/3/0/","content":[{"path":"14","type":"String","value":"2b30323a3030"},{"path":"13","value":"5182428F"}]}}"#,
    ));
    let m = req.msg();
    assert_eq!((m.code, path_of(&m)), (codes::POST, "/3/0".to_string()));
    // The raw bytes of each value, typed (Time from the model), as the spec's Device TLV.
    let mut want = vec![0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F, 0xC6, 0x0E];
    want.extend_from_slice(b"+02:00");
    assert_eq!(m.payload, &want[..]);
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&req, codes::CHANGED, None, b"", None),
    );
    let p = h.published_since(mark);
    assert_eq!(p[0].1["encoding"], "hex", "echoed");
    assert_eq!(p[0].1["data"]["code"], "2.04");
    // Not hex: answered 4.00, saying so.
    let mark = h.mark();
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":7,"msgType":"write","encoding":"hex","data":{"path":"/3/0/14","type":"String","value":"zz"}}"#,
        )
        .is_empty());
    let p = h.published_since(mark);
    assert_eq!(p[0].1["data"]["code"], "4.00");
    assert!(p[0].1["data"]["error"]
        .as_str()
        .unwrap()
        .contains("not a hex string"));
}

/// Commands waiting in all queues, over every shard of `h`.
fn waiting(h: &Harness) -> u64 {
    h.cores.iter().map(|c| c.stats.commands_waiting).sum()
}

/// Final outcomes counted for `op` (None: unknown msgType), over every shard of `h`.
fn ended(h: &Harness, op: Option<crate::lwm2m::command::Op>, o: Outcome) -> u64 {
    let row = op.map_or(UNKNOWN_MSG_TYPE, |op| op.index());
    h.cores
        .iter()
        .map(|c| c.stats.outcomes[row][o as usize])
        .sum()
}

/// Every command's final message is counted once, and the number of commands waiting in
/// device queues follows them in and out: queued while asleep, past the queue size,
/// expired, behind NSTART, dropped by a de-registration, refused, carried to another shard.
#[test]
fn waiting_commands_and_final_outcomes_are_counted() {
    use crate::lwm2m::command::Op;
    let read = |id: u32, path: &str| {
        format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"{path}"}}}}"#)
    };
    let mut s = settings();
    s.max_queued = 2;
    s.queue_ttl_ms = 60_000;
    let mut h = Harness::new(2, s);
    let mark = h.mark();
    // Asleep: two held, the third refused; then both expire.
    registered(&mut h, &["lwm2m=1.1", "Q"], b"</3/0>");
    h.advance(30_000);
    for i in 1..=3 {
        assert!(h.command(0, TOPIC, &read(i, "/3/0/0")).is_empty());
    }
    assert_eq!(waiting(&h), 2);
    assert_eq!(ended(&h, Some(Op::Read), Outcome::QueueFull), 1);
    h.advance(61_000);
    assert_eq!(waiting(&h), 0);
    assert_eq!(ended(&h, Some(Op::Read), Outcome::Expired), 2);
    // Awake (registered again, not in queue mode): a read in flight, an execute behind
    // it (NSTART 1); the device moves to shard 1 and the waiting execute with it.
    let r = h.one(0, addr(1, DEV), &Req::register("dev1", 20).bytes());
    let loc = r.location();
    one_request(h.command(0, TOPIC, &read(4, "/3/0/1")));
    let exec = r#"{"reqID":5,"msgType":"execute","data":{"path":"/3/0/4"}}"#;
    assert!(h.command(0, TOPIC, exec).is_empty());
    assert_eq!(h.cores[0].stats.commands_waiting, 1);
    h.one(1, addr(2, 7), &Req::update(&loc, 21).bytes());
    assert_eq!(h.cores[0].stats.commands_waiting, 0);
    assert_eq!(h.cores[1].stats.commands_waiting, 1);
    // De-registered: both end (the read in flight, the execute waiting).
    h.one(
        1,
        addr(2, 7),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 22).bytes(),
    );
    assert_eq!(waiting(&h), 0);
    assert_eq!(ended(&h, Some(Op::Read), Outcome::Dropped), 1);
    assert_eq!(ended(&h, Some(Op::Execute), Outcome::Dropped), 1);
    // Refused: a read without a path, an unknown msgType, a command for nobody.
    registered(&mut h, &["lwm2m=1.1"], b"</3/0>");
    h.command(0, TOPIC, r#"{"reqID":6,"msgType":"read","data":{}}"#);
    h.command(0, TOPIC, r#"{"reqID":7,"msgType":"reboot","data":{}}"#);
    h.command(0, "lwm2m/nobody/dn/cmd", &read(8, "/3/0/0"));
    assert_eq!(ended(&h, Some(Op::Read), Outcome::Rejected), 2);
    assert_eq!(ended(&h, None, Outcome::Rejected), 1);
    // A response, a reset and a timeout.
    let r = one_request(h.command(0, TOPIC, &read(9, "/3/0/0")));
    h.datagram(
        0,
        addr(1, DEV),
        &answer(&r, codes::CONTENT, Some(0), b"x", None),
    );
    let r = one_request(h.command(0, TOPIC, exec));
    let mut rst = Vec::new();
    MessageWriter::new(&mut rst, MsgType::Rst, codes::EMPTY, r.msg().mid, &[]).finish();
    h.datagram(0, addr(1, DEV), &rst);
    one_request(h.command(0, TOPIC, &read(10, "/3/0/0")));
    h.advance(200_000);
    assert_eq!(ended(&h, Some(Op::Read), Outcome::Response), 1);
    assert_eq!(ended(&h, Some(Op::Execute), Outcome::Reset), 1);
    assert_eq!(ended(&h, Some(Op::Read), Outcome::Timeout), 1);
    // Exactly one final message each: as many as the outcomes counted.
    let finals = h
        .published_since(mark)
        .iter()
        .filter(|(t, v)| {
            t.ends_with("up/resp")
                && !matches!(
                    v["msgType"].as_str(),
                    Some("register" | "update" | "deregister")
                )
        })
        .count() as u64;
    let counted: u64 = h
        .cores
        .iter()
        .flat_map(|c| c.stats.outcomes.iter().flatten())
        .sum();
    assert_eq!(counted, 11);
    assert_eq!(finals, counted);
    assert_eq!(waiting(&h), 0);
}
