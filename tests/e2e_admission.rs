//! Admission limits under a burst of registrations through the running gateway:
//! the limit holds, the excess gets 5.03 with Max-Age, nothing else breaks.

mod common;

use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use std::net::UdpSocket;
use std::time::Duration;

fn register(i: usize, mid: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, mid, &[1, 2]);
    w.option(opt::URI_PATH, b"rd")
        .option(opt::URI_QUERY, format!("ep=adm{i}").as_bytes())
        .option(opt::URI_QUERY, b"lt=600");
    w.payload(b"</3/0>");
    buf
}

/// Sends a Register from each socket at once; returns the reply code per device.
fn burst(socks: &[UdpSocket], gw: std::net::SocketAddr, mid: u16) -> Vec<(u8, Option<u32>)> {
    for (i, s) in socks.iter().enumerate() {
        s.send_to(&register(i, mid), gw).unwrap();
    }
    socks
        .iter()
        .map(|s| {
            let mut b = [0u8; 512];
            let (n, _) = s.recv_from(&mut b).expect("every Register is answered");
            let m = Message::parse(&b[..n]).unwrap();
            (m.code, m.option_uint(opt::MAX_AGE))
        })
        .collect()
}

fn sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect()
}

/// Topics of the register messages that arrive until the broker is quiet.
fn published(mq: &mut MqttClient) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    while let Some((t, _)) = mq.recv_publish(Duration::from_millis(700)) {
        out.insert(t);
    }
    out
}

#[test]
fn registration_rate_limit_holds() {
    let gw = GatewayProc::start_full(
        Broker::Embedded,
        "[engine]\nshards = 2\n",
        "",
        "max_conn_rate = 100",
    );
    let mut mq = MqttClient::connect(gw.mqtt, "adm-rate", true).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 0).unwrap();
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
    let mut mq = MqttClient::connect(gw.mqtt, "adm-cap", true).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 0).unwrap();
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
    socks[ok].send_to(&register(ok, 9), gw.udp).unwrap();
    let mut b = [0u8; 512];
    let (n, _) = socks[ok].recv_from(&mut b).unwrap();
    assert_eq!(Message::parse(&b[..n]).unwrap().code, codes::CREATED);
}
