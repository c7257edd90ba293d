//! DTLS through the running gateway: registration with a DTLS peer this project
//! did not write (libcoap's coap-client, PSK and certificates), the identity ↔
//! endpoint-name policy, every command, queue mode and block-wise over DTLS with
//! the load generator's dimpl client, NAT rebinding across shards, lost sessions,
//! `psk_file` reloads, and the DTLS metrics.

mod common;

use base64::Engine;
use common::coap::{exchange, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use common::pki::make_pki;
use common::prometheus::Exposition;
use lwm2m_gateway::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use simd_json::prelude::*;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// ASCII key, as `coap-client -k` takes it.
const KEY: &str = "secretkey1234567";

const GW: &str = "/api/v5/gateways/lwm2m";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
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
    let dtls = gw.dtls_addr();
    let mut mq = MqttClient::subscriber(gw.mqtt, "dtls-sub", "lwm2m/+/up/resp", 0);

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
    // ... and the operator reads why, at the default level, with the peer and identity.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("INFO") && l.contains("DTLS handshake failed"))
        .unwrap_or_else(|| panic!("no info line about the failed handshake:\n{log}"));
    assert!(
        line.contains("identity=dev-a")
            && line.contains("peer=127.0.0.1:")
            && line.contains("pre-shared key"),
        "{line}"
    );
}

#[test]
fn shipped_psk_example_parses() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/psk.txt.example");
    let store = lwm2m_gateway::dtls::PskStore::load(p).expect("the example PSK file is valid");
    assert!(store.may_register("device-0001", "device-0001"));
    assert!(!store.may_register("device-0001", "device-0002"));
    assert!(store.may_register("fleet-a", "fleet-a-17"));
}

// ---- a DTLS device on a real socket: the load generator's dimpl PSK client ----

/// A device speaking DTLS (PSK, TLS_PSK_WITH_AES_128_CCM_8) from a real UDP
/// socket, with the dimpl client configuration of `lwm2m-loadgen --dtls`.
struct DtlsDevice {
    dtls: dimpl::Dtls,
    sock: UdpSocket,
    gw: SocketAddr,
    /// Decrypted CoAP messages not yet taken.
    plain: VecDeque<Vec<u8>>,
    /// Every datagram that arrived at the socket, as it arrived.
    raw: Vec<Vec<u8>>,
    connected: bool,
    mid: u16,
    /// The record version {254, x} its ClientHellos carry, as mbedTLS 2.x
    /// sends them (dimpl's client sends DTLS 1.2).
    hello_minor: Option<u8>,
}

impl DtlsDevice {
    fn connect(gw: SocketAddr, identity: &str, key: &str) -> Self {
        Self::connect_on(UdpSocket::bind("127.0.0.1:0").unwrap(), gw, identity, key)
    }

    /// A new handshake from `sock` (a device that starts over from the same port).
    fn connect_on(sock: UdpSocket, gw: SocketAddr, identity: &str, key: &str) -> Self {
        let d = Self::start_on(sock, gw, identity, key);
        d.finish_handshake()
    }

    fn start_on(sock: UdpSocket, gw: SocketAddr, identity: &str, key: &str) -> Self {
        Self::start_with(sock, gw, identity, key, None)
    }

    /// A device that offers DTLS Connection ID (RFC 9146), wanting none itself.
    fn connect_with_cid(gw: SocketAddr, identity: &str, key: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Self::start_with(sock, gw, identity, key, Some(&[])).finish_handshake()
    }

    fn start_with(
        sock: UdpSocket,
        gw: SocketAddr,
        identity: &str,
        key: &str,
        cid: Option<&[u8]>,
    ) -> Self {
        let config =
            lwm2m_loadgen::dtls::client_config(identity.as_bytes(), key.as_bytes()).unwrap();
        let now = Instant::now();
        let mut dtls = dimpl::Dtls::new_12_psk(config, now);
        dtls.set_active(true);
        if let Some(cid) = cid {
            assert!(dtls.set_connection_id(cid));
        }
        dtls.handle_timeout(now).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        DtlsDevice {
            dtls,
            sock,
            gw,
            plain: VecDeque::new(),
            raw: Vec::new(),
            connected: false,
            mid: 1000,
            hello_minor: None,
        }
    }

    fn finish_handshake(mut self) -> Self {
        let deadline = Instant::now() + WAIT;
        while !self.connected {
            assert!(Instant::now() < deadline, "DTLS handshake with the gateway");
            self.pump();
        }
        self
    }

    /// Tries a handshake for up to `limit`; true if it completed.
    fn try_handshake(gw: SocketAddr, identity: &str, key: &str, limit: Duration) -> bool {
        let mut d = Self::start_on(UdpSocket::bind("127.0.0.1:0").unwrap(), gw, identity, key);
        let deadline = Instant::now() + limit;
        while !d.connected && Instant::now() < deadline {
            d.pump();
        }
        d.connected
    }

    /// Sends what dimpl has, receives for up to 20 ms, runs dimpl's timers.
    fn pump(&mut self) {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.dtls.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => match self.hello_minor {
                    // An epoch-0 handshake record carrying a ClientHello.
                    Some(minor)
                        if p.len() > 13 && p[0] == 22 && p[3..5] == [0, 0] && p[13] == 1 =>
                    {
                        let mut p = p.to_vec();
                        p[2] = minor;
                        self.sock.send_to(&p, self.gw).unwrap();
                    }
                    _ => {
                        self.sock.send_to(p, self.gw).unwrap();
                    }
                },
                dimpl::Output::Connected => self.connected = true,
                dimpl::Output::ApplicationData(d) => self.plain.push_back(d.to_vec()),
                dimpl::Output::BufferTooSmall { needed } => buf.resize(needed, 0),
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        let mut rb = vec![0u8; 65536];
        if let Ok((n, _)) = self.sock.recv_from(&mut rb) {
            self.raw.push(rb[..n].to_vec());
            let _ = self.dtls.handle_packet(&rb[..n]);
        }
        let _ = self.dtls.handle_timeout(Instant::now());
    }

