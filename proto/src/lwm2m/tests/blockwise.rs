//! Block-wise transfer (RFC 7959) on a virtual clock: Block1 writes with loss,
//! duplication and size renegotiation, 4.13, Block2 reads and notifications,
//! server-side Block1 Register/Update, limits, lifetimes, and the disabled mode.

use super::blocks::*;
use super::harness::*;
use crate::coap::{codes, opt, BlockOpt, MessageWriter, MsgType};
use crate::formats::fmt_id;
use crate::lwm2m::blockwise::BlockLimit;
use crate::lwm2m::CoreSettings;
use base64::Engine as _;
use simd_json::prelude::*;

const DEV: u16 = 5000;
const TOPIC: &str = "lwm2m/dev1/dn/cmd";

fn dev() -> std::net::SocketAddr {
    addr(1, DEV)
}

fn setup_with(s: CoreSettings) -> Harness {
    let mut h = Harness::new(1, s);
    let r = Req::new(codes::POST, "/rd", 1)
        .q("ep=dev1")
        .q("lt=300")
        .q("lwm2m=1.0")
        .q("b=U")
        .body(b"</1/0>,</3/0>,</5/0>");
    assert_eq!(h.one(0, dev(), &r.bytes()).code(), codes::CREATED);
    h
}

fn write_cmd(id: u32, bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(
        r#"{{"reqID":{id},"msgType":"write","data":{{"path":"/5/0/0","type":"Opaque","value":"{b64}"}}}}"#
    )
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The gateway's request to the device for a read of /5/0/0 with reqID `id`.
fn read_5_0_0(h: &mut Harness, id: u32) -> Reply {
    let cmd = format!(r#"{{"reqID":{id},"msgType":"read","data":{{"path":"/5/0/0"}}}}"#);
    one_req(h.command(0, TOPIC, &cmd))
}

/// The body a write carries when sent whole (block-wise off).
fn whole_body(cmd: &str) -> Vec<u8> {
    let mut s = settings();
    s.block_enable = false;
    let mut h = setup_with(s);
    let r = one_req(h.command(0, TOPIC, cmd));
    r.msg().payload.to_vec()
}

#[test]
fn block1_write_every_block_continue_then_changed() {
    let mut h = setup_with(with_szx(2));
    let data = pattern(1000);
    let cmd = write_cmd(1, &data);
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let first = one_req(h.command(0, TOPIC, &cmd));
    let m = first.msg();
    assert_eq!((m.mtype, m.code), (MsgType::Con, codes::PUT));
    assert_eq!(m.option_uint(opt::SIZE1), Some(expect.len() as u32));
    assert_eq!(
        block(&m, opt::BLOCK1),
        Some(BlockOpt {
            num: 0,
            more: true,
            szx: 2
        })
    );
    let (body, seen) = h.receive_block1(0, first, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
    assert_eq!(seen.len(), expect.len().div_ceil(64));
    // Every block: fresh message ID and token, the same path and format.
    let mut mids: Vec<u16> = seen.iter().map(|r| r.msg().mid).collect();
    mids.dedup();
    assert_eq!(mids.len(), seen.len());
    for r in &seen {
        let m = r.msg();
        let path: Vec<_> = m.option_values(opt::URI_PATH).collect();
        assert_eq!(path, [b"5", b"0", b"0"]);
        assert_eq!(m.option_uint(opt::CONTENT_FORMAT), Some(fmt_id::TLV as u32));
    }
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1, "one MQTT response: {p:?}");
    assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
    assert_eq!(p[0].1["reqID"], 1);
    assert_eq!(p[0].1["msgType"], "write");
    assert_eq!(p[0].1["data"]["code"], "2.04");
    let st = h.cores[0].stats;
    assert_eq!(st.block_transfers, 1);
    assert_eq!(st.blocks_sent, seen.len() as u64);
    // The next command goes out normally.
    let r = one_req(h.command(
        0,
        TOPIC,
        r#"{"reqID":2,"msgType":"read","data":{"path":"/3/0/1"}}"#,
    ));
    assert_eq!(r.msg().code, codes::GET);
}

#[test]
fn block1_lost_block_and_lost_continue_recover_without_restart() {
    let mut h = setup_with(with_szx(2));
    let data = pattern(600);
    let cmd = write_cmd(1, &data);
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let mut req = one_req(h.command(0, TOPIC, &cmd));
    let mut body = Vec::new();
    let mut n = 0;
    loop {
        let m = req.msg();
        let b = block(&m, opt::BLOCK1).unwrap();
        assert_eq!(b.num, n, "the transfer never restarts");
        if n == 3 {
            // Block 3 is lost: retransmitted with the same message ID.
            let again = one_req(h.advance_collect(3_100));
            assert_eq!(again.bytes, req.bytes);
        }
        body.extend_from_slice(m.payload);
        let answer = if b.more {
            codes::CONTINUE
        } else {
            codes::CHANGED
        };
        let a = ack(&req, answer, &[(opt::BLOCK1, b.encode())], b"");
        if n == 5 {
            // The device's 2.31 to block 5 is lost: block 5 comes again and is
            // answered again.
            let again = one_req(h.advance_collect(3_100));
            assert_eq!(again.bytes, req.bytes);
        }
        let out = h.exchange(0, dev(), &a);
        if !b.more {
            assert!(out.is_empty());
            break;
        }
        req = one_req(out);
        n += 1;
    }
    assert_eq!(body, expect);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["data"]["code"], "2.04");
    assert_eq!(h.cores[0].stats.retransmissions, 2);
    // No stale retransmission timer of an earlier block fires later.
    assert!(h.advance_collect(300_000).is_empty());
    let p = h.published_since(mark);
    let ends = |v: &serde_json_lite::Value| v["msgType"].as_str() == Some("deregister");
    assert_eq!(p.iter().filter(|(_, v)| !ends(v)).count(), 1, "{p:?}");
}

#[test]
fn block1_duplicated_continue_is_ignored() {
    let mut h = setup_with(with_szx(2));
    let cmd = write_cmd(1, &pattern(300));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    let cont0 = ack(&b0, codes::CONTINUE, &[(opt::BLOCK1, 0x0a)], b"");
    let b1 = one_req(h.exchange(0, dev(), &cont0));
    // The same 2.31 again (duplicated by the network): matches nothing.
    assert!(h.exchange(0, dev(), &cont0).is_empty());
    assert_eq!(block(&b1.msg(), opt::BLOCK1).unwrap().num, 1);
    let (body, _) = h.receive_block1(0, b1, codes::CHANGED, b0.msg().payload.to_vec());
    assert_eq!(body, expect);
    assert_eq!(h.published_since(mark).len(), 1);
    assert!(h.cores[0].stats.unmatched >= 1);
}

#[test]
fn block1_renegotiates_smaller_blocks_mid_transfer() {
    let mut h = setup_with(settings());
    let cmd = write_cmd(1, &pattern(5000));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    let m = b0.msg();
    assert_eq!(block(&m, opt::BLOCK1).unwrap().size(), 1024);
    let mut body = m.payload.to_vec();
    // Block 0 acknowledged, asking for 256-byte blocks: the next is 4/1/256.
    let c = ack(&b0, codes::CONTINUE, &[(opt::BLOCK1, 0x0c)], b"");
    let b = one_req(h.exchange(0, dev(), &c));
    let bo = block(&b.msg(), opt::BLOCK1).unwrap();
    assert_eq!((bo.num, bo.size()), (4, 256));
    body.extend_from_slice(b.msg().payload);
    // 4.13 with an even smaller size: the refused block again, at 64 bytes.
    let c = ack(&b, codes::CONTINUE, &[(opt::BLOCK1, bo.encode())], b"");
    let b = one_req(h.exchange(0, dev(), &c));
    let bo = block(&b.msg(), opt::BLOCK1).unwrap();
    assert_eq!((bo.num, bo.size()), (5, 256));
    let refuse = ack(
        &b,
        codes::REQUEST_ENTITY_TOO_LARGE,
        &[(opt::BLOCK1, 0x02)],
        b"",
    );
    let b = one_req(h.exchange(0, dev(), &refuse));
    let bo = block(&b.msg(), opt::BLOCK1).unwrap();
    assert_eq!((bo.num, bo.size()), (20, 64));
    let (body, _) = h.receive_block1(0, b, codes::CHANGED, body);
    assert_eq!(body, expect);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["data"]["code"], "2.04");
}

