//! The embedded broker: rumqttd in-process, MQTT 3.1.1 only.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info, warn};

/// How long `start_embedded_broker` waits for the port to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet the embedded broker accepts (a SUBSCRIBE of many filters included).
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// rumqttd in-process on `bind` (MQTT 3.1.1), on its own threads; returns once the port accepts
/// TCP connections (bounded wait, else Err). Port 0 is refused (the chosen port would be unknown).
///
/// Settings: `router.max_connections` 10,000 (rumqttd's default is 0), packets up to 64 MiB
/// accepted (a small limit turns a large SUBSCRIBE into a silent disconnect loop), no per-filter
/// segment configuration (each filter's log keeps at most 2 segments of 1 MiB).
pub fn start_embedded_broker(bind: SocketAddr) -> io::Result<()> {
    if bind.port() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the embedded broker needs a fixed port",
        ));
    }
    // Fail early (and clearly) when the port is taken.
    drop(TcpListener::bind(bind)?);

    let config = broker_config(bind);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;

    let target = connect_addr(bind);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            info!(%bind, "embedded MQTT broker listening");
            disable_nagle(bind);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("embedded MQTT broker did not listen on {bind}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

fn broker_config(bind: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PACKET,
        max_inflight_count: 1024,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-1".into(),
        listen: bind,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let router = RouterConfig {
        max_connections: 10_000,
        max_outgoing_packet_count: 1024,
        max_segment_size: 1024 * 1024,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        ..Default::default()
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// The address a local client connects to for `bind` (unspecified → loopback).
fn connect_addr(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bind.port())
        }
        _ => bind,
    }
}
