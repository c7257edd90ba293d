//! Block-wise transfer (RFC 7959) end to end: the real binary, a device on a real
//! UDP socket answering block by block, and an MQTT application that only ever
//! sees whole payloads; the gateway's own responses in Block2 blocks with a small
//! `max_block_size`; a memory cap hit read back from `/metrics`.

mod common;

use base64::Engine as _;
use common::coap::{self, exchange, location, socket, Req};
use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use common::prometheus::Exposition;
use lwm2m_gateway::coap::{codes, opt, BlockOpt, Message, MsgType};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    location: String,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str) -> Self {
        let sock = socket([127, 0, 0, 1], WAIT);
        let register = Req::con(codes::POST, 1, &[1])
            .path(&["rd"])
            .uint(opt::CONTENT_FORMAT, 40)
            .query(&[&format!("ep={ep}"), "lt=300", "lwm2m=1.0", "b=U"])
            .body(b"</1/0>,</3/0>,</5/0>");
        let reply = exchange(&sock, gw, &register.bytes());
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::CREATED);
        Device {
            location: location(&m).expect("a location"),
            sock,
            gw,
        }
    }

    /// Sends a request and returns the reply.
    fn ask(&self, req: &[u8]) -> Vec<u8> {
        exchange(&self.sock, self.gw, req)
    }

    fn recv(&self) -> Vec<u8> {
        coap::recv(&self.sock)
    }

    fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn answer(&self, req: &[u8], code: u8, opts: &[(u16, u32)], payload: &[u8]) {
        let m = Message::parse(req).unwrap();
        let answer = coap::ack(m.mid, m.token, code, opts, payload);
        self.sock.send_to(&answer, self.gw).unwrap();
    }
}

fn app(gw: &GatewayProc) -> MqttClient {
    MqttClient::subscriber(gw.mqtt, "e2e-blockwise", "lwm2m/+/up/resp", 0)
}

/// The next message that is not a register message.
fn next_response(mq: &mut MqttClient) -> simd_json::OwnedValue {
    let (_, v) = mq
        .next_json(WAIT, |_, v| v["msgType"] != "register")
        .expect("an MQTT message");
    v
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 997) as u8).collect()
}

/// A firmware image of `size` bytes written to /5/0/0 through the gateway; the
/// device takes it in 1024-byte Block1 blocks.
fn firmware_write(size: usize) {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = app(&gw);
    let dev = Device::register(gw.udp, "fw1");
    let image = pattern(size);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let cmd = format!(
        r#"{{"reqID":1,"msgType":"write","data":{{"path":"/5/0/0","type":"Opaque","value":"{b64}"}}}}"#
    );
    mq.publish("lwm2m/fw1/dn/cmd", cmd.as_bytes(), 0).unwrap();

    let mut body = Vec::new();
    let mut blocks = 0;
    let mut size1 = None;
    loop {
        let req = dev
            .try_recv()
            .unwrap_or_else(|| panic!("no block from the gateway; its log:\n{}", gw.log()));
        let m = Message::parse(&req).unwrap();
        assert_eq!((m.mtype, m.code), (MsgType::Con, codes::PUT));
        let path: Vec<_> = m.option_values(opt::URI_PATH).collect();
        assert_eq!(path, [b"5", b"0", b"0"]);
        let b = BlockOpt::decode(m.option(opt::BLOCK1).expect("Block1")).unwrap();
        if b.num == 0 {
            size1 = m.option_uint(opt::SIZE1);
        }
        assert_eq!(b.num as usize * b.size(), body.len(), "blocks in order");
        assert_eq!(b.size(), 1024);
        body.extend_from_slice(m.payload);
        blocks += 1;
        if b.more {
            dev.answer(&req, codes::CONTINUE, &[(opt::BLOCK1, b.encode())], b"");
        } else {
            dev.answer(&req, codes::CHANGED, &[(opt::BLOCK1, b.encode())], b"");
            break;
        }
    }
    assert_eq!(size1, Some(body.len() as u32));
    // A TLV resource: type byte, 3-byte length, then the image.
    assert!(body.len() > image.len());
    assert_eq!(&body[body.len() - image.len()..], &image[..]);
    assert_eq!(blocks, body.len().div_ceil(1024));

    let v = next_response(&mut mq);
    assert_eq!(v["reqID"], 1);
    assert_eq!(v["msgType"], "write");
    assert_eq!(v["data"]["code"], "2.04");
    // Exactly one response.
    assert!(mq.recv_publish(Duration::from_millis(300)).is_none());
}