#[test]
fn whole_request_refused_413_with_block_size_goes_blockwise() {
    let mut h = setup_with(settings());
    let cmd = write_cmd(1, &pattern(500));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let r = one_req(h.command(0, TOPIC, &cmd));
    assert!(
        block(&r.msg(), opt::BLOCK1).is_none(),
        "fits one block: sent whole"
    );
    let refuse = ack(
        &r,
        codes::REQUEST_ENTITY_TOO_LARGE,
        &[(opt::BLOCK1, 0x03)],
        b"",
    );
    let b0 = one_req(h.exchange(0, dev(), &refuse));
    assert_eq!(block(&b0.msg(), opt::BLOCK1).unwrap().size(), 128);
    let (body, _) = h.receive_block1(0, b0, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
    assert_eq!(h.published_since(mark).len(), 1);
}

#[test]
fn block1_413_with_size1_restarts_with_a_smaller_block_size() {
    // 256-byte blocks; the device says with Size1 that it takes 100 bytes at a
    // time: the write starts over from block 0 in 64-byte blocks (the largest
    // size <= 100), and completes.
    let mut h = setup_with(with_szx(4));
    let cmd = write_cmd(7, &pattern(1000));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    assert_eq!(block(&b0.msg(), opt::BLOCK1).unwrap().size(), 256);
    let c = ack(&b0, codes::CONTINUE, &[(opt::BLOCK1, 0x0c)], b"");
    let b1 = one_req(h.exchange(0, dev(), &c));
    assert_eq!(block(&b1.msg(), opt::BLOCK1).unwrap().num, 1);
    let refuse = ack(
        &b1,
        codes::REQUEST_ENTITY_TOO_LARGE,
        &[(opt::SIZE1, 100)],
        b"",
    );
    let r = one_req(h.exchange(0, dev(), &refuse));
    let m = r.msg();
    let b = block(&m, opt::BLOCK1).unwrap();
    assert_eq!(
        (b.num, b.more, b.size()),
        (0, true, 64),
        "block 0 again, smaller"
    );
    assert_eq!(m.option_uint(opt::SIZE1), Some(expect.len() as u32));
    let (body, _) = h.receive_block1(0, r, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["data"]["code"], "2.04");
}

#[test]
fn block1_413_with_a_larger_size1_still_lowers_the_block_size() {
    // Size1 above the block sent: the next smaller size (128 after 256).
    let mut h = setup_with(with_szx(4));
    let cmd = write_cmd(7, &pattern(1000));
    let expect = whole_body(&cmd);
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    let refuse = ack(
        &b0,
        codes::REQUEST_ENTITY_TOO_LARGE,
        &[(opt::SIZE1, 2048)],
        b"",
    );
    let r = one_req(h.exchange(0, dev(), &refuse));
    let b = block(&r.msg(), opt::BLOCK1).unwrap();
    assert_eq!((b.num, b.size()), (0, 128));
    let (body, _) = h.receive_block1(0, r, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
}

#[test]
fn block1_413_with_size1_ends_the_write_when_no_smaller_size_is_possible() {
    // 16-byte blocks are the smallest; a Size1 below 16 allows none.
    for (szx, size1) in [(0u8, 2048u32), (0, 16), (4, 15)] {
        let mut h = setup_with(with_szx(szx));
        let mark = h.mark();
        let b0 = one_req(h.command(0, TOPIC, &write_cmd(7, &pattern(4000))));
        let refuse = ack(
            &b0,
            codes::REQUEST_ENTITY_TOO_LARGE,
            &[(opt::SIZE1, size1)],
            b"",
        );
        assert!(h.exchange(0, dev(), &refuse).is_empty(), "no further block");
        let p = h.published_since(mark);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1["reqID"], 7);
        assert_eq!(p[0].1["data"]["code"], "4.13");
        assert_eq!(p[0].1["data"]["size1"], size1.to_string());
        assert!(h.advance_collect(300_000).is_empty());
        assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    }
}

#[test]
fn whole_request_refused_413_with_size1_goes_blockwise() {
    let mut h = setup_with(settings());
    let cmd = write_cmd(1, &pattern(500));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let r = one_req(h.command(0, TOPIC, &cmd));
    assert!(block(&r.msg(), opt::BLOCK1).is_none());
    let refuse = ack(
        &r,
        codes::REQUEST_ENTITY_TOO_LARGE,
        &[(opt::SIZE1, 200)],
        b"",
    );
    let b0 = one_req(h.exchange(0, dev(), &refuse));
    assert_eq!(block(&b0.msg(), opt::BLOCK1).unwrap().size(), 128);
    let (body, _) = h.receive_block1(0, b0, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
    assert_eq!(h.published_since(mark).len(), 1);
}

#[test]
fn a_write_body_is_counted_and_refused_beyond_the_caps() {
    let mut h = setup_with(with_szx(2));
    let cmd = write_cmd(1, &pattern(3000));
    let expect = whole_body(&cmd);
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    // The whole body is held while the transfer lasts.
    assert_eq!(h.cores[0].blockwise_held_bytes(), expect.len() as u64);
    let (body, _) = h.receive_block1(0, b0, codes::CHANGED, Vec::new());
    assert_eq!(body, expect);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    // Beyond the device's cap (below max_body_size): refused before sending.
    for (device, shard, reason, whose) in [
        (2000, 64 << 20, BlockLimit::DeviceCap, "this device"),
        (4 << 20, 2000, BlockLimit::ShardCap, "this shard"),
    ] {
        let mut s = with_szx(2);
        s.block_device_cap = device;
        s.block_shard_cap = shard;
        let mut h = setup_with(s);
        let mark = h.mark();
        assert!(h
            .command(0, TOPIC, &write_cmd(2, &pattern(3000)))
            .is_empty());
        let p = h.published_since(mark);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1["reqID"], 2);
        assert_eq!(p[0].1["data"]["code"], "4.13");
        let e = p[0].1["data"]["error"].as_str().unwrap();
        assert!(e.contains(whose), "{e}");
        let st = h.cores[0].stats;
        assert_eq!(st.block_limits[reason.index()], 1);
        assert_eq!(st.block_aborts, 1);
        assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
        // A small write still goes out.
        assert_eq!(
            one_req(h.command(0, TOPIC, &write_cmd(3, b"ok")))
                .msg()
                .code,
            codes::PUT
        );
    }
}

/// The follow-ups among the Block2 requests `asked` (the first one's after it):
/// GETs repeating its path and Accept, not observing, asking for the next block.
fn check_follow_ups(asked: &[Reply]) {
    let m = asked[0].msg();
    let path: Vec<&[u8]> = m.option_values(opt::URI_PATH).collect();
    let accept = m.option_uint(opt::ACCEPT);
    for (num, req) in asked.iter().enumerate().skip(1) {
        let m = req.msg();
        assert_eq!((m.mtype, m.code), (MsgType::Con, codes::GET));
        let p: Vec<&[u8]> = m.option_values(opt::URI_PATH).collect();
        assert_eq!(p, path, "follow-ups repeat the request's options");
        assert_eq!(m.option_uint(opt::ACCEPT), accept);
        assert!(
            m.option(opt::OBSERVE).is_none(),
            "follow-ups do not observe"
        );
        let rb = block(&m, opt::BLOCK2).unwrap();
        assert_eq!((rb.num as usize, rb.more, rb.size()), (num, false, 1024));
    }
}

#[test]
fn block2_read_of_64k_reassembled_and_decoded_once() {
    let mut h = setup_with(settings());
    let data = pattern(64 * 1024);
    let mark = h.mark();
    let first = read_5_0_0(&mut h, 9);
    assert_eq!(
        first.msg().option_uint(opt::ACCEPT),
        Some(fmt_id::OPAQUE as u32)
    );
    let asked = h.serve_block2(0, first, &data, 0, fmt_id::OPAQUE, None);
    assert_eq!(asked.len(), 64);
    check_follow_ups(&asked);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1, "one MQTT message");
    assert_eq!(p[0].1["reqID"], 9);
    assert_eq!(p[0].1["data"]["code"], "2.05");
    let v = p[0].1["data"]["content"][0]["value"].as_str().unwrap();
    let got = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
    assert_eq!(got, data);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    assert_eq!(h.cores[0].stats.blocks_received, 64);
}

