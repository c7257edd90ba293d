//! The LwM2M 1.1 composite operations and the 1.2 Write-Attributes on a virtual clock:
//! the exact CoAP request of each composite command (FETCH or iPATCH of the root, its
//! Content-Format, Accept, body and Observe) in each of the device's formats, the MQTT
//! messages made of the answers and notifications, the refusal for LwM2M 1.0, a cancel
//! that repeats its observation's token, body and Accept, answers that miss paths or do
//! not decode, and Block2 answers to a FETCH.

use super::blocks::{blk, block, block2_ack, one_req};
use super::harness::*;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::fmt_id;
use crate::lwm2m::command::Op;
use crate::lwm2m::stats::Outcome;
use simd_json::prelude::*;

const DEV: u16 = 5000;
const TOPIC: &str = "lwm2m/dev1/dn/cmd";
const PATHS: &str = r#"{"paths":["/3/0/9","/1/0/1"]}"#;

fn dev() -> std::net::SocketAddr {
    addr(1, DEV)
}

/// A harness with `dev1` registered with `lwm2m` (None: no such parameter) and the object
/// list `links`; returns it and the registration's location.
fn registered(lwm2m: Option<&str>, links: &[u8]) -> (Harness, String) {
    let mut h = Harness::new(1, settings());
    let mut r = Req::new(codes::POST, "/rd", 1).q("ep=dev1").q("lt=300");
    if let Some(v) = lwm2m {
        r = r.q(&format!("lwm2m={v}"));
    }
    let r = h.one(0, dev(), &r.body(links).bytes());
    assert_eq!(r.code(), codes::CREATED);
    let loc = r.location();
    (h, loc)
}

fn cmd(id: u32, msg_type: &str, data: &str) -> String {
    format!(r#"{{"reqID":{id},"msgType":"{msg_type}","data":{data}}}"#)
}

/// The gateway's one request to the device for `json`.
fn request(h: &mut Harness, json: &str) -> Reply {
    let r = one_req(h.command(0, TOPIC, json));
    assert_eq!(r.to, dev());
    r
}

/// The device's piggybacked answer to `req`.
fn answer(req: &Reply, code: u8, cf: Option<u16>, observe: Option<u32>, body: &[u8]) -> Vec<u8> {
    let m = req.msg();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(cf) = cf {
        w.option_uint(opt::CONTENT_FORMAT, cf as u32);
    }
    w.payload(body);
    buf
}

/// A notification on `token`.
fn notification(t: MsgType, mid: u16, token: &[u8], seq: u32, cf: u16, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, t, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq)
        .option_uint(opt::CONTENT_FORMAT, cf as u32);
    w.payload(body);
    buf
}

/// What a request says, as the device reads it.
#[derive(Debug, PartialEq)]
struct Seen {
    mtype: MsgType,
    code: u8,
    uri_path: Vec<String>,
    uri_query: Vec<String>,
    content_format: Option<u32>,
    accept: Option<u32>,
    observe: Option<u32>,
    body: Vec<u8>,
}

