//! Range and consistency checks of a parsed [`Config`]; each error names
//! the key it is about.

use std::net::SocketAddr;
use std::time::Duration;

use super::types::{check_lwm2m_path, BLOCK_SIZES};
use super::{
    Api, Authentication, AutoObserve, Blockwise, Coap, Config, ConfigError, Engine, Listeners,
    Mqtt, QueueMode,
};

type R = Result<(), ConfigError>;

fn err(key: impl Into<String>, message: impl Into<String>) -> R {
    Err(ConfigError::invalid(key, message))
}

fn range<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T, hi: T) -> R {
    if v < lo || v > hi {
        return err(key, format!("must be between {lo} and {hi}, got {v}"));
    }
    Ok(())
}

fn positive(key: &str, d: Duration) -> R {
    if d.is_zero() {
        return err(key, "must be greater than 0s");
    }
    at_most_timer(key, d)
}

/// The longest timer a duration key may set: 2^32 - 1 ms (about 49.7 days), the bound EMQX
/// puts on its timeout keys too. Timers are milliseconds added to the shard clock; anything
/// longer is a typo (a unit left out), not a setting.
const MAX_TIMER: Duration = Duration::from_millis(u32::MAX as u64);

fn at_most_timer(key: &str, d: Duration) -> R {
    if d > MAX_TIMER {
        return err(
            key,
            format!(
                "must be at most {}ms (about 49.7 days), got {}",
                MAX_TIMER.as_millis(),
                super::duration::format_duration(d)
            ),
        );
    }
    Ok(())
}

/// Channels allocated up front at their full capacity: beyond this a typo would make the
/// gateway abort on allocation at start.
const MAX_PREALLOCATED: usize = 1 << 24;

pub(super) fn validate(c: &Config) -> R {
    check_lwm2m(c)?;
    check_listeners(&c.listeners)?;
    check_blockwise(&c.blockwise)?;
    check_authentication(&c.authentication)?;
    check_mqtt(&c.mqtt)?;
    check_engine(&c.engine)?;
    check_tcp_listeners(c)?;
    check_api(&c.api)?;
    check_coap(&c.coap)?;
    check_queue(&c.queue)?;
    check_store(c)
}

/// `[store]` and `[cluster]`: a Redis store needs a `redis://` URL and an external broker
/// (every node would have a broker of its own), and a node name that fits in a key.
fn check_store(c: &Config) -> R {
    if c.store.kind != super::StoreKind::Redis {
        return Ok(());
    }
    let url = &c.store.url;
    if !(url.starts_with("redis://") || url.starts_with("unix://")) {
        return err(
            "store.url",
            format!("must be a redis:// (or unix://) URL, got {url:?}"),
        );
    }
    if c.mqtt.server.is_embedded() {
        return err(
            "store.kind",
            "\"redis\" (several nodes acting as one gateway) needs an external broker that every \
             node connects to (mqtt.server): with the embedded broker each node would have its own",
        );
    }
    check_node_name(&c.cluster.node)
}

/// A node name: at most 64 of `A-Z a-z 0-9 . _ -` (empty: the host name and process id).
fn check_node_name(node: &str) -> R {
    let ok = node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return err(
            "cluster.node",
            format!("must be at most 64 letters, digits, '.', '_' or '-', got {node:?}"),
        );
    }
    Ok(())
}

