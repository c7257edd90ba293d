//! Command topics end to end against Mosquitto: a mountpoint built from every
//! placeholder (`${clientid}` and `${username}` with and without the `device_id` and
//! `imei` query parameters, `${peerhost}`) used for uplink and for routing commands back,
//! in both subscription modes; and the wildcard mode's single filter with an external
//! broker.

mod common;

use common::coap::{self, exchange, location, socket, Req};
use common::fleet::{drive_reads, fleet, read_cmd};
use common::gateway::{Broker, GatewayProc};
use common::json;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message};
use simd_json::prelude::*;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A device on its own loopback address.
struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    location: String,
    mid: u16,
}

impl Device {
    fn register(gw: SocketAddr, ip: [u8; 4], query: &[&str]) -> Self {
        let sock = socket(ip, WAIT);
        let register = Req::con(codes::POST, 2, &[9])
            .path(&["rd"])
            .query(query)
            .body(b"</1/0>,</3/0>");
        let reply = exchange(&sock, gw, &register.bytes());
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::CREATED, "{query:?}");
        Device {
            location: location(&m).expect("a location"),
            sock,
            gw,
            mid: 2,
        }
    }

    fn update(&mut self) {
        self.mid += 1;
        let update = Req::con(codes::POST, self.mid, &[9]).path(&["rd", &self.location]);
        let reply = exchange(&self.sock, self.gw, &update.bytes());
        assert_eq!(Message::parse(&reply).unwrap().code, codes::CHANGED);
    }

    /// Answers the next request from the gateway, which must be a read of /3/0/0.
    fn answer_read(&self) {
        let b = coap::recv(&self.sock);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.code, codes::GET, "a read");
        let path: Vec<_> = m.option_values(opt::URI_PATH).collect();
        assert_eq!(path, [&b"3"[..], b"0", b"0"]);
        let opts = [(opt::CONTENT_FORMAT, 0)];
        let answer = coap::ack(
            m.mid,
            m.token,
            codes::CONTENT,
            &opts,
            b"Open Mobile Alliance",
        );
        self.sock.send_to(&answer, self.gw).unwrap();
    }

    /// Nothing from the gateway for a short while.
    fn silent(&self) -> bool {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        let got = self.sock.recv_from(&mut buf).is_ok();
        self.sock.set_read_timeout(Some(WAIT)).unwrap();
        !got
    }
}

/// (endpoint, address, query, expected rendered mountpoint)
fn cases() -> Vec<(&'static str, [u8; 4], Vec<&'static str>, &'static str)> {
    vec![
        (
            "mpa",
            [127, 0, 7, 1],
            vec!["ep=mpa", "device_id=cid-a", "imei=imei-a", "lt=300"],
            "mp/cid-a/imei-a/127.0.7.1/",
        ),
        (
            "mpb",
            [127, 0, 7, 2],
            vec!["ep=mpb", "lt=300"],
            "mp/mpb/mpb/127.0.7.2/",
        ),
        (
            "mpc",
            [127, 0, 7, 3],
            vec!["ep=mpc", "device_id=cid-c", "lt=300"],
            "mp/cid-c/mpc/127.0.7.3/",
        ),
        (
            "mpd",
            [127, 0, 7, 4],
            vec!["ep=mpd", "imei=imei-d", "lt=300"],
            "mp/mpd/imei-d/127.0.7.4/",
        ),
    ]
}

#[test]
fn placeholder_mountpoint_per_endpoint() {
    placeholder_mountpoint("per_endpoint");
}

#[test]
fn placeholder_mountpoint_wildcard() {
    placeholder_mountpoint("wildcard");
}

