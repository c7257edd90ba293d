//! The file store end to end, through the real binary: registrations and observations
//! outlive a clean stop and a SIGKILL (within the written-down bound), a lifetime that
//! ran out while the gateway was down ends `expired`, and a damaged or foreign store
//! refuses the start.

mod common;

use common::app::App;
use common::coap::{self, exchange, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc};
use common::mosquitto::Mosquitto;
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::store::{Backend, Change, FileStore, FILE_NAME};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// One shard and one broker connection: the command subscription a restored
/// registration makes goes out on the connection its notifications use, before them.
fn start_on(store: &Path, broker: Broker) -> GatewayProc {
    let extra = format!(
        "[engine]\nshards = 1\n[store]\nkind = \"file\"\npath = \"{}\"",
        store.display()
    );
    GatewayProc::start_with(broker, &extra, "connections = 1")
}

/// A device speaking CoAP from its own socket.
struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    location: String,
    mid: u16,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str, lifetime_s: u32) -> Self {
        let sock = socket([127, 0, 0, 1], WAIT);
        let register = Req::con(codes::POST, 1, &[1])
            .path(&["rd"])
            .uint(opt::CONTENT_FORMAT, 40)
            .query(&[
                &format!("ep={ep}"),
                &format!("lt={lifetime_s}"),
                "lwm2m=1.0",
                "b=U",
            ])
            .body(b"</1/0>,</3/0>");
        let reply = exchange(&sock, gw, &register.bytes());
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::CREATED);
        Device {
            location: location(&m).expect("a location"),
            sock,
            gw,
            mid: 100,
        }
    }

    /// An Update to its location; the code of the answer.
    fn update(&mut self) -> u8 {
        self.mid += 1;
        let update = Req::con(codes::POST, self.mid, &[9]).path(&["rd", &self.location]);
        let reply = exchange(&self.sock, self.gw, &update.bytes());
        Message::parse(&reply).unwrap().code
    }

    fn request(&self) -> Request {
        Request::parse(&coap::recv(&self.sock))
    }

    fn reply(&self, r: &Request, code: u8, observe: Option<u32>, payload: &[u8]) {
        let mut opts = vec![(opt::CONTENT_FORMAT, 0)];
        if let Some(o) = observe {
            opts.insert(0, (opt::OBSERVE, o));
        }
        self.sock
            .send_to(&r.ack(code, &opts, payload), self.gw)
            .unwrap();
    }

    /// A NON notification with `token`.
    fn notify(&mut self, token: &[u8], seq: u32, payload: &[u8]) {
        self.mid += 1;
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Non, codes::CONTENT, self.mid, token);
        w.option_uint(opt::OBSERVE, seq);
        w.option_uint(opt::CONTENT_FORMAT, 0);
        w.payload(payload);
        self.sock.send_to(&buf, self.gw).unwrap();
    }
}

/// Waits until the store writer wrote `n` records and holds nothing queued: from then
/// on they are on disk (every batch is committed with an fsync).
fn wait_written(gw: &GatewayProc, n: f64) {
    gw.metrics_when(|m| {
        m.sum("lwm2m_store_writes_total", &[]) >= n && m.sum("lwm2m_store_queued", &[]) == 0.0
    });
    let m = gw.metrics();
    assert!(
        m.sum("lwm2m_store_writes_total", &[]) >= n,
        "the store wrote {} records",
        m.sum("lwm2m_store_writes_total", &[])
    );
}