/// The LwM2M keys: lifetimes, queue mode window, auto-observe paths, mountpoint and
/// translator topics.
fn check_lwm2m(c: &Config) -> R {
    if c.lifetime_max.is_zero() {
        return err("lifetime_max", "must be greater than 0s");
    }
    if c.lifetime_min < Duration::from_secs(1) {
        return err(
            "lifetime_min",
            format!(
                "must be at least 1s (lifetimes are whole seconds; a lifetime of 0 would end a \
                 registration as soon as it is made), got {}",
                super::duration::format_duration(c.lifetime_min)
            ),
        );
    }
    if c.lifetime_min > c.lifetime_max {
        return err(
            "lifetime_min",
            format!(
                "must not exceed lifetime_max ({:?} > {:?})",
                c.lifetime_min, c.lifetime_max
            ),
        );
    }
    if c.qmode_time_window.is_zero() {
        return err(
            "qmode_time_window",
            "must be greater than 0s: a device in queue mode would never be sent a command",
        );
    }
    at_most_timer("qmode_time_window", c.qmode_time_window)?;
    positive("idle_timeout", c.idle_timeout)?;
    if let AutoObserve::Paths(paths) = &c.auto_observe {
        for (i, p) in paths.iter().enumerate() {
            check_lwm2m_path(p)
                .map_err(|m| ConfigError::invalid(format!("auto_observe[{i}]"), m))?;
        }
    }
    if c.mountpoint.contains(['+', '#']) {
        return err("mountpoint", "must not contain MQTT wildcards (+ or #)");
    }
    if c.mountpoint.chars().any(char::is_control) {
        return err("mountpoint", "must not contain NUL or control characters");
    }
    for (name, t) in c.translators.iter() {
        let key = format!("translators.{name}");
        if t.qos > 2 {
            return err(
                format!("{key}.qos"),
                format!("must be 0, 1 or 2, got {}", t.qos),
            );
        }
        check_topic(&format!("{key}.topic"), &t.topic, name == "command")?;
    }
    check_mountpoint(c)?;
    Ok(())
}

/// The UDP and DTLS listeners: names, addresses that do not overlap, admission limits,
/// DTLS credentials, and one listener of each kind.
fn check_listeners(listeners: &Listeners) -> R {
    if listeners.udp.is_empty() {
        return err(
            "listeners.udp",
            "at least one UDP listener is needed, e.g. [listeners.udp.default] bind = \"0.0.0.0:5783\"",
        );
    }
    let mut udp = Claims::default();
    for (name, l) in &listeners.udp {
        let key = format!("listeners.udp.{name}");
        check_name(&key, name)?;
        udp.claim(format!("{key}.bind"), l.bind)?;
        if l.max_connections == 0 {
            return err(format!("{key}.max_connections"), "must be at least 1");
        }
        if l.max_conn_rate == 0 {
            return err(format!("{key}.max_conn_rate"), "must be at least 1");
        }
    }
    for (name, l) in &listeners.dtls {
        let key = format!("listeners.dtls.{name}");
        check_name(&key, name)?;
        udp.claim(format!("{key}.bind"), l.bind)?;
        match (&l.certfile, &l.keyfile) {
            (Some(_), None) => {
                return err(format!("{key}.keyfile"), "required when certfile is set")
            }
            (None, Some(_)) => {
                return err(format!("{key}.certfile"), "required when keyfile is set")
            }
            _ => {}
        }
        if l.psk_file.is_none() && l.certfile.is_none() {
            return err(
                key,
                "needs psk_file (lines \"identity:hexkey\") or certfile + keyfile",
            );
        }
        if l.max_connections == 0 {
            return err(format!("{key}.max_connections"), "must be at least 1");
        }
        if l.max_conn_rate == 0 {
            return err(format!("{key}.max_conn_rate"), "must be at least 1");
        }
        positive(&format!("{key}.idle_timeout"), l.idle_timeout)?;
        if !(6..=32).contains(&l.connection_id_length) {
            return err(format!("{key}.connection_id_length"), "must be 6 to 32");
        }
        if l.max_sessions == 0 {
            return err(format!("{key}.max_sessions"), "must be at least 1");
        }
    }

    // One listener of each kind is served: refuse the others rather than ignore them.
    let udp_names: Vec<&String> = listeners.udp.keys().collect();
    let dtls_names: Vec<&String> = listeners.dtls.keys().collect();
    for (kind, names) in [("udp", udp_names), ("dtls", dtls_names)] {
        if let [first, extra, ..] = names[..] {
            return err(
                format!("listeners.{kind}.{extra}"),
                format!(
                    "only one [listeners.{kind}.*] table is served (listeners.{kind}.{first}); \
                     remove this one"
                ),
            );
        }
    }
    Ok(())
}

