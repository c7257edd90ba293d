//! Registration Interface state machine: register, update, de-register, expiry,
//! re-register, duplicates, NAT rebinding across shards, and every bad request.

use super::harness::*;
use crate::coap::{codes, opt, Message, MsgType};
use simd_json::prelude::*;

fn register(h: &mut Harness, shard: usize, ep: &str, port: u16, mid: u16) -> String {
    let r = h.one(shard, addr(1, port), &Req::register(ep, mid).bytes());
    assert_eq!(r.code(), codes::CREATED);
    r.location()
}

#[test]
fn register_publishes_and_subscribes() {
    let mut h = Harness::new(1, settings());
    let req = Req::register("dev1", 10)
        .q("imei=123")
        .q("password=hunter2")
        .body(b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3/0>");
    let r = h.one(0, addr(1, 5000), &req.bytes());
    let m = r.msg();
    assert_eq!(m.mtype, MsgType::Ack);
    assert_eq!(m.mid, 10);
    assert_eq!(m.token, &10u16.to_be_bytes());
    assert_eq!(m.code, codes::CREATED);
    assert_eq!(r.to, addr(1, 5000));
    let pubs = h.published("/up/resp");
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].0, "lwm2m/dev1/up/resp");
    let v = &pubs[0].1;
    assert_eq!(v["msgType"], "register");
    let d = &v["data"];
    assert_eq!(d["ep"], "dev1");
    assert_eq!(d["lt"], 300);
    assert_eq!(d["lwm2m"], "1.0");
    assert_eq!(d["b"], "U");
    assert_eq!(d["imei"], "123");
    assert_eq!(d["alternatePath"], "/lwm2m");
    assert_eq!(d["objectList"], simd_json::json!(["/1/0", "/3/0"]));
    assert!(d.get("password").is_none(), "secrets are never published");
    assert_eq!(h.subscriptions().0, vec!["lwm2m/dev1/dn/#".to_string()]);
    assert_eq!(h.dir.by_name("dev1").unwrap().shard, 0);
}

#[test]
fn register_without_payload_has_no_object_list_and_default_lifetime() {
    let mut h = Harness::new(1, settings());
    let r = h.one(
        0,
        addr(1, 1),
        &Req::new(codes::POST, "/rd", 1).q("ep=a").bytes(),
    );
    assert_eq!(r.code(), codes::CREATED);
    let d = &h.published("up/resp")[0].1["data"];
    assert_eq!(d["lt"], 86_400);
    assert!(d.get("objectList").is_none());
    assert!(d.get("alternatePath").is_none());
    assert!(d.get("lwm2m").is_none());
}

#[test]
fn lifetime_is_clamped() {
    let mut s = settings();
    s.lifetime_min_s = 60;
    s.lifetime_max_s = 3600;
    let mut h = Harness::new(1, s);
    h.one(
        0,
        addr(1, 1),
        &Req::new(codes::POST, "/rd", 1).q("ep=a").q("lt=5").bytes(),
    );
    h.one(
        0,
        addr(1, 2),
        &Req::new(codes::POST, "/rd", 1)
            .q("ep=b")
            .q("lt=99999")
            .bytes(),
    );
    h.one(
        0,
        addr(1, 3),
        &Req::new(codes::POST, "/rd", 1).q("ep=c").bytes(),
    );
    let lts: Vec<_> = h
        .published("up/resp")
        .iter()
        .map(|(_, v)| v["data"]["lt"].clone())
        .collect();
    assert_eq!(lts, vec![60, 3600, 3600]);
}

