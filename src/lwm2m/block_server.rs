//! Block-wise transfer (RFC 7959) with the gateway as CoAP server: request bodies
//! devices send in Block1 blocks, and our responses too large for one block sent
//! in Block2 blocks.
//!
//! ```text
//! Block1 (Register/Update bodies):
//!   POST /rd Block1 0/1 ──▶ new partial body per (peer, method, URI): only for
//!                           POST /rd (takes a max_conn_rate token) and POST /rd/<a
//!                           location the directory knows>; others 4.04/4.05 at once
//!                       ◀── 2.31 Block1 0/1
//!   POST /rd Block1 n/0 ──▶ handled as the whole request (2.01 carries Block1 n/0)
//! Block2 (a response of ours, payload > min(max_block_size, the request's Block2)):
//!   ◀── 4.00 Block2 0/1/szx Size2=n   the response is stored (one per peer)
//!   POST /rd/.. Block2 1/0/szx ──▶ ◀── 4.00 Block2 1/..   served from the copy: the
//!                                       request is never executed again
//! ```
//! Bounds: a partial body or stored response counts its request key and payload in
//! the shard's held bytes and against the per-device and per-shard caps; a shard
//! holds at most [`MAX_PARTIALS`] partial bodies (when full, the oldest one still
//! at its first block is evicted, else the new one is refused 5.03); every lookup
//! is a hash lookup. Both expire after `exchange_lifetime` without progress.
//! Anti-amplification: an address that has not proven itself (no registration
//! from it, no DTLS session) gets at most as many bytes as the datagram it sent,
//! and never more than one block: its diagnostic is clipped, nothing is stored.

use super::blockwise::{rebuild, request_key, size_of, BlockLimit, Body, Charge, HeldBytes};
use super::endpoint::Endpoint;
use super::output::Timer;
use super::ShardCore;
use crate::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Partial request bodies one shard holds at most.
pub const MAX_PARTIALS: usize = 1024;

/// Completed bodies remembered (for the Block1 option of their reply).
const MAX_FINALS: usize = 8192;

/// Max-Age of a 5.03 refusing a body for lack of room.
const RETRY_AFTER_S: u32 = 5;

type Key = (SocketAddr, Box<[u8]>);

/// Block-wise state of the gateway as server.
#[derive(Debug, Default)]
pub struct ServerBlocks {
    partial: hashbrown::HashMap<Key, Partial>,
    ids: hashbrown::HashMap<u32, Key>,
    /// Partial bodies by age (ids; some may be gone), for eviction.
    order: VecDeque<u32>,
    /// Stored Block2 responses, one per peer.
    replies: hashbrown::HashMap<SocketAddr, Stored>,
    reply_ids: hashbrown::HashMap<u32, SocketAddr>,
    /// Bytes held per peer (keys, partial bodies, stored responses).
    per_peer: hashbrown::HashMap<SocketAddr, u64>,
    /// Completed bodies by (peer, message ID of the final block).
    finals: hashbrown::HashMap<(SocketAddr, u16), Final>,
    final_order: VecDeque<(SocketAddr, u16, u64)>,
    next_id: u32,
    /// The time of the request being answered.
    pub(super) now: u64,
    /// Bytes held by every block-wise state of the shard, both directions.
    pub held: HeldBytes,
}

#[derive(Debug)]
struct Partial {
    id: u32,
    /// Message ID of block 0 (its retransmission does not restart the body).
    first_mid: u16,
    body: Body,
    /// The key's bytes.
    key: Charge,
    last_ms: u64,
    /// Blocks appended.
    blocks: u32,
    /// A Register body that took a `max_conn_rate` token at block 0.
    took_token: bool,
}

/// A response of ours sent in Block2 blocks.
#[derive(Debug)]
struct Stored {
    id: u32,
    /// The request it answers (method and URI).
    key: Box<[u8]>,
    key_charge: Charge,
    code: u8,
    szx: u8,
    payload: Body,
    last_ms: u64,
}

/// A request body completed from blocks.
#[derive(Debug, Clone, Copy)]
struct Final {
    /// Block1 of its final block (named in the reply, RFC 7959 §2.3).
    block: BlockOpt,
    /// Bytes of the final block's datagram (the anti-amplification bound).
    wire_len: usize,
    at_ms: u64,
    /// The code of an error reply given to it (a retransmission gets it again).
    error: Option<u8>,
}

