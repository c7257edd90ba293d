//! End to end, the LwM2M 1.1 composite operations: the real binary, a LwM2M 1.1 device on
//! a real UDP socket answering FETCH and iPATCH as a client does, and an MQTT
//! application publishing read-composite, observe-composite (with a notification),
//! cancel-observe-composite and write-composite, and reading what comes back; the same
//! through the management API; a LwM2M 1.0 device refused without a datagram.

mod common;

use common::app::App;
use common::coap::{self, exchange, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::formats::fmt_id;
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A device speaking CoAP from its own socket.
struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    mid: u16,
}

impl Device {
    /// Registers `ep` as LwM2M `version` with the object list `links`.
    fn register(gw: SocketAddr, ep: &str, version: &str, links: &str) -> Self {
        let sock = socket([127, 0, 0, 1], WAIT);
        let register = Req::con(codes::POST, 1, &[1])
            .path(&["rd"])
            .uint(opt::CONTENT_FORMAT, 40)
            .query(&[
                &format!("ep={ep}"),
                "lt=300",
                &format!("lwm2m={version}"),
                "b=U",
            ])
            .body(links.as_bytes());
        let reply = exchange(&sock, gw, &register.bytes());
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::CREATED);
        assert!(location(&m).is_some());
        Device { sock, gw, mid: 100 }
    }

    fn request(&self) -> Request {
        Request::parse(&coap::recv(&self.sock))
    }

    /// Nothing arrives from the gateway for `d`.
    fn silent_for(&self, d: Duration) -> bool {
        self.sock.set_read_timeout(Some(d)).unwrap();
        let mut buf = [0u8; 2048];
        let got = self.sock.recv_from(&mut buf).is_ok();
        self.sock.set_read_timeout(Some(WAIT)).unwrap();
        !got
    }

    fn reply(&self, r: &Request, code: u8, cf: Option<u16>, observe: Option<u32>, body: &[u8]) {
        let observe = observe.map(|o| (opt::OBSERVE, o));
        let cf = cf.map(|cf| (opt::CONTENT_FORMAT, cf as u32));
        let opts: Vec<_> = observe.into_iter().chain(cf).collect();
        self.sock
            .send_to(&r.ack(code, &opts, body), self.gw)
            .unwrap();
    }

    /// A notification on `token`; returns its message ID.
    fn notify(&mut self, t: MsgType, token: &[u8], seq: u32, cf: u16, body: &[u8]) -> u16 {
        self.mid += 1;
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, t, codes::CONTENT, self.mid, token);
        w.option_uint(opt::OBSERVE, seq)
            .option_uint(opt::CONTENT_FORMAT, cf as u32);
        w.payload(body);
        self.sock.send_to(&buf, self.gw).unwrap();
        self.mid
    }
}

const PATHS: &str = r#"{"paths":["/3/0/9","/1/0/1"]}"#;
/// `[{0:"/3/0/9"},{0:"/1/0/1"}]`
const PATHS_CBOR: &[u8] = b"\x82\xa1\x00\x66/3/0/9\xa1\x00\x66/1/0/1";

fn req_paths() -> simd_json::OwnedValue {
    simd_json::json!(["/3/0/9", "/1/0/1"])
}

