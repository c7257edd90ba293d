//! The configuration and command line as the binary uses them: a file in a
//! directory, then flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use lwm2m_gateway::cli::Cli;
use lwm2m_gateway::config::{
    AutoObserve, Config, ConfigError, MqttServer, SubscribeMode, DEFAULT_TOML,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn shipped_file_loads_as_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/lwm2m-gateway.toml");
    let c = Config::load(&path).unwrap();
    // Its relative paths are relative to its directory.
    let etc = path.parent().unwrap();
    let expected = Config {
        xml_dir: etc.join("lwm2m_xml"),
        bootstrap: lwm2m_gateway::config::Bootstrap {
            config_file: etc.join("bootstrap.toml"),
            ..Default::default()
        },
        store: lwm2m_gateway::config::Store {
            path: etc.join("data"),
            ..Default::default()
        },
        ..Config::default()
    };
    assert_eq!(c, expected);
    let mut text = Config::from_toml_str(DEFAULT_TOML).unwrap();
    text.resolve_paths(etc);
    assert_eq!(text, c);
}

#[test]
fn an_emqx_style_file_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        r#"
        xml_dir = "etc/lwm2m_xml/"
        auto_observe = ["/3/0", "/3303/0/5700"]
        update_msg_publish_condition = "contains_object_list"
        qmode_time_window = "1m"

        [translators]
        register = { topic = "up/register", qos = 1 }

        [listeners.udp.default]
        bind = "5783"
        max_conn_rate = 5000

        [listeners.dtls.default]
        bind = "0.0.0.0:5784"
        psk_file = "etc/psk.txt"

        [authentication]
        backend = "http"
        mechanism = "password_based"
        method = "post"
        url = "http://127.0.0.1:8080"
        headers = { "content-type" = "application/json" }
        body = { clientid = "${clientid}" }
        pool_size = 8
        connect_timeout = "5s"
        request_timeout = "5s"
        enable_pipelining = 100
        ssl = { enable = false, verify = "verify_none" }

        [mqtt]
        server = "mqtt://10.0.0.5"
        password = "very-secret"
        "#,
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "lwm2m-gateway",
        "--config",
        path.to_str().unwrap(),
        "--shards",
        "2",
        "--dtls-bind",
        "5684",
    ])
    .unwrap();
    let c = cli.load_config().unwrap();
    assert_eq!(
        c.auto_observe,
        AutoObserve::Paths(vec!["/3/0".into(), "/3303/0/5700".into()])
    );
    assert_eq!(c.qmode_time_window, Duration::from_secs(60));
    assert_eq!(c.translators.register.topic, "up/register");
    assert_eq!(c.translators.register.qos, 1);
    assert_eq!(c.udp_listener().bind, addr("0.0.0.0:5783"));
    assert_eq!(c.udp_listener().max_conn_rate, 5000);
    assert_eq!(c.listeners.dtls["default"].bind, addr("0.0.0.0:5684"));
    // Relative paths in a file are relative to the file's directory.
    assert_eq!(c.xml_dir, dir.path().join("etc/lwm2m_xml/"));
    assert_eq!(
        c.listeners.dtls["default"].psk_file.as_deref(),
        Some(dir.path().join("etc/psk.txt").as_path())
    );
    assert!(c.authentication.enable);
    assert_eq!(
        c.mqtt.server,
        MqttServer::Tcp {
            host: "10.0.0.5".into(),
            port: 1883
        }
    );
    assert_eq!(
        c.mqtt.subscribe.resolve(&c.mqtt.server),
        SubscribeMode::PerEndpoint
    );
    assert_eq!(c.mqtt.password.expose(), "very-secret");
    assert!(!format!("{c:?}").contains("very-secret"));
    assert_eq!(c.engine.shards, 2);
}

#[test]
fn errors_name_key_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[listeners.udp.default]\nmax_conn_rate = \"x\"\n").unwrap();
    let p = path.to_str().unwrap();
    let e = Cli::try_parse_from(["lwm2m-gateway", "-c", p])
        .unwrap()
        .load_config()
        .unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }));
    assert!(
        e.to_string()
            .starts_with("listeners.udp.default.max_conn_rate: "),
        "{e}"
    );

    std::fs::write(&path, "").unwrap();
    let e = Cli::try_parse_from(["lwm2m-gateway", "-c", p, "--mqtt-connections", "100"])
        .unwrap()
        .load_config()
        .unwrap_err();
    assert!(e.to_string().starts_with("--mqtt-connections: "), "{e}");
}