fn seen(m: &Message<'_>) -> Seen {
    let strings = |n| {
        m.option_values(n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    Seen {
        mtype: m.mtype,
        code: m.code,
        uri_path: strings(opt::URI_PATH),
        uri_query: strings(opt::URI_QUERY),
        content_format: m.option_uint(opt::CONTENT_FORMAT),
        accept: m.option_uint(opt::ACCEPT),
        observe: m.option_uint(opt::OBSERVE),
        body: m.payload.to_vec(),
    }
}

/// A CON FETCH or iPATCH of the root (`uri_path` holding the alternate path only).
fn composite_request(
    code: u8,
    alt: &[&str],
    cf: u16,
    accept: Option<u16>,
    observe: Option<u32>,
    body: &[u8],
) -> Seen {
    Seen {
        mtype: MsgType::Con,
        code,
        uri_path: alt.iter().map(|s| s.to_string()).collect(),
        uri_query: vec![],
        content_format: Some(cf as u32),
        accept: accept.map(u32::from),
        observe,
        body: body.to_vec(),
    }
}

/// `[{0:"/3/0/9"},{0:"/1/0/1"}]`: the paths of [`PATHS`] in SenML CBOR.
const PATHS_CBOR: &[u8] = b"\x82\xa1\x00\x66/3/0/9\xa1\x00\x66/1/0/1";
/// `[{0:"/3/0/9",2:87},{0:"/1/0/1",2:300}]`.
const VALUES_SENML_CBOR: &[u8] =
    b"\x82\xa2\x00\x66/3/0/9\x02\x18\x57\xa2\x00\x66/1/0/1\x02\x19\x01\x2c";
/// `{3:{0:{9:87}},1:{0:{1:300}}}`.
const VALUES_LWM2M_CBOR: &[u8] =
    b"\xa2\x03\xa1\x00\xa1\x09\x18\x57\x01\xa1\x00\xa1\x01\x19\x01\x2c";
const VALUES_SENML_JSON: &[u8] =
    br#"[{"bn":"/3/0/","n":"9","v":87},{"bn":"/1/0/","n":"1","v":300}]"#;
const WRITE: &str = r#"{"content":[{"path":"/3/0/14","type":"String","value":"+02"},{"path":"1/0/1","type":"Integer","value":"300"}]}"#;

fn values() -> simd_json::OwnedValue {
    simd_json::json!([{"path": "/3/0/9", "value": 87}, {"path": "/1/0/1", "value": 300}])
}

fn req_paths() -> simd_json::OwnedValue {
    simd_json::json!(["/3/0/9", "/1/0/1"])
}

#[test]
fn read_composite_is_a_fetch_of_the_root_in_senml_json() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let mark = h.mark();
    let req = request(&mut h, &cmd(1, "read-composite", PATHS));
    let body = br#"[{"n":"/3/0/9"},{"n":"/1/0/1"}]"#;
    assert_eq!(
        seen(&req.msg()),
        composite_request(
            codes::FETCH,
            &[],
            fmt_id::SENML_JSON,
            Some(fmt_id::SENML_JSON),
            None,
            body
        )
    );
    assert_eq!(req.msg().token.len(), 4);
    let a = answer(
        &req,
        codes::CONTENT,
        Some(fmt_id::SENML_JSON),
        None,
        VALUES_SENML_JSON,
    );
    assert!(h.exchange(0, dev(), &a).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    let v = &p[0].1;
    assert_eq!(v["reqID"], 1);
    assert_eq!(v["msgType"], "read-composite");
    assert_eq!(v["data"]["reqPath"], req_paths());
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(v["data"]["codeMsg"], "content");
    assert_eq!(v["data"]["content"], values());
    let s = h.cores[0].stats();
    assert_eq!(s.commands_by_op[Op::ReadComposite.index()], 1);
    assert_eq!(
        s.outcomes[Op::ReadComposite.index()][Outcome::Response as usize],
        1
    );
}

#[test]
fn a_device_announcing_senml_cbor_gets_senml_cbor_under_its_alternate_path() {
    let (mut h, _) = registered(
        Some("1.1"),
        b"</lwm2m>;rt=\"oma.lwm2m\";ct=\"11542 112\",</lwm2m/1/0>,</lwm2m/3/0>",
    );
    let mark = h.mark();
    let req = request(&mut h, &cmd(1, "read-composite", PATHS));
    assert_eq!(
        seen(&req.msg()),
        composite_request(
            codes::FETCH,
            &["lwm2m"],
            fmt_id::SENML_CBOR,
            Some(fmt_id::SENML_CBOR),
            None,
            PATHS_CBOR
        )
    );
    let a = answer(
        &req,
        codes::CONTENT,
        Some(fmt_id::SENML_CBOR),
        None,
        VALUES_SENML_CBOR,
    );
    h.datagram(0, dev(), &a);
    let w = request(&mut h, &cmd(2, "write-composite", WRITE));
    // [{0:"/3/0/14",3:"+02"},{0:"/1/0/1",2:300}]
    let body = b"\x82\xa2\x00\x67/3/0/14\x03\x63+02\xa2\x00\x66/1/0/1\x02\x19\x01\x2c";
    assert_eq!(
        seen(&w.msg()),
        composite_request(
            codes::IPATCH,
            &["lwm2m"],
            fmt_id::SENML_CBOR,
            None,
            None,
            body
        )
    );
    h.datagram(0, dev(), &answer(&w, codes::CHANGED, None, None, b""));
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].1["data"]["content"], values());
    let v = &p[1].1;
    assert_eq!(v["msgType"], "write-composite");
    assert_eq!(
        v["data"]["reqPath"],
        simd_json::json!(["/3/0/14", "/1/0/1"]),
        "the written paths, each with its leading /"
    );
    assert_eq!(v["data"]["code"], "2.04");
    assert!(v["data"].get("content").is_none());
}

