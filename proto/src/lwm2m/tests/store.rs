//! The store's records on a virtual clock: every registration shape round-trips through
//! `record::encode`/`decode`, the core writes a record for each change of what it holds
//! and removes it when the registration ends, and a new core fed the records (a restart)
//! serves the devices on: Updates to old locations, notifications of old observations
//! with their commands' reqID, commands, and lifetimes that ran out while it was down.

use super::harness::*;
use crate::coap::{codes, opt, MessageWriter, MsgType};
use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::record::{self, RecordError};
use crate::lwm2m::{PeerIdentity, StoreChange};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Unix ms of the first process's clock zero.
const EPOCH_1: u64 = 1_700_000_000_000;

fn settings_at(epoch: u64) -> crate::lwm2m::CoreSettings {
    crate::lwm2m::CoreSettings {
        clock_epoch_ms: epoch,
        ..settings()
    }
}

/// The store as a writer keeps it: the changes of every shard applied in order, a
/// removal only taking the record of its own location.
fn apply(store: &mut HashMap<String, (u64, Vec<u8>)>, changes: &[(usize, StoreChange)]) {
    for (_, c) in changes {
        match c {
            StoreChange::Put {
                name,
                location,
                record,
                ..
            } => {
                store.insert(name.to_string(), (*location, record.clone()));
            }
            StoreChange::Remove { name, location } => {
                if store.get(&**name).is_some_and(|(l, _)| l == location) {
                    store.remove(&**name);
                }
            }
        }
    }
}

fn stored(h: &Harness) -> HashMap<String, (u64, Vec<u8>)> {
    let mut s = HashMap::new();
    apply(&mut s, &h.store);
    s
}

/// The device's piggybacked answer to `req`.
fn answer(req: &Reply, code: u8, cf: Option<u16>, payload: &[u8], observe: Option<u32>) -> Vec<u8> {
    let m = req.msg();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(cf) = cf {
        w.option_uint(opt::CONTENT_FORMAT, cf as u32);
    }
    w.payload(payload);
    buf
}

fn notification(mid: u16, token: &[u8], seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Non, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(payload);
    buf
}

fn register(h: &mut Harness, from: SocketAddr, ep: &str, query: &[&str], body: &[u8]) -> String {
    let mut r = Req::new(codes::POST, "/rd", 1).q(&format!("ep={ep}"));
    for q in query {
        r = r.q(q);
    }
    let r = h.one(0, from, &r.body(body).bytes());
    assert_eq!(r.code(), codes::CREATED, "{r:?}");
    r.location()
}

/// Observes `path` of `ep` (at `from`) with `reqID`; the device accepts with Observe 5.
/// Returns the observation's token.
fn observe(h: &mut Harness, ep: &str, from: SocketAddr, req_id: u32, path: &str) -> Vec<u8> {
    let cmd = format!(r#"{{"reqID":{req_id},"msgType":"observe","data":{{"path":"{path}"}}}}"#);
    let sent = h.command(0, &format!("lwm2m/{ep}/dn/cmd"), &cmd);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let token = sent[0].msg().token.to_vec();
    h.datagram(
        0,
        from,
        &answer(&sent[0], codes::CONTENT, Some(0), b"17", Some(5)),
    );
    token
}

/// Encodes, decodes and encodes again: the same bytes, and the decoded endpoint is the
/// encoded one (on a clock whose zero is `epoch_2`, its times moved by the difference).
fn round_trip(ep: &Endpoint, epoch_1: u64, epoch_2: u64) -> Endpoint {
    let mut a = Vec::new();
    record::encode(ep, epoch_1, &mut a);
    let back = record::decode(&a, epoch_2).expect("a record the core wrote decodes");
    let mut b = Vec::new();
    record::encode(&back, epoch_2, &mut b);
    assert_eq!(a, b, "re-encoding a decoded record gives the same bytes");
    assert_eq!(back.name, ep.name);
    assert_eq!(back.location, ep.location);
    assert_eq!(back.peer, ep.peer);
    assert_eq!(back.lifetime_s, ep.lifetime_s);
    assert_eq!(back.expires_ms + epoch_2, ep.expires_ms + epoch_1);
    assert_eq!(back.mountpoint, ep.mountpoint);
    assert_eq!(back.params, ep.params);
    assert_eq!(back.objects, ep.objects);
    assert_eq!(back.queue_mode, ep.queue_mode);
    assert_eq!(back.secure, ep.secure);
    assert_eq!(back.session_lost, ep.secure, "no DTLS session survives");
    assert_eq!(back.lane, ep.lane);
    let obs = |e: &Endpoint| e.session.as_ref().map_or(0, |s| s.observations.len());
    assert_eq!(obs(&back), obs(ep));
    if let (Some(x), Some(y)) = (&back.session, &ep.session) {
        for (o, p) in x.observations.iter().zip(&y.observations) {
            assert_eq!((o.token, o.path, o.last_seq), (p.token, p.path, p.last_seq));
            assert_eq!(o.cmd.echo, p.cmd.echo);
            assert_eq!(o.cmd.op, p.cmd.op);
            assert_eq!(o.cmd.paths, p.cmd.paths);
            assert_eq!(o.cmd.payload, p.cmd.payload);
            assert_eq!(o.cmd.accept, p.cmd.accept);
            assert!(x.queue.is_empty() && x.inflight.is_empty());
        }
    }
    back
}

fn endpoint<'h>(h: &'h Harness, name: &str) -> &'h Endpoint {
    h.cores
        .iter()
        .find_map(|c| {
            let slot = c.endpoints().find_name(name)?;
            c.endpoints().get(slot)
        })
        .expect("registered")
}

