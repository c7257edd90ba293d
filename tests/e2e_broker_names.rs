//! End to end: the real binary given its broker by name. The name is looked up at start
//! and again off the shards (after a connection fails, and periodically); a name that
//! does not resolve is reported naming `mqtt.server`, and the gateway serves devices
//! while it keeps trying.

mod common;

use common::fleet::fleet;
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::sim::Fleet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Updates the device until its update message reaches `mq` (the gateway may still be
/// reconnecting when the first ones go out), or 30 s pass.
fn update_reaches(f: &mut Fleet, mq: &mut MqttClient, topic: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        assert_eq!(f.update_all(WAIT).unwrap().ok, 1, "the device is served");
        while let Some((t, _)) = mq.recv_publish(Duration::from_millis(500)) {
            if t == topic {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_broker_given_by_name_is_reached_and_reached_again_after_it_restarts() {
    let mut broker = Mosquitto::start();
    let url = format!("mqtt://localhost:{}", broker.port);
    let gw = GatewayProc::start(Broker::Named(url, broker.addr()), "");
    let log = gw.log();
    assert!(
        !log.contains("not reachable yet"),
        "the gateway connected at start:\n{log}"
    );
    assert!(
        log.contains("MQTT broker name resolved") && log.contains("localhost"),
        "the name was looked up at start:\n{log}"
    );

    let mut mq = MqttClient::subscriber(broker.addr(), "names-sub", "lwm2m/#", 0);
    let mut f = fleet(gw.udp, "bn", 1);
    assert_eq!(f.register_all(None, WAIT).unwrap().ok, 1);
    let (topic, _) = mq.recv_publish(WAIT).expect("register message");
    assert_eq!(topic, "lwm2m/bn0/up/resp");

    // The broker goes away and comes back on the same port: the connections fail, the
    // name is looked up again off the shards, and they connect again.
    drop(mq);
    broker.restart();
    let mut mq = MqttClient::subscriber(broker.addr(), "names-sub", "lwm2m/#", 0);
    assert!(
        update_reaches(&mut f, &mut mq, "lwm2m/bn0/up/update"),
        "no update message after the broker restarted:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("MQTT connection lost"), "{log}");
}

#[test]
fn a_broker_name_that_does_not_resolve_is_reported_and_devices_are_still_served() {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
    let mut gw = GatewayProc::start(
        Broker::Named("mqtt://no-such-host.invalid:1883".into(), nowhere),
        "",
    );
    let log = gw.log();
    let warning = log
        .lines()
        .find(|l| l.contains("mqtt.server") && l.contains("does not resolve"))
        .unwrap_or_else(|| panic!("no warning naming mqtt.server:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("no-such-host.invalid"), "{warning}");
    assert!(
        log.contains("not reachable yet"),
        "ready without the broker:\n{log}"
    );

    // Devices are served meanwhile.
    let mut f = fleet(gw.udp, "nr", 3);
    assert_eq!(f.register_all(None, WAIT).unwrap().ok, 3);
    assert_eq!(f.update_all(WAIT).unwrap().ok, 3);

    // The connections keep trying (each attempt asks for a new lookup).
    let m = gw.metrics_when(|m| m.sum("lwm2m_mqtt_reconnects_total", &[]) >= 2.0);
    assert!(
        m.sum("lwm2m_mqtt_reconnects_total", &[]) >= 2.0,
        "connections stopped trying:\n{}",
        gw.log()
    );
    assert_eq!(m.sum("lwm2m_mqtt_connections_up", &[]), 0.0);
    assert!(gw.stop().success(), "{}", gw.log());
}
