//! Registration over DTLS (PSK) through the running gateway with a DTLS peer this
//! project did not write (libcoap's coap-client), and the identity ↔ endpoint-name
//! policy.

mod common;

use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

/// ASCII key, as `coap-client -k` takes it.
const KEY: &str = "secretkey1234567";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn dtls_addr(gw: &GatewayProc) -> SocketAddr {
    let log = gw.log();
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

fn register(tool: &str, identity: &str, key: &str, gw: SocketAddr, ep: &str) -> Output {
    let url = format!(
        "coaps://127.0.0.1:{}/rd?ep={ep}&lt=60&lwm2m=1.1&b=U",
        gw.port()
    );
    Command::new(tool)
        .args(["-m", "post", "-B", "5", "-t", "40", "-e", "</1/0>,</3/0>"])
        .args(["-u", identity, "-k", key])
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required (apt-get install -y libcoap3-bin): {e}"))
}

#[test]
fn psk_registration_over_dtls_reaches_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(
        &psk,
        format!(
            "# identity:hexkey[:allowed endpoint patterns]\ndev-a:{k}\nfleet:{k}:fleet-*\n",
            k = hex(KEY)
        ),
    )
    .unwrap();
    let extra = format!(
        "[listeners.dtls.default]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n",
        psk.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let dtls = dtls_addr(&gw);
    let mut mq = MqttClient::connect(gw.mqtt, "dtls-sub", true).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 0).unwrap();

    // The identity registers its own name, over both libcoap TLS back ends.
    let out = register("coap-client-openssl", "dev-a", KEY, dtls, "dev-a");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, p) = mq
        .recv_publish(Duration::from_secs(10))
        .expect("register over DTLS on MQTT");
    assert_eq!(t, "lwm2m/dev-a/up/resp");
    assert!(String::from_utf8_lossy(&p).contains("\"objectList\":[\"/1/0\",\"/3/0\"]"));
    let out = register("coap-client-gnutls", "fleet", KEY, dtls, "fleet-7");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, _) = mq
        .recv_publish(Duration::from_secs(10))
        .expect("pattern-allowed name");
    assert_eq!(t, "lwm2m/fleet-7/up/resp");

    // A name the identity may not use: 4.03, nothing published.
    let out = register("coap-client-openssl", "dev-a", KEY, dtls, "someone-else");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("4.03") || text.contains("Forbidden") || text.contains("may not"),
        "{text}"
    );
    // A wrong key never gets a session.
    let out = register(
        "coap-client-openssl",
        "dev-a",
        "wrongkey12345678",
        dtls,
        "dev-a",
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("2.01"));
    assert!(mq.recv_publish(Duration::from_millis(500)).is_none());
}

#[test]
fn shipped_psk_example_parses() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/psk.txt.example");
    let store = lwm2m_gateway::dtls::PskStore::load(p).expect("the example PSK file is valid");
    assert!(store.may_register("device-0001", "device-0001"));
    assert!(!store.may_register("device-0001", "device-0002"));
    assert!(store.may_register("fleet-a", "fleet-a-17"));
}

/// A device speaking DTLS from a real UDP socket with dimpl's client.
struct DtlsDevice {
    dtls: dimpl::Dtls,
    sock: std::net::UdpSocket,
    gw: SocketAddr,
    plain: std::collections::VecDeque<Vec<u8>>,
    connected: bool,
}

