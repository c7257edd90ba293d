//! Tests of the whole configuration: the shipped file, parse errors and
//! validation errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn parse(s: &str) -> Config {
    Config::from_toml_str(s).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(s: &str) -> ConfigError {
    match Config::from_toml_str(s) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

fn invalid(s: &str) -> ConfigError {
    parse(s).validate().expect_err("validation passed")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn shipped_file_is_the_default() {
    let mut shipped = parse(DEFAULT_TOML);
    // The shipped file lives in etc/ and its paths are relative to it.
    shipped.resolve_paths(Path::new("etc"));
    let d = Config::default();
    assert_eq!(shipped.xml_dir, d.xml_dir);
    assert_eq!(shipped.lifetime_min, d.lifetime_min);
    assert_eq!(shipped.lifetime_max, d.lifetime_max);
    assert_eq!(shipped.qmode_time_window, d.qmode_time_window);
    assert_eq!(shipped.idle_timeout, d.idle_timeout);
    assert_eq!(shipped.auto_observe, d.auto_observe);
    assert_eq!(shipped.enable_stats, d.enable_stats);
    assert_eq!(
        shipped.update_msg_publish_condition,
        d.update_msg_publish_condition
    );
    assert_eq!(shipped.mountpoint, d.mountpoint);
    assert_eq!(shipped.translators, d.translators);
    assert_eq!(shipped.listeners, d.listeners);
    assert_eq!(shipped.blockwise, d.blockwise);
    assert_eq!(shipped.authentication, d.authentication);
    assert_eq!(shipped.mqtt, d.mqtt);
    assert_eq!(shipped.engine, d.engine);
    assert_eq!(shipped.api, d.api);
    assert_eq!(shipped.coap, d.coap);
    assert_eq!(shipped.queue, d.queue);
    // The store's directory (default `data`) is relative to the file as any path: the
    // shipped file keeps it next to itself.
    assert_eq!(shipped.store.kind, d.store.kind);
    assert_eq!(shipped.store.path, Path::new("etc").join(&d.store.path));
    shipped.store.path = d.store.path.clone();
    assert_eq!(shipped, d);
    d.validate().unwrap();
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(parse(""), Config::default());
    assert_eq!(parse("# nothing\n"), Config::default());
}

#[test]
fn default_values() {
    let c = Config::default();
    assert_eq!(c.xml_dir, PathBuf::from("etc/lwm2m_xml"));
    assert_eq!(c.lifetime_max, Duration::from_secs(86400));
    assert_eq!(c.qmode_time_window, Duration::from_secs(22));
    assert_eq!(c.translators.command.topic, "dn/#");
    assert_eq!(c.translators.register.topic, "up/resp");
    assert_eq!(c.translators.update.topic, "up/update");
    assert_eq!(c.udp_listener().bind, addr("0.0.0.0:5783"));
    assert_eq!(c.udp_listener().max_connections, 1_024_000);
    assert!(c.listeners.dtls.is_empty());
    assert_eq!(c.blockwise.max_body_size, 4 * 1024 * 1024);
    assert!(!c.authentication.enable);
    assert_eq!(c.mqtt.server, MqttServer::Embedded);
    assert_eq!(c.mqtt.embedded_bind, addr("127.0.0.1:1883"));
    assert_eq!(c.mqtt.embedded_bind_v5, addr("127.0.0.1:1884"));
    assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
    assert_eq!(c.mqtt.max_inflight, 256);
    assert_eq!(c.mqtt.buffer_messages, None);
    assert_eq!(c.mqtt_buffer_messages(), 1_024_000);
    assert_eq!(c.engine.socket_rcvbuf, 8 << 20);
    assert_eq!(c.engine.max_datagram, 4096);
    assert_eq!(c.api.bind, addr("127.0.0.1:18083"));
    assert_eq!(c.coap.exchange_lifetime, Duration::from_secs(247));
    assert_eq!(c.queue.default_ttl, Duration::ZERO);
}

#[test]
fn the_commented_tables_of_the_shipped_file_parse_and_validate() {
    // Uncomment the DTLS and authentication tables of the shipped file.
    let mut text = String::new();
    let mut in_table = false;
    for line in DEFAULT_TOML.lines() {
        if line.starts_with("# [listeners.dtls.default]") || line.starts_with("# [authentication]")
        {
            in_table = true;
        } else if !line.starts_with("# ") {
            in_table = false;
        }
        if in_table {
            text.push_str(&line[2..]);
        } else {
            text.push_str(line);
        }
        text.push('\n');
    }
    let mut c = parse(&text);
    c.validate().unwrap();
    // As read from etc/lwm2m-gateway.toml: relative to etc/.
    c.resolve_paths(Path::new("etc"));
    let d = &c.listeners.dtls["default"];
    assert_eq!(d.bind, addr("0.0.0.0:5784"));
    assert_eq!(d.psk_file, Some(PathBuf::from("etc/psk.txt")));
    assert_eq!(d.keyfile, Some(PathBuf::from("etc/certs/server.key")));
    assert_eq!(d.idle_timeout, Duration::from_secs(3600));
    assert_eq!(d.idle_timeout, DtlsListener::default().idle_timeout);
    assert_eq!(d.max_sessions, DtlsListener::default().max_sessions);
    assert!(d.connection_id && DtlsListener::default().connection_id);
    assert_eq!(d.connection_id_length, 8);
    let a = &c.authentication;
    assert!(a.enable);
    assert_eq!(a.method, HttpMethod::Post);
    assert_eq!(a.url, "http://127.0.0.1:8080/auth");
    assert_eq!(a.body["clientid"], "${clientid}");
    assert_eq!(a.enable_pipelining, 100);
    let mut expected = Authentication {
        enable: true,
        url: a.url.clone(),
        ..Authentication::default()
    };
    assert_eq!(a, &expected);
    expected.enable = false;
    assert_ne!(a, &expected);
}

#[test]
fn partial_file() {
    let c = parse(
        r#"
        lifetime_max = "2h"
        [listeners.udp.default]
        max_conn_rate = 50
        [translators]
        command = { qos = 1 }
        update = { topic = "up/upd" }
        [mqtt]
        server = "mqtt://broker:1884"
        "#,
    );
    c.validate().unwrap();
    assert_eq!(c.lifetime_max, Duration::from_secs(7200));
    assert_eq!(c.udp_listener().max_conn_rate, 50);
    assert_eq!(c.udp_listener().bind, addr("0.0.0.0:5783"));
    assert_eq!(c.translators.command.topic, "dn/#");
    assert_eq!(c.translators.command.qos, 1);
    assert_eq!(c.translators.update.topic, "up/upd");
    assert_eq!(c.translators.update.qos, 0);
    assert_eq!(
        c.mqtt.server,
        MqttServer::Tcp {
            host: "broker".into(),
            port: 1884
        }
    );
    assert_eq!(
        c.mqtt.subscribe.resolve(&c.mqtt.server),
        SubscribeMode::PerEndpoint
    );
    assert_eq!(c.engine, Engine::default());
}

#[test]
fn durations_and_sizes_in_the_file() {
    let c = parse(
        r#"
        lifetime_min = "100ms"
        lifetime_max = "1d"
        qmode_time_window = 45
        idle_timeout = "5m"
        [blockwise]
        max_body_size = "512KB"
        exchange_lifetime = "2h"
        [engine]
        socket_rcvbuf = "1GB"
        socket_sndbuf = 1024
        [queue]
        default_ttl = "30"
        "#,
    );
    assert_eq!(c.lifetime_min, Duration::from_millis(100));
    assert_eq!(c.lifetime_max, Duration::from_secs(86400));
    assert_eq!(c.qmode_time_window, Duration::from_secs(45));
    assert_eq!(c.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.blockwise.max_body_size, 512 * 1024);
    assert_eq!(c.blockwise.exchange_lifetime, Duration::from_secs(7200));
    assert_eq!(c.engine.socket_rcvbuf, 1 << 30);
    assert_eq!(c.engine.socket_sndbuf, 1024);
    assert_eq!(c.queue.default_ttl, Duration::from_secs(30));
}

#[test]
fn bad_duration_and_size_name_their_key() {
    let e = parse_err("idle_timeout = \"30x\"");
    assert_eq!(e.key(), Some("idle_timeout"), "{e}");
    assert!(
        e.to_string().starts_with("idle_timeout: invalid duration"),
        "{e}"
    );
    let e = parse_err("[coap]\nack_timeout = -2");
    assert_eq!(e.key(), Some("coap.ack_timeout"), "{e}");
    let e = parse_err("[engine]\nsocket_rcvbuf = \"8XB\"");
    assert_eq!(e.key(), Some("engine.socket_rcvbuf"), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = parse_err("[blockwise]\nmax_body_size = true");
    assert_eq!(e.key(), Some("blockwise.max_body_size"), "{e}");
}

#[test]
fn wrong_types_name_their_key() {
    let e = parse_err("[listeners.udp.default]\nmax_conn_rate = \"fast\"");
    assert_eq!(e.key(), Some("listeners.udp.default.max_conn_rate"), "{e}");
    assert!(
        e.to_string()
            .starts_with("listeners.udp.default.max_conn_rate: "),
        "{e}"
    );
    let e = parse_err("enable_stats = \"yes\"");
    assert_eq!(e.key(), Some("enable_stats"), "{e}");
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = parse_err("[translators]\nnotify = { topic = \"n\", qos = 300 }");
    assert_eq!(e.key(), Some("translators.notify.qos"), "{e}");
    let e = parse_err("update_msg_publish_condition = \"sometimes\"");
    assert_eq!(e.key(), Some("update_msg_publish_condition"), "{e}");
    let e = parse_err("[mqtt]\nsubscribe = \"all\"");
    assert_eq!(e.key(), Some("mqtt.subscribe"), "{e}");
    let e = parse_err("[authentication]\nmethod = \"put\"");
    assert_eq!(e.key(), Some("authentication.method"), "{e}");
    let e = parse_err("[api]\nbind = \"localhost:80\"");
    assert_eq!(e.key(), Some("api.bind"), "{e}");
}

#[test]
fn syntax_error_has_a_line() {
    let e = parse_err("xml_dir = \"a\"\nlifetime_min = \n");
    assert!(matches!(&e, ConfigError::Parse { path_in_file, .. } if path_in_file.is_empty()));
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let e = parse_err("lifetime = \"1s\"");
    assert_eq!(e.key(), Some("lifetime"), "{e}");
    assert!(e.to_string().contains("unknown"), "{e}");
    let e = parse_err("[listeners.udp.default]\nport = 5783");
    assert_eq!(e.key(), Some("listeners.udp.default.port"), "{e}");
    let e = parse_err("[translators]\ncmd = { topic = \"x\" }");
    assert_eq!(e.key(), Some("translators.cmd"), "{e}");
    let e = parse_err("[translators]\ncommand = { topic = \"x\", retain = true }");
    assert_eq!(e.key(), Some("translators.command.retain"), "{e}");
    let e = parse_err("[authentication]\nssl = { enable = true, cacertfile = \"x\" }");
    assert_eq!(e.key(), Some("authentication.ssl.cacertfile"), "{e}");
    let e = parse_err("[listeners.tcp.default]\nbind = 1");
    assert_eq!(e.key(), Some("listeners.tcp"), "{e}");
    let e = parse_err("[mqtt]\nhost = \"x\"");
    assert_eq!(e.key(), Some("mqtt.host"), "{e}");
    let e = parse_err("[engine]\nthreads = 4");
    assert_eq!(e.key(), Some("engine.threads"), "{e}");
}

#[test]
fn bare_port_bind() {
    let c = parse(
        r#"
        [listeners.udp.a]
        bind = "5683"
        [listeners.udp.b]
        bind = 5690
        [listeners.udp.v6]
        bind = "[::]:5700"
        [api]
        bind = "8080"
        "#,
    );
    // Parsed, but only one UDP listener is served: the second table is refused.
    let e = c.validate().expect_err("three UDP listeners");
    assert_eq!(e.key(), Some("listeners.udp.b"), "{e}");
    assert_eq!(c.listeners.udp.len(), 3);
    assert!(!c.listeners.udp.contains_key("default"));
    assert_eq!(c.listeners.udp["a"].bind, addr("0.0.0.0:5683"));
    assert_eq!(c.listeners.udp["b"].bind, addr("0.0.0.0:5690"));
    assert_eq!(c.listeners.udp["v6"].bind, addr("[::]:5700"));
    assert_eq!(c.udp_listener().bind, addr("0.0.0.0:5683"));
    assert_eq!(c.api.bind, addr("0.0.0.0:8080"));
    let e = parse_err("[listeners.udp.default]\nbind = 70000");
    assert_eq!(e.key(), Some("listeners.udp.default.bind"), "{e}");
}

#[test]
fn infinity_limits() {
    let c = parse(
        "[listeners.udp.default]\nmax_connections = \"infinity\"\nmax_conn_rate = \"infinity\"",
    );
    assert_eq!(c.udp_listener().max_connections, u64::MAX);
    assert_eq!(c.udp_listener().max_conn_rate, u64::MAX);
}

#[test]
fn buffer_holds_a_message_per_admitted_device() {
    let small = "[listeners.udp.default]\nmax_connections = 5000";
    assert_eq!(parse(small).mqtt_buffer_messages(), 200_000);
    let big = "[listeners.udp.default]\nmax_connections = 3000000";
    assert_eq!(parse(big).mqtt_buffer_messages(), 3_000_000);
    let unlimited = "[listeners.udp.default]\nmax_connections = \"infinity\"";
    assert_eq!(parse(unlimited).mqtt_buffer_messages(), 16_777_216);
    let set = "[mqtt]\nbuffer_messages = 1000";
    assert_eq!(parse(set).mqtt_buffer_messages(), 1000);
}

#[test]
fn directory_sized_for_what_the_listeners_admit() {
    assert_eq!(parse("").directory_capacity(), 1_024_000);
    let two = "[listeners.udp.default]\nmax_connections = 5000\n\
               [listeners.dtls.d]\nbind = \"127.0.0.1:5784\"\npsk_file = \"p\"\nmax_connections = 3000";
    assert_eq!(parse(two).directory_capacity(), 8_000);
    let unlimited = "[listeners.udp.default]\nmax_connections = \"infinity\"";
    assert_eq!(parse(unlimited).directory_capacity(), 1_024_000);
    let huge = "[listeners.udp.default]\nmax_connections = 100000000";
    assert_eq!(
        parse(huge).directory_capacity() as u64,
        DIRECTORY_PRESIZE_MAX
    );
}

#[test]
fn auto_observe_forms() {
    assert_eq!(parse("auto_observe = false").auto_observe, AutoObserve::Off);
    assert_eq!(parse("auto_observe = true").auto_observe, AutoObserve::All);
    let c = parse(r#"auto_observe = ["/3/0", "/3303/0/5700", "/1"]"#);
    assert_eq!(
        c.auto_observe,
        AutoObserve::Paths(vec!["/3/0".into(), "/3303/0/5700".into(), "/1".into()])
    );
    c.validate().unwrap();
    let e = invalid(r#"auto_observe = ["/3/0", "3/0"]"#);
    assert_eq!(e.key(), Some("auto_observe[1]"), "{e}");
    let e = invalid(r#"auto_observe = ["/3/x"]"#);
    assert_eq!(e.key(), Some("auto_observe[0]"), "{e}");
    let e = parse_err(r#"auto_observe = "yes""#);
    assert_eq!(e.key(), Some("auto_observe"), "{e}");
    let e = parse_err(r#"auto_observe = ["/3/0", 5]"#);
    assert!(e.key().unwrap().starts_with("auto_observe"), "{e}");
}

#[test]
fn mqtt_server_in_the_file() {
    let c = parse("[mqtt]\nserver = \"mqtts://broker.example.com\"");
    assert_eq!(
        c.mqtt.server,
        MqttServer::Tls {
            host: "broker.example.com".into(),
            port: 8883
        }
    );
    assert_eq!(
        c.mqtt.subscribe.resolve(&c.mqtt.server),
        SubscribeMode::PerEndpoint
    );
    for bad in ["tcp://b:1883", "mqtt://", "b:1883", "mqtt://b:0"] {
        let e = parse_err(&format!("[mqtt]\nserver = \"{bad}\""));
        assert_eq!(e.key(), Some("mqtt.server"), "{e}");
    }
}

#[test]
fn mqtt_protocol_in_the_file() {
    use crate::config::MqttProtocol;
    assert_eq!(
        parse("[mqtt]\nprotocol = \"3.1.1\"").mqtt.protocol,
        MqttProtocol::V311
    );
    assert_eq!(
        parse("[mqtt]\nprotocol = \"5\"").mqtt.protocol,
        MqttProtocol::V5
    );
    assert_eq!(
        parse("[mqtt]\nprotocol = 5").mqtt.protocol,
        MqttProtocol::V5
    );
    for bad in ["\"4\"", "\"v5\"", "3", "true"] {
        let e = parse_err(&format!("[mqtt]\nprotocol = {bad}"));
        assert_eq!(e.key(), Some("mqtt.protocol"), "{e}");
    }
    let c = parse("[mqtt]\nembedded_bind_v5 = \"0.0.0.0:8884\"");
    assert_eq!(c.mqtt.embedded_bind_v5, addr("0.0.0.0:8884"));
    // The two listeners of the embedded broker may not overlap; with an external broker
    // neither is opened.
    let e = invalid("[mqtt]\nembedded_bind_v5 = \"127.0.0.1:1883\"");
    assert_eq!(e.key(), Some("mqtt.embedded_bind_v5"), "{e}");
    assert!(
        e.to_string().contains("already used by mqtt.embedded_bind"),
        "{e}"
    );
    parse("[mqtt]\nserver = \"mqtt://b\"\nembedded_bind_v5 = \"127.0.0.1:1883\"")
        .validate()
        .unwrap();
    // Speaking 3.1.1, the gateway opens no MQTT 5 listener.
    parse("[mqtt]\nprotocol = \"3.1.1\"\nembedded_bind_v5 = \"127.0.0.1:1883\"")
        .validate()
        .unwrap();
}

#[test]
fn validation_errors_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("lifetime_min = \"2d\"", "lifetime_min", "lifetime_max"),
        ("lifetime_min = \"0s\"", "lifetime_min", "at least 1s"),
        ("lifetime_min = \"500ms\"", "lifetime_min", "got 500ms"),
        ("lifetime_max = \"0s\"", "lifetime_max", "0s"),
        (
            "qmode_time_window = \"0s\"",
            "qmode_time_window",
            "never be sent a command",
        ),
        (
            "qmode_time_window = \"50d\"",
            "qmode_time_window",
            "at most 4294967295ms",
        ),
        (
            "qmode_time_window = \"18446744073709551s\"",
            "qmode_time_window",
            "at most",
        ),
        ("idle_timeout = \"100d\"", "idle_timeout", "at most"),
        (
            "[blockwise]\nexchange_lifetime = \"60d\"",
            "blockwise.exchange_lifetime",
            "at most",
        ),
        (
            "[authentication]\nurl = \"http://a\"\nrequest_timeout = \"1000d\"",
            "authentication.request_timeout",
            "at most",
        ),
        ("[coap]\nack_timeout = \"60d\"", "coap.ack_timeout", "at most"),
        (
            "[coap]\nexchange_lifetime = \"60d\"",
            "coap.exchange_lifetime",
            "at most",
        ),
        ("[queue]\ndefault_ttl = \"60d\"", "queue.default_ttl", "at most"),
        (
            "[mqtt]\nbuffer_messages = 0",
            "mqtt.buffer_messages",
            "between 1 and 16777216, got 0",
        ),
        (
            "[mqtt]\nbuffer_messages = 100000000",
            "mqtt.buffer_messages",
            "got 100000000",
        ),
        (
            "[engine]\nmailbox_capacity = 100000000",
            "engine.mailbox_capacity",
            "between 1 and 16777216",
        ),
        ("idle_timeout = \"0s\"", "idle_timeout", "0s"),
        ("mountpoint = \"lwm2m/+/\"", "mountpoint", "wildcard"),
        (
            "[translators]\nnotify = { qos = 3 }",
            "translators.notify.qos",
            "got 3",
        ),
        (
            "[translators]\nresponse = { topic = \"\" }",
            "translators.response.topic",
            "empty",
        ),
        (
            "[translators]\nupdate = { topic = \"up/#\" }",
            "translators.update.topic",
            "wildcard",
        ),
        (
            "[translators]\ncommand = { topic = \"dn/a#\" }",
            "translators.command.topic",
            "whole",
        ),
        (
            "[translators]\ncommand = { topic = \"dn/#/x\" }",
            "translators.command.topic",
            "last",
        ),
        ("[listeners]\nudp = {}", "listeners.udp", "at least one"),
        (
            "[listeners.udp.default]\nmax_connections = 0",
            "listeners.udp.default.max_connections",
            "at least 1",
        ),
        (
            "[listeners.udp.default]\nmax_conn_rate = 0",
            "listeners.udp.default.max_conn_rate",
            "at least 1",
        ),
        (
            "[listeners.udp.a]\nbind = 5783\n[listeners.udp.b]\nbind = \"0.0.0.0:5783\"",
            "listeners.udp.b.bind",
            "already used by listeners.udp.a.bind",
        ),
        (
            "[listeners.dtls.d]\nbind = 5785",
            "listeners.dtls.d",
            "psk_file",
        ),
        (
            "[listeners.dtls.d]\ncertfile = \"c.pem\"",
            "listeners.dtls.d.keyfile",
            "certfile",
        ),
        (
            "[listeners.dtls.d]\nkeyfile = \"k.pem\"\npsk_file = \"p\"",
            "listeners.dtls.d.certfile",
            "keyfile",
        ),
        (
            "[listeners.udp.a]\nbind = \"0.0.0.0:5783\"\n[listeners.udp.b]\nbind = \"127.0.0.1:5783\"",
            "listeners.udp.b.bind",
            "overlaps 0.0.0.0:5783",
        ),
        (
            "[api]\nbind = \"127.0.0.1:1883\"",
            "api.bind",
            "already used by mqtt.embedded_bind",
        ),
        (
            "[listeners.dtls.d]\nbind = 5783\npsk_file = \"p\"",
            "listeners.dtls.d.bind",
            "already used",
        ),
        (
            "[blockwise]\nmax_block_size = 100",
            "blockwise.max_block_size",
            "must be one of 16, 32, 64, 128, 256, 512, 1024, got 100",
        ),
        (
            "[blockwise]\nmax_body_size = 10",
            "blockwise.max_body_size",
            "at least",
        ),
        (
            "[blockwise]\nexchange_lifetime = 0",
            "blockwise.exchange_lifetime",
            "0s",
        ),
        (
            "[authentication]\nurl = \"ftp://x\"",
            "authentication.url",
            "http://",
        ),
        (
            "[authentication]\nenable = true",
            "authentication.url",
            "http://",
        ),
        (
            "[authentication]\nurl = \"http://a\"\nbackend = \"ldap\"",
            "authentication.backend",
            "http",
        ),
        (
            "[authentication]\nurl = \"http://a\"\nmechanism = \"jwt\"",
            "authentication.mechanism",
            "password_based",
        ),
        (
            "[authentication]\nurl = \"http://a\"\nssl = { verify = \"yes\" }",
            "authentication.ssl.verify",
            "verify_peer",
        ),
        (
            "[authentication]\nurl = \"http://a\"\npool_size = 0",
            "authentication.pool_size",
            "at least 1",
        ),
        (
            "[listeners.udp.a]\nbind = 5783\n[listeners.udp.b]\nbind = 5790",
            "listeners.udp.b",
            "only one [listeners.udp.*] table is served (listeners.udp.a)",
        ),
        (
            "[listeners.dtls.a]\nbind = 5784\npsk_file = \"p\"\n\
             [listeners.dtls.b]\nbind = 5785\npsk_file = \"p\"",
            "listeners.dtls.b",
            "only one [listeners.dtls.*] table is served",
        ),
        (
            "mountpoint = \"lwm2m/${endpoint_name}\"\n[translators]\ncommand = { topic = \"#\" }",
            "mountpoint",
            "end the mountpoint with '/'",
        ),
        (
            "mountpoint = \"a/${clientid}${username}/\"",
            "mountpoint",
            "literal text between them",
        ),
        ("mountpoint = \"a\\u0000/\"", "mountpoint", "NUL"),
        ("[mqtt]\nclient_id = \"\"", "mqtt.client_id", "empty"),
        (
            "[mqtt]\nkeepalive = \"500ms\"",
            "mqtt.keepalive",
            "whole seconds",
        ),
        ("[mqtt]\nkeepalive = \"1d\"", "mqtt.keepalive", "65535"),
        (
            "[mqtt]\nconnections = 0",
            "mqtt.connections",
            "between 1 and 64, got 0",
        ),
        ("[mqtt]\nconnections = 65", "mqtt.connections", "got 65"),
        ("[mqtt]\nmax_inflight = 0", "mqtt.max_inflight", "got 0"),
        (
            "[engine]\nrecv_batch = 0",
            "engine.recv_batch",
            "between 1 and 1024",
        ),
        (
            "[engine]\nrecv_batch = 2000",
            "engine.recv_batch",
            "got 2000",
        ),
        (
            "[engine]\nsocket_rcvbuf = 0",
            "engine.socket_rcvbuf",
            "got 0",
        ),
        (
            "[engine]\nsocket_sndbuf = \"4GB\"",
            "engine.socket_sndbuf",
            "between",
        ),
        (
            "[engine]\nmailbox_capacity = 0",
            "engine.mailbox_capacity",
            "got 0",
        ),
        (
            "[engine]\nmax_datagram = 100",
            "engine.max_datagram",
            "between 512 and 65535",
        ),
        (
            "[engine]\nmax_datagram = 70000",
            "engine.max_datagram",
            "got 70000",
        ),
        ("[api]\napi_key = \"\"", "api.api_key", "empty"),
        ("[coap]\nack_timeout = \"0s\"", "coap.ack_timeout", "0s"),
        (
            "[coap]\nack_random_factor = 0.5",
            "coap.ack_random_factor",
            "1.0",
        ),
        (
            "[coap]\nack_random_factor = nan",
            "coap.ack_random_factor",
            "1.0",
        ),
        ("[coap]\nnstart = 0", "coap.nstart", "at least 1"),
        (
            "[coap]\nmax_retransmit = 21",
            "coap.max_retransmit",
            "got 21",
        ),
        (
            "[coap]\nexchange_lifetime = 0",
            "coap.exchange_lifetime",
            "0s",
        ),
        ("[queue]\nmax_queued = 0", "queue.max_queued", "at least 1"),
        (
            "[listeners.dtls.d]\npsk_file = \"p\"\nidle_timeout = \"0s\"",
            "listeners.dtls.d.idle_timeout",
            "0s",
        ),
        (
            "[listeners.dtls.d]\npsk_file = \"p\"\nidle_timeout = \"100d\"",
            "listeners.dtls.d.idle_timeout",
            "at most",
        ),
        (
            "[listeners.dtls.d]\npsk_file = \"p\"\nmax_sessions = 0",
            "listeners.dtls.d.max_sessions",
            "at least 1",
        ),
        (
            "[listeners.dtls.d]\npsk_file = \"p\"\nconnection_id_length = 5",
            "listeners.dtls.d.connection_id_length",
            "6 to 32",
        ),
        (
            "[listeners.dtls.d]\npsk_file = \"p\"\nconnection_id_length = 33",
            "listeners.dtls.d.connection_id_length",
            "6 to 32",
        ),
    ];
    for (text, key, needle) in cases {
        let e = invalid(text);
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{key}: ")), "{text}: {shown}");
        assert!(shown.contains(needle), "{text}: {shown} lacks {needle:?}");
    }
}

#[test]
fn valid_variations() {
    for text in [
        "lifetime_min = \"1d\"\nlifetime_max = \"1d\"",
        "lifetime_min = \"1s\"\nlifetime_max = \"1s\"",
        "lifetime_max = \"100000d\"",
        "qmode_time_window = \"500ms\"",
        "qmode_time_window = \"4294967295ms\"",
        "[queue]\ndefault_ttl = \"0s\"\n[engine]\nmailbox_capacity = 16777216",
        "[mqtt]\nbuffer_messages = 1",
        "[mqtt]\nkeepalive = \"0s\"",
        "[listeners.udp.a]\nbind = 0\n[listeners.dtls.b]\nbind = 0\npsk_file = \"p\"",
        "[listeners.dtls.d]\ncertfile = \"c\"\nkeyfile = \"k\"",
        "[listeners.dtls.d]\npsk_file = \"p\"",
        "[listeners.dtls.d]\npsk_file = \"p\"\nidle_timeout = \"500ms\"\nmax_sessions = \"infinity\"",
        "[authentication]\nenable = false\nurl = \"\"",
        "[authentication]\nurl = \"https://auth.example.com/x\"\nmethod = \"get\"",
        "[translators]\ncommand = { topic = \"dn/+/cmd\" }",
        "[blockwise]\nmax_block_size = 16\nmax_body_size = 16",
        "update_msg_publish_condition = \"contains_object_list\"",
        "[mqtt]\nsubscribe = \"per_endpoint\"",
        "[mqtt]\nserver = \"mqtt://b\"\n[api]\nbind = \"127.0.0.1:1883\"",
        "[listeners.udp.a]\nbind = \"0.0.0.0:5783\"\n[listeners.dtls.b]\nbind = \"[::]:5783\"\npsk_file = \"p\"",
        "[listeners.udp.a]\nbind = \"127.0.0.1:5783\"\n[listeners.dtls.b]\nbind = \"127.0.0.2:5783\"\npsk_file = \"p\"",
    ] {
        let c = parse(text);
        c.validate().unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let c = parse("[authentication]\nurl = \"http://a\"\nmethod = \"get\"");
    assert!(c.authentication.enable);
    assert_eq!(c.authentication.method, HttpMethod::Get);
    assert_eq!(
        parse("update_msg_publish_condition = \"contains_object_list\"")
            .update_msg_publish_condition,
        UpdateCondition::ContainsObjectList
    );
}

#[test]
fn secrets_do_not_show_in_debug() {
    let c = parse(
        r#"
        [mqtt]
        password = "mqtt-pw-1234"
        [api]
        api_secret = "api-secret-5678"
        [authentication]
        url = "http://a"
        headers = { authorization = "Bearer tok-9999", "x-api-key" = "key-0000", accept = "application/json" }
        body = { clientid = "${clientid}", password = "${password}", token = "body-tok-4444" }
        "#,
    );
    assert_eq!(c.mqtt.password.expose(), "mqtt-pw-1234");
    assert_eq!(c.api.api_secret.expose(), "api-secret-5678");
    let shown = format!("{c:?}");
    for secret in [
        "mqtt-pw-1234",
        "api-secret-5678",
        "tok-9999",
        "key-0000",
        "body-tok-4444",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(shown.contains("application/json"));
    assert!(shown.contains("${password}"));
    assert!(shown.contains("***"));
    let pretty = format!("{c:#?}");
    assert!(!pretty.contains("mqtt-pw-1234"));
}

#[test]
fn load_reads_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[engine]\nshards = 3\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().engine.shards, 3);
    std::fs::write(&path, "[engine]\nrecv_batch = 0\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.key(), Some("engine.recv_batch"));
    let missing = dir.path().join("missing.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("missing.toml"), "{e}");
}

#[test]
fn mountpoint_without_a_trailing_slash_is_valid_with_a_literal_command_topic() {
    // Topics are plain concatenations: `lwm2m/<ep>dn/#` is a valid filter.
    parse("mountpoint = \"lwm2m/${endpoint_name}\"")
        .validate()
        .unwrap();
    parse("mountpoint = \"gw/${username}-${clientid}/\"")
        .validate()
        .unwrap();
}

/// `CoreSettings::defaults()`, which tests, fuzzing and benchmarks start from, is what
/// the default configuration gives, field by field (the destructuring names every
/// field, so a new one must be compared here too).
#[test]
fn core_settings_defaults_are_the_default_configuration() {
    use crate::lwm2m::CoreSettings;
    let from = CoreSettings::from(&Config::default());
    let CoreSettings {
        lifetime_min_s,
        lifetime_max_s,
        mountpoint,
        command,
        response,
        notify,
        register,
        update,
        update_needs_object_list,
        per_endpoint_subscriptions,
        exchange_lifetime_ms,
        ack_timeout_ms,
        ack_random_factor,
        max_retransmit,
        nstart,
        qmode_window_ms,
        max_queued,
        queue_ttl_ms,
        auto_observe,
        max_connections,
        max_conn_rate,
        dtls_max_connections,
        dtls_max_conn_rate,
        block_enable,
        block_szx,
        max_body_size,
        block_lifetime_ms,
        block_device_cap,
        block_shard_cap,
        auth,
        auth_timeout_ms,
        enable_stats,
        dtls_psk,
        dtls_require_cn,
        location_key,
        send,
        deregister,
        bootstrap,
        bootstrap_configs,
        clock_epoch_ms,
        store_records,
        shared_store,
    } = CoreSettings::defaults();
    assert_eq!(lifetime_min_s, from.lifetime_min_s);
    assert_eq!(lifetime_max_s, from.lifetime_max_s);
    assert_eq!(mountpoint, from.mountpoint);
    assert_eq!(command, from.command);
    assert_eq!(response, from.response);
    assert_eq!(notify, from.notify);
    assert_eq!(register, from.register);
    assert_eq!(update, from.update);
    assert_eq!(update_needs_object_list, from.update_needs_object_list);
    assert_eq!(per_endpoint_subscriptions, from.per_endpoint_subscriptions);
    assert_eq!(exchange_lifetime_ms, from.exchange_lifetime_ms);
    assert_eq!(ack_timeout_ms, from.ack_timeout_ms);
    assert_eq!(ack_random_factor, from.ack_random_factor);
    assert_eq!(max_retransmit, from.max_retransmit);
    assert_eq!(nstart, from.nstart);
    assert_eq!(qmode_window_ms, from.qmode_window_ms);
    assert_eq!(max_queued, from.max_queued);
    assert_eq!(queue_ttl_ms, from.queue_ttl_ms);
    assert_eq!(auto_observe, from.auto_observe);
    assert_eq!(max_connections, from.max_connections);
    assert_eq!(max_conn_rate, from.max_conn_rate);
    assert_eq!(dtls_max_connections, from.dtls_max_connections);
    assert_eq!(dtls_max_conn_rate, from.dtls_max_conn_rate);
    assert_eq!(block_enable, from.block_enable);
    assert_eq!(block_szx, from.block_szx);
    assert_eq!(max_body_size, from.max_body_size);
    assert_eq!(block_lifetime_ms, from.block_lifetime_ms);
    assert_eq!(block_device_cap, from.block_device_cap);
    assert_eq!(block_shard_cap, from.block_shard_cap);
    assert_eq!(
        auth.load(std::sync::atomic::Ordering::Relaxed),
        from.auth_enabled()
    );
    assert_eq!(auth_timeout_ms, from.auth_timeout_ms);
    assert_eq!(enable_stats, from.enable_stats);
    assert!(dtls_psk.is_none() && from.dtls_psk.is_none());
    assert_eq!(dtls_require_cn, from.dtls_require_cn);
    assert_eq!(location_key, from.location_key);
    assert_eq!(send, from.send);
    assert_eq!(deregister, from.deregister);
    assert_eq!(bootstrap, from.bootstrap);
    assert!(bootstrap_configs.is_none() && from.bootstrap_configs.is_none());
    assert_eq!(clock_epoch_ms, from.clock_epoch_ms);
    assert_eq!(store_records, from.store_records);
    assert_eq!(shared_store, from.shared_store);
}

/// `[bootstrap]` and `translators.bootstrap`: defaults and overrides.
#[test]
fn bootstrap_keys() {
    let c = parse("");
    assert!(!c.bootstrap.enable);
    assert_eq!(c.bootstrap.config_file, Path::new("etc/bootstrap.toml"));
    assert_eq!(c.translators.bootstrap.topic, "up/bootstrap");
    assert_eq!(c.translators.bootstrap.qos, 0);
    let c = parse(
        "[bootstrap]\nenable = true\nconfig_file = \"bs.toml\"\n\
         [translators.bootstrap]\ntopic = \"up/bs\"\nqos = 1",
    );
    assert!(c.bootstrap.enable);
    c.validate().unwrap();
    let s = crate::lwm2m::CoreSettings::from(&c);
    assert_eq!((s.bootstrap.topic.as_str(), s.bootstrap.qos), ("up/bs", 1));
    let e = Config::from_toml_str("[bootstrap]\nenabled = true").unwrap_err();
    assert!(e.to_string().contains("bootstrap.enabled"), "{e}");
}

/// The core admits registrations over each listener by that listener's own limits.
#[test]
fn each_listeners_limits_reach_the_core() {
    let c = parse(
        "[listeners.udp.default]\nmax_connections = 10\nmax_conn_rate = 20\n\
         [listeners.dtls.default]\nbind = 5784\npsk_file = \"psk.txt\"\n\
         max_connections = 30\nmax_conn_rate = 40",
    );
    let s = crate::lwm2m::CoreSettings::from(&c);
    assert_eq!(s.limits(false), (10, 20));
    assert_eq!(s.limits(true), (30, 40));
    // Without a DTLS listener, the defaults (nothing registers over DTLS then).
    let s = crate::lwm2m::CoreSettings::from(&parse(""));
    assert_eq!(s.limits(true), (1_024_000, 1000));
}

/// The `gateway.lwm2m { ... }` blocks of the product description (EMQX's documentation),
/// verbatim.
fn seed_blocks() -> Vec<String> {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/seed/lwm2m-gateway.md"
    ))
    .expect("../shared/seed/lwm2m-gateway.md beside the repository");
    let mut blocks = Vec::new();
    let mut rest = seed.as_str();
    while let Some(i) = rest.find("gateway.lwm2m {") {
        let end = rest[i..].find("\n```").expect("fenced block");
        blocks.push(rest[i..i + end].to_string());
        rest = &rest[i + end..];
    }
    blocks
}

#[test]
fn emqx_hocon_blocks_of_the_seed_read_verbatim() {
    let blocks = seed_blocks();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let (c, unused) = Config::from_hocon_str(&blocks[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(unused.is_empty(), "{unused:?}");
    c.validate().unwrap();
    assert_eq!(c.xml_dir, PathBuf::from("etc/lwm2m_xml/"));
    assert_eq!(c.auto_observe, AutoObserve::All);
    assert_eq!(c.mountpoint, "lwm2m/${endpoint_namea}/");
    assert_eq!(
        c.update_msg_publish_condition,
        UpdateCondition::ContainsObjectList
    );
    assert_eq!(c.translators.notify.topic, "up/notify");
    assert_eq!(c.udp_listener().bind, addr("0.0.0.0:5783"));
    assert_eq!(c.udp_listener().max_connections, 1_024_000);
    assert_eq!(c.qmode_time_window, Duration::from_secs(22));
    // The seed's own typo is warned about.
    let w = c.placeholder_warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("${endpoint_namea}"), "{w:?}");
    // The blocks in one file merge (HOCON): authentication and block-wise too.
    let (c, _) = Config::from_hocon_str(&blocks.join("\n")).unwrap();
    c.validate().unwrap();
    let a = &c.authentication;
    assert!(a.enable);
    assert_eq!(a.url, "http://127.0.0.1:8080");
    assert_eq!(a.method, HttpMethod::Post);
    assert_eq!(a.pool_size, 8);
    assert_eq!(
        a.body.get("clientid").map(String::as_str),
        Some("${clientid}")
    );
    assert_eq!(c.auto_observe, AutoObserve::All);
}

#[test]
fn emqx_forms_own_tables_and_unused_keys() {
    let text = r#"
        node { name = "emqx@127.0.0.1" }
        gateway.coap { mountpoint = "coap/" }
        gateway.lwm2m {
          enable = true
          auto_observe = "/3/0,/3/0/1"
          clientinfo_override { username = "${clientid}" }
          listeners.udp.default {
            bind = "5783"
            max_conn_rate = 1000
            access_rules = ["allow all"]
            udp_options { active_n = 100 }
          }
          listeners.dtls.default {
            bind = 5784
            dtls_options {
              certfile = "certs/cert.pem"
              keyfile = "certs/key.pem"
              cacertfile = "certs/cacert.pem"
              verify = verify_none
            }
          }
        }
        mqtt { server = "mqtt://broker.example:1883" }
        log { format = "json" }
    "#;
    let (c, unused) = Config::from_hocon_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.auto_observe,
        AutoObserve::Paths(vec!["/3/0".into(), "/3/0/1".into()])
    );
    let d = &c.listeners.dtls["default"];
    assert_eq!(d.certfile, Some(PathBuf::from("certs/cert.pem")));
    assert_eq!(d.cafile, Some(PathBuf::from("certs/cacert.pem")));
    assert_eq!(d.bind, addr("0.0.0.0:5784"));
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(
        matches!(c.mqtt.server, MqttServer::Tcp { .. }),
        "{:?}",
        c.mqtt.server
    );
    let mut unused = unused;
    unused.sort();
    assert_eq!(
        unused,
        [
            "gateway.coap",
            "gateway.lwm2m.clientinfo_override",
            "gateway.lwm2m.listeners.dtls.default.dtls_options.verify",
            "gateway.lwm2m.listeners.udp.default.access_rules",
            "gateway.lwm2m.listeners.udp.default.udp_options",
            "node",
        ]
    );
    for (on, want) in [("\"on\"", AutoObserve::All), ("\"off\"", AutoObserve::Off)] {
        let (c, _) =
            Config::from_hocon_str(&format!("gateway.lwm2m {{ auto_observe = {on} }}")).unwrap();
        assert_eq!(c.auto_observe, want);
    }
}

#[test]
fn emqx_hocon_errors_name_the_key() {
    // A misspelt key is still an error.
    let e = Config::from_hocon_str("gateway.lwm2m { lifetime_mx = \"10s\" }").unwrap_err();
    assert!(e.to_string().contains("lifetime_mx"), "{e}");
    let e = Config::from_hocon_str("gateway.lwm2m { listeners.udp.default.bnd = 1 }").unwrap_err();
    assert!(e.to_string().contains("bnd"), "{e}");
    let e = Config::from_hocon_str("gateway.lwm2m { enable = false }").unwrap_err();
    assert_eq!(e.key(), Some("gateway.lwm2m.enable"), "{e}");
    let e = Config::from_hocon_str("gateway.lwm2m { lifetime_min = \"soon\" }").unwrap_err();
    assert!(e.to_string().contains("lifetime_min"), "{e}");
    let e = Config::from_hocon_str("gateway.lwm2m { ").unwrap_err();
    assert!(!e.to_string().is_empty());
}

/// Unset, `mqtt.connections` follows the subscription mode and the devices the listeners
/// admit: 2 for the wildcard filter, one connection per 16,384 per-endpoint filters
/// (from 2 to 64); set, it is what it says.
#[test]
fn mqtt_connections_scale_with_per_endpoint_filters() {
    assert_eq!(
        Config::default().mqtt_connections(),
        2,
        "embedded: wildcard"
    );
    let external = "[mqtt]\nserver = \"mqtt://broker:1883\"\n";
    assert_eq!(
        parse(external).mqtt_connections(),
        63,
        "1,024,000 devices by default"
    );
    let wildcard = format!("{external}subscribe = \"wildcard\"\n");
    assert_eq!(parse(&wildcard).mqtt_connections(), 2);
    let small = format!("{external}[listeners.udp.default]\nmax_connections = 10000\n");
    assert_eq!(parse(&small).mqtt_connections(), 2);
    let mid = format!("{external}[listeners.udp.default]\nmax_connections = 100000\n");
    assert_eq!(parse(&mid).mqtt_connections(), 7);
    let huge = format!("{external}[listeners.udp.default]\nmax_connections = \"infinity\"\n");
    assert_eq!(parse(&huge).mqtt_connections(), 64);
    let set = "[mqtt]\nserver = \"mqtt://broker:1883\"\nconnections = 4\n";
    assert_eq!(parse(set).mqtt_connections(), 4);
}

/// `[store] kind = "redis"` and `[cluster] node`: the keys, and what is refused.
#[test]
fn the_redis_store_needs_an_external_broker_and_a_fitting_node_name() {
    let ext = "[mqtt]\nserver = \"mqtt://127.0.0.1:1883\"\n";
    let c = parse(&format!(
        "{ext}[store]\nkind = \"redis\"\nurl = \"redis://10.0.0.5:6380/2\"\n[cluster]\nnode = \"gw-1.a_b\"\n"
    ));
    c.validate().expect("valid");
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url, "redis://10.0.0.5:6380/2");
    assert_eq!(c.cluster.node_name(), "gw-1.a_b");
    // Unset: the host name and process id.
    assert!(Cluster::default()
        .node_name()
        .ends_with(&format!("-{}", std::process::id())));
    let e = invalid("[store]\nkind = \"redis\"\n");
    assert_eq!(e.key(), Some("store.kind"), "{e}");
    assert!(e.to_string().contains("external broker"), "{e}");
    let e = invalid(&format!(
        "{ext}[store]\nkind = \"redis\"\nurl = \"http://x\"\n"
    ));
    assert_eq!(e.key(), Some("store.url"), "{e}");
    let e = invalid(&format!(
        "{ext}[store]\nkind = \"redis\"\n[cluster]\nnode = \"a b\"\n"
    ));
    assert_eq!(e.key(), Some("cluster.node"), "{e}");
}
