//! The DTLS server against a DTLS stack this project did not write:
//! Debian's libcoap3-bin (`coap-client-openssl`, `coap-client-gnutls`).
//! The server runs on a real UDP socket with a tiny CoAP responder that
//! answers every CON request with a piggybacked 2.05 "hello".
//!
//! Requires `apt-get install -y libcoap3-bin` (and the openssl CLI); the
//! tests fail when the tools are missing.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pki::make_pki;
use lwm2m_gateway::coap::{codes, Message, MessageWriter, MsgType};
use lwm2m_gateway::dtls::{
    CertConfig, DtlsEvent, DtlsServer, DtlsSettings, PeerIdentity, PskStore, PskTable,
};

/// ASCII key, as `coap-client -k` takes it.
const KEY: &str = "secretkey1234567";

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<DtlsEvent>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Running {
    fn events(&self) -> Vec<DtlsEvent> {
        self.events.try_iter().collect()
    }
}

fn respond(server: &mut DtlsServer, now: Instant, peer: SocketAddr, data: &[u8]) {
    let Ok(m) = Message::parse(data) else { return };
    if m.mtype != MsgType::Con || !m.is_request() {
        return;
    }
    let mut out = Vec::new();
    MessageWriter::new(&mut out, MsgType::Ack, codes::CONTENT, m.mid, m.token).payload(b"hello");
    let _ = server.send(now, peer, &out);
}

fn start(settings: DtlsSettings) -> Running {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut server = DtlsServer::new(settings).unwrap();
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::Acquire) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                server.handle_datagram(Instant::now(), peer, &buf[..n]);
            }
            let now = Instant::now();
            if server.next_timeout().is_some_and(|t| t <= now) {
                server.handle_timeout(now);
            }
            loop {
                while let Some((to, p)) = server.poll_transmit() {
                    let _ = socket.send_to(&p, to);
                }
                let Some(ev) = server.poll_event() else { break };
                if let DtlsEvent::Data { peer, plaintext } = &ev {
                    respond(&mut server, Instant::now(), *peer, plaintext);
                }
                let _ = tx.send(ev);
            }
        }
    });
    Running {
        addr,
        stop,
        events: rx,
        thread: Some(thread),
    }
}

fn psk_settings() -> DtlsSettings {
    let text = format!("dev-1:{}\n", hex_of(KEY));
    let table = PskTable::parse(&text, Path::new("psk.txt")).unwrap();
    DtlsSettings {
        psk: Some(Arc::new(PskStore::with_table("psk.txt", table))),
        ..DtlsSettings::default()
    }
}

fn coap_client(tool: &str, args: &[&str], url: &str) -> Output {
    Command::new(tool)
        .args(["-m", "get", "-B", "5"])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required (apt-get install -y libcoap3-bin): {e}"))
}

fn url(r: &Running) -> String {
    format!("coaps://127.0.0.1:{}/x", r.addr.port())
}

fn connected(events: &[DtlsEvent]) -> Vec<PeerIdentity> {
    events
        .iter()
        .filter_map(|e| match e {
            DtlsEvent::Connected { identity, .. } => Some(identity.clone()),
            _ => None,
        })
        .collect()
}

fn psk_get(tool: &str) {
    let r = start(psk_settings());
    let out = coap_client(tool, &["-u", "dev-1", "-k", KEY], &url(&r));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello"),
        "{tool}: stdout {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(50));
    let events = r.events();
    assert_eq!(connected(&events), vec![PeerIdentity::Psk("dev-1".into())]);
    assert!(events.iter().any(|e| matches!(e, DtlsEvent::Data { .. })));
}

#[test]
fn libcoap_openssl_psk_get() {
    psk_get("coap-client-openssl");
}

#[test]
fn libcoap_gnutls_psk_get() {
    psk_get("coap-client-gnutls");
}

#[test]
fn libcoap_wrong_key_is_refused() {
    let r = start(psk_settings());
    for tool in ["coap-client-openssl", "coap-client-gnutls"] {
        let out = coap_client(tool, &["-u", "dev-1", "-k", "wrongkey12345678"], &url(&r));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("hello"), "{tool}: {stdout:?}");
        let out = coap_client(tool, &["-u", "nobody", "-k", KEY], &url(&r));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hello"));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(connected(&r.events()).is_empty());
}

#[test]
fn libcoap_openssl_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d, "urn:dev:libcoap");
    let cert = CertConfig::load(
        &d.join("server.pem"),
        &d.join("server.key"),
        Some(&d.join("ca.pem")),
    )
    .unwrap();
    let r = start(DtlsSettings {
        cert: Some(Arc::new(cert)),
        ..DtlsSettings::default()
    });
    let client_pem = d.join("client.pem");
    let client_key = d.join("client.key");
    let out = coap_client(
        "coap-client-openssl",
        &[
            "-c",
            client_pem.to_str().unwrap(),
            "-j",
            client_key.to_str().unwrap(),
        ],
        &url(&r),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello"),
        "stdout {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        connected(&r.events()),
        vec![PeerIdentity::Cert {
            cn: "urn:dev:libcoap".into()
        }]
    );
}