#[test]
fn a_device_announcing_lwm2m_cbor_gets_its_paths_in_senml_cbor_and_answers_in_lwm2m_cbor() {
    let (mut h, _) = registered(Some("1.2"), b"</>;rt=\"oma.lwm2m\";ct=11544,</1/0>,</3/0>");
    let mark = h.mark();
    let req = request(&mut h, &cmd(1, "read-composite", PATHS));
    assert_eq!(
        seen(&req.msg()),
        composite_request(
            codes::FETCH,
            &[],
            fmt_id::SENML_CBOR,
            Some(fmt_id::LWM2M_CBOR),
            None,
            PATHS_CBOR
        )
    );
    let a = answer(
        &req,
        codes::CONTENT,
        Some(fmt_id::LWM2M_CBOR),
        None,
        VALUES_LWM2M_CBOR,
    );
    h.datagram(0, dev(), &a);
    let w = request(&mut h, &cmd(2, "write-composite", WRITE));
    // {1:{0:{1:300}},3:{0:{14:"+02"}}}
    let body = b"\xa2\x01\xa1\x00\xa1\x01\x19\x01\x2c\x03\xa1\x00\xa1\x0e\x63+02";
    assert_eq!(
        seen(&w.msg()),
        composite_request(codes::IPATCH, &[], fmt_id::LWM2M_CBOR, None, None, body)
    );
    let p = h.published_since(mark);
    assert_eq!(p[0].1["data"]["content"], values());
}

#[test]
fn write_composite_in_senml_json_names_each_value_absolutely() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\";ct=110,</3/0>");
    let data = r#"{"content":[{"path":"/3/0/14","type":"String","value":"+02"},{"path":"/3/0/13","type":"Time","value":1700000000},{"path":"/5/0/0","type":"Opaque","value":"+/8="}]}"#;
    let w = request(&mut h, &cmd(3, "write-composite", data));
    let body =
        br#"[{"n":"/3/0/14","vs":"+02"},{"n":"/3/0/13","v":1700000000},{"n":"/5/0/0","vd":"-_8"}]"#;
    assert_eq!(
        seen(&w.msg()),
        composite_request(codes::IPATCH, &[], fmt_id::SENML_JSON, None, None, body),
        "opaque goes as base64url without padding, whatever the command's base64"
    );
}

