//! End to end: the real binary, devices on real UDP sockets, MQTT read by a real
//! client, against the embedded broker and against Mosquitto.

mod common;

use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::sim::{Fleet, FleetConfig};
use simd_json::prelude::*;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn json(b: &[u8]) -> simd_json::OwnedValue {
    simd_json::to_owned_value(&mut b.to_vec()).expect("JSON payload")
}

fn fleet(gw: &GatewayProc, prefix: &str, n: usize) -> Fleet {
    let cfg = FleetConfig {
        devices: n,
        name_prefix: prefix.into(),
        ..Default::default()
    };
    Fleet::new(cfg, gw.udp).expect("fleet socket")
}

/// Receives until `n` messages arrived or nothing came for `idle`.
fn collect(c: &mut MqttClient, n: usize, idle: Duration) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv_publish(idle) {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

fn exchange(sock: &UdpSocket, gw: std::net::SocketAddr, req: &[u8]) -> Vec<u8> {
    sock.send_to(req, gw).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("reply from gateway");
    buf[..n].to_vec()
}

fn request(code: u8, mid: u16, path: &[&str], query: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, code, mid, &[7, 7]);
    for p in path {
        w.option(opt::URI_PATH, p.as_bytes());
    }
    for q in query {
        w.option(opt::URI_QUERY, q.as_bytes());
    }
    w.payload(payload);
    buf
}

/// The gateway's command filters in the broker, once there are `n` of them (or after 10 s).
fn wait_subscriptions(b: &Mosquitto, n: usize) -> std::collections::HashSet<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = b.subscriptions("lwm2m-gateway");
        if s.len() >= n || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn register_update_deregister_with_embedded_broker() {
    let mut gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = MqttClient::connect(gw.mqtt, "e2e-sub", true).unwrap();
    mq.subscribe("lwm2m/#", 0).unwrap();

    let mut f = fleet(&gw, "e2e-a", 1);
    assert_eq!(f.register_all(None, WAIT).unwrap().ok, 1);
    let (topic, payload) = mq.recv_publish(WAIT).expect("register message");
    assert_eq!(topic, "lwm2m/e2e-a0/up/resp");
    let v = json(&payload);
    assert_eq!(v["msgType"], "register");
    assert_eq!(v["data"]["ep"], "e2e-a0");
    assert_eq!(v["data"]["lt"], 300);
    assert_eq!(v["data"]["lwm2m"], "1.0");
    assert_eq!(v["data"]["b"], "U");
    assert_eq!(v["data"]["alternatePath"], "/");
    assert_eq!(v["data"]["objectList"].as_array().map(|a| a.len()), Some(8));

    assert_eq!(f.update_all(WAIT).unwrap().ok, 1);
    let (topic, payload) = mq.recv_publish(WAIT).expect("update message");
    assert_eq!(topic, "lwm2m/e2e-a0/up/update");
    assert_eq!(json(&payload)["msgType"], "update");

    assert_eq!(f.deregister_all(WAIT).unwrap().ok, 1);

    // Bad requests get 4.00 with a diagnostic and publish nothing.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let reply = exchange(
        &sock,
        gw.udp,
        &request(
            codes::POST,
            1,
            &["rd"],
            &["lt=60", "lwm2m=1.0", "b=U"],
            b"</1/0>,</3/0>",
        ),
    );
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.code, codes::BAD_REQUEST);
    assert!(String::from_utf8_lossy(m.payload).contains("endpoint name"));
    let reply = exchange(
        &sock,
        gw.udp,
        &request(codes::POST, 2, &["rd"], &["ep=x", "lwm2m=3.0"], b"</1/0>"),
    );
    assert_eq!(Message::parse(&reply).unwrap().code, codes::BAD_REQUEST);
    let reply = exchange(
        &sock,
        gw.udp,
        &request(codes::POST, 3, &["rd", "ffff"], &[], b""),
    );
    assert_eq!(Message::parse(&reply).unwrap().code, codes::NOT_FOUND);
    // Garbage does not stop the gateway.
    for junk in [&b""[..], b"\x00", b"\xff\xff\xff\xff\xff", b"\x40\x02\x00"] {
        sock.send_to(junk, gw.udp).unwrap();
    }
    assert!(
        mq.recv_publish(Duration::from_millis(300)).is_none(),
        "nothing published for bad requests"
    );
    let mut g = fleet(&gw, "e2e-b", 1);
    assert_eq!(g.register_all(None, WAIT).unwrap().ok, 1);
    assert!(mq.recv_publish(WAIT).is_some());

    let status = gw.stop();
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}

