//! Admission limits under a burst of registrations through the running gateway:
//! the limit holds, the excess gets 5.03 with Max-Age, nothing else breaks.

mod common;

use common::coap::{self, exchange, socket, Req};
use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message};
use std::net::UdpSocket;
use std::time::Duration;

fn register(i: usize, mid: u16) -> Vec<u8> {
    Req::con(codes::POST, mid, &[1, 2])
        .path(&["rd"])
        .query(&[&format!("ep=adm{i}"), "lt=600"])
        .body(b"</3/0>")
        .bytes()
}

/// Sends a Register from each socket at once; returns the reply code per device.
fn burst(socks: &[UdpSocket], gw: std::net::SocketAddr, mid: u16) -> Vec<(u8, Option<u32>)> {
    for (i, s) in socks.iter().enumerate() {
        s.send_to(&register(i, mid), gw).unwrap();
    }
    socks
        .iter()
        .map(|s| {
            let b = coap::recv(s);
            let m = Message::parse(&b).unwrap();
            (m.code, m.option_uint(opt::MAX_AGE))
        })
        .collect()
}

fn sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| socket([127, 0, 0, 1], Duration::from_secs(10)))
        .collect()
}

/// Topics of the register messages that arrive until the broker is quiet.
fn published(mq: &mut MqttClient) -> std::collections::HashSet<String> {
    let quiet = Duration::from_millis(700);
    mq.collect(usize::MAX, quiet)
        .into_iter()
        .map(|m| m.0)
        .collect()
}

#[test]
fn registration_rate_limit_holds() {
    let gw = GatewayProc::start_full(
        Broker::Embedded,
        "[engine]\nshards = 2\n",
        "",
        "max_conn_rate = 100",
    );
    let mut mq = MqttClient::subscriber(gw.mqtt, "adm-rate", "lwm2m/+/up/resp", 0);
    let socks = sockets(400);
    let first = burst(&socks, gw.udp, 1);
    let created = first.iter().filter(|r| r.0 == codes::CREATED).count();
    let refused: Vec<_> = first
        .iter()
        .filter(|r| r.0 == codes::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(created + refused.len(), 400, "only 2.01 or 5.03: {first:?}");
    // Two shards, 50/s each with a burst of 50: at most 100 get in at once.
    assert!(created > 0 && created <= 100, "created {created}");
    assert!(
        refused.iter().all(|r| r.1 == Some(1)),
        "rate refusals carry Max-Age 1"
    );
    assert_eq!(
        published(&mut mq).len(),
        created,
        "admitted ones published, refused ones not"
    );
    // Devices that back off for Max-Age get in.
    std::thread::sleep(Duration::from_millis(1500));
    let again = burst(&socks[..40], gw.udp, 2);
    assert_eq!(
        again.iter().filter(|r| r.0 == codes::CREATED).count(),
        40,
        "{again:?}"
    );
}

#[test]
fn max_connections_holds() {
    let gw = GatewayProc::start_full(
        Broker::Embedded,
        "[engine]\nshards = 2\n",
        "",
        "max_conn_rate = 1000000\nmax_connections = 150",
    );
    let mut mq = MqttClient::subscriber(gw.mqtt, "adm-cap", "lwm2m/+/up/resp", 0);
    let socks = sockets(300);
    let first = burst(&socks, gw.udp, 1);
    let created = first.iter().filter(|r| r.0 == codes::CREATED).count();
    let refused = first
        .iter()
        .filter(|r| r.0 == codes::SERVICE_UNAVAILABLE && r.1 == Some(60))
        .count();
    // Two shards admit concurrently: the cap may be overshot by at most a shard's in-flight check.
    assert!((150..=152).contains(&created), "created {created}");
    assert_eq!(created + refused, 300);
    assert_eq!(published(&mut mq).len(), created);
    // A registered device re-registering is still welcome.
    let ok = first.iter().position(|r| r.0 == codes::CREATED).unwrap();
    let reply = exchange(&socks[ok], gw.udp, &register(ok, 9));
    assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
}