fn placeholder_mountpoint(mode: &str) {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "mountpoint = \"mp/${clientid}/${username}/${peerhost}/\"",
        &format!("subscribe = \"{mode}\"\nconnections = 1"),
    );
    let mut mq = MqttClient::subscriber(broker.addr(), "mp-app", "mp/+/+/+/up/#", 0);

    let mut devices = Vec::new();
    for (ep, ip, query, mount) in cases() {
        let d = Device::register(gw.udp, ip, &query);
        let (topic, payload) = mq.recv_publish(WAIT).expect("register message");
        assert_eq!(topic, format!("{mount}up/resp"), "{ep}");
        let v = json(&payload);
        assert_eq!(v["msgType"], "register");
        assert_eq!(v["data"]["ep"], ep);
        devices.push((ep, mount, d));
    }
    let want: HashSet<String> = match mode {
        "wildcard" => ["mp/+/+/+/dn/#".to_string()].into(),
        _ => devices.iter().map(|(_, m, _)| format!("{m}dn/#")).collect(),
    };
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &want),
        want,
        "{mode}"
    );

    for (ep, mount, d) in &mut devices {
        d.update();
        let (topic, payload) = mq.recv_publish(WAIT).expect("update message");
        assert_eq!(topic, format!("{mount}up/update"), "{ep}");
        assert_eq!(json(&payload)["data"]["ep"], *ep);
    }

    // Commands on each rendered topic reach exactly that device, and the response comes
    // back on the same mountpoint.
    for (ep, mount, _) in &devices {
        mq.publish(&format!("{mount}dn/dm"), &read_cmd(ep), 1)
            .unwrap();
    }
    for (_, _, d) in &devices {
        d.answer_read();
    }
    let mut responses = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while responses.len() < devices.len() && Instant::now() < deadline {
        if let Some((topic, payload)) = mq.recv_publish(Duration::from_millis(200)) {
            let v = json(&payload);
            if v["msgType"].as_str() == Some("read") {
                assert_eq!(v["data"]["code"].as_str(), Some("2.05"), "{topic}: {v}");
                responses.insert(v["reqID"].as_str().unwrap().to_string(), topic);
            }
        }
    }
    for (ep, mount, d) in &devices {
        assert_eq!(
            responses.get(*ep),
            Some(&format!("{mount}up/resp")),
            "{ep}: {responses:?}"
        );
        assert!(d.silent(), "{ep} was asked once only");
    }

    // A rendering that is no device's (the endpoint name where device_id is set, another
    // address) reaches no device.
    let before = gw.metrics();
    for topic in [
        "mp/mpa/imei-a/127.0.7.1/dn/dm",
        "mp/cid-a/imei-a/127.0.7.9/dn/dm",
    ] {
        mq.publish(topic, &read_cmd("stray"), 1).unwrap();
    }
    // A marker through the same connection: once it is answered, the strays were handled.
    let (_, mount_b, b) = &devices[1];
    mq.publish(&format!("{mount_b}dn/dm"), &read_cmd("marker"), 1)
        .unwrap();
    b.answer_read();
    let mut refused = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "marker answered");
        if let Some((t, p)) = mq.recv_publish(Duration::from_millis(200)) {
            let v = json(&p);
            if v.get_str("reqID") == Some("stray") {
                assert_eq!(v["data"]["code"].as_str(), Some("4.00"), "{v}");
                refused.push(t);
            } else if v.get_str("reqID") == Some("marker") {
                break;
            }
        }
    }
    refused.sort();
    for (ep, _, d) in &devices {
        assert!(d.silent(), "{ep} got no stray command");
    }
    let after = gw.metrics();
    let delta = |n: &str| after.sum(n, &[]) - before.sum(n, &[]);
    match mode {
        // The broker hands the strays to the one wildcard filter; the gateway finds no
        // endpoint for them and answers each with an error on its own rendering.
        "wildcard" => {
            assert_eq!(delta("lwm2m_mqtt_inbound_total"), 3.0);
            assert_eq!(delta("lwm2m_commands_unknown_endpoint_total"), 2.0);
            assert_eq!(
                refused,
                [
                    "mp/cid-a/imei-a/127.0.7.9/up/resp",
                    "mp/mpa/imei-a/127.0.7.1/up/resp"
                ]
            );
        }
        // Nobody subscribed to them.
        _ => {
            assert!(refused.is_empty(), "{refused:?}");
            assert_eq!(delta("lwm2m_mqtt_inbound_total"), 1.0);
            assert_eq!(delta("lwm2m_commands_unknown_endpoint_total"), 0.0);
        }
    }
}

#[test]
fn wildcard_mode_with_mosquitto() {
    const N: usize = 50;
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "",
        "subscribe = \"wildcard\"",
    );
    let mut mq = MqttClient::subscriber(broker.addr(), "wc-app", "lwm2m/+/up/#", 0);
    let one: HashSet<String> = ["lwm2m/+/dn/#".to_string()].into();
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &one),
        one,
        "before any device"
    );

    let mut f = fleet(gw.udp, "wc", N);
    f.answer_like_client();
    assert_eq!(f.register_all(None, WAIT).unwrap().ok, N);
    let mut registered = 0;
    while registered < N {
        let (t, _) = mq.recv_publish(WAIT).expect("register messages");
        registered += usize::from(t.ends_with("/up/resp"));
    }
    // Still the one filter: no per-endpoint subscription was made.
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &one),
        one,
        "after {N} registrations"
    );
    let log = broker.log();
    let subscribe_lines = log
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.starts_with("lwm2m-gateway"))
        })
        .filter(|l| l.split_whitespace().count() == 4)
        .count();
    assert_eq!(subscribe_lines, 1, "one SUBSCRIBE of one filter:\n{log}");

    for i in 0..N {
        mq.publish(
            &format!("lwm2m/wc{i}/dn/dm"),
            &read_cmd(&format!("wc{i}")),
            0,
        )
        .unwrap();
    }
    let answers = drive_reads(&mut [&mut f], &mut mq, WAIT, |a| a.len() >= N);
    assert_eq!(answers.len(), N, "every command reached its device");
    assert!(answers.values().all(|&n| n == 1), "{answers:?}");
    assert_eq!(f.requests_seen, N as u64);

    // De-registering leaves the wildcard in place (it is not per endpoint); commands for
    // gone endpoints reach the gateway and are counted as unknown.
    assert_eq!(f.deregister_all(WAIT).unwrap().ok, N);
    let before = gw.metrics();
    mq.publish("lwm2m/wc0/dn/dm", &read_cmd("gone"), 1).unwrap();
    let after = gw.metrics_when(|m| {
        m.sum("lwm2m_commands_unknown_endpoint_total", &[])
            > before.sum("lwm2m_commands_unknown_endpoint_total", &[])
    });
    assert_eq!(
        after.sum("lwm2m_commands_unknown_endpoint_total", &[])
            - before.sum("lwm2m_commands_unknown_endpoint_total", &[]),
        1.0
    );
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &one),
        one,
        "after de-registration"
    );
}
