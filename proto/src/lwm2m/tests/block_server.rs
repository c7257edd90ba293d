//! The gateway as block-wise CoAP server (RFC 7959) on a virtual clock: Block2 for
//! our own responses (block size from the configuration and from the request,
//! follow-ups served from the stored copy, loss, expiry, anti-amplification),
//! Block1 bodies under a flood of spoofed first blocks, the caps per device and
//! per shard, and the final Block1 option of Registers held for authentication.

use super::blocks::*;
use super::harness::*;
use crate::coap::{codes, opt, BlockOpt, Message, MsgType};
use crate::lwm2m::block_server::MAX_PARTIALS;
use crate::lwm2m::blockwise::BlockLimit;
use std::net::SocketAddr;

fn block2(m: &Message<'_>) -> Option<BlockOpt> {
    block(m, opt::BLOCK2)
}

/// The diagnostic an Update with `lt=<v>` gets.
fn lt_text(v: &str) -> String {
    format!("lifetime lt={v:?} is not a non-negative integer")
}

/// A registered device at `peer`: its location.
fn register(h: &mut Harness, peer: SocketAddr, ep: &str) -> String {
    let r = h.one(0, peer, &Req::register(ep, 1).bytes());
    assert_eq!(r.code(), codes::CREATED);
    r.location()
}

/// An Update with an invalid lifetime, as block `b2` asks (None: the first request).
fn bad_update(loc: &str, mid: u16, lt: &str, b2: Option<BlockOpt>) -> Vec<u8> {
    let mut r = Req::update(loc, mid).q(&format!("lt={lt}"));
    r.token = vec![0xe0, mid as u8];
    if let Some(b) = b2 {
        r = r.opt(opt::BLOCK2, &enc(b));
    }
    r.bytes()
}

/// Fetches the rest of a Block2 response to a bad Update, block by block at
/// `szx`, starting after `first`; returns the whole text.
fn fetch_rest(
    h: &mut Harness,
    peer: SocketAddr,
    loc: &str,
    lt: &str,
    first: &Reply,
    szx: u8,
) -> String {
    let m = first.msg();
    let b0 = block2(&m).expect("Block2 on the first reply");
    assert_eq!((b0.num, b0.more), (0, true));
    let total = m.option_uint(opt::SIZE2).expect("Size2 with block 0") as usize;
    let mut mid = 500;
    let (body, replies) = h.fetch_block2(0, peer, first, szx, |b| {
        mid += 1;
        bad_update(loc, mid, lt, Some(b))
    });
    for (mid, r) in (501..).zip(&replies) {
        let m = r.msg();
        assert_eq!(m.code, codes::BAD_REQUEST);
        assert_eq!((m.mtype, m.mid), (MsgType::Ack, mid));
        assert_eq!(m.token, &[0xe0, mid as u8], "the follow-up's token");
    }
    assert_eq!(body.len(), total);
    String::from_utf8(body).unwrap()
}

#[test]
fn error_reply_longer_than_a_configured_block_goes_out_in_block2() {
    let mut h = Harness::new(1, with_szx(0));
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let updates = h.cores[0].stats.updates;
    let text = lt_text("notanumber");
    assert!(text.len() > 32);
    let r = h.one(0, dev, &bad_update(&loc, 10, "notanumber", None));
    let m = r.msg();
    assert_eq!(
        (m.code, m.mtype, m.mid),
        (codes::BAD_REQUEST, MsgType::Ack, 10)
    );
    assert_eq!(block2(&m), Some(blk(0, true, 0)), "block 0 of 16 bytes");
    assert_eq!(m.option_uint(opt::SIZE2), Some(text.len() as u32));
    assert_eq!(m.payload, &text.as_bytes()[..16]);
    assert_eq!(h.cores[0].blockwise_stored_replies(), 1);
    assert!(h.cores[0].blockwise_held_bytes() >= text.len() as u64);
    let whole = fetch_rest(&mut h, dev, &loc, "notanumber", &r, 0);
    assert_eq!(whole, text);
    // The follow-ups never executed the Update again.
    assert_eq!(h.cores[0].stats.updates, updates);
    assert!(h.published("up/update").is_empty());
    // A block beyond the end: 4.02.
    let r = h.one(
        0,
        dev,
        &bad_update(&loc, 90, "notanumber", Some(blk(40, false, 0))),
    );
    assert_eq!(r.code(), codes::BAD_OPTION);
}