#[test]
fn observe_composite_notifications_and_a_cancel_that_repeats_token_body_and_accept() {
    let (mut h, loc) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\";ct=112,</1/0>,</3/0>");
    let mark = h.mark();
    let req = request(&mut h, &cmd(10, "observe-composite", PATHS));
    assert_eq!(
        seen(&req.msg()),
        composite_request(
            codes::FETCH,
            &[],
            fmt_id::SENML_CBOR,
            Some(fmt_id::SENML_CBOR),
            Some(0),
            PATHS_CBOR
        )
    );
    let token = req.msg().token.to_vec();
    let a = answer(
        &req,
        codes::CONTENT,
        Some(fmt_id::SENML_CBOR),
        Some(5),
        VALUES_SENML_CBOR,
    );
    h.datagram(0, dev(), &a);
    // A CON notification: acknowledged, published on the notify topic.
    let n = notification(
        MsgType::Con,
        300,
        &token,
        6,
        fmt_id::SENML_CBOR,
        b"\x81\xa2\x00\x66/3/0/9\x02\x18\x56",
    );
    let acks = h.exchange(0, dev(), &n);
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].msg().mtype, acks[0].msg().mid),
        (MsgType::Ack, 300)
    );
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    assert_eq!(p[0].1["msgType"], "observe-composite");
    assert_eq!(p[0].1["data"]["reqPath"], req_paths());
    assert_eq!(p[0].1["data"]["content"], values());
    assert_eq!(p[1].0, "lwm2m/dev1/up/notify");
    let v = &p[1].1;
    assert_eq!(v["msgType"], "notify");
    assert_eq!(v["reqID"], 10);
    assert_eq!(v["seqNum"], 6);
    assert_eq!(v["data"]["reqPath"], req_paths());
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/9", "value": 86}])
    );
    // The device now announces SenML JSON; the cancel still names the observation as it
    // was made: the same token, body (paths in any order in the command) and Accept.
    let up = Req::update(&loc, 40).body(b"</>;rt=\"oma.lwm2m\";ct=110,</1/0>,</3/0>");
    assert_eq!(h.one(0, dev(), &up.bytes()).code(), codes::CHANGED);
    let cancel = r#"{"paths":["/1/0/1","3/0/9"]}"#;
    let c = request(&mut h, &cmd(11, "cancel-observe-composite", cancel));
    assert_eq!(
        seen(&c.msg()),
        composite_request(
            codes::FETCH,
            &[],
            fmt_id::SENML_CBOR,
            Some(fmt_id::SENML_CBOR),
            Some(1),
            PATHS_CBOR
        )
    );
    assert_eq!(c.msg().token, &token[..]);
    let a = answer(
        &c,
        codes::CONTENT,
        Some(fmt_id::SENML_CBOR),
        None,
        VALUES_SENML_CBOR,
    );
    h.datagram(0, dev(), &a);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 4, "update and the cancel's response: {p:?}");
    assert_eq!(p[3].1["msgType"], "cancel-observe-composite");
    assert_eq!(
        p[3].1["data"]["reqPath"],
        simd_json::json!(["/1/0/1", "/3/0/9"])
    );
    // A notification after the cancel: RST, nothing published.
    let before = h.mark();
    let late = notification(MsgType::Con, 301, &token, 7, fmt_id::SENML_CBOR, b"\x80");
    let r = h.exchange(0, dev(), &late);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].msg().mtype, r[0].msg().mid), (MsgType::Rst, 301));
    assert!(h.published_since(before).is_empty());
}