    fn send(&mut self, coap: &[u8]) {
        self.dtls.send_application_data(coap).unwrap();
        self.pump();
    }

    /// The next decrypted CoAP message (10 s at most).
    fn recv(&mut self) -> Vec<u8> {
        self.try_recv(WAIT).expect("a CoAP message over DTLS")
    }

    fn try_recv(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.plain.pop_front() {
                return Some(p);
            }
            if Instant::now() > deadline {
                return None;
            }
            self.pump();
        }
    }

    /// Sends close_notify.
    fn close(&mut self) {
        self.dtls.close().unwrap();
        self.pump();
    }

    fn into_socket(self) -> UdpSocket {
        self.sock
    }

    /// Message IDs are never reused across devices of a test: a new session from
    /// the same port reusing one would be a retransmission to the gateway.
    fn next_mid(&mut self) -> u16 {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1000);
        self.mid = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.mid
    }

    /// Registers with `query` and `payload`; returns the location.
    fn register(&mut self, query: &[&str], payload: &[u8]) -> String {
        let mid = self.next_mid();
        let register = Req::con(codes::POST, mid, &[1, 2])
            .path(&["rd"])
            .uint(opt::CONTENT_FORMAT, 40)
            .query(query)
            .body(payload);
        self.send(&register.bytes());
        let created = self.recv();
        let m = Message::parse(&created).unwrap();
        assert_eq!(m.code, codes::CREATED, "{m:?}");
        location(&m).expect("a location")
    }

    /// An Update of `location`; returns the reply's code.
    fn update(&mut self, location: &str) -> u8 {
        let mid = self.next_mid();
        let update = Req::con(codes::POST, mid, &mid.to_be_bytes()).path(&["rd", location]);
        self.send(&update.bytes());
        let reply = self.recv();
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.mid, mid, "the answer to the Update: {m:?}");
        m.code
    }

    /// The next request from the gateway.
    fn request(&mut self) -> Request {
        Request::parse(&self.recv())
    }

    /// A piggybacked answer with `opts`.
    fn reply(&mut self, r: &Request, code: u8, opts: &[(u16, u32)], payload: &[u8]) {
        self.send(&r.ack(code, opts, payload));
    }

    /// A notification of its own (CON or NON) on `token`.
    fn notify(&mut self, t: MsgType, token: &[u8], seq: u32, payload: &[u8]) {
        let mid = self.next_mid();
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, t, codes::CONTENT, mid, token);
        w.option_uint(opt::OBSERVE, seq)
            .option_uint(opt::CONTENT_FORMAT, 0);
        w.payload(payload);
        self.send(&buf);
    }
}

/// A gateway with a DTLS listener whose `psk_file` holds `psk` (and `extra`
/// TOML).
struct PskGateway {
    gw: GatewayProc,
    file: std::path::PathBuf,
    dtls: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_psk(psk: &str, extra: &str) -> PskGateway {
    start_psk_listener(psk, extra, "")
}

/// Like [`start_psk`], with `listener` TOML in the DTLS listener's table.
fn start_psk_listener(psk: &str, extra: &str, listener: &str) -> PskGateway {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("psk.txt");
    std::fs::write(&file, psk).unwrap();
    let toml = format!(
        "{extra}\n[listeners.dtls.default]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n{listener}\n",
        file.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &toml);
    let dtls = gw.dtls_addr();
    PskGateway {
        gw,
        file,
        dtls,
        _dir: dir,
    }
}

/// The application side: commands out, responses and notifications in.
struct App {
    mq: MqttClient,
    req: u32,
}

impl App {
    fn new(gw: &GatewayProc, filter: &str) -> Self {
        let mq = MqttClient::subscriber(gw.mqtt, "dtls-app", filter, 0);
        App { mq, req: 0 }
    }

    fn send(&mut self, ep: &str, msg_type: &str, data: &str) -> u32 {
        self.req += 1;
        let json = format!(
            r#"{{"reqID":{},"msgType":"{msg_type}","data":{data}}}"#,
            self.req
        );
        self.mq
            .publish(&format!("lwm2m/{ep}/dn/cmd"), json.as_bytes(), 0)
            .unwrap();
        self.req
    }

    /// The next message (topic, JSON).
    fn next(&mut self) -> (String, simd_json::OwnedValue) {
        self.mq
            .next_json(WAIT, |_, _| true)
            .expect("an MQTT message from the gateway")
    }

    /// The next message that is not a register/update message.
    fn response(&mut self) -> (String, simd_json::OwnedValue) {
        self.mq
            .next_json(WAIT, |_, v| {
                !matches!(v["msgType"].as_str(), Some("register" | "update"))
            })
            .expect("an MQTT message from the gateway")
    }

    /// Nothing arrives for `d`.
    fn quiet(&mut self, d: Duration) -> bool {
        self.mq.recv_publish(d).is_none()
    }
}

/// Polls `/metrics` until `cond` holds (30 s at most); returns the last reading.
fn wait_metrics(gw: &GatewayProc, what: &str, cond: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = gw.metrics();
        if cond(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 997) as u8).collect()
}

