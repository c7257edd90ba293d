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
    let kinds: Vec<String> = h
        .published("up/resp")
        .iter()
        .map(|(_, v)| {
            let t = v["msgType"].as_str().unwrap().to_string();
            match v["data"].get("reason").and_then(|r| r.as_str()) {
                Some(r) => format!("{t}:{r}"),
                None => t,
            }
        })
        .collect();
    // Each replacement's end comes before the register message that replaced it.
    assert_eq!(
        kinds,
        [
            "register",
            "deregister:replaced",
            "register",
            "deregister:replaced",
            "register"
        ]
    );
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
            assert_eq!(
                r.msg().option_uint(opt::MAX_AGE),
                Some(1),
                "10 per second: 0.1 s, rounded up"
            );
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
    let registers = h
        .published("up/resp")
        .iter()
        .filter(|(_, v)| v["msgType"].as_str() == Some("register"))
        .count();
    assert_eq!(registers, 16);
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

/// Registers `ep` on `shard` from `from`, with extra query parameters.
fn register_with(h: &mut Harness, shard: usize, ep: &str, from: SocketAddr, q: &[&str]) -> Reply {
    let mut req = Req::register(ep, 1);
    for x in q {
        req = req.q(x);
    }
    h.one(shard, from, &req.bytes())
}

use std::net::SocketAddr;

fn peerhost_settings() -> crate::lwm2m::CoreSettings {
    let mut s = settings();
    s.mountpoint = crate::lwm2m::template::Template::parse("gw/${peerhost}/").with_suffix("dn/#");
    s
}

#[test]
fn reregistration_on_another_shard_with_another_mountpoint_unsubscribes_the_old_one() {
    let mut h = Harness::new(2, peerhost_settings());
    assert_eq!(
        register_with(&mut h, 0, "dev1", addr(1, 1), &[]).code(),
        codes::CREATED
    );
    assert_eq!(h.subscriptions().0, ["gw/127.0.0.1/dn/#"]);
    // The device moved to another address (another ${peerhost}) that lands on shard 1:
    // the old registration is evicted from shard 0 and its filter and route go with it.
    assert_eq!(
        register_with(&mut h, 1, "dev1", addr(2, 2), &[]).code(),
        codes::CREATED
    );
    assert_eq!(h.endpoints(), 1);
    let (subs, unsubs) = h.subscriptions();
    assert_eq!(subs, ["gw/127.0.0.1/dn/#", "gw/127.0.0.2/dn/#"]);
    assert_eq!(unsubs, ["gw/127.0.0.1/dn/#"]);
    assert_eq!(h.dir.route("gw/127.0.0.1/"), None);
    assert_eq!(h.dir.route("gw/127.0.0.2/").as_deref(), Some("dev1"));
    // Again, now with the same mountpoint (same address, another port) back on shard 0:
    // the subscription stays with the new registration.
    assert_eq!(
        register_with(&mut h, 0, "dev1", addr(2, 9), &[]).code(),
        codes::CREATED
    );
    assert_eq!(h.subscriptions().1, ["gw/127.0.0.1/dn/#"], "nothing more");
    assert_eq!(h.dir.route("gw/127.0.0.2/").as_deref(), Some("dev1"));
    // De-registration of the last one releases its filter.
    let loc = h.dir.by_name("dev1").unwrap().location;
    let r = h.one(
        0,
        addr(2, 9),
        &Req::new(
            codes::DELETE,
            &format!("/rd/{}", Endpoint::location_str(loc)),
            5,
        )
        .bytes(),
    );
    assert_eq!(r.code(), codes::DELETED);
    assert_eq!(
        h.subscriptions().1,
        ["gw/127.0.0.1/dn/#", "gw/127.0.0.2/dn/#"]
    );
    assert_eq!(h.dir.route("gw/127.0.0.2/"), None);
}

#[test]
fn an_old_registration_leaving_while_its_eviction_is_on_its_way_releases_its_own_filter() {
    let mut h = Harness::new(2, peerhost_settings());
    let old = register_with(&mut h, 0, "dev1", addr(1, 1), &[]).location();
    // The new registration on shard 1; its Evict for shard 0 is held back.
    let r = {
        let evict = h.datagram_holding_mail(1, addr(2, 2), &Req::register("dev1", 1).bytes());
        // Meanwhile the old registration de-registers on shard 0.
        let replies = h.exchange(
            0,
            addr(1, 1),
            &Req::new(codes::DELETE, &format!("/rd/{old}"), 2).bytes(),
        );
        let del = replies.iter().find(|r| r.to == addr(1, 1)).unwrap();
        assert_eq!(del.code(), codes::DELETED);
        let mut replies = Vec::new();
        for (to, m) in evict {
            replies.extend(h.message(to as usize, m));
        }
        replies
    };
    assert!(r.is_empty(), "the eviction found nothing: {r:?}");
    let (subs, unsubs) = h.subscriptions();
    assert_eq!(subs, ["gw/127.0.0.1/dn/#", "gw/127.0.0.2/dn/#"]);
    assert_eq!(unsubs, ["gw/127.0.0.1/dn/#"], "the old filter, not the new");
    assert_eq!(h.endpoints(), 1);
    assert_eq!(h.dir.route("gw/127.0.0.2/").as_deref(), Some("dev1"));
}

