//! The Redis store (`[store] kind = "redis"`) with Debian's `redis-server`, started by
//! the test: the scripts' ownership rules on a real Redis, and the real binary keeping
//! its registrations across a restart on it.

mod common;

use common::coap::{exchange, location, socket, Req};
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::redis_server::Redis;
use lwm2m_gateway::coap::{codes, opt, Message};
use lwm2m_gateway::lwm2m::StoreChange;
use lwm2m_gateway::store::{redis_scripts, Backend, Change, RedisStore, StoreStats, StoreWriter};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A record of `name` at `location` (the smallest the core writes: version 1, every
/// optional field absent).
fn record(name: &str, location: u64) -> Vec<u8> {
    let mut b = vec![1];
    b.extend((name.len() as u32).to_le_bytes());
    b.extend(name.as_bytes());
    b.extend(location.to_le_bytes());
    b.push(4);
    b.extend([127, 0, 0, 1]);
    b.extend(5683u16.to_le_bytes());
    b.extend(60u32.to_le_bytes());
    b.extend([0u8; 24]); // deadline, registration and last-seen times
    b.extend(0u32.to_le_bytes()); // mountpoint
    b.extend(0u32.to_le_bytes()); // parameters
    b.extend([0, 0, 0, 0, 0]); // alternate path, object list, flags, formats
    b.extend(0u32.to_le_bytes()); // observations
    let ep = lwm2m_gateway::lwm2m::record::decode(&b, 0).expect("a valid record");
    assert_eq!((&*ep.name, ep.location), (name, location));
    b
}

/// The (name, location) pairs `store` loads: its node's records.
fn owned(store: &mut RedisStore) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    store
        .load(&mut |name, bytes| {
            let ep = lwm2m_gateway::lwm2m::record::decode(bytes, 0).expect("record");
            out.push((name.to_string(), ep.location));
            Ok(())
        })
        .expect("load");
    out.sort();
    out
}

fn owner(redis: &Redis, name: &str) -> Option<String> {
    let mut c = redis.connection();
    redis::cmd("HGET")
        .arg(redis_scripts::reg_key(name))
        .arg("owner")
        .query(&mut c)
        .expect("HGET")
}

