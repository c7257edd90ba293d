//! `[mqtt]`: the broker the gateway publishes to (the gateway's own table;
//! EMQX needs none because it is itself the broker).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::secret::Secret;

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// `"embedded"`, `"mqtt://host[:port]"` or `"mqtts://host[:port]"`.
    pub server: MqttServer,
    /// Where the embedded broker listens for MQTT 3.1.1 (used with `server = "embedded"`).
    #[serde(deserialize_with = "super::bind::deserialize")]
    pub embedded_bind: SocketAddr,
    /// Where the embedded broker listens for MQTT 5 (rumqttd serves each version on its own
    /// port) when `protocol` is 5; applications that set a message-expiry interval connect
    /// here.
    #[serde(deserialize_with = "super::bind::deserialize")]
    pub embedded_bind_v5: SocketAddr,
    /// The MQTT version the gateway speaks to its broker.
    pub protocol: MqttProtocol,
    /// `${node}` is replaced by the host name; each connection appends `-<n>`.
    pub client_id: String,
    pub username: String,
    pub password: Secret,
    /// 0 disables keepalive; otherwise whole seconds, 1s..=65535s.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub keepalive: Duration,
    /// Broker connections, spread over the shards (each shard publishes and
    /// receives its commands on its own; at least one each) (1..=64). Unset: see
    /// [`default_connections`].
    pub connections: Option<usize>,
    pub subscribe: SubscribeMode,
    /// QoS>=1 publishes awaiting their ack, per connection (1..=65535).
    pub max_inflight: u16,
    /// Publishes held over all shards while the broker is slow or away; beyond
    /// half of it the shards shed, beyond it QoS 0 ones are dropped first, then the
    /// oldest (counted). Unset: see [`default_buffer_messages`].
    pub buffer_messages: Option<usize>,
    /// CA certificates (PEM) for `mqtts://`; absent = the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// Per-endpoint command filters one broker connection holds at most by default. Mosquitto
/// 2.0 looks a connection's filters through on every SUBSCRIBE, so its SUBSCRIBE rate on one
/// connection falls as that connection's filters grow (measured: about 3e9 / filters held
/// per second, 150,000/s at 20,000 and 16,000/s at 180,000; `bench/results/`); at 16,384 it
/// stays near 150,000/s per connection, three times the rate of a 50,000/s storm.
pub const FILTERS_PER_CONNECTION: u64 = 16_384;

/// The fewest publishes held when `mqtt.buffer_messages` is unset.
pub const MIN_BUFFER_MESSAGES: u64 = 200_000;

/// Publishes held over all shards when `mqtt.buffer_messages` is unset: one per device
/// the listeners admit (`devices`, at most `max`), at least [`MIN_BUFFER_MESSAGES`].
/// A storm of every admitted device, its register messages waiting for their
/// subscriptions' SUBACKs, then stays below the shedding watermark (half of it)
/// while the broker keeps pace: with 200,000 a per-endpoint storm of 1,000,000 was
/// shed and retried at 18,253 registrations/s, with 1,000,000 it ran at 56,784/s
/// (`bench/results/2026-12-07-0415-storm-pe-buffer.md`). Nothing is allocated until
/// held.
pub fn default_buffer_messages(devices: u64, max: u64) -> usize {
    devices.clamp(MIN_BUFFER_MESSAGES, max) as usize
}

/// Broker connections when `mqtt.connections` is unset: 2 with one wildcard filter; with a
/// filter per endpoint, enough that `devices` (what the listeners admit) put at most
/// [`FILTERS_PER_CONNECTION`] on each, from 2 to 64.
pub fn default_connections(per_endpoint: bool, devices: u64) -> usize {
    if !per_endpoint {
        return 2;
    }
    devices.div_ceil(FILTERS_PER_CONNECTION).clamp(2, 64) as usize
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            server: MqttServer::Embedded,
            embedded_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            embedded_bind_v5: SocketAddr::from((Ipv4Addr::LOCALHOST, 1884)),
            protocol: MqttProtocol::V5,
            client_id: "lwm2m-gateway-${node}".to_string(),
            username: String::new(),
            password: Secret::default(),
            keepalive: Duration::from_secs(30),
            connections: None,
            subscribe: SubscribeMode::Auto,
            max_inflight: 256,
            buffer_messages: None,
            ca_file: None,
        }
    }
}

/// `mqtt.server`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MqttServer {
    /// The broker built into the gateway, listening on `mqtt.embedded_bind`.
    #[default]
    Embedded,
    /// `mqtt://host[:port]` (port 1883 by default).
    Tcp { host: String, port: u16 },
    /// `mqtts://host[:port]` (port 8883 by default).
    Tls { host: String, port: u16 },
}

impl MqttServer {
    pub fn is_embedded(&self) -> bool {
        matches!(self, MqttServer::Embedded)
    }
}

impl FromStr for MqttServer {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s == "embedded" {
            return Ok(MqttServer::Embedded);
        }
        let bad = |why: &str| {
            format!(
                "invalid MQTT server \"{input}\": {why}; expected \"embedded\", \
                 \"mqtt://host:port\" or \"mqtts://host:port\""
            )
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad("a path is not allowed"));
        }
        if rest.contains('@') {
            return Err(bad("put credentials in mqtt.username and mqtt.password"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?)),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(':') && !rest.starts_with('[') {
            return Err(bad("missing or malformed host"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("bad port")),
            },
        };
        let host = host.to_string();
        Ok(if tls {
            MqttServer::Tls { host, port }
        } else {
            MqttServer::Tcp { host, port }
        })
    }
}

