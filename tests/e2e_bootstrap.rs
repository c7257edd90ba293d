//! End to end, the Bootstrap-Server through the real binary: a raw CoAP device on a real
//! UDP socket asks for its bootstrap (`POST /bs`) and answers the gateway's requests;
//! the test checks the exact requests in order (TLV bodies decoded against the OMA
//! definitions), the MQTT progress messages, /metrics, and the configuration file
//! reloaded on change (a bad file refused with its line, the previous one kept).

mod common;

use common::coap::{exchange, recv, socket, Req, Request};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, Message};
use lwm2m_gateway::formats::{self, fmt_id, Value};
use lwm2m_gateway::model::LwPath;
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[bs1]
[[bs1.servers]]
uri = "coap://127.0.0.1:5783"
security = "nosec"
short_id = 101
lifetime = 300
binding = "U"

[[bs1.servers]]
uri = "coaps://127.0.0.1:5784"
security = "psk"
identity = "bs1-id"
key = "000102030405060708090a0b0c0d0e0f"
short_id = 102
lifetime = 600
binding = "UQ"
"#;

fn start(file: &std::path::Path) -> GatewayProc {
    let extra = format!(
        "[bootstrap]\nenable = true\nconfig_file = \"{}\"",
        file.display()
    );
    GatewayProc::start(Broker::Embedded, &extra)
}

/// The code of the answer to `POST /bs?ep=...`.
fn bootstrap_request(dev: &UdpSocket, gw: SocketAddr, ep: &str, mid: u16) -> u8 {
    let q = format!("ep={ep}");
    let req = Req::con(codes::POST, mid, &mid.to_be_bytes())
        .path(&["bs"])
        .query(&[&q]);
    let reply = exchange(dev, gw, &req.bytes());
    Message::parse(&reply).unwrap().code
}

/// The values of a TLV body written to `path`, typed by the OMA definitions.
fn values(path: &str, body: &[u8]) -> Vec<(String, Value)> {
    let registry = lwm2m_proto::objects::builtin_registry();
    let p = LwPath::parse(path).unwrap();
    formats::decode(Some(fmt_id::TLV), body, &p, &registry)
        .unwrap()
        .into_iter()
        .map(|i| (i.path.to_string(), i.value))
        .collect()
}

