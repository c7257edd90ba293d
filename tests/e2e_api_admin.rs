//! The management API against the running gateway and Mosquitto (per-endpoint command
//! subscriptions): paging, wall-clock times, read/write/observe through the API, lookup of
//! what devices answered, the documented configuration PUT applied at run time, a kick that
//! removes the registration and its broker subscription, and `/metrics` parsed and checked
//! against the traffic the test sent.

mod common;

use common::coap::{self, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::json;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const ADMIN: Option<(&str, &str)> = Some(("admin", API_SECRET));
const GW: &str = "/api/v5/gateways/lwm2m";

struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    location: String,
    mid: u16,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str) -> Device {
        let mut d = Device {
            sock: socket([127, 0, 0, 1], WAIT),
            gw,
            location: String::new(),
            mid: 100,
        };
        let ep = format!("ep={ep}");
        let reply = d.request(
            codes::POST,
            &["rd"],
            &[&ep, "lt=600", "lwm2m=1.0", "b=U"],
            b"</3/0>,</3303/0>",
        );
        assert_eq!(reply.0, codes::CREATED);
        d.location = reply.1.expect("a location");
        d
    }

    /// Sends a CON request and returns (code, location) of the piggybacked answer.
    fn request(
        &mut self,
        code: u8,
        path: &[&str],
        query: &[&str],
        body: &[u8],
    ) -> (u8, Option<String>) {
        self.mid += 1;
        let mut req = Req::con(code, self.mid, &[7]).path(path).query(query);
        if !body.is_empty() {
            req = req.uint(opt::CONTENT_FORMAT, 40).body(body);
        }
        self.sock.send_to(&req.bytes(), self.gw).unwrap();
        loop {
            let b = coap::recv(&self.sock);
            let m = Message::parse(&b).unwrap();
            if m.mtype == MsgType::Ack && m.mid == self.mid {
                return (m.code, location(&m));
            }
        }
    }

    fn update(&mut self, body: &[u8]) -> u8 {
        let loc = self.location.clone();
        self.request(codes::POST, &["rd", &loc], &[], body).0
    }

    /// The next request from the gateway: (code, path, observe option, mid, token).
    fn next_request(&self) -> (u8, String, Option<u32>, u16, Vec<u8>) {
        let r = Request::parse(&coap::recv(&self.sock));
        (r.code, r.path, r.observe, r.mid, r.token)
    }

    fn answer(
        &self,
        mid: u16,
        token: &[u8],
        code: u8,
        cf: Option<u16>,
        observe: Option<u32>,
        body: &[u8],
    ) {
        let observe = observe.map(|o| (opt::OBSERVE, o));
        let cf = cf.map(|cf| (opt::CONTENT_FORMAT, cf as u32));
        let opts: Vec<_> = observe.into_iter().chain(cf).collect();
        let answer = coap::ack(mid, token, code, &opts, body);
        self.sock.send_to(&answer, self.gw).unwrap();
    }

    fn notify(&self, token: &[u8], seq: u32, body: &[u8]) {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(
            &mut buf,
            MsgType::Non,
            codes::CONTENT,
            9000 + seq as u16,
            token,
        );
        w.option_uint(opt::OBSERVE, seq);
        w.option_uint(opt::CONTENT_FORMAT, 0);
        w.payload(body);
        self.sock.send_to(&buf, self.gw).unwrap();
    }
}

fn api(gw: &GatewayProc, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    request(gw.api, method, path, ADMIN, body)
}

/// The next MQTT message on `topic` whose payload has `msgType` = `msg_type`.
fn wait_msg(mq: &mut MqttClient, topic: &str, msg_type: &str) -> OwnedValue {
    let want = |t: &str, v: &OwnedValue| t == topic && v["msgType"].as_str() == Some(msg_type);
    let (_, v) = mq
        .next_json(WAIT, want)
        .unwrap_or_else(|| panic!("no {msg_type} message on {topic}"));
    v
}

/// Messages on `topic` within `wait`.
fn count_on(mq: &mut MqttClient, topic: &str, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    while let Some((t, _)) = mq.recv_publish(deadline.saturating_duration_since(Instant::now())) {
        n += usize::from(t == topic);
    }
    n
}

