//! Registrations made over DTLS, on a virtual clock: plain CoAP may neither replace
//! nor touch them (on the same shard or another), they move between shards with
//! their identity (NAT rebinding onto a new DTLS session), nothing for them is ever
//! handed to the driver as plain text, and a lost session queues their commands.

use super::harness::*;
use crate::coap::{codes, opt, MessageWriter, MsgType};
use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::CoreSettings;
use crate::lwm2m::PeerIdentity;
use std::sync::Arc;

fn psk(id: &str) -> PeerIdentity {
    PeerIdentity::Psk(id.into())
}

/// The policy of a PSK file's `identity:key[:patterns]` lines, as the gateway's PSK store
/// applies it: an identity may register its own name and the names its patterns match
/// (`*`: any run of characters). The store itself is tested with the DTLS server.
#[derive(Debug)]
struct PskLines(Vec<(String, Vec<String>)>);

impl crate::lwm2m::PskPolicy for PskLines {
    fn may_register(&self, identity: &str, endpoint: &str) -> bool {
        self.0.iter().any(|(id, patterns)| {
            id == identity && (endpoint == identity || patterns.iter().any(|p| glob(p, endpoint)))
        })
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|k| glob(tail, &name[head.len() + k..]))
        }
    }
}

fn with_psk_policy(mut s: CoreSettings, lines: &str) -> CoreSettings {
    let entries = lines
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let id = f.next()?.to_string();
            let _key = f.next()?;
            let patterns = f.next().map_or(Vec::new(), |p| {
                p.split(',')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            });
            Some((id, patterns))
        })
        .collect();
    s.dtls_psk = Some(Arc::new(PskLines(entries)));
    s
}

/// Registers `ep` over DTLS with `id` from `from` on `shard`; returns the location.
fn secure_register(
    h: &mut Harness,
    shard: usize,
    from: std::net::SocketAddr,
    id: &PeerIdentity,
    ep: &str,
) -> String {
    let r = h.secure(shard, from, id, &Req::register(ep, 1).bytes());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].code(), codes::CREATED);
    assert!(r[0].secure, "a reply to a DTLS request goes back encrypted");
    r[0].location()
}

fn ping(mid: u16) -> Vec<u8> {
    let mut b = Vec::new();
    MessageWriter::new(&mut b, MsgType::Con, codes::EMPTY, mid, &[]).finish();
    b
}

const READ: &str = r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#;
const TOPIC: &str = "lwm2m/dev1/dn/cmd";