#[test]
fn composite_and_single_observations_of_the_same_paths_are_apart() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let single = request(&mut h, &cmd(1, "observe", r#"{"path":"/3/0/9"}"#));
    h.datagram(
        0,
        dev(),
        &answer(&single, codes::CONTENT, Some(0), Some(1), b"87"),
    );
    let comp = request(
        &mut h,
        &cmd(2, "observe-composite", r#"{"paths":["/3/0/9"]}"#),
    );
    h.datagram(
        0,
        dev(),
        &answer(
            &comp,
            codes::CONTENT,
            Some(fmt_id::SENML_JSON),
            Some(1),
            b"[]",
        ),
    );
    assert_ne!(single.msg().token, comp.msg().token);
    // Cancelling the single one leaves the composite one, and the other way round.
    let c = request(&mut h, &cmd(3, "cancel-observe", r#"{"path":"/3/0/9"}"#));
    assert_eq!(c.msg().token, single.msg().token);
    assert_eq!(c.msg().code, codes::GET);
    h.datagram(0, dev(), &answer(&c, codes::CONTENT, Some(0), None, b"87"));
    let c = request(
        &mut h,
        &cmd(4, "cancel-observe-composite", r#"{"paths":["/3/0/9"]}"#),
    );
    assert_eq!(c.msg().token, comp.msg().token);
    assert_eq!(c.msg().code, codes::FETCH);
}

#[test]
fn composite_commands_to_a_1_0_registration_are_refused_and_nothing_is_sent() {
    for (lwm2m, named) in [
        (Some("1.0"), "lwm2m=1.0"),
        (Some("1.0.2"), "lwm2m=1.0.2"),
        (None, "no lwm2m parameter"),
    ] {
        let (mut h, _) = registered(lwm2m, b"</>;rt=\"oma.lwm2m\";ct=110,</1/0>,</3/0>");
        let mark = h.mark();
        for (i, (t, data)) in [
            ("read-composite", PATHS),
            ("observe-composite", PATHS),
            ("cancel-observe-composite", PATHS),
            ("write-composite", WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            let out = h.command(0, TOPIC, &cmd(i as u32 + 1, t, data));
            assert!(out.is_empty(), "{t}: nothing goes to the device: {out:?}");
            let p = h.published_since(mark);
            let v = &p[i].1;
            assert_eq!(p[i].0, "lwm2m/dev1/up/resp");
            assert_eq!(v["msgType"], t);
            assert_eq!(v["data"]["code"], "4.00");
            assert_eq!(v["data"]["codeMsg"], "bad_request");
            let e = v["data"]["error"].as_str().unwrap();
            assert!(e.contains("1.0") && e.contains(named), "{t}: {e}");
            assert!(v["data"]["reqPath"].is_array());
            let op = Op::from_name(t).unwrap();
            assert_eq!(
                h.cores[0].stats().outcomes[op.index()][Outcome::Rejected as usize],
                1
            );
        }
        // 1.0 devices still get everything else.
        let r = one_req(h.command(0, TOPIC, &cmd(9, "read", r#"{"path":"/3/0/9"}"#)));
        assert_eq!(r.msg().code, codes::GET);
    }
}

#[test]
fn an_answer_missing_paths_publishes_what_came() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let mark = h.mark();
    let three = r#"{"paths":["/3/0/9","/1/0/1","/3/0/13"]}"#;
    let req = request(&mut h, &cmd(1, "read-composite", three));
    let body = br#"[{"n":"/1/0/1","v":300}]"#;
    let a = answer(&req, codes::CONTENT, Some(fmt_id::SENML_JSON), None, body);
    h.datagram(0, dev(), &a);
    // An empty answer, and one without a Content-Format (the format asked for).
    let req = request(&mut h, &cmd(2, "read-composite", three));
    h.datagram(0, dev(), &answer(&req, codes::CONTENT, None, None, b""));
    let req = request(&mut h, &cmd(3, "read-composite", three));
    h.datagram(0, dev(), &answer(&req, codes::CONTENT, None, None, body));
    let p = h.published_since(mark);
    assert_eq!(p.len(), 3);
    let one = simd_json::json!([{"path": "/1/0/1", "value": 300}]);
    assert_eq!(p[0].1["data"]["content"], one);
    assert_eq!(p[1].1["data"]["content"], simd_json::json!([]));
    assert_eq!(p[2].1["data"]["content"], one);
    // An error answer is passed through without content.
    let req = request(&mut h, &cmd(4, "read-composite", three));
    h.datagram(0, dev(), &answer(&req, codes::code(4, 4), None, None, b""));
    let v = &h.published_since(mark)[3].1;
    assert_eq!(v["data"]["code"], "4.04");
    assert!(v["data"].get("content").is_none());
}

#[test]
fn undecodable_composite_answers_are_delivered_raw_like_any_read() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\";ct=112,</1/0>,</3/0>");
    let bad: &[(u16, &[u8])] = &[
        // Garbage, a truncated record, a text where a number belongs, names that are no
        // paths, a value above resource level, LwM2M CBOR with a bad key, TLV at the root.
        (fmt_id::SENML_CBOR, b"\xff\x00garbage"),
        (fmt_id::SENML_CBOR, &VALUES_SENML_CBOR[..20]),
        (
            fmt_id::SENML_CBOR,
            b"\x81\xa2\x00\x66/3/0/9\x02\x62\x38\x37",
        ),
        (fmt_id::SENML_CBOR, b"\x81\xa2\x00\x64/x/y\x02\x01"),
        (fmt_id::SENML_JSON, br#"[{"n":"/3/0","v":1}]"#),
        (fmt_id::SENML_JSON, br#"[{"n":"/3/0/9","v":1"#),
        (fmt_id::LWM2M_CBOR, b"\xa1\x63abc\x01"),
        (fmt_id::TLV, b"\xc1\x09\x57"),
        // Link-format: no values under paths (a read's would be listed as links).
        (fmt_id::LINK, b"</3/0/9>"),
    ];
    for (i, (cf, body)) in bad.iter().enumerate() {
        let mark = h.mark();
        let req = request(&mut h, &cmd(i as u32, "read-composite", PATHS));
        h.datagram(
            0,
            dev(),
            &answer(&req, codes::CONTENT, Some(*cf), None, body),
        );
        let p = h.published_since(mark);
        assert_eq!(p.len(), 1, "one final message for answer {i}");
        let v = &p[0].1;
        assert_eq!(v["data"]["code"], "2.05");
        let content = &v["data"]["content"];
        assert_eq!(content.as_array().unwrap().len(), 1, "{i}: {content:?}");
        assert_eq!(content[0]["path"], "/");
        assert_eq!(content[0]["type"], "untyped");
    }
    // The same for a notification.
    let mark = h.mark();
    let req = request(&mut h, &cmd(50, "observe-composite", PATHS));
    let token = req.msg().token.to_vec();
    h.datagram(
        0,
        dev(),
        &answer(
            &req,
            codes::CONTENT,
            Some(fmt_id::SENML_CBOR),
            Some(1),
            b"\x80",
        ),
    );
    let n = notification(
        MsgType::Non,
        400,
        &token,
        2,
        fmt_id::SENML_CBOR,
        b"\x81\xa1",
    );
    assert!(h.exchange(0, dev(), &n).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].1["data"]["content"], simd_json::json!([]));
    assert_eq!(p[1].1["msgType"], "notify");
    assert_eq!(p[1].1["data"]["content"][0]["type"], "untyped");
}

#[test]
fn malformed_composite_commands_are_answered_400() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let cases = [
        ("read-composite", r#"{}"#, "missing paths"),
        ("read-composite", r#"{"paths":"/3/0/9"}"#, "not an array"),
        ("read-composite", r#"{"paths":[]}"#, "paths is empty"),
        (
            "observe-composite",
            r#"{"paths":[3]}"#,
            "paths[0] is not a string",
        ),
        ("read-composite", r#"{"paths":["/3/x"]}"#, "bad paths[0]"),
        ("read-composite", r#"{"paths":["/"]}"#, "root"),
        (
            "read-composite",
            r#"{"paths":["/3/0","/3/0/9"]}"#,
            "paths[1] /3/0/9 overlaps paths[0] /3/0",
        ),
        ("write-composite", r#"{"content":[]}"#, "content is empty"),
        (
            "write-composite",
            r#"{"content":[{"path":"/3/0","type":"String","value":"x"}]}"#,
            "not a resource",
        ),
        (
            "write-composite",
            r#"{"content":[{"path":"/3/0/13","type":"Time","value":"soon"}]}"#,
            "content[0]",
        ),
        (
            "write-composite",
            r#"{"content":[{"path":"/3/0/14","value":"a"},{"path":"3/0/14","value":"b"}]}"#,
            "overlaps",
        ),
    ];
    let mark = h.mark();
    for (i, (t, data, want)) in cases.iter().enumerate() {
        assert!(h.command(0, TOPIC, &cmd(i as u32, t, data)).is_empty());
        let p = h.published_since(mark);
        let v = &p[i].1;
        assert_eq!(v["data"]["code"], "4.00", "{data}");
        let e = v["data"]["error"].as_str().unwrap();
        assert!(e.contains(want), "{data}: {e}");
    }
}

#[test]
fn a_block2_answer_to_a_fetch_is_fetched_with_the_same_fetch() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let mark = h.mark();
    let req = request(&mut h, &cmd(1, "read-composite", PATHS));
    let first = seen(&req.msg());
    // 64 bytes of SenML JSON in 32-byte blocks.
    let body = br#"[{"n":"/3/0/9","v":87},{"n":"/1/0/1","v":300}]    "#;
    let body = &body[..];
    let cf = fmt_id::SENML_JSON;
    let mut asked = vec![];
    let mut at = req;
    for (num, chunk) in body.chunks(32).enumerate() {
        let more = (num + 1) * 32 < body.len();
        let a = block2_ack(&at, blk(num as u32, more, 1), cf, chunk);
        let out = h.exchange(0, dev(), &a);
        if !more {
            assert!(out.is_empty());
            break;
        }
        at = one_req(out);
        asked.push(at.clone());
    }
    assert!(!asked.is_empty());
    for (i, r) in asked.iter().enumerate() {
        let m = r.msg();
        let s = seen(&m);
        assert_eq!(
            (
                s.code,
                &s.uri_path,
                s.content_format,
                s.accept,
                s.observe,
                &s.body
            ),
            (
                codes::FETCH,
                &first.uri_path,
                first.content_format,
                first.accept,
                None,
                &first.body
            ),
            "follow-up {i} repeats the FETCH and its body"
        );
        let b = block(&m, opt::BLOCK2).unwrap();
        assert_eq!((b.num as usize, b.more), (i + 1, false));
    }
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["data"]["content"], values());
}

#[test]
fn a_block2_notification_of_a_composite_observation_is_completed_with_fetches() {
    let (mut h, _) = registered(Some("1.1"), b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>");
    let req = request(&mut h, &cmd(1, "observe-composite", PATHS));
    let token = req.msg().token.to_vec();
    let first = seen(&req.msg());
    h.datagram(
        0,
        dev(),
        &answer(
            &req,
            codes::CONTENT,
            Some(fmt_id::SENML_JSON),
            Some(1),
            b"[]",
        ),
    );
    let body = br#"[{"n":"/3/0/9","v":87},{"n":"/1/0/1","v":300}]    "#;
    let mut n = Vec::new();
    let mut w = MessageWriter::new(&mut n, MsgType::Non, codes::CONTENT, 500, &token);
    w.option_uint(opt::OBSERVE, 2)
        .option_uint(opt::CONTENT_FORMAT, fmt_id::SENML_JSON as u32)
        .option_uint(opt::BLOCK2, blk(0, true, 1).encode());
    w.payload(&body[..32]);
    let g = one_req(h.exchange(0, dev(), &n));
    let s = seen(&g.msg());
    assert_eq!(
        (s.code, s.observe, s.accept, &s.body),
        (codes::FETCH, None, first.accept, &first.body)
    );
    assert_ne!(g.msg().token, &token[..]);
    let a = block2_ack(&g, blk(1, false, 1), fmt_id::SENML_JSON, &body[32..]);
    assert!(h.exchange(0, dev(), &a).is_empty());
    let notes = h.published("up/notify");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].1["seqNum"], 2);
    assert_eq!(notes[0].1["data"]["reqPath"], req_paths());
    assert_eq!(notes[0].1["data"]["content"], values());
}

#[test]
fn write_attr_passes_the_1_2_attributes_as_uri_query() {
    let (mut h, _) = registered(Some("1.2"), b"</>;rt=\"oma.lwm2m\",</3/0>");
    let data = r#"{"path":"/3/0/9","pmin":"10","pmax":null,"epmin":5,"epmax":"60","edge":true,"con":"0","hqmax":3}"#;
    let r = request(&mut h, &cmd(1, "write-attr", data));
    let s = seen(&r.msg());
    assert_eq!((s.code, s.uri_path.join("/")), (codes::PUT, "3/0/9".into()));
    assert_eq!(
        s.uri_query,
        ["pmin=10", "epmin=5", "epmax=60", "edge=1", "con=0", "hqmax=3"]
    );
    assert!(s.body.is_empty() && s.content_format.is_none());
    let mark = h.mark();
    for (data, want) in [
        (r#"{"path":"/3/0/9","edge":"2"}"#, "edge is not 0 or 1"),
        (r#"{"path":"/3/0/9","hqmax":"many"}"#, "not a number"),
    ] {
        assert!(h.command(0, TOPIC, &cmd(2, "write-attr", data)).is_empty());
        let p = h.published_since(mark);
        let e = p.last().unwrap().1["data"]["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{data}: {e}");
    }
}