#[test]
fn block2_lost_follow_up_and_duplicated_block_recover() {
    let mut h = setup_with(settings());
    let data = pattern(3000);
    let mark = h.mark();
    let first = read_5_0_0(&mut h, 1);
    let cf = fmt_id::OPAQUE;
    let a0 = block2_ack(&first, blk(0, true, 6), cf, &data[..1024]);
    let g1 = one_req(h.exchange(0, dev(), &a0));
    // The block 0 response duplicated: nothing happens.
    assert!(h.exchange(0, dev(), &a0).is_empty());
    // The follow-up GET is lost: retransmitted unchanged.
    let again = one_req(h.advance_collect(3_100));
    assert_eq!(again.bytes, g1.bytes);
    let a1 = block2_ack(&g1, blk(1, true, 6), cf, &data[1024..2048]);
    let g2 = one_req(h.exchange(0, dev(), &a1));
    assert_eq!(block(&g2.msg(), opt::BLOCK2).unwrap().num, 2);
    assert!(
        h.exchange(0, dev(), &a1).is_empty(),
        "a duplicated block is ignored"
    );
    let a2 = block2_ack(&g2, blk(2, false, 6), cf, &data[2048..]);
    assert!(h.exchange(0, dev(), &a2).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    let v = p[0].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
        data
    );
}

