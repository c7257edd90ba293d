//! The file store at scale: N registration records written in batches as the store
//! writer writes them, read back and decoded, then a whole gateway started on the store
//! (`Gateway::start`, every shard taking its share in) until a restored device's Update
//! is answered 2.04 over UDP: "restored and serving".
//!
//! `cargo bench -p bench --bench store_restore -- [N]` (default 1,000,000). Prints one
//! line per phase; docs/deployment.md records a run with its machine.

use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::config::Config;
use lwm2m_gateway::engine::Gateway;
use lwm2m_gateway::lwm2m::endpoint::{Endpoint, EndpointCounters, LastReply, Objects};
use lwm2m_gateway::lwm2m::publish::name_hash;
use lwm2m_gateway::lwm2m::record;
use lwm2m_gateway::store::{Backend, Change, FileStore, MAX_BATCH};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A registration as a device of the storm benchmark makes it (an 8-object list).
fn endpoint(i: u64, now_ms: u64) -> Endpoint {
    let name = format!("bench-{i:08}");
    Endpoint {
        lane: name_hash(&name),
        mountpoint: format!("lwm2m/{name}/").into(),
        name: name.into(),
        location: 0x1000_0000 + i,
        peer: SocketAddr::from(([127, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5683)),
        lifetime_s: 86_400,
        expires_ms: now_ms + 86_400_000,
        params: "lwm2m=1.1\0b=U".into(),
        objects: Some(Arc::new(Objects {
            alternate_path: "/".into(),
            list: "/1/0,/3/0,/4/0,/5/0,/6/0,/7/0,/3303/0,/3303/1".into(),
            content_format: None,
            composite_format: None,
        })),
        queue_mode: false,
        secure: false,
        session_lost: false,
        last_reply: LastReply::default(),
        prev_reply: LastReply::default(),
        registered_ms: now_ms,
        last_seen_ms: now_ms,
        counters: EndpointCounters::default(),
        session: None,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    // 1. Writing, in the writer's batches, each committed with an fsync.
    let started = Instant::now();
    {
        let mut store = FileStore::open(dir.path()).expect("open");
        let mut batch = Vec::with_capacity(MAX_BATCH);
        for i in 0..n {
            let ep = endpoint(i, 0);
            let mut bytes = Vec::with_capacity(256);
            record::encode(&ep, unix_ms, &mut bytes);
            batch.push((ep.name.clone(), Change::Put(bytes)));
            if batch.len() == MAX_BATCH {
                store.write(&batch).expect("write");
                batch.clear();
            }
        }
        store.write(&batch).expect("write");
    }
    let took = started.elapsed();
    let size = std::fs::metadata(dir.path().join(lwm2m_gateway::store::FILE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "write: {n} records in {:.2} s ({:.0} records/s, batches of {MAX_BATCH}); file {} MB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        size >> 20
    );

    // 2. Reading back and decoding (what the start does before the shards run).
    let started = Instant::now();
    let mut store = FileStore::open(dir.path()).expect("open");
    let restored = lwm2m_gateway::store::load(&mut store, unix_ms, 2).expect("load");
    drop(restored);
    drop(store);
    println!(
        "read+decode: {n} records in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // 3. A whole gateway on the store, until a restored device is served.
    let (api, mqtt, mqtt5) = (free_port(), free_port(), free_port());
    let toml = format!(
        "[listeners.udp.default]\nbind = \"127.0.0.1:0\"\n\
         [mqtt]\nserver = \"embedded\"\nembedded_bind = \"127.0.0.1:{mqtt}\"\n\
         embedded_bind_v5 = \"127.0.0.1:{mqtt5}\"\nsubscribe = \"wildcard\"\n\
         [api]\nbind = \"127.0.0.1:{api}\"\n\
         [engine]\nshards = 2\n\
         [store]\nkind = \"file\"\npath = \"{}\"\n",
        dir.path().display()
    );
    let cfg = Config::from_toml_str(&toml).expect("configuration");
    let started = Instant::now();
    let gw = Gateway::start(&cfg).expect("gateway starts");
    let up = started.elapsed();
    let last = endpoint(n - 1, 0);
    let served = update_answered(gw.udp_addr(), last.location);
    let took = started.elapsed();
    println!(
        "start: Gateway::start returned after {:.2} s; restored and serving (a restored \
         device's Update answered {}) after {:.2} s",
        up.as_secs_f64(),
        if served { "2.04" } else { "NOT 2.04" },
        took.as_secs_f64()
    );
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    println!("resident memory with {n} registrations: {rss}");
    gw.stop();
    assert!(served, "the restored device was not served");
}

/// Sends an Update for `location` until it is answered (the shards take the restored
/// registrations in before they read their sockets); true on 2.04.
fn update_answered(gw: SocketAddr, location: u64) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let loc = Endpoint::location_str(location);
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, 7, &[7]);
    w.option(opt::URI_PATH, b"rd");
    w.option(opt::URI_PATH, loc.as_bytes());
    w.finish();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reply = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(&buf, gw).expect("send");
        if let Ok((len, _)) = sock.recv_from(&mut reply) {
            let code = Message::parse(&reply[..len]).map(|m| m.code);
            return code == Ok(codes::CHANGED);
        }
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
