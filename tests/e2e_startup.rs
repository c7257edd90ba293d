//! What a user meets when starting the real binary: listeners the gateway cannot own stop the
//! start naming the address (never a silent share of another process's broker or UDP port),
//! a bad log level stops it, the log says which configuration and object definitions are in
//! use, and a healthy gateway logs no ERROR.

mod common;

use common::coap::{exchange, socket, Req};
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::free_port;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, Message};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lwm2m-gateway");

/// A gateway process started with flags (no configuration file unless given), its log in a
/// file.
struct Started {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// How a start ended.
#[derive(Debug)]
enum Outcome {
    Ready,
    Exited(Option<i32>),
}

impl Started {
    fn spawn(cwd: Option<&Path>, args: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gateway.log");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd.spawn().expect("start lwm2m-gateway");
        Started {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 30 s) until the gateway says ready or exits.
    fn outcome(&mut self) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Outcome::Exited(status.code());
            }
            if self.log().contains("lwm2m-gateway ready") {
                return Outcome::Ready;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("neither ready nor exited in 30 s:\n{}", self.log());
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flags for a gateway on its own free ports: UDP, the embedded broker's two, the API.
fn own_ports() -> Vec<String> {
    let udp = free_port();
    flags(udp, free_port(), free_port(), free_port())
}

fn flags(udp: u16, mqtt: u16, mqtt5: u16, api: u16) -> Vec<String> {
    [
        "--udp-bind".to_string(),
        format!("127.0.0.1:{udp}"),
        "--embedded-bind".into(),
        format!("127.0.0.1:{mqtt}"),
        "--embedded-bind-v5".into(),
        format!("127.0.0.1:{mqtt5}"),
        "--api-bind".into(),
        format!("127.0.0.1:{api}"),
        "--shards".into(),
        "2".into(),
        // Not about persistence: no store shared through the working directory.
        "--store".into(),
        "none".into(),
    ]
    .to_vec()
}

fn register(gw: SocketAddr, ep: &str) -> u8 {
    let sock = socket([127, 0, 0, 1], Duration::from_secs(5));
    let register = Req::con(codes::POST, 0x77, &[1, 2])
        .path(&["rd"])
        .query(&[&format!("ep={ep}"), "lt=60"])
        .body(b"</3/0>");
    let reply = exchange(&sock, gw, &register.bytes());
    Message::parse(&reply).expect("CoAP reply").code
}

#[test]
fn a_taken_embedded_broker_port_stops_the_start_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let udp = free_port();
    let mut gw = Started::spawn(None, &flags(udp, free_port(), port, free_port()));
    let outcome = gw.outcome();
    let log = gw.log();
    assert!(
        matches!(outcome, Outcome::Exited(Some(c)) if c != 0),
        "{outcome:?}:\n{log}"
    );
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && log.contains("mqtt.embedded_bind_v5"),
        "the error names the address and its key:\n{log}"
    );
}

/// Two gateways started at the same instant with their own UDP, API and MQTT 3.1.1 ports but
/// the same MQTT 5 port: one gets it, the other refuses to start naming it. (The start used
/// to probe the port by binding and releasing it, so both could say ready and the second
/// publish into the first one's broker.)
#[test]
fn gateways_started_together_never_share_an_embedded_broker() {
    for _ in 0..4 {
        let shared_v5 = free_port();
        let args = |own: Vec<String>| {
            let mut a = own;
            let i = a.iter().position(|f| f == "--embedded-bind-v5").unwrap();
            a[i + 1] = format!("127.0.0.1:{shared_v5}");
            a
        };
        let mut a = Started::spawn(None, &args(own_ports()));
        let mut b = Started::spawn(None, &args(own_ports()));
        let outcomes = [a.outcome(), b.outcome()];
        let ready = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Ready))
            .count();
        let logs = format!("first:\n{}\nsecond:\n{}", a.log(), b.log());
        assert_eq!(ready, 1, "exactly one owns the port: {outcomes:?}\n{logs}");
        let refused = if matches!(outcomes[0], Outcome::Ready) {
            b.log()
        } else {
            a.log()
        };
        assert!(
            refused.contains(&format!("cannot listen on 127.0.0.1:{shared_v5}")),
            "{logs}"
        );
    }
}

/// SO_REUSEPORT would let a second gateway of the same user bind the UDP port beside the first
/// and take half of its devices; it is refused, naming the port, and the first serves on.
#[test]
fn a_second_gateway_on_the_same_udp_port_is_refused() {
    let mut first = Started::spawn(None, &own_ports());
    assert!(matches!(first.outcome(), Outcome::Ready), "{}", first.log());
    let udp: SocketAddr = {
        let log = first.log();
        let i = log.find("lwm2m-gateway ready udp=").unwrap();
        log[i + "lwm2m-gateway ready udp=".len()..]
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut second_args = own_ports();
    second_args[1] = udp.to_string();
    let mut second = Started::spawn(None, &second_args);
    let outcome = second.outcome();
    let log = second.log();
    assert!(
        matches!(outcome, Outcome::Exited(Some(c)) if c != 0),
        "{outcome:?}:\n{log}"
    );
    assert!(
        log.contains(&format!("UDP listener on {udp}"))
            && log.contains(&format!(
                "port {} is already served by another process",
                udp.port()
            )),
        "{log}"
    );
    // Every device still reaches the first one.
    for i in 0..20 {
        assert_eq!(register(udp, &format!("solo{i}")), codes::CREATED);
    }
}

#[test]
fn an_invalid_log_level_stops_the_start() {
    for (flag, env) in [
        (Some("nonsense["), None),
        (Some("nonsense"), None),
        (None, Some("x=loud")),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(own_ports());
        if let Some(f) = flag {
            cmd.args(["--log-level", f]);
        }
        if let Some(e) = env {
            cmd.env("RUST_LOG", e);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}: {err}");
        let named = if flag.is_some() {
            "--log-level"
        } else {
            "RUST_LOG"
        };
        assert!(err.contains(named), "{err}");
    }
}

/// Started from a directory without `etc/`: the log says there is no configuration file and
/// that the built-in object definitions are used.
#[test]
fn started_elsewhere_it_says_what_it_runs_with() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gw = Started::spawn(Some(cwd.path()), &own_ports());
    assert!(matches!(gw.outcome(), Outcome::Ready), "{}", gw.log());
    let log = gw.log();
    assert!(log.contains("no configuration file"), "{log}");
    assert!(
        log.contains("using the built-in object definitions") && log.contains("objects=66"),
        "{log}"
    );
}