#[test]
fn update_refreshes_merges_and_publishes() {
    let mut h = Harness::new(1, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    h.advance(200_000);
    let r = h.one(
        0,
        addr(1, 1),
        &Req::update(&loc, 2).q("lt=400").q("b=UQ").bytes(),
    );
    assert_eq!(r.code(), codes::CHANGED);
    let ups = h.published("up/update");
    assert_eq!(ups[0].0, "lwm2m/dev1/up/update");
    let d = &ups[0].1["data"];
    assert_eq!(ups[0].1["msgType"], "update");
    assert_eq!(d["lt"], 400);
    assert_eq!(d["b"], "UQ");
    assert_eq!(d["lwm2m"], "1.0");
    assert_eq!(
        d["objectList"],
        simd_json::json!(["/1/0", "/3/0"]),
        "kept from register"
    );
    // The update re-armed the lifetime: 300 s after registration it is still there.
    h.advance(150_000);
    assert_eq!(h.endpoints(), 1);
    // An update with a new object list replaces it.
    h.one(
        0,
        addr(1, 1),
        &Req::update(&loc, 3).body(b"</3/0>,</5/0>").bytes(),
    );
    let ups = h.published("up/update");
    assert_eq!(
        ups[1].1["data"]["objectList"],
        simd_json::json!(["/3/0", "/5/0"])
    );
    // Expires 400 s after the last update.
    h.advance(399_000);
    assert_eq!(h.endpoints(), 1);
    h.advance(2_000);
    assert_eq!(h.endpoints(), 0);
    assert_eq!(h.cores[0].stats.expiries, 1);
}

#[test]
fn update_publish_condition() {
    let mut s = settings();
    s.update_needs_object_list = true;
    let mut h = Harness::new(1, s);
    let loc = register(&mut h, 0, "dev1", 1, 1);
    h.one(0, addr(1, 1), &Req::update(&loc, 2).bytes());
    assert!(h.published("up/update").is_empty());
    h.one(0, addr(1, 1), &Req::update(&loc, 3).body(b"</3/0>").bytes());
    assert_eq!(h.published("up/update").len(), 1);
}

#[test]
fn deregister_unsubscribes_and_forgets() {
    let mut h = Harness::new(1, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    let r = h.one(
        0,
        addr(1, 1),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 2).bytes(),
    );
    assert_eq!(r.code(), codes::DELETED);
    assert_eq!(h.endpoints(), 0);
    assert_eq!(h.subscriptions().1, vec!["lwm2m/dev1/dn/#".to_string()]);
    assert!(h.dir.by_name("dev1").is_none());
    // A retransmitted DELETE gets the same 2.02, a new one 4.04.
    let again = h.one(
        0,
        addr(1, 1),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 2).bytes(),
    );
    assert_eq!(again.code(), codes::DELETED);
    let fresh = h.one(
        0,
        addr(1, 1),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 3).bytes(),
    );
    assert_eq!(fresh.code(), codes::NOT_FOUND);
    let up = h.one(0, addr(1, 1), &Req::update(&loc, 4).bytes());
    assert_eq!(up.code(), codes::NOT_FOUND);
}

#[test]
fn expiry_removes_registration_and_subscription() {
    let mut h = Harness::new(1, settings());
    register(&mut h, 0, "dev1", 1, 1);
    h.advance(299_999);
    assert_eq!(h.endpoints(), 1);
    h.advance(1);
    assert_eq!(h.endpoints(), 0);
    assert_eq!(h.subscriptions().1.len(), 1);
    assert!(h.dir.is_empty());
}

#[test]
fn duplicate_con_gets_cached_reply_and_no_second_publish() {
    let mut h = Harness::new(1, settings());
    let req = Req::register("dev1", 77).bytes();
    let first = h.one(0, addr(1, 1), &req);
    let second = h.one(0, addr(1, 1), &req);
    assert_eq!(first.bytes, second.bytes, "byte-identical cached reply");
    assert_eq!(h.published("up/resp").len(), 1);
    assert_eq!(h.cores[0].stats.duplicates, 1);
    // Same for an update.
    let loc = first.location();
    let up = Req::update(&loc, 78).bytes();
    let a = h.one(0, addr(1, 1), &up);
    let b = h.one(0, addr(1, 1), &up);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(h.published("up/update").len(), 1);
    // After EXCHANGE_LIFETIME the same message ID is a new request.
    h.advance(248_000);
    h.one(0, addr(1, 1), &up);
    assert_eq!(h.published("up/update").len(), 2);
}

