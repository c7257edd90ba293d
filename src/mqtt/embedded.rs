//! The embedded broker: rumqttd in-process. rumqttd serves each MQTT version on its own
//! listener: 3.1.1 on `mqtt.embedded_bind`, 5 on `mqtt.embedded_bind_v5`; both share one
//! router, so a publish on either reaches subscribers on both. MQTT 5 properties such as the
//! message-expiry interval reach MQTT 5 subscribers.
//!
//! rumqttd 0.20.0 panicked forwarding an MQTT 5 publish that carries properties to a 3.1.1
//! subscriber (and then refused every 3.1.1 connection, its listener's lock poisoned); the
//! project builds it with that fixed (vendor/README.md), so 3.1.1 clients get such publishes
//! without the properties. The MQTT 5 listener opens when the gateway speaks MQTT 5 itself
//! (then its command subscriptions are MQTT 5 ones).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info, warn};

/// Largest packet the embedded broker accepts (a SUBSCRIBE of many filters included).
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// rumqttd in-process with an MQTT 3.1.1 listener on `bind` and, when given, an MQTT 5 listener
/// on `bind_v5`, on its own threads. The listeners are bound here, before the broker runs: an
/// address another process holds is an error naming it, and once this returns the ports are
/// this process's own (their backlog takes connections while rumqttd's threads start). Port 0
/// is refused (the chosen port would be unknown).
///
/// Settings: `router.max_connections` 10,000 (rumqttd's default is 0), packets up to 64 MiB
/// accepted (a small limit turns a large SUBSCRIBE into a silent disconnect loop), and each
/// filter's log keeps up to 64 segments of 1 MiB. rumqttd serves a subscriber from the log of
/// its filter; one that falls further behind than the log holds silently skips ahead ("Read
/// cursor start jumped"), losing what it skipped. With 2 segments, the soak's register
/// messages (2,000 at once while 2,000 per-endpoint subscriptions come and go) were lost for
/// the application; with 16, an application's `lwm2m/+/up/#` fell more than 16 MiB behind
/// during a per-endpoint storm of 200,000 devices (the router busy with their subscriptions)
/// and lost half the register messages. 64 hold a 64 MiB lag per filter that has traffic
/// (what such a filter's log takes in memory once that much went through it).
pub fn start_embedded_broker(bind: SocketAddr, bind_v5: Option<SocketAddr>) -> io::Result<()> {
    let binds: Vec<SocketAddr> = std::iter::once(bind).chain(bind_v5).collect();
    for b in &binds {
        if b.port() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the embedded broker needs a fixed port",
            ));
        }
    }
    let mut broker = Broker::new(broker_config(bind, bind_v5));
    // rumqttd's error starts with the address it could not bind.
    broker.bind_listeners().map_err(|e| {
        let text = e.to_string();
        let key = match bind_v5 {
            Some(v5) if text.starts_with(&v5.to_string()) => "mqtt.embedded_bind_v5",
            _ => "mqtt.embedded_bind",
        };
        io::Error::new(e.kind(), format!("cannot listen on {text} ({key})"))
    })?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    for b in binds {
        info!(bind = %b, "embedded MQTT broker listening");
        disable_nagle(b);
    }
    Ok(())
}

/// rumqttd writes to its clients with Nagle's algorithm on, which holds a small PUBLISH back
/// until the client's (delayed) ACK of the previous one: 10–40 ms per message forwarded at
/// moderate rates. Its connections inherit TCP_NODELAY from the listener, so set it there.
fn disable_nagle(bind: SocketAddr) {
    match netio::set_nodelay_on_own_listener(bind) {
        Ok(0) => warn!(%bind, "embedded MQTT broker's listener not found: Nagle stays on"),
        Ok(_) => {}
        Err(e) => warn!(%bind, error = %e, "TCP_NODELAY on the embedded broker's listener"),
    }
}

fn broker_config(bind: SocketAddr, bind_v5: Option<SocketAddr>) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PACKET,
        max_inflight_count: 1024,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    let router = RouterConfig {
        max_connections: 10_000,
        max_outgoing_packet_count: 1024,
        max_segment_size: 1024 * 1024,
        max_segment_count: 64,
        custom_segment: None,
        initialized_filters: None,
        ..Default::default()
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server("v4-1", bind))])),
        v5: bind_v5.map(|b| HashMap::from([("1".to_string(), server("v5-1", b))])),
        ..Default::default()
    }
}