#[test]
fn a_restart_on_the_file_store_serves_every_device_on() {
    // One broker outlives both gateway processes, and the application with it: it sees
    // what the second gateway publishes as it starts.
    let broker = Mosquitto::start();
    let store = tempfile::tempdir().unwrap();
    let mut gw = start_on(store.path(), Broker::External(broker.addr()));
    let mut app = App::new(&gw, "store-app");
    let mut dev = Device::register(gw.udp, "kept", 300);
    // Commands are sent once the register message is seen: the device's command
    // subscription is in place from then on (not yet at its 2.01).
    app.mq
        .next_json(WAIT, |_, v| {
            v["msgType"] == "register" && v["data"]["ep"] == "kept"
        })
        .expect("kept's register message");
    // Observed: the observation and its command outlive the process.
    let obs = app.send("kept", "observe", r#"{"path":"/3/0/13"}"#);
    let r = dev.request();
    assert_eq!(r.observe, Some(0));
    dev.reply(&r, codes::CONTENT, Some(5), b"1700000000");
    let (_, v) = app.next();
    assert_eq!(
        (v["msgType"].as_str(), v["reqID"].as_u32()),
        (Some("observe"), Some(obs))
    );
    // A registration whose lifetime will run out while the gateway is down.
    let short = Device::register(gw.udp, "short", 4);
    let short_at = Instant::now();
    let status = gw.stop();
    assert!(status.success(), "{status:?}\n{}", gw.log());
    assert!(
        !gw.log().contains("could not be written"),
        "a clean stop writes everything:\n{}",
        gw.log()
    );
    drop(short);
    // Down until "short"'s lifetime has run out.
    while short_at.elapsed() < Duration::from_millis(4_500) {
        std::thread::sleep(Duration::from_millis(100));
    }

    let gw2 = start_on(store.path(), Broker::External(broker.addr()));
    let app2 = &mut app;
    let m = gw2.metrics();
    assert_eq!(m.sum("lwm2m_store_restored", &[]), 2.0);
    // The registration that expired while the gateway was down ends `expired`.
    let (t, v) = app2
        .mq
        .next_json(WAIT, |_, v| v["msgType"] == "deregister")
        .expect("a deregister message for the expired registration");
    assert_eq!(t, "lwm2m/short/up/resp");
    assert_eq!(v["data"]["ep"], "short");
    assert_eq!(v["data"]["reason"], "expired");
    // An Update to the old location: 2.04, no new registration.
    dev.gw = gw2.udp;
    assert_eq!(dev.update(), codes::CHANGED);
    // A notification with the old token: published with the observe's reqID.
    dev.notify(&r.token, 6, b"1700000001");
    let (t, v) = app2
        .mq
        .next_json(WAIT, |_, v| v["msgType"] == "notify")
        .expect("the notification of the restored observation");
    assert_eq!(t, "lwm2m/kept/up/notify");
    assert_eq!(v["reqID"], obs);
    assert_eq!(v["data"]["content"][0]["value"], 1_700_000_001i64);
    // A command reaches the device (its command subscription was made again, and is in
    // place: the notification just seen went out on its connection after its SUBACK).
    let read = app2.send("kept", "read", r#"{"path":"/3/0/0"}"#);
    let r = dev.request();
    assert_eq!((r.code, r.path.as_str()), (codes::GET, "/3/0/0"));
    dev.reply(&r, codes::CONTENT, None, b"maker");
    let (t, v) = app2
        .mq
        .next_json(WAIT, |_, v| v["msgType"] == "read")
        .expect("the read's response");
    assert_eq!(t, "lwm2m/kept/up/resp");
    assert_eq!(v["reqID"], read);
    assert_eq!(v["data"]["code"], "2.05");
    // The health check names the store.
    let (status, body) = common::http::request(gw2.api, "GET", "/health", None, b"");
    assert_eq!(status, 200);
    assert!(body.contains(r#""store":"ok""#), "{body}");
}

#[test]
fn what_was_written_survives_a_sigkill() {
    let store = tempfile::tempdir().unwrap();
    let mut gw = start_on(store.path(), Broker::Embedded);
    let mut devices: Vec<Device> = (0..20)
        .map(|i| Device::register(gw.udp, &format!("k{i}"), 300))
        .collect();
    // The bound: a change is on disk once the writer committed it, at most the flush
    // interval (100 ms) and one commit after it was made. Once the writer says so,
    // killing the process loses none of them.
    wait_written(&gw, 20.0);
    let status = gw.stop_with("KILL");
    assert!(!status.success());

    let gw2 = start_on(store.path(), Broker::Embedded);
    assert_eq!(gw2.metrics().sum("lwm2m_store_restored", &[]), 20.0);
    for d in &mut devices {
        d.gw = gw2.udp;
        assert_eq!(d.update(), codes::CHANGED, "{}", d.location);
    }
}

/// Starts the binary on the store in `dir` and expects it to refuse: exit code 3 and
/// a message naming the store and `what`.
fn refused(dir: &Path, what: &str) {
    let path = dir.display().to_string();
    let mut gw = GatewayProc::spawn_cli(&["--store-path", &path], &[]);
    let status = gw.wait_exit();
    let log = gw.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("store:") && log.contains(FILE_NAME), "{log}");
    assert!(log.contains(what), "{what:?} in:\n{log}");
    assert!(log.contains("the start is refused"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_damaged_or_foreign_store_refuses_the_start() {
    // Not a store file at all.
    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(garbage.path().join(FILE_NAME), vec![0x5a; 8192]).unwrap();
    refused(garbage.path(), "damaged");
    // A store file whose record is cut short.
    let cut = tempfile::tempdir().unwrap();
    {
        let mut s = FileStore::open(cut.path()).unwrap();
        s.write(&[("dev".into(), Change::Put(vec![1, 3, 0, 0]))])
            .unwrap();
    }
    refused(cut.path(), "record ends early");
    // A record of a format this gateway does not read.
    let foreign = tempfile::tempdir().unwrap();
    {
        let mut s = FileStore::open(foreign.path()).unwrap();
        s.write(&[("dev".into(), Change::Put(vec![9, 0, 0]))])
            .unwrap();
    }
    refused(foreign.path(), "record version 9");
    // The start left the damaged file as it was: nothing is silently emptied.
    let kept = std::fs::read(garbage.path().join(FILE_NAME)).unwrap();
    assert_eq!(kept, vec![0x5a; 8192]);
}
