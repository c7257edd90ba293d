//! Runs the real `lwm2m-gateway` binary with a generated configuration.

use super::mosquitto::free_port;
use super::prometheus::Exposition;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The management API secret of test gateways.
pub const API_SECRET: &str = "test-secret";

pub struct GatewayProc {
    child: Option<Child>,
    /// The UDP listener devices talk to.
    pub udp: SocketAddr,
    /// The broker the gateway publishes to (embedded or external); with the embedded one, its
    /// MQTT 3.1.1 listener.
    pub mqtt: SocketAddr,
    /// The embedded broker's MQTT 5 listener (None with an external broker).
    pub mqtt_v5: Option<SocketAddr>,
    /// The management API (key `admin`, secret [`API_SECRET`]).
    pub api: SocketAddr,
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
}

/// Where the gateway's broker is.
pub enum Broker {
    /// The embedded broker on a free port.
    Embedded,
    /// An external broker (e.g. Mosquitto).
    External(SocketAddr),
    /// An external broker the gateway is given as `url` (`mqtt://name:port`); tests
    /// reach it at the address.
    Named(String, SocketAddr),
}

impl GatewayProc {
    /// Starts the gateway; `extra` is TOML appended to the generated file (it may
    /// add keys to `[mqtt]` and `[engine]` through dotted keys, or add new tables).
    pub fn start(broker: Broker, extra: &str) -> Self {
        Self::start_with(broker, extra, "")
    }

    /// Like `start`, with `mqtt_extra` lines added to the `[mqtt]` table.
    pub fn start_with(broker: Broker, extra: &str, mqtt_extra: &str) -> Self {
        Self::start_full(broker, extra, mqtt_extra, "max_conn_rate = 1000000")
    }

    /// Like `start_with`, with `udp_extra` lines in `[listeners.udp.default]`
    /// (tests raise `max_conn_rate` unless they test it).
    pub fn start_full(broker: Broker, extra: &str, mqtt_extra: &str, udp_extra: &str) -> Self {
        let xml = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/lwm2m_xml");
        Self::start_in(broker, xml, extra, mqtt_extra, udp_extra)
    }

    /// Like `start_full`, with the object definitions from `xml`.
    pub fn start_in(
        broker: Broker,
        xml: &str,
        extra: &str,
        mqtt_extra: &str,
        udp_extra: &str,
    ) -> Self {
        let head = format!(
            "xml_dir = \"{xml}\"\n{extra}\n\n[listeners.udp.default]\nbind = \"127.0.0.1:0\"\n{udp_extra}\n"
        );
        let mut gw = Self::spawn(broker, &head, mqtt_extra, Some(API_SECRET), &[], &[]);
        gw.udp = gw.wait_ready();
        gw
    }

    /// Like `spawn_cli`, once ready.
    pub fn start_cli(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut gw = Self::spawn_cli(args, env);
        gw.udp = gw.wait_ready();
        gw
    }

    /// Runs the gateway (embedded broker, shipped object definitions) with no
    /// management API secret in its file, `args` on its command line and `env` in its
    /// environment; does not wait for it.
    pub fn spawn_cli(args: &[&str], env: &[(&str, &str)]) -> Self {
        let xml = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/lwm2m_xml");
        let head = format!(
            "xml_dir = \"{xml}\"\n\n[listeners.udp.default]\nbind = \"127.0.0.1:0\"\n\
             max_conn_rate = 1000000\n"
        );
        Self::spawn(Broker::Embedded, &head, "", None, args, env)
    }

    /// Writes the configuration (`head`, then `[mqtt]` and `[api]`) and starts the
    /// binary; the environment holds no `LWM2M_API_SECRET` unless `env` sets it.
    fn spawn(
        broker: Broker,
        head: &str,
        mqtt_extra: &str,
        api_secret: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, mqtt, mqtt_v5) = match broker {
            Broker::Embedded => {
                let (port, port5) = (free_port(), free_port());
                (
                    format!(
                        "server = \"embedded\"\nembedded_bind = \"127.0.0.1:{port}\"\n\
                         embedded_bind_v5 = \"127.0.0.1:{port5}\""
                    ),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    Some(SocketAddr::from(([127, 0, 0, 1], port5))),
                )
            }
            Broker::External(a) => (format!("server = \"mqtt://{a}\""), a, None),
            Broker::Named(url, a) => (format!("server = \"{url}\""), a, None),
        };
        let api = free_port();
        let secret = api_secret.map_or(String::new(), |s| format!("api_secret = \"{s}\"\n"));
        let toml = format!(
            "{head}\n[mqtt]\n{server}\n{mqtt_extra}\n\n[api]\nbind = \"127.0.0.1:{api}\"\n{secret}"
        );
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, toml).expect("write config");
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_lwm2m-gateway"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info,rumqttd=warn")
            .env_remove("LWM2M_API_SECRET")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lwm2m-gateway");
        Self {
            child: Some(child),
            udp: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt,
            mqtt_v5,
            api: SocketAddr::from(([127, 0, 0, 1], api)),
            dir,
            log_path,
        }
    }

    fn wait_ready(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited with {status} before ready:\n{}", self.log());
            }
            let f = std::fs::File::open(&self.log_path).expect("log");
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if let Some(i) = line.find("lwm2m-gateway ready udp=") {
                    let addr = line[i + "lwm2m-gateway ready udp=".len()..].trim();
                    return addr.parse().expect("udp address in ready line");
                }
                // `--log-format json`: one object per line.
                if line.starts_with('{') && line.contains("\"lwm2m-gateway ready\"") {
                    let v = super::json(line.as_bytes());
                    use simd_json::prelude::*;
                    let addr = v["udp"].as_str().expect("udp in the ready object");
                    return addr.parse().expect("udp address in ready object");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway not ready in 30 s:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The address of the DTLS listener, from the gateway's log (the tests bind
    /// it to port 0).
    pub fn dtls_addr(&self) -> SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("DTLS listener up"))
            .unwrap_or_else(|| panic!("no DTLS listener:\n{log}"));
        let i = line.find("bind=").expect("bind in the line") + 5;
        line[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `signal` (a `kill -s` name: "TERM", "INT") and waits for the exit status.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        self.wait_exit()
    }

    /// Sends `signal` (a `kill -s` name) without waiting.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {signal} the gateway");
    }

    /// Waits (up to 20 s) for the gateway to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gateway did not exit in 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway's resident set size (VmRSS of /proc/PID/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of the gateway");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line")
    }

    /// `/metrics`, parsed (strictly).
    pub fn metrics(&self) -> Exposition {
        let (status, text) = super::http::request(self.api, "GET", "/metrics", None, b"");
        assert_eq!(status, 200, "GET /metrics: {text}");
        Exposition::parse(&text)
    }

    /// `/metrics` once `ready` holds for it, see [`metrics_when`].
    pub fn metrics_when(&self, ready: impl Fn(&Exposition) -> bool) -> Exposition {
        metrics_when(self.api, ready)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The API's `/metrics` once `ready` holds for it (shards copy their counters out at the
/// end of each loop turn, which may come after a reply reached the test), or the last
/// reading after 20 s.
pub fn metrics_when(api: SocketAddr, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = super::http::request(api, "GET", "/metrics", None, b"");
        assert_eq!(status, 200, "GET /metrics: {text}");
        let e = Exposition::parse(&text);
        if ready(&e) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