#[test]
fn plain_register_cannot_replace_a_dtls_registration_on_the_same_shard() {
    let mut h = Harness::new(1, settings());
    let loc = secure_register(&mut h, 0, addr(1, 1), &psk("dev1"), "dev1");
    let published = h.published("up/resp").len();
    // Plain CoAP, another address, same name: refused, counted, nothing changes.
    let r = h.one(0, addr(9, 9), &Req::register("dev1", 7).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
    assert!(!r.secure);
    assert_eq!(h.cores[0].stats.forbidden, 1);
    assert_eq!(h.cores[0].stats.replaced, 0);
    assert_eq!(h.published("up/resp").len(), published);
    let dir = h.dir.by_name("dev1").unwrap();
    assert_eq!(Endpoint::location_str(dir.location), loc);
    assert!(h.dir.name_is_secure("dev1"));
    // The DTLS registration still works from its session.
    let r = h.secure(0, addr(1, 1), &psk("dev1"), &Req::update(&loc, 2).bytes());
    assert_eq!(r[0].code(), codes::CHANGED);
    // A new DTLS session of the device may register again (it rebooted).
    let loc2 = secure_register(&mut h, 0, addr(1, 2), &psk("dev1"), "dev1");
    assert_ne!(loc, loc2);
    assert_eq!(h.endpoints(), 1);
    // A plain registration may be replaced by a DTLS one, never the other way.
    h.one(0, addr(2, 1), &Req::register("dev2", 1).bytes());
    secure_register(&mut h, 0, addr(2, 2), &psk("dev2"), "dev2");
    assert!(h.dir.name_is_secure("dev2"));
    let r = h.one(0, addr(2, 1), &Req::register("dev2", 2).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
}

#[test]
fn plain_register_cannot_replace_a_dtls_registration_on_another_shard() {
    let mut h = Harness::new(2, settings());
    let loc = secure_register(&mut h, 0, addr(1, 1), &psk("dev1"), "dev1");
    let published = h.mark();
    let r = h.one(1, addr(9, 9), &Req::register("dev1", 7).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
    assert_eq!(h.cores[1].stats.forbidden, 1);
    // No Evict went out: the DTLS registration stays where it was.
    assert_eq!(h.cores[0].endpoints().len(), 1);
    assert_eq!(h.cores[1].endpoints().len(), 0);
    assert_eq!(h.cores[0].stats.replaced, 0);
    assert!(h.published_since(published).is_empty());
    let e = h.dir.by_name("dev1").unwrap();
    assert_eq!((e.shard, h.dir.name_is_secure("dev1")), (0, true));
    // A plain Update of its location from another shard does not move it either.
    let r = h.one(1, addr(9, 9), &Req::update(&loc, 8).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
    assert_eq!(h.cores[0].endpoints().len(), 1);
    assert_eq!(h.cores[0].stats.takeovers_out, 0);
    // Nor a plain De-register.
    let del = Req::new(codes::DELETE, &format!("/rd/{loc}"), 9).bytes();
    assert_eq!(h.one(1, addr(9, 9), &del).code(), codes::FORBIDDEN);
    assert_eq!(h.endpoints(), 1);
    // The device over DTLS, landing on shard 1, replaces its own registration.
    secure_register(&mut h, 1, addr(1, 3), &psk("dev1"), "dev1");
    assert_eq!(h.cores[0].endpoints().len(), 0);
    assert_eq!(h.cores[1].endpoints().len(), 1);
}

#[test]
fn a_dtls_registration_moves_across_shards_with_its_identity() {
    let s = with_psk_policy(
        settings(),
        "dev1:00112233\nother:00112233\nfleet:00112233:dev*\n",
    );
    let mut h = Harness::new(2, s);
    let loc = secure_register(&mut h, 0, addr(1, 1), &psk("dev1"), "dev1");
    let updates = h.published("up/update").len();
    // NAT rebinding: a new handshake from a new address lands on shard 1.
    let r = h.secure(1, addr(7, 7), &psk("dev1"), &Req::update(&loc, 2).bytes());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].code(), codes::CHANGED);
    assert_eq!(r[0].to, addr(7, 7));
    assert!(r[0].secure);
    assert_eq!(h.cores[0].endpoints().len(), 0);
    assert_eq!(h.cores[1].endpoints().len(), 1);
    assert_eq!(h.published("up/update").len(), updates + 1);
    let e = h.dir.by_name("dev1").unwrap();
    assert_eq!((e.shard, h.dir.name_is_secure("dev1")), (1, true));
    // Commands follow it, encrypted.
    let req = h.command(1, TOPIC, READ);
    assert_eq!(req.len(), 1);
    assert_eq!((req[0].to, req[0].secure), (addr(7, 7), true));
    // A retransmission of that Update arriving late at shard 0 from the new
    // address is answered from the cache, encrypted.
    let r = h.secure(0, addr(7, 7), &psk("dev1"), &Req::update(&loc, 2).bytes());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].code(), codes::CHANGED);
    assert!(r[0].secure);
    assert_eq!(h.cores[1].endpoints().len(), 1);
    // Another identity, even one holding a valid key, may not act for it.
    let r = h.secure(0, addr(8, 8), &psk("other"), &Req::update(&loc, 3).bytes());
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    assert_eq!(h.published("up/update").len(), updates + 1);
    // An identity whose patterns cover the name may.
    let r = h.secure(0, addr(8, 9), &psk("fleet"), &Req::update(&loc, 4).bytes());
    assert_eq!(r[0].code(), codes::CHANGED);
    assert_eq!(h.published("up/update").len(), updates + 2);
    // Plain CoAP still may not.
    let r = h.one(1, addr(9, 9), &Req::update(&loc, 5).bytes());
    assert_eq!(r.code(), codes::FORBIDDEN);
}