#[test]
fn a_device_is_bootstrapped_and_the_file_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let gw = start(&file);
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-bs", "lwm2m/#", 1);
    let dev = socket([127, 0, 0, 1], WAIT);

    assert_eq!(bootstrap_request(&dev, gw.udp, "bs1", 1), codes::CHANGED);
    let mut seen = Vec::new();
    loop {
        let r = Request::parse(&recv(&dev));
        let code = match r.code {
            codes::DELETE => codes::DELETED,
            _ => codes::CHANGED,
        };
        dev.send_to(&r.ack(code, &[], b""), gw.udp).unwrap();
        let last = r.path == "/bs";
        seen.push(r);
        if last {
            break;
        }
    }
    let shown: Vec<(u8, &str, Option<u32>)> = seen
        .iter()
        .map(|r| (r.code, r.path.as_str(), r.format))
        .collect();
    let tlv = Some(fmt_id::TLV as u32);
    assert_eq!(
        shown,
        vec![
            (codes::DELETE, "/0", None),
            (codes::DELETE, "/1", None),
            (codes::PUT, "/0/1", tlv),
            (codes::PUT, "/1/1", tlv),
            (codes::PUT, "/0/2", tlv),
            (codes::PUT, "/1/2", tlv),
            (codes::POST, "/bs", None),
        ]
    );
    let s = |t: &str| Value::String(t.into());
    let o = |b: &[u8]| Value::Opaque(b.to_vec());
    assert_eq!(
        values("/0/1", &seen[2].payload),
        vec![
            ("/0/1/0".into(), s("coap://127.0.0.1:5783")),
            ("/0/1/1".into(), Value::Boolean(false)),
            ("/0/1/2".into(), Value::Integer(3)),
            ("/0/1/3".into(), o(b"")),
            ("/0/1/4".into(), o(b"")),
            ("/0/1/5".into(), o(b"")),
            ("/0/1/10".into(), Value::Integer(101)),
        ]
    );
    assert_eq!(
        values("/1/1", &seen[3].payload),
        vec![
            ("/1/1/0".into(), Value::Integer(101)),
            ("/1/1/1".into(), Value::Integer(300)),
            ("/1/1/6".into(), Value::Boolean(false)),
            ("/1/1/7".into(), s("U")),
        ]
    );
    let sec2 = values("/0/2", &seen[4].payload);
    assert_eq!(sec2[2].1, Value::Integer(0), "PSK");
    assert_eq!(sec2[3].1, o(b"bs1-id"));
    assert_eq!(sec2[5].1, o(&(0..16).collect::<Vec<u8>>()));
    assert_eq!(values("/1/2", &seen[5].payload)[3].1, s("UQ"));

    let (t, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "bootstrap")
        .expect("started");
    assert_eq!(t, "lwm2m/bs1/up/bootstrap");
    assert_eq!(v["data"]["ep"], "bs1");
    assert_eq!(v["data"]["status"], "started");
    let (_, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == "bootstrap")
        .expect("finished");
    assert_eq!(v["data"]["status"], "finished");
    let m = gw.metrics_when(|m| m.sum("lwm2m_bootstraps_finished_total", &[]) >= 1.0);
    assert_eq!(m.sum("lwm2m_bootstrap_requests_total", &[]), 7.0);

    // The API: the configuration and the device's last outcome.
    let auth = Some(("admin", API_SECRET));
    let (st, body) = request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/bootstrap/bs1",
        auth,
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let v = common::json(&body);
    assert_eq!(v["servers"][1]["identity"], "bs1-id");
    assert_eq!(v["last"]["status"], "finished");
    // PUT validates as the file does, naming the field; a good one is listed.
    let base = "/api/v5/gateways/lwm2m/bootstrap";
    let bad = br#"{"servers":[{"uri":"coap://127.0.0.1:5783","security":"psk","short_id":1}]}"#;
    let (st, body) = request(gw.api, "PUT", &format!("{base}/api1"), auth, bad);
    assert_eq!(st, 400);
    assert!(body.contains("servers[0].uri"), "{body}");
    let good = br#"{"delete":["/0"],"servers":[{"uri":"coap://127.0.0.1:5783","security":"nosec","short_id":7}]}"#;
    let (st, _) = request(gw.api, "PUT", &format!("{base}/api1"), auth, good);
    assert_eq!(st, 204);
    let (st, body) = request(gw.api, "GET", base, auth, b"");
    assert_eq!(st, 200);
    let v = common::json(&body);
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bs1", "api1"]);
    assert_eq!(v["data"][1]["servers"][0]["short_id"], 7);
    let dev4 = socket([127, 0, 0, 1], WAIT);
    assert_eq!(bootstrap_request(&dev4, gw.udp, "api1", 1), codes::CHANGED);
    assert_eq!(Request::parse(&recv(&dev4)).path, "/0");
    let (st, _) = request(gw.api, "DELETE", &format!("{base}/api1"), auth, b"");
    assert_eq!(st, 204);
    let (st, _) = request(gw.api, "DELETE", &format!("{base}/api1"), auth, b"");
    assert_eq!(st, 404);

    // A configuration change through the API keeps the Bootstrap-Server serving.
    let (st, body) = request(
        gw.api,
        "PUT",
        "/api/v5/gateways/lwm2m",
        auth,
        br#"{"qmode_time_window":"30s"}"#,
    );
    assert_eq!(st, 200, "{body}");

    // A file with an error is refused (its line logged), the previous one kept.
    std::fs::write(&file, CONFIG.replace("\"nosec\"", "\"none\"")).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !gw.log().contains("line 5") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gw.log().contains("bs1.servers[0].security"), "{}", gw.log());
    let dev2 = socket([127, 0, 0, 1], WAIT);
    let code = bootstrap_request(&dev2, gw.udp, "bs1", 1);
    assert_eq!(code, codes::CHANGED, "still configured");
    let r = Request::parse(&recv(&dev2));
    assert_eq!(r.path, "/0");
    dev2.send_to(&r.ack(codes::DELETED, &[], b""), gw.udp)
        .unwrap();

    // Without bs1's entry: 4.00 and a `failed` message saying so.
    std::fs::write(&file, "[other]\n").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let dev3 = socket([127, 0, 0, 1], WAIT);
    let mut mid = 10;
    let code = loop {
        mid += 1;
        let code = bootstrap_request(&dev3, gw.udp, "bs1", mid);
        if code != codes::CHANGED || std::time::Instant::now() > deadline {
            break code;
        }
        // Still the old file: drop what the bootstrap that started sends, ask again.
        dev3.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while dev3.recv(&mut [0u8; 2048]).is_ok() {}
        dev3.set_read_timeout(Some(WAIT)).unwrap();
    };
    assert_eq!(code, codes::BAD_REQUEST);
    let (_, v) = mq
        .next_json(WAIT, |_, v| {
            v["msgType"] == "bootstrap"
                && v["data"].get("error").and_then(|e| e.as_str())
                    == Some("no bootstrap configuration for this endpoint")
        })
        .expect("failed: no configuration");
    assert_eq!(v["data"]["status"], "failed");
}