#[test]
fn two_nodes_on_one_redis_have_one_owner_per_name() {
    let redis = Redis::start();
    let mut a = RedisStore::open(&redis.url(), "a").expect("node a");
    let mut b = RedisStore::open(&redis.url(), "b").expect("node b");
    let w = |s: &mut RedisStore, name: &str, c: Change| s.write(&[(name.into(), c)]).unwrap();

    // a registers dev1 and dev2.
    w(&mut a, "dev1", Change::Claim(record("dev1", 11)));
    w(&mut a, "dev2", Change::Claim(record("dev2", 12)));
    assert_eq!(owned(&mut a), [("dev1".into(), 11), ("dev2".into(), 12)]);
    assert_eq!(owned(&mut b), []);
    // b's Update of a registration it does not hold is refused.
    w(&mut b, "dev1", Change::Put(record("dev1", 11)));
    assert_eq!(owner(&redis, "dev1").as_deref(), Some("a"));
    assert_eq!(
        b.stats()
            .not_owner
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // dev1 registers again on b (a new location): b holds it now; a's later changes of
    // its old registration (an Update, its removal) change nothing.
    w(&mut b, "dev1", Change::Claim(record("dev1", 21)));
    w(&mut a, "dev1", Change::Put(record("dev1", 11)));
    w(&mut a, "dev1", Change::Remove(11));
    assert_eq!(owner(&redis, "dev1").as_deref(), Some("b"));
    assert_eq!(owned(&mut b), [("dev1".into(), 21)]);
    assert_eq!(owned(&mut a), [("dev2".into(), 12)]);
    // The old location no longer names it; the new one does.
    let mut c = redis.connection();
    let at = |c: &mut redis::Connection, l: u64| -> Option<String> {
        redis::cmd("GET")
            .arg(redis_scripts::loc_key(l))
            .query(c)
            .unwrap()
    };
    assert_eq!(at(&mut c, 11), None);
    assert_eq!(at(&mut c, 21).as_deref(), Some("dev1"));
    // A location another name holds is refused, not overwritten.
    w(&mut b, "dev3", Change::Claim(record("dev3", 12)));
    assert_eq!(at(&mut c, 12).as_deref(), Some("dev2"));
    assert_eq!(
        b.stats()
            .location_clashes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The owner's removal of its own registration takes it and its location.
    w(&mut a, "dev2", Change::Remove(12));
    assert_eq!(owned(&mut a), []);
    assert_eq!(at(&mut c, 12), None);
}

/// Node `node`'s changes, queued in order to a real store writer on `redis` and
/// written in one batch (the writer coalesces them as it does in the gateway).
fn write_batch(redis: &Redis, node: &str, changes: Vec<StoreChange>) {
    let store = RedisStore::open(&redis.url(), node).expect("store");
    let w = StoreWriter::start(Box::new(store), Arc::new(StoreStats::default())).expect("writer");
    let tx = w.sender();
    for c in changes {
        tx.send(c);
    }
    w.stop();
}

fn put(name: &str, location: u64, claim: bool) -> StoreChange {
    StoreChange::Put {
        name: name.into(),
        location,
        record: record(name, location),
        claim,
    }
}

fn remove(name: &str, location: u64) -> StoreChange {
    StoreChange::Remove {
        name: name.into(),
        location,
    }
}

/// A node lets a registration go (another node registered the name again) while an
/// Update of it waits in its writer; the newer registration ends. The Update must not
/// write the released registration back under the old node: the release queues the
/// record's removal behind it, which cancels it in the same batch, or removes the record
/// it wrote back in an earlier one. A fresh Register's record is written, and its
/// Updates after it.
#[test]
fn a_released_registration_is_not_written_back() {
    let redis = Redis::start();
    let mut b = RedisStore::open(&redis.url(), "b").expect("node b");
    let exists = |name: &str| -> bool {
        redis::cmd("EXISTS")
            .arg(redis_scripts::reg_key(name))
            .query(&mut redis.connection())
            .unwrap()
    };
    // A fresh Register on a, then an Update: written, a owns it.
    write_batch(&redis, "a", vec![put("dev1", 11, true)]);
    write_batch(&redis, "a", vec![put("dev1", 11, false)]);
    assert_eq!(owner(&redis, "dev1").as_deref(), Some("a"));
    // dev1 registers again on b (a is told to let 11 go), and that registration ends.
    b.write(&[("dev1".into(), Change::Claim(record("dev1", 21)))])
        .unwrap();
    b.write(&[("dev1".into(), Change::Remove(21))]).unwrap();
    assert!(!exists("dev1"));
    // a's Update of 11, queued before a heard of the release, and the release's removal
    // in one batch: nothing is written.
    write_batch(
        &redis,
        "a",
        vec![put("dev1", 11, false), remove("dev1", 11)],
    );
    assert!(
        !exists("dev1"),
        "the released registration was written back"
    );
    // The Update written in a batch of its own (before the release was heard) writes
    // the record back (the store cannot tell it from a Redis that lost its data); the
    // release's removal, behind it in a's queue, takes it away.
    write_batch(&redis, "a", vec![put("dev1", 11, false)]);
    assert_eq!(owner(&redis, "dev1").as_deref(), Some("a"));
    write_batch(&redis, "a", vec![remove("dev1", 11)]);
    assert!(!exists("dev1"), "the record written back stays");
    let mut c = redis.connection();
    let at: Option<String> = redis::cmd("GET")
        .arg(redis_scripts::loc_key(11))
        .query(&mut c)
        .unwrap();
    assert_eq!(at, None, "the location still names it");

    // A take a does not take in (it holds dev2 at another location, 12, registered
    // meanwhile) and the removal of its own dev2 at 12: both removals in one batch
    // leave no record.
    b.write(&[("dev2".into(), Change::Claim(record("dev2", 22)))])
        .unwrap();
    let taken: Option<(String, Vec<u8>, String)> = redis_scripts::take()
        .key(redis_scripts::loc_key(22))
        .arg(22)
        .arg("a")
        .arg(redis_scripts::PREFIX)
        .invoke(&mut c)
        .unwrap();
    assert_eq!(taken.map(|t| t.2).as_deref(), Some("b"));
    assert_eq!(owner(&redis, "dev2").as_deref(), Some("a"));
    write_batch(&redis, "a", vec![remove("dev2", 22), remove("dev2", 12)]);
    assert!(
        !exists("dev2"),
        "the record a took and did not take in stays"
    );

    // Within one batch, an Update of an older registration (a's dev3 at 13, on one
    // shard) does not overwrite the claim of the newer one (dev3 at 23, on another),
    // nor does the older one's removal take the newer one's record.
    write_batch(
        &redis,
        "a",
        vec![
            put("dev3", 13, true),
            put("dev3", 23, true),
            put("dev3", 13, false),
        ],
    );
    write_batch(&redis, "a", vec![remove("dev3", 13)]);
    let mut a = RedisStore::open(&redis.url(), "a").expect("node a");
    assert_eq!(owned(&mut a), [("dev3".into(), 23)]);
}

#[test]
fn redis_gone_fails_writes_and_they_succeed_when_it_returns() {
    let mut redis = Redis::start();
    let mut a = RedisStore::open(&redis.url(), "a").expect("node a");
    redis.kill();
    let batch = [("dev1".into(), Change::Claim(record("dev1", 5)))];
    assert!(a.write(&batch).is_err());
    redis.spawn();
    // The store connects again after its backoff (at most 2 s).
    let mut written = false;
    for _ in 0..50 {
        if a.write(&batch).is_ok() {
            written = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(written, "the write succeeds once Redis is back");
    assert_eq!(owned(&mut a), [("dev1".into(), 5)]);
}

/// One gateway on `redis` as node `node` with the external broker at `broker`.
fn node(redis: &Redis, broker: SocketAddr, node: &str) -> GatewayProc {
    let extra = format!(
        "[engine]\nshards = 2\n[store]\nkind = \"redis\"\nurl = \"{}\"\n[cluster]\nnode = \"{node}\"",
        redis.url()
    );
    GatewayProc::start(Broker::External(broker), &extra)
}

fn register(sock: &UdpSocket, gw: SocketAddr, ep: &str) -> String {
    let register = Req::con(codes::POST, 1, &[1])
        .path(&["rd"])
        .uint(opt::CONTENT_FORMAT, 40)
        .query(&[&format!("ep={ep}"), "lt=300", "lwm2m=1.0", "b=U"])
        .body(b"</1/0>,</3/0>");
    let reply = exchange(sock, gw, &register.bytes());
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.code, codes::CREATED);
    location(&m).expect("a location")
}

fn update(sock: &UdpSocket, gw: SocketAddr, location: &str, mid: u16) -> u8 {
    let update = Req::con(codes::POST, mid, &[9]).path(&["rd", location]);
    let reply = exchange(sock, gw, &update.bytes());
    Message::parse(&reply).unwrap().code
}

#[test]
fn a_restarted_node_on_redis_serves_its_devices_on() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    let mut gw = node(&redis, broker.addr(), "n1");
    let devices: Vec<(UdpSocket, String)> = (0..10)
        .map(|i| {
            let s = socket([127, 0, 0, 1], WAIT);
            let l = register(&s, gw.udp, &format!("r{i}"));
            (s, l)
        })
        .collect();
    let status = gw.stop();
    assert!(status.success(), "{status:?}\n{}", gw.log());
    for i in 0..10 {
        assert_eq!(owner(&redis, &format!("r{i}")).as_deref(), Some("n1"));
    }
    let gw2 = node(&redis, broker.addr(), "n1");
    assert_eq!(gw2.metrics().sum("lwm2m_store_restored", &[]), 10.0);
    for (i, (s, l)) in devices.iter().enumerate() {
        assert_eq!(update(s, gw2.udp, l, 50 + i as u16), codes::CHANGED, "{l}");
    }
}

/// A device that registered on node A and reaches node B at once, before node A's
/// writer put its record in Redis (its batch goes out within 100 ms): node B's take finds
/// nothing, asks once more after the batch interval and takes the registration over, so
/// the Update gets 2.04 (not 4.04 and a new registration).
#[test]
fn a_device_moved_right_after_registering_is_taken_over() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    let a = node(&redis, broker.addr(), "quick-a");
    let b = node(&redis, broker.addr(), "quick-b");
    for i in 0..5u16 {
        let ep = format!("quick{i}");
        let s = socket([127, 0, 0, 1], WAIT);
        let loc = register(&s, a.udp, &ep);
        let moved = socket([127, 0, 0, 1], WAIT);
        assert_eq!(update(&moved, b.udp, &loc, 60 + i), codes::CHANGED, "{ep}");
        assert_eq!(owner(&redis, &ep).as_deref(), Some("quick-b"), "{ep}");
    }
    let m = b.metrics();
    assert_eq!(m.sum("lwm2m_cluster_takeovers_total", &[]), 5.0);
    assert_eq!(m.sum("lwm2m_cluster_take_misses_total", &[]), 0.0);
    a.metrics_when(|m| m.sum("lwm2m_cluster_released_total", &[]) == 5.0);
}

/// A device that answers every request with 2.05 and `payload`, on its own thread,
/// until the socket is dropped by the end of the test (its read times out).
fn answer_requests(sock: UdpSocket, payload: &'static [u8]) -> std::thread::JoinHandle<usize> {
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let r = common::coap::Request::parse(&buf[..n]);
            let ack = r.ack(codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], payload);
            sock.send_to(&ack, from).unwrap();
            answered += 1;
        }
        answered
    })
}