#[test]
fn block2_notification_completed_and_published_once() {
    let mut h = setup_with(settings());
    let mark = h.mark();
    let req = one_req(h.command(
        0,
        TOPIC,
        r#"{"reqID":4,"msgType":"observe","data":{"path":"/5/0/0"}}"#,
    ));
    let token = req.msg().token.to_vec();
    // The first response is itself block-wise: observed once complete.
    let first = pattern(2000);
    let asked = h.serve_block2(0, req, &first, 0, fmt_id::OPAQUE, Some(1));
    assert_eq!(asked.len(), 2);
    check_follow_ups(&asked);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["msgType"], "observe");
    let v = p[0].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
        first
    );
    // A CON notification with Block2 on the observation's token.
    let data = pattern(5000);
    let out = h.exchange(0, dev(), &block_notification(&token, 700, Some(2), &data));
    assert_eq!(out.len(), 2, "ACK and the first follow-up: {out:?}");
    assert_eq!((out[0].msg().mtype, out[0].msg().mid), (MsgType::Ack, 700));
    let g = out[1].clone();
    let gm = g.msg();
    assert_eq!(gm.code, codes::GET);
    assert!(gm.option(opt::OBSERVE).is_none());
    assert_ne!(gm.token, &token[..]);
    assert_eq!(block(&gm, opt::BLOCK2).unwrap().num, 1);
    // The rest, served from block 1.
    assert_eq!(h.serve_block2(0, g, &data, 1, 42, None).len(), 4);
    let notes = h.published("up/notify");
    assert_eq!(notes.len(), 1, "published once");
    assert_eq!(notes[0].1["seqNum"], 2);
    assert_eq!(notes[0].1["reqID"], 4);
    let v = notes[0].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
        data
    );
    // The observation continues on its token.
    let mut n2 = Vec::new();
    let mut w = MessageWriter::new(&mut n2, MsgType::Non, codes::CONTENT, 701, &token);
    w.option_uint(opt::OBSERVE, 3)
        .option_uint(opt::CONTENT_FORMAT, 42);
    w.payload(b"xy");
    h.datagram(0, dev(), &n2);
    assert_eq!(h.published("up/notify").len(), 2);
}

