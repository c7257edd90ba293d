//! Block-wise transfer (RFC 7959) end to end: the real binary, a device on a real
//! UDP socket answering block by block, and an MQTT application that only ever
//! sees whole payloads.

mod common;

use base64::Engine as _;
use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let d = Device { sock, gw };
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, 1, &[1]);
        w.option(opt::URI_PATH, b"rd")
            .option_uint(opt::CONTENT_FORMAT, 40)
            .option(opt::URI_QUERY, format!("ep={ep}").as_bytes())
            .option(opt::URI_QUERY, b"lt=300")
            .option(opt::URI_QUERY, b"lwm2m=1.0")
            .option(opt::URI_QUERY, b"b=U");
        w.payload(b"</1/0>,</3/0>,</5/0>");
        d.sock.send_to(&buf, gw).unwrap();
        let reply = d.recv();
        assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
        d
    }

    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self
            .sock
            .recv_from(&mut buf)
            .expect("datagram from the gateway");
        buf.truncate(n);
        buf
    }

    fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn answer(&self, req: &[u8], code: u8, opts: &[(u16, u32)], payload: &[u8]) {
        let m = Message::parse(req).unwrap();
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token);
        for (n, v) in opts {
            w.option_uint(*n, *v);
        }
        w.payload(payload);
        self.sock.send_to(&buf, self.gw).unwrap();
    }
}

fn app(gw: &GatewayProc) -> MqttClient {
    let mut mq = MqttClient::connect(gw.mqtt, "e2e-blockwise", true).unwrap();
    mq.subscribe("lwm2m/+/up/resp", 0).unwrap();
    mq
}

fn next_response(mq: &mut MqttClient) -> simd_json::OwnedValue {
    loop {
        let (_, p) = mq.recv_publish(WAIT).expect("an MQTT message");
        let v = simd_json::to_owned_value(&mut p.clone()).unwrap();
        if v["msgType"] != "register" {
            return v;
        }
    }
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
