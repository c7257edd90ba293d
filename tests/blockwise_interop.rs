//! Block-wise interoperability with an implementation this project did not write:
//! Debian's libcoap3-bin (`coap-client-notls`, `coap-server-notls`, libcoap 4.3).
//!
//! - Server side Block1: coap-client POSTs a Register whose object list it sends
//!   in 64-byte Block1 blocks; the gateway answers 2.31 per block and 2.01 at the
//!   end, and publishes one register message with every object.
//! - Block2 reads (and Block1 writes) with coap-server as the device: coap-server
//!   does not register itself, so the test registers from a UDP port, closes it,
//!   and starts coap-server on that same port; the gateway then talks to
//!   coap-server as to the registered device. Resources are created dynamically
//!   (`-d`): the gateway's Block1 write of /5/0/0 creates one, coap-client
//!   replaces it with 64 KiB, and the gateway's read fetches that in coap-server's
//!   Block2 blocks.
//! - Block2 of the gateway's own responses: coap-client registers from a fixed
//!   port, then sends an Update the gateway refuses with a diagnostic longer
//!   than a block (`max_block_size = 16`); libcoap decodes block 0 (Block2 0/M/16,
//!   Size2) and the later blocks it asks for with a Block2 option, and the blocks
//!   make up the whole text. libcoap 4.3.1 follows Block2 by itself only for 2.xx
//!   responses (and the gateway's only responses with a payload are errors), so
//!   each later block is one coap-client run carrying Block2 (`-O 23,...`).

mod common;

use base64::Engine as _;
use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use simd_json::prelude::*;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLIENT: &str = "/usr/bin/coap-client-notls";
const SERVER: &str = "/usr/bin/coap-server-notls";
const WAIT: Duration = Duration::from_secs(20);

fn require(bin: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: these interop tests need Debian's libcoap3-bin \
         (apt-get install libcoap3-bin)"
    );
}

fn coap_client(args: &[&str]) -> Output {
    require(CLIENT);
    Command::new(CLIENT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run coap-client-notls")
}

fn app(gw: &GatewayProc, id: &str) -> MqttClient {
    MqttClient::subscriber(gw.mqtt, id, "lwm2m/+/up/#", 0)
}

/// The next MQTT message whose msgType is `kind`.
fn next_of(mq: &mut MqttClient, kind: &str) -> simd_json::OwnedValue {
    let (_, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] == kind)
        .unwrap_or_else(|| panic!("no {kind} message on MQTT"));
    v
}