#[test]
fn management_api_against_the_running_gateway() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "enable_stats = true",
        "subscribe = \"per_endpoint\"",
    );
    let mut mq = MqttClient::subscriber(broker.addr(), "api-admin", "lwm2m/#", 0);
    let d1 = Device::register(gw.udp, "adm1");
    let mut d2 = Device::register(gw.udp, "adm2");
    let mut d3 = Device::register(gw.udp, "adm3");
    let all: HashSet<String> = ["adm1", "adm2", "adm3"]
        .iter()
        .map(|e| format!("lwm2m/{e}/dn/#"))
        .collect();
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &all), all);

    // Paging.
    let (st, body) = api(&gw, "GET", &format!("{GW}/clients?limit=2&page=1"), b"");
    assert_eq!(st, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["meta"]["count"].as_u64(), Some(3));
    assert_eq!(v["meta"]["hasnext"].as_bool(), Some(true));
    let v = json(&api(&gw, "GET", &format!("{GW}/clients?limit=2&page=2"), b"").1);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["meta"]["hasnext"].as_bool(), Some(false));

    // The command subscription, made for this device alone on Mosquitto.
    let v = json(&api(&gw, "GET", &format!("{GW}/clients/adm1/subscriptions"), b"").1);
    assert_eq!(v[0]["topic"].as_str(), Some("lwm2m/adm1/dn/#"), "{v}");
    assert_eq!(v[0]["filter"].as_str(), Some("lwm2m/adm1/dn/#"));
    assert_eq!(v[0]["mode"].as_str(), Some("per_endpoint"));

    // Times are wall-clock times.
    let v = json(&api(&gw, "GET", &format!("{GW}/clients/adm1"), b"").1);
    let year: u32 = v["connected_at"].as_str().unwrap()[..4].parse().unwrap();
    assert!(year >= 2025, "connected_at {}", v["connected_at"]);
    assert_eq!(v["lifetime"].as_u64(), Some(600));

    // Lookup before the device answered anything.
    let v = json(
        &api(
            &gw,
            "GET",
            &format!("{GW}/clients/adm1/lookup?path=/3/0/1&action=read"),
            b"",
        )
        .1,
    );
    assert_eq!(v["code"].as_str(), Some("6.01"), "{v}");

    // Read through the API; its answer on MQTT, then in lookup.
    let (st, _) = api(
        &gw,
        "POST",
        &format!("{GW}/clients/adm1/read?path=/3/0/1"),
        b"",
    );
    assert_eq!(st, 204);
    let (code, path, _, mid, token) = d1.next_request();
    assert_eq!((code, path.as_str()), (codes::GET, "/3/0/1"));
    d1.answer(mid, &token, codes::CONTENT, Some(0), None, b"Model-X");
    let r = wait_msg(&mut mq, "lwm2m/adm1/up/resp", "read");
    assert_eq!(r["data"]["content"][0]["value"].as_str(), Some("Model-X"));
    let v = json(
        &api(
            &gw,
            "GET",
            &format!("{GW}/clients/adm1/lookup?path=/3/0/1&action=read"),
            b"",
        )
        .1,
    );
    assert_eq!(
        (v["code"].as_str(), v["codeMsg"].as_str()),
        (Some("2.05"), Some("content"))
    );
    assert_eq!(v["content"][0]["value"].as_str(), Some("Model-X"));

    // A discover from MQTT; lookup shows the resources with their definitions.
    mq.publish(
        "lwm2m/adm1/dn/dm",
        br#"{"reqID":7,"msgType":"discover","data":{"path":"/3/0"}}"#,
        0,
    )
    .unwrap();
    let (code, path, _, mid, token) = d1.next_request();
    assert_eq!((code, path.as_str()), (codes::GET, "/3/0"));
    d1.answer(
        mid,
        &token,
        codes::CONTENT,
        Some(40),
        None,
        b"</3/0>,</3/0/1>,</3/0/4>",
    );
    wait_msg(&mut mq, "lwm2m/adm1/up/resp", "discover");
    let v = json(
        &api(
            &gw,
            "GET",
            &format!("{GW}/clients/adm1/lookup?path=/3/0&action=discover"),
            b"",
        )
        .1,
    );
    let c = v["content"].as_array().unwrap();
    assert_eq!(c.len(), 2, "{v}");
    assert_eq!(c[0]["path"].as_str(), Some("/3/0/1"));
    assert_eq!(c[0]["name"].as_str(), Some("Model Number"));
    assert_eq!(c[0]["operations"].as_str(), Some("R"));
    assert_eq!(c[0]["dataType"].as_str(), Some("String"));
    assert_eq!(c[1]["operations"].as_str(), Some("E"));
    assert!(c[1].get("dataType").is_none());

    // Write and observe through the API.
    let (st, _) = api(
        &gw,
        "POST",
        &format!("{GW}/clients/adm1/write?path=/3/0/14&type=String&value=%2B02"),
        b"",
    );
    assert_eq!(st, 204);
    let (code, path, _, mid, token) = d1.next_request();
    assert_eq!((code, path.as_str()), (codes::PUT, "/3/0/14"));
    d1.answer(mid, &token, codes::CHANGED, None, None, b"");
    let r = wait_msg(&mut mq, "lwm2m/adm1/up/resp", "write");
    assert_eq!(r["data"]["code"].as_str(), Some("2.04"));
    let (st, _) = api(
        &gw,
        "POST",
        &format!("{GW}/clients/adm1/observe?path=/3303/0/5700&enable=true"),
        b"",
    );
    assert_eq!(st, 204);
    let (code, path, obs, mid, token) = d1.next_request();
    assert_eq!(
        (code, path.as_str(), obs),
        (codes::GET, "/3303/0/5700", Some(0))
    );
    d1.answer(mid, &token, codes::CONTENT, Some(0), Some(5), b"21.5");
    let r = wait_msg(&mut mq, "lwm2m/adm1/up/resp", "observe");
    assert_eq!(r["data"]["content"][0]["value"].as_f64(), Some(21.5));
    d1.notify(&token, 6, b"22.5");
    let n = wait_msg(&mut mq, "lwm2m/adm1/up/notify", "notify");
    assert_eq!(n["seqNum"].as_u64(), Some(6));
    assert_eq!(n["data"]["content"][0]["value"].as_f64(), Some(22.5));

    // The documented configuration PUT, as written (only the listener's bind is this
    // test's): a missing comma and trailing commas, keys that cannot change given with their
    // current values, the rest applied at once.
    let seed = include_str!("../../shared/seed/lwm2m-gateway.md");
    let start = seed
        .find("-d '{\n  \"name\": \"lwm2m\"\n  \"xml_dir\"")
        .expect("the seed's first PUT")
        + 4;
    let body = &seed[start..start + seed[start..].find("}'").unwrap() + 1];
    let body = body.replace("\"bind\": \"5783\"", "\"bind\": \"127.0.0.1:0\"");
    let (st, text) = api(&gw, "PUT", GW, body.as_bytes());
    assert_eq!(st, 200, "{text}");
    let v = json(&api(&gw, "GET", GW, b"").1);
    assert_eq!(
        v["update_msg_publish_condition"].as_str(),
        Some("contains_object_list")
    );
    assert_eq!(v["listeners"][0]["max_conn_rate"].as_u64(), Some(1000));
    assert_eq!(
        v["listeners"][0]["max_connections"].as_u64(),
        Some(1_024_000)
    );
    // contains_object_list: an Update without an object list publishes nothing.
    assert_eq!(d2.update(b""), codes::CHANGED);
    assert_eq!(d2.update(b"</3/0>"), codes::CHANGED);
    assert_eq!(
        count_on(&mut mq, "lwm2m/adm2/up/update", Duration::from_secs(2)),
        1
    );
    // A listener's bind cannot change at run time.
    let (st, text) = api(
        &gw,
        "PUT",
        GW,
        br#"{"listeners":[{"type":"udp","name":"default","bind":"6000"}]}"#,
    );
    assert_eq!(st, 400);
    assert!(text.contains("listeners[0].bind"), "{text}");

    // Kick: the registration and its subscription are gone, an Update gets 4.04.
    assert_eq!(
        api(&gw, "DELETE", &format!("{GW}/clients/adm3"), b"").0,
        204
    );
    let rest: HashSet<String> = ["adm1", "adm2"]
        .iter()
        .map(|e| format!("lwm2m/{e}/dn/#"))
        .collect();
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &rest), rest);
    assert_eq!(d3.update(b""), codes::NOT_FOUND);
    assert_eq!(api(&gw, "GET", &format!("{GW}/clients/adm3"), b"").0, 404);

    // Two commands for adm2 (NSTART 1): the execute waits in the device's queue until the
    // read ends.
    mq.publish(
        "lwm2m/adm2/dn/dm",
        br#"{"reqID":20,"msgType":"read","data":{"path":"/3/0/0"}}"#,
        0,
    )
    .unwrap();
    let (code, path, _, mid, token) = d2.next_request();
    assert_eq!((code, path.as_str()), (codes::GET, "/3/0/0"));
    mq.publish(
        "lwm2m/adm2/dn/dm",
        br#"{"reqID":21,"msgType":"execute","data":{"path":"/3/0/4"}}"#,
        0,
    )
    .unwrap();
    let m = gw.metrics_when(|m| m.sum("lwm2m_commands_waiting", &[]) >= 1.0);
    assert_eq!(m.sum("lwm2m_commands_waiting", &[]), 1.0);
    d2.answer(mid, &token, codes::CONTENT, Some(0), None, b"ACME");
    wait_msg(&mut mq, "lwm2m/adm2/up/resp", "read");
    let (code, path, _, mid, token) = d2.next_request();
    assert_eq!((code, path.as_str()), (codes::POST, "/3/0/4"));
    d2.answer(mid, &token, codes::CHANGED, None, None, b"");
    wait_msg(&mut mq, "lwm2m/adm2/up/resp", "execute");
    // Two commands refused: a read without a path, an unknown msgType.
    mq.publish(
        "lwm2m/adm1/dn/dm",
        br#"{"reqID":22,"msgType":"read","data":{}}"#,
        0,
    )
    .unwrap();
    let r = wait_msg(&mut mq, "lwm2m/adm1/up/resp", "read");
    assert_eq!(r["data"]["code"].as_str(), Some("4.00"), "{r}");
    mq.publish(
        "lwm2m/adm1/dn/dm",
        br#"{"reqID":23,"msgType":"reboot","data":{}}"#,
        0,
    )
    .unwrap();
    let r = wait_msg(&mut mq, "lwm2m/adm1/up/resp", "reboot");
    assert_eq!(r["data"]["code"].as_str(), Some("4.00"), "{r}");

    // The metrics agree with what happened.
    let m = gw.metrics_when(|m| {
        m.sum("lwm2m_kicked_total", &[]) >= 1.0
            && m.sum("lwm2m_command_outcomes_total", &[]) >= 8.0
            && m.sum("lwm2m_commands_waiting", &[]) == 0.0
    });
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 3.0);
    assert_eq!(m.sum("lwm2m_endpoints", &[]), 2.0);
    assert_eq!(
        m.sum("lwm2m_updates_total", &[]),
        2.0,
        "the kicked device's Update is not one"
    );
    assert_eq!(m.sum("lwm2m_kicked_total", &[]), 1.0);
    assert_eq!(
        m.sum("lwm2m_requests_refused_total", &[("reason", "not_found")]),
        1.0
    );
    for (t, n) in [
        ("read", 2.0),
        ("discover", 1.0),
        ("write", 1.0),
        ("observe", 1.0),
        ("execute", 1.0),
        ("create", 0.0),
    ] {
        assert_eq!(
            m.sum("lwm2m_commands_by_type_total", &[("msg_type", t)]),
            n,
            "{t}"
        );
    }
    assert_eq!(
        m.sum("lwm2m_commands_total", &[("outcome", "response")]),
        6.0
    );
    // Final outcomes by msgType x outcome: every cell, then the totals.
    let mut cells = std::collections::BTreeMap::new();
    for s in m
        .samples
        .iter()
        .filter(|s| s.name == "lwm2m_command_outcomes_total")
    {
        let key = (s.labels["msg_type"].clone(), s.labels["outcome"].clone());
        assert!(cells.insert(key, s.value).is_none());
    }
    let ops = lwm2m_gateway::lwm2m::command::Op::COUNT;
    assert_eq!(
        cells.len(),
        ops * 9 + 2,
        "{ops} msgTypes x 9 outcomes, and unknown x (rejected, shed)"
    );
    let nonzero: Vec<(&str, &str, f64)> = cells
        .iter()
        .filter(|(_, v)| **v != 0.0)
        .map(|((t, o), v)| (t.as_str(), o.as_str(), *v))
        .collect();
    assert_eq!(
        nonzero,
        [
            ("discover", "response", 1.0),
            ("execute", "response", 1.0),
            ("observe", "response", 1.0),
            ("read", "rejected", 1.0),
            ("read", "response", 2.0),
            ("unknown", "rejected", 1.0),
            ("write", "response", 1.0),
        ]
    );
    assert_eq!(
        m.types
            .get("lwm2m_command_outcomes_total")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(m.sum("lwm2m_commands_shed_total", &[]), 0.0);
    assert_eq!(m.sum("lwm2m_commands_waiting", &[]), 0.0);
    assert_eq!(
        m.types.get("lwm2m_commands_waiting").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(m.sum("lwm2m_notifications_total", &[]), 1.0);
    assert_eq!(m.sum("lwm2m_command_round_trip_seconds_count", &[]), 6.0);
    // Datagrams in: 3 Registers, 4 + 2 answers, 1 notification, 3 Updates.
    assert_eq!(m.sum("lwm2m_datagrams_in_total", &[]), 13.0);
    // Out: 3 + 3 replies to device requests, 4 requests to adm1, 2 to adm2.
    assert_eq!(m.sum("lwm2m_datagrams_out_total", &[]), 12.0);
    // Register messages (3), responses (4), the notification, one update.
    assert!(m.sum("lwm2m_mqtt_published_total", &[]) >= 9.0);
    assert_eq!(m.sum("lwm2m_mailbox_depth", &[]), 0.0);
    assert_eq!(
        m.types.get("lwm2m_endpoints").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        m.types.get("lwm2m_registrations_total").map(String::as_str),
        Some("counter")
    );
    // Per-endpoint counters (enable_stats).
    let v = json(&api(&gw, "GET", &format!("{GW}/clients/adm1"), b"").1);
    // Received: its Register, four answers, one notification; sent: the 2.01, four requests.
    assert_eq!(v["recv_msg"].as_u64(), Some(6), "{v}");
    assert_eq!(v["send_msg"].as_u64(), Some(5), "{v}");
}