/// Every command type, observe and notifications, a Block2 read and a Block1
/// write, through the running gateway to a device that speaks only DTLS.
#[test]
fn everything_over_dtls() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk(&format!("dtls-dev:{}\n", hex(KEY)), "");
    let mut app = App::new(&gw, "lwm2m/dtls-dev/up/#");
    let mut dev = DtlsDevice::connect(dtls, "dtls-dev", KEY);
    let location = dev.register(
        &["ep=dtls-dev", "lt=300", "lwm2m=1.0", "b=U"],
        b"</1/0>,</3/0>,</5/0>,</31024/11>",
    );
    let (t, v) = app.next();
    assert_eq!(
        (t.as_str(), v["msgType"].as_str()),
        ("lwm2m/dtls-dev/up/resp", Some("register"))
    );

    // read
    let id = app.send("dtls-dev", "read", r#"{"path":"/3/0/1"}"#);
    let r = dev.request();
    assert_eq!(
        (r.mtype, r.code, r.path.as_str()),
        (MsgType::Con, codes::GET, "/3/0/1")
    );
    dev.reply(
        &r,
        codes::CONTENT,
        &[(opt::CONTENT_FORMAT, 0)],
        b"Lightweight M2M Client",
    );
    let (t, v) = app.response();
    assert_eq!(t, "lwm2m/dtls-dev/up/resp");
    assert_eq!(v["reqID"], id);
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["code"], "2.05");
    assert_eq!(v["data"]["content"][0]["value"], "Lightweight M2M Client");

    // discover
    app.send("dtls-dev", "discover", r#"{"path":"/3/0"}"#);
    let r = dev.request();
    assert_eq!(r.accept, Some(40));
    dev.reply(
        &r,
        codes::CONTENT,
        &[(opt::CONTENT_FORMAT, 40)],
        b"</3/0>;pmin=10,</3/0/1>",
    );
    let (_, v) = app.response();
    assert_eq!(v["msgType"], "discover");
    assert_eq!(
        v["data"]["content"],
        simd_json::json!(["</3/0>;pmin=10", "</3/0/1>"])
    );

    // write (TLV)
    app.send(
        "dtls-dev",
        "write",
        r#"{"path":"/3/0/13","type":"Time","value":1700000000}"#,
    );
    let r = dev.request();
    assert_eq!((r.code, r.format), (codes::PUT, Some(11542)));
    assert_eq!(r.payload, [0xc4, 13, 0x65, 0x53, 0xf1, 0x00]);
    dev.reply(&r, codes::CHANGED, &[], b"");
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("write"), Some("2.04"))
    );

    // write-attr
    app.send(
        "dtls-dev",
        "write-attr",
        r#"{"path":"/3/0/9","pmin":"10","pmax":60,"gt":null,"lt":null,"st":null}"#,
    );
    let r = dev.request();
    assert_eq!(r.query, ["pmin=10", "pmax=60"]);
    dev.reply(&r, codes::CHANGED, &[], b"");
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("write-attr"), Some("2.04"))
    );

    // execute
    app.send("dtls-dev", "execute", r#"{"path":"/3/0/4","args":"0"}"#);
    let r = dev.request();
    assert_eq!(
        (r.code, r.path.as_str(), r.payload.as_slice()),
        (codes::POST, "/3/0/4", &b"0"[..])
    );
    dev.reply(&r, codes::CHANGED, &[], b"");
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("execute"), Some("2.04"))
    );

    // create and delete
    app.send(
        "dtls-dev",
        "create",
        r#"{"basePath":"/31024","content":[{"path":"12/1","type":"String","value":"x"}]}"#,
    );
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::POST, "/31024"));
    dev.reply(&r, codes::CREATED, &[], b"");
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("create"), Some("2.01"))
    );
    app.send("dtls-dev", "delete", r#"{"path":"/31024/12"}"#);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::DELETE, "/31024/12"));
    dev.reply(&r, codes::DELETED, &[], b"");
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("delete"), Some("2.02"))
    );

    // observe, notifications (CON, acknowledged over DTLS, and NON), cancel
    let obs = app.send("dtls-dev", "observe", r#"{"path":"/3/0/13"}"#);
    let r = dev.request();
    assert_eq!(r.observe, Some(0));
    dev.reply(
        &r,
        codes::CONTENT,
        &[(opt::OBSERVE, 1), (opt::CONTENT_FORMAT, 0)],
        b"1700000000",
    );
    let (_, v) = app.response();
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("observe"), Some("2.05"))
    );
    dev.notify(MsgType::Con, &r.token, 2, b"1700000001");
    let ack = Message::parse(&dev.recv()).unwrap().mtype;
    assert_eq!(ack, MsgType::Ack, "a CON notification is acknowledged");
    dev.notify(MsgType::Non, &r.token, 3, b"1700000002");
    for seq in [2, 3] {
        let (t, v) = app.response();
        assert_eq!(t, "lwm2m/dtls-dev/up/notify");
        assert_eq!(
            (v["msgType"].as_str(), v["seqNum"].as_u64()),
            (Some("notify"), Some(seq))
        );
        assert_eq!(v["reqID"], obs);
        assert_eq!(v["data"]["content"][0]["value"], 1_699_999_999 + seq as i64);
    }
    app.send("dtls-dev", "cancel-observe", r#"{"path":"/3/0/13"}"#);
    let c = dev.request();
    assert_eq!((c.observe, c.token.clone()), (Some(1), r.token.clone()));
    dev.reply(
        &c,
        codes::CONTENT,
        &[(opt::CONTENT_FORMAT, 0)],
        b"1700000003",
    );
    let (_, v) = app.response();
    assert_eq!(v["msgType"], "cancel-observe");

    // Block2: a 4 KiB read, served in 1024-byte blocks.
    let data = pattern(4096);
    let id = app.send("dtls-dev", "read", r#"{"path":"/5/0/0"}"#);
    let mut served = 0;
    let mut gets = 0;
    loop {
        let r = dev.request();
        assert_eq!((r.code, r.path.as_str()), (codes::GET, "/5/0/0"));
        let (num, szx) = r.block2.map_or((0, 6), |b| (b.num, b.szx));
        let size = 16usize << szx;
        let start = num as usize * size;
        assert_eq!(start, served);
        let end = (start + size).min(data.len());
        let b = BlockOpt {
            num,
            more: end < data.len(),
            szx,
        };
        dev.reply(
            &r,
            codes::CONTENT,
            &[(opt::CONTENT_FORMAT, 42), (opt::BLOCK2, b.encode())],
            &data[start..end],
        );
        served = end;
        gets += 1;
        if !b.more {
            break;
        }
    }
    assert_eq!(gets, 4);
    let (_, v) = app.response();
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(id as u64), Some("2.05"))
    );
    let got = base64::engine::general_purpose::STANDARD
        .decode(v["data"]["content"][0]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, data);

    // Block1: a 3,000-byte write, sent in 1024-byte blocks.
    let image = pattern(3000);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let id = app.send(
        "dtls-dev",
        "write",
        &format!(r#"{{"path":"/5/0/0","type":"Opaque","value":"{b64}"}}"#),
    );
    let mut body = Vec::new();
    loop {
        let r = dev.request();
        assert_eq!((r.code, r.path.as_str()), (codes::PUT, "/5/0/0"));
        let b = r.block1.expect("Block1");
        assert_eq!((b.num as usize * b.size(), b.size()), (body.len(), 1024));
        body.extend_from_slice(&r.payload);
        let code = if b.more {
            codes::CONTINUE
        } else {
            codes::CHANGED
        };
        dev.reply(&r, code, &[(opt::BLOCK1, b.encode())], b"");
        if !b.more {
            break;
        }
    }
    assert_eq!(&body[body.len() - image.len()..], &image[..]);
    let (_, v) = app.response();
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(id as u64), Some("2.04"))
    );

    // The Update still works, and plain CoAP may not touch the registration.
    assert_eq!(dev.update(&location), codes::CHANGED);
    let plain = socket([127, 0, 0, 1], WAIT);
    let delete = Req::con(codes::DELETE, 9, &[9]).path(&["rd", &location]);
    let reply = exchange(&plain, gw.udp, &delete.bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::FORBIDDEN);
    // Everything the device received came encrypted.
    assert!(
        dev.raw.iter().all(|d| (20..=25).contains(&d[0])),
        "a plain datagram reached the device"
    );
}

