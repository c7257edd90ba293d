//! Graceful shutdown of the real binary: SIGINT and SIGTERM both exit 0, and QoS 1
//! messages the shards produced just before the signal still reach the broker (the MQTT
//! thread flushes what it holds and waits for the acknowledgements before exiting).

mod common;

use common::fleet::fleet;
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sigint_exits_zero() {
    let mut gw = GatewayProc::start(Broker::Embedded, "");
    let mut f = fleet(gw.udp, "int", 1);
    assert_eq!(f.register_all(None, WAIT).unwrap().ok, 1);
    let status = gw.stop_with("INT");
    assert!(status.success(), "SIGINT exits 0: {status}");
    let log = gw.log();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn sigterm_flushes_qos1_registers() {
    flush_on("TERM");
}

#[test]
fn sigint_flushes_qos1_registers() {
    flush_on("INT");
}

/// `N` devices register while the broker is frozen (SIGSTOP), so every register
/// message is still held by the gateway when the last 2.01 arrives; the gateway gets
/// `signal` right then, the broker is let go again, and every message must reach the
/// subscriber before the gateway exits 0.
fn flush_on(signal: &str) {
    const N: usize = 1000;
    let broker = Mosquitto::start();
    let mut gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "[translators]\nregister = { topic = \"up/resp\", qos = 1 }\n",
        "connections = 2",
    );
    let mut sub = MqttClient::subscriber(broker.addr(), "flush-sub", "lwm2m/+/up/resp", 1);
    let up = gw.metrics_when(|m| m.sum("lwm2m_mqtt_connections_up", &[]) >= 2.0);
    assert_eq!(up.sum("lwm2m_mqtt_connections_up", &[]), 2.0);

    broker.pause();
    let mut f = fleet(gw.udp, &format!("fl{}-", signal.to_lowercase()), N);
    let out = f.register_all(None, Duration::from_secs(60)).unwrap();
    assert_eq!(
        out.ok, N,
        "devices are served while the broker is frozen: {out:?}"
    );
    // Nothing can have been acknowledged: all N are held by the shards' connections.
    let held = gw.metrics_when(|m| m.sum("lwm2m_mqtt_buffered", &[]) >= N as f64);
    assert_eq!(held.sum("lwm2m_mqtt_buffered", &[]), N as f64);
    assert_eq!(held.sum("lwm2m_mqtt_acked_total", &[]), 0.0);

    gw.signal(signal);
    // The gateway is now shutting down (shards stopped, MQTT flushing within its 5 s).
    wait_for_log(&gw, "shutting down");
    broker.resume();
    let status = gw.wait_exit();
    assert!(
        status.success(),
        "SIG{signal} exits 0: {status}\n{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("timed out with messages held"),
        "{}",
        gw.log()
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < N && Instant::now() < deadline {
        if let Some((topic, _)) = sub.recv_publish(Duration::from_secs(1)) {
            *seen.entry(topic).or_default() += 1;
        }
    }
    let missing: Vec<String> = f
        .devices
        .iter()
        .map(|d| format!("lwm2m/{}/up/resp", d.name))
        .filter(|t| !seen.contains_key(t))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} register messages lost on SIG{signal}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

fn wait_for_log(gw: &GatewayProc, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !gw.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