#[test]
fn plain_datagrams_from_a_dtls_peer_address_are_not_its_own() {
    let mut h = Harness::new(1, settings());
    let dev = addr(1, 1);
    secure_register(&mut h, 0, dev, &psk("dev1"), "dev1");
    let req = h.command(0, TOPIC, READ);
    assert_eq!(req.len(), 1);
    assert!(req[0].secure);
    let m = req[0].msg();
    // A plain (spoofed) ACK with the right MID and token does not complete it.
    let mut ack = Vec::new();
    let mut w = MessageWriter::new(&mut ack, MsgType::Ack, codes::CONTENT, m.mid, m.token);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(b"forged");
    let mark = h.mark();
    assert!(h.exchange(0, dev, &ack).is_empty());
    assert!(h.published_since(mark).is_empty());
    // Nor is a plain ping or Register from that address answered.
    assert!(h.exchange(0, dev, &ping(77)).is_empty());
    assert!(h
        .exchange(0, dev, &Req::register("dev9", 3).bytes())
        .is_empty());
    assert_eq!(h.cores[0].stats.plain_from_secure_peer, 3);
    // The same ACK over the session completes the command.
    assert!(h.secure(0, dev, &psk("dev1"), &ack).is_empty());
    let resp = h.published_since(mark);
    assert_eq!(resp.len(), 1, "{resp:?}");
}

#[test]
fn a_lost_session_queues_commands_until_a_new_session_speaks() {
    let mut s = with_psk_policy(settings(), "dev1:0011\nstranger:0011\n");
    s.queue_ttl_ms = 60_000;
    s.max_queued = 2;
    let mut h = Harness::new(1, s);
    let dev = addr(1, 1);
    let loc = secure_register(&mut h, 0, dev, &psk("dev1"), "dev1");
    // The session idles out (the driver's DTLS server says so).
    assert!(h.session_closed(0, dev).is_empty());
    assert_eq!(h.cores[0].stats.dtls_sessions_lost, 1);
    // Commands wait: nothing is handed to the driver for the device.
    let mark = h.mark();
    assert!(h.command(0, TOPIC, READ).is_empty());
    assert!(h
        .command(
            0,
            TOPIC,
            r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/2"}}"#
        )
        .is_empty());
    assert!(h.published_since(mark).is_empty());
    // Over max_queued: the usual queue-full error.
    h.command(
        0,
        TOPIC,
        r#"{"reqID":3,"msgType":"read","data":{"path":"/3/0/3"}}"#,
    );
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert!(format!("{:?}", p[0].1).contains("queue"), "{p:?}");
    // A command that may not wait (mheaders.ttl = 0) fails at once.
    let mark = h.mark();
    let now = r#"{"reqID":4,"msgType":"read","data":{"path":"/3/0/4"},"mheaders":{"ttl":0}}"#;
    assert!(h.command(0, TOPIC, now).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert!(
        format!("{:?}", p[0].1).contains("DTLS session ended"),
        "{p:?}"
    );
    // Another identity at the device's address (say, the NAT gave the port to
    // another device) does not make it reachable.
    let r = h.secure(0, dev, &psk("stranger"), &ping(5));
    assert_eq!(r.len(), 1, "only the ping's Reset: {r:?}");
    assert!(r[0].secure);
    let lost = |h: &Harness| {
        let t = h.cores[0].endpoints();
        t.get(t.find_name("dev1").unwrap()).unwrap().session_lost
    };
    assert!(lost(&h));
    // The device's new session sends its Update: 2.04, then the queued commands,
    // all encrypted.
    let r = h.secure(0, dev, &psk("dev1"), &Req::update(&loc, 6).bytes());
    assert_eq!(r[0].code(), codes::CHANGED);
    let requests: Vec<_> = r[1..]
        .iter()
        .filter(|r| r.msg().code == codes::GET)
        .collect();
    assert_eq!(requests.len(), 1, "NSTART 1: the first queued read {r:?}");
    assert!(r.iter().all(|r| r.secure && r.to == dev));
    assert!(!lost(&h));
    // The queue TTL still applies to what waits.
    h.session_closed(0, dev);
    let mark = h.mark();
    h.command(
        0,
        TOPIC,
        r#"{"reqID":5,"msgType":"read","data":{"path":"/3/0/5"}}"#,
    );
    h.advance(61_000);
    let expired: Vec<_> = h
        .published_since(mark)
        .into_iter()
        .filter(|(_, v)| format!("{v:?}").contains("expired"))
        .collect();
    assert!(!expired.is_empty(), "{:?}", h.published_since(mark));
}

#[test]
fn a_session_moved_by_its_connection_id_takes_its_registration_along() {
    let s = with_psk_policy(settings(), "dev1:0011\n");
    let mut h = Harness::new(1, s);
    let (old, new) = (addr(1, 1), addr(2, 2));
    secure_register(&mut h, 0, old, &psk("dev1"), "dev1");
    h.store.clear();
    h.session_moved(0, old, new);
    assert_eq!(h.cores[0].stats.rebinds, 1);
    // The stored record follows: a restart finds the device at its new address.
    let stored = h.store.iter().rev().find_map(|(_, c)| match c {
        crate::lwm2m::StoreChange::Put { record, .. } => {
            Some(crate::lwm2m::record::decode(record, 0).expect("record"))
        }
        _ => None,
    });
    assert_eq!(stored.expect("a record written").peer, new);
    // A command goes to the new address at once, encrypted, before any Update.
    let r = h.command(0, TOPIC, READ);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].to, r[0].secure), (new, true));
    // A move from an address with no registration, or of a plain one, changes nothing.
    h.session_moved(0, addr(3, 3), addr(4, 4));
    let plain = addr(5, 5);
    assert_eq!(
        h.exchange(0, plain, &Req::register("dev2", 9).bytes())[0].code(),
        codes::CREATED
    );
    h.session_moved(0, plain, addr(6, 6));
    assert_eq!(h.cores[0].stats.rebinds, 1);
}