/// A queue-mode device over DTLS gets the command that waited for it after its
/// Update.
#[test]
fn queue_mode_over_dtls() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk(
        &format!("sleepy:{}\n", hex(KEY)),
        "qmode_time_window = \"1s\"",
    );
    let mut app = App::new(&gw, "lwm2m/sleepy/up/#");
    let mut dev = DtlsDevice::connect(dtls, "sleepy", KEY);
    let location = dev.register(&["ep=sleepy", "lt=300", "lwm2m=1.0", "b=UQ"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    // The clients API (and the console) show it came over DTLS, in queue mode.
    let admin = Some(("admin", common::gateway::API_SECRET));
    let (_, body) =
        common::http::request(gw.api, "GET", &format!("{GW}/clients/sleepy"), admin, b"");
    let c = common::json(&body);
    assert_eq!(
        (c["dtls"].as_bool(), c["queue_mode"].as_bool()),
        (Some(true), Some(true)),
        "{body}"
    );
    // Asleep once the window has passed: the command waits.
    std::thread::sleep(Duration::from_millis(1500));
    let id = app.send("sleepy", "read", r#"{"path":"/3/0/0"}"#);
    assert!(
        dev.try_recv(Duration::from_millis(1500)).is_none(),
        "sent to a sleeping device"
    );
    assert!(app.quiet(Duration::from_millis(100)));
    // It wakes up: 2.04, then the queued read.
    assert_eq!(dev.update(&location), codes::CHANGED);
    let (_, v) = app.next();
    assert_eq!(v["msgType"], "update");
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::GET, "/3/0/0"));
    dev.reply(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"ACME");
    let (t, v) = app.response();
    assert_eq!(t, "lwm2m/sleepy/up/resp");
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(id as u64), Some("2.05"))
    );
    assert_eq!(v["data"]["content"][0]["value"], "ACME");
}