#[test]
fn non_request_gets_non_response() {
    let mut h = Harness::new(1, settings());
    let r = h.one(0, addr(1, 1), &Req::register("dev1", 5).non().bytes());
    let m = r.msg();
    assert_eq!(m.mtype, MsgType::Non);
    assert_eq!(m.code, codes::CREATED);
    assert_eq!(m.token, &5u16.to_be_bytes());
}

#[test]
fn reregistration_replaces_on_same_and_other_shard() {
    let mut h = Harness::new(2, settings());
    let loc1 = register(&mut h, 0, "dev1", 1, 1);
    // Same shard, new address (device rebooted).
    let loc2 = register(&mut h, 0, "dev1", 2, 1);
    assert_ne!(loc1, loc2);
    assert_eq!(h.endpoints(), 1);
    let old = h.one(0, addr(1, 1), &Req::update(&loc1, 9).bytes());
    assert_eq!(old.code(), codes::NOT_FOUND);
    // Other shard.
    let loc3 = register(&mut h, 1, "dev1", 3, 1);
    assert_eq!(h.endpoints(), 1);
    assert_eq!(h.cores[1].endpoints().len(), 1);
    assert_eq!(h.dir.by_name("dev1").unwrap().shard, 1);
    assert_eq!(
        h.dir
            .by_location(Endpoint::parse_location(loc2.as_bytes()).unwrap()),
        None
    );
    // Same mountpoint: the subscription is never dropped by the replacement.
    assert!(h.subscriptions().1.is_empty());
    assert_eq!(h.published("up/resp").len(), 3);
    let ok = h.one(1, addr(1, 3), &Req::update(&loc3, 2).bytes());
    assert_eq!(ok.code(), codes::CHANGED);
}

use crate::lwm2m::endpoint::Endpoint;

