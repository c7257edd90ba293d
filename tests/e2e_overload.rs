//! Overload through the real binary: a Mosquitto that hangs (SIGSTOP) during a storm of
//! registrations. The gateway sheds (5.03 with Max-Age) once its broker connections
//! hold half of `mqtt.buffer_messages`, so every device that got 2.01 has exactly one
//! register message once the broker resumes, and nothing was dropped by the buffer's
//! overflow policy.

mod common;

use common::fleet::fleet;
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::codes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEVICES: usize = 3000;
const BUFFER: usize = 400;

#[test]
fn a_hung_broker_during_a_storm_loses_no_acknowledged_registration() {
    let broker = Mosquitto::start();
    let gw = GatewayProc::start_with(
        Broker::External(broker.addr()),
        "[engine]\nshards = 2\n\n[translators]\nregister = { topic = \"up/resp\", qos = 1 }\n",
        &format!("buffer_messages = {BUFFER}"),
    );
    // The subscriber counts register messages per endpoint (QoS 1: Mosquitto keeps
    // them for it while it is stopped too).
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sub = MqttClient::connect(broker.addr(), "overload-sub", true).unwrap();
    sub.subscribe("lwm2m/+/up/resp", 1).unwrap();
    let subscriber = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some((topic, payload)) = sub.recv_publish(Duration::from_millis(100)) else {
                    continue;
                };
                let v = common::json(&payload);
                if v["msgType"] == "register" {
                    let name = topic.split('/').nth(1).unwrap().to_string();
                    *seen.lock().unwrap().entry(name).or_default() += 1;
                }
            }
        })
    };

    broker.pause();
    let mut f = fleet(gw.udp, "ovl", DEVICES);
    let out = f
        .register_all(Some(5_000), Duration::from_secs(20))
        .unwrap();
    let m = gw.metrics_when(|m| m.sum("lwm2m_mqtt_congested", &[]) == 2.0);
    let shed = m.sum("lwm2m_shed_total", &[("what", "register")]);
    assert!(shed > 0.0, "the storm met the high watermark: {out:?}");
    assert_eq!(
        m.sum("lwm2m_mqtt_congested", &[]),
        2.0,
        "both shards congested"
    );
    broker.resume();

    let acked: Vec<String> = f
        .devices
        .iter()
        .filter(|d| d.last_code == Some(codes::CREATED))
        .map(|d| d.name.clone())
        .collect();
    let refused = f
        .devices
        .iter()
        .filter(|d| d.last_code == Some(codes::SERVICE_UNAVAILABLE))
        .count();
    assert_eq!(
        acked.len() + refused,
        DEVICES,
        "every device got 2.01 or 5.03: {out:?}"
    );
    assert!(acked.len() >= BUFFER / 4, "{} registered", acked.len());
    // Every acknowledged registration reaches the subscriber, exactly once; a refused
    // one publishes nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < acked.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    subscriber.join().unwrap();
    let seen = seen.lock().unwrap();
    for name in &acked {
        assert_eq!(seen.get(name), Some(&1), "{name}: register messages");
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "register messages of refused devices"
    );
    let m = gw.metrics_when(|m| m.sum("lwm2m_mqtt_congested", &[]) == 0.0);
    assert_eq!(m.sum("lwm2m_mqtt_dropped_total", &[]), 0.0);
    assert_eq!(
        m.sum("lwm2m_mqtt_congested", &[]),
        0.0,
        "congestion cleared"
    );
    // Cleared: registrations are taken again.
    let mut g = common::fleet::fleet_from(gw.udp, "ovl-after", 10, DEVICES as u32);
    let again = g.register_all(None, Duration::from_secs(20)).unwrap();
    assert_eq!(again.ok, 10, "{again:?}");
}