#[test]
fn every_registration_shape_round_trips() {
    let mut h = Harness::new(1, settings_at(EPOCH_1));
    h.now = 5_000;
    let v6: SocketAddr = "[2001:db8::7]:5683".parse().unwrap();
    // LwM2M 1.0 with an object list and an alternate path, over IPv6.
    register(
        &mut h,
        v6,
        "plain",
        &["lt=300", "lwm2m=1.0", "b=U", "sms=123"],
        b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3/0>",
    );
    // LwM2M 1.1 in queue mode, with a content format for composite operations.
    register(
        &mut h,
        addr(2, 5000),
        "sleepy",
        &["lt=60", "lwm2m=1.1", "b=U", "Q"],
        b"</>;rt=\"oma.lwm2m\";ct=112,</3/0>",
    );
    // No object list at all.
    register(&mut h, addr(3, 5000), "bare", &["lt=86400"], b"");
    // Over DTLS.
    let id = PeerIdentity::Psk("secure-id".into());
    let r = h.secure(0, addr(4, 5000), &id, &Req::register("secure", 1).bytes());
    assert_eq!(r[0].code(), codes::CREATED);
    // Observing one path, and a composite observation.
    let tok = observe(&mut h, "plain", v6, 77, "/3/0/13");
    let composite =
        r#"{"reqID":78,"msgType":"observe-composite","data":{"paths":["/3/0/9","/3/0/13"]}}"#;
    let sent = h.command(0, "lwm2m/sleepy/dn/cmd", composite);
    assert_eq!(sent.len(), 1, "{sent:?}");
    h.datagram(
        0,
        addr(2, 5000),
        &answer(&sent[0], codes::CONTENT, Some(112), b"\x80", Some(9)),
    );
    // The notification moves the Observe value on.
    h.datagram(0, v6, &notification(300, &tok, 6, b"18"));

    for name in ["plain", "sleepy", "bare", "secure"] {
        let ep = endpoint(&h, name);
        // A clock whose zero is earlier: every time stays representable.
        round_trip(ep, EPOCH_1, EPOCH_1 - 3_600_000);
    }
    assert!(endpoint(&h, "secure").secure);
    assert!(endpoint(&h, "sleepy").queue_mode);
    let observed = |n: &str| endpoint(&h, n).session.as_ref().unwrap().observations.len();
    assert_eq!((observed("plain"), observed("sleepy")), (1, 1));
    // What the core wrote for each is what it holds: the last record of each name.
    let s = stored(&h);
    assert_eq!(s.len(), 4);
    for (name, (location, bytes)) in &s {
        assert_eq!(record::location_of(bytes), Some(*location));
        let ep = record::decode(bytes, EPOCH_1).unwrap();
        assert_eq!((&*ep.name, ep.location), (name.as_str(), *location));
        // The address a take by address finds it at: none for a DTLS registration.
        let plain_peer = (!ep.secure).then_some(ep.peer);
        assert_eq!(record::plain_peer_of(bytes), plain_peer, "{name}");
    }
    assert_eq!(record::plain_peer_of(&s["secure"].1), None);
    assert!(record::plain_peer_of(&s["plain"].1).is_some());
    assert_eq!(record::plain_peer_of(b"\x01"), None);
    let plain = record::decode(&s["plain"].1, EPOCH_1).unwrap();
    let obs = &plain.session.as_ref().unwrap().observations[0];
    assert_eq!(obs.token.to_be_bytes().to_vec(), tok);
    assert!(obs.cmd.echo.members.contains("\"reqID\":77"));
    let sleepy = record::decode(&s["sleepy"].1, EPOCH_1).unwrap();
    let obs = &sleepy.session.as_ref().unwrap().observations[0];
    assert_eq!(obs.cmd.op, crate::lwm2m::command::Op::ObserveComposite);
    assert_eq!(obs.cmd.paths.len(), 2);
}