/// `[blockwise]`.
fn check_blockwise(b: &Blockwise) -> R {
    if !BLOCK_SIZES.contains(&b.max_block_size) {
        return err(
            "blockwise.max_block_size",
            format!(
                "must be one of 16, 32, 64, 128, 256, 512, 1024, got {}",
                b.max_block_size
            ),
        );
    }
    if b.max_body_size < u64::from(b.max_block_size) {
        return err(
            "blockwise.max_body_size",
            format!(
                "must be at least max_block_size ({} bytes), got {}",
                b.max_block_size, b.max_body_size
            ),
        );
    }
    positive("blockwise.exchange_lifetime", b.exchange_lifetime)?;
    Ok(())
}

/// `[authentication]`.
fn check_authentication(a: &Authentication) -> R {
    if a.backend != "http" {
        return err(
            "authentication.backend",
            format!("only \"http\" is supported, got \"{}\"", a.backend),
        );
    }
    if a.mechanism != "password_based" {
        return err(
            "authentication.mechanism",
            format!(
                "only \"password_based\" is supported, got \"{}\"",
                a.mechanism
            ),
        );
    }
    if a.ssl.verify != "verify_none" && a.ssl.verify != "verify_peer" {
        return err(
            "authentication.ssl.verify",
            format!(
                "must be \"verify_none\" or \"verify_peer\", got \"{}\"",
                a.ssl.verify
            ),
        );
    }
    if a.enable {
        check_url("authentication.url", &a.url)?;
        if a.pool_size == 0 {
            return err("authentication.pool_size", "must be at least 1");
        }
        positive("authentication.connect_timeout", a.connect_timeout)?;
        positive("authentication.request_timeout", a.request_timeout)?;
    }
    Ok(())
}

/// `[mqtt]` (its listen addresses are checked with the API's, [`check_tcp_listeners`]).
fn check_mqtt(m: &Mqtt) -> R {
    if m.client_id.is_empty() {
        return err("mqtt.client_id", "must not be empty");
    }
    let ka = m.keepalive;
    if !ka.is_zero() && (ka.subsec_nanos() != 0 || ka.as_secs() == 0 || ka.as_secs() > 65535) {
        return err(
            "mqtt.keepalive",
            format!("must be 0s (off) or whole seconds from 1s to 65535s, got {ka:?}"),
        );
    }
    if let Some(n) = m.connections {
        range("mqtt.connections", n, 1, 64)?;
    }
    range("mqtt.max_inflight", m.max_inflight, 1, u16::MAX)?;
    if let Some(n) = m.buffer_messages {
        range("mqtt.buffer_messages", n, 1, MAX_PREALLOCATED)?;
    }
    Ok(())
}

/// `[engine]`.
fn check_engine(e: &Engine) -> R {
    range("engine.shards", e.shards, 0, 1024)?;
    range("engine.recv_batch", e.recv_batch, 1, 1024)?;
    range("engine.socket_rcvbuf", e.socket_rcvbuf, 1, i32::MAX as u64)?;
    range("engine.socket_sndbuf", e.socket_sndbuf, 1, i32::MAX as u64)?;
    range(
        "engine.mailbox_capacity",
        e.mailbox_capacity,
        1,
        MAX_PREALLOCATED,
    )?;
    range("engine.max_datagram", e.max_datagram, 512, 65535)?;
    Ok(())
}

/// The TCP listen addresses (the embedded broker's, the API's) do not overlap.
fn check_tcp_listeners(c: &Config) -> R {
    let mut tcp = Claims::default();
    if c.mqtt.server.is_embedded() {
        tcp.claim("mqtt.embedded_bind".to_string(), c.mqtt.embedded_bind)?;
        if c.mqtt.protocol == super::MqttProtocol::V5 {
            tcp.claim("mqtt.embedded_bind_v5".to_string(), c.mqtt.embedded_bind_v5)?;
        }
    }
    tcp.claim("api.bind".to_string(), c.api.bind)?;
    Ok(())
}

/// `[api]`.
fn check_api(a: &Api) -> R {
    if a.api_key.is_empty() {
        return err("api.api_key", "must not be empty");
    }
    Ok(())
}