#[test]
fn server_block1_register_with_long_object_list() {
    let mut h = Harness::new(1, settings());
    let list = long_list(200);
    assert!(list.len() > 1500);
    let blocks = register_blocks(&list, 2, 100);
    let mark = h.mark();
    for (i, b) in blocks.iter().enumerate() {
        let r = h.one(0, dev(), b);
        let m = r.msg();
        assert_eq!(m.mtype, MsgType::Ack);
        assert_eq!(m.mid, 100 + i as u16);
        if i + 1 < blocks.len() {
            assert_eq!(m.code, codes::CONTINUE, "block {i}");
            let b1 = block(&m, opt::BLOCK1).unwrap();
            assert_eq!((b1.num, b1.more, b1.size()), (i as u32, true, 64));
            assert!(
                h.published_since(mark).is_empty(),
                "nothing before the last block"
            );
            if i == 3 {
                // A retransmitted block is acknowledged again and not appended twice.
                let again = h.one(0, dev(), b);
                assert_eq!(again.code(), codes::CONTINUE);
            }
        } else {
            assert_eq!(m.code, codes::CREATED);
            let b1 = block(&m, opt::BLOCK1).unwrap();
            assert_eq!((b1.num, b1.more), (i as u32, false), "names the last block");
        }
    }
    let p = h.published_since(mark);
    let regs: Vec<_> = p
        .iter()
        .filter(|(_, v)| v["msgType"] == "register")
        .collect();
    assert_eq!(regs.len(), 1);
    let objs = regs[0].1["data"]["objectList"].as_array().unwrap();
    assert_eq!(objs.len(), 200);
    assert_eq!(objs[0], "/3300/0");
    assert_eq!(objs[199], "/3349/3");
    assert_eq!(h.cores[0].blockwise_partials(), 0);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    // The last block retransmitted: the 2.01 again, no second registration.
    let again = h.one(0, dev(), blocks.last().unwrap());
    assert_eq!(again.code(), codes::CREATED);
    assert!(block(&again.msg(), opt::BLOCK1).is_some_and(|b| !b.more));
    assert_eq!(h.published("up/resp").len(), 1);
}

#[test]
fn server_block1_update_with_long_object_list() {
    let mut h = Harness::new(1, settings());
    let r = h.one(0, dev(), &Req::register("dev1", 1).bytes());
    let loc = r.location();
    // 128-byte blocks, their Block1 values two bytes long (a leading zero).
    let blocks = in_block1(&long_list(120), 3, |i, b| {
        Req::update(&loc, 50 + i as u16).opt(opt::BLOCK1, &b.encode().to_be_bytes()[2..])
    });
    let got: Vec<u8> = h
        .send_blocks(0, dev(), &blocks)
        .iter()
        .map(Reply::code)
        .collect();
    let mut expect = vec![codes::CONTINUE; blocks.len() - 1];
    expect.push(codes::CHANGED);
    assert_eq!(got, expect);
    let ups = h.published("up/update");
    assert_eq!(ups.len(), 1);
    assert_eq!(
        ups[0].1["data"]["objectList"].as_array().unwrap().len(),
        120
    );
}

#[test]
fn server_block1_limits_and_out_of_order() {
    let mut s = settings();
    s.max_body_size = 256;
    let mut h = Harness::new(1, s);
    // Size1 announces too much: 4.13 with Size1 = max_body_size.
    let b = register_blocks(&long_list(100), 2, 10);
    let m = Req::new(codes::POST, "/rd", 9)
        .q("ep=x")
        .opt(opt::BLOCK1, &[0x0a])
        .opt(opt::SIZE1, &[0x10, 0x00])
        .body(&[b'a'; 64]);
    let r = h.one(0, dev(), &m.bytes());
    assert_eq!(r.code(), codes::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(r.msg().option_uint(opt::SIZE1), Some(256));
    // A body growing beyond it: 4.13 at the block that crosses the limit.
    let codes_seen: Vec<u8> = h
        .send_blocks(0, dev(), &b[..5])
        .iter()
        .map(Reply::code)
        .collect();
    assert_eq!(
        codes_seen,
        [
            codes::CONTINUE,
            codes::CONTINUE,
            codes::CONTINUE,
            codes::CONTINUE,
            codes::REQUEST_ENTITY_TOO_LARGE
        ]
    );
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    // A block that does not follow: 4.08.
    let b = register_blocks(&long_list(30), 2, 40);
    assert_eq!(h.one(0, dev(), &b[0]).code(), codes::CONTINUE);
    assert_eq!(
        h.one(0, dev(), &b[2]).code(),
        codes::REQUEST_ENTITY_INCOMPLETE
    );
    assert_eq!(h.endpoints(), 0);
    assert_eq!(h.published("up/resp").len(), 0);
}

#[test]
fn abandoned_partial_body_dropped_after_exchange_lifetime() {
    let mut h = Harness::new(1, settings());
    let b = register_blocks(&long_list(30), 2, 10);
    assert_eq!(h.one(0, dev(), &b[0]).code(), codes::CONTINUE);
    h.advance(100_000);
    assert_eq!(h.one(0, dev(), &b[1]).code(), codes::CONTINUE);
    // Two blocks and the request key (method, Uri-Path, Uri-Query).
    let key = 1 + (3 + 2) + (3 + 6) + (3 + 6) + (3 + 9);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 128 + key);
    // The lifetime counts from the last block.
    h.advance(200_000);
    assert_eq!(h.cores[0].blockwise_partials(), 1);
    h.advance(50_000);
    assert_eq!(h.cores[0].blockwise_partials(), 0);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    assert_eq!(h.cores[0].stats.block_expired, 1);
    assert_eq!(
        h.one(0, dev(), &b[2]).code(),
        codes::REQUEST_ENTITY_INCOMPLETE
    );
}