#[test]
fn records_follow_updates_and_ends() {
    let mut h = Harness::sharded(2, settings_at(EPOCH_1));
    let loc = register(&mut h, addr(1, 5000), "dev1", &["lt=300", "b=U"], b"</3/0>");
    register(&mut h, addr(2, 5000), "dev2", &["lt=300"], b"</3/0>");
    assert_eq!(stored(&h).len(), 2);
    // An Update from a new address on the other shard (a takeover) keeps one record,
    // with the new address and deadline.
    h.now = 100_000;
    let r = h.one(1, addr(9, 6000), &Req::update(&loc, 2).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    let s = stored(&h);
    let dev1 = record::decode(&s["dev1"].1, EPOCH_1).unwrap();
    assert_eq!(dev1.peer, addr(9, 6000));
    assert_eq!(dev1.expires_ms, 100_000 + 300_000);
    // A de-registration removes it; a registration replaced on another shard keeps
    // only the new one's, whichever shard's change is applied first.
    let r = h.one(
        1,
        addr(9, 6000),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 3).bytes(),
    );
    assert_eq!(r.code(), codes::DELETED);
    assert!(!stored(&h).contains_key("dev1"));
    let n = h.store.len();
    let loc2 = register(&mut h, addr(5, 7000), "dev2", &["lt=300"], b"</3/0>");
    let mut changes = h.store[n..].to_vec();
    assert!(changes
        .iter()
        .any(|(_, c)| matches!(c, StoreChange::Remove { name, .. } if &**name == "dev2")));
    changes.reverse();
    let mut reordered = stored(&h);
    apply(&mut reordered, &changes);
    for s in [stored(&h), reordered] {
        let dev2 = record::decode(&s["dev2"].1, EPOCH_1).unwrap();
        assert_eq!(Endpoint::location_str(dev2.location), loc2);
    }
    // Expiry removes it too.
    h.advance(400_000);
    assert!(stored(&h).is_empty(), "{:?}", stored(&h).keys());
}

#[test]
fn no_records_without_a_store() {
    let mut s = settings_at(EPOCH_1);
    s.store_records = false;
    let mut h = Harness::new(1, s);
    let loc = register(&mut h, addr(1, 5000), "dev1", &["lt=300"], b"</3/0>");
    h.one(0, addr(1, 5000), &Req::update(&loc, 2).bytes());
    observe(&mut h, "dev1", addr(1, 5000), 1, "/3/0/13");
    h.one(
        0,
        addr(1, 5000),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 3).bytes(),
    );
    assert!(h.store.is_empty(), "{:?}", h.store);
}

/// A second process: new cores, a new directory, a clock that starts at zero again
/// `down_ms` after the first one's `now`, fed the stored records.
fn restart(h: &Harness, shards: usize, down_ms: u64) -> Harness {
    let s = stored(h);
    let epoch_2 = EPOCH_1 + h.now + down_ms;
    let mut h2 = Harness::sharded(shards, settings_at(epoch_2));
    let mut names: Vec<_> = s.keys().cloned().collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let ep = record::decode(&s[name].1, epoch_2).unwrap();
        h2.restore(i % shards, ep);
    }
    h2.advance(0);
    h2
}