#[test]
fn duplicate_register_publishes_once() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = MqttClient::connect(gw.mqtt, "e2e-dup", true).unwrap();
    mq.subscribe("lwm2m/#", 0).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let req = request(codes::POST, 42, &["rd"], &["ep=dup1", "lt=60"], b"</3/0>");
    let a = exchange(&sock, gw.udp, &req);
    let b = exchange(&sock, gw.udp, &req);
    assert_eq!(a, b, "the retransmission gets the cached reply");
    assert!(mq.recv_publish(WAIT).is_some());
    assert!(
        mq.recv_publish(Duration::from_millis(500)).is_none(),
        "one MQTT message only"
    );
}

fn read_cmd(req_id: &str) -> Vec<u8> {
    format!(r#"{{"reqID":"{req_id}","msgType":"read","data":{{"path":"/3/0/0"}}}}"#).into_bytes()
}

/// Lets `fleets` answer the gateway's requests until a read response with each of
/// `want` reqIDs is on MQTT; returns every read response seen, by reqID.
fn drive_reads(
    fleets: &mut [&mut Fleet],
    mq: &mut MqttClient,
    want: &[&str],
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !want.iter().all(|w| seen.contains_key(*w)) && std::time::Instant::now() < deadline {
        for f in fleets.iter_mut() {
            f.receive(Duration::from_millis(10)).unwrap();
        }
        while let Some((t, p)) = mq.recv_publish(Duration::from_millis(1)) {
            let v = json(&p);
            if t.ends_with("/up/resp") && v["msgType"].as_str() == Some("read") {
                assert_eq!(v["data"]["code"].as_str(), Some("2.05"), "{t}: {v}");
                *seen
                    .entry(v["reqID"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    seen
}

/// Sends an Update with `lt` from every registered device of `f` and waits for the 2.04s.
fn set_lifetime(f: &mut Fleet, lt: u32) {
    for i in 0..f.devices.len() {
        let Some(loc) = f.devices[i].location.clone() else {
            continue;
        };
        let mid = 0xf000 + i as u16;
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MsgType::Con, codes::POST, mid, &mid.to_be_bytes());
        w.option(opt::URI_PATH, b"rd")
            .option(opt::URI_PATH, loc.as_bytes())
            .option(opt::URI_QUERY, format!("lt={lt}").as_bytes());
        w.finish();
        f.start(i, buf);
    }
    f.flush().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while f.outstanding() > 0 && std::time::Instant::now() < deadline {
        f.receive(Duration::from_millis(10)).unwrap();
    }
    assert!(
        f.devices
            .iter()
            .all(|d| d.last_code == Some(codes::CHANGED)),
        "every Update with lt={lt} answered 2.04"
    );
}

#[test]
fn mosquitto_per_endpoint_subscriptions_and_expiry() {
    let broker = Mosquitto::start();
    // One broker connection: the broker hands it publishes in the order it got them, so
    // once a later command is handled every earlier one has been seen (or never came).
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "lifetime_min = \"1s\"",
        "subscribe = \"per_endpoint\"\nconnections = 1",
    );
    let mut mq = MqttClient::connect(broker.addr(), "e2e-mosq", true).unwrap();
    mq.subscribe("lwm2m/+/up/#", 0).unwrap();
    let fleet_of = |prefix: &str, n: usize, first: u32, lt: u32| {
        let mut f = Fleet::new(
            FleetConfig {
                devices: n,
                name_prefix: prefix.into(),
                first_index: first,
                lifetime_s: lt,
                ..Default::default()
            },
            gw.udp,
        )
        .unwrap();
        f.answer_like_client();
        f
    };
    // mq0..mq2 will expire (their Updates shorten the lifetime to 2 s once they were
    // seen working), mqd100 de-registers, mql200 stays.
    let mut expiring = fleet_of("mq", 3, 0, 300);
    let mut leaving = fleet_of("mqd", 1, 100, 300);
    let mut staying = fleet_of("mql", 1, 200, 300);
    assert_eq!(expiring.register_all(None, WAIT).unwrap().ok, 3);
    assert_eq!(leaving.register_all(None, WAIT).unwrap().ok, 1);
    assert_eq!(staying.register_all(None, WAIT).unwrap().ok, 1);
    let msgs = collect(&mut mq, 5, WAIT);
    let mut topics: Vec<_> = msgs.iter().map(|m| m.0.clone()).collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "lwm2m/mq0/up/resp",
            "lwm2m/mq1/up/resp",
            "lwm2m/mq2/up/resp",
            "lwm2m/mqd100/up/resp",
            "lwm2m/mql200/up/resp"
        ]
    );
    let filter = |ep: &str| format!("lwm2m/{ep}/dn/#");
    let all: Vec<String> = ["mq0", "mq1", "mq2", "mqd100", "mql200"]
        .iter()
        .map(|e| filter(e))
        .collect();
    let subs = broker.subscriptions_become("lwm2m-gateway", &all.iter().cloned().collect());
    assert_eq!(subs.len(), 5, "one filter per endpoint: {subs:?}");
    // And they work: every endpoint's command reaches its device.
    for ep in ["mq0", "mq1", "mq2", "mqd100", "mql200"] {
        mq.publish(&format!("lwm2m/{ep}/dn/dm"), &read_cmd(ep), 1)
            .unwrap();
    }
    let answered = drive_reads(
        &mut [&mut expiring, &mut leaving, &mut staying],
        &mut mq,
        &["mq0", "mq1", "mq2", "mqd100", "mql200"],
    );
    assert_eq!(answered.len(), 5, "{answered:?}");
    let asked = (
        expiring.requests_seen,
        leaving.requests_seen,
        staying.requests_seen,
    );
    assert_eq!(asked, (3, 1, 1));

    // De-registration unsubscribes.
    assert_eq!(leaving.deregister_all(WAIT).unwrap().ok, 1);
    let subs = broker.subscriptions_become(
        "lwm2m-gateway",
        &all[..3].iter().chain(&all[4..]).cloned().collect(),
    );
    assert!(!subs.contains(&filter("mqd100")), "{subs:?}");
    assert_eq!(subs.len(), 4, "{subs:?}");

    // Expiry unsubscribes: 2 s after these Updates only the staying device's filter is left.
    set_lifetime(&mut expiring, 2);
    let subs = broker.subscriptions_become("lwm2m-gateway", &all[4..].iter().cloned().collect());
    assert_eq!(subs, all[4..].iter().cloned().collect(), "after expiry");
    // The expired registrations are gone: an update gets 4.04.
    let out = expiring.update_all(WAIT).unwrap();
    assert_eq!(out.failed, 3, "expired registrations are gone: {out:?}");
    assert!(expiring
        .devices
        .iter()
        .all(|d| d.last_code == Some(codes::NOT_FOUND)));

    // Functionally: commands for the expired and the de-registered endpoints no longer
    // reach the gateway at all (not even to be refused as unknown), while one for the
    // staying endpoint, published after them, does.
    let before = gw.metrics();
    for ep in ["mq0", "mq1", "mq2", "mqd100"] {
        mq.publish(
            &format!("lwm2m/{ep}/dn/dm"),
            &read_cmd(&format!("late-{ep}")),
            1,
        )
        .unwrap();
    }
    mq.publish("lwm2m/mql200/dn/dm", &read_cmd("marker"), 1)
        .unwrap();
    let answered = drive_reads(
        &mut [&mut expiring, &mut leaving, &mut staying],
        &mut mq,
        &["marker"],
    );
    assert_eq!(
        answered.keys().collect::<Vec<_>>(),
        ["marker"],
        "{answered:?}"
    );
    let after = gw.metrics();
    let delta = |name: &str| after.sum(name, &[]) - before.sum(name, &[]);
    assert_eq!(
        delta("lwm2m_mqtt_inbound_total"),
        1.0,
        "only the staying endpoint's command was delivered to the gateway"
    );
    assert_eq!(delta("lwm2m_commands_unknown_endpoint_total"), 0.0);
    assert_eq!(
        (
            expiring.requests_seen,
            leaving.requests_seen,
            staying.requests_seen
        ),
        (3, 1, 2),
        "no request reached a device that left"
    );
}

#[test]
fn broker_restart_loses_no_qos1_register() {
    let mut broker = Mosquitto::start_persistent();
    let gw = GatewayProc::start(
        Broker::External(broker.addr()),
        "[translators]\nregister = { topic = \"up/resp\", qos = 1 }\n",
    );
    let mut mq = MqttClient::connect(broker.addr(), "e2e-restart-sub", false).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 1).unwrap();
    const N: usize = 2000;
    let udp = gw.udp;
    let devices = std::thread::spawn(move || {
        let mut f = Fleet::new(
            FleetConfig {
                devices: N,
                name_prefix: "rs".into(),
                ..Default::default()
            },
            udp,
        )
        .unwrap();
        f.register_all(Some(500), Duration::from_secs(60)).unwrap()
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut take = |mq: &mut MqttClient, idle: Duration| {
        while let Some((_, p)) = mq.recv_publish(idle) {
            let ep = json(&p)["data"]["ep"].to_string();
            *seen.entry(ep).or_default() += 1;
        }
    };
    take(&mut mq, Duration::from_millis(1500));
    broker.stop();
    drop(mq);
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    let mut mq = MqttClient::connect(broker.addr(), "e2e-restart-sub", false).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 1).unwrap();
    let out = devices.join().unwrap();
    assert_eq!(out.ok, N, "every device registered: {out:?}");
    take(&mut mq, Duration::from_secs(5));
    let missing: Vec<_> = (0..N)
        .map(|i| format!("rs{i}"))
        .filter(|n| !seen.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} register messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn two_gateways_share_one_broker() {
    let broker = Mosquitto::start();
    let a = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "",
        "subscribe = \"per_endpoint\"",
    );
    let b = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "",
        "subscribe = \"per_endpoint\"",
    );
    let mut mq = MqttClient::connect(broker.addr(), "e2e-two", true).unwrap();
    mq.subscribe("lwm2m/#", 0).unwrap();
    let mut fa = fleet(&a, "ga", 50);
    let mut fb = Fleet::new(
        FleetConfig {
            devices: 50,
            name_prefix: "gb".into(),
            first_index: 1000,
            ..Default::default()
        },
        b.udp,
    )
    .unwrap();
    assert_eq!(fa.register_all(None, WAIT).unwrap().ok, 50);
    assert_eq!(fb.register_all(None, WAIT).unwrap().ok, 50);
    let msgs = collect(&mut mq, 100, WAIT);
    assert_eq!(msgs.len(), 100);
    assert_eq!(
        msgs.iter().filter(|m| m.0.starts_with("lwm2m/ga")).count(),
        50
    );
    assert_eq!(
        msgs.iter().filter(|m| m.0.starts_with("lwm2m/gb")).count(),
        50
    );

    // Commands for every device of both: each gateway gets only its own devices' commands,
    // so each device is asked once and each command answered once, by its own gateway
    // (none answered 4.00 "not registered" by the other).
    for i in 0..50 {
        for (p, idx) in [("ga", i), ("gb", 1000 + i)] {
            let cmd =
                format!(r#"{{"reqID":"{p}{idx}","msgType":"read","data":{{"path":"/3/0/0"}}}}"#);
            mq.publish(&format!("lwm2m/{p}{idx}/dn/dm"), cmd.as_bytes(), 0)
                .unwrap();
        }
    }
    fa.answer_like_client();
    fb.answer_like_client();
    let mut answers: HashMap<String, usize> = HashMap::new();
    let deadline = std::time::Instant::now() + WAIT;
    while answers.values().sum::<usize>() < 100 && std::time::Instant::now() < deadline {
        fa.receive(Duration::from_millis(20)).unwrap();
        fb.receive(Duration::from_millis(20)).unwrap();
        while let Some((t, p)) = mq.recv_publish(Duration::from_millis(1)) {
            let v = json(&p);
            if t.ends_with("/up/resp") && v["msgType"].as_str() == Some("read") {
                assert_eq!(v["data"]["code"].as_str(), Some("2.05"), "{t}: {v}");
                *answers
                    .entry(v["reqID"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    // Late duplicates, if any, arrive within the idle wait.
    for (t, p) in collect(&mut mq, usize::MAX, Duration::from_millis(500)) {
        let v = json(&p);
        if t.ends_with("/up/resp") && v["msgType"].as_str() == Some("read") {
            *answers
                .entry(v["reqID"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(answers.len(), 100, "every command answered");
    assert!(answers.values().all(|&n| n == 1), "each once: {answers:?}");
    assert_eq!((fa.requests_seen, fb.requests_seen), (50, 50));
}

#[test]
fn ten_thousand_devices_through_several_shards() {
    let broker = Mosquitto::start();
    let mut gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "[engine]\nshards = 4\n",
        "subscribe = \"per_endpoint\"",
    );
    let mut mq = MqttClient::connect(broker.addr(), "e2e-10k", true).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 0).unwrap();
    const N: usize = 10_000;
    let mut f = fleet(&gw, "k", N);
    let out = f.register_all(None, Duration::from_secs(120)).unwrap();
    assert_eq!(out.ok, N, "{out:?}");
    let mut msgs = collect(&mut mq, N, Duration::from_secs(10));
    // A late duplicate would come after the N-th message: keep listening until the
    // broker has been quiet for a while.
    msgs.extend(collect(&mut mq, usize::MAX, Duration::from_secs(3)));
    let mut per_ep: HashMap<String, usize> = HashMap::new();
    for (t, _) in &msgs {
        *per_ep.entry(t.clone()).or_default() += 1;
    }
    assert_eq!(per_ep.len(), N, "every device appears");
    let twice: Vec<_> = per_ep.iter().filter(|(_, &c)| c != 1).collect();
    assert!(
        twice.is_empty(),
        "and exactly once ({} messages in all): {:?}",
        msgs.len(),
        &twice[..twice.len().min(5)]
    );
    let subs = wait_subscriptions(&broker, N);
    assert_eq!(subs.len(), N, "each has its command subscription");
    assert!((0..N).all(|i| subs.contains(&format!("lwm2m/k{i}/dn/#"))));
    let status = gw.stop();
    assert!(status.success());
    // Several shards held endpoints.
    let log = gw.log();
    let busy = log
        .lines()
        .filter(|l| l.contains("shard stopped") && !l.contains("endpoints=0 "))
        .count();
    assert!(busy >= 2, "endpoints spread over shards:\n{log}");
}