fn object_list(n: usize) -> String {
    (0..n)
        .map(|i| format!("</{}/{}>", 3300 + i % 50, i / 50))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn coap_client_registers_with_a_block1_object_list() {
    require(CLIENT);
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = app(&gw, "interop-block1");
    let list = object_list(200);
    assert!(list.len() > 1500);
    let uri = format!(
        "coap://127.0.0.1:{}/rd?ep=libcoap-blk&lt=60&lwm2m=1.1",
        gw.udp.port()
    );
    let out = coap_client(&[
        "-m", "post", "-b", "64", "-t", "40", "-U", "-v", "7", "-B", "15", "-e", &list, &uri,
    ]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "coap-client failed:\n{log}");
    // libcoap logs every PDU at this verbosity: 2.31 per block, then 2.01.
    assert!(log.contains("c:2.31"), "no 2.31 Continue seen:\n{log}");
    assert!(log.contains("c:2.01"), "no 2.01 Created seen:\n{log}");
    let v = next_of(&mut mq, "register");
    assert_eq!(v["data"]["ep"], "libcoap-blk");
    let objs = v["data"]["objectList"].as_array().unwrap();
    assert_eq!(objs.len(), 200, "{v:?}");
    assert_eq!(objs[0], "/3300/0");
    assert_eq!(objs[199], "/3349/3");
    // Exactly one register message.
    let again = mq.recv_publish(Duration::from_millis(500));
    assert!(
        again.as_ref().is_none_or(|(t, _)| !t.ends_with("up/resp")),
        "{again:?}"
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Registers endpoint `ep` from a UDP port, frees the port and starts
/// coap-server on it, so that the gateway's requests reach coap-server.
fn coap_server_as_device(gw: &GatewayProc, ep: &str) -> (Server, u16) {
    require(SERVER);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let port = sock.local_addr().unwrap().port();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, 1, &[1]);
    w.option(opt::URI_PATH, b"rd")
        .option_uint(opt::CONTENT_FORMAT, 40)
        .option(opt::URI_QUERY, format!("ep={ep}").as_bytes())
        .option(opt::URI_QUERY, b"lt=300")
        .option(opt::URI_QUERY, b"b=U");
    w.payload(b"</5/0>");
    sock.send_to(&buf, gw.udp).unwrap();
    let mut r = vec![0u8; 1500];
    let (n, _) = sock.recv_from(&mut r).expect("2.01 from the gateway");
    assert_eq!(Message::parse(&r[..n]).unwrap().code, codes::CREATED);
    drop(sock);
    let child = Command::new(SERVER)
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coap-server-notls");
    let server = Server(child);
    // Up when it answers a GET of its root resource.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = coap_client(&["-B", "1", &format!("coap://127.0.0.1:{port}/")]);
        if out.status.success() && !out.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "coap-server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, port)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + i / 509) as u8).collect()
}

#[test]
fn coap_server_device_block1_write_and_block2_read() {
    require(CLIENT);
    require(SERVER);
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = app(&gw, "interop-block2");
    let (_server, port) = coap_server_as_device(&gw, "libcoap-srv");
    let dir = tempfile::tempdir().unwrap();

    // Block1: a 20 KiB write goes to coap-server in 1024-byte blocks.
    let image = pattern(20 * 1024);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let cmd = format!(
        r#"{{"reqID":1,"msgType":"write","data":{{"path":"/5/0/0","type":"Opaque","value":"{b64}"}}}}"#
    );
    mq.publish("lwm2m/libcoap-srv/dn/cmd", cmd.as_bytes(), 0)
        .unwrap();
    let v = next_of(&mut mq, "write");
    let code = v["data"]["code"].as_str().unwrap().to_string();
    assert!(code == "2.01" || code == "2.04", "{v:?}");
    // coap-server holds the whole body (read back with coap-client's own Block2).
    let stored = dir.path().join("stored");
    let out = coap_client(&[
        "-B",
        "10",
        "-o",
        stored.to_str().unwrap(),
        &format!("coap://127.0.0.1:{port}/5/0/0"),
    ]);
    assert!(out.status.success());
    let stored = std::fs::read(stored).unwrap();
    assert!(stored.len() > image.len(), "{} bytes", stored.len());
    assert_eq!(&stored[stored.len() - image.len()..], &image[..]);

    // Block2: coap-client replaces the resource with 64 KiB of opaque data;
    // the gateway's read fetches it block by block.
    let data = pattern(64 * 1024);
    let file = dir.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let out = coap_client(&[
        "-m",
        "put",
        "-b",
        "1024",
        "-t",
        "42",
        "-B",
        "10",
        "-f",
        file.to_str().unwrap(),
        &format!("coap://127.0.0.1:{port}/5/0/0"),
    ]);
    assert!(out.status.success());
    mq.publish(
        "lwm2m/libcoap-srv/dn/cmd",
        br#"{"reqID":2,"msgType":"read","data":{"path":"/5/0/0"}}"#,
        0,
    )
    .unwrap();
    let v = next_of(&mut mq, "read");
    assert_eq!(v["reqID"], 2);
    assert_eq!(v["data"]["code"], "2.05", "{v:?}");
    let value = v["data"]["content"][0]["value"].as_str().unwrap();
    let got = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(got, data);
}

/// A free UDP port on the loopback.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// libcoap's log line of the response it received (at `-v 7`), and its text.
fn received(out: &Output) -> (String, String) {
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = log
        .lines()
        .find(|l| l.starts_with("v:1 t:ACK"))
        .unwrap_or_else(|| panic!("no response in coap-client's log:\n{log}"))
        .to_string();
    (line, log)
}

/// The payload of a logged PDU (`... :: '<payload>'`).
fn logged_payload(line: &str) -> &str {
    let start = line.find(":: '").expect("a payload") + 4;
    let end = line.rfind('\'').unwrap();
    &line[start..end]
}

#[test]
fn coap_client_receives_a_multi_block_error_reply() {
    require(CLIENT);
    let gw = GatewayProc::start(Broker::Embedded, "[blockwise]\nmax_block_size = 16\n");
    let port = free_udp_port().to_string();
    let base = format!("coap://127.0.0.1:{}", gw.udp.port());
    let run = |extra: &[&str], uri: &str| {
        let mut args = vec!["-p", &port, "-m", "post", "-v", "7", "-B", "10"];
        args.extend_from_slice(extra);
        args.push(uri);
        coap_client(&args)
    };
    // Registered from this port, the address has proven itself.
    let out = run(&[], &format!("{base}/rd?ep=libcoap-b2&lt=300&b=U"));
    let (line, log) = received(&out);
    assert!(line.contains("c:2.01"), "{log}");
    let loc = line
        .split("Location-Path:")
        .nth(2)
        .and_then(|s| s.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no location in {line}"))
        .to_string();
    let uri = format!("{base}/rd/{loc}?lt=not-a-lifetime");
    let expect = "lifetime lt=\"not-a-lifetime\" is not a non-negative integer";
    let (line, log) = received(&run(&[], &uri));
    assert!(line.contains("c:4.00"), "{log}");
    assert!(
        line.contains("Block2:0/M/16") && line.contains(&format!("Size2:{}", expect.len())),
        "libcoap decodes block 0 and its size: {line}"
    );
    let mut text = logged_payload(&line).to_string();
    for num in 1u32.. {
        let v = num << 4;
        let opt = if v < 256 {
            format!("23,0x{v:02x}")
        } else {
            format!("23,0x{v:04x}")
        };
        let (line, log) = received(&run(&["-O", &opt], &uri));
        assert!(line.contains("c:4.00"), "{log}");
        text.push_str(logged_payload(&line));
        if line.contains(&format!("Block2:{num}/_/16")) {
            break;
        }
        assert!(line.contains(&format!("Block2:{num}/M/16")), "{line}");
        assert!(num < 10, "too many blocks: {text}");
    }
    assert_eq!(text, expect);
}