#[test]
fn oversize_bodies_are_errors_on_mqtt() {
    let mut s = settings();
    s.max_body_size = 4096;
    let mut h = setup_with(s);
    let mark = h.mark();
    // A command body beyond max_body_size: nothing is sent, 4.13 on MQTT.
    assert!(h
        .command(0, TOPIC, &write_cmd(1, &pattern(5000)))
        .is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["reqID"], 1);
    assert_eq!(p[0].1["data"]["code"], "4.13");
    // A device sending more than max_body_size: aborted, error on MQTT.
    let mark = h.mark();
    let req = read_5_0_0(&mut h, 2);
    let sent = h.serve_block2(0, req, &[0u8; 10 * 1024], 0, 42, None).len();
    assert_eq!(sent, 5, "the fifth block crosses 4096 bytes");
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["reqID"], 2);
    assert_eq!(p[0].1["data"]["code"], "4.13");
    assert!(p[0].1["data"]["error"]
        .as_str()
        .unwrap()
        .contains("max_body_size"));
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    assert_eq!(h.cores[0].stats.block_aborts, 2);
}

#[test]
fn memory_caps_per_device_and_per_shard_abort_a_fetch() {
    for (device, shard, reason, whose) in [
        (2048, 64 << 20, BlockLimit::DeviceCap, "device"),
        (4 << 20, 2048, BlockLimit::ShardCap, "shard"),
    ] {
        let mut s = settings();
        s.block_device_cap = device;
        s.block_shard_cap = shard;
        let mut h = setup_with(s);
        let mark = h.mark();
        let mut req = read_5_0_0(&mut h, 3);
        for num in 0..3u32 {
            let out = h.exchange(
                0,
                dev(),
                &block2_ack(&req, blk(num, true, 6), 42, &[1u8; 1024]),
            );
            if num < 2 {
                assert_eq!(h.cores[0].blockwise_held_bytes(), 1024 * (num as u64 + 1));
                req = one_req(out);
            } else {
                assert!(out.is_empty());
            }
        }
        let p = h.published_since(mark);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1["data"]["code"], "4.13");
        let e = p[0].1["data"]["error"].as_str().unwrap();
        assert!(e.contains("cap") && e.contains(whose), "{e}");
        assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
        let st = h.cores[0].stats;
        assert_eq!(
            st.block_limits[reason.index()],
            1,
            "counted under its reason"
        );
        assert_eq!(st.block_aborts, 1);
    }
}

#[test]
fn disabled_mode_sends_whole_refuses_block1_and_flags_first_block() {
    let mut s = settings();
    s.block_enable = false;
    let mut h = setup_with(s);
    let mark = h.mark();
    // A large write goes out whole.
    let r = one_req(h.command(0, TOPIC, &write_cmd(1, &pattern(3000))));
    let m = r.msg();
    assert!(block(&m, opt::BLOCK1).is_none());
    assert!(m.payload.len() > 3000);
    h.datagram(0, dev(), &ack(&r, codes::CHANGED, &[], b""));
    // A Block2 response: published as the first block only, flagged.
    let r = read_5_0_0(&mut h, 2);
    let out = h.exchange(0, dev(), &block2_ack(&r, blk(0, true, 6), 42, &[5u8; 1024]));
    assert!(out.is_empty(), "no follow-up");
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].1["data"]["code"], "2.05");
    assert!(p[1].1["data"]["truncated"]
        .as_str()
        .unwrap()
        .contains("block-wise transfer is off"));
    let v = p[1].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .unwrap()
            .len(),
        1024
    );
    // A device's Block1 Register: 4.13.
    let b = register_blocks(&long_list(30), 2, 10);
    assert_eq!(
        h.one(0, addr(2, 1), &b[0]).code(),
        codes::REQUEST_ENTITY_TOO_LARGE
    );
}

