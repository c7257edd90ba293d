//! The `lwm2m-loadgen` binary against a gateway started in this process (its real UDP
//! listener and embedded MQTT broker on free loopback ports): the exit status and the
//! summary of a run whose registrations the gateway refuses, `--allow-failures`, and
//! the `mqtt://host:port` form of `--mqtt`.

use lwm2m_gateway::config::Config;
use lwm2m_gateway::engine::Gateway;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::Duration;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A gateway admitting `max_conn_rate` new registrations per second; stopped when dropped.
struct RunningGateway {
    gw: Option<Gateway>,
    mqtt: SocketAddr,
    api: SocketAddr,
}

impl RunningGateway {
    fn start(max_conn_rate: u64) -> Self {
        let (mqtt, mqtt_v5, api) = (free_port(), free_port(), free_port());
        let xml = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/lwm2m_xml");
        let toml = format!(
            "xml_dir = \"{xml}\"\n\
             [listeners.udp.default]\nbind = \"127.0.0.1:0\"\nmax_conn_rate = {max_conn_rate}\n\
             [mqtt]\nserver = \"embedded\"\nembedded_bind = \"127.0.0.1:{mqtt}\"\n\
             embedded_bind_v5 = \"127.0.0.1:{mqtt_v5}\"\n\
             [api]\nbind = \"127.0.0.1:{api}\"\n\
             [store]\nkind = \"none\"\n"
        );
        let cfg = Config::from_toml_str(&toml).expect("configuration");
        let gw = Gateway::start(&cfg).expect("gateway starts");
        assert!(
            gw.wait_for_broker(Duration::from_secs(10)),
            "embedded broker up"
        );
        Self {
            gw: Some(gw),
            mqtt: SocketAddr::from(([127, 0, 0, 1], mqtt)),
            api: SocketAddr::from(([127, 0, 0, 1], api)),
        }
    }

    fn udp(&self) -> SocketAddr {
        self.gw.as_ref().expect("running").udp_addr()
    }

    /// The sum over shards of a counter on the gateway's `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(self.api).expect("connect to the API");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("response");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop();
        }
    }
}

/// Runs the loadgen binary: its exit status and stdout.
fn loadgen(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-loadgen"))
        .args(args)
        .output()
        .expect("run lwm2m-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status, all)
}

/// The value column of the summary row `name` (`  name   value`).
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(name)?;
        rest.starts_with("  ").then(|| rest.trim())
    })
}

/// A burst of 300 Registers at a gateway that admits 20 per second.
fn refused_run(gw: &RunningGateway, prefix: &str, extra: &[&str]) -> (ExitStatus, String) {
    let udp = gw.udp().to_string();
    let mqtt = gw.mqtt.to_string();
    let mut args = vec![
        "--gateway",
        &udp,
        "--mqtt",
        &mqtt,
        "--register",
        "300",
        "--rate",
        "0",
        "--observe-wait",
        "0",
        "--prefix",
        prefix,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn refused_registrations_fail_the_run_and_the_summary_counts_the_503s() {
    let gw = RunningGateway::start(20);
    let (status, out) = refused_run(&gw, "refused", &[]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert_eq!(row(&out, "result"), Some("FAILED"), "{out}");

    let refused = gw.metric("lwm2m_admission_rate_limited_total");
    assert!(refused > 0, "the gateway refused some: {refused}\n{out}");
    let answers = row(&out, "5.03 answers").unwrap_or_else(|| panic!("no 5.03 row:\n{out}"));
    assert_eq!(
        answers.split(' ').next(),
        Some(refused.to_string().as_str()),
        "{out}"
    );
    assert!(answers.contains("max_conn_rate"), "{out}");
    let registered = row(&out, "check registered").expect("registered check");
    assert!(registered.starts_with("FAILED"), "{out}");
    assert!(
        registered.contains(&format!("{refused} answered 5.03")),
        "{out}"
    );
}

#[test]
fn allow_failures_exits_0_without_saying_passed() {
    let gw = RunningGateway::start(20);
    let (status, out) = refused_run(&gw, "allowed", &["--allow-failures"]);
    assert!(status.success(), "{out}");
    let result = row(&out, "result").expect("result row");
    assert_eq!(
        result, "failures allowed by --allow-failures (not passed)",
        "{out}"
    );
    let registered = row(&out, "check registered").expect("registered check");
    assert!(registered.starts_with("failed (allowed)"), "{out}");
}

#[test]
fn mqtt_url_form_is_accepted() {
    let gw = RunningGateway::start(1_000_000);
    let udp = gw.udp().to_string();
    let mqtt = format!("mqtt://127.0.0.1:{}", gw.mqtt.port());
    let (status, out) = loadgen(&[
        "--gateway",
        &udp,
        "--mqtt",
        &mqtt,
        "--register",
        "50",
        "--observe-wait",
        "0",
        "--prefix",
        "url",
        "--quiet",
    ]);
    assert!(status.success(), "{out}");
    assert_eq!(row(&out, "result"), Some("passed"), "{out}");
    assert_eq!(
        row(&out, "on MQTT"),
        Some("50 register messages, 50 endpoints"),
        "{out}"
    );
}
