//! The live event stream of the management API (`GET .../events`, Server-Sent
//! Events) through the real binary: what devices do shows up as it happens,
//! filtered by device when asked; streams need credentials and are bounded.

mod common;

use base64::Engine as _;
use common::coap::{exchange, socket, Req};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use lwm2m_gateway::coap::{codes, Message};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const EVENTS: &str = "/api/v5/gateways/lwm2m/events";

fn register(sock: &UdpSocket, gw: SocketAddr, ep: &str, mid: u16) {
    let register = Req::con(codes::POST, mid, &[9])
        .path(&["rd"])
        .query(&[&format!("ep={ep}"), "lt=300", "lwm2m=1.1"])
        .body(b"</3/0>");
    let reply = exchange(sock, gw, &register.bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
}

/// An open event stream: the status line, then its lines as they come.
struct Stream {
    status: u16,
    lines: BufReader<TcpStream>,
}

fn open(api: SocketAddr, query: &str, secret: &str) -> Stream {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{secret}"));
    write!(
        s,
        "GET {EVENTS}{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(s);
    let mut status = String::new();
    lines.read_line(&mut status).unwrap();
    let status = status.split(' ').nth(1).unwrap().parse().unwrap();
    loop {
        let mut h = String::new();
        lines.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if status == 200 && h.to_ascii_lowercase().starts_with("content-type:") {
            assert!(h.contains("text/event-stream"), "{h}");
        }
    }
    Stream { status, lines }
}

impl Stream {
    /// The next event as (event name, data), skipping comments and `retry:`.
    fn next_event(&mut self) -> (String, String) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self
                .lines
                .read_line(&mut line)
                .expect("the stream stays open");
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !data.is_empty() {
                    return (name, data);
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }
}

#[test]
fn registrations_and_their_ends_stream_live_filtered_by_device() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut all = open(gw.api, "", API_SECRET);
    assert_eq!(all.status, 200);
    let mut only_b = open(gw.api, "?clientid=dev-b", API_SECRET);
    assert_eq!(only_b.status, 200);
    let sock = socket([127, 0, 0, 1], Duration::from_secs(10));
    register(&sock, gw.udp, "dev-a", 1);
    register(&sock, gw.udp, "dev-b", 2);

    let (name, data) = all.next_event();
    assert_eq!(name, "register");
    let v = common::json(&data);
    assert_eq!(v["clientid"], "dev-a");
    assert_eq!(v["topic"], "lwm2m/dev-a/up/resp");
    assert_eq!(v["message"]["msgType"], "register");
    assert_eq!(v["message"]["data"]["ep"], "dev-a");
    let (_, data) = all.next_event();
    let v = common::json(&data);
    assert_eq!(v["clientid"], "dev-b");

    // The filtered stream never saw dev-a: its first event is dev-b's.
    let (name, data) = only_b.next_event();
    assert_eq!(name, "register");
    let v = common::json(&data);
    assert_eq!(v["clientid"], "dev-b");

    // A kick through the API ends the registration: the stream says so.
    let (st, _) = common::http::request(
        gw.api,
        "DELETE",
        "/api/v5/gateways/lwm2m/clients/dev-b",
        Some(("admin", API_SECRET)),
        b"",
    );
    assert_eq!(st, 204);
    let (name, data) = only_b.next_event();
    assert_eq!(name, "deregister", "{data}");
    let v = common::json(&data);
    assert_eq!(v["message"]["data"]["reason"], "kicked");
}

#[test]
fn streams_need_credentials_and_are_bounded() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    assert_eq!(open(gw.api, "", "wrong").status, 401);
    let open_ones: Vec<Stream> = (0..16).map(|_| open(gw.api, "", API_SECRET)).collect();
    assert!(open_ones.iter().all(|s| s.status == 200));
    assert_eq!(open(gw.api, "", API_SECRET).status, 503);
    // Closing one gives its place back (its thread notices at its next write or poll).
    drop(open_ones);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = open(gw.api, "", API_SECRET);
        if s.status == 200 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let mut body = String::new();
            let mut lines = s.lines;
            let _ = lines.read_line(&mut body);
            panic!("places never came back: {} {body}", s.status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Other requests are still answered while streams are open.
    let (st, _) = common::http::request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients",
        Some(("admin", API_SECRET)),
        b"",
    );
    assert_eq!(st, 200);
}