/// NAT rebinding over DTLS: the device handshakes again from a new source port
/// (landing on any of four shards) and its Update finds the registration.
#[test]
fn nat_rebinding_over_dtls_keeps_the_registration() {
    let PskGateway { gw, dtls, .. } =
        start_psk(&format!("roamer:{}\n", hex(KEY)), "[engine]\nshards = 4\n");
    let mut app = App::new(&gw, "lwm2m/roamer/up/#");
    let mut dev = DtlsDevice::connect(dtls, "roamer", KEY);
    let location = dev.register(&["ep=roamer", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    for round in 0..8 {
        // A new NAT binding: new socket, new port, new handshake.
        let mut moved = DtlsDevice::connect(dtls, "roamer", KEY);
        assert_eq!(moved.update(&location), codes::CHANGED, "round {round}");
        let (t, v) = app.next();
        assert_eq!(
            (t.as_str(), v["msgType"].as_str()),
            ("lwm2m/roamer/up/update", Some("update"))
        );
        // Commands follow it to its new session.
        let id = app.send("roamer", "read", r#"{"path":"/3/0/0"}"#);
        let r = moved.request();
        moved.reply(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"ACME");
        let (_, v) = app.response();
        assert_eq!(
            (v["reqID"].as_u64(), v["data"]["code"].as_str()),
            (Some(id as u64), Some("2.05"))
        );
        dev = moved;
    }
    drop(dev);
    let m = gw.metrics();
    eprintln!(
        "takeovers between shards: {}",
        m.sum("lwm2m_takeovers_in_total", &[])
    );
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 1.0);
    assert_eq!(m.sum("lwm2m_rebinds_total", &[]), 8.0);
}

/// DTLS Connection ID (RFC 9146): the device's NAT binding changes (a new source
/// port, whose datagrams may land on any of four shards' sockets), its records
/// still name its session, so its Update is answered without a new handshake and
/// commands reach it at the new port.
#[test]
fn with_a_connection_id_a_new_port_needs_no_handshake() {
    let PskGateway { gw, dtls, .. } =
        start_psk(&format!("cid-dev:{}\n", hex(KEY)), "[engine]\nshards = 4\n");
    let mut app = App::new(&gw, "lwm2m/cid-dev/up/#");
    let mut dev = DtlsDevice::connect_with_cid(dtls, "cid-dev", KEY);
    assert_eq!(dev.dtls.peer_connection_id().map(<[u8]>::len), Some(8));
    let location = dev.register(&["ep=cid-dev", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    for round in 0..6 {
        // The NAT gives the device a new port; its DTLS state stays as it was.
        let before = dev.sock.local_addr().unwrap();
        dev.sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        dev.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        assert_ne!(dev.sock.local_addr().unwrap(), before);
        if round % 2 == 0 {
            assert_eq!(dev.update(&location), codes::CHANGED, "round {round}");
            let (t, _) = app.next();
            assert_eq!(t, "lwm2m/cid-dev/up/update");
        } else {
            // No Update: a CoAP ping from the new port moves the session, and the
            // registration with it.
            let mid = dev.next_mid();
            dev.send(&Req::con(codes::EMPTY, mid, &[]).bytes());
            let reply = dev.recv();
            let rst = Message::parse(&reply).unwrap();
            assert_eq!((rst.mtype, rst.mid), (MsgType::Rst, mid), "round {round}");
        }
        let id = app.send("cid-dev", "read", r#"{"path":"/3/0/0"}"#);
        let r = dev.request();
        dev.reply(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"ACME");
        let (_, v) = app.response();
        assert_eq!(
            (v["reqID"].as_u64(), v["data"]["code"].as_str()),
            (Some(id as u64), Some("2.05"))
        );
    }
    let m = gw.metrics();
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 1.0);
    let cid = |e: &str| m.sum("lwm2m_dtls_connection_id_total", &[("event", e)]);
    assert_eq!(cid("negotiated"), 1.0);
    assert_eq!(cid("moved"), 6.0);
    assert_eq!(m.sum("lwm2m_rebinds_total", &[]), 6.0);
    eprintln!("records handed between shards: {}", cid("forwarded"));
    assert_eq!(cid("forward_dropped"), 0.0);
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 1.0);

    // A record naming a CID nobody holds is dropped and counted.
    let mut forged = vec![25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 99];
    forged.extend([0xee; 8]);
    forged.extend([0, 4, 1, 2, 3, 4]);
    dev.sock.send_to(&forged, dtls).unwrap();
    wait_metrics(&gw, "an unknown CID counted", |m| {
        m.sum("lwm2m_dtls_connection_id_total", &[("event", "unknown")]) == 1.0
    });
}

/// The device's session ends (close_notify): a command waits (nothing reaches
/// the device, encrypted or not) until a new session sends the Update.
#[test]
fn a_command_for_a_lost_session_waits_and_never_goes_out_in_plain_text() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk(&format!("quiet:{}\n", hex(KEY)), "");
    let mut app = App::new(&gw, "lwm2m/quiet/up/#");
    let mut dev = DtlsDevice::connect(dtls, "quiet", KEY);
    let location = dev.register(&["ep=quiet", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    dev.close();
    wait_metrics(&gw, "the lost session", |m| {
        m.sum("lwm2m_dtls_registrations_session_lost_total", &[]) >= 1.0
            && m.sum(
                "lwm2m_dtls_sessions_closed_total",
                &[("reason", "peer_closed")],
            ) >= 1.0
    });
    let id = app.send("quiet", "read", r#"{"path":"/3/0/0"}"#);
    let sock = dev.into_socket();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 2048];
    if let Ok((n, _)) = sock.recv_from(&mut b) {
        panic!(
            "the gateway sent {n} bytes to a device without a session: {:?}",
            &b[..n.min(32)]
        );
    }
    assert!(app.quiet(Duration::from_millis(100)));
    // A new handshake from the same port; the Update brings the command.
    let mut dev = DtlsDevice::connect_on(sock, dtls, "quiet", KEY);
    assert_eq!(dev.update(&location), codes::CHANGED);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::GET, "/3/0/0"));
    dev.reply(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"ACME");
    let (_, v) = app.response();
    assert_eq!(
        (v["reqID"].as_u64(), v["data"]["code"].as_str()),
        (Some(id as u64), Some("2.05"))
    );
    assert!(dev.raw.iter().all(|d| (20..=25).contains(&d[0])));
    // A device that reboots and handshakes again over a live session replaces it.
    let sock = dev.into_socket();
    let mut dev = DtlsDevice::connect_on(sock, dtls, "quiet", KEY);
    assert_eq!(dev.update(&location), codes::CHANGED);
    let m = wait_metrics(&gw, "the replaced session", |m| {
        m.sum(
            "lwm2m_dtls_sessions_closed_total",
            &[("reason", "replaced")],
        ) >= 1.0
    });
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 3.0);
    assert_eq!(m.sum("lwm2m_dtls_sessions", &[]), 1.0);
    // Nothing was ever sent for a peer without a session.
    assert_eq!(m.sum("lwm2m_dtls_no_session_total", &[]), 0.0);
}

/// The listener's `idle_timeout`: a silent session is closed by the gateway (counted as an
/// idle close), the registration outlives it, and the device's next handshake and Update
/// work.
#[test]
fn an_idle_session_is_closed_and_the_device_handshakes_again() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk_listener(
        &format!("idler:{}\n", hex(KEY)),
        "",
        "idle_timeout = \"2s\"",
    );
    let mut app = App::new(&gw, "lwm2m/idler/up/#");
    let mut dev = DtlsDevice::connect(dtls, "idler", KEY);
    let location = dev.register(&["ep=idler", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    // Silent: the gateway closes the session.
    let m = wait_metrics(&gw, "the idle session closed", |m| {
        m.sum("lwm2m_dtls_sessions_closed_total", &[("reason", "idle")]) >= 1.0
            && m.sum("lwm2m_dtls_sessions", &[]) == 0.0
    });
    assert_eq!(
        m.sum("lwm2m_dtls_sessions_closed_total", &[("reason", "idle")]),
        1.0
    );
    assert_eq!(
        m.sum("lwm2m_dtls_registrations_session_lost_total", &[]),
        1.0
    );
    assert_eq!(m.sum("lwm2m_endpoints", &[]), 1.0, "the registration stays");
    // The device speaks again: a new handshake from the same port, and its Update.
    let mut dev = DtlsDevice::connect_on(dev.into_socket(), dtls, "idler", KEY);
    assert_eq!(dev.update(&location), codes::CHANGED);
    let (t, v) = app.next();
    assert_eq!(
        (t.as_str(), v["msgType"].as_str()),
        ("lwm2m/idler/up/update", Some("update"))
    );
    let m = gw.metrics();
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 2.0);
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 1.0);
}