#[test]
fn block_size_from_the_request_and_follow_ups_at_another_size() {
    // Configured 1024, the device asks for 16 in its first request (early
    // negotiation, RFC 7959 §2.4).
    let mut h = Harness::new(1, settings());
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let lt = "a-rather-long-invalid-lifetime-value";
    let text = lt_text(lt);
    let r = h.one(0, dev, &bad_update(&loc, 10, lt, Some(blk(0, false, 0))));
    let m = r.msg();
    assert_eq!(block2(&m), Some(blk(0, true, 0)));
    assert_eq!(m.payload.len(), 16);
    // The client asks for block 1 of 32 bytes: bytes 32..64, our block 2 of 16.
    let r = h.one(0, dev, &bad_update(&loc, 11, lt, Some(blk(1, false, 1))));
    let m = r.msg();
    assert_eq!(block2(&m), Some(blk(2, true, 0)));
    assert_eq!(m.payload, &text.as_bytes()[32..48]);
    assert!(m.option(opt::SIZE2).is_none(), "Size2 with block 0 only");
    // Without early negotiation the configured 1024 holds: one message.
    let r = h.one(0, dev, &bad_update(&loc, 12, lt, None));
    assert!(block2(&r.msg()).is_none());
    assert_eq!(r.msg().payload, text.as_bytes());
    // The device asks for more than configured: the configured size.
    let mut h = Harness::new(1, with_szx(1));
    let loc = register(&mut h, dev, "dev1");
    let r = h.one(0, dev, &bad_update(&loc, 10, lt, Some(blk(0, false, 6))));
    assert_eq!(block2(&r.msg()), Some(blk(0, true, 1)));
    assert_eq!(fetch_rest(&mut h, dev, &loc, lt, &r, 1), text);
}

#[test]
fn lost_follow_ups_and_retransmissions_get_the_same_block() {
    let mut h = Harness::new(1, with_szx(0));
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let first = bad_update(&loc, 10, "x-y-z-w", None);
    let r0 = h.one(0, dev, &first);
    // Our block 0 is lost: the device retransmits its request (same MID) and
    // gets the identical datagram.
    let again = h.one(0, dev, &first);
    assert_eq!(again.bytes, r0.bytes);
    // A follow-up whose answer is lost is retransmitted and answered again.
    let f1 = bad_update(&loc, 11, "x-y-z-w", Some(blk(1, false, 0)));
    let a = h.one(0, dev, &f1);
    let b = h.one(0, dev, &f1);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(block2(&a.msg()), Some(blk(1, true, 0)));
    assert_eq!(
        fetch_rest(&mut h, dev, &loc, "x-y-z-w", &r0, 0),
        lt_text("x-y-z-w")
    );
    // The reply cache still works for the device's next requests.
    let ok = Req::update(&loc, 20).bytes();
    assert_eq!(h.one(0, dev, &ok).code(), codes::CHANGED);
    let dups = h.cores[0].stats.duplicates;
    assert_eq!(h.one(0, dev, &ok).code(), codes::CHANGED);
    assert_eq!(h.cores[0].stats.duplicates, dups + 1);
    assert_eq!(
        h.published("up/update").len(),
        1,
        "the duplicate published nothing"
    );
    // A later block of a response that was never block-wise: 4.00, not executed.
    let follow = Req::update(&loc, 21).opt(opt::BLOCK2, &enc(blk(1, false, 0)));
    let r = h.one(0, dev, &follow.bytes());
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert_eq!(h.published("up/update").len(), 1);
}

#[test]
fn stored_response_expires_after_exchange_lifetime() {
    let mut h = Harness::new(1, with_szx(0));
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let held0 = h.cores[0].blockwise_held_bytes();
    h.one(0, dev, &bad_update(&loc, 10, "nope-nope", None));
    assert!(h.cores[0].blockwise_held_bytes() > held0);
    // Each follow-up keeps it alive.
    h.advance(200_000);
    let r = h.one(
        0,
        dev,
        &bad_update(&loc, 11, "nope-nope", Some(blk(1, false, 0))),
    );
    assert_eq!(block2(&r.msg()).unwrap().num, 1);
    h.advance(200_000);
    assert_eq!(h.cores[0].blockwise_stored_replies(), 1);
    h.advance(50_000);
    assert_eq!(h.cores[0].blockwise_stored_replies(), 0);
    assert_eq!(h.cores[0].blockwise_held_bytes(), held0);
    let follow = bad_update(&loc, 12, "nope-nope", Some(blk(2, false, 0)));
    let r = h.one(0, dev, &follow);
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert!(block2(&r.msg()).is_none());
    assert!(r.bytes.len() <= follow.len());
    assert!(r.msg().payload.len() <= 16);
}