impl ServerBlocks {
    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn charge_peer(&mut self, peer: SocketAddr, add: usize, sub: usize) {
        let e = self.per_peer.entry(peer).or_insert(0);
        *e = (*e + add as u64).saturating_sub(sub as u64);
        if *e == 0 {
            self.per_peer.remove(&peer);
        }
    }

    /// Bytes the server side holds for `peer`.
    pub(super) fn peer_held(&self, peer: SocketAddr) -> u64 {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    fn insert_partial(&mut self, key: Key, mid: u16, now: u64, took_token: bool) -> u32 {
        let id = self.next_id();
        let p = Partial {
            id,
            first_mid: mid,
            body: Body::new(&self.held),
            key: Charge::new(&self.held, key.1.len()),
            last_ms: now,
            blocks: 0,
            took_token,
        };
        self.charge_peer(key.0, key.1.len(), 0);
        self.ids.insert(id, key.clone());
        self.partial.insert(key, p);
        self.order.push_back(id);
        if self.order.len() > 2 * MAX_PARTIALS {
            // Forget ids of bodies gone or past their first block.
            let (ids, partial) = (&self.ids, &self.partial);
            self.order.retain(|id| {
                ids.get(id)
                    .and_then(|k| partial.get(k))
                    .is_some_and(|p| p.blocks <= 1)
            });
        }
        id
    }

    fn append(&mut self, key: &Key, payload: &[u8], now: u64) {
        if let Some(p) = self.partial.get_mut(key) {
            p.body.extend(payload);
            p.last_ms = now;
            p.blocks += 1;
            self.charge_peer(key.0, payload.len(), 0);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.ids.remove(&p.id);
        self.charge_peer(key.0, 0, p.key.bytes() + p.body.len());
        Some(p)
    }

    /// Evicts the oldest partial body still at its first block. True if one was.
    fn evict_one(&mut self) -> bool {
        while let Some(id) = self.order.pop_front() {
            let Some(key) = self.ids.get(&id).cloned() else {
                continue;
            };
            if self.partial.get(&key).is_some_and(|p| p.blocks <= 1) {
                self.remove(&key);
                return true;
            }
        }
        false
    }

    fn remove_reply(&mut self, peer: SocketAddr) {
        if let Some(s) = self.replies.remove(&peer) {
            self.reply_ids.remove(&s.id);
            self.charge_peer(peer, 0, s.key_charge.bytes() + s.payload.len());
        }
    }

    fn store_reply(
        &mut self,
        peer: SocketAddr,
        key: Box<[u8]>,
        code: u8,
        szx: u8,
        text: &[u8],
        now: u64,
    ) -> u32 {
        self.remove_reply(peer);
        let id = self.next_id();
        let mut payload = Body::new(&self.held);
        payload.extend(text);
        self.charge_peer(peer, key.len() + text.len(), 0);
        let key_charge = Charge::new(&self.held, key.len());
        self.replies.insert(
            peer,
            Stored {
                id,
                key,
                key_charge,
                code,
                szx,
                payload,
                last_ms: now,
            },
        );
        self.reply_ids.insert(id, peer);
        id
    }

    fn record_final(&mut self, peer: SocketAddr, mid: u16, f: Final, lifetime: u64) {
        // Oldest first: drop what is past its lifetime, and beyond the bound.
        while let Some(&(p, m, at)) = self.final_order.front() {
            if self.final_order.len() < MAX_FINALS && at + lifetime > f.at_ms {
                break;
            }
            self.final_order.pop_front();
            if self.finals.get(&(p, m)).is_some_and(|x| x.at_ms == at) {
                self.finals.remove(&(p, m));
            }
        }
        self.finals.insert((peer, mid), f);
        self.final_order.push_back((peer, mid, f.at_ms));
    }

    /// Partial bodies held now.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// Stored Block2 responses held now.
    pub fn replies(&self) -> usize {
        self.replies.len()
    }
}

/// What the server side made of a request's Block1 option.
pub(super) enum Block1In {
    /// No block-wise body: handle the request as it is.
    Whole,
    /// A block was answered (2.31 or an error), or dropped; nothing more to do.
    Answered,
    /// The last block arrived: this datagram is the whole request.
    Complete(Vec<u8>),
}

/// How an error reply of ours carries its diagnostic text.
pub(super) enum Diagnostic {
    /// The first `n` bytes, in one message.
    Plain(usize),
    /// Block 0 (the first `block.size()` bytes) of a stored response of `size2`.
    Block { block: BlockOpt, size2: u32 },
}

/// The first `n` bytes of `text` at most, cut at a character boundary.
fn clip(text: &str, n: usize) -> usize {
    let mut n = text.len().min(n);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Where a block-wise request body may go: Ok(true) for a Register, Ok(false)
/// for an Update of a registration the directory knows, else the code that
/// refuses it at its first block.
fn body_route(s: &ShardCore, msg: &Message<'_>) -> Result<bool, u8> {
    let mut segs = msg.option_values(opt::URI_PATH);
    match (segs.next(), segs.next(), segs.next()) {
        (Some(b"rd"), None, None) if msg.code == codes::POST => Ok(true),
        (Some(b"rd"), Some(loc), None) if msg.code == codes::POST => {
            match Endpoint::parse_location(loc).and_then(|l| s.dir.by_location(l)) {
                Some(_) => Ok(false),
                None => Err(codes::NOT_FOUND),
            }
        }
        (Some(b"rd"), _, None) => Err(codes::METHOD_NOT_ALLOWED),
        _ => Err(codes::NOT_FOUND),
    }
}

impl ShardCore {
    /// Partial request bodies devices are sending to this shard.
    pub fn blockwise_partials(&self) -> usize {
        self.blocks.len()
    }

    /// Responses of ours stored for Block2 follow-ups.
    pub fn blockwise_stored_replies(&self) -> usize {
        self.blocks.replies()
    }

    /// The Block1 option a reply to (`peer`, `mid`) carries: the final block of a
    /// body completed from blocks, when that is the request answered (`at_ms`:
    /// when the reply was made).
    pub(super) fn final_block1(&self, peer: SocketAddr, mid: u16, at_ms: u64) -> Option<BlockOpt> {
        let f = self.blocks.finals.get(&(peer, mid))?;
        (at_ms < f.at_ms + self.settings.exchange_lifetime_ms).then_some(f.block)
    }

    /// The completed body whose final block had message ID `mid` from `peer`,
    /// within the exchange lifetime of the request being answered.
    fn final_of(&mut self, peer: SocketAddr, mid: u16) -> Option<&mut Final> {
        let (now, lifetime) = (self.blocks.now, self.settings.exchange_lifetime_ms);
        self.blocks
            .finals
            .get_mut(&(peer, mid))
            .filter(|f| now < f.at_ms + lifetime)
    }

    /// Server side: the Block1 option of a device's request (RFC 7959 §2.3).
    /// `wire_len` is the datagram's length.
    pub(super) fn block1_request(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        wire_len: usize,
    ) -> Block1In {
        let Some(raw) = msg.option(opt::BLOCK1) else {
            return Block1In::Whole;
        };
        let Some(b) = BlockOpt::decode(raw) else {
            self.stats.bad_requests += 1;
            self.block_reply(peer, msg, codes::BAD_REQUEST, None, None, None);
            return Block1In::Answered;
        };
        if b.num == 0 && !b.more {
            return Block1In::Whole;
        }
        let max_body = self.settings.max_body_size;
        if !self.settings.block_enable {
            self.stats.bad_requests += 1;
            self.block_reply(peer, msg, codes::REQUEST_ENTITY_TOO_LARGE, None, None, None);
            return Block1In::Answered;
        }
        let key = (peer, request_key(msg));
        let announced = msg.option_uint(opt::SIZE1).map_or(0, u64::from);
        if announced > max_body {
            self.block_limit(BlockLimit::MaxBodySize);
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        let size = b.size();
        let offset = b.num as usize * size;
        let add = msg.payload.len();
        let existing = self.blocks.partial.get(&key).map(|p| p.first_mid);
        if b.num == 0 && existing != Some(msg.mid) {
            // A new body (a restarted one replaces the old).
            if !self.new_body(now, peer, msg, &key) {
                return Block1In::Answered;
            }
        }
        let Some(have) = self.blocks.partial.get(&key).map(|p| p.body.len()) else {
            if let Some(f) = self.final_of(peer, msg.mid).copied() {
                // The final block again, its reply not cached: an error reply is
                // repeated; one still being decided (authentication) is awaited.
                self.stats.duplicates += 1;
                if let Some(code) = f.error {
                    self.repeat_final_error(peer, msg, code);
                }
                return Block1In::Answered;
            }
            self.stats.bad_requests += 1;
            self.block_reply(
                peer,
                msg,
                codes::REQUEST_ENTITY_INCOMPLETE,
                None,
                None,
                None,
            );
            return Block1In::Answered;
        };
        let reply_szx = b.szx.min(self.settings.block_szx);
        if b.more && offset + add <= have {
            // A retransmitted block: acknowledge it again.
            self.stats.duplicates += 1;
            let ack = BlockOpt {
                num: b.num,
                more: true,
                szx: reply_szx,
            };
            self.block_reply(peer, msg, codes::CONTINUE, Some(ack), None, None);
            return Block1In::Answered;
        }
        if offset != have {
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_INCOMPLETE);
            return Block1In::Answered;
        }
        if (have + add) as u64 > max_body {
            self.block_limit(BlockLimit::MaxBodySize);
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        let slot = self.table.find_peer(&peer);
        match self.cap_exceeded(slot, peer, 0, add as u64) {
            Some(BlockLimit::DeviceCap) => {
                self.block_limit(BlockLimit::DeviceCap);
                self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
                return Block1In::Answered;
            }
            Some(l) => {
                self.block_limit(l);
                self.refuse_body(peer, msg, &key, codes::SERVICE_UNAVAILABLE);
                return Block1In::Answered;
            }
            None => {}
        }
        if b.more && add != size {
            self.refuse_body(peer, msg, &key, codes::BAD_REQUEST);
            return Block1In::Answered;
        }
        self.stats.blocks_received += 1;
        self.blocks.append(&key, msg.payload, now);
        self.block_gauge();
        if b.more {
            let ack = BlockOpt {
                num: b.num,
                more: true,
                szx: reply_szx,
            };
            self.block_reply(peer, msg, codes::CONTINUE, Some(ack), None, None);
            return Block1In::Answered;
        }
        let Some(p) = self.blocks.remove(&key) else {
            return Block1In::Answered;
        };
        if p.took_token {
            // The Register itself takes the token again.
            self.admission.give_back();
        }
        let body = p.body.take();
        let whole = rebuild(
            msg,
            msg.mtype,
            msg.code,
            msg.mid,
            msg.token,
            &[opt::BLOCK1, opt::SIZE1],
            &[],
            &body,
        );
        self.stats.block_transfers += 1;
        self.block_gauge();
        let lifetime = self.settings.exchange_lifetime_ms;
        let f = Final {
            block: b,
            wire_len,
            at_ms: now,
            error: None,
        };
        self.blocks.record_final(peer, msg.mid, f, lifetime);
        Block1In::Complete(whole)
    }

    /// Admits the first block of a new body: its route, `max_conn_rate` for a
    /// Register, the bound on partial bodies. False if it was refused (answered).
    fn new_body(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>, key: &Key) -> bool {
        self.blocks.remove(key);
        let register = match body_route(self, msg) {
            Ok(r) => r,
            Err(code) => {
                self.stats.not_found += 1;
                self.block_reply(peer, msg, code, None, None, None);
                self.block_gauge();
                return false;
            }
        };
        if register {
            if let Err(max_age) = self.admission.take(now) {
                self.stats.rate_limited += 1;
                self.block_limit(BlockLimit::Rate);
                self.block_reply(
                    peer,
                    msg,
                    codes::SERVICE_UNAVAILABLE,
                    None,
                    None,
                    Some(max_age),
                );
                self.block_gauge();
                return false;
            }
        }
        if self.blocks.len() >= MAX_PARTIALS {
            self.block_limit(BlockLimit::Partials);
            self.stats.block_aborts += 1;
            if !self.blocks.evict_one() {
                if register {
                    self.admission.give_back();
                }
                self.stats.bad_requests += 1;
                self.block_reply(
                    peer,
                    msg,
                    codes::SERVICE_UNAVAILABLE,
                    None,
                    None,
                    Some(RETRY_AFTER_S),
                );
                self.block_gauge();
                return false;
            }
        }
        let id = self
            .blocks
            .insert_partial(key.clone(), msg.mid, now, register);
        let at = now + self.settings.block_lifetime_ms;
        self.out.timers.push((at, Timer::BlockExpire { id }));
        true
    }

    /// Drops a partial body and answers `code` (4.13 with Size1 = `max_body_size`).
    fn refuse_body(&mut self, peer: SocketAddr, msg: &Message<'_>, key: &Key, code: u8) {
        self.blocks.remove(key);
        self.stats.block_aborts += 1;
        self.stats.bad_requests += 1;
        self.block_gauge();
        let size1 = (code == codes::REQUEST_ENTITY_TOO_LARGE)
            .then(|| self.settings.max_body_size.min(u32::MAX as u64) as u32);
        let max_age = (code == codes::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_S);
        self.block_reply(peer, msg, code, None, size1, max_age);
    }

    /// An empty reply with the options block-wise answers carry.
    fn block_reply(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        block1: Option<BlockOpt>,
        size1: Option<u32>,
        max_age: Option<u32>,
    ) {
        let con = msg.mtype == MsgType::Con;
        let (mtype, mid) = if con {
            (MsgType::Ack, msg.mid)
        } else {
            (MsgType::Non, self.fresh_mid())
        };
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, code, mid, msg.token);
            if let Some(a) = max_age {
                w.option_uint(opt::MAX_AGE, a);
            }
            if let Some(b) = block1 {
                w.option_uint(opt::BLOCK1, b.encode());
            }
            if let Some(s) = size1 {
                w.option_uint(opt::SIZE1, s);
            }
            w.finish();
        });
    }

    /// The final block of a completed body retransmitted after an error reply:
    /// block 0 of the stored response again, or the code alone.
    fn repeat_final_error(&mut self, peer: SocketAddr, msg: &Message<'_>, code: u8) {
        let key = request_key(msg);
        let stored = self
            .blocks
            .replies
            .get(&peer)
            .is_some_and(|s| s.key == key && s.code == code);
        if stored {
            let szx = self.blocks.replies.get(&peer).map_or(0, |s| s.szx);
            self.serve_block(
                peer,
                msg,
                BlockOpt {
                    num: 0,
                    more: false,
                    szx,
                },
            );
        } else {
            self.block_reply(peer, msg, code, None, None, None);
        }
    }

    /// A request for a later block of a response of ours (Block2 with a block
    /// number above 0): served from the stored response, never executed again.
    /// True if the request was one (and is answered).
    pub(super) fn block2_request(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        wire_len: usize,
    ) -> bool {
        if !self.settings.block_enable {
            return false;
        }
        let Some(raw) = msg.option(opt::BLOCK2) else {
            return false;
        };
        let Some(b) = BlockOpt::decode(raw) else {
            self.stats.bad_options += 1;
            self.block_reply(peer, msg, codes::BAD_OPTION, None, None, None);
            return true;
        };
        if b.num == 0 {
            // The client's preferred block size (early negotiation).
            return false;
        }
        let key = request_key(msg);
        let found = self.blocks.replies.get_mut(&peer).filter(|s| s.key == key);
        let Some(s) = found else {
            self.stats.bad_requests += 1;
            self.no_stored_response(peer, msg, b, wire_len);
            return true;
        };
        s.last_ms = now;
        self.serve_block(peer, msg, b);
        true
    }

    /// Block `b` (as the client numbered it) of the stored response to `peer`.
    fn serve_block(&mut self, peer: SocketAddr, msg: &Message<'_>, b: BlockOpt) {
        let Some(s) = self.blocks.replies.get(&peer) else {
            return;
        };
        let szx = b.szx.min(s.szx);
        let size = size_of(szx);
        let offset = b.num as usize * b.size();
        let total = s.payload.len();
        if offset >= total {
            self.stats.bad_options += 1;
            self.block_reply(peer, msg, codes::BAD_OPTION, None, None, None);
            return;
        }
        let end = (offset + size).min(total);
        let block = BlockOpt {
            num: (offset / size) as u32,
            more: end < total,
            szx,
        };
        let code = s.code;
        let con = msg.mtype == MsgType::Con;
        let mid = if con { msg.mid } else { self.fresh_mid() };
        let mtype = if con { MsgType::Ack } else { MsgType::Non };
        let s = self.blocks.replies.get(&peer).expect("found above");
        let payload = &s.payload.bytes()[offset..end];
        self.stats.datagrams_out += 1;
        self.stats.blocks_sent += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, code, mid, msg.token);
            w.option_uint(opt::BLOCK2, block.encode());
            if block.num == 0 {
                w.option_uint(opt::SIZE2, total as u32);
            }
            w.payload(payload);
        });
    }

    /// A later block asked for with no stored response (expired, replaced, or
    /// never made): 4.00, the request is not executed. Its diagnostic is never
    /// longer than a block nor than the request.
    fn no_stored_response(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        b: BlockOpt,
        wire_len: usize,
    ) {
        const TEXT: &str = "no stored response to continue: repeat the request";
        let con = msg.mtype == MsgType::Con;
        let mid = if con { msg.mid } else { self.fresh_mid() };
        let mtype = if con { MsgType::Ack } else { MsgType::Non };
        let size = b.size().min(size_of(self.settings.block_szx));
        let room = wire_len.saturating_sub(4 + msg.token.len() + 1);
        let n = clip(TEXT, size.min(room));
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let w = MessageWriter::new(buf, mtype, codes::BAD_REQUEST, mid, msg.token);
            w.payload(&TEXT.as_bytes()[..n]);
        });
    }

    /// Bytes the reply to a request may have at most when its sender has not
    /// proven its address: the request's own length, and for a body completed
    /// from blocks, the final block's.
    pub(super) fn reply_bound(&mut self, peer: SocketAddr, mid: u16, req_len: usize) -> usize {
        match self.final_of(peer, mid) {
            Some(f) => req_len.min(f.wire_len),
            None => req_len,
        }
    }

    /// How an error reply carries `text`: `room` is what the anti-amplification
    /// bound leaves for the payload; `proven` whether the peer's address is
    /// proven (a registration or a DTLS session). A text longer than a block
    /// (`max_block_size`, or the request's Block2 size) goes to a proven peer as
    /// Block2 block 0 of a stored response; others get it clipped.
    pub(super) fn diagnostic(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        text: &str,
        room: usize,
        proven: bool,
    ) -> Diagnostic {
        if let Some(f) = self.final_of(peer, msg.mid) {
            f.error = Some(code);
        }
        if !self.settings.block_enable {
            return Diagnostic::Plain(clip(text, room));
        }
        let early = msg.option(opt::BLOCK2).and_then(BlockOpt::decode);
        let szx = early.map_or(self.settings.block_szx, |b| {
            b.szx.min(self.settings.block_szx)
        });
        let size = size_of(szx);
        if !proven {
            return Diagnostic::Plain(clip(text, room.min(size)));
        }
        if text.len() <= size {
            return Diagnostic::Plain(text.len());
        }
        // A newer response to this peer replaces its stored one.
        self.blocks.remove_reply(peer);
        let key = request_key(msg);
        let need = (key.len() + text.len()) as u64;
        let slot = self.table.find_peer(&peer);
        if let Some(l) = self.cap_exceeded(slot, peer, 0, need) {
            self.block_limit(l);
            self.block_gauge();
            return Diagnostic::Plain(clip(text, size));
        }
        let now = self.blocks.now;
        let id = self
            .blocks
            .store_reply(peer, key, code, szx, text.as_bytes(), now);
        let at = now + self.settings.block_lifetime_ms;
        self.out.timers.push((at, Timer::BlockExpire { id }));
        self.stats.blocks_sent += 1;
        self.block_gauge();
        Diagnostic::Block {
            block: BlockOpt {
                num: 0,
                more: true,
                szx,
            },
            size2: text.len() as u32,
        }
    }

    /// A partial body's or stored response's lifetime timer: dropped after
    /// `exchange_lifetime` without a new block.
    pub(super) fn on_block_expire(&mut self, now: u64, id: u32) {
        let lifetime = self.settings.block_lifetime_ms;
        if let Some(key) = self.blocks.ids.get(&id).cloned() {
            let Some(last) = self.blocks.partial.get(&key).map(|p| p.last_ms) else {
                self.blocks.ids.remove(&id);
                return;
            };
            if now < last + lifetime {
                self.out
                    .timers
                    .push((last + lifetime, Timer::BlockExpire { id }));
                return;
            }
            self.blocks.remove(&key);
            self.stats.block_expired += 1;
            self.block_gauge();
            return;
        }
        let Some(&peer) = self.blocks.reply_ids.get(&id) else {
            return;
        };
        let last = self.blocks.replies.get(&peer).map_or(0, |s| s.last_ms);
        if now < last + lifetime {
            self.out
                .timers
                .push((last + lifetime, Timer::BlockExpire { id }));
            return;
        }
        self.blocks.remove_reply(peer);
        self.block_gauge();
    }
}