#[test]
fn datagrams_for_a_dtls_registration_are_marked_even_without_a_dtls_input() {
    // Commands (MQTT input), retransmissions (timers) and notifications' ACKs all
    // leave the core marked for encryption when they go to a DTLS registration.
    let mut h = Harness::new(1, settings());
    let dev = addr(1, 1);
    secure_register(&mut h, 0, dev, &psk("dev1"), "dev1");
    let req = h.command(0, TOPIC, READ);
    assert!(req[0].secure);
    let re = h.advance_collect(4_000);
    assert!(!re.is_empty(), "a retransmission");
    assert!(re.iter().all(|r| r.secure));
    // A plain registration's traffic is plain.
    h.one(0, addr(2, 2), &Req::register("dev2", 1).bytes());
    let req = h.command(0, "lwm2m/dev2/dn/cmd", READ);
    assert_eq!(req.len(), 1);
    assert!(!req[0].secure);
}

#[test]
fn certificate_cn_must_be_the_endpoint_name() {
    let mut s = settings();
    s.dtls_require_cn = true;
    let mut h = Harness::new(1, s);
    let cert = |cn: &str| PeerIdentity::Cert { cn: cn.into() };
    let loc = secure_register(&mut h, 0, addr(1, 1), &cert("urn:dev:1"), "urn:dev:1");
    assert_eq!(h.published("up/resp").len(), 1);
    // A certificate for another name may not register this one ...
    let r = h.secure(
        0,
        addr(2, 2),
        &cert("urn:dev:2"),
        &Req::register("urn:dev:1", 1).bytes(),
    );
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    let r = h.secure(
        0,
        addr(2, 2),
        &cert("urn:dev:2"),
        &Req::register("urn:dev:3", 2).bytes(),
    );
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    // ... nor update it.
    let r = h.secure(
        0,
        addr(2, 2),
        &cert("urn:dev:2"),
        &Req::update(&loc, 3).bytes(),
    );
    assert_eq!(r[0].code(), codes::FORBIDDEN);
    assert_eq!(h.published("up/resp").len(), 1);
    assert!(h.published("up/update").is_empty());
    assert_eq!(h.cores[0].stats.forbidden, 3);
    // Without a CA (no CN requirement) any certificate may register any name.
    let mut h = Harness::new(1, settings());
    secure_register(&mut h, 0, addr(1, 1), &cert("x"), "urn:dev:1");
}