struct Key(Vec<u8>);
impl dimpl::PskResolver for Key {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

impl DtlsDevice {
    fn connect(gw: SocketAddr, identity: &str, key: &str) -> Self {
        let config = dimpl::Config::builder()
            .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
            .with_psk_client(
                identity.as_bytes().to_vec(),
                Arc::new(Key(key.as_bytes().to_vec())),
            )
            .build()
            .unwrap();
        let now = std::time::Instant::now();
        let mut dtls = dimpl::Dtls::new_12_psk(Arc::new(config), now);
        dtls.set_active(true);
        dtls.handle_timeout(now).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut d = DtlsDevice {
            dtls,
            sock,
            gw,
            plain: Default::default(),
            connected: false,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !d.connected {
            assert!(
                std::time::Instant::now() < deadline,
                "DTLS handshake with the gateway"
            );
            d.pump();
        }
        d
    }

    /// Sends what dimpl has, receives for up to 50 ms, handles timers.
    fn pump(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            match self.dtls.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => {
                    self.sock.send_to(p, self.gw).unwrap();
                }
                dimpl::Output::Connected => self.connected = true,
                dimpl::Output::ApplicationData(d) => self.plain.push_back(d.to_vec()),
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        let mut rb = [0u8; 4096];
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
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
}

use std::sync::Arc;

#[test]
fn commands_and_notifications_over_dtls() {
    use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(&psk, format!("dtls-dev:{}\n", hex(KEY))).unwrap();
    let extra = format!(
        "[listeners.dtls.default]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n",
        psk.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let mut mq = MqttClient::connect(gw.mqtt, "dtls-cmd", true).unwrap();
    mq.subscribe("lwm2m/dtls-dev/up/#", 0).unwrap();
    let mut dev = DtlsDevice::connect(dtls_addr(&gw), "dtls-dev", KEY);
    let mut reg = Vec::new();
    let mut w = MessageWriter::new(&mut reg, MsgType::Con, codes::POST, 1, &[1]);
    w.option(opt::URI_PATH, b"rd")
        .option(opt::URI_QUERY, b"ep=dtls-dev")
        .option(opt::URI_QUERY, b"lt=60");
    w.payload(b"</3/0>");
    dev.send(&reg);
    let created = dev.recv();
    let cm = Message::parse(&created).unwrap();
    assert_eq!(cm.code, codes::CREATED);
    let location = cm
        .option_values(opt::LOCATION_PATH)
        .nth(1)
        .unwrap()
        .to_vec();
    assert!(
        mq.recv_publish(Duration::from_secs(10)).is_some(),
        "register message"
    );
    // An observe command goes to the device over DTLS; its answer and a notification come back.
    mq.publish(
        "lwm2m/dtls-dev/dn/cmd",
        br#"{"reqID":7,"msgType":"observe","data":{"path":"/3/0/9"}}"#,
        0,
    )
    .unwrap();
    let req = dev.recv();
    let m = Message::parse(&req).unwrap();
    assert_eq!((m.code, m.option_uint(opt::OBSERVE)), (codes::GET, Some(0)));
    let token = m.token.to_vec();
    let mut ack = Vec::new();
    let mut w = MessageWriter::new(&mut ack, MsgType::Ack, codes::CONTENT, m.mid, &token);
    w.option_uint(opt::OBSERVE, 1)
        .option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(b"80");
    dev.send(&ack);
    let (t, p) = mq
        .recv_publish(Duration::from_secs(10))
        .expect("observe response");
    assert_eq!(t, "lwm2m/dtls-dev/up/resp");
    assert!(
        String::from_utf8_lossy(&p).contains("\"value\":80"),
        "{}",
        String::from_utf8_lossy(&p)
    );
    let mut note = Vec::new();
    let mut w = MessageWriter::new(&mut note, MsgType::Non, codes::CONTENT, 77, &token);
    w.option_uint(opt::OBSERVE, 2)
        .option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(b"79");
    dev.send(&note);
    let (t, p) = mq
        .recv_publish(Duration::from_secs(10))
        .expect("notification");
    assert_eq!(t, "lwm2m/dtls-dev/up/notify");
    assert!(String::from_utf8_lossy(&p).contains("\"seqNum\":2"));
    // Plain CoAP may not touch the DTLS registration, even knowing its location.
    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut up = Vec::new();
    let mut w = MessageWriter::new(&mut up, MsgType::Con, codes::DELETE, 9, &[9]);
    w.option(opt::URI_PATH, b"rd")
        .option(opt::URI_PATH, &location);
    w.finish();
    plain.send_to(&up, gw.udp).unwrap();
    let mut b = [0u8; 512];
    let (n, _) = plain.recv_from(&mut b).unwrap();
    assert_eq!(Message::parse(&b[..n]).unwrap().code, codes::FORBIDDEN);
}
