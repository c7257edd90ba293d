//! Micro-benchmarks of the gateway's hot paths. Inputs are built once, outside the
//! measured loops. Run: `cargo bench -p bench` (or `cargo bench -p bench -- coap` for
//! a subset). Results depend on the machine: bench/run.sh records them with it.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::formats::{self, fmt_id, Value, WriteItem};
use lwm2m_gateway::lwm2m::command::{self, Encoding};
use lwm2m_gateway::lwm2m::publish::registration_json;
use lwm2m_gateway::lwm2m::{CoreSettings, Directory, Input, Output, ShardCore};
use lwm2m_gateway::model::LwPath;
use lwm2m_gateway::objects::ObjectRegistry;
use lwm2m_gateway::sim::client;
use shard::TimerWheel;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const OBJECTS: &str = "</1/0>,</2/0>,</3/0>,</4/0>,</5/0>,</6/0>,</7/0>,</3303/0>";

fn register_bytes(i: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    let mid = i as u16;
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, mid, &i.to_be_bytes());
    w.option(opt::URI_PATH, b"rd")
        .option_uint(opt::CONTENT_FORMAT, 40)
        .option(opt::URI_QUERY, format!("ep=bench-device-{i}").as_bytes())
        .option(opt::URI_QUERY, b"lt=300")
        .option(opt::URI_QUERY, b"lwm2m=1.1")
        .option(opt::URI_QUERY, b"b=U");
    w.payload(OBJECTS.as_bytes());
    buf
}

fn peer(i: u32) -> SocketAddr {
    SocketAddr::from((lwm2m_gateway::sim::device_addr(i), 40_000))
}

/// The object definitions of Device (3) and Temperature (3303) only.
fn small_model() -> ObjectRegistry {
    let dir = std::env::temp_dir().join(format!("lwm2m-bench-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let xml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/lwm2m_xml");
    for f in ["3.xml", "3303.xml"] {
        std::fs::copy(xml.join(f), dir.join(f)).expect("copy object definition");
    }
    let (reg, errors) = ObjectRegistry::load_dir(&dir);
    assert!(errors.is_empty(), "{errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
    reg
}

/// The core's settings from the default configuration, with the admission limits
/// (`max_conn_rate`, `max_connections`) lifted: the benchmarks measure the work of a
/// registration, not its refusal.
fn settings() -> Arc<CoreSettings> {
    Arc::new(CoreSettings {
        max_conn_rate: 1 << 40,
        max_connections: 1 << 40,
        ..CoreSettings::defaults()
    })
}

/// A core holding `n` devices registered through `handle` (the endpoint
/// struct is built only by the core, so the benchmarks take theirs from it).
fn core_with(n: u32) -> ShardCore {
    let mut core = ShardCore::new(0, settings(), Arc::new(Directory::new()), 7);
    for i in 0..n {
        let data = register_bytes(i);
        core.handle(0, datagram(peer(i), &data));
        if i % 64 == 63 {
            drain(&mut core);
        }
    }
    drain(&mut core);
    assert_eq!(
        core.endpoints().len(),
        n as usize,
        "every device registered"
    );
    core
}

/// A plain UDP datagram as the core takes it.
fn datagram(peer: std::net::SocketAddr, data: &[u8]) -> Input<'_> {
    Input::Datagram {
        peer,
        data,
        identity: None,
    }
}

fn drain(core: &mut ShardCore) {
    core.drain(|o| {
        if let Output::Datagram { bytes, .. } = o {
            black_box(bytes.len());
        }
    });
}

fn coap(c: &mut Criterion) {
    let reg = register_bytes(42);
    let mut g = c.benchmark_group("coap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_register", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&reg)).expect("valid");
            let mut n = 0;
            for (num, v) in m.options() {
                n += num as usize + v.len();
            }
            black_box((n, m.payload.len()))
        })
    });
    let mut out = Vec::with_capacity(64);
    g.bench_function("encode_created", |b| {
        b.iter(|| {
            out.clear();
            let mut w = MessageWriter::new(
                &mut out,
                MsgType::Ack,
                codes::CREATED,
                black_box(4711),
                black_box(&[1, 2, 3, 4]),
            );
            w.option(opt::LOCATION_PATH, b"rd")
                .option(opt::LOCATION_PATH, black_box(b"5f3a9c0d21e4"));
            w.finish();
            black_box(out.len())
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let model = small_model();
    let base = LwPath::parse("/3/0").expect("path");
    let (_, tlv) = client::content(&[3, 0], 7, 1).expect("content");
    let senml_json = br#"[{"bn":"/3/0/","n":"0","vs":"lwm2m-gateway"},{"n":"1","vs":"sim"},{"n":"2","vs":"SN7"},{"n":"3","vs":"1.0"},{"n":"9","v":99},{"n":"13","v":1700000001},{"n":"16","vs":"U"}]"#.to_vec();
    let items: Vec<WriteItem> = formats::decode(Some(fmt_id::TLV), &tlv, &base, &model)
        .expect("TLV decodes")
        .into_iter()
        .map(|it| WriteItem {
            path: it.path,
            value: it.value,
        })
        .collect();
    let senml_cbor = formats::encode(fmt_id::SENML_CBOR, &base, &items).expect("encodes");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, fmt, payload) in [
        ("tlv_device", fmt_id::TLV, &tlv),
        ("senml_json_device", fmt_id::SENML_JSON, &senml_json),
        ("senml_cbor_device", fmt_id::SENML_CBOR, &senml_cbor),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let v =
                    formats::decode(Some(fmt), black_box(payload), &base, &model).expect("decodes");
                black_box(v.len())
            })
        });
    }
    g.finish();
}

