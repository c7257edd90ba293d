//! Fleets of simulated devices (`lwm2m_gateway::sim`) for the end-to-end tests.

use super::json;
use super::mqtt_client::MqttClient;
use lwm2m_gateway::sim::{Fleet, FleetConfig};
use simd_json::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `n` devices named `prefix0`, `prefix1`, ... talking to the gateway at `udp`.
pub fn fleet(udp: SocketAddr, prefix: &str, n: usize) -> Fleet {
    fleet_from(udp, prefix, n, 0)
}

/// Like `fleet`, numbered from `first`.
pub fn fleet_from(udp: SocketAddr, prefix: &str, n: usize, first: u32) -> Fleet {
    let cfg = FleetConfig {
        devices: n,
        name_prefix: prefix.into(),
        first_index: first,
        ..Default::default()
    };
    Fleet::new(cfg, udp).expect("fleet socket")
}

/// A read of /3/0/0 with the reqID `req_id` (a string, as `drive_reads` counts them).
pub fn read_cmd(req_id: &str) -> Vec<u8> {
    format!(r#"{{"reqID":"{req_id}","msgType":"read","data":{{"path":"/3/0/0"}}}}"#).into_bytes()
}

/// Lets `fleets` answer the gateway's requests while counting the read responses that
/// reach `mq` (each must be a 2.05) by reqID, until `done` holds for the count or
/// `within` passes; returns the count.
pub fn drive_reads(
    fleets: &mut [&mut Fleet],
    mq: &mut MqttClient,
    within: Duration,
    done: impl Fn(&HashMap<String, usize>) -> bool,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + within;
    while !done(&seen) && Instant::now() < deadline {
        for f in fleets.iter_mut() {
            f.receive(Duration::from_millis(10)).unwrap();
        }
        while let Some((t, p)) = mq.recv_publish(Duration::from_millis(1)) {
            let v = json(&p);
            if t.ends_with("/up/resp") && v["msgType"].as_str() == Some("read") {
                assert_eq!(v["data"]["code"].as_str(), Some("2.05"), "{t}: {v}");
                *seen
                    .entry(v["reqID"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    seen
}
