//! Registration edge cases through the running gateway: NAT-rebinding takeovers across
//! shards whose mailboxes hold one message, a `${peerhost}` mountpoint whose command
//! subscription follows the device to its new address, device values that would make
//! invalid MQTT filters (refused, the broker connection survives), a mountpoint
//! whose last level is a placeholder without a trailing '/', and where commands
//! arrive: on the broker connection of the shard serving the device, with one
//! subscription per filter however often a device registers again elsewhere.

mod common;
use common::gateway::metrics_when;

use common::coap::{self, location, Req};
use common::gateway::{Broker, GatewayProc};
use common::json;
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message, MsgType};
use simd_json::prelude::*;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A device socket bound to `ip` (any 127.x address works on Linux loopback).
fn socket(ip: [u8; 4]) -> UdpSocket {
    coap::socket(ip, Duration::from_millis(500))
}

/// A request whose token is its message ID.
fn req(code: u8, mid: u16) -> Req {
    Req::con(code, mid, &mid.to_be_bytes())
}

/// Sends a CON request and waits for its piggybacked answer, retransmitting the same
/// message (as a device does) while none comes: (code, location, payload).
fn exchange(sock: &UdpSocket, gw: SocketAddr, req: &[u8]) -> (u8, Option<String>, String) {
    let mid = Message::parse(req).unwrap().mid;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut b = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(req, gw).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut b) {
            let m = Message::parse(&b[..n]).unwrap();
            if m.mtype == MsgType::Ack && m.mid == mid {
                let text = String::from_utf8_lossy(m.payload).into_owned();
                return (m.code, location(&m), text);
            }
        }
    }
    panic!("no answer to the request with message ID {mid} in 30 s");
}

fn register(
    sock: &UdpSocket,
    gw: SocketAddr,
    ep: &str,
    extra: &[&str],
) -> (u8, Option<String>, String) {
    let ep = format!("ep={ep}");
    let mut q = vec![ep.as_str(), "lt=600", "lwm2m=1.0", "b=U"];
    q.extend_from_slice(extra);
    let register = req(codes::POST, 1).path(&["rd"]).query(&q).body(b"</3/0>");
    exchange(sock, gw, &register.bytes())
}

/// The next CoAP request the gateway sends to `sock`.
fn next_request(sock: &UdpSocket) -> Message<'static> {
    let deadline = Instant::now() + WAIT;
    let mut b = vec![0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut b) {
            b.truncate(n);
            let leaked: &'static [u8] = Box::leak(b.into_boxed_slice());
            return Message::parse(leaked).unwrap();
        }
    }
    panic!("no request from the gateway");
}

/// `names`, each registered from its own socket on `ip`; the sockets in the same order.
fn register_each(gw: SocketAddr, names: &[String], ip: [u8; 4]) -> Vec<UdpSocket> {
    names
        .iter()
        .map(|n| {
            let s = socket(ip);
            assert_eq!(register(&s, gw, n, &[]).0, codes::CREATED);
            s
        })
        .collect()
}

/// The per-endpoint command filters of `names`.
fn filters(names: &[String]) -> HashSet<String> {
    names.iter().map(|n| format!("lwm2m/{n}/dn/#")).collect()
}

/// Answers the next request (a read) with 2.05 and `body`; returns its path.
fn answer_read(sock: &UdpSocket, gw: SocketAddr, body: &[u8]) -> String {
    let m = next_request(sock);
    assert_eq!(m.code, codes::GET);
    let path: Vec<String> = m
        .option_values(opt::URI_PATH)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let answer = coap::ack(
        m.mid,
        m.token,
        codes::CONTENT,
        &[(opt::CONTENT_FORMAT, 0)],
        body,
    );
    sock.send_to(&answer, gw).unwrap();
    format!("/{}", path.join("/"))
}

/// The final response of every command in `ids` (reqID -> its code), failing on any
/// answered twice; waits until each has one.
fn finals(app: &mut MqttClient, ids: &[u64]) -> std::collections::HashMap<u64, String> {
    let mut got = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.iter().any(|i| !got.contains_key(i)) {
        assert!(Instant::now() < deadline, "unanswered: {ids:?} got {got:?}");
        let Some((topic, payload)) = app.recv_publish(Duration::from_millis(500)) else {
            continue;
        };
        if !topic.ends_with("/up/resp") {
            continue;
        }
        let v = json(&payload);
        // Register messages held for their SUBACK may reach an application that
        // subscribed after them: only command responses count here.
        let code = v.get("data").and_then(|d| d.get_str("code"));
        let (Some(id), Some(code)) = (v.get_u64("reqID"), code) else {
            continue;
        };
        assert!(
            got.insert(id, code.to_string()).is_none(),
            "answered twice: {v}"
        );
    }
    // Nothing more for any of them.
    while let Some((topic, payload)) = app.recv_publish(Duration::from_millis(300)) {
        let Ok(v) = simd_json::to_owned_value(&mut payload.clone()) else {
            continue;
        };
        assert!(
            !(topic.ends_with("/up/resp") && v.get_u64("reqID").is_some_and(|i| ids.contains(&i))),
            "answered twice: {v}"
        );
    }
    got
}