fn json(c: &mut Criterion) {
    let model = small_model();
    let base = LwPath::parse("/3/0").expect("path");
    let (_, tlv) = client::content(&[3, 0], 7, 1).expect("content");
    let items = formats::decode(Some(fmt_id::TLV), &tlv, &base, &model).expect("decodes");
    let mut single = items.clone();
    single.truncate(1);
    single[0].value = Value::Float(21.5);
    let core = core_with(8);
    let slot = core
        .endpoints()
        .find_name("bench-device-7")
        .expect("registered");
    let ep = core.endpoints().get(slot).expect("slot");
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("content_device_7_resources", |b| {
        b.iter(|| {
            out.clear();
            formats::write_content_json(black_box(&items), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("content_one_float", |b| {
        b.iter(|| {
            out.clear();
            formats::write_content_json(black_box(&single), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("registration", |b| {
        b.iter(|| {
            out.clear();
            registration_json("register", black_box(ep), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn command_parse(c: &mut Criterion) {
    let model = small_model();
    let enc = Encoding::writes(fmt_id::TLV);
    let cases: [(&str, &[u8]); 2] = [
        ("read", br#"{"reqID":12345,"msgType":"read","data":{"path":"/3/0/0"}}"#),
        (
            "write",
            br#"{"reqID":"a-17","msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1700000000}}"#,
        ),
    ];
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Elements(1));
    for (name, text) in cases {
        let mut buf = text.to_vec();
        g.bench_function(name, |b| {
            b.iter(|| {
                // simd-json parses in place: restore the input (a memcpy of < 100 bytes).
                buf.copy_from_slice(text);
                let cmd = command::parse(black_box(&mut buf), &model, enc).expect("parses");
                black_box(cmd.code)
            })
        });
    }
    g.finish();
}

fn timer_wheel(c: &mut Criterion) {
    const N: u64 = 10_000;
    // Deadlines spread over 5 minutes, in a scrambled order.
    let deadlines: Vec<u64> = (0..N).map(|i| (i * 7919 % N) * 30 + 1).collect();
    let mut g = c.benchmark_group("timer_wheel");
    g.throughput(Throughput::Elements(N));
    let mut fired = Vec::with_capacity(N as usize);
    g.bench_function("insert_advance_10k_over_5min", |b| {
        b.iter(|| {
            let mut w = TimerWheel::new(0);
            for (i, d) in deadlines.iter().enumerate() {
                w.insert(*d, i as u32);
            }
            fired.clear();
            let mut now = 0;
            while now < N * 30 + 2 {
                now += 1000;
                w.advance(now, &mut fired);
            }
            assert_eq!(fired.len(), N as usize);
            black_box(fired.len())
        })
    });
    g.finish();
}

fn endpoint_table(c: &mut Criterion) {
    const N: u32 = 10_000;
    let mut g = c.benchmark_group("endpoint_table");
    g.throughput(Throughput::Elements(N as u64));
    let core = core_with(100_000);
    let t = core.endpoints();
    let names: Vec<String> = (0..N).map(|i| format!("bench-device-{}", i * 7)).collect();
    let peers: Vec<SocketAddr> = (0..N).map(|i| peer(i * 7)).collect();
    g.bench_function("find_name_10k_of_100k", |b| {
        b.iter(|| {
            let mut found = 0;
            for n in &names {
                found += t.find_name(n).is_some() as usize;
            }
            assert_eq!(found, N as usize);
            black_box(found)
        })
    });
    g.bench_function("find_peer_10k_of_100k", |b| {
        b.iter(|| {
            let mut found = 0;
            for p in &peers {
                found += t.find_peer(p).is_some() as usize;
            }
            assert_eq!(found, N as usize);
            black_box(found)
        })
    });
    g.finish();
}

fn core_register(c: &mut Criterion) {
    const N: u32 = 100_000;
    let wildcard = settings();
    // Per-endpoint command subscriptions (the default with an external broker): each
    // Register also finds its filter a home in the directory.
    let per_endpoint = {
        let mut s = (*wildcard).clone();
        s.per_endpoint_subscriptions = true;
        Arc::new(s)
    };
    let datagrams: Vec<(SocketAddr, Vec<u8>)> =
        (0..N).map(|i| (peer(i), register_bytes(i))).collect();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for (name, settings) in [
        ("register_new_device", wildcard),
        (
            "register_new_device_per_endpoint_subscription",
            per_endpoint,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let new_core =
                    || ShardCore::new(0, settings.clone(), Arc::new(Directory::new()), 7);
                let mut core = new_core();
                let start = std::time::Instant::now();
                for i in 0..iters {
                    let k = (i % N as u64) as usize;
                    if k == 0 && i > 0 {
                        core = new_core();
                    }
                    let (p, d) = &datagrams[k];
                    core.handle(i, datagram(*p, d));
                    if i % 64 == 63 {
                        drain(&mut core);
                    }
                }
                let took = start.elapsed();
                if iters > 0 {
                    let expected = ((iters - 1) % N as u64 + 1) as usize;
                    assert_eq!(core.endpoints().len(), expected, "every Register accepted");
                }
                took
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    coap,
    decode,
    json,
    command_parse,
    timer_wheel,
    endpoint_table,
    core_register
);
criterion_main!(benches);