// ---- over DTLS: a bootstrap identity, and the PSK credentials it provisions ----

/// A device speaking DTLS (PSK) from a real UDP socket, with the load generator's dimpl
/// client configuration.
struct DtlsDevice {
    dtls: dimpl::Dtls,
    sock: UdpSocket,
    gw: SocketAddr,
    plain: std::collections::VecDeque<Vec<u8>>,
    connected: bool,
}

impl DtlsDevice {
    fn try_connect(gw: SocketAddr, identity: &str, key: &str, limit: Duration) -> Option<Self> {
        let config =
            lwm2m_loadgen::dtls::client_config(identity.as_bytes(), key.as_bytes()).unwrap();
        let now = std::time::Instant::now();
        let mut dtls = dimpl::Dtls::new_12_psk(config, now);
        dtls.set_active(true);
        dtls.handle_timeout(now).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut d = DtlsDevice {
            dtls,
            sock,
            gw,
            plain: Default::default(),
            connected: false,
        };
        let deadline = std::time::Instant::now() + limit;
        while !d.connected && std::time::Instant::now() < deadline {
            d.pump();
        }
        d.connected.then_some(d)
    }

    fn pump(&mut self) {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.dtls.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => {
                    self.sock.send_to(p, self.gw).unwrap();
                }
                dimpl::Output::Connected => self.connected = true,
                dimpl::Output::ApplicationData(d) => self.plain.push_back(d.to_vec()),
                dimpl::Output::BufferTooSmall { needed } => buf.resize(needed, 0),
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        let mut rb = vec![0u8; 65536];
        if let Ok((n, _)) = self.sock.recv_from(&mut rb) {
            let _ = self.dtls.handle_packet(&rb[..n]);
        }
        let _ = self.dtls.handle_timeout(std::time::Instant::now());
    }

    fn send(&mut self, coap: &[u8]) {
        self.dtls.send_application_data(coap).unwrap();
        self.pump();
    }