#[test]
fn values_that_would_make_invalid_topics_are_refused() {
    let mut s = settings();
    s.mountpoint =
        crate::lwm2m::template::Template::parse("gw/${clientid}/${username}/").with_suffix("dn/#");
    let mut h = Harness::new(1, s);
    for (q, diag) in [
        ("device_id=a+b", "device_id contains '/', '+' or '#'"),
        ("device_id=#", "device_id contains"),
        ("device_id=a/b", "device_id contains"),
        ("device_id=", "device_id is empty"),
        ("imei=12#", "imei contains"),
        ("imei=1\u{7f}", "imei contains NUL or a control character"),
    ] {
        let r = register_with(&mut h, 0, "dev1", addr(1, 1), &[q]);
        assert_eq!(r.code(), codes::BAD_REQUEST, "{q}");
        let text = String::from_utf8_lossy(r.msg().payload).into_owned();
        assert!(text.starts_with(diag), "{q}: {text}");
    }
    assert_eq!(h.cores[0].stats.bad_topics, 6);
    assert_eq!(h.cores[0].stats.bad_requests, 6);
    // Topics longer than MQTT allows.
    let long = format!("device_id={}", "x".repeat(65_530));
    let r = register_with(&mut h, 0, "dev1", addr(1, 1), &[&long]);
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert!(String::from_utf8_lossy(r.msg().payload).contains("65535"));
    assert_eq!(h.cores[0].stats.bad_topics, 7);
    assert_eq!(h.endpoints(), 0);
    assert!(h.mqtt.is_empty(), "nothing published or subscribed");
    // Fine values register.
    let r = register_with(&mut h, 0, "dev1", addr(1, 1), &["device_id=c-1", "imei=86"]);
    assert_eq!(r.code(), codes::CREATED);
    assert_eq!(h.subscriptions().0, ["gw/c-1/86/dn/#"]);
    // A value no placeholder uses goes into the payload only, not into topics.
    let mut h = Harness::new(1, settings());
    let r = register_with(&mut h, 0, "dev2", addr(1, 1), &["device_id=a+b/#"]);
    assert_eq!(r.code(), codes::CREATED);
    assert_eq!(h.published("up/resp")[0].1["data"]["device_id"], "a+b/#");
}

#[test]
fn a_mountpoint_ending_in_a_placeholder_routes_commands() {
    let mut s = settings();
    s.mountpoint =
        crate::lwm2m::template::Template::parse("lwm2m/${endpoint_name}").with_suffix("dn/#");
    let mut h = Harness::new(2, s);
    assert_eq!(h.cores[0].settings().wildcard_command_filter(), "lwm2m/+/#");
    let r = register_with(&mut h, 1, "adn1", addr(1, 1), &[]);
    assert_eq!(r.code(), codes::CREATED);
    assert_eq!(h.published("up/resp")[0].0, "lwm2m/adn1up/resp");
    assert_eq!(h.subscriptions().0, ["lwm2m/adn1dn/#"]);
    // The command reaches the device.
    let out = h.command(
        1,
        "lwm2m/adn1dn/cmd",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, addr(1, 1));
    assert_eq!(out[0].code(), codes::GET);
    // Through the other shard too (it waits behind the first: NSTART 1).
    h.command(
        0,
        "lwm2m/adn1dn/dm",
        r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/2"}}"#,
    );
    assert_eq!(h.cores[1].stats.commands, 2);
    assert_eq!(h.cores[0].stats.commands_rejected, 0);
}

