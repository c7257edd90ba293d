//! The Send path (`POST /dp`): a registered device sends an arbitrary body, whole or
//! in Block1 blocks, in a content format chosen by the input, plain or over DTLS, from
//! its own address or another. Invariants: the core answers every confirmable Send
//! with one well-formed reply; 2.04 publishes exactly one `send` message of valid JSON
//! whose content lists as many values as the counters say, with absolute paths of a
//! resource or resource instance; every refusal publishes nothing and is counted under
//! its reason; nothing else reaches MQTT.

use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::formats::fmt_id;
use lwm2m_gateway::lwm2m::{CoreSettings, Directory, Input, MqttOut, Output, ShardCore};
use lwm2m_gateway::objects::builtin_registry;
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;

const DEV: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5683);
const OTHER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5999);
const FORMATS: [Option<u16>; 6] = [
    Some(fmt_id::SENML_JSON),
    Some(fmt_id::SENML_CBOR),
    Some(fmt_id::LWM2M_CBOR),
    Some(fmt_id::TLV),
    Some(fmt_id::TEXT),
    None,
];

struct Out {
    replies: Vec<(SocketAddr, Vec<u8>)>,
    publishes: Vec<(String, Vec<u8>)>,
}

fn drain(core: &mut ShardCore) -> Out {
    let mut out = Out {
        replies: Vec::new(),
        publishes: Vec::new(),
    };
    core.drain(|o| match o {
        Output::Datagram { to, bytes, .. } => out.replies.push((to, bytes.to_vec())),
        Output::Mqtt(MqttOut::Publish { topic, payload, .. }) => {
            out.publishes.push((topic, payload))
        }
        _ => {}
    });
    out
}

fn post_dp(mid: u16, format: Option<u16>, block1: Option<u32>, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, mid, &mid.to_be_bytes());
    w.option(opt::URI_PATH, b"dp");
    if let Some(f) = format {
        w.option_uint(opt::CONTENT_FORMAT, f as u32);
    }
    if let Some(b) = block1 {
        w.option_uint(opt::BLOCK1, b);
    }
    w.payload(body);
    buf
}

/// The shipped object definitions, parsed once per process.
fn registry() -> Arc<lwm2m_gateway::objects::ObjectRegistry> {
    static REGISTRY: std::sync::OnceLock<Arc<lwm2m_gateway::objects::ObjectRegistry>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| Arc::new(builtin_registry()))
        .clone()
}

fn input(data: &[u8], peer: SocketAddr) -> Input<'_> {
    Input::Datagram {
        peer,
        data,
        identity: None,
    }
}

pub fn send(data: &[u8]) {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let settings = Arc::new(CoreSettings {
        clock_epoch_ms: 1_750_000_000_000,
        ..CoreSettings::defaults()
    });
    let mut core = ShardCore::new(0, settings, Arc::new(Directory::new()), 1);
    core.set_registry(registry());
    let now = 1_000;
    let mut reg = Vec::new();
    let mut w = MessageWriter::new(&mut reg, MsgType::Con, codes::POST, 1, &[1]);
    w.option(opt::URI_PATH, b"rd");
    w.option(opt::URI_QUERY, b"ep=fz");
    w.option(opt::URI_QUERY, b"lwm2m=1.1");
    w.payload(b"</3/0>,</3303/0>");
    core.handle(now, input(&reg, DEV));
    let registered = drain(&mut core);
    assert_eq!(registered.publishes.len(), 1);

    let format = FORMATS[(ctl & 7) as usize % FORMATS.len()];
    let from = if ctl & 0x08 != 0 { OTHER } else { DEV };
    let blockwise = ctl & 0x10 != 0 && body.len() > 16;
    let before = *core.stats();
    let mut reply = None;
    if blockwise {
        // 16-byte blocks (szx 0); the last one carries the rest.
        let chunks: Vec<&[u8]> = body.chunks(16).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let more = n + 1 < chunks.len();
            let b1 = ((n as u32) << 4) | ((more as u32) << 3);
            core.handle(
                now,
                input(&post_dp(100 + n as u16, format, Some(b1), chunk), from),
            );
            let out = drain(&mut core);
            assert_eq!(out.replies.len(), 1, "one reply per block");
            let (_, r) = &out.replies[0];
            let m = Message::parse(r).expect("the reply is CoAP");
            if more && m.code == codes::CONTINUE {
                assert!(out.publishes.is_empty());
                continue;
            }
            reply = Some((m.code, out));
            break;
        }
    } else {
        core.handle(now, input(&post_dp(100, format, None, body), from));
        let out = drain(&mut core);
        assert_eq!(out.replies.len(), 1, "one reply to a confirmable Send");
        let code = Message::parse(&out.replies[0].1)
            .expect("the reply is CoAP")
            .code;
        reply = Some((code, out));
    }
    let Some((code, out)) = reply else { return };
    let after = *core.stats();
    let refused: u64 =
        after.sends_refused.iter().sum::<u64>() - before.sends_refused.iter().sum::<u64>();
    if code == codes::CHANGED {
        assert_eq!(
            from, DEV,
            "a Send from an address without a registration was accepted"
        );
        assert_eq!(after.sends, before.sends + 1);
        assert_eq!(out.publishes.len(), 1, "one send message per accepted Send");
        let (topic, payload) = &out.publishes[0];
        assert_eq!(topic, "lwm2m/fz/up/send");
        let mut copy = payload.clone();
        let v = simd_json::to_owned_value(&mut copy).unwrap_or_else(|e| {
            panic!(
                "send message is not JSON ({e}): {}",
                String::from_utf8_lossy(payload)
            )
        });
        assert_eq!(v["msgType"], "send");
        let content = v["data"]["content"].as_array().expect("content array");
        assert_eq!(content.len() as u64, after.sent_values - before.sent_values);
        for c in content {
            let p = c["path"].as_str().expect("path");
            assert!(p.starts_with('/') && p.matches('/').count() >= 3, "{p}");
        }
    } else {
        assert!(
            out.publishes.is_empty(),
            "a refused Send published something"
        );
        assert_eq!(after.sends, before.sends);
        let by_block_server = matches!(
            code,
            codes::REQUEST_ENTITY_INCOMPLETE | codes::REQUEST_ENTITY_TOO_LARGE
        );
        if !by_block_server && from == DEV || code == codes::NOT_FOUND {
            assert!(
                refused == 1 || (code == codes::NOT_FOUND && blockwise),
                "refusal {}.{:02} not counted",
                code >> 5,
                code & 31
            );
        }
    }
}