impl fmt::Display for MqttServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, host, port) = match self {
            MqttServer::Embedded => return f.write_str("embedded"),
            MqttServer::Tcp { host, port } => ("mqtt", host, port),
            MqttServer::Tls { host, port } => ("mqtts", host, port),
        };
        if host.contains(':') {
            write!(f, "{scheme}://[{host}]:{port}")
        } else {
            write!(f, "{scheme}://{host}:{port}")
        }
    }
}

impl<'de> Deserialize<'de> for MqttServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `mqtt.protocol`: `"5"` (the default) or `"3.1.1"`.
///
/// MQTT 5 by default: only over MQTT 5 does a command's message-expiry interval reach the
/// gateway (a queued command past it is answered with an expiry error instead of being sent),
/// and the broker's limits (Receive Maximum, Maximum Packet Size) and reasons for refusing a
/// publish or a subscription are known. Every broker in common use speaks it (Mosquitto 1.6+,
/// EMQX, HiveMQ, VerneMQ, rumqttd); `"3.1.1"` is for older brokers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    #[default]
    V5,
}

impl FromStr for MqttProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "5" | "5.0" => Ok(MqttProtocol::V5),
            "3.1.1" => Ok(MqttProtocol::V311),
            other => Err(format!(
                "invalid MQTT protocol \"{other}\": expected \"5\" or \"3.1.1\""
            )),
        }
    }
}

impl fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttProtocol::V311 => "3.1.1",
            MqttProtocol::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = MqttProtocol;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"5\" or \"3.1.1\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MqttProtocol, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<MqttProtocol, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<MqttProtocol, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<MqttProtocol, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// `mqtt.subscribe`: how command topics are subscribed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeMode {
    /// `Wildcard` with the embedded broker, `PerEndpoint` otherwise.
    #[default]
    Auto,
    /// One subscription per registered endpoint (nodes can share a broker).
    PerEndpoint,
    /// One filter derived from the mountpoint.
    Wildcard,
}

impl SubscribeMode {
    /// The mode in effect: `Auto` resolves to `Wildcard` for the embedded
    /// broker and `PerEndpoint` otherwise; the others stay as they are.
    pub fn resolve(&self, server: &MqttServer) -> SubscribeMode {
        match self {
            SubscribeMode::Auto if server.is_embedded() => SubscribeMode::Wildcard,
            SubscribeMode::Auto => SubscribeMode::PerEndpoint,
            other => *other,
        }
    }
}

impl FromStr for SubscribeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(SubscribeMode::Auto),
            "per_endpoint" => Ok(SubscribeMode::PerEndpoint),
            "wildcard" => Ok(SubscribeMode::Wildcard),
            _ => Err(format!(
                "invalid subscribe mode \"{s}\": expected \"auto\", \"per_endpoint\" or \"wildcard\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> MqttServer {
        MqttServer::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn server_forms() {
        assert_eq!("embedded".parse(), Ok(MqttServer::Embedded));
        assert_eq!("mqtt://broker".parse(), Ok(tcp("broker", 1883)));
        assert_eq!("mqtt://broker:1884".parse(), Ok(tcp("broker", 1884)));
        assert_eq!("mqtt://10.0.0.1:1883/".parse(), Ok(tcp("10.0.0.1", 1883)));
        assert_eq!("mqtt://[::1]:1885".parse(), Ok(tcp("::1", 1885)));
        assert_eq!("mqtt://[::1]".parse(), Ok(tcp("::1", 1883)));
        assert_eq!(
            "mqtts://broker.example.com".parse(),
            Ok(MqttServer::Tls {
                host: "broker.example.com".into(),
                port: 8883
            })
        );
        assert_eq!(
            "mqtts://b:8884".parse::<MqttServer>().unwrap().to_string(),
            "mqtts://b:8884"
        );
        assert_eq!(tcp("::1", 1).to_string(), "mqtt://[::1]:1");
    }

    #[test]
    fn bad_servers() {
        for bad in [
            "",
            "broker:1883",
            "tcp://broker:1883",
            "http://broker",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://broker:0",
            "mqtt://broker:99999",
            "mqtt://broker:x",
            "mqtt://broker/topic",
            "mqtt://u:p@broker",
            "mqtt://::1:1883",
            "mqtt://[::1",
            "Embedded",
        ] {
            assert!(bad.parse::<MqttServer>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn protocol_forms() {
        assert_eq!("5".parse(), Ok(MqttProtocol::V5));
        assert_eq!("5.0".parse(), Ok(MqttProtocol::V5));
        assert_eq!(" 3.1.1 ".parse(), Ok(MqttProtocol::V311));
        for bad in ["", "3", "3.1", "4", "v5", "mqttv5"] {
            let e = bad.parse::<MqttProtocol>().unwrap_err();
            assert!(e.contains("expected \"5\" or \"3.1.1\""), "{bad:?}: {e}");
        }
        assert_eq!(MqttProtocol::default(), MqttProtocol::V5);
        assert_eq!(MqttProtocol::V311.to_string(), "3.1.1");
        assert_eq!(MqttProtocol::V5.to_string(), "5");
    }

    #[test]
    fn subscribe_resolve() {
        let emb = MqttServer::Embedded;
        let ext = tcp("b", 1883);
        assert_eq!(SubscribeMode::Auto.resolve(&emb), SubscribeMode::Wildcard);
        assert_eq!(
            SubscribeMode::Auto.resolve(&ext),
            SubscribeMode::PerEndpoint
        );
        assert_eq!(
            SubscribeMode::Wildcard.resolve(&ext),
            SubscribeMode::Wildcard
        );
        assert_eq!(
            SubscribeMode::PerEndpoint.resolve(&emb),
            SubscribeMode::PerEndpoint
        );
    }
}