#[test]
fn unproven_addresses_get_a_clipped_diagnostic_and_nothing_is_stored() {
    let mut h = Harness::new(1, with_szx(0));
    // A Register from an address with no registration: at most the request's
    // size and one block, no Block2, no state.
    let req = Req::register("x", 1).q("lt=not-a-number-at-all").bytes();
    let r = h.one(0, addr(7, 7), &req);
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert!(block2(&r.msg()).is_none());
    assert!(r.bytes.len() <= req.len());
    assert_eq!(
        r.msg().payload,
        &lt_text("not-a-number-at-all").as_bytes()[..16]
    );
    assert_eq!(h.cores[0].blockwise_stored_replies(), 0);
    // A follow-up from it is not a Register: 4.00, nothing registered.
    let follow = Req::register("x", 2)
        .q("lt=not-a-number-at-all")
        .opt(opt::BLOCK2, &enc(blk(1, false, 0)))
        .bytes();
    assert_eq!(h.one(0, addr(7, 7), &follow).code(), codes::BAD_REQUEST);
    assert_eq!(h.endpoints(), 0);
    // A Block1 Register with a bad object list: the reply is bounded by the
    // final block's datagram, not by the reassembled body.
    let list = {
        let mut l = b"</1/0>,".repeat(40);
        l.extend_from_slice(b"bad-entry-without-brackets");
        l
    };
    let blocks = register_blocks(&list, 2, 30);
    let r = h.send_blocks(0, addr(7, 8), &blocks).pop().unwrap();
    assert_eq!(r.code(), codes::BAD_REQUEST);
    assert!(r.bytes.len() <= blocks.last().unwrap().len());
    assert!(block2(&r.msg()).is_none());
}

#[test]
fn block1_update_with_an_error_answered_in_block2_and_repeated_for_a_retransmission() {
    let mut h = Harness::new(1, with_szx(0));
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    // An Update whose object list (sent in 16-byte blocks) has a bad entry.
    let mut list = b"</1/0>,</3/0>,".to_vec();
    list.extend_from_slice(b"not-a-link-at-all-and-quite-long");
    let blocks = in_block1(&list, 0, |i, b| {
        Req::update(&loc, 40 + i as u16).opt(opt::BLOCK1, &enc(b))
    });
    let r = h.send_blocks(0, dev, &blocks).pop().unwrap();
    let m = r.msg();
    assert_eq!(m.code, codes::BAD_REQUEST);
    let b = block2(&m).expect("a registered device gets the whole diagnostic in blocks");
    assert_eq!((b.num, b.more, b.size()), (0, true, 16));
    let total = m.option_uint(opt::SIZE2).unwrap() as usize;
    assert!(total > 32);
    // The final block retransmitted (our answer lost): block 0 again.
    let again = h.one(0, dev, blocks.last().unwrap());
    assert_eq!(again.bytes, r.bytes);
    // The rest follows with POSTs carrying Block2 (RFC 7959 §3.3).
    let (body, _) = h.fetch_block2(0, dev, &r, 0, |b| {
        let f = Req::update(&loc, 80 + b.num as u16).opt(opt::BLOCK2, &enc(b));
        f.bytes()
    });
    assert_eq!(body.len(), total);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("not-a-link-at-all-and-quite-long"), "{text}");
    assert!(h.published("up/update").is_empty());
}

#[test]
fn disabled_blockwise_sends_no_block2() {
    let mut s = with_szx(0);
    s.block_enable = false;
    let mut h = Harness::new(1, s);
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let req = bad_update(&loc, 10, "notanumber", Some(blk(0, false, 0)));
    let r = h.one(0, dev, &req);
    assert!(block2(&r.msg()).is_none());
    // As before block-wise responses existed: clipped to the request's size.
    let text = lt_text("notanumber");
    assert!(text.as_bytes().starts_with(r.msg().payload));
    assert!(r.msg().payload.len() > 16);
    assert!(r.bytes.len() <= req.len());
    assert_eq!(h.cores[0].blockwise_stored_replies(), 0);
}