#[test]
fn block_answered_by_a_late_separate_response_continues() {
    let mut h = setup_with(with_szx(2));
    let cmd = write_cmd(1, &pattern(300));
    let expect = whole_body(&cmd);
    let mark = h.mark();
    let b0 = one_req(h.command(0, TOPIC, &cmd));
    let m = b0.msg();
    // Empty ACK: the 2.31 comes separately, 10 s later (after the retransmission
    // timer armed before the ACK would have fired).
    let mut e = Vec::new();
    MessageWriter::new(&mut e, MsgType::Ack, codes::EMPTY, m.mid, &[]).finish();
    assert!(h.exchange(0, dev(), &e).is_empty());
    assert!(
        h.advance_collect(10_000).is_empty(),
        "no retransmission after the ACK"
    );
    let mut sep = Vec::new();
    let mut w = MessageWriter::new(&mut sep, MsgType::Con, codes::CONTINUE, 900, m.token);
    w.option_uint(opt::BLOCK1, block(&m, opt::BLOCK1).unwrap().encode());
    w.finish();
    let out = h.exchange(0, dev(), &sep);
    assert_eq!(
        out.len(),
        2,
        "ACK of the separate response and block 1: {out:?}"
    );
    assert_eq!((out[0].msg().mtype, out[0].msg().mid), (MsgType::Ack, 900));
    let (body, _) = h.receive_block1(0, out[1].clone(), codes::CHANGED, m.payload.to_vec());
    assert_eq!(body, expect);
    let p = h.published_since(mark);
    let kinds: Vec<_> = p.iter().map(|(_, v)| v["msgType"].to_string()).collect();
    assert_eq!(kinds, ["ack", "write"], "{p:?}");
    assert_eq!(p[1].1["data"]["code"], "2.04");
}

#[test]
fn separate_response_is_awaited_for_exchange_lifetime_after_an_empty_ack() {
    let mut h = setup_with(settings());
    let mark = h.mark();
    let r = one_req(h.command(
        0,
        TOPIC,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#,
    ));
    let m = r.msg();
    let mut e = Vec::new();
    MessageWriter::new(&mut e, MsgType::Ack, codes::EMPTY, m.mid, &[]).finish();
    h.datagram(0, dev(), &e);
    h.advance(200_000);
    assert_eq!(
        h.published_since(mark).len(),
        1,
        "only the ack event so far"
    );
    h.advance(47_000);
    let p = h.published_since(mark);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].1["msgType"], "coap_timeout");
}

/// A CON notification on `token` with `observe` (None: no Observe option) and
/// Block2 0/1/1024 over `data`.
fn block_notification(token: &[u8], mid: u16, observe: Option<u32>, data: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    let mut w = MessageWriter::new(&mut n, MsgType::Con, codes::CONTENT, mid, token);
    if let Some(o) = observe {
        w.option_uint(opt::OBSERVE, o);
    }
    w.option_uint(opt::CONTENT_FORMAT, fmt_id::OPAQUE as u32)
        .option_uint(opt::BLOCK2, blk(0, true, 6).encode());
    w.payload(&data[..1024]);
    n
}

#[test]
fn a_final_block2_notification_without_observe_has_no_seqnum() {
    let mut h = setup_with(settings());
    let req = one_req(h.command(
        0,
        TOPIC,
        r#"{"reqID":4,"msgType":"observe","data":{"path":"/5/0/0"}}"#,
    ));
    let token = req.msg().token.to_vec();
    h.datagram(
        0,
        dev(),
        &ack(
            &req,
            codes::CONTENT,
            &[(opt::OBSERVE, 1), (opt::CONTENT_FORMAT, 42)],
            b"x",
        ),
    );
    // The observation's last notification: no Observe option, in blocks.
    let data = pattern(3000);
    let out = h.exchange(0, dev(), &block_notification(&token, 700, None, &data));
    assert_eq!(out.len(), 2, "ACK and the first follow-up: {out:?}");
    assert_eq!(
        h.serve_block2(0, out[1].clone(), &data, 1, 42, None).len(),
        2
    );
    let notes = h.published("up/notify");
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].1.get("seqNum").is_none(),
        "no made-up seqNum: {:?}",
        notes[0].1
    );
    let v = notes[0].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
        data
    );
    // The observation ended: a further notification on its token is refused.
    let mut n = Vec::new();
    let mut w = MessageWriter::new(&mut n, MsgType::Con, codes::CONTENT, 701, &token);
    w.option_uint(opt::OBSERVE, 9);
    w.payload(b"late");
    let out = h.exchange(0, dev(), &n);
    assert_eq!(out[0].msg().mtype, MsgType::Rst);
}