/// `[coap]`.
fn check_coap(k: &Coap) -> R {
    positive("coap.ack_timeout", k.ack_timeout)?;
    if !(k.ack_random_factor.is_finite() && k.ack_random_factor >= 1.0) {
        return err(
            "coap.ack_random_factor",
            format!("must be at least 1.0, got {}", k.ack_random_factor),
        );
    }
    range("coap.max_retransmit", k.max_retransmit, 0, 20)?;
    if k.nstart == 0 {
        return err("coap.nstart", "must be at least 1");
    }
    positive("coap.exchange_lifetime", k.exchange_lifetime)?;
    Ok(())
}

/// `[queue]`.
fn check_queue(q: &QueueMode) -> R {
    if q.max_queued == 0 {
        return err("queue.max_queued", "must be at least 1");
    }
    at_most_timer("queue.default_ttl", q.default_ttl)?;
    Ok(())
}

/// Listen addresses of one transport, to refuse two listeners on the same
/// port (an unspecified address overlaps every address of its family).
/// Port 0 (any free port) never conflicts.
#[derive(Default)]
struct Claims(Vec<(SocketAddr, String)>);

impl Claims {
    fn claim(&mut self, key: String, addr: SocketAddr) -> R {
        if addr.port() == 0 {
            return Ok(());
        }
        let overlaps = |other: &SocketAddr| {
            other.port() == addr.port()
                && other.is_ipv4() == addr.is_ipv4()
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        };
        if let Some((other, other_key)) = self.0.iter().find(|(a, _)| overlaps(a)) {
            return err(
                key,
                format!("{addr} overlaps {other}, already used by {other_key}"),
            );
        }
        self.0.push((addr, key));
        Ok(())
    }
}

fn check_name(key: &str, name: &str) -> R {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return err(
            key,
            "listener names may hold only letters, digits, '_' and '-'",
        );
    }
    Ok(())
}

/// The mountpoint as commands are matched against it: followed by the command topic
/// it must form a valid MQTT filter (`lwm2m/${endpoint_name}` + `#` does not), and
/// no two placeholders may touch (a topic could not be split back into them).
fn check_mountpoint(c: &Config) -> R {
    use crate::lwm2m::template::{Template, Vars};
    let t = Template::parse(&c.mountpoint);
    if t.has_adjacent_placeholders() {
        return err(
            "mountpoint",
            format!(
                "\"{}\": two placeholders need literal text between them",
                c.mountpoint
            ),
        );
    }
    let mut probe = String::new();
    let v = "x";
    t.render(
        &Vars {
            endpoint_name: v,
            clientid: v,
            username: v,
            peerhost: v,
        },
        &mut probe,
    );
    let command = &c.translators.command.topic;
    probe.push_str(command);
    check_topic("mountpoint", &probe, true).map_err(|_| {
        ConfigError::invalid(
            "mountpoint",
            format!(
                "\"{}\" followed by translators.command.topic \"{command}\" is not a valid MQTT \
                 filter: end the mountpoint with '/' so that the wildcard is a whole level",
                c.mountpoint
            ),
        )
    })
}

/// A topic relative to the mountpoint: non-empty; wildcards only where
/// allowed and only as whole levels (`#` last).
fn check_topic(key: &str, topic: &str, wildcards: bool) -> R {
    if topic.is_empty() {
        return err(key, "must not be empty");
    }
    if !wildcards && topic.contains(['+', '#']) {
        return err(
            key,
            format!("must not contain MQTT wildcards (+ or #), got \"{topic}\""),
        );
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let ok = match *level {
            "+" => true,
            "#" => i == levels.len() - 1,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return err(
                key,
                format!("\"{topic}\": '+' must be a whole level and '#' a whole last level"),
            );
        }
    }
    Ok(())
}

fn check_url(key: &str, url: &str) -> R {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => err(
            key,
            format!(
                "must be an http:// or https:// URL when authentication is enabled, got \"{url}\""
            ),
        ),
    }
}
