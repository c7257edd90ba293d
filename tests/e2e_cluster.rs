//! The Redis store (`[store] kind = "redis"`) with Debian's `redis-server`, started by
//! the test: the scripts' ownership rules on a real Redis, and the real binary keeping
//! its registrations across a restart on it.

mod common;

use common::coap::{exchange, location, socket, Req};
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::redis_server::Redis;
use lwm2m_gateway::coap::{codes, opt, Message};
use lwm2m_gateway::store::{redis_scripts, Backend, Change, RedisStore};
use std::net::{SocketAddr, UdpSocket};
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