/// Sends a read of /3/0/0 to each device `names[i]` as reqID i, answers it from
/// `socks[i]`, and checks every command got exactly one 2.05.
fn read_each(app: &mut MqttClient, gw: SocketAddr, names: &[String], socks: &[UdpSocket]) {
    for (i, n) in names.iter().enumerate() {
        let cmd = format!(r#"{{"reqID":{i},"msgType":"read","data":{{"path":"/3/0/0"}}}}"#);
        app.publish(&format!("lwm2m/{n}/dn/cmd"), cmd.as_bytes(), 1)
            .unwrap();
    }
    for s in socks {
        assert_eq!(answer_read(s, gw, b"x"), "/3/0/0");
    }
    let ids: Vec<u64> = (0..names.len() as u64).collect();
    let got = finals(app, &ids);
    assert!(got.values().all(|c| c == "2.05"), "{got:?}");
}

/// With per-endpoint subscriptions each registration subscribes on its own shard's
/// broker connection, so every command arrives where its device lives: no hand-off
/// between shards (`lwm2m_commands_local_total` = routed).
#[test]
fn commands_arrive_on_the_connection_of_the_devices_shard() {
    const N: usize = 16;
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "[engine]\nshards = 2\n",
        "connections = 4",
    );
    let names: Vec<String> = (0..N).map(|i| format!("home{i}")).collect();
    let socks = register_each(gw.udp, &names, [127, 0, 0, 1]);
    let want = filters(&names);
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &want), want);
    // 4 connections over 2 shards: the devices' filters are spread over them, and
    // no filter is held twice.
    let holders = broker.holders("lwm2m-gateway");
    assert!(holders.values().all(|n| *n == 1), "{holders:?}");
    let mut app = MqttClient::subscriber(broker.addr(), "home-app", "lwm2m/+/up/resp", 1);
    read_each(&mut app, gw.udp, &names, &socks);
    let m = gw.metrics_when(|m| m.sum("lwm2m_commands_routed_total", &[]) >= N as f64);
    assert_eq!(m.sum("lwm2m_commands_routed_total", &[]), N as f64);
    assert_eq!(m.sum("lwm2m_commands_local_total", &[]), N as f64);
}

/// A device registering again from another address may land on the other shard; its
/// filter keeps its one subscription (at the shard that made it), commands reach the
/// new registration exactly once, and de-registering gives the filter up.
#[test]
fn registering_again_on_another_shard_keeps_one_subscription() {
    const N: usize = 12;
    let broker = Mosquitto::start();
    let gw = GatewayProc::start(Broker::External(broker.addr()), "[engine]\nshards = 2\n");
    let names: Vec<String> = (0..N).map(|i| format!("again{i}")).collect();
    let first = register_each(gw.udp, &names, [127, 0, 0, 1]);
    let want = filters(&names);
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &want), want);
    // Each registers again from a new address (a new 4-tuple: either shard).
    let second: Vec<UdpSocket> = (0..N).map(|_| socket([127, 0, 0, 3])).collect();
    let mut locations = Vec::new();
    for (n, s) in names.iter().zip(&second) {
        let (code, location, _) = register(s, gw.udp, n, &[]);
        assert_eq!(code, codes::CREATED);
        locations.push(location.expect("a location"));
    }
    // Give any stray subscription time to reach the broker, then count holders.
    std::thread::sleep(Duration::from_millis(500));
    let holders = broker.holders("lwm2m-gateway");
    assert_eq!(holders.keys().cloned().collect::<HashSet<_>>(), want);
    assert!(holders.values().all(|n| *n == 1), "{holders:?}");
    let mut app = MqttClient::subscriber(broker.addr(), "again-app", "lwm2m/+/up/resp", 1);
    read_each(&mut app, gw.udp, &names, &second);
    // Some registrations landed on the shard that is not their filter's home (all 12
    // on their first shard has a chance of 2^-12): those commands were handed over.
    let m = gw.metrics_when(|m| m.sum("lwm2m_commands_routed_total", &[]) >= N as f64);
    assert_eq!(m.sum("lwm2m_commands_routed_total", &[]), N as f64);
    assert!(m.sum("lwm2m_commands_local_total", &[]) < N as f64);
    // Nothing went to the old addresses.
    let mut b = [0u8; 64];
    for s in &first {
        assert!(
            s.recv_from(&mut b).is_err(),
            "a request reached the old address"
        );
    }
    // De-registering every one gives every filter up.
    for (i, (s, loc)) in second.iter().zip(&locations).enumerate() {
        let delete = req(codes::DELETE, 50 + i as u16).path(&["rd", loc]);
        assert_eq!(exchange(s, gw.udp, &delete.bytes()).0, codes::DELETED);
    }
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &HashSet::new()),
        HashSet::new()
    );
}