/// A configuration file's relative paths are relative to the file, whatever the working
/// directory; the log names the file and how many object definitions it loaded.
#[test]
fn a_config_file_is_logged_and_its_paths_are_its_own() {
    let conf_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(conf_dir.path().join("objects")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/etc/lwm2m_xml/3.xml"),
        conf_dir.path().join("objects/3.xml"),
    )
    .unwrap();
    let file = conf_dir.path().join("gw.toml");
    std::fs::write(&file, "xml_dir = \"objects\"\n").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut args = own_ports();
    args.extend(["--config".to_string(), file.display().to_string()]);
    let mut gw = Started::spawn(Some(cwd.path()), &args);
    assert!(matches!(gw.outcome(), Outcome::Ready), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains(&format!("configuration loaded file={}", file.display())),
        "{log}"
    );
    let objects = conf_dir.path().join("objects");
    assert!(
        log.contains(&format!(
            "object definitions loaded xml_dir={} objects=1",
            objects.display()
        )),
        "{log}"
    );
}

/// A healthy start, MQTT clients coming and going, devices registering and a stop log no
/// ERROR line (the start used to log two from its readiness probe of the embedded broker,
/// and every client disconnect one).
#[test]
fn a_healthy_gateway_logs_no_error() {
    let mut gw = GatewayProc::start(Broker::Embedded, "");
    for i in 0..3 {
        MqttClient::subscriber(gw.mqtt, &format!("passer-{i}"), "lwm2m/#", 0).disconnect();
    }
    // A client that goes away without DISCONNECT.
    drop(MqttClient::connect(gw.mqtt, "vanisher", true).unwrap());
    for i in 0..5 {
        assert_eq!(register(gw.udp, &format!("calm{i}")), codes::CREATED);
    }
    assert!(gw.stop().success());
    let log = gw.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}

/// `--log-format json` (or `log.format = "json"`): every line on standard error is one
/// JSON object with its time, level, target and message, from the first line on.
#[test]
fn json_logs_are_one_object_per_line() {
    use simd_json::prelude::*;
    let mut gw = GatewayProc::start_cli(&["--log-format", "json"], &[]);
    assert_eq!(register(gw.udp, "json1"), codes::CREATED);
    assert!(gw.stop().success());
    let log = gw.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v = common::json(line.as_bytes());
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        messages.push(v["message"].as_str().unwrap().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "configuration loaded"),
        "{log}"
    );
    assert!(messages.iter().any(|m| m == "lwm2m-gateway ready"), "{log}");
    // The same from the configuration file.
    let mut gw = GatewayProc::start(Broker::Embedded, "[log]\nformat = \"json\"");
    assert!(gw.stop().success());
    assert!(gw
        .log()
        .lines()
        .all(|l| l.trim().is_empty() || l.starts_with('{')));
}

/// EMQX's configuration as it is: the product description's `gateway.lwm2m` block in a
/// `.conf` file starts the gateway unchanged; the log warns about the block's unknown
/// mountpoint placeholder and about EMQX keys the gateway does not use.
#[test]
fn an_emqx_conf_file_starts_the_gateway() {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/seed/lwm2m-gateway.md"
    ))
    .expect("../shared/seed beside the repository");
    let start = seed.find("gateway.lwm2m {").expect("the block");
    let end = start + seed[start..].find("\n```").expect("its end");
    let block = &seed[start..end];
    let dir = tempfile::tempdir().unwrap();
    // The block's xml_dir ("etc/lwm2m_xml/") is relative to the file.
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/etc"),
        dir.path().join("etc"),
    )
    .unwrap();
    let file = dir.path().join("emqx.conf");
    let extra = "\ngateway.lwm2m.listeners.udp.default.udp_options { active_n = 100 }\n";
    std::fs::write(&file, format!("{block}{extra}")).unwrap();
    let mut args = own_ports();
    args.extend(["--config".to_string(), file.display().to_string()]);
    let mut gw = Started::spawn(Some(dir.path()), &args);
    assert!(matches!(gw.outcome(), Outcome::Ready), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("unknown placeholder ${endpoint_namea}"),
        "{log}"
    );
    assert!(
        log.contains("gateway.lwm2m.listeners.udp.default.udp_options: an EMQX key"),
        "{log}"
    );
    assert!(log.contains("objects=66"), "{log}");
    let udp = log
        .lines()
        .find_map(|l| l.split("lwm2m-gateway ready udp=").nth(1))
        .expect("ready line")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(register(udp, "emqx1"), codes::CREATED);
}
