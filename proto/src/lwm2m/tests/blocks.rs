//! Block-wise transfer (RFC 7959) for the tests: Block options, bodies cut into
//! Block1 requests, and the exchanges that recur, driven through the harness: a
//! device sending Block1 blocks, answering the gateway's Block1 and Block2
//! requests, and fetching a Block2 reply of the gateway's.

use super::harness::{settings, Harness, Reply, Req};
use crate::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use crate::lwm2m::CoreSettings;
use std::net::SocketAddr;

pub(super) fn blk(num: u32, more: bool, szx: u8) -> BlockOpt {
    BlockOpt { num, more, szx }
}

/// A Block option's value, minimally encoded.
pub(super) fn enc(b: BlockOpt) -> Vec<u8> {
    let v = b.encode();
    v.to_be_bytes()[(v.leading_zeros() / 8) as usize..].to_vec()
}

/// Option `n` (Block1 or Block2) of `m`.
pub(super) fn block(m: &Message<'_>, n: u16) -> Option<BlockOpt> {
    m.option(n).and_then(BlockOpt::decode)
}

/// Settings with `szx` as the block size exponent (16 << szx bytes).
pub(super) fn with_szx(szx: u8) -> CoreSettings {
    CoreSettings {
        block_szx: szx,
        ..settings()
    }
}

/// An object list of `n` links, long enough to need several blocks.
pub(super) fn long_list(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("</{}/{}>", 3300 + i % 50, i / 50))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// `body` cut into blocks of `16 << szx` bytes, each the payload of the request
/// `req(index, its Block option)` builds (which adds the option as it likes).
pub(super) fn in_block1(
    body: &[u8],
    szx: u8,
    mut req: impl FnMut(usize, BlockOpt) -> Req,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = body.chunks(16 << szx).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let b = blk(i as u32, i + 1 < chunks.len(), szx);
            req(i, b).body(c).bytes()
        })
        .collect()
}

/// A Register of "big" whose object list goes in Block1 blocks of `16 << szx`.
pub(super) fn register_blocks(list: &[u8], szx: u8, first_mid: u16) -> Vec<Vec<u8>> {
    register_blocks_as("big", list, szx, first_mid)
}

/// A Register of `ep` whose object list goes in Block1 blocks of `16 << szx`, with
/// message IDs from `first_mid` on.
pub(super) fn register_blocks_as(ep: &str, list: &[u8], szx: u8, first_mid: u16) -> Vec<Vec<u8>> {
    in_block1(list, szx, |i, b| {
        let mut r = Req::new(codes::POST, "/rd", first_mid + i as u16)
            .q(&format!("ep={ep}"))
            .q("lt=300")
            .q("lwm2m=1.1")
            .opt(opt::BLOCK1, &enc(b));
        r.token = vec![0xbb, i as u8];
        r
    })
}

/// The device's piggybacked answer to `req` with uint options (in any order).
pub(super) fn ack(req: &Reply, code: u8, opts: &[(u16, u32)], payload: &[u8]) -> Vec<u8> {
    let m = req.msg();
    let mut o = opts.to_vec();
    o.sort_by_key(|x| x.0);
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, m.mid, m.token);
    for (n, v) in o {
        w.option_uint(n, v);
    }
    w.payload(payload);
    buf
}

/// The device's 2.05 to `req` carrying block `b` with Content-Format `cf`.
pub(super) fn block2_ack(req: &Reply, b: BlockOpt, cf: u16, payload: &[u8]) -> Vec<u8> {
    let opts = [(opt::CONTENT_FORMAT, cf as u32), (opt::BLOCK2, b.encode())];
    ack(req, codes::CONTENT, &opts, payload)
}

/// The one datagram in `rs`.
pub(super) fn one_req(rs: Vec<Reply>) -> Reply {
    assert_eq!(rs.len(), 1, "expected one datagram, got {rs:?}");
    rs.into_iter().next().unwrap()
}

impl Harness {
    /// Sends `blocks` from `peer`, one reply each; returns the replies.
    pub(super) fn send_blocks(
        &mut self,
        shard: usize,
        peer: SocketAddr,
        blocks: &[Vec<u8>],
    ) -> Vec<Reply> {
        blocks.iter().map(|b| self.one(shard, peer, b)).collect()
    }