/// The full-size case: a 1 MiB image, about 1.4 MB of JSON (base64) on MQTT, sent
/// to the device as Block1 blocks.
#[test]
fn firmware_write_of_1_mib_in_block1_blocks() {
    firmware_write(1 << 20);
}

/// The same path with an image whose command fits the MQTT client's packet limit.
#[test]
fn firmware_write_of_640_kib_in_block1_blocks() {
    firmware_write(640 << 10);
}

#[test]
fn read_of_64_kib_in_block2_blocks() {
    let gw = GatewayProc::start(Broker::Embedded, "[blockwise]\nmax_block_size = 512\n");
    let mut mq = app(&gw);
    let dev = Device::register(gw.udp, "rd1");
    let data = pattern(64 * 1024);
    mq.publish(
        "lwm2m/rd1/dn/cmd",
        br#"{"reqID":2,"msgType":"read","data":{"path":"/5/0/0"}}"#,
        0,
    )
    .unwrap();
    // The device serves 1024-byte blocks; the gateway asks for 512 after the first.
    let mut served = 0usize;
    let mut gets = 0;
    loop {
        let req = dev.recv();
        let m = Message::parse(&req).unwrap();
        assert_eq!(m.code, codes::GET);
        assert!(m.option(opt::OBSERVE).is_none());
        assert_eq!(m.option_uint(opt::ACCEPT), Some(42));
        let (num, szx) = match m.option(opt::BLOCK2).and_then(BlockOpt::decode) {
            None => (0, 6),
            Some(b) => (b.num, b.szx),
        };
        gets += 1;
        let size = 16usize << szx;
        let start = num as usize * size;
        assert_eq!(
            start, served,
            "follow-ups continue where the last block ended"
        );
        let end = (start + size).min(data.len());
        let more = end < data.len();
        let b = BlockOpt { num, more, szx };
        dev.answer(
            &req,
            codes::CONTENT,
            &[(opt::CONTENT_FORMAT, 42), (opt::BLOCK2, b.encode())],
            &data[start..end],
        );
        served = end;
        if !more {
            break;
        }
    }
    assert_eq!(gets, 1 + (64 * 1024 - 1024) / 512);
    let v = next_response(&mut mq);
    assert_eq!(v["reqID"], 2);
    assert_eq!(v["data"]["code"], "2.05");
    let value = v["data"]["content"][0]["value"].as_str().unwrap();
    let got = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    assert_eq!(got, data);
    assert!(mq.recv_publish(Duration::from_millis(300)).is_none());
}

/// An Update of `loc` with an invalid `lt`, asking for block `b2` when given.
fn bad_update(loc: &str, mid: u16, b2: Option<BlockOpt>) -> Vec<u8> {
    let mut r = Req::con(codes::POST, mid, &mid.to_be_bytes())
        .path(&["rd", loc])
        .query(&["lt=not-a-lifetime"]);
    if let Some(b) = b2 {
        r = r.uint(opt::BLOCK2, b.encode());
    }
    r.bytes()
}

