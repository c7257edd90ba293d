//! End to end, LwM2M 1.1 additions through the real binary: a raw CoAP device on a
//! real UDP socket sends (`POST /dp`) and its registrations end in each of the four
//! ways, watched by a real MQTT client on the embedded broker and on Mosquitto.

mod common;

use common::coap::{exchange, location, socket, Req};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(10);
const SENML_JSON: u32 = 110;
const SENML_CBOR: u32 = 112;

fn register(sock: &UdpSocket, gw: SocketAddr, ep: &str, mid: u16, lt: u32) -> String {
    let q = [format!("ep={ep}"), format!("lt={lt}"), "lwm2m=1.1".into()];
    let q: Vec<&str> = q.iter().map(String::as_str).collect();
    let req = Req::con(codes::POST, mid, &mid.to_be_bytes())
        .path(&["rd"])
        .query(&q)
        .body(b"</3/0>,</3303/0>");
    let reply = exchange(sock, gw, &req.bytes());
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.code, codes::CREATED);
    location(&m).expect("a location")
}

fn send(sock: &UdpSocket, gw: SocketAddr, mid: u16, cf: Option<u32>, body: &[u8]) -> (u8, String) {
    let mut req = Req::con(codes::POST, mid, &mid.to_be_bytes()).path(&["dp"]);
    if let Some(cf) = cf {
        req = req.uint(opt::CONTENT_FORMAT, cf);
    }
    let reply = exchange(sock, gw, &req.body(body).bytes());
    let m = Message::parse(&reply).unwrap();
    (m.code, String::from_utf8_lossy(m.payload).into_owned())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sends, their refusals and what reached MQTT, then the end of each registration.
fn send_and_ends(gw: &GatewayProc, mq: &mut MqttClient) {
    let dev = socket([127, 0, 0, 1], WAIT);
    register(&dev, gw.udp, "s11", 1, 300);
    mq.next_json(WAIT, |_, v| v["msgType"] == "register")
        .expect("register message");

    // SenML JSON: an absolute time and a relative one.
    let body = br#"[{"bn":"/3303/0/","n":"5700","v":21.5,"bt":1700000000,"t":0.5},{"bn":"/3/0/","n":"9","v":87,"bt":0,"t":-10}]"#;
    let before = unix_now();
    assert_eq!(
        send(&dev, gw.udp, 2, Some(SENML_JSON), body).0,
        codes::CHANGED
    );
    let after = unix_now();
    let (topic, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "send")
        .expect("send message");
    assert_eq!(topic, "lwm2m/s11/up/send");
    let c = v["data"]["content"].as_array().unwrap();
    assert_eq!(c.len(), 2, "{v:?}");
    assert_eq!(c[0]["path"], "/3303/0/5700");
    assert_eq!(c[0]["value"], 21.5);
    assert_eq!(c[0]["time"].cast_f64(), Some(1_700_000_000.5));
    assert_eq!(c[1]["path"], "/3/0/9");
    assert_eq!(c[1]["value"], 87);
    let t = c[1]["time"].cast_f64().unwrap();
    assert!(
        t >= before - 10.5 && t <= after - 9.5,
        "relative time resolved against the arrival: {t}"
    );

    // SenML CBOR: [{0: "/3303/0/5700", 2: 22}]
    let cbor = b"\x81\xa2\x00\x6c/3303/0/5700\x02\x16";
    assert_eq!(
        send(&dev, gw.udp, 3, Some(SENML_CBOR), cbor).0,
        codes::CHANGED
    );
    let (_, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "send")
        .expect("send message (CBOR)");
    assert_eq!(v["data"]["content"][0]["value"].cast_f64(), Some(22.0));

    // Refusals: each answered, none published.
    let (code, text) = send(
        &dev,
        gw.udp,
        4,
        Some(SENML_JSON),
        br#"[{"n":"/3/0/9","v":8"#,
    );
    assert_eq!(code, codes::BAD_REQUEST);
    assert!(!text.is_empty(), "a diagnostic");
    assert_eq!(
        send(&dev, gw.udp, 5, Some(0), b"87").0,
        codes::UNSUPPORTED_CONTENT_FORMAT
    );
    let stranger = socket([127, 0, 0, 1], WAIT);
    assert_eq!(
        send(
            &stranger,
            gw.udp,
            6,
            Some(SENML_JSON),
            br#"[{"n":"/3/0/9","v":1}]"#
        )
        .0,
        codes::NOT_FOUND
    );
    // The shards copy their counters out between turns: wait for all of them.
    let m = gw.metrics_when(|m| {
        m.sum("lwm2m_sends_total", &[]) >= 2.0 && m.sum("lwm2m_sends_refused_total", &[]) >= 3.0
    });
    assert_eq!(m.sum("lwm2m_sends_total", &[]), 2.0);
    assert_eq!(m.sum("lwm2m_sent_values_total", &[]), 3.0);
    let refused = |r: &str| m.sum("lwm2m_sends_refused_total", &[("reason", r)]);
    assert_eq!(refused("malformed"), 1.0);
    assert_eq!(refused("unsupported_format"), 1.0);
    assert_eq!(refused("not_registered"), 1.0);

    // The end of a registration, for each reason.
    let ends = |mq: &mut MqttClient, ep: &str, reason: &str| {
        let (topic, v) = mq
            .next_json(WAIT, |_, v| {
                v["msgType"] == "deregister" || v["msgType"] == "send"
            })
            .unwrap_or_else(|| panic!("the end of {ep} ({reason})"));
        assert_eq!(topic, format!("lwm2m/{ep}/up/resp"));
        assert_eq!(v["msgType"], "deregister", "{v:?}");
        assert_eq!(v["data"]["ep"], ep);
        assert_eq!(v["data"]["reason"], reason);
    };
    // Replaced: before the new register message.
    let again = socket([127, 0, 0, 1], WAIT);
    let loc = register(&again, gw.udp, "s11", 7, 300);
    let (_, first) = mq
        .next_json(WAIT, |_, v| v["data"]["ep"] == "s11")
        .expect("a message about s11");
    assert_eq!(first["msgType"], "deregister", "{first:?}");
    assert_eq!(first["data"]["reason"], "replaced");
    let (_, second) = mq
        .next_json(WAIT, |_, v| v["data"]["ep"] == "s11")
        .expect("its register message");
    assert_eq!(second["msgType"], "register");
    // De-register.
    let del = Req::con(codes::DELETE, 8, &[8]).path(&["rd", &loc]);
    let reply = exchange(&again, gw.udp, &del.bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::DELETED);
    ends(mq, "s11", "deregister");
    // Kicked through the management API.
    register(&again, gw.udp, "k11", 9, 300);
    let (st, _) = request(
        gw.api,
        "DELETE",
        "/api/v5/gateways/lwm2m/clients/k11",
        Some(("admin", API_SECRET)),
        b"",
    );
    assert_eq!(st, 204);
    ends(mq, "k11", "kicked");
    // Expired (lifetime_min is 1 s here).
    register(&again, gw.udp, "e11", 10, 1);
    ends(mq, "e11", "expired");
}

#[test]
fn send_and_the_end_of_registrations_with_the_embedded_broker() {
    let gw = GatewayProc::start(Broker::Embedded, "lifetime_min = \"1s\"");
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-11", "lwm2m/#", 1);
    send_and_ends(&gw, &mut mq);
}

#[test]
fn send_and_the_end_of_registrations_with_mosquitto() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start(Broker::External(broker.addr()), "lifetime_min = \"1s\"");
    let mut mq = MqttClient::subscriber(broker.addr(), "e2e-11m", "lwm2m/#", 1);
    send_and_ends(&gw, &mut mq);
}

#[test]
fn translators_send_and_deregister_take_their_topics() {
    let gw = GatewayProc::start(
        Broker::Embedded,
        "[translators]\nsend = { topic = \"tele\", qos = 1 }\nderegister = { topic = \"gone\", qos = 1 }",
    );
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-11t", "lwm2m/#", 1);
    let dev = socket([127, 0, 0, 1], WAIT);
    let loc = register(&dev, gw.udp, "t11", 1, 300);
    let body = br#"[{"n":"/3/0/9","v":50}]"#;
    assert_eq!(
        send(&dev, gw.udp, 2, Some(SENML_JSON), body).0,
        codes::CHANGED
    );
    let del = Req::con(codes::DELETE, 3, &[3]).path(&["rd", &loc]);
    exchange(&dev, gw.udp, &del.bytes());
    let (t, _) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "send")
        .expect("send");
    assert_eq!(t, "lwm2m/t11/tele");
    let (t, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "deregister")
        .expect("deregister");
    assert_eq!(t, "lwm2m/t11/gone");
    assert_eq!(v["data"]["reason"], "deregister");
}