#[test]
fn nat_rebinding_same_shard_and_across_shards() {
    let mut h = Harness::new(2, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    // New port, same shard.
    let r = h.one(0, addr(1, 2), &Req::update(&loc, 2).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    assert_eq!(r.to, addr(1, 2));
    assert_eq!(h.cores[0].stats.rebinds, 1);
    // New address landing on shard 1: shard 1 takes the endpoint over.
    let r = h.one(1, addr(9, 7), &Req::update(&loc, 3).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    assert_eq!(r.to, addr(9, 7));
    assert_eq!(h.cores[0].endpoints().len(), 0);
    assert_eq!(h.cores[1].endpoints().len(), 1);
    assert_eq!(h.dir.by_name("dev1").unwrap().shard, 1);
    assert_eq!(
        h.dir
            .by_location(Endpoint::parse_location(loc.as_bytes()).unwrap()),
        Some(1)
    );
    assert_eq!(h.published("up/update").len(), 2);
    // A duplicate of that update from the new address is answered from the cache.
    let dup = h.one(1, addr(9, 7), &Req::update(&loc, 3).bytes());
    assert_eq!(dup.code(), codes::CHANGED);
    assert_eq!(h.published("up/update").len(), 2);
    // The lifetime timer moved along: it expires on shard 1.
    h.advance(301_000);
    assert_eq!(h.endpoints(), 0);
    assert!(h.dir.is_empty());
}

#[test]
fn deregister_from_new_address_on_other_shard() {
    let mut h = Harness::new(2, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    let r = h.one(
        1,
        addr(2, 2),
        &Req::new(codes::DELETE, &format!("/rd/{loc}"), 2).bytes(),
    );
    assert_eq!(r.code(), codes::DELETED);
    assert_eq!(h.endpoints(), 0);
    assert!(h.dir.is_empty());
}

#[test]
fn bad_requests_get_400_with_diagnostic() {
    let mut h = Harness::new(1, settings());
    let cases: Vec<(Req, &str)> = vec![
        (
            Req::new(codes::POST, "/rd", 1).q("lt=60"),
            "missing endpoint name",
        ),
        (
            Req::new(codes::POST, "/rd", 2).q("ep="),
            "empty endpoint name",
        ),
        (
            Req::new(codes::POST, "/rd", 3).q("ep=a").q("lwm2m=2.0"),
            "unsupported LwM2M version",
        ),
        (
            Req::new(codes::POST, "/rd", 4).q("ep=a").q("lwm2m=1.3"),
            "unsupported LwM2M version",
        ),
        (
            Req::new(codes::POST, "/rd", 5).q("ep=a").q("lt=abc"),
            "lifetime",
        ),
        (
            Req::new(codes::POST, "/rd", 6).q("ep=a").q("lt=-5"),
            "lifetime",
        ),
        (
            Req::new(codes::POST, "/rd", 7).q("ep=a/b"),
            "endpoint name contains",
        ),
        (
            Req::new(codes::POST, "/rd", 8).q("ep=a").body(b"garbage"),
            "does not start with",
        ),
        (
            Req::new(codes::POST, "/rd", 9)
                .q("ep=a")
                .body(&[0xff, 0xfe, 0x00]),
            "not UTF-8",
        ),
    ];
    for (req, diag) in cases {
        let mut req = req;
        // Pad the request so the whole diagnostic fits (replies never exceed requests).
        req = req.q(&format!("pad={}", "x".repeat(100)));
        let r = h.one(0, addr(1, 1), &req.bytes());
        assert_eq!(r.code(), codes::BAD_REQUEST, "{diag}");
        let text = String::from_utf8(r.msg().payload.to_vec()).unwrap();
        assert!(text.contains(diag), "{text:?} should contain {diag:?}");
    }
    assert_eq!(h.endpoints(), 0);
    assert!(h.mqtt.is_empty());
    assert_eq!(h.cores[0].stats.bad_requests, 9);
}

#[test]
fn versions_accepted() {
    let mut h = Harness::new(1, settings());
    for (i, v) in ["1.0", "1.0.2", "1", "1.1", "1.2"].iter().enumerate() {
        let req = Req::new(codes::POST, "/rd", i as u16)
            .q(&format!("ep=d{i}"))
            .q(&format!("lwm2m={v}"));
        assert_eq!(
            h.one(0, addr(1, i as u16), &req.bytes()).code(),
            codes::CREATED,
            "{v}"
        );
    }
}

#[test]
fn unknown_paths_methods_and_options() {
    let mut h = Harness::new(1, settings());
    assert_eq!(
        h.one(0, addr(1, 1), &Req::new(codes::POST, "/bs", 1).bytes())
            .code(),
        codes::NOT_FOUND
    );
    assert_eq!(
        h.one(0, addr(1, 1), &Req::new(codes::GET, "/rd", 2).bytes())
            .code(),
        codes::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        h.one(0, addr(1, 1), &Req::update("zz", 3).bytes()).code(),
        codes::NOT_FOUND
    );
    assert_eq!(
        h.one(0, addr(1, 1), &Req::update("1234", 4).bytes()).code(),
        codes::NOT_FOUND
    );
    let crit = Req::register("a", 5).opt(9, b"x");
    assert_eq!(
        h.one(0, addr(1, 1), &crit.bytes()).code(),
        codes::BAD_OPTION
    );
    // Elective unknown options are ignored; Uri-Host/Uri-Port are understood.
    let ok = Req::register("a", 6)
        .opt(opt::URI_HOST, b"h")
        .opt(opt::URI_PORT, &[0x16, 0x97])
        .opt(2048, b"e");
    assert_eq!(h.one(0, addr(1, 1), &ok.bytes()).code(), codes::CREATED);
}

#[test]
fn junk_resets_and_pings() {
    let mut h = Harness::new(1, settings());
    // Ping: CON empty -> RST.
    let r = h.one(0, addr(1, 1), &[0x40, 0, 0x12, 0x34]);
    let m = r.msg();
    assert_eq!(
        (m.mtype, m.mid, m.code),
        (MsgType::Rst, 0x1234, codes::EMPTY)
    );
    // Format error with readable header -> RST.
    let r = h.one(0, addr(1, 1), &[0x44, 0x02, 0, 9, 1]);
    assert_eq!(r.msg().mtype, MsgType::Rst);
    // Garbage, ACKs, RSTs and unsolicited responses: counted, nothing else.
    assert!(h.exchange(0, addr(1, 1), &[1, 2]).is_empty());
    assert!(h.exchange(0, addr(1, 1), &[0x60, 0, 0, 1]).is_empty());
    assert!(h.exchange(0, addr(1, 1), &[0x70, 0, 0, 1]).is_empty());
    assert!(h.exchange(0, addr(1, 1), &[0x50, 0x45, 0, 1]).is_empty());
    assert!(h.mqtt.is_empty());
    let s = h.cores[0].stats;
    assert_eq!(s.malformed, 2);
    assert_eq!(s.unmatched, 3);
}

#[test]
fn error_replies_never_exceed_request_size() {
    let mut h = Harness::new(1, settings());
    let tiny = Req::new(codes::POST, "/rd", 1).q("lwm2m=9").bytes();
    let r = h.one(0, addr(1, 1), &tiny);
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert!(r.bytes.len() <= tiny.len());
}

#[test]
fn block1_body_is_refused_when_blockwise_is_off() {
    let mut s = settings();
    s.block_enable = false;
    let mut h = Harness::new(1, s);
    let req = Req::register("a", 1).opt(opt::BLOCK1, &[0x0e]);
    assert_eq!(
        h.one(0, addr(1, 1), &req.bytes()).code(),
        codes::REQUEST_ENTITY_TOO_LARGE
    );
    // A single final block (num 0, no more) is an ordinary request.
    let req = Req::register("a", 2).opt(opt::BLOCK1, &[0x06]);
    assert_eq!(h.one(0, addr(1, 1), &req.bytes()).code(), codes::CREATED);
}

#[test]
fn wildcard_mode_does_not_subscribe_per_endpoint() {
    let mut s = settings();
    s.per_endpoint_subscriptions = false;
    let mut h = Harness::new(1, s);
    register(&mut h, 0, "dev1", 1, 1);
    assert_eq!(h.subscriptions(), (vec![], vec![]));
    assert_eq!(
        h.cores[0].settings().wildcard_command_filter(),
        "lwm2m/+/dn/#"
    );
}

#[test]
fn mountpoint_placeholders_and_routes() {
    let mut s = settings();
    s.mountpoint = crate::lwm2m::template::Template::parse("gw/${username}/${clientid}/");
    let mut h = Harness::new(1, s);
    let req = Req::register("dev1", 1)
        .q("imei=8675309")
        .q("device_id=cid7");
    h.one(0, addr(1, 1), &req.bytes());
    assert_eq!(h.published("up/resp")[0].0, "gw/8675309/cid7/up/resp");
    assert_eq!(
        h.subscriptions().0,
        vec!["gw/8675309/cid7/dn/#".to_string()]
    );
    assert_eq!(h.dir.route("gw/8675309/cid7/").as_deref(), Some("dev1"));
    let _ = Message::parse;
}

#[test]
fn thousands_of_devices_across_shards() {
    let mut h = Harness::new(4, settings());
    for i in 0..4000u16 {
        let shard = (i % 4) as usize;
        let r = h.one(
            shard,
            addr((i % 200) as u8 + 1, 10_000 + i),
            &Req::register(&format!("d{i}"), i).bytes(),
        );
        assert_eq!(r.code(), codes::CREATED);
    }
    assert_eq!(h.endpoints(), 4000);
    assert_eq!(h.dir.len(), 4000);
    assert_eq!(h.published("up/resp").len(), 4000);
    assert_eq!(h.subscriptions().0.len(), 4000);
    h.advance(300_000);
    assert_eq!(h.endpoints(), 0);
    assert!(h.dir.is_empty());
}

#[test]
fn admission_rate_and_capacity_answer_503_with_max_age() {
    let mut s = settings();
    s.max_conn_rate = 10;
    s.max_connections = 15;
    let mut h = Harness::new(1, s);
    let mut codes_seen = Vec::new();
    for i in 0..12u16 {
        let r = h.one(
            0,
            addr(1, 100 + i),
            &Req::register(&format!("r{i}"), i).bytes(),
        );
        codes_seen.push(r.code());
        if r.code() == codes::SERVICE_UNAVAILABLE {
            assert_eq!(r.msg().option_uint(opt::MAX_AGE), Some(1));
        }
    }
    assert_eq!(
        codes_seen.iter().filter(|&&c| c == codes::CREATED).count(),
        10
    );
    assert_eq!(h.cores[0].stats.rate_limited, 2);
    assert_eq!(h.endpoints(), 10);
    // A second later the bucket has refilled; the capacity cap (15) now binds.
    h.advance(1000);
    let mut created = 0;
    for i in 20..30u16 {
        let r = h.one(
            0,
            addr(1, 100 + i),
            &Req::register(&format!("r{i}"), i).bytes(),
        );
        if r.code() == codes::CREATED {
            created += 1;
        } else {
            assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
            assert_eq!(r.msg().option_uint(opt::MAX_AGE), Some(60));
        }
    }
    assert_eq!(created, 5);
    assert_eq!(h.endpoints(), 15);
    assert_eq!(h.cores[0].stats.over_capacity, 5);
    // Re-registering a known name is not a new connection.
    h.advance(1000);
    let r = h.one(0, addr(1, 100), &Req::register("r0", 999).bytes());
    assert_eq!(r.code(), codes::CREATED);
    // Nothing was published for refused registrations.
    assert_eq!(h.published("up/resp").len(), 16);
}

#[test]
fn authentication_holds_registers_until_the_server_answers() {
    let s = settings();
    s.auth.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut h = Harness::new(1, s);
    let req = Req::register("dev1", 1)
        .q("imei=867")
        .q("password=pw1")
        .bytes();
    assert!(
        h.exchange(0, addr(1, 1), &req).is_empty(),
        "held while asking"
    );
    assert!(
        h.exchange(0, addr(1, 1), &req).is_empty(),
        "a retransmission meanwhile is dropped"
    );
    assert_eq!(h.auth.len(), 1);
    let (_, t, a) = h.auth[0].clone();
    assert_eq!(
        (
            a.endpoint_name.as_str(),
            a.username.as_str(),
            a.password.as_str()
        ),
        ("dev1", "867", "pw1")
    );
    assert_eq!(
        (a.clientid.as_str(), a.peerhost.as_str()),
        ("dev1", "127.0.0.1")
    );
    let r = h.auth_answer(0, t, true);
    assert_eq!(r[0].code(), codes::CREATED);
    assert_eq!(h.published("up/resp").len(), 1);
    // After that, the retransmission is answered from the cache without asking again.
    assert_eq!(h.one(0, addr(1, 1), &req).code(), codes::CREATED);
    assert_eq!(h.auth.len(), 1);
    // Denied: 4.01, nothing published.
    h.exchange(0, addr(1, 2), &Req::register("dev2", 1).bytes());
    let t2 = h.auth[1].1;
    let r = h.auth_answer(0, t2, false);
    assert_eq!(r[0].code(), codes::UNAUTHORIZED);
    // No answer in time: denied by the timer.
    h.exchange(0, addr(1, 3), &Req::register("dev3", 1).bytes());
    let r = h.advance_collect(12_000);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code(), codes::UNAUTHORIZED);
    assert_eq!(h.cores[0].stats.auth_timeouts, 1);
    assert_eq!(h.published("up/resp").len(), 1);
    assert_eq!(h.endpoints(), 1);
}