#[test]
fn own_error_reply_in_block2_blocks_of_16_bytes() {
    let gw = GatewayProc::start(Broker::Embedded, "[blockwise]\nmax_block_size = 16\n");
    let dev = Device::register(gw.udp, "b2dev");
    let expect = "lifetime lt=\"not-a-lifetime\" is not a non-negative integer";
    let first = dev.ask(&bad_update(&dev.location, 10, None));
    let m = Message::parse(&first).unwrap();
    assert_eq!(
        (m.mtype, m.code, m.mid),
        (MsgType::Ack, codes::BAD_REQUEST, 10)
    );
    let b = BlockOpt::decode(m.option(opt::BLOCK2).expect("Block2")).unwrap();
    assert_eq!((b.num, b.more, b.size()), (0, true, 16));
    assert_eq!(m.option_uint(opt::SIZE2), Some(expect.len() as u32));
    let mut text = m.payload.to_vec();
    let mut num = 1;
    loop {
        let reply = dev.ask(&bad_update(
            &dev.location,
            10 + num as u16,
            Some(BlockOpt {
                num,
                more: false,
                szx: 0,
            }),
        ));
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.code, codes::BAD_REQUEST);
        assert_eq!(m.token, (10 + num as u16).to_be_bytes());
        let b = BlockOpt::decode(m.option(opt::BLOCK2).expect("Block2")).unwrap();
        assert_eq!(b.num, num);
        text.extend_from_slice(m.payload);
        if !b.more {
            break;
        }
        num += 1;
    }
    assert_eq!(String::from_utf8(text).unwrap(), expect);
    // An address without a registration gets the diagnostic clipped to one
    // block and to its request's size, with no Block2.
    let stranger = socket([127, 0, 0, 1], WAIT);
    let req = bad_update(&dev.location, 99, None);
    let reply = exchange(&stranger, gw.udp, &req);
    let n = reply.len();
    let m = Message::parse(&reply).unwrap();
    assert!(
        m.code == codes::BAD_REQUEST || m.code == codes::FORBIDDEN,
        "{m:?}"
    );
    assert!(m.option(opt::BLOCK2).is_none());
    assert!(m.payload.len() <= 16 && n <= req.len());
}

/// Block `num` of a Register body for `ep` (64-byte blocks, more always set).
fn register_block(ep: &str, num: u32, mid: u16) -> Vec<u8> {
    Req::con(codes::POST, mid, &mid.to_be_bytes())
        .path(&["rd"])
        .query(&[&format!("ep={ep}")])
        .opt(opt::BLOCK1, &[(num << 4 | 8 | 2) as u8])
        .body(&[b','; 64])
        .bytes()
}

#[test]
fn a_device_cap_hit_is_counted_under_its_reason_in_metrics() {
    // max_body_size 256: one device may hold 256 + 2048 bytes of partial bodies
    // (with their request keys); bodies of 256 bytes each from one address fill
    // that after a few.
    let gw = GatewayProc::start(
        Broker::Embedded,
        "[blockwise]\nmax_block_size = 64\nmax_body_size = 256\n",
    );
    let sock = socket([127, 0, 0, 1], WAIT);
    let mut mid = 1u16;
    let mut refused = None;
    'bodies: for body in 0..20 {
        for num in 0..4 {
            mid += 1;
            let block = register_block(&format!("cap{body}"), num, mid);
            let reply = exchange(&sock, gw.udp, &block);
            let m = Message::parse(&reply).unwrap();
            if m.code != codes::CONTINUE {
                refused = Some((body, m.code));
                break 'bodies;
            }
        }
    }
    let (body, code) = refused.expect("the device cap refuses a block");
    assert_eq!(code, codes::REQUEST_ENTITY_TOO_LARGE);
    assert!(body >= 2, "several bodies fit first");
    let hits =
        |e: &Exposition, reason: &str| e.sum("lwm2m_block_limit_hits_total", &[("reason", reason)]);
    let e = gw.metrics_when(|e| hits(e, "device_cap") >= 1.0);
    assert_eq!(hits(&e, "device_cap"), 1.0);
    for reason in ["max_body_size", "shard_cap", "partials", "rate"] {
        assert_eq!(hits(&e, reason), 0.0, "{reason}");
    }
    assert_eq!(e.types["lwm2m_block_limit_hits_total"], "counter");
    assert!(e.sum("lwm2m_block_aborts_total", &[]) >= 1.0);
    assert_eq!(e.sum("lwm2m_block_partials", &[]), body as f64);
    let held = e.sum("lwm2m_block_bytes_held", &[]);
    assert!(
        held > 256.0 * body as f64 && held <= 256.0 + 2048.0,
        "{held}"
    );
}