    /// Sends `blocks` from `peer` while each is answered 2.31 Continue; returns the
    /// first other answer and its block's index (None: every block continued).
    pub(super) fn send_until_refused(
        &mut self,
        shard: usize,
        peer: SocketAddr,
        blocks: &[Vec<u8>],
    ) -> Option<(usize, Reply)> {
        blocks.iter().enumerate().find_map(|(i, b)| {
            let r = self.one(shard, peer, b);
            (r.code() != codes::CONTINUE).then_some((i, r))
        })
    }

    /// As the device, answers the gateway's Block1 request `req` and the blocks that
    /// follow it: 2.31 to each but the last, `last` to the last. Checks the blocks
    /// come in order, whole but the last, without Observe. Returns the body (after
    /// `body`, what came before) and the block requests seen.
    pub(super) fn receive_block1(
        &mut self,
        shard: usize,
        mut req: Reply,
        last: u8,
        mut body: Vec<u8>,
    ) -> (Vec<u8>, Vec<Reply>) {
        let mut seen = Vec::new();
        loop {
            let m = req.msg();
            let b = block(&m, opt::BLOCK1).expect("a Block1 request");
            assert_eq!(b.num as usize * b.size(), body.len(), "blocks in order");
            assert!(m.option(opt::OBSERVE).is_none());
            body.extend_from_slice(m.payload);
            seen.push(req.clone());
            let answer = |code| ack(&req, code, &[(opt::BLOCK1, b.encode())], b"");
            if !b.more {
                let out = self.exchange(shard, req.to, &answer(last));
                assert!(out.is_empty(), "nothing after the last block: {out:?}");
                return (body, seen);
            }
            assert_eq!(
                m.payload.len(),
                b.size(),
                "a block before the last is whole"
            );
            let next = self.exchange(shard, req.to, &answer(codes::CONTINUE));
            req = one_req(next);
        }
    }

    /// As the device, answers the gateway's request `req` for block `from` of `body`,
    /// and the requests that follow, with 1024-byte Block2 blocks (Content-Format
    /// `cf`; `observe` with block 0), until the last block, which must end the
    /// transfer, or until the gateway asks no more. Returns the requests answered.
    pub(super) fn serve_block2(
        &mut self,
        shard: usize,
        mut req: Reply,
        body: &[u8],
        from: u32,
        cf: u16,
        observe: Option<u32>,
    ) -> Vec<Reply> {
        let mut asked = Vec::new();
        let mut num = from;
        loop {
            let start = num as usize * 1024;
            let end = (start + 1024).min(body.len());
            let more = end < body.len();
            let b = blk(num, more, 6);
            let mut opts = vec![(opt::CONTENT_FORMAT, cf as u32), (opt::BLOCK2, b.encode())];
            if let (0, Some(o)) = (num, observe) {
                opts.push((opt::OBSERVE, o));
            }
            let a = ack(&req, codes::CONTENT, &opts, &body[start..end]);
            let out = self.exchange(shard, req.to, &a);
            asked.push(req);
            if !more {
                assert!(out.is_empty(), "nothing after the last block: {out:?}");
                return asked;
            }
            if out.is_empty() {
                return asked;
            }
            req = one_req(out);
            num += 1;
        }
    }

    /// As the device at `peer`, fetches the rest of the gateway's Block2 reply
    /// `first` in blocks of `16 << szx`, each asked for by the request that
    /// `request(its Block2 option)` builds, until a block without More. Checks the
    /// blocks come in order, whole but the last. Returns the whole body and the
    /// replies after `first`.
    pub(super) fn fetch_block2(
        &mut self,
        shard: usize,
        peer: SocketAddr,
        first: &Reply,
        szx: u8,
        mut request: impl FnMut(BlockOpt) -> Vec<u8>,
    ) -> (Vec<u8>, Vec<Reply>) {
        let mut body = first.msg().payload.to_vec();
        let mut replies = Vec::new();
        loop {
            let num = (body.len() / (16 << szx)) as u32;
            let r = self.one(shard, peer, &request(blk(num, false, szx)));
            let m = r.msg();
            let b = block(&m, opt::BLOCK2).expect("Block2 on every block");
            assert_eq!(b.num as usize * b.size(), body.len(), "blocks in order");
            body.extend_from_slice(m.payload);
            if !b.more {
                replies.push(r);
                return (body, replies);
            }
            assert_eq!(
                m.payload.len(),
                b.size(),
                "a block before the last is whole"
            );
            replies.push(r);
        }
    }
}