#[test]
fn a_stored_response_is_bounded_by_the_device_cap() {
    let mut s = with_szx(0);
    s.block_device_cap = 40;
    let mut h = Harness::new(1, s);
    let dev = addr(1, 5000);
    let loc = register(&mut h, dev, "dev1");
    let r = h.one(0, dev, &bad_update(&loc, 10, "notanumber", None));
    // Not stored: one block of the text, no Block2; counted under its reason.
    assert!(block2(&r.msg()).is_none());
    assert_eq!(r.msg().payload.len(), 16);
    assert_eq!(h.cores[0].blockwise_stored_replies(), 0);
    let st = h.cores[0].stats;
    assert_eq!(st.block_limits[BlockLimit::DeviceCap.index()], 1);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
}

#[test]
fn held_registers_keep_their_own_final_block1() {
    let s = settings();
    s.auth.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut h = Harness::new(1, s);
    let a = register_blocks_as("dev-a", &long_list(30), 2, 10);
    let b = register_blocks_as("dev-b", &long_list(45), 2, 100);
    for x in &a {
        assert!(h.exchange(0, addr(2, 1), x).len() <= 1);
    }
    for x in &b {
        assert!(h.exchange(0, addr(3, 1), x).len() <= 1);
    }
    assert_eq!(h.auth.len(), 2, "both held for the authentication server");
    // The final block retransmitted while held: dropped, not 4.08.
    assert!(h.exchange(0, addr(2, 1), a.last().unwrap()).is_empty());
    let (ta, tb) = (h.auth[0].1, h.auth[1].1);
    // Answered in the other order: each 2.01 names its own final block.
    for (t, peer, blocks) in [(tb, addr(3, 1), &b), (ta, addr(2, 1), &a)] {
        let r = h.auth_answer(0, t, true);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to, peer);
        let m = r[0].msg();
        assert_eq!(m.code, codes::CREATED);
        let last = Message::parse(blocks.last().unwrap()).unwrap();
        assert_eq!(m.mid, last.mid);
        let b1 = m.option(opt::BLOCK1).and_then(BlockOpt::decode).unwrap();
        assert_eq!((b1.num as usize, b1.more), (blocks.len() - 1, false));
    }
}

/// Block 0 of a Register body from `peer`, with a query of about 1.2 KB.
fn spoofed_block0(i: usize) -> Vec<u8> {
    Req::new(codes::POST, "/rd", i as u16)
        .q(&format!("ep=spoof{i}"))
        .q(&format!("pad={}", "p".repeat(1200)))
        .opt(opt::BLOCK1, &enc(blk(0, true, 0)))
        .body(&[b'<'; 16])
        .bytes()
}

fn spoofer(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000))
}

#[test]
fn a_flood_of_first_blocks_is_bounded_and_a_real_device_still_registers() {
    let mut h = Harness::new(1, settings());
    let n = MAX_PARTIALS + 500;
    for i in 0..n {
        let r = h.one(0, spoofer(i), &spoofed_block0(i));
        assert_eq!(r.code(), codes::CONTINUE);
    }
    let core = &h.cores[0];
    assert_eq!(core.blockwise_partials(), MAX_PARTIALS);
    // Keys count: each partial holds its ~1.2 KB query and 16 body bytes.
    let held = core.blockwise_held_bytes();
    assert!(held > MAX_PARTIALS as u64 * 1200, "{held}");
    assert!(held < MAX_PARTIALS as u64 * 1300, "{held}");
    assert_eq!(core.stats.block_limits[BlockLimit::Partials.index()], 500);
    // A real device: its first two blocks, then more flood, then the rest.
    let blocks = register_blocks(&long_list(60), 2, 7000);
    let dev = addr(1, 5000);
    assert_eq!(h.one(0, dev, &blocks[0]).code(), codes::CONTINUE);
    assert_eq!(h.one(0, dev, &blocks[1]).code(), codes::CONTINUE);
    for i in n..n + 2 * MAX_PARTIALS {
        h.one(0, spoofer(i), &spoofed_block0(i));
    }
    assert_eq!(h.cores[0].blockwise_partials(), MAX_PARTIALS);
    let last = h.send_blocks(0, dev, &blocks[2..]).pop().unwrap();
    assert_eq!(last.code(), codes::CREATED);
    assert_eq!(h.endpoints(), 1);
    // Everything left is dropped after exchange_lifetime.
    h.advance(300_000);
    assert_eq!(h.cores[0].blockwise_partials(), 0);
    assert_eq!(h.cores[0].blockwise_held_bytes(), 0);
}