#[test]
fn a_lost_takeover_is_asked_for_again_after_its_timeout() {
    let mut h = Harness::new(2, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    // The device moved; its Update lands on shard 1, whose Takeover gets lost.
    let update = Req::update(&loc, 2).bytes();
    let lost = h.datagram_holding_mail(1, addr(9, 9), &update);
    assert!(matches!(lost[..], [(0, ShardMsg::Takeover { .. })]));
    // Retransmissions meanwhile wait for the answer that will not come.
    h.advance(1_000);
    let asked_again = h.datagram_holding_mail(1, addr(9, 9), &update);
    assert!(
        h.replies.iter().all(|r| r.to != addr(9, 9)),
        "nothing answered"
    );
    assert!(asked_again.is_empty());
    // After the timeout the next retransmission asks again, and gets its answer.
    h.advance(1_500);
    assert_eq!(h.cores[1].stats.takeover_timeouts, 1);
    let r = h.one(1, addr(9, 9), &update);
    assert_eq!(r.code(), codes::CHANGED);
    assert_eq!(h.cores[1].endpoints().len(), 1);
    assert_eq!(h.dir.by_name("dev1").unwrap().shard, 1);
    // An answered takeover's timer changes nothing.
    h.advance(3_000);
    assert_eq!(h.cores[1].stats.takeover_timeouts, 1);
}

use crate::lwm2m::ShardMsg;

#[test]
fn locations_are_a_keyed_permutation_of_the_registration_count() {
    let cipher = crate::lwm2m::location::LocationCipher::new(settings().location_key);
    let mut h = Harness::new(2, settings());
    let mut locs = Vec::new();
    for i in 0..4u16 {
        let shard = (i % 2) as usize;
        let loc = register(&mut h, shard, &format!("d{i}"), 10 + i, 1);
        locs.push(Endpoint::parse_location(loc.as_bytes()).unwrap());
    }
    let numbers: Vec<u64> = locs.iter().map(|&l| cipher.decrypt(l)).collect();
    assert_eq!(numbers, [1, 1 << 48 | 1, 2, 1 << 48 | 2]);
    // Neighbouring registrations are not neighbouring locations.
    assert!(locs[0].abs_diff(locs[2]) > 1 << 32);
    // Another key (another gateway start), other locations for the same numbers.
    let mut s = settings();
    s.location_key = [5, 6];
    let mut other = Harness::new(1, s);
    let loc = register(&mut other, 0, "d0", 10, 1);
    assert_ne!(Endpoint::parse_location(loc.as_bytes()).unwrap(), locs[0]);
}

#[test]
fn registers_held_for_authentication_are_admitted_against_max_connections_at_release() {
    let mut s = settings();
    s.max_connections = 2;
    s.auth.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut h = Harness::new(1, s);
    for i in 0..4u8 {
        let held = h.exchange(
            0,
            addr(1, 10 + i as u16),
            &Req::register(&format!("h{i}"), 1).bytes(),
        );
        assert!(held.is_empty(), "held while asking");
    }
    let tickets: Vec<u64> = h.auth.iter().map(|a| a.1).collect();
    assert_eq!(tickets.len(), 4, "all four were below the cap when held");
    let mut answers = Vec::new();
    for t in tickets {
        let r = h.auth_answer(0, t, true);
        assert_eq!(r.len(), 1);
        answers.push((r[0].code(), r[0].msg().option_uint(opt::MAX_AGE)));
    }
    assert_eq!(
        answers,
        [
            (codes::CREATED, None),
            (codes::CREATED, None),
            (codes::SERVICE_UNAVAILABLE, Some(60)),
            (codes::SERVICE_UNAVAILABLE, Some(60)),
        ]
    );
    assert_eq!(h.endpoints(), 2);
    assert_eq!(h.cores[0].stats.over_capacity, 2);
    assert_eq!(h.published("up/resp").len(), 2);
}

#[test]
fn rate_limit_max_age_is_the_token_buckets_wait() {
    // One registration per second over four shards: a quarter token per second each.
    let mut s = settings();
    s.max_conn_rate = 1;
    let s = std::sync::Arc::new(s);
    let dir = std::sync::Arc::new(crate::lwm2m::Directory::new());
    let mut core = crate::lwm2m::ShardCore::with_shards(0, 4, s, dir, 7);
    let send = |core: &mut crate::lwm2m::ShardCore, now: u64, ep: &str| {
        let bytes = Req::register(ep, now as u16).bytes();
        let data = crate::lwm2m::Input::Datagram {
            peer: addr(1, 1),
            data: &bytes,
            identity: None,
        };
        core.handle(now, data);
        let mut out = Vec::new();
        core.drain(|o| {
            if let crate::lwm2m::Output::Datagram { bytes, .. } = o {
                out.push(bytes.to_vec());
            }
        });
        let m = Message::parse(&out[0]).unwrap();
        (m.code, m.option_uint(opt::MAX_AGE))
    };
    assert_eq!(send(&mut core, 0, "a"), (codes::CREATED, None));
    assert_eq!(
        send(&mut core, 1, "b"),
        (codes::SERVICE_UNAVAILABLE, Some(4)),
        "the next token is 4 s away"
    );
    assert_eq!(
        send(&mut core, 2_500, "b"),
        (codes::SERVICE_UNAVAILABLE, Some(2)),
        "1.5 s away, rounded up"
    );
    assert_eq!(send(&mut core, 4_000, "b"), (codes::CREATED, None));
}

#[test]
fn an_update_with_an_object_list_refreshes_the_alternate_path() {
    let mut h = Harness::new(1, settings());
    let loc = register(&mut h, 0, "dev1", 1, 1);
    assert_eq!(h.published("up/resp")[0].1["data"]["alternatePath"], "/");
    let r = h.one(
        0,
        addr(1, 1),
        &Req::update(&loc, 2)
            .body(b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3/0>")
            .bytes(),
    );
    assert_eq!(r.code(), codes::CHANGED);
    let d = &h.published("up/update")[0].1["data"];
    assert_eq!(d["alternatePath"], "/lwm2m");
    assert_eq!(d["objectList"], simd_json::json!(["/1/0", "/3/0"]));
    // Without a payload it stays; a list without the root link resets it to "/".
    h.one(0, addr(1, 1), &Req::update(&loc, 3).bytes());
    assert_eq!(
        h.published("up/update")[1].1["data"]["alternatePath"],
        "/lwm2m"
    );
    h.one(0, addr(1, 1), &Req::update(&loc, 4).body(b"</3/0>").bytes());
    let d = &h.published("up/update")[2].1["data"];
    assert_eq!(d["alternatePath"], "/");
    assert_eq!(d["objectList"], simd_json::json!(["/3/0"]));
}

/// The `deregister` messages published so far: (topic, ep, reason).
fn ends(h: &Harness) -> Vec<(String, String, String)> {
    h.published("")
        .into_iter()
        .filter(|(_, v)| v["msgType"].as_str() == Some("deregister"))
        .map(|(t, v)| {
            let d = &v["data"];
            let s = |k: &str| d[k].as_str().unwrap().to_string();
            (t, s("ep"), s("reason"))
        })
        .collect()
}

fn end(topic: &str, ep: &str, reason: &str) -> (String, String, String) {
    (topic.into(), ep.into(), reason.into())
}

#[test]
fn the_end_of_a_registration_is_published_with_its_reason() {
    let mut h = Harness::new(1, settings());
    // De-register: once, a retransmitted DELETE publishes nothing more.
    let loc = register(&mut h, 0, "dev1", 1, 1);
    let delete = Req::new(codes::DELETE, &format!("/rd/{loc}"), 2).bytes();
    h.one(0, addr(1, 1), &delete);
    h.one(0, addr(1, 1), &delete);
    assert_eq!(ends(&h), [end("lwm2m/dev1/up/resp", "dev1", "deregister")]);
    // Lifetime.
    register(&mut h, 0, "dev2", 2, 1);
    h.advance(300_000);
    assert_eq!(ends(&h)[1], end("lwm2m/dev2/up/resp", "dev2", "expired"));
    // The management API.
    register(&mut h, 0, "dev3", 3, 1);
    assert!(h.kick(0, "dev3"));
    assert_eq!(ends(&h)[2], end("lwm2m/dev3/up/resp", "dev3", "kicked"));
    assert_eq!(ends(&h).len(), 3);
    // An Update that fails and a registration that never was end nothing.
    let up = h.one(0, addr(1, 1), &Req::update(&loc, 9).bytes());
    assert_eq!(up.code(), codes::NOT_FOUND);
    assert!(!h.kick(0, "nobody"));
    assert_eq!(ends(&h).len(), 3);
}

#[test]
fn the_end_message_takes_the_deregister_translator() {
    let mut s = settings();
    s.deregister = crate::lwm2m::settings::Translator {
        topic: "up/gone".into(),
        qos: 1,
    };
    let mut h = Harness::new(2, s);
    register(&mut h, 0, "dev1", 1, 1);
    // Replaced from another shard: published by the new registration's shard,
    // before its register message, on the same lane.
    let mark = h.mark();
    register(&mut h, 1, "dev1", 2, 1);
    let since = h.published_since(mark);
    let kinds: Vec<_> = since
        .iter()
        .map(|(t, v)| (t.as_str(), v["msgType"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("lwm2m/dev1/up/gone", "deregister"),
            ("lwm2m/dev1/up/resp", "register")
        ]
    );
    let lanes_qos: Vec<_> = h.mqtt[mark..]
        .iter()
        .filter_map(|m| match m {
            crate::lwm2m::MqttOut::Publish { lane, qos, .. } => Some((*lane, *qos)),
            _ => None,
        })
        .collect();
    assert_eq!(lanes_qos[0].0, lanes_qos[1].0, "one lane keeps the order");
    assert_eq!(lanes_qos[0].1, 1);
    assert_eq!(ends(&h), [end("lwm2m/dev1/up/gone", "dev1", "replaced")]);
    // The Evict the old shard received publishes nothing more.
    h.advance(1);
    assert_eq!(ends(&h).len(), 1);
    assert_eq!(h.endpoints(), 1);
}