/// Wildcard mode: the one filter lives on shard 0's connection, which hands the
/// commands of the other shard's devices over; every one is answered once.
#[test]
fn wildcard_commands_reach_devices_on_every_shard() {
    const N: usize = 16;
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "[engine]\nshards = 2\n",
        "subscribe = \"wildcard\"",
    );
    let names: Vec<String> = (0..N).map(|i| format!("wild{i}")).collect();
    let socks = register_each(gw.udp, &names, [127, 0, 0, 1]);
    let want: HashSet<String> = ["lwm2m/+/dn/#".to_string()].into();
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &want), want);
    let mut app = MqttClient::subscriber(broker.addr(), "wild-app", "lwm2m/+/up/resp", 1);
    read_each(&mut app, gw.udp, &names, &socks);
    let m = gw.metrics_when(|m| m.sum("lwm2m_commands_routed_total", &[]) >= N as f64);
    assert_eq!(m.sum("lwm2m_commands_routed_total", &[]), N as f64);
    // 16 devices all on shard 0 has a chance of 2^-16.
    assert!(m.sum("lwm2m_commands_local_total", &[]) < N as f64);
}

#[test]
fn takeovers_through_mailboxes_of_one_message_lose_no_endpoint() {
    const N: usize = 300;
    let gw = GatewayProc::start(
        Broker::Embedded,
        "[engine]\nshards = 2\nmailbox_capacity = 1\n",
    );
    // The sockets stay open: a port used again by a later device would make its
    // Register look like a retransmission of the earlier one's.
    let first: Vec<UdpSocket> = (0..N).map(|_| socket([127, 0, 0, 1])).collect();
    let mut locations = Vec::with_capacity(N);
    for (i, s) in first.iter().enumerate() {
        let (code, loc, _) = register(s, gw.udp, &format!("tk{i}"), &[]);
        assert_eq!(code, codes::CREATED);
        locations.push(loc.expect("a location"));
    }
    assert_eq!(
        locations.iter().collect::<HashSet<_>>().len(),
        N,
        "one location per device"
    );
    // Every device comes back from a new address at once: about half land on the
    // other shard, which asks the owner for the endpoint, in bursts far beyond one
    // mailbox slot.
    let moved: Vec<UdpSocket> = (0..N)
        .map(|i| socket([127, 0, 1, (i % 250) as u8 + 1]))
        .collect();
    let updates: Vec<Vec<u8>> = locations
        .iter()
        .map(|l| {
            req(codes::POST, 2)
                .path(&["rd", l])
                .query(&["lt=600"])
                .bytes()
        })
        .collect();
    for (s, u) in moved.iter().zip(&updates) {
        s.send_to(u, gw.udp).unwrap();
    }
    for (i, (s, u)) in moved.iter().zip(&updates).enumerate() {
        assert_eq!(exchange(s, gw.udp, u).0, codes::CHANGED, "device {i}");
    }
    // Every endpoint is where the directory says: a second Update from the new address
    // is answered by the shard now holding it.
    for (i, (s, l)) in moved.iter().zip(&locations).enumerate() {
        let again = req(codes::POST, 3).path(&["rd", l]).bytes();
        assert_eq!(exchange(s, gw.udp, &again).0, codes::CHANGED, "device {i}");
    }
    let m = metrics_when(gw.api, |e| {
        e.sum("lwm2m_updates_total", &[]) >= (2 * N) as f64
    });
    assert_eq!(m.sum("lwm2m_endpoints", &[]), N as f64);
    assert_eq!(m.sum("lwm2m_updates_total", &[]), (2 * N) as f64);
    assert!(
        m.sum("lwm2m_takeovers_in_total", &[]) > 0.0,
        "some moved shards"
    );
    assert_eq!(
        m.sum("lwm2m_takeovers_in_total", &[]),
        m.sum("lwm2m_takeovers_out_total", &[])
    );
    assert!(
        m.sum("lwm2m_mailbox_deferred_total", &[]) > 0.0,
        "full mailboxes made messages wait"
    );
    assert_eq!(m.sum("lwm2m_mailbox_dropped_total", &[]), 0.0);
}