#[test]
fn first_blocks_are_admitted_by_route_and_max_conn_rate() {
    let mut s = settings();
    s.max_conn_rate = 2;
    let mut h = Harness::new(1, s);
    // Only POST /rd and POST /rd/<known location> may send bodies.
    let other = Req::new(codes::POST, "/x", 1).opt(opt::BLOCK1, &enc(blk(0, true, 0)));
    let r = h.one(0, addr(9, 1), &other.body(&[0; 16]).bytes());
    assert_eq!(r.code(), codes::NOT_FOUND);
    let upd = Req::update("abcdef", 2)
        .opt(opt::BLOCK1, &enc(blk(0, true, 0)))
        .body(&[0; 16]);
    assert_eq!(h.one(0, addr(9, 1), &upd.bytes()).code(), codes::NOT_FOUND);
    assert_eq!(h.cores[0].blockwise_partials(), 0);
    // A block-wise Register costs one token in all (block 0 hands its token to
    // the Register): with a bucket of two, it and one more Register pass.
    let blocks = register_blocks(&long_list(20), 2, 10);
    let last = h.send_blocks(0, addr(1, 1), &blocks).pop().unwrap();
    assert_eq!(last.code(), codes::CREATED);
    assert_eq!(
        h.one(0, addr(1, 2), &Req::register("b", 1).bytes()).code(),
        codes::CREATED
    );
    // The bucket is empty: a new body's first block is refused 5.03 with Max-Age.
    let b = register_blocks_as("c", &long_list(20), 2, 50);
    let r = h.one(0, addr(1, 3), &b[0]);
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    assert!(r.msg().option_uint(opt::MAX_AGE).is_some());
    assert_eq!(h.cores[0].blockwise_partials(), 0);
    assert_eq!(h.cores[0].stats.block_limits[BlockLimit::Rate.index()], 1);
    h.advance(1_000);
    assert_eq!(h.one(0, addr(1, 3), &b[0]).code(), codes::CONTINUE);
}

#[test]
fn server_side_caps_per_device_and_per_shard() {
    // Per device: two bodies of one address together beyond the cap.
    let mut s = settings();
    s.block_device_cap = 600;
    let mut h = Harness::new(1, s);
    let a = register_blocks_as("one", &long_list(40), 2, 10);
    let b = register_blocks_as("two", &long_list(40), 2, 100);
    let dev = addr(1, 5000);
    for r in h.send_blocks(0, dev, &a[..3]) {
        assert_eq!(r.code(), codes::CONTINUE);
    }
    let (i, r) = h
        .send_until_refused(0, dev, &b)
        .expect("the device cap refuses a block");
    assert!(i > 0);
    assert_eq!(r.code(), codes::REQUEST_ENTITY_TOO_LARGE);
    assert!(h.cores[0].blockwise_held_bytes() <= 600);
    assert_eq!(
        h.cores[0].stats.block_limits[BlockLimit::DeviceCap.index()],
        1
    );
    // The first body is intact and completes.
    let last = h.send_blocks(0, dev, &a[3..]).pop().unwrap();
    assert_eq!(last.code(), codes::CREATED);

    // Per shard: bodies of several devices together beyond the cap.
    let mut s = settings();
    s.block_shard_cap = 1000;
    let mut h = Harness::new(1, s);
    let r = (0..10u8)
        .find_map(|d| {
            let blocks = register_blocks_as(&format!("d{d}"), &long_list(40), 2, 10);
            h.send_until_refused(0, addr(20 + d, 1), &blocks[..4])
        })
        .map(|(_, r)| r)
        .expect("the shard cap refuses a block");
    assert_eq!(r.code(), codes::SERVICE_UNAVAILABLE);
    assert!(r.msg().option_uint(opt::MAX_AGE).is_some());
    assert!(h.cores[0].blockwise_held_bytes() <= 1000);
    let st = h.cores[0].stats;
    assert_eq!(st.block_limits[BlockLimit::ShardCap.index()], 1);
    assert_eq!(st.block_limits[BlockLimit::DeviceCap.index()], 0);
    assert!(st.block_aborts >= 1);
}