    fn recv(&mut self) -> Vec<u8> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.plain.pop_front() {
                return p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a CoAP message over DTLS"
            );
            self.pump();
        }
    }

    fn request(&mut self, code: u8, mid: u16, path: &[&str], query: &[&str]) -> u8 {
        let req = Req::con(code, mid, &mid.to_be_bytes())
            .path(path)
            .query(query);
        self.send(&req.bytes());
        Message::parse(&self.recv()).unwrap().code
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

const BOOT_KEY: &str = "bootstrapkey1234";
const DEV_KEY: &str = "provisionedkey16";

#[test]
fn over_dtls_a_bootstrap_provisions_the_devices_psk() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(&psk, format!("boot:{}:dev-*\n", hex(BOOT_KEY))).unwrap();
    let file = dir.path().join("bootstrap.toml");
    let extra = format!(
        "[bootstrap]\nenable = true\nconfig_file = \"{}\"\n\
         [listeners.dtls.default]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n",
        file.display(),
        psk.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let dtls = gw.dtls_addr();
    // The configuration names the DTLS listener, whose port is known now: the file
    // appears while the gateway runs.
    let config = format!(
        "[dev-7]\ndelete = [\"/0\"]\n[[dev-7.servers]]\nuri = \"coaps://127.0.0.1:{}\"\n\
         security = \"psk\"\nidentity = \"dev-7-id\"\nkey = \"{}\"\nshort_id = 1\nlifetime = 60\n",
        dtls.port(),
        hex(DEV_KEY)
    );
    std::fs::write(&file, config).unwrap();
    let auth = Some(("admin", API_SECRET));
    let path = "/api/v5/gateways/lwm2m/bootstrap/dev-7";
    let deadline = std::time::Instant::now() + WAIT;
    while request(gw.api, "GET", path, auth, b"").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut mq = MqttClient::subscriber(gw.mqtt, "e2e-bs-dtls", "lwm2m/#", 1);
    // Before the bootstrap the device's own identity is unknown.
    assert!(DtlsDevice::try_connect(dtls, "dev-7-id", DEV_KEY, Duration::from_secs(2)).is_none());

    let mut boot = DtlsDevice::try_connect(dtls, "boot", BOOT_KEY, WAIT).expect("handshake");
    // The bootstrap identity may bootstrap only the names its patterns allow.
    let code = boot.request(codes::POST, 1, &["bs"], &["ep=other"]);
    assert_eq!(code, codes::FORBIDDEN);
    assert_eq!(
        boot.request(codes::POST, 2, &["bs"], &["ep=dev-7"]),
        codes::CHANGED
    );
    let mut paths = Vec::new();
    loop {
        let r = Request::parse(&boot.recv());
        let code = if r.code == codes::DELETE {
            codes::DELETED
        } else {
            codes::CHANGED
        };
        boot.send(&r.ack(code, &[], b""));
        paths.push(r.path.clone());
        if r.path == "/bs" {
            break;
        }
    }
    assert_eq!(paths, ["/0", "/0/1", "/1/1", "/bs"]);
    let (_, v) = mq
        .next_json(WAIT, |_, v| {
            v["msgType"] == "bootstrap" && v["data"]["status"] == "finished"
        })
        .expect("finished");
    assert_eq!(v["data"]["ep"], "dev-7");

    // The provisioned identity handshakes and registers its name, with no restart.
    let deadline = std::time::Instant::now() + WAIT;
    let mut dev = loop {
        if let Some(d) = DtlsDevice::try_connect(dtls, "dev-7-id", DEV_KEY, Duration::from_secs(2))
        {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
    };
    let code = dev.request(codes::POST, 10, &["rd"], &["ep=dev-7", "lt=60"]);
    assert_eq!(code, codes::CREATED);
    let code = dev.request(codes::POST, 11, &["rd"], &["ep=dev-8", "lt=60"]);
    assert_eq!(code, codes::FORBIDDEN, "only the bootstrapped name");

    // The configuration removed: the provisioned key goes with it.
    assert_eq!(request(gw.api, "DELETE", path, auth, b"").0, 204);
    assert!(DtlsDevice::try_connect(dtls, "dev-7-id", DEV_KEY, Duration::from_secs(2)).is_none());
}
