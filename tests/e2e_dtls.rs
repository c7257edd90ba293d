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