/// The listener's `max_sessions` (one shard, one session): a second device's handshake is
/// refused (counted) while the first holds the only place, and gets through once the
/// first session ends.
#[test]
fn a_full_session_table_refuses_handshakes_until_a_session_ends() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk_listener(
        &format!("first:{k}\nsecond:{k}\n", k = hex(KEY)),
        "[engine]\nshards = 1",
        "max_sessions = 1",
    );
    let mut app = App::new(&gw, "lwm2m/+/up/#");
    let mut first = DtlsDevice::connect(dtls, "first", KEY);
    first.register(&["ep=first", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    // The second device's ClientHellos are refused while the table is full.
    let mut second =
        DtlsDevice::start_on(UdpSocket::bind("127.0.0.1:0").unwrap(), dtls, "second", KEY);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        second.pump();
        let m = gw.metrics();
        if m.sum("lwm2m_dtls_session_table_full_total", &[]) >= 1.0 {
            assert_eq!(m.sum("lwm2m_dtls_sessions", &[]), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "no refusal counted");
    }
    assert!(!second.connected, "a second session past max_sessions = 1");
    // The first session ends: the second device's new handshake and Register get through.
    first.close();
    wait_metrics(&gw, "the first session closed", |m| {
        m.sum("lwm2m_dtls_sessions", &[]) == 0.0
    });
    let mut second = DtlsDevice::connect_on(second.into_socket(), dtls, "second", KEY);
    second.register(&["ep=second", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    let (t, v) = app.next();
    assert_eq!(
        (t.as_str(), v["msgType"].as_str()),
        ("lwm2m/second/up/resp", Some("register"))
    );
    let m = gw.metrics();
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 2.0);
    assert_eq!(m.sum("lwm2m_dtls_sessions", &[]), 1.0);
}

/// Plain CoAP cannot take a name registered over DTLS.
#[test]
fn plain_coap_cannot_take_over_a_dtls_name() {
    let PskGateway { gw, dtls, .. } =
        start_psk(&format!("owner:{}\n", hex(KEY)), "[engine]\nshards = 4\n");
    let mut app = App::new(&gw, "lwm2m/owner/up/#");
    let mut dev = DtlsDevice::connect(dtls, "owner", KEY);
    let location = dev.register(&["ep=owner", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    assert_eq!(app.next().1["msgType"], "register");
    // From several source ports (several shards): always 4.03, nothing on MQTT.
    for i in 0..6u16 {
        let plain = socket([127, 0, 0, 1], WAIT);
        let register = Req::con(codes::POST, 50 + i, &[7])
            .path(&["rd"])
            .query(&["ep=owner", "lt=300"])
            .body(b"</3/0>");
        let reply = exchange(&plain, gw.udp, &register.bytes());
        assert_eq!(Message::parse(&reply).unwrap().code, codes::FORBIDDEN);
    }
    assert!(app.quiet(Duration::from_millis(500)));
    let m = gw.metrics();
    assert!(m.sum("lwm2m_requests_refused_total", &[("reason", "forbidden")]) >= 6.0);
    assert_eq!(m.sum("lwm2m_registrations_replaced_total", &[]), 0.0);
    // The DTLS registration is untouched.
    assert_eq!(dev.update(&location), codes::CHANGED);
    assert_eq!(app.next().1["msgType"], "update");
}

/// A device whose ClientHellos carry the record version 0xFE00 (Anjay's demo on
/// Debian's mbedTLS 2.28 does) handshakes, registers and answers a read; a
/// ClientHello of another major version is junk.
#[test]
fn a_client_hello_of_any_254_x_record_version_registers() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk(
        &format!(
            "mbed-dev:{}
",
            hex(KEY)
        ),
        "",
    );
    let mut app = App::new(&gw, "lwm2m/mbed-dev/up/#");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut dev = DtlsDevice::start_on(sock, dtls, "mbed-dev", KEY);
    dev.hello_minor = Some(0x00);
    let mut dev = dev.finish_handshake();
    dev.register(&["ep=mbed-dev", "lt=300", "lwm2m=1.1", "b=U"], b"</3/0>");
    let (t, v) = app.next();
    assert_eq!(
        (t.as_str(), v["msgType"].as_str()),
        ("lwm2m/mbed-dev/up/resp", Some("register"))
    );
    let id = app.send("mbed-dev", "read", r#"{"path":"/3/0/0"}"#);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::GET, "/3/0/0"));
    dev.reply(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"mbed");
    let (_, v) = app.response();
    assert_eq!(v["reqID"], id);
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["content"][0]["value"], "mbed");
    // {254, 0x01} too; a ClientHello with TLS's major version is dropped as junk.
    let mut other = DtlsDevice::start_on(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        dtls,
        "mbed-dev",
        KEY,
    );
    other.hello_minor = Some(0x01);
    let _other = other.finish_handshake();
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut tls = DtlsDevice::start_on(UdpSocket::bind("127.0.0.1:0").unwrap(), dtls, "x", KEY);
    let mut buf = vec![0u8; 4096];
    let mut hello = loop {
        match tls.dtls.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => break p.to_vec(),
            dimpl::Output::Timeout(_) => panic!("no ClientHello"),
            _ => {}
        }
    };
    hello[1..3].copy_from_slice(&[0x03, 0x03]);
    raw.send_to(&hello, dtls).unwrap();
    let m = wait_metrics(&gw, "two handshakes and the junk", |m| {
        m.sum("lwm2m_dtls_handshakes_completed_total", &[]) >= 2.0
            && m.sum("lwm2m_dtls_datagrams_dropped_total", &[("reason", "junk")]) >= 1.0
    });
    // Each handshake's two ClientHellos (without and with the cookie), and any
    // retransmission of them.
    assert!(m.sum("lwm2m_dtls_hello_versions_normalised_total", &[]) >= 4.0);
    assert_eq!(m.sum("lwm2m_dtls_handshakes_started_total", &[]), 2.0);
}

/// Datagrams up to `engine.max_datagram` pass over DTLS (a long Register payload
/// without block-wise); longer ones, junk and unanswered ClientHellos are counted.
#[test]
fn dtls_datagram_sizes_and_hostile_input_are_counted() {
    let PskGateway { gw, dtls, _dir, .. } = start_psk(&format!("big:{}\n", hex(KEY)), "");
    let mut app = App::new(&gw, "lwm2m/big/up/#");
    let mut dev = DtlsDevice::connect(dtls, "big", KEY);
    // A 3,000-byte object list in one datagram (beyond the old 2048-byte slots).
    let links: Vec<String> = (0..300).map(|i| format!("</3{:04}/0>", i)).collect();
    let payload = links.join(",");
    assert!(payload.len() > 2600);
    dev.register(
        &["ep=big", "lt=300", "lwm2m=1.1", "b=U"],
        payload.as_bytes(),
    );
    let (_, v) = app.next();
    assert_eq!(v["msgType"], "register");
    // Longer than a receive slot: dropped and counted.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut huge = vec![0u8; 9000];
    huge[0] = 23;
    huge[1] = 0xfe;
    huge[2] = 0xfd;
    raw.send_to(&huge, dtls).unwrap();
    raw.send_to(b"not DTLS at all", dtls).unwrap();
    // A ClientHello from an address that never answers: a HelloVerifyRequest
    // and nothing kept (no half-open entry, nothing retransmitted).
    let mut spoof = DtlsDevice::start_on(UdpSocket::bind("127.0.0.1:0").unwrap(), dtls, "x", KEY);
    let mut buf = vec![0u8; 4096];
    let hello = loop {
        match spoof.dtls.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => break p.to_vec(),
            dimpl::Output::Timeout(_) => panic!("no ClientHello"),
            _ => {}
        }
    };
    raw.send_to(&hello, dtls).unwrap();
    // And one cut inside its random: malformed, dropped and counted.
    raw.send_to(&hello[..40], dtls).unwrap();
    let m = wait_metrics(
        &gw,
        "oversized, junk, the hello verify request and the malformed hello",
        |m| {
            m.sum(
                "lwm2m_dtls_datagrams_dropped_total",
                &[("reason", "oversized")],
            ) >= 1.0
                && m.sum("lwm2m_dtls_datagrams_dropped_total", &[("reason", "junk")]) >= 1.0
                && m.sum(
                    "lwm2m_dtls_datagrams_dropped_total",
                    &[("reason", "malformed_hello")],
                ) >= 1.0
                && m.sum(
                    "lwm2m_dtls_hello_verify_requests_total",
                    &[("reason", "no_cookie")],
                ) >= 2.0
        },
    );
    let mut answer = [0u8; 512];
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (n, _) = raw.recv_from(&mut answer).unwrap();
    assert_eq!((answer[0], answer[13]), (22, 3), "a HelloVerifyRequest");
    assert!(n < hello.len());
    assert_eq!(m.sum("lwm2m_dtls_half_open", &[]), 0.0);
    assert_eq!(m.sum("lwm2m_dtls_handshakes_started_total", &[]), 1.0);
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 1.0);
    assert_eq!(m.sum("lwm2m_dtls_sessions", &[]), 1.0);
    for family in [
        "lwm2m_dtls_sessions_closed_total",
        "lwm2m_dtls_session_table_full_total",
        "lwm2m_dtls_cert_rejected_total",
        "lwm2m_dtls_hello_verify_requests_total",
        "lwm2m_dtls_half_open_dropped_total",
    ] {
        assert!(m.has(family), "{family} exported");
    }
}

