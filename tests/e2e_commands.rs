//! End to end device management: the real binary, a simulated device on a real UDP
//! socket answering like an LwM2M client, and an MQTT application publishing
//! commands and reading responses and notifications.

mod common;

use common::app::App;
use common::coap::{self, exchange, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc};
use common::json;
use common::mosquitto::mosquitto_pub_v5;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A device speaking CoAP from its own socket.
struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    location: String,
    mid: u16,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str, objects: &str) -> Self {
        Self::register_with(gw, ep, objects, "U")
    }

    /// Registers with binding `b` ("UQ": queue mode).
    fn register_with(gw: SocketAddr, ep: &str, objects: &str, b: &str) -> Self {
        let sock = socket([127, 0, 0, 1], WAIT);
        let register = Req::con(codes::POST, 1, &[1])
            .path(&["rd"])
            .uint(opt::CONTENT_FORMAT, 40)
            .query(&[
                &format!("ep={ep}"),
                "lt=300",
                "lwm2m=1.0",
                &format!("b={b}"),
            ])
            .body(objects.as_bytes());
        let reply = exchange(&sock, gw, &register.bytes());
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::CREATED);
        Device {
            location: location(&m).expect("a location"),
            sock,
            gw,
            mid: 100,
        }
    }

    /// A registration update (an empty POST to the location); returns its message id.
    fn update(&mut self) -> u16 {
        self.mid += 1;
        let update = Req::con(codes::POST, self.mid, &[9]).path(&["rd", &self.location]);
        self.sock.send_to(&update.bytes(), self.gw).unwrap();
        self.mid
    }

    fn recv(&self) -> Vec<u8> {
        coap::recv(&self.sock)
    }

    fn request(&self) -> Request {
        Request::parse(&self.recv())
    }

    fn reply(&self, r: &Request, code: u8, cf: Option<u16>, observe: Option<u32>, payload: &[u8]) {
        let observe = observe.map(|o| (opt::OBSERVE, o));
        let cf = cf.map(|cf| (opt::CONTENT_FORMAT, cf as u32));
        let opts: Vec<_> = observe.into_iter().chain(cf).collect();
        self.sock
            .send_to(&r.ack(code, &opts, payload), self.gw)
            .unwrap();
    }

    fn send(
        &mut self,
        t: MsgType,
        code: u8,
        token: &[u8],
        observe: Option<u32>,
        payload: &[u8],
    ) -> u16 {
        self.mid += 1;
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, t, code, self.mid, token);
        if let Some(o) = observe {
            w.option_uint(opt::OBSERVE, o);
        }
        w.option_uint(opt::CONTENT_FORMAT, 0);
        w.payload(payload);
        self.sock.send_to(&buf, self.gw).unwrap();
        self.mid
    }
}

