//! End to end: the real binary, devices on real UDP sockets, MQTT read by a real
//! client, against the embedded broker and against Mosquitto.

mod common;

use common::coap::{exchange, socket, Req};
use common::fleet::{drive_reads, fleet, fleet_from, read_cmd};
use common::gateway::{Broker, GatewayProc};
use common::json;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, Message};
use lwm2m_gateway::sim::Fleet;
use simd_json::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

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
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-sub", "lwm2m/#", 0);

    let mut f = fleet(gw.udp, "e2e-a", 1);
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
    let (topic, payload) = mq.recv_publish(WAIT).expect("the end of the registration");
    assert_eq!(topic, "lwm2m/e2e-a0/up/resp");
    let v = json(&payload);
    assert_eq!(v["msgType"], "deregister");
    assert_eq!(v["data"]["reason"], "deregister");

    // Bad requests get 4.00 with a diagnostic and publish nothing.
    let sock = socket([127, 0, 0, 1], WAIT);
    let req = |mid: u16| Req::con(codes::POST, mid, &[7, 7]).path(&["rd"]);
    let reply = exchange(
        &sock,
        gw.udp,
        &req(1)
            .query(&["lt=60", "lwm2m=1.0", "b=U"])
            .body(b"</1/0>,</3/0>")
            .bytes(),
    );
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.code, codes::BAD_REQUEST);
    assert!(String::from_utf8_lossy(m.payload).contains("endpoint name"));
    let reply = exchange(
        &sock,
        gw.udp,
        &req(2).query(&["ep=x", "lwm2m=3.0"]).body(b"</1/0>").bytes(),
    );
    assert_eq!(Message::parse(&reply).unwrap().code, codes::BAD_REQUEST);
    let reply = exchange(&sock, gw.udp, &req(3).path(&["ffff"]).bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::NOT_FOUND);
    // Garbage does not stop the gateway.
    for junk in [&b""[..], b"\x00", b"\xff\xff\xff\xff\xff", b"\x40\x02\x00"] {
        sock.send_to(junk, gw.udp).unwrap();
    }
    assert!(
        mq.recv_publish(Duration::from_millis(300)).is_none(),
        "nothing published for bad requests"
    );
    let mut g = fleet(gw.udp, "e2e-b", 1);
    assert_eq!(g.register_all(None, WAIT).unwrap().ok, 1);
    assert!(mq.recv_publish(WAIT).is_some());

    let status = gw.stop();
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}

#[test]
fn duplicate_register_publishes_once() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-dup", "lwm2m/#", 0);
    let sock = socket([127, 0, 0, 1], WAIT);
    let req = Req::con(codes::POST, 42, &[7, 7])
        .path(&["rd"])
        .query(&["ep=dup1", "lt=60"])
        .body(b"</3/0>")
        .bytes();
    let a = exchange(&sock, gw.udp, &req);
    let b = exchange(&sock, gw.udp, &req);
    assert_eq!(a, b, "the retransmission gets the cached reply");
    assert!(mq.recv_publish(WAIT).is_some());
    assert!(
        mq.recv_publish(Duration::from_millis(500)).is_none(),
        "one MQTT message only"
    );
}

/// Sends an Update with `lt` from every registered device of `f` and waits for the 2.04s.
fn set_lifetime(f: &mut Fleet, lt: u32) {
    for i in 0..f.devices.len() {
        let Some(loc) = f.devices[i].location.clone() else {
            continue;
        };
        let mid = 0xf000 + i as u16;
        let update = Req::con(codes::POST, mid, &mid.to_be_bytes())
            .path(&["rd", &loc])
            .query(&[&format!("lt={lt}")]);
        f.start(i, update.bytes());
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
    let mut mq = MqttClient::subscriber(broker.addr(), "e2e-mosq", "lwm2m/+/up/#", 0);
    let fleet_of = |prefix: &str, n: usize, first: u32| {
        let mut f = fleet_from(gw.udp, prefix, n, first);
        f.answer_like_client();
        f
    };
    // mq0..mq2 will expire (their Updates shorten the lifetime to 2 s once they were
    // seen working), mqd100 de-registers, mql200 stays.
    let mut expiring = fleet_of("mq", 3, 0);
    let mut leaving = fleet_of("mqd", 1, 100);
    let mut staying = fleet_of("mql", 1, 200);
    assert_eq!(expiring.register_all(None, WAIT).unwrap().ok, 3);
    assert_eq!(leaving.register_all(None, WAIT).unwrap().ok, 1);
    assert_eq!(staying.register_all(None, WAIT).unwrap().ok, 1);
    let msgs = mq.collect(5, WAIT);
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
    let want = ["mq0", "mq1", "mq2", "mqd100", "mql200"];
    let answered = drive_reads(
        &mut [&mut expiring, &mut leaving, &mut staying],
        &mut mq,
        WAIT,
        |seen| want.iter().all(|w| seen.contains_key(*w)),
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
        WAIT,
        |seen| seen.contains_key("marker"),
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
        let mut f = fleet(udp, "rs", N);
        f.register_all(Some(500), Duration::from_secs(60)).unwrap()
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut take = |mq: &mut MqttClient, idle: Duration| {
        for (_, p) in mq.collect(usize::MAX, idle) {
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
    let mut mq = MqttClient::subscriber(broker.addr(), "e2e-two", "lwm2m/#", 0);
    let mut fa = fleet(a.udp, "ga", 50);
    let mut fb = fleet_from(b.udp, "gb", 50, 1000);
    assert_eq!(fa.register_all(None, WAIT).unwrap().ok, 50);
    assert_eq!(fb.register_all(None, WAIT).unwrap().ok, 50);
    let msgs = mq.collect(100, WAIT);
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
            let cmd = read_cmd(&format!("{p}{idx}"));
            mq.publish(&format!("lwm2m/{p}{idx}/dn/dm"), &cmd, 0)
                .unwrap();
        }
    }
    fa.answer_like_client();
    fb.answer_like_client();
    let mut answers = drive_reads(&mut [&mut fa, &mut fb], &mut mq, WAIT, |a| {
        a.values().sum::<usize>() >= 100
    });
    // Late duplicates, if any, arrive within the idle wait.
    for (t, p) in mq.collect(usize::MAX, Duration::from_millis(500)) {
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
    let mut mq = MqttClient::subscriber(broker.addr(), "e2e-10k", "lwm2m/+/up/resp", 0);
    const N: usize = 10_000;
    let mut f = fleet(gw.udp, "k", N);
    let out = f.register_all(None, Duration::from_secs(120)).unwrap();
    assert_eq!(out.ok, N, "{out:?}");
    let mut msgs = mq.collect(N, Duration::from_secs(10));
    // A late duplicate would come after the N-th message: keep listening until the
    // broker has been quiet for a while.
    msgs.extend(mq.collect(usize::MAX, Duration::from_secs(3)));
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