#[test]
fn composite_operations_through_the_running_gateway() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut app = App::new(&gw, "e2e-composite");
    let mut dev = Device::register(
        gw.udp,
        "comp1",
        "1.1",
        "</>;rt=\"oma.lwm2m\";ct=112,</1/0>,</3/0>",
    );

    // read-composite: FETCH of the root, the paths in SenML CBOR, Accept SenML CBOR.
    let id = app.send("comp1", "read-composite", PATHS);
    let r = dev.request();
    assert_eq!(
        (r.mtype, r.code, r.path.as_str()),
        (MsgType::Con, codes::FETCH, "")
    );
    assert_eq!(
        (r.format, r.accept, r.observe),
        (Some(112), Some(112), None)
    );
    assert_eq!(r.payload, PATHS_CBOR);
    // [{0:"/3/0/9",2:87},{0:"/1/0/1",2:300}]
    let values = b"\x82\xa2\x00\x66/3/0/9\x02\x18\x57\xa2\x00\x66/1/0/1\x02\x19\x01\x2c";
    dev.reply(&r, codes::CONTENT, Some(fmt_id::SENML_CBOR), None, values);
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/comp1/up/resp");
    assert_eq!(v["reqID"], id);
    assert_eq!(v["msgType"], "read-composite");
    assert_eq!(v["data"]["reqPath"], req_paths());
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/9", "value": 87}, {"path": "/1/0/1", "value": 300}])
    );

    // observe-composite, a CON notification, cancel-observe-composite.
    let obs = app.send("comp1", "observe-composite", PATHS);
    let o = dev.request();
    assert_eq!(
        (o.code, o.observe, o.accept, o.payload.as_slice()),
        (codes::FETCH, Some(0), Some(112), PATHS_CBOR)
    );
    dev.reply(
        &o,
        codes::CONTENT,
        Some(fmt_id::SENML_CBOR),
        Some(1),
        values,
    );
    let (t, v) = app.next();
    assert_eq!(
        (t.as_str(), v["msgType"].as_str()),
        ("lwm2m/comp1/up/resp", Some("observe-composite"))
    );
    let mid = dev.notify(
        MsgType::Con,
        &o.token,
        2,
        fmt_id::SENML_CBOR,
        b"\x81\xa2\x00\x66/3/0/9\x02\x18\x56",
    );
    let ack = coap::recv(&dev.sock);
    let ack = Message::parse(&ack).unwrap();
    assert_eq!((ack.mtype, ack.mid), (MsgType::Ack, mid));
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/comp1/up/notify");
    assert_eq!(v["msgType"], "notify");
    assert_eq!(v["reqID"], obs);
    assert_eq!(v["seqNum"], 2);
    assert_eq!(v["data"]["reqPath"], req_paths());
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/9", "value": 86}])
    );
    app.send("comp1", "cancel-observe-composite", PATHS);
    let c = dev.request();
    assert_eq!(
        (c.code, c.observe, c.accept, c.payload.as_slice()),
        (codes::FETCH, Some(1), Some(112), PATHS_CBOR)
    );
    assert_eq!(
        c.token, o.token,
        "the cancel carries the observation's token"
    );
    dev.reply(&c, codes::CONTENT, Some(fmt_id::SENML_CBOR), None, values);
    assert_eq!(app.next().1["msgType"], "cancel-observe-composite");
    // A notification after the cancel is refused with RST.
    let mid = dev.notify(MsgType::Con, &o.token, 3, fmt_id::SENML_CBOR, b"\x80");
    let rst = coap::recv(&dev.sock);
    let rst = Message::parse(&rst).unwrap();
    assert_eq!((rst.mtype, rst.mid), (MsgType::Rst, mid));

    // write-composite: iPATCH of the root in SenML CBOR.
    let id = app.send(
        "comp1",
        "write-composite",
        r#"{"content":[{"path":"/3/0/14","type":"String","value":"+02"},{"path":"/1/0/1","type":"Integer","value":120}]}"#,
    );
    let w = dev.request();
    assert_eq!(
        (w.code, w.path.as_str(), w.format, w.accept),
        (codes::IPATCH, "", Some(112), None)
    );
    // [{0:"/3/0/14",3:"+02"},{0:"/1/0/1",2:120}]
    assert_eq!(
        w.payload,
        b"\x82\xa2\x00\x67/3/0/14\x03\x63+02\xa2\x00\x66/1/0/1\x02\x18\x78"
    );
    dev.reply(&w, codes::CHANGED, None, None, b"");
    let (_, v) = app.next();
    assert_eq!(v["reqID"], id);
    assert_eq!(v["msgType"], "write-composite");
    assert_eq!(
        v["data"]["reqPath"],
        simd_json::json!(["/3/0/14", "/1/0/1"])
    );
    assert_eq!(v["data"]["code"], "2.04");

    // Through the management API: the device gets the same FETCH, the answer is on MQTT.
    let (st, body) = request(
        gw.api,
        "POST",
        "/api/v5/gateways/lwm2m/clients/comp1/read-composite?paths=/3/0/9,/1/0/1",
        Some(("admin", API_SECRET)),
        b"",
    );
    assert_eq!(st, 204, "{body}");
    let r = dev.request();
    assert_eq!(
        (r.code, r.payload.as_slice(), r.accept),
        (codes::FETCH, PATHS_CBOR, Some(112))
    );
    dev.reply(&r, codes::CONTENT, Some(fmt_id::SENML_CBOR), None, values);
    let (_, v) = app.next();
    assert_eq!(v["msgType"], "read-composite");
    assert_eq!(v["data"]["content"][1]["value"], 300);

    // The per-operation counters count them.
    let m = gw.metrics();
    let by_type = |t: &str| m.sum("lwm2m_commands_by_type_total", &[("msg_type", t)]);
    assert_eq!(by_type("read-composite"), 2.0);
    assert_eq!(by_type("observe-composite"), 1.0);
    assert_eq!(by_type("cancel-observe-composite"), 1.0);
    assert_eq!(by_type("write-composite"), 1.0);
}

#[test]
fn composite_operations_for_senml_json_and_a_1_0_device() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut app = App::new(&gw, "e2e-composite");
    // No ct: SenML JSON, under the alternate path.
    let dev = Device::register(
        gw.udp,
        "comp2",
        "1.2",
        "</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3/0>",
    );
    app.send("comp2", "read-composite", PATHS);
    let r = dev.request();
    assert_eq!(
        (r.code, r.path.as_str(), r.format, r.accept),
        (codes::FETCH, "/lwm2m", Some(110), Some(110))
    );
    assert_eq!(r.payload, br#"[{"n":"/3/0/9"},{"n":"/1/0/1"}]"#);
    let body = br#"[{"bn":"/3/0/","n":"9","v":87}]"#;
    dev.reply(&r, codes::CONTENT, Some(fmt_id::SENML_JSON), None, body);
    let (_, v) = app.next();
    assert_eq!(
        v["data"]["content"],
        simd_json::json!([{"path": "/3/0/9", "value": 87}]),
        "what came, though a path is missing"
    );

    // A LwM2M 1.0 device: refused on MQTT, nothing sent to it.
    let old = Device::register(gw.udp, "comp3", "1.0", "</1/0>,</3/0>");
    app.send("comp3", "read-composite", PATHS);
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/comp3/up/resp");
    assert_eq!(v["msgType"], "read-composite");
    assert_eq!(v["data"]["code"], "4.00");
    assert_eq!(v["data"]["codeMsg"], "bad_request");
    assert!(
        v["data"]["error"].as_str().unwrap().contains("lwm2m=1.0"),
        "{v:?}"
    );
    assert!(old.silent_for(Duration::from_millis(500)));
}