/// Keys added to or removed from `psk_file` apply to new handshakes without a
/// restart.
#[test]
fn psk_file_changes_apply_without_a_restart() {
    let PskGateway {
        gw,
        file,
        dtls,
        _dir,
    } = start_psk(&format!("dev-a:{}\n", hex(KEY)), "");
    let mut mq = MqttClient::subscriber(gw.mqtt, "psk-reload", "lwm2m/+/up/resp", 0);
    assert!(!DtlsDevice::try_handshake(
        dtls,
        "dev-b",
        KEY,
        Duration::from_secs(2)
    ));
    // Add dev-b while the gateway runs; it may register once the file is reloaded.
    std::fs::write(&file, format!("dev-a:{k}\ndev-b:{k}\n", k = hex(KEY))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "dev-b never accepted:\n{}",
            gw.log()
        );
        if DtlsDevice::try_handshake(dtls, "dev-b", KEY, Duration::from_secs(2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = register("coap-client-openssl", "dev-b", KEY, dtls, "dev-b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, _) = mq.recv_publish(WAIT).expect("dev-b's register on MQTT");
    assert_eq!(t, "lwm2m/dev-b/up/resp");
    // Remove dev-a: once reloaded, its new handshakes fail.
    let established = DtlsDevice::connect(dtls, "dev-a", KEY);
    std::fs::write(&file, format!("dev-b:{}\n", hex(KEY))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while DtlsDevice::try_handshake(dtls, "dev-a", KEY, Duration::from_secs(2)) {
        assert!(
            Instant::now() < deadline,
            "dev-a still accepted:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!DtlsDevice::try_handshake(
        dtls,
        "dev-a",
        KEY,
        Duration::from_secs(3)
    ));
    let out = register("coap-client-openssl", "dev-a", KEY, dtls, "dev-a");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("2.01"));
    assert!(mq.recv_publish(Duration::from_millis(500)).is_none());
    let m = gw.metrics();
    assert!(m.sum("lwm2m_dtls_handshakes_failed_total", &[]) >= 3.0);
    // A session established before the removal keeps running, but the removed
    // identity may no longer act for any name (revocation reaches a registration
    // at its next request): 4.03 over that session.
    let mut established = established;
    let mid = established.next_mid();
    let mut reg = Vec::new();
    let mut w = MessageWriter::new(&mut reg, MsgType::Con, codes::POST, mid, &[5]);
    w.option(opt::URI_PATH, b"rd")
        .option(opt::URI_QUERY, b"ep=dev-a");
    w.finish();
    established.send(&reg);
    let reply = established.recv();
    assert_eq!(Message::parse(&reply).unwrap().code, codes::FORBIDDEN);
}

// ---- certificate mode ----

/// coap-client-openssl registering `ep` with the certificate `which`.
fn cert_register(dir: &Path, which: &str, gw: SocketAddr, ep: &str) -> Output {
    let url = format!(
        "coaps://127.0.0.1:{}/rd?ep={ep}&lt=60&lwm2m=1.1&b=U",
        gw.port()
    );
    Command::new("coap-client-openssl")
        .args(["-m", "post", "-B", "5", "-t", "40", "-e", "</3/0>"])
        .arg("-c")
        .arg(dir.join(format!("{which}.pem")))
        .arg("-j")
        .arg(dir.join(format!("{which}.key")))
        .arg(url)
        .output()
        .expect("coap-client-openssl is required (apt-get install -y libcoap3-bin)")
}

#[test]
fn certificate_mode_requires_the_cn_to_be_the_endpoint_name() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    make_pki(d, "cert-dev");
    let extra = format!(
        "[listeners.dtls.default]\nbind = \"127.0.0.1:0\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\ncafile = \"{}\"\n",
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("ca.pem").display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let dtls = gw.dtls_addr();
    let mut mq = MqttClient::subscriber(gw.mqtt, "cert-app", "lwm2m/+/up/resp", 0);

    // CN == endpoint name: 2.01 and the register message.
    let out = cert_register(d, "client", dtls, "cert-dev");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, p) = mq
        .recv_publish(WAIT)
        .expect("register over DTLS with a certificate");
    assert_eq!(t, "lwm2m/cert-dev/up/resp");
    assert!(String::from_utf8_lossy(&p).contains("\"msgType\":\"register\""));

    // CN != endpoint name: 4.03, nothing on MQTT.
    let out = cert_register(d, "client", dtls, "someone-else");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("4.03") || text.contains("not the endpoint name"),
        "{text}"
    );
    assert!(mq.recv_publish(Duration::from_millis(500)).is_none());

    // A certificate with the right CN from a CA the gateway does not trust: no
    // session at all.
    let out = cert_register(d, "stranger", dtls, "cert-dev");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("2.01"), "{text}");
    assert!(mq.recv_publish(Duration::from_millis(500)).is_none());
    let m = wait_metrics(&gw, "the rejected certificate", |m| {
        m.sum("lwm2m_dtls_cert_rejected_total", &[]) >= 1.0
    });
    assert_eq!(m.sum("lwm2m_dtls_handshakes_completed_total", &[]), 2.0);
    assert!(m.sum("lwm2m_requests_refused_total", &[("reason", "forbidden")]) >= 1.0);
    assert_eq!(m.sum("lwm2m_registrations_total", &[]), 1.0);
}