#[test]
fn a_register_held_for_authentication_keeps_its_dtls_identity() {
    let s = settings();
    s.auth.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut h = Harness::new(1, s);
    assert!(h
        .secure(
            0,
            addr(1, 1),
            &psk("dev1"),
            &Req::register("dev1", 1).bytes()
        )
        .is_empty());
    let t = h.auth[0].1;
    let r = h.auth_answer(0, t, true);
    assert_eq!(r[0].code(), codes::CREATED);
    assert!(r[0].secure);
    assert!(h.dir.name_is_secure("dev1"));
    // So plain CoAP may not replace it (asked before authentication is).
    let r = h.exchange(0, addr(9, 9), &Req::register("dev1", 2).bytes());
    assert_eq!(r[0].code(), codes::FORBIDDEN);
}

/// Each listener admits its own registrations: DTLS ones count against the DTLS
/// listener's `max_connections` and `max_conn_rate`, plain ones against UDP's.
#[test]
fn each_listener_has_its_own_limits() {
    let s = CoreSettings {
        max_connections: 3,
        dtls_max_connections: 2,
        max_conn_rate: 0,
        dtls_max_conn_rate: 0,
        ..settings()
    };
    let mut h = Harness::new(2, s);
    for i in 0..2u8 {
        let name = format!("s{i}");
        secure_register(
            &mut h,
            i as usize,
            addr(1, 10 + i as u16),
            &psk(&name),
            &name,
        );
    }
    assert_eq!(h.dir.secure_len(), 2);
    // The DTLS listener is full (across both shards); UDP is not.
    let r = h.secure(0, addr(1, 20), &psk("s2"), &Req::register("s2", 1).bytes());
    assert_eq!(r[0].code(), codes::SERVICE_UNAVAILABLE);
    for i in 0..3u16 {
        let r = h.one(
            1,
            addr(2, 30 + i),
            &Req::register(&format!("p{i}"), 1).bytes(),
        );
        assert_eq!(r.code(), codes::CREATED, "plain {i}");
    }
    let r = h.one(0, addr(2, 40), &Req::register("p3", 1).bytes());
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    // A DTLS registration re-registering itself is no new connection.
    let r = h.secure(1, addr(1, 11), &psk("s1"), &Req::register("s1", 2).bytes());
    assert_eq!(r[0].code(), codes::CREATED);
    // One leaving makes room for another over DTLS only.
    let loc = h
        .dir
        .by_name("s0")
        .map(|e| Endpoint::location_str(e.location))
        .unwrap();
    let del = Req::new(codes::DELETE, &format!("/rd/{loc}"), 3).bytes();
    let r = h.secure(0, addr(1, 10), &psk("s0"), &del);
    assert_eq!(r[0].code(), codes::DELETED);
    assert_eq!(h.dir.secure_len(), 1);
    let r = h.secure(0, addr(1, 20), &psk("s2"), &Req::register("s2", 4).bytes());
    assert_eq!(r[0].code(), codes::CREATED);
    assert_eq!(h.dir.secure_len(), 2);
    // Expiry releases them too.
    h.advance(86_400_000);
    assert_eq!(h.dir.secure_len(), 0);
    assert!(h.dir.is_empty());
}

/// A listener's `max_conn_rate` bucket is its own.
#[test]
fn each_listener_has_its_own_registration_rate() {
    let s = CoreSettings {
        max_conn_rate: 1,
        dtls_max_conn_rate: 1,
        ..settings()
    };
    let mut h = Harness::new(1, s);
    secure_register(&mut h, 0, addr(1, 10), &psk("s0"), "s0");
    let r = h.secure(0, addr(1, 11), &psk("s1"), &Req::register("s1", 1).bytes());
    assert_eq!(r[0].code(), codes::SERVICE_UNAVAILABLE, "DTLS bucket empty");
    let r = h.one(0, addr(2, 10), &Req::register("p0", 1).bytes());
    assert_eq!(r.code(), codes::CREATED, "the UDP bucket is untouched");
    let r = h.one(0, addr(2, 11), &Req::register("p1", 1).bytes());
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
}