#[test]
fn every_command_through_the_running_gateway() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut app = App::new(&gw, "e2e-app");
    let mut dev = Device::register(gw.udp, "cmd1", "</1/0>,</3/0>,</31024/11>");

    // read
    let id = app.send("cmd1", "read", r#"{"path":"/3/0/1"}"#);
    let r = dev.request();
    assert_eq!(
        (r.mtype, r.code, r.path.as_str()),
        (MsgType::Con, codes::GET, "/3/0/1")
    );
    dev.reply(&r, codes::CONTENT, Some(0), None, b"Lightweight M2M Client");
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/cmd1/up/resp");
    assert_eq!(v["reqID"], id);
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(v["data"]["content"][0]["path"], "/3/0/1");
    assert_eq!(v["data"]["content"][0]["value"], "Lightweight M2M Client");

    // discover
    app.send("cmd1", "discover", r#"{"path":"/3/0"}"#);
    let r = dev.request();
    assert_eq!(r.accept, Some(40));
    dev.reply(
        &r,
        codes::CONTENT,
        Some(40),
        None,
        b"</3/0>;pmin=10,</3/0/1>",
    );
    let (_, v) = app.next();
    assert_eq!(
        v["data"]["content"],
        simd_json::json!(["</3/0>;pmin=10", "</3/0/1>"])
    );

    // write (TLV, conformant)
    app.send(
        "cmd1",
        "write",
        r#"{"path":"/3/0/13","type":"Time","value":1700000000}"#,
    );
    let r = dev.request();
    assert_eq!((r.code, r.format), (codes::PUT, Some(11542)));
    assert_eq!(r.payload, [0xc4, 13, 0x65, 0x53, 0xf1, 0x00]);
    dev.reply(&r, codes::CHANGED, None, None, b"");
    let (_, v) = app.next();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("write"), Some("2.04"))
    );

    // batch write: POST to the instance
    app.send("cmd1", "write", r#"{"basePath":"/31024/11/","content":[{"path":"1","type":"String","value":"a"},{"path":"2","type":"Integer","value":7}]}"#);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::POST, "/31024/11"));
    dev.reply(&r, codes::CHANGED, None, None, b"");
    assert_eq!(app.next().1["data"]["codeMsg"], "changed");

    // batch write: PUT to a resource, its instances as one multiple-resource TLV
    app.send("cmd1", "write", r#"{"basePath":"/3/0/6","content":[{"path":"0","type":"Integer","value":1},{"path":"1","type":"Integer","value":5}]}"#);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::PUT, "/3/0/6"));
    assert_eq!(r.format, Some(11542));
    assert_eq!(r.payload, [0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]);
    dev.reply(&r, codes::CHANGED, None, None, b"");
    let (_, v) = app.next();
    assert_eq!(
        (v["data"]["reqPath"].as_str(), v["data"]["code"].as_str()),
        (Some("/3/0/6"), Some("2.04"))
    );

    // values given as hex of their raw bytes
    app.mq
        .publish(
            "lwm2m/cmd1/dn/cmd",
            br#"{"reqID":50,"msgType":"write","encoding":"hex","data":{"path":"/3/0/14","type":"String","value":"2b30323a3030"}}"#,
            0,
        )
        .unwrap();
    let r = dev.request();
    assert_eq!(r.payload, b"\xC6\x0E+02:00");
    dev.reply(&r, codes::CHANGED, None, None, b"");
    let (_, v) = app.next();
    assert_eq!(
        (v["reqID"].as_u64(), v["encoding"].as_str()),
        (Some(50), Some("hex"))
    );

    // write-attr
    app.send(
        "cmd1",
        "write-attr",
        r#"{"path":"/3/0/9","pmin":"10","pmax":60,"gt":null,"lt":null,"st":null}"#,
    );
    let r = dev.request();
    assert_eq!(r.query, ["pmin=10", "pmax=60"]);
    dev.reply(&r, codes::CHANGED, None, None, b"");
    assert_eq!(app.next().1["msgType"], "write-attr");

    // execute
    app.send("cmd1", "execute", r#"{"path":"/3/0/4","args":"0"}"#);
    let r = dev.request();
    assert_eq!((r.code, r.payload.as_slice()), (codes::POST, &b"0"[..]));
    dev.reply(&r, codes::CHANGED, None, None, b"");
    assert_eq!(app.next().1["msgType"], "execute");

    // create and delete
    app.send(
        "cmd1",
        "create",
        r#"{"basePath":"/31024","content":[{"path":"12/1","type":"String","value":"x"}]}"#,
    );
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::POST, "/31024"));
    dev.reply(&r, codes::CREATED, None, None, b"");
    assert_eq!(app.next().1["data"]["code"], "2.01");
    app.send("cmd1", "delete", r#"{"path":"/31024/12"}"#);
    let r = dev.request();
    assert_eq!(r.code, codes::DELETE);
    dev.reply(&r, codes::DELETED, None, None, b"");
    assert_eq!(app.next().1["data"]["codeMsg"], "deleted");

    // observe, notifications (CON and NON), cancel
    let obs = app.send("cmd1", "observe", r#"{"path":"/3/0/13"}"#);
    let r = dev.request();
    assert_eq!(r.observe, Some(0));
    dev.reply(&r, codes::CONTENT, Some(0), Some(1), b"1700000000");
    let (_, v) = app.next();
    assert_eq!(v["msgType"], "observe");
    dev.send(
        MsgType::Con,
        codes::CONTENT,
        &r.token,
        Some(2),
        b"1700000001",
    );
    let ack = Message::parse(&dev.recv()).unwrap().mtype;
    assert_eq!(ack, MsgType::Ack, "CON notifications are acknowledged");
    dev.send(
        MsgType::Non,
        codes::CONTENT,
        &r.token,
        Some(3),
        b"1700000002",
    );
    for seq in [2, 3] {
        let (t, v) = app.next();
        assert_eq!(t, "lwm2m/cmd1/up/notify");
        assert_eq!(v["msgType"], "notify");
        assert_eq!(v["reqID"], obs);
        assert_eq!(v["seqNum"], seq);
        assert_eq!(v["data"]["content"][0]["value"], 1_699_999_999 + seq as i64);
    }
    app.send("cmd1", "cancel-observe", r#"{"path":"/3/0/13"}"#);
    let c = dev.request();
    assert_eq!((c.observe, c.token.clone()), (Some(1), r.token.clone()));
    dev.reply(&c, codes::CONTENT, Some(0), None, b"1700000003");
    assert_eq!(app.next().1["msgType"], "cancel-observe");

    // A malformed command is answered, never dropped.
    app.mq
        .publish(
            "lwm2m/cmd1/dn/cmd",
            b"{\"reqID\":99,\"msgType\":\"read\"}",
            0,
        )
        .unwrap();
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/cmd1/up/resp");
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(99), Some("4.00"))
    );
    assert!(v["data"]["error"].as_str().unwrap().contains("data"));
    // So is one for an endpoint that is not registered.
    app.mq
        .publish(
            "lwm2m/nobody/dn/cmd",
            b"{\"reqID\":100,\"msgType\":\"read\",\"data\":{\"path\":\"/3/0/1\"}}",
            0,
        )
        .unwrap();
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/nobody/up/resp");
    assert_eq!(v["data"]["codeMsg"], "bad_request");
}

#[test]
fn timeouts_and_resets_reach_mqtt() {
    let gw = GatewayProc::start(
        Broker::Embedded,
        "[coap]\nack_timeout = \"100ms\"\nmax_retransmit = 2\n",
    );
    let mut app = App::new(&gw, "e2e-app");
    let dev = Device::register(gw.udp, "cmd2", "</3/0>");
    let id = app.send("cmd2", "read", r#"{"path":"/3/0/0"}"#);
    let first = dev.request();
    // Stay silent: two retransmissions of the same message, then coap_timeout.
    for _ in 0..2 {
        assert_eq!(dev.request().mid, first.mid);
    }
    let (_, v) = app.next();
    assert_eq!(
        (v["msgType"].as_str(), v["reqID"].as_u64()),
        (Some("coap_timeout"), Some(id as u64))
    );
    // The next command goes out, and a Reset is reported.
    app.send("cmd2", "read", r#"{"path":"/3/0/1"}"#);
    let r = dev.request();
    let mut rst = Vec::new();
    MessageWriter::new(&mut rst, MsgType::Rst, codes::EMPTY, r.mid, &[]).finish();
    dev.sock.send_to(&rst, dev.gw).unwrap();
    assert_eq!(app.next().1["msgType"], "coap_reset");
}

/// Object definitions change while the gateway runs: a resource of an object nobody defined
/// comes out untyped; after its definition is written into `xml_dir` (the watcher reloads
/// the directory), the same answer comes out typed. Then SIGHUP reloads a changed type.
#[test]
fn object_definitions_reload_while_running() {
    let xml = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_in(
        Broker::Embedded,
        xml.path().to_str().unwrap(),
        "",
        "",
        "max_conn_rate = 1000000",
    );
    let mut app = App::new(&gw, "e2e-app");
    let d = Device::register(gw.udp, "xml1", "</42420/0>");
    let definition = |ty: &str| {
        format!(
            "<?xml version=\"1.0\"?><LWM2M><Object ObjectType=\"MODefinition\"><Name>Test</Name>\
             <ObjectID>42420</ObjectID><MultipleInstances>Multiple</MultipleInstances><Resources>\
             <Item ID=\"1\"><Name>Level</Name><Operations>R</Operations>\
             <MultipleInstances>Single</MultipleInstances><Type>{ty}</Type></Item>\
             </Resources></Object></LWM2M>"
        )
    };
    // Reads /42420/0/1 (the device answers "42" as text) until the content matches `want`.
    let mut read_until = |want: &dyn Fn(&simd_json::OwnedValue) -> bool| -> simd_json::OwnedValue {
        let deadline = Instant::now() + WAIT;
        loop {
            app.send("xml1", "read", r#"{"path":"/42420/0/1"}"#);
            let r = d.request();
            d.reply(&r, codes::CONTENT, Some(0), None, b"42");
            let (_, v) = app.next();
            let c = v["data"]["content"][0].clone();
            if want(&c) || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let c = read_until(&|_| true);
    assert_eq!(c["type"], "untyped", "{c}");
    assert_eq!(c["value"], "NDI=");

    std::fs::write(xml.path().join("42420.xml"), definition("Integer")).unwrap();
    let c = read_until(&|c| c["value"].as_i64() == Some(42));
    assert_eq!(
        c["value"].as_i64(),
        Some(42),
        "typed after the file appeared: {c}"
    );
    assert!(c.get("type").is_none());

    // SIGHUP: the same file now says String.
    std::fs::write(xml.path().join("42420.xml"), definition("String")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status();
    let c = read_until(&|c| c["value"].as_str() == Some("42"));
    assert_eq!(
        c["value"].as_str(),
        Some("42"),
        "a String after SIGHUP: {c}"
    );
}

/// A queue-mode device sleeps; an MQTT 5 application (Debian's mosquitto_pub) publishes
/// commands with a message-expiry interval on the embedded broker's MQTT 5 listener. The one
/// whose expiry runs out first is answered with an expiry error on the response topic (seen
/// here by a 3.1.1 application); when the device speaks again only the other one is sent.
#[test]
fn a_queued_command_past_its_mqtt_message_expiry_gets_an_expiry_error() {
    let gw = GatewayProc::start(Broker::Embedded, "qmode_time_window = \"1s\"\n");
    let v5 = gw.mqtt_v5.expect("the embedded broker's MQTT 5 listener");
    let mut app = App::new(&gw, "e2e-app");
    let mut dev = Device::register_with(gw.udp, "exp1", "</3/0>", "UQ");
    // Awake right after registering: a command goes at once (and shows the route works).
    app.send("exp1", "read", r#"{"path":"/3/0/0"}"#);
    let r = dev.request();
    dev.reply(&r, codes::CONTENT, Some(0), None, b"ACME");
    assert_eq!(app.next().1["data"]["code"], "2.05");
    // Past the 1 s window the device sleeps.
    std::thread::sleep(Duration::from_millis(2500));
    let cmd = |id: u32, path: &str| {
        format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"{path}"}}}}"#)
    };
    mosquitto_pub_v5(v5, "lwm2m/exp1/dn/cmd", &cmd(71, "/3/0/1"), 1, Some(2));
    mosquitto_pub_v5(v5, "lwm2m/exp1/dn/cmd", &cmd(72, "/3/0/2"), 1, Some(600));
    let (t, v) = app.next();
    assert_eq!(t, "lwm2m/exp1/up/resp");
    assert_eq!(v["reqID"].as_u64(), Some(71), "{v}");
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["code"], "5.03");
    let e = v["data"]["error"].as_str().unwrap();
    assert!(
        e.contains("while the device was sleeping") && e.contains("MQTT message-expiry interval"),
        "{e}"
    );
    // The device speaks: 2.04 to its update, then the command still valid, and only it.
    let mid = dev.update();
    let b = dev.recv();
    let m = Message::parse(&b).unwrap();
    assert_eq!((m.mid, m.code), (mid, codes::CHANGED));
    let r = dev.request();
    assert_eq!(r.path, "/3/0/2");
    dev.reply(&r, codes::CONTENT, Some(0), None, b"x");
    let v = loop {
        let (t, v) = app.next();
        if t.ends_with("/up/resp") {
            break v;
        }
        assert_eq!(v["msgType"], "update", "{v}");
    };
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(72), Some("2.05"))
    );
}

/// Every command ends in exactly one final message, also when the gateway is overloaded: a
/// burst of 2,000 commands at one device is partly refused by the device's full command queue
/// (5.03) and the rest is answered by the device.
#[test]
fn a_burst_of_commands_gets_one_answer_per_command() {
    let gw = GatewayProc::start(
        Broker::Embedded,
        // A short ACK_TIMEOUT: a datagram lost in the burst is retransmitted soon.
        "[engine]\nshards = 1\n[queue]\nmax_queued = 20\n\
         [coap]\nack_timeout = \"200ms\"\n",
    );
    let mut app = App::new(&gw, "e2e-app");
    let dev = Device::register(gw.udp, "burst1", "</3/0>");
    let sock = dev.sock.try_clone().unwrap();
    let gw_udp = dev.gw;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let answering = std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(m) = Message::parse(&buf[..n]) else {
                continue;
            };
            if !m.is_request() {
                continue;
            }
            let out = coap::ack(
                m.mid,
                m.token,
                codes::CONTENT,
                &[(opt::CONTENT_FORMAT, 0)],
                b"x",
            );
            let _ = sock.send_to(&out, gw_udp);
        }
    });
    let n = 2000u32;
    let mut body = String::new();
    for i in 1..=n {
        body.clear();
        body.push_str(&format!(
            r#"{{"reqID":{i},"msgType":"read","data":{{"path":"/3/0/0"}}}}"#
        ));
        app.mq
            .publish("lwm2m/burst1/dn/cmd", body.as_bytes(), 0)
            .unwrap();
    }
    let mut finals = vec![0u32; n as usize + 1];
    let (mut queue_full, mut answered) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while finals[1..].contains(&0) {
        assert!(
            Instant::now() < deadline,
            "{} commands got no final message",
            finals[1..].iter().filter(|c| **c == 0).count()
        );
        let Some((t, p)) = app.mq.recv_publish(Duration::from_secs(1)) else {
            continue;
        };
        if !t.ends_with("/up/resp") {
            continue;
        }
        let v = json(&p);
        if v["msgType"] != "read" {
            continue; // "register"; no "ack" events here
        }
        let id = v["reqID"].as_u64().unwrap() as usize;
        finals[id] += 1;
        match v["data"]["code"].as_str() {
            Some("2.05") => answered += 1,
            Some("5.03") => {
                let e = v["data"]["error"].as_str().unwrap_or("");
                queue_full += e.contains("queue of this device is full") as u32;
            }
            other => panic!("unexpected answer {other:?}: {v}"),
        }
    }
    // Nothing more arrives for any of them.
    for (t, p) in app.mq.collect(usize::MAX, Duration::from_millis(500)) {
        if t.ends_with("/up/resp") {
            let v = json(&p);
            if let Some(id) = v["reqID"].as_u64() {
                finals[id as usize] += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    answering.join().unwrap();
    assert!(
        finals[1..].iter().all(|c| *c == 1),
        "a command answered twice"
    );
    assert!(answered > 0, "the device answered some");
    assert!(queue_full > 0, "the device's full queue refused some");
}