/// Publishes `per_device` reads to each device and counts the final messages by reqID:
/// each exactly once, each a 2.05.
fn reads_answered_once(app: &mut common::app::App, devices: &[&str], per_device: usize) {
    let mut sent = std::collections::HashMap::new();
    for _ in 0..per_device {
        for ep in devices {
            let id = app.send(ep, "read", r#"{"path":"/3/0/0"}"#);
            sent.insert(id, *ep);
        }
    }
    let mut seen = std::collections::HashMap::<u32, usize>::new();
    while seen.len() < sent.len() {
        let (_, v) = app
            .mq
            .next_json(WAIT, |_, v| v["msgType"] == "read")
            .unwrap_or_else(|| panic!("{} of {} reads answered", seen.len(), sent.len()));
        let id = v["reqID"].as_u32().expect("a reqID");
        assert_eq!(v["data"]["code"], "2.05", "{v:?}");
        *seen.entry(id).or_default() += 1;
    }
    // Anything more would be a second final message of some command.
    let late = app.mq.collect(usize::MAX, Duration::from_millis(500));
    let extra: Vec<_> = late
        .iter()
        .filter(|(t, _)| t.ends_with("/up/resp"))
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(extra.is_empty(), "more final messages: {extra:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert!(sent.keys().all(|id| seen.contains_key(id)));
}

#[test]
fn two_nodes_on_one_redis_act_as_one_gateway() {
    let mut redis = Redis::start();
    let broker = Mosquitto::start();
    let a = node(&redis, broker.addr(), "node-a");
    let b = node(&redis, broker.addr(), "node-b");
    let mut app = common::app::App::new(&a, "cluster-app");
    // Everything published about the devices, read at the end.
    let mut watch =
        common::mqtt_client::MqttClient::subscriber(a.mqtt, "cluster-watch", "lwm2m/+/up/#", 0);
    let names = ["m0", "m1", "m2"];
    // Registered on node A.
    let mut locations = Vec::new();
    for ep in names {
        let s = socket([127, 0, 0, 1], WAIT);
        locations.push(register(&s, a.udp, ep));
        app.mq
            .next_json(WAIT, |_, v| {
                v["msgType"] == "register" && v["data"]["ep"] == ep
            })
            .expect("the register message");
    }
    // Other nodes find a registration once node A's writer wrote it (within 100 ms).
    let deadline = std::time::Instant::now() + WAIT;
    while names.iter().any(|ep| owner(&redis, ep).is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "node A's records in Redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each moved to node B: a new address, the same location: 2.04 and an update message.
    let mut responders = Vec::new();
    for (ep, loc) in names.iter().zip(&locations) {
        let s = socket([127, 0, 0, 1], WAIT);
        assert_eq!(update(&s, b.udp, loc, 40), codes::CHANGED, "{ep}");
        let (t, v) = app
            .mq
            .next_json(WAIT, |_, v| v["msgType"] == "update")
            .expect("the update message");
        assert_eq!(t, format!("lwm2m/{ep}/up/update"));
        assert_eq!(v["data"]["ep"], *ep);
        responders.push(answer_requests(s, b"maker"));
    }
    // Node A let them go (told by B through Redis); B holds them.
    a.metrics_when(|m| m.sum("lwm2m_cluster_released_total", &[]) == 3.0);
    let m = b.metrics();
    assert_eq!(m.sum("lwm2m_cluster_takeovers_total", &[]), 3.0);
    for ep in names {
        assert_eq!(owner(&redis, ep).as_deref(), Some("node-b"));
    }
    // The API of either node lists every device, with the node holding it.
    let c0 = socket([127, 0, 0, 1], WAIT);
    register(&c0, a.udp, "on-a");
    // Node B sees it once node A's writer wrote it (within 100 ms).
    let deadline = std::time::Instant::now() + WAIT;
    while owner(&redis, "on-a").is_none() {
        assert!(std::time::Instant::now() < deadline, "on-a in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    for gw in [&a, &b] {
        let (st, body) = common::http::request(
            gw.api,
            "GET",
            "/api/v5/gateways/lwm2m/clients?limit=100",
            Some(("admin", common::gateway::API_SECRET)),
            b"",
        );
        assert_eq!(st, 200, "{body}");
        let v = common::json(body);
        let mut held: Vec<(String, String)> = v["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|c| {
                let name = c["endpoint_name"].as_str().unwrap().to_string();
                (name, c["node"].as_str().unwrap().to_string())
            })
            .collect();
        held.sort();
        let want: Vec<(String, String)> = [
            ("m0", "node-b"),
            ("m1", "node-b"),
            ("m2", "node-b"),
            ("on-a", "node-a"),
        ]
        .iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect();
        assert_eq!(held, want);
    }
    // One client named through the other node.
    let (st, body) = common::http::request(
        a.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients/m1",
        Some(("admin", common::gateway::API_SECRET)),
        b"",
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(common::json(body)["node"], "node-b");
    // Commands: each answered exactly once.
    reads_answered_once(&mut app, &names, 20);
    // A command through the API of the node that does not hold the device: run by the
    // node that does, its response on MQTT once; waiting for it is refused on node A.
    let creds = Some(("admin", common::gateway::API_SECRET));
    let path = "/api/v5/gateways/lwm2m/clients/m1/read?path=/3/0/0&reqID=api-via-a";
    let (st, body) = common::http::request(a.api, "POST", path, creds, b"");
    assert_eq!(st, 204, "{body}");
    let (t, v) = app
        .mq
        .next_json(WAIT, |_, v| v["reqID"] == "api-via-a")
        .expect("the response of the API's command");
    assert_eq!(t, "lwm2m/m1/up/resp");
    assert_eq!(v["data"]["code"], "2.05", "{v:?}");
    assert_eq!(v["data"]["content"][0]["value"], "maker", "{v:?}");
    let late = app.mq.collect(usize::MAX, Duration::from_millis(500));
    assert!(
        late.iter().all(|(t, _)| !t.ends_with("/up/resp")),
        "a second response: {late:?}"
    );
    let (st, body) = common::http::request(a.api, "POST", &format!("{path}&wait=2s"), creds, b"");
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("node-b"), "{body}");
    let m = a.metrics();
    assert_eq!(m.sum("lwm2m_deregistrations_total", &[]), 0.0);

    // Redis gone: node B serves the devices it holds, says the store is unreachable, and
    // what changes meanwhile is written once Redis is back.
    redis.kill();
    let unreachable = || {
        let (_, body) = common::http::request(b.api, "GET", "/health", None, b"");
        body.contains(r#""store":"unreachable""#)
    };
    b.metrics_when(|_| unreachable());
    assert!(unreachable());
    reads_answered_once(&mut app, &names, 5);
    let late = socket([127, 0, 0, 1], WAIT);
    register(&late, b.udp, "late");
    redis.spawn();
    b.metrics_when(|m| m.sum("lwm2m_cluster_redis_up", &[]) == 1.0);
    let mut c = redis.connection();
    let deadline = std::time::Instant::now() + WAIT;
    while owner(&redis, "late").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(owner(&redis, "late").as_deref(), Some("node-b"));
    let (_, body) = common::http::request(b.api, "GET", "/health", None, b"");
    assert!(body.contains(r#""store":"ok""#), "{body}");
    let _: () = redis::cmd("PING").query(&mut c).unwrap();
    // No device was ended on either node: a move is not a de-registration.
    let all = watch.collect(usize::MAX, Duration::from_millis(500));
    let ends: Vec<_> = all
        .iter()
        .map(|(_, p)| common::json(p))
        .filter(|v| v["msgType"] == "deregister")
        .collect();
    assert!(ends.is_empty(), "{ends:?}");
    assert!(all.len() > 3 * 25, "{} messages", all.len());
    drop(responders);
}

#[test]
fn commands_reaching_a_node_that_does_not_hold_the_device_are_forwarded_to_its_node() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    // Wildcard mode: every node holds the one shared command filter, and the broker
    // hands each command to either node, whichever holds the device.
    let wildcard = |name: &str| {
        let extra = format!(
            "[engine]\nshards = 2\n[store]\nkind = \"redis\"\nurl = \"{}\"\n[cluster]\nnode = \"{name}\"",
            redis.url()
        );
        GatewayProc::start_with(
            Broker::External(broker.addr()),
            &extra,
            "subscribe = \"wildcard\"",
        )
    };
    let a = wildcard("fwd-a");
    let b = wildcard("fwd-b");
    let mut app = common::app::App::new(&a, "forward-app");
    let s = socket([127, 0, 0, 1], WAIT);
    register(&s, a.udp, "w0");
    app.mq
        .next_json(WAIT, |_, v| v["msgType"] == "register")
        .expect("the register message");
    let deadline = std::time::Instant::now() + WAIT;
    while owner(&redis, "w0").is_none() {
        assert!(std::time::Instant::now() < deadline, "w0 in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let device = answer_requests(s, b"maker");
    reads_answered_once(&mut app, &["w0"], 20);
    // Some reached node B, which forwarded them to node A.
    let sent = b.metrics().sum("lwm2m_cluster_forwards_sent_total", &[]);
    let got = a
        .metrics()
        .sum("lwm2m_cluster_forwards_received_total", &[]);
    assert!(sent >= 1.0, "node B forwarded {sent}");
    assert_eq!(sent, got);
    drop(device);
}

/// Publishes reads for `devices` in turn (QoS 1: each reached the broker) until `stop`;
/// the reqIDs published, from 1 up.
fn publish_reads_until(
    broker: SocketAddr,
    devices: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u32, String)>> {
    std::thread::spawn(move || {
        let mut mq = common::mqtt_client::MqttClient::connect(broker, "handover-publisher", true)
            .expect("the publisher connects");
        let mut sent = Vec::new();
        let mut id = 0u32;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for ep in &devices {
                id += 1;
                let json =
                    format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"/3/0/0"}}}}"#);
                mq.publish(&format!("lwm2m/{ep}/dn/cmd"), json.as_bytes(), 1)
                    .expect("a command published");
                sent.push((id, ep.clone()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
}

/// Devices move between two nodes (per-endpoint subscriptions, shared by the nodes)
/// while an application publishes commands to them without pause: every command gets
/// exactly one final message, none is lost in a move. The node a device left keeps its
/// command subscription until the new node's SUBSCRIBE was acknowledged (the new node's
/// unsubscribe notice), so the broker always has a subscriber for the device's commands;
/// what the old node receives meanwhile it forwards to the new one.
#[test]
fn commands_published_while_devices_move_between_nodes_each_get_one_final_message() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    let a = node(&redis, broker.addr(), "hand-a");
    let b = node(&redis, broker.addr(), "hand-b");
    let mut app = common::app::App::new(&a, "handover-app");
    let names: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
    let mut devices = Vec::new();
    for ep in &names {
        let s = socket([127, 0, 0, 1], WAIT);
        let loc = register(&s, a.udp, ep);
        app.mq
            .next_json(WAIT, |_, v| {
                v["msgType"] == "register" && v["data"]["ep"] == ep.as_str()
            })
            .expect("the register message");
        devices.push((loc, answer_requests(s, b"maker")));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while names.iter().any(|ep| owner(&redis, ep).is_none()) {
        assert!(std::time::Instant::now() < deadline, "the records in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = publish_reads_until(broker.addr(), names.clone(), stop.clone());
    // Each device moves A → B → A → B (a new address each time: an Update there takes
    // the registration over), with commands arriving all along.
    let mut responders = Vec::new();
    let mut mid = 100;
    for (round, gw) in [b.udp, a.udp, b.udp].into_iter().enumerate() {
        for (ep, (loc, _)) in names.iter().zip(&devices) {
            let s = socket([127, 0, 0, 1], WAIT);
            mid += 1;
            assert_eq!(
                update(&s, gw, loc, mid),
                codes::CHANGED,
                "{ep}, move {round}"
            );
            responders.push(answer_requests(s, b"maker"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = publisher.join().expect("the publisher");
    assert!(sent.len() >= names.len() * 10, "{} commands", sent.len());
    // Every command: exactly one final message.
    let mut finals = std::collections::HashMap::<u32, Vec<String>>::new();
    let is_final = |t: &str, v: &simd_json::OwnedValue| {
        t.ends_with("/up/resp") && v["msgType"] == "read" && v["reqID"].as_u32().is_some()
    };
    while finals.len() < sent.len() {
        let Some((t, v)) = app.mq.next_json(WAIT, is_final) else {
            let missing: Vec<_> = sent
                .iter()
                .filter(|(id, _)| !finals.contains_key(id))
                .collect();
            panic!(
                "{} of {} commands without a final message: {missing:?}\nnode A:\n{}\nnode B:\n{}",
                missing.len(),
                sent.len(),
                a.log(),
                b.log()
            );
        };
        let id = v["reqID"].as_u32().expect("a reqID");
        let ep = t.split('/').nth(1).unwrap_or_default().to_string();
        let code = v["data"]["code"].as_str().unwrap_or("none").to_string();
        finals.entry(id).or_default().push(format!("{ep} {code}"));
    }
    let late = app.mq.collect(usize::MAX, Duration::from_millis(500));
    let extra: Vec<_> = late
        .iter()
        .filter(|(t, _)| t.ends_with("/up/resp"))
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(extra.is_empty(), "more final messages: {extra:?}");
    for (id, ep) in &sent {
        let got = &finals[id];
        assert_eq!(got.len(), 1, "reqID {id}: {got:?}");
        assert!(
            got[0].starts_with(&format!("{ep} ")),
            "reqID {id} for {ep}: {got:?}"
        );
    }
    // Answered by the device, or ended with an error because their device moved while
    // they were in flight (one final message still).
    let answered = finals.values().filter(|f| f[0].ends_with(" 2.05")).count();
    assert!(answered > 0, "none of {} answered: {finals:?}", sent.len());
    // Each node kept the subscription of every registration taken from it until the
    // other's was in place, and gave it up on the other's notice.
    let moved_from_a = 2.0 * names.len() as f64;
    let moved_from_b = names.len() as f64;
    a.metrics_when(|m| {
        m.sum("lwm2m_cluster_handovers_kept_total", &[]) == moved_from_a
            && m.sum("lwm2m_cluster_handovers_confirmed_total", &[]) == moved_from_a
            && m.sum("lwm2m_cluster_handovers_pending", &[]) == 0.0
    });
    b.metrics_when(|m| {
        m.sum("lwm2m_cluster_handovers_kept_total", &[]) == moved_from_b
            && m.sum("lwm2m_cluster_handovers_confirmed_total", &[]) == moved_from_b
            && m.sum("lwm2m_cluster_unsubscribes_sent_total", &[]) == moved_from_a
    });
    assert_eq!(
        a.metrics()
            .sum("lwm2m_cluster_handovers_timed_out_total", &[]),
        0.0
    );
    let forwarded = a.metrics().sum("lwm2m_cluster_forwards_sent_total", &[])
        + b.metrics().sum("lwm2m_cluster_forwards_sent_total", &[]);
    eprintln!(
        "{} commands, {answered} answered by the device, {forwarded} forwarded by a node that had let the device go",
        sent.len()
    );
    drop(devices);
    drop(responders);
}

/// A CON notification (Observe `seq`, token `token`, the value as text) as a device sends it.
fn notification(mid: u16, token: &[u8], seq: u32, value: &[u8]) -> Vec<u8> {
    use lwm2m_gateway::coap::{MessageWriter, MsgType};
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(value);
    buf
}

/// A device observed through node A that a balancer moves to node B keeping its address
/// (source-address affinity): its first datagram at B is a notification, not an Update.
/// B looks the address up in Redis, takes the registration over and delivers the
/// notification with the observation's reqID (acknowledged, not reset: a reset would end
/// the observation on the device); A lets it go.
#[test]
fn a_notification_reaching_another_node_first_takes_the_registration_over() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    let a = node(&redis, broker.addr(), "peer-a");
    let b = node(&redis, broker.addr(), "peer-b");
    let mut app = common::app::App::new(&a, "peer-app");
    let dev = socket([127, 0, 0, 1], WAIT);
    register(&dev, a.udp, "pdev");
    app.mq
        .next_json(WAIT, |_, v| v["msgType"] == "register")
        .expect("the register message");
    let id = app.send("pdev", "observe", r#"{"path":"/3/0/9"}"#);
    let req = common::coap::Request::parse(&common::coap::recv(&dev));
    let ack = req.ack(
        codes::CONTENT,
        &[(opt::OBSERVE, 1), (opt::CONTENT_FORMAT, 0)],
        b"90",
    );
    dev.send_to(&ack, a.udp).unwrap();
    app.mq
        .next_json(WAIT, |_, v| v["msgType"] == "observe")
        .expect("the observe response");
    // Node A's writer puts the record, with its observation and address, in Redis.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut c = redis.connection();
        let rec: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(redis_scripts::reg_key("pdev"))
            .arg("rec")
            .query(&mut c)
            .expect("HGET");
        let observed = rec
            .and_then(|r| lwm2m_gateway::lwm2m::record::decode(&r, 0).ok())
            .and_then(|ep| ep.session)
            .is_some_and(|s| s.observations.len() == 1);
        if observed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the observation in Redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Moved: the same address now reaches node B, with a notification.
    let reply = exchange(&dev, b.udp, &notification(700, &req.token, 2, b"89"));
    let m = Message::parse(&reply).unwrap();
    assert_eq!((m.mtype, m.mid), (lwm2m_gateway::coap::MsgType::Ack, 700));
    let (t, v) = app
        .mq
        .next_json(WAIT, |_, v| v["msgType"] == "notify")
        .expect("the notification on MQTT");
    assert_eq!(t, "lwm2m/pdev/up/notify");
    assert_eq!(v["reqID"].as_u32(), Some(id));
    assert_eq!(v["seqNum"].as_u32(), Some(2));
    assert_eq!(owner(&redis, "pdev").as_deref(), Some("peer-b"));
    let m = b.metrics();
    assert_eq!(m.sum("lwm2m_cluster_peer_takeovers_total", &[]), 1.0);
    a.metrics_when(|m| m.sum("lwm2m_cluster_released_total", &[]) == 1.0);
    // Node B serves it from now on: a read reaches the device there.
    let read = app.send("pdev", "read", r#"{"path":"/3/0/0"}"#);
    let req = common::coap::Request::parse(&common::coap::recv(&dev));
    dev.send_to(
        &req.ack(codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"maker"),
        b.udp,
    )
    .unwrap();
    let (_, v) = app
        .mq
        .next_json(WAIT, |_, v| v["msgType"] == "read")
        .expect("the read's answer");
    assert_eq!(
        (v["reqID"].as_u32(), &v["data"]["code"]),
        (Some(read), &"2.05".into())
    );
}

/// Responses from spoofed addresses (here 100 of 127.0.0.0/8) at a node sharing Redis
/// cost a bounded rate of lookups by address (1,000 a second per shard, a burst of as
/// many), and a real device moved to that node during the flood is still taken over by
/// its Update.
#[test]
fn spoofed_notifications_cost_a_bounded_rate_of_lookups() {
    let redis = Redis::start();
    let broker = Mosquitto::start();
    let a = node(&redis, broker.addr(), "flood-a");
    let b = node(&redis, broker.addr(), "flood-b");
    let dev = socket([127, 0, 0, 1], WAIT);
    let loc = register(&dev, a.udp, "real");
    let deadline = std::time::Instant::now() + WAIT;
    while owner(&redis, "real").is_none() {
        assert!(std::time::Instant::now() < deadline, "the record in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let spoofed: Vec<UdpSocket> = (0..100u8).map(|i| socket([127, 10, i, 7], WAIT)).collect();
    let started = std::time::Instant::now();
    let mut sent = 0u32;
    // 3,000 datagrams: well within the nodes' socket buffers, none lost before counted.
    for round in 0..30u32 {
        for (i, s) in spoofed.iter().enumerate() {
            let token = (round * 1_000 + i as u32).to_be_bytes();
            let n = notification((round * 100 + i as u32) as u16, &token, round, b"1");
            s.send_to(&n, b.udp).unwrap();
            sent += 1;
        }
        if round == 15 {
            assert_eq!(update(&dev, b.udp, &loc, 70), codes::CHANGED);
        }
    }
    let m = b.metrics_when(|m| {
        let seen = m.sum("lwm2m_cluster_peer_lookups_total", &[])
            + m.sum("lwm2m_cluster_peer_limited_total", &[])
            + m.sum("lwm2m_cluster_peer_waits_total", &[]);
        seen >= f64::from(sent)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let lookups = m.sum("lwm2m_cluster_peer_lookups_total", &[]);
    // Two shards, each at most its burst and 1,000 a second after it.
    let bound = 2.0 * (1_000.0 + 1_000.0 * elapsed);
    assert!(lookups <= bound, "{lookups} lookups in {elapsed:.1} s");
    assert!(lookups >= 1.0, "the spoofed responses were looked up");
    assert_eq!(m.sum("lwm2m_cluster_peer_takeovers_total", &[]), 0.0);
    assert_eq!(owner(&redis, "real").as_deref(), Some("flood-b"));
    assert_eq!(m.sum("lwm2m_cluster_takeovers_total", &[]), 1.0);
}