#[test]
fn an_etag_change_mid_fetch_restarts_it_then_ends_it() {
    let mut h = setup_with(settings());
    let mark = h.mark();
    let first = read_5_0_0(&mut h, 5);
    let old = pattern(2500);
    let new: Vec<u8> = pattern(2100).iter().map(|b| b ^ 0x55).collect();
    let reply = |req: &Reply, etag: &[u8], num: u32, data: &[u8]| {
        let start = num as usize * 1024;
        let end = (start + 1024).min(data.len());
        let m = req.msg();
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Ack, codes::CONTENT, m.mid, m.token);
        w.option(opt::ETAG, etag)
            .option_uint(opt::CONTENT_FORMAT, 42)
            .option_uint(opt::BLOCK2, blk(num, end < data.len(), 6).encode());
        w.payload(&data[start..end]);
        buf
    };
    let g1 = one_req(h.exchange(0, dev(), &reply(&first, b"A", 0, &old)));
    // Block 1 comes from a new representation: the fetch starts over at block 0.
    let g0 = one_req(h.exchange(0, dev(), &reply(&g1, b"B", 1, &new)));
    let m = g0.msg();
    assert_eq!(m.code, codes::GET);
    assert_eq!(block(&m, opt::BLOCK2).unwrap().num, 0);
    assert!(h.published_since(mark).is_empty());
    let g1 = one_req(h.exchange(0, dev(), &reply(&g0, b"B", 0, &new)));
    let g2 = one_req(h.exchange(0, dev(), &reply(&g1, b"B", 1, &new)));
    assert!(h.exchange(0, dev(), &reply(&g2, b"B", 2, &new)).is_empty());
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    let v = p[0].1["data"]["content"][0]["value"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
        new,
        "the new representation, whole"
    );
    // A representation that keeps changing: an error after two restarts.
    let mark = h.mark();
    let mut req = read_5_0_0(&mut h, 6);
    for round in 0..3u8 {
        let g1 = one_req(h.exchange(0, dev(), &reply(&req, &[round], 0, &old)));
        let out = h.exchange(0, dev(), &reply(&g1, &[round + 100], 1, &old));
        if round < 2 {
            req = one_req(out);
        } else {
            assert!(out.is_empty());
        }
    }
    let p = h.published_since(mark);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1["reqID"], 6);
    assert_eq!(p[0].1["data"]["code"], "4.08");
    assert!(p[0].1["data"]["error"].as_str().unwrap().contains("ETag"));
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
}

/// The fetch of a notification's remaining blocks is no command: whether the device
/// leaves it unanswered, acknowledges it empty, resets it or de-registers meanwhile,
/// nothing more is published for the observe (whose final message came long before).
#[test]
fn a_block2_notification_left_unfinished_publishes_nothing() {
    let mut h = Harness::new(1, settings());
    let register = Req::new(codes::POST, "/rd", 1)
        .q("ep=dev1")
        .q("lt=3000")
        .body(b"</5/0>");
    let r = h.one(0, dev(), &register.bytes());
    assert_eq!(r.code(), codes::CREATED);
    let loc = r.location();
    let req = one_req(h.command(
        0,
        TOPIC,
        r#"{"reqID":4,"msgType":"observe","data":{"path":"/5/0/0"}}"#,
    ));
    let token = req.msg().token.to_vec();
    let opts = [
        (opt::OBSERVE, 1),
        (opt::CONTENT_FORMAT, fmt_id::OPAQUE as u32),
    ];
    h.datagram(0, dev(), &ack(&req, codes::CONTENT, &opts, b"x"));
    let mark = h.mark();
    let data = pattern(3000);
    // Silence: the follow-up's retransmissions run out.
    let out = h.exchange(0, dev(), &block_notification(&token, 700, Some(2), &data));
    assert_eq!(out.len(), 2, "ACK and the follow-up");
    h.advance(200_000);
    // An empty ACK, then silence for EXCHANGE_LIFETIME.
    let out = h.exchange(0, dev(), &block_notification(&token, 701, Some(3), &data));
    let g = out[1].msg();
    let mut e = Vec::new();
    MessageWriter::new(&mut e, MsgType::Ack, codes::EMPTY, g.mid, &[]).finish();
    h.datagram(0, dev(), &e);
    h.advance(300_000);
    // A Reset.
    let out = h.exchange(0, dev(), &block_notification(&token, 702, Some(4), &data));
    let g = out[1].msg();
    let mut rst = Vec::new();
    MessageWriter::new(&mut rst, MsgType::Rst, codes::EMPTY, g.mid, &[]).finish();
    h.datagram(0, dev(), &rst);
    // A de-registration while a follow-up waits.
    let out = h.exchange(0, dev(), &block_notification(&token, 703, Some(5), &data));
    assert_eq!(out.len(), 2);
    let bye = Req::new(codes::DELETE, &format!("/rd/{loc}"), 900).bytes();
    assert_eq!(h.one(0, dev(), &bye).code(), codes::DELETED);
    h.advance(400_000);
    // Nothing but the end of the registration.
    let p = h.published_since(mark);
    let kinds: Vec<_> = p
        .iter()
        .map(|(_, v)| v["msgType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["deregister"], "{p:?}");
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
    assert_eq!(h.cores[0].stats.block_aborts, 3);
}