#[test]
fn a_peerhost_mountpoint_moves_the_command_subscription_with_the_device() {
    const N: usize = 24;
    let broker = Mosquitto::start();
    let gw = GatewayProc::start(
        Broker::External(broker.addr()),
        "mountpoint = \"gw/${peerhost}/${endpoint_name}/\"\n[engine]\nshards = 2\n",
    );
    let filter = |ip: &str, i: usize| format!("gw/{ip}/mv{i}/dn/#");
    let devices: Vec<UdpSocket> = (0..N).map(|_| socket([127, 0, 0, 1])).collect();
    for (i, s) in devices.iter().enumerate() {
        assert_eq!(
            register(s, gw.udp, &format!("mv{i}"), &[]).0,
            codes::CREATED
        );
    }
    let first: HashSet<String> = (0..N).map(|i| filter("127.0.0.1", i)).collect();
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &first), first);
    // The devices reboot behind another address and register again; whichever shard
    // they land on, the old filter goes and the new one stays.
    let moved: Vec<UdpSocket> = (0..N).map(|_| socket([127, 0, 0, 2])).collect();
    for (i, s) in moved.iter().enumerate() {
        assert_eq!(
            register(s, gw.udp, &format!("mv{i}"), &[]).0,
            codes::CREATED
        );
    }
    let second: HashSet<String> = (0..N).map(|i| filter("127.0.0.2", i)).collect();
    assert_eq!(
        broker.subscriptions_become("lwm2m-gateway", &second),
        second
    );
    // Commands on the new topic reach the device.
    let mut app = MqttClient::connect(broker.addr(), "edges-app", true).unwrap();
    app.publish(
        "gw/127.0.0.2/mv3/dn/cmd",
        br#"{"reqID":7,"msgType":"read","data":{"path":"/3/0/1"}}"#,
        0,
    )
    .unwrap();
    assert_eq!(next_request(&moved[3]).code, codes::GET);
}

#[test]
fn device_values_that_would_make_invalid_filters_are_refused() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start(
        Broker::External(broker.addr()),
        "mountpoint = \"gw/${clientid}/\"\n",
    );
    let s = socket([127, 0, 0, 1]);
    for bad in [
        "device_id=a+b",
        "device_id=#",
        "device_id=a/b",
        "device_id=",
    ] {
        let (code, _, text) = register(&s, gw.udp, "bad1", &[bad]);
        assert_eq!(code, codes::BAD_REQUEST, "{bad}");
        assert!(text.starts_with("device_id"), "{bad}: {text}");
    }
    let ok = socket([127, 0, 0, 1]);
    assert_eq!(
        register(&ok, gw.udp, "good1", &["device_id=c1"]).0,
        codes::CREATED
    );
    let want: HashSet<String> = ["gw/c1/dn/#".to_string()].into();
    assert_eq!(broker.subscriptions_become("lwm2m-gateway", &want), want);
    // The gateway's broker connection is intact: a command arrives.
    let mut app = MqttClient::connect(broker.addr(), "edges-bad", true).unwrap();
    app.publish(
        "gw/c1/dn/cmd",
        br#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#,
        0,
    )
    .unwrap();
    assert_eq!(next_request(&ok).code, codes::GET);
    let m = metrics_when(gw.api, |e| e.sum("lwm2m_bad_topics_total", &[]) >= 4.0);
    assert_eq!(m.sum("lwm2m_bad_topics_total", &[]), 4.0);
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 1.0);
    assert_eq!(
        m.sum("lwm2m_mqtt_reconnects_total", &[]),
        0.0,
        "the broker never dropped the gateway: {}",
        broker.log()
    );
}

#[test]
fn a_mountpoint_ending_in_a_placeholder_without_a_slash() {
    // With the embedded broker the command subscription is one wildcard filter.
    let gw = GatewayProc::start(
        Broker::Embedded,
        "mountpoint = \"lwm2m/${endpoint_name}\"\n",
    );
    let mut app = MqttClient::subscriber(gw.mqtt, "edges-noslash", "lwm2m/#", 0);
    let dev = socket([127, 0, 0, 1]);
    assert_eq!(register(&dev, gw.udp, "adn1", &[]).0, codes::CREATED);
    let (topic, _) = app.recv_publish(WAIT).expect("the register message");
    assert_eq!(topic, "lwm2m/adn1up/resp", "plain concatenation");
    app.publish(
        "lwm2m/adn1dn/cmd",
        br#"{"reqID":3,"msgType":"read","data":{"path":"/3/0/1"}}"#,
        0,
    )
    .unwrap();
    let req = next_request(&dev);
    assert_eq!(req.code, codes::GET);
    let m = metrics_when(gw.api, |e| e.sum("lwm2m_commands_routed_total", &[]) >= 1.0);
    assert_eq!(m.sum("lwm2m_commands_routed_total", &[]), 1.0);
    assert_eq!(m.sum("lwm2m_commands_unknown_endpoint_total", &[]), 0.0);
}