#[test]
fn a_restarted_core_serves_the_stored_registrations() {
    let mut h = Harness::sharded(2, settings_at(EPOCH_1));
    let dev = addr(1, 5000);
    let loc = register(
        &mut h,
        dev,
        "dev1",
        &["lt=300", "lwm2m=1.0", "b=U"],
        b"</3/0>",
    );
    register(&mut h, addr(2, 5000), "short", &["lt=20"], b"</3/0>");
    let token = observe(&mut h, "dev1", dev, 4242, "/3/0/13");
    h.now = 10_000;

    // Down for 30 s: "short" (lifetime 20 s from time 0) ran out meanwhile.
    let mut h2 = restart(&h, 2, 30_000);
    assert_eq!(h2.endpoints(), 1);
    let ends = h2.published("up/resp");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].0, "lwm2m/short/up/resp");
    assert_eq!(ends[0].1["msgType"], "deregister");
    assert_eq!(ends[0].1["data"]["reason"], "expired");
    assert!(
        h2.published("up/register").is_empty(),
        "a restore publishes nothing"
    );
    // The command filter is subscribed again.
    let (subs, _) = h2.subscriptions();
    assert!(subs.contains(&"lwm2m/dev1/dn/#".to_string()), "{subs:?}");
    // The restored record is not written back; the expired one is removed.
    assert!(h2
        .store
        .iter()
        .all(|(_, c)| matches!(c, StoreChange::Remove { name, .. } if &**name == "short")));

    // An Update to the old location, on the shard it was restored to and on another
    // (its datagrams land where the address hashes): 2.04.
    for shard in [0, 1] {
        let r = h2.one(shard, dev, &Req::update(&loc, 10 + shard as u16).bytes());
        assert_eq!(r.code(), codes::CHANGED);
    }
    // A notification with the old token: published with its command's reqID.
    let mark = h2.mark();
    h2.datagram(1, dev, &notification(500, &token, 6, b"19"));
    let p = h2.published_since(mark);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "lwm2m/dev1/up/notify");
    assert_eq!(p[0].1["reqID"], 4242);
    assert_eq!(p[0].1["data"]["content"][0]["value"], 19);
    // A command reaches the device.
    let mark = h2.mark();
    let sent = h2.command(
        0,
        "lwm2m/dev1/dn/cmd",
        r#"{"reqID":5,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    );
    assert_eq!(sent.len(), 1, "{sent:?} {:?}", h2.published_since(mark));
    assert_eq!(sent[0].to, dev);
    // And its lifetime keeps its deadline: 300 s after its Update at the new time 0.
    h2.advance(299_000);
    assert_eq!(h2.endpoints(), 1);
    h2.advance(2_000);
    assert_eq!(h2.endpoints(), 0);
}

#[test]
fn a_restored_dtls_registration_waits_for_a_session() {
    let mut h = Harness::new(1, settings_at(EPOCH_1));
    let id = PeerIdentity::Psk("secure-id".into());
    let r = h.secure(0, addr(4, 5000), &id, &Req::register("secure", 1).bytes());
    let loc = r[0].location();
    let mut h2 = restart(&h, 1, 1_000);
    // Plain CoAP may not touch it (from its own address it is not even answered).
    let r = h2.one(0, addr(5, 5000), &Req::update(&loc, 2).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
    // Its commands wait for a session; one from its identity brings them.
    let sent = h2.command(
        0,
        "lwm2m/secure/dn/cmd",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#,
    );
    assert!(sent.is_empty(), "{sent:?}");
    let r = h2.secure(0, addr(4, 5000), &id, &Req::update(&loc, 3).bytes());
    assert_eq!(r[0].code(), codes::CHANGED);
    assert!(
        r.iter().any(|x| x.msg().code == codes::GET && x.secure),
        "{r:?}"
    );
}

#[test]
fn a_record_twice_is_refused() {
    let mut h = Harness::new(1, settings_at(EPOCH_1));
    register(&mut h, addr(1, 5000), "dev1", &["lt=300"], b"</3/0>");
    let s = stored(&h);
    let mut h2 = Harness::sharded(2, settings_at(EPOCH_1));
    for shard in [0, 1] {
        let ep = record::decode(&s["dev1"].1, EPOCH_1).unwrap();
        h2.restore(shard, ep);
    }
    assert_eq!(h2.endpoints(), 1);
    assert_eq!(h2.cores[1].stats().restore_refused, 1);
}

#[test]
fn damaged_records_are_errors_never_panics() {
    let mut h = Harness::new(1, settings_at(EPOCH_1));
    register(&mut h, addr(1, 5000), "dev1", &["lt=300", "b=U"], b"</3/0>");
    observe(&mut h, "dev1", addr(1, 5000), 9, "/3/0/13");
    let bytes = stored(&h)["dev1"].1.clone();
    for n in 0..bytes.len() {
        assert!(record::decode(&bytes[..n], EPOCH_1).is_err(), "cut at {n}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        record::decode(&longer, EPOCH_1).unwrap_err(),
        RecordError::Trailing(1)
    );
    let mut other = bytes.clone();
    other[0] = 9;
    assert_eq!(
        record::decode(&other, EPOCH_1).unwrap_err(),
        RecordError::Version(9)
    );
    // Every byte flipped: an error or a record, never a panic nor a huge allocation.
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= x;
            let _ = record::decode(&b, EPOCH_1);
        }
    }
}
