//! The MQTT I/O thread against real brokers: the embedded rumqttd and Debian's mosquitto.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lwm2m_gateway::mqtt::{
    spawn, start_embedded_broker, Inbound, MqttHandle, MqttOptions, MqttStats, Outbound, ServerAddr,
};

use common::mosquitto::{free_port, Mosquitto, TlsFiles};
use common::mqtt_client::MqttClient;

const WAIT: Duration = Duration::from_secs(30);

struct Collect(Sender<(String, Vec<u8>)>);

impl Inbound for Collect {
    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        let _ = self.0.send((topic.to_string(), payload.to_vec()));
    }
}

fn options(server: ServerAddr, connections: usize, buffer: usize) -> MqttOptions {
    MqttOptions {
        server,
        client_id: format!("gw-test-{}", free_port()),
        username: String::new(),
        password: String::new(),
        keepalive: Duration::from_secs(5),
        connections,
        max_inflight: 100,
        buffer_messages: buffer,
        max_packet_size: 1024 * 1024,
    }
}

fn tcp(addr: SocketAddr) -> ServerAddr {
    ServerAddr::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

type Started = (
    MqttHandle,
    std::thread::JoinHandle<()>,
    Receiver<(String, Vec<u8>)>,
);

fn start(opts: MqttOptions) -> Started {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (h, j) = spawn(opts, Box::new(Collect(tx))).expect("spawn MQTT thread");
    (h, j, rx)
}

fn stat(h: &MqttHandle, f: impl Fn(&MqttStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(h.stats()).load(Ordering::Relaxed)
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send(h: &MqttHandle, msg: Outbound) {
    let mut msg = msg;
    let deadline = Instant::now() + WAIT;
    loop {
        match h.send(msg) {
            Ok(()) => return,
            Err(m) => {
                assert!(Instant::now() < deadline, "MQTT queue stayed full");
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn publish(h: &MqttHandle, lane: u32, topic: &str, payload: &[u8], qos: u8) {
    send(
        h,
        Outbound::Publish {
            lane,
            topic: topic.into(),
            payload: payload.to_vec(),
            qos,
        },
    );
}

fn subscribe(h: &MqttHandle, lane: u32, filter: &str, qos: u8) {
    send(
        h,
        Outbound::Subscribe {
            lane,
            filter: filter.into(),
            qos,
        },
    );
}

/// The client publishes to `topic` (QoS 1) until the gateway's Inbound gets it.
fn deliver_to_gateway(client: &mut MqttClient, rx: &Receiver<(String, Vec<u8>)>, topic: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        client.publish(topic, b"cmd", 1).expect("client publish");
        while let Ok((t, _)) = rx.recv_timeout(Duration::from_millis(200)) {
            if t == topic {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic} never reached the gateway"
        );
    }
}

/// Receives until every payload in `want` arrived (duplicates allowed).
fn expect_payloads(client: &mut MqttClient, want: &HashSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !want.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "missing {} of {} messages",
            want.difference(&seen).count(),
            want.len()
        );
        if let Some((_, p)) = client.recv_publish(Duration::from_millis(500)) {
            seen.insert(p.clone());
            all.push(p);
        }
    }
    all
}

fn embedded_broker() -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    start_embedded_broker(addr).expect("embedded broker");
    addr
}

fn basics(addr: SocketAddr, connections: usize) {
    let mut client = MqttClient::connect(addr, &format!("app-{}", free_port()), true).unwrap();
    client.subscribe("up/#", 1).unwrap();
    let (h, join, rx) = start(options(tcp(addr), connections, 10_000));
    for lane in 0..connections as u32 {
        subscribe(&h, lane, &format!("dn/{lane}/#"), 1);
    }
    for lane in 0..connections as u32 {
        publish(
            &h,
            lane,
            &format!("up/{lane}"),
            format!("q0-{lane}").as_bytes(),
            0,
        );
        publish(
            &h,
            lane,
            &format!("up/{lane}"),
            format!("q1-{lane}").as_bytes(),
            1,
        );
    }
    let want: HashSet<Vec<u8>> = (0..connections)
        .flat_map(|l| {
            [
                format!("q0-{l}").into_bytes(),
                format!("q1-{l}").into_bytes(),
            ]
        })
        .collect();
    expect_payloads(&mut client, &want);
    for lane in 0..connections {
        deliver_to_gateway(&mut client, &rx, &format!("dn/{lane}/cmd"));
    }
    wait_until("QoS 1 acks", || {
        stat(&h, |s| &s.acked) >= connections as u64
    });
    assert_eq!(stat(&h, |s| &s.connected), connections as u64);
    assert_eq!(stat(&h, |s| &s.published[1]), connections as u64);
    h.shutdown(Duration::from_secs(5));
    join.join().unwrap();
}

#[test]
fn embedded_publish_and_inbound() {
    basics(embedded_broker(), 1);
}

/// The embedded broker's connections send without Nagle's delay (inherited from its listener):
/// the broker-side socket of a client's connection, found in this process, has TCP_NODELAY.
#[test]
fn embedded_broker_connections_have_nodelay() {
    let addr = embedded_broker();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let nodelay = loop {
        let mut found = None;
        netio::for_each_own_socket(|sock| {
            let local = sock.local_addr().ok().and_then(|a| a.as_socket());
            let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
            if local == Some(addr) && peer == Some(client_addr) {
                found = sock.tcp_nodelay().ok();
            }
        })
        .unwrap();
        if let Some(nodelay) = found {
            break nodelay;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never accepted the connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(nodelay, "the broker's side of the connection has Nagle on");
}

#[test]
fn embedded_ten_thousand_filters_and_unsubscribe() {
    let addr = embedded_broker();
    let mut client = MqttClient::connect(addr, "app-10k", true).unwrap();
    let (h, join, rx) = start(options(tcp(addr), 2, 20_000));
    for i in 0..10_000u32 {
        subscribe(&h, i, &format!("cmd/ep{i}/+"), 1);
    }
    wait_until("10,000 filters sent", || {
        stat(&h, |s| &s.subscribes) >= 10_000
    });
    for i in [0u32, 1, 4_999, 7_777, 9_999] {
        deliver_to_gateway(&mut client, &rx, &format!("cmd/ep{i}/x"));
    }
    assert_eq!(stat(&h, |s| &s.send_errors), 0);

    // Unsubscribe ep2 (lane 2, connection 0); ep4 shares its connection and stays.
    send(
        &h,
        Outbound::Unsubscribe {
            lane: 2,
            filter: "cmd/ep2/+".into(),
        },
    );
    wait_until("UNSUBSCRIBE sent", || stat(&h, |s| &s.unsubscribes) >= 1);
    // Rounds of (gone, kept) until a round brings only the kept one, then a few more rounds
    // must not bring the gone one either.
    let mut quiet_rounds = 0;
    let deadline = Instant::now() + WAIT;
    while quiet_rounds < 5 {
        assert!(Instant::now() < deadline, "unsubscribe never took effect");
        client.publish("cmd/ep2/x", b"gone", 1).unwrap();
        client.publish("cmd/ep4/x", b"kept", 1).unwrap();
        let mut got_gone = false;
        loop {
            let (t, _) = rx.recv_timeout(WAIT).expect("kept filter delivers");
            if t == "cmd/ep2/x" {
                got_gone = true;
            } else if t == "cmd/ep4/x" {
                break;
            }
        }
        if got_gone {
            assert_eq!(quiet_rounds, 0, "unsubscribed filter delivered again");
        } else {
            quiet_rounds += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx
        .try_iter()
        .all(|(t, _)| t != "cmd/ep2/x" || quiet_rounds == 0));
    h.shutdown(Duration::from_secs(5));
    join.join().unwrap();
}

#[test]
fn mosquitto_basics_two_connections() {
    let broker = Mosquitto::start();
    basics(broker.addr(), 2);
}

#[test]
fn mosquitto_qos2_exactly_once_both_ways() {
    let broker = Mosquitto::start();
    let mut client = MqttClient::connect(broker.addr(), "app-q2", true).unwrap();
    client.subscribe("q2/#", 2).unwrap();
    let (h, join, rx) = start(options(tcp(broker.addr()), 2, 10_000));
    subscribe(&h, 0, "gw/q2/#", 2);
    let n = 200u32;
    for i in 0..n {
        publish(
            &h,
            i,
            &format!("q2/{}", i % 2),
            format!("m{i}").as_bytes(),
            2,
        );
    }
    let want: HashSet<Vec<u8>> = (0..n).map(|i| format!("m{i}").into_bytes()).collect();
    let mut all = expect_payloads(&mut client, &want);
    wait_until("PUBCOMPs", || stat(&h, |s| &s.acked) >= n as u64);
    while let Some((_, p)) = client.recv_publish(Duration::from_millis(500)) {
        all.push(p);
    }
    assert_eq!(all.len(), n as usize, "QoS 2 delivered more than once");
    assert_eq!(stat(&h, |s| &s.published[2]), n as u64);

    // Broker to gateway at QoS 2: delivered once.
    deliver_to_gateway(&mut client, &rx, "gw/q2/probe");
    client.publish("gw/q2/once", b"x", 2).unwrap();
    let mut count = 0;
    while let Ok((t, _)) = rx.recv_timeout(Duration::from_millis(500)) {
        count += (t == "gw/q2/once") as usize;
    }
    assert_eq!(count, 1);
    h.shutdown(Duration::from_secs(5));
    join.join().unwrap();
}

#[test]
fn mosquitto_restart_loses_no_qos1_message() {
    let mut broker = Mosquitto::start_persistent();
    let sub_id = "app-restart";
    let mut client = MqttClient::connect(broker.addr(), sub_id, false).unwrap();
    client.subscribe("r/#", 1).unwrap();
    let (h, join, _rx) = start(options(tcp(broker.addr()), 2, 100_000));
    wait_until("connections up", || stat(&h, |s| &s.connected) == 2);

    let total = 5_000u32;
    let mut seen = HashSet::new();
    let mut next = 0u32;
    // First half, paced, while the subscriber reads.
    while next < total / 2 {
        for _ in 0..50 {
            publish(
                &h,
                next,
                &format!("r/{}", next % 8),
                next.to_string().as_bytes(),
                1,
            );
            next += 1;
        }
        while let Some((_, p)) = client.recv_publish(Duration::from_millis(2)) {
            seen.insert(p);
        }
    }
    // Stop mid-stream; the rest is published while the broker is away.
    broker.stop();
    while next < total {
        publish(
            &h,
            next,
            &format!("r/{}", next % 8),
            next.to_string().as_bytes(),
            1,
        );
        next += 1;
    }
    // Whatever the subscriber still had in its socket.
    while let Ok(Some((_, p))) = client.try_recv_publish(Duration::from_millis(100)) {
        seen.insert(p);
    }
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    broker.spawn();
    let mut client = MqttClient::connect(broker.addr(), sub_id, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {total} messages missing after the restart; acked {}, reconnects {}, \
             connected {}, pending {}; mosquitto log:\n{}",
            total as usize - seen.len(),
            stat(&h, |s| &s.acked),
            stat(&h, |s| &s.reconnects),
            stat(&h, |s| &s.connected),
            stat(&h, |s| &s.pending),
            broker.log()
        );
        if let Some((_, p)) = client.recv_publish(Duration::from_millis(500)) {
            seen.insert(p);
        }
    }
    for i in 0..total {
        assert!(seen.contains(i.to_string().as_bytes()), "message {i} lost");
    }
    assert!(stat(&h, |s| &s.reconnects) > 0);
    wait_until("all acked", || stat(&h, |s| &s.acked) >= total as u64);
    h.shutdown(Duration::from_secs(5));
    join.join().unwrap();
}

#[test]
fn overflow_drops_qos0_first_and_stays_bounded() {
    // Nothing listens on this port.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (h, join, _rx) = start(options(tcp(addr), 2, 100));
    for i in 0..60u32 {
        publish(&h, i, "o/1", &i.to_be_bytes(), 1);
    }
    for i in 0..200u32 {
        publish(&h, i, "o/0", &i.to_be_bytes(), 0);
        assert!(stat(&h, |s| &s.pending) <= 100);
    }
    wait_until("all messages accounted", || {
        stat(&h, |s| &s.pending) + stat(&h, |s| &s.dropped_overflow) == 260
    });
    assert_eq!(stat(&h, |s| &s.pending), 100);
    assert_eq!(stat(&h, |s| &s.dropped_overflow), 160);
    // QoS 1 messages are kept over QoS 0 ones: 60 more QoS 1 evict the 40 QoS 0 left, then
    // the oldest QoS 1.
    for i in 0..60u32 {
        publish(&h, i, "o/1", &i.to_be_bytes(), 1);
    }
    wait_until("second batch accounted", || {
        stat(&h, |s| &s.pending) + stat(&h, |s| &s.dropped_overflow) == 320
    });
    assert_eq!(stat(&h, |s| &s.pending), 100);
    wait_until("reconnect attempts", || stat(&h, |s| &s.reconnects) > 0);
    assert_eq!(stat(&h, |s| &s.connected), 0);
    h.shutdown(Duration::from_millis(200));
    join.join().unwrap();
}

#[test]
fn shutdown_flushes_queued_messages() {
    let broker = Mosquitto::start();
    let mut client = MqttClient::connect(broker.addr(), "app-sd", true).unwrap();
    client.subscribe("sd/#", 1).unwrap();
    let (h, join, _rx) = start(options(tcp(broker.addr()), 2, 10_000));
    wait_until("connections up", || stat(&h, |s| &s.connected) == 2);
    let mut want = HashSet::new();
    for i in 0..2_000u32 {
        let qos = (i % 2) as u8;
        let payload = format!("s{i}");
        publish(&h, i, "sd/x", payload.as_bytes(), qos);
        want.insert(payload.into_bytes());
    }
    h.shutdown(Duration::from_secs(20));
    join.join().unwrap();
    assert_eq!(stat(&h, |s| &s.acked), 1_000);
    assert_eq!(stat(&h, |s| &s.connected), 0);
    expect_payloads(&mut client, &want);
    // The thread is gone: send gives the message back.
    assert!(h
        .send(Outbound::Publish {
            lane: 0,
            topic: "sd/late".into(),
            payload: vec![],
            qos: 0
        })
        .is_err());
}

#[test]
fn malformed_broker_input_reconnects() {
    // A fake broker: accepts, answers CONNACK followed by a packet of type 15 (invalid).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00, 0xF0, 0x00]);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (h, join, _rx) = start(options(tcp(addr), 1, 100));
    wait_until("protocol errors counted", || {
        stat(&h, |s| &s.protocol_errors) >= 2 && stat(&h, |s| &s.reconnects) >= 2
    });
    h.shutdown(Duration::from_millis(100));
    join.join().unwrap();
}

/// A CA and a server certificate for localhost/127.0.0.1, made with openssl.
fn make_certs(dir: &Path) -> (TlsFiles, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=gateway test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        },
        dir.join("ca.crt"),
    )
}

#[test]
fn mosquitto_tls_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = make_certs(dir.path());
    let broker = Mosquitto::start_tls(files);
    let server = ServerAddr::Tls {
        host: "localhost".into(),
        port: broker.port,
        ca_file: Some(ca),
    };
    let (h, join, rx) = start(options(server, 2, 10_000));
    // The gateway subscribes and publishes to itself: both directions over TLS.
    subscribe(&h, 0, "tls/#", 1);
    let deadline = Instant::now() + WAIT;
    let mut got = HashSet::new();
    let mut round = 0u32;
    while got.len() < 2 {
        assert!(Instant::now() < deadline, "nothing came back over TLS");
        for lane in 0..2u32 {
            publish(&h, lane, &format!("tls/{lane}"), &round.to_be_bytes(), 1);
        }
        round += 1;
        while let Ok((t, _)) = rx.recv_timeout(Duration::from_millis(300)) {
            got.insert(t);
        }
    }
    assert_eq!(stat(&h, |s| &s.connected), 2);
    wait_until("acks over TLS", || stat(&h, |s| &s.acked) >= 2);
    h.shutdown(Duration::from_secs(5));
    join.join().unwrap();
}

#[test]
fn tls_with_unknown_ca_never_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _ca) = make_certs(dir.path());
    let broker = Mosquitto::start_tls(files);
    // webpki roots do not know the test CA: the handshake fails and is retried.
    let server = ServerAddr::Tls {
        host: "localhost".into(),
        port: broker.port,
        ca_file: None,
    };
    let (h, join, _rx) = start(options(server, 1, 100));
    wait_until("retries", || stat(&h, |s| &s.reconnects) >= 2);
    assert_eq!(stat(&h, |s| &s.connected), 0);
    h.shutdown(Duration::from_millis(100));
    join.join().unwrap();
}
