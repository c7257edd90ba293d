//! Shedding while the broker connections are congested: Register, Update and Send get
//! 5.03 with Max-Age and publish nothing, notifications are neither acknowledged nor
//! published (a CON one is retransmitted and delivered once the congestion clears),
//! and what the gateway acknowledged before is not affected.

use super::harness::*;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::fmt_id;
use crate::lwm2m::shed::{Shed, SHED_MAX_AGE_S};
use simd_json::prelude::*;

const DEV: u16 = 5000;
const TOPIC: &str = "lwm2m/dev1/dn/cmd";

fn shed(h: &Harness, what: Shed) -> u64 {
    h.cores.iter().map(|c| c.stats.shed[what.index()]).sum()
}

fn max_age(r: &Reply) -> Option<u32> {
    r.msg().option_uint(opt::MAX_AGE)
}

fn notification(t: MsgType, mid: u16, token: &[u8], seq: u32, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, t, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(value);
    buf
}

#[test]
fn registers_updates_and_sends_are_refused_while_congested() {
    let mut h = Harness::new(1, settings());
    let r = h.one(
        0,
        addr(1, DEV),
        &Req::register("dev1", 1).q("lwm2m=1.1").bytes(),
    );
    assert_eq!(r.code(), codes::CREATED);
    let loc = r.location();
    let published = h.mark();
    h.congested(0, true);
    // A new Register, an Update, a Send: 5.03 with Max-Age, nothing published.
    let r = h.one(0, addr(1, DEV + 1), &Req::register("dev2", 1).bytes());
    assert_eq!(
        (r.code(), max_age(&r)),
        (codes::SERVICE_UNAVAILABLE, Some(SHED_MAX_AGE_S))
    );
    let r = h.one(0, addr(1, DEV), &Req::update(&loc, 2).bytes());
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    let send = Req::new(codes::POST, "/dp", 3)
        .opt(opt::CONTENT_FORMAT, &fmt_id::SENML_JSON.to_be_bytes())
        .body(br#"[{"n":"/3/0/9","v":1}]"#)
        .bytes();
    let r = h.one(0, addr(1, DEV), &send);
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    // A retransmission of a Register answered before congestion still gets its 2.01.
    let again = h.one(
        0,
        addr(1, DEV),
        &Req::register("dev1", 1).q("lwm2m=1.1").bytes(),
    );
    assert_eq!(again.code(), codes::CREATED);
    assert!(h.published_since(published).is_empty());
    assert_eq!(shed(&h, Shed::Register), 1);
    assert_eq!(shed(&h, Shed::Update), 1);
    assert_eq!(shed(&h, Shed::Send), 1);
    assert_eq!(h.endpoints(), 1);
    // Cleared: the device's retries go through and publish once each.
    h.congested(0, false);
    let r = h.one(0, addr(1, DEV + 1), &Req::register("dev2", 4).bytes());
    assert_eq!(r.code(), codes::CREATED);
    let r = h.one(0, addr(1, DEV), &Req::update(&loc, 5).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    let mut send = send;
    send[2..4].copy_from_slice(&6u16.to_be_bytes());
    assert_eq!(h.one(0, addr(1, DEV), &send).code(), codes::CHANGED);
    let kinds: Vec<String> = h
        .published_since(published)
        .iter()
        .map(|(_, v)| v["msgType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["register", "update", "send"]);
}

#[test]
fn notifications_are_not_acknowledged_while_congested() {
    let mut h = Harness::new(1, settings());
    let r = h.one(
        0,
        addr(1, DEV),
        &Req::register("dev1", 1).q("lwm2m=1.1").bytes(),
    );
    assert_eq!(r.code(), codes::CREATED);
    let out = h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"observe","data":{"path":"/3/0/9"}}"#,
    );
    assert_eq!(out.len(), 1);
    let req = out[0].msg();
    let token = req.token.to_vec();
    let mut ack = Vec::new();
    let mut w = MessageWriter::new(&mut ack, MsgType::Ack, codes::CONTENT, req.mid, &token);
    w.option_uint(opt::OBSERVE, 1);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(b"90");
    h.datagram(0, addr(1, DEV), &ack);
    let mark = h.mark();
    h.congested(0, true);
    // CON: no ACK, nothing published, counted; NON: dropped.
    let con = notification(MsgType::Con, 700, &token, 2, b"89");
    assert!(h.exchange(0, addr(1, DEV), &con).is_empty());
    let non = notification(MsgType::Non, 701, &token, 3, b"88");
    assert!(h.exchange(0, addr(1, DEV), &non).is_empty());
    assert_eq!(shed(&h, Shed::Notification), 2);
    assert!(h.published_since(mark).is_empty());
    // The device retransmits the CON one after the congestion cleared: acknowledged and
    // delivered once (it was never seen).
    h.congested(0, false);
    let r = h.exchange(0, addr(1, DEV), &con);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].msg().mtype, MsgType::Ack);
    let again = h.exchange(0, addr(1, DEV), &con);
    assert_eq!(again.len(), 1, "a duplicate is acknowledged again");
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["msgType"], "notify");
    assert_eq!(p[0].1["seqNum"], 2);
    let m = Message::parse(&again[0].bytes).unwrap();
    assert_eq!(m.mid, 700);
}

/// The room the driver gives each turn bounds what one turn acknowledges, however many
/// datagrams it reads before the driver looks at its broker connections again: past it
/// Registers are shed like under congestion, and the next turn's room lets them in.
#[test]
fn a_turn_acknowledges_no_more_than_the_room_it_was_given() {
    let mut h = Harness::new(1, settings());
    h.mqtt_room(0, 2);
    let published = h.mark();
    let codes: Vec<u8> = (0..4u16)
        .map(|i| {
            let name = format!("room{i}");
            h.one(0, addr(1, DEV + i), &Req::register(&name, 1 + i).bytes())
                .code()
        })
        .collect();
    assert_eq!(
        codes,
        [
            codes::CREATED,
            codes::CREATED,
            codes::SERVICE_UNAVAILABLE,
            codes::SERVICE_UNAVAILABLE
        ]
    );
    assert_eq!(shed(&h, Shed::Register), 2);
    assert_eq!(h.published_since(published).len(), 2);
    assert_eq!(h.endpoints(), 2);
    // The next turn's room: the shed devices' retries (new requests) go through.
    h.mqtt_room(0, 10);
    let r = h.one(0, addr(1, DEV + 2), &Req::register("room2", 20).bytes());
    assert_eq!(r.code(), codes::CREATED);
    assert_eq!(h.endpoints(), 3);
}
