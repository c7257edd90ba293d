//! Per-endpoint command subscriptions against a real Mosquitto, over the broker connections
//! the default sizing opens: spread over every connection, each filter on exactly one, each
//! in place before its register message reaches an application, and unsubscribed from the
//! connection that holds it.

mod common;

use common::fleet::{fleet_from, read_cmd};
use common::gateway::{Broker, GatewayProc};
use common::json;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use simd_json::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// Devices that stay registered, and devices that de-register after.
const STAYING: usize = 2000;
const LEAVING: usize = 1000;
/// `max_connections` of the listener: 8 connections by default (16,384 filters each),
/// 4 on each of the 2 shards.
const ADMITTED: u64 = 8 * 16_384;
const CONNECTIONS: usize = 8;

/// What the application saw: register messages by endpoint, read answers by reqID.
#[derive(Default)]
struct Seen {
    registers: HashMap<String, usize>,
    reads: HashMap<String, usize>,
}

/// An application that commands each device the moment its register message arrives
/// (a read with the endpoint's name as reqID), until every device answered or `within`.
fn commanding_app(
    mut mq: MqttClient,
    devices: usize,
    within: Duration,
    done: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + within;
    while seen.reads.len() < devices && Instant::now() < deadline {
        let Some((topic, payload)) = mq.recv_publish(Duration::from_millis(100)) else {
            continue;
        };
        let v = json(&payload);
        match v["msgType"].as_str() {
            Some("register") => {
                let ep = v["data"]["ep"].as_str().expect("ep").to_string();
                mq.publish(&format!("lwm2m/{ep}/dn/cmd"), &read_cmd(&ep), 0)
                    .unwrap();
                *seen.registers.entry(ep).or_default() += 1;
            }
            Some("read") => {
                assert_eq!(v["data"]["code"].as_str(), Some("2.05"), "{topic}: {v}");
                let id = v["reqID"].as_str().expect("reqID").to_string();
                *seen.reads.entry(id).or_default() += 1;
            }
            _ => {}
        }
    }
    done.store(true, Ordering::SeqCst);
    seen
}

#[test]
fn per_endpoint_subscriptions_spread_over_connections_and_precede_their_register_messages() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_full(
        Broker::External(broker.addr()),
        "engine.shards = 2",
        "subscribe = \"per_endpoint\"",
        &format!("max_conn_rate = 1000000\nmax_connections = {ADMITTED}"),
    );
    let app = MqttClient::subscriber(broker.addr(), "spread-app", "lwm2m/+/up/resp", 1);
    let done = Arc::new(AtomicBool::new(false));
    let total = STAYING + LEAVING;
    let app = {
        let done = done.clone();
        std::thread::spawn(move || commanding_app(app, total, WAIT, done))
    };

    let mut staying = fleet_from(gw.udp, "spread", STAYING, 0);
    let mut leaving = fleet_from(gw.udp, "leave", LEAVING, 100_000);
    for f in [&mut staying, &mut leaving] {
        f.answer_like_client();
        let out = f.register_all(None, WAIT).unwrap();
        assert_eq!(
            out.ok,
            f.devices.len(),
            "every Register answered 2.01: {out:?}"
        );
    }
    // The devices answer the commands until the application has every answer.
    let deadline = Instant::now() + WAIT;
    while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
        staying.receive(Duration::from_millis(5)).unwrap();
        leaving.receive(Duration::from_millis(5)).unwrap();
    }
    let seen = app.join().expect("application thread");

    // Every register message arrived, once.
    assert_eq!(
        seen.registers.len(),
        total,
        "register messages of distinct devices"
    );
    assert!(
        seen.registers.values().all(|&n| n == 1),
        "one register message each"
    );
    // Each command, published as soon as its register message was seen, was answered:
    // the subscription was in place. Once each: the filter lives on one connection.
    let unanswered: Vec<_> = seen
        .registers
        .keys()
        .filter(|ep| !seen.reads.contains_key(*ep))
        .take(10)
        .collect();
    assert!(
        unanswered.is_empty(),
        "commands never answered, e.g. {unanswered:?}"
    );
    assert_eq!(seen.reads.len(), total);
    assert!(
        seen.reads.values().all(|&n| n == 1),
        "one answer per command"
    );

    // What the broker holds: every filter on exactly one connection, and every connection
    // holding its share.
    let filter = |ep: &str| format!("lwm2m/{ep}/dn/#");
    let all: HashSet<String> = seen.registers.keys().map(|e| filter(e)).collect();
    let subs = broker.subscriptions_become("lwm2m-gateway", &all);
    assert_eq!(subs.len(), total, "one filter per endpoint");
    let holders = broker.holders("lwm2m-gateway");
    assert!(
        holders.values().all(|&n| n == 1),
        "a filter on one connection only"
    );
    let by_client = broker.filters_by_client("lwm2m-gateway");
    let counts: Vec<usize> = by_client.values().map(|f| f.len()).collect();
    assert_eq!(
        counts.len(),
        CONNECTIONS,
        "filters on every connection: {counts:?}"
    );
    let fair = total / CONNECTIONS;
    assert!(
        counts.iter().all(|&n| n > fair / 2 && n < fair * 2),
        "filters spread over the connections: {counts:?}"
    );

    // De-registration unsubscribes each filter from the connection that holds it.
    let out = leaving.deregister_all(WAIT).unwrap();
    assert_eq!(out.ok, LEAVING, "{out:?}");
    let left: HashSet<String> = (0..STAYING)
        .map(|i| filter(&format!("spread{i}")))
        .collect();
    let subs = broker.subscriptions_become("lwm2m-gateway", &left);
    assert_eq!(subs.len(), STAYING, "the leaving devices' filters are gone");
    assert_eq!(subs, left);
}
