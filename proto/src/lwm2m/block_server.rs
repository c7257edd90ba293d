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

use super::admission::TokenBucket;
use super::blockwise::{
    count_limit, rebuild, request_key, size_of, BlockLimit, Body, Charge, HeldBytes,
};
use super::cx::Cx;
use super::directory::Directory;
use super::endpoint::Endpoint;
use super::output::Timer;
use super::settings::CoreSettings;
use super::stats::CoreStats;
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

/// The gateway as block-wise server: the partial request bodies devices are sending,
/// and our responses sent in blocks. Owns its state; what it needs of the rest of the
/// shard comes in as parameters (the input's [`Cx`], the bytes a device's commands hold,
/// the registration rate bucket, the directory).
#[derive(Debug, Default)]
pub struct BlockServer {
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
    /// Bytes held by every block-wise state of the shard, both directions (shared
    /// with the block-wise client side).
    held: HeldBytes,
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

impl BlockServer {
    pub(super) fn new(held: HeldBytes) -> Self {
        Self {
            held,
            ..Self::default()
        }
    }

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
/// for an Update of a registration the directory knows or a Send from the address
/// of a registration here (`registered`), else the code that refuses it at its
/// first block.
fn body_route(dir: &Directory, registered: bool, msg: &Message<'_>) -> Result<bool, u8> {
    let mut segs = msg.option_values(opt::URI_PATH);
    match (segs.next(), segs.next(), segs.next()) {
        (Some(b"rd"), None, None) if msg.code == codes::POST => Ok(true),
        (Some(b"rd"), Some(loc), None) if msg.code == codes::POST => {
            match Endpoint::parse_location(loc).and_then(|l| dir.by_location(l)) {
                Some(_) => Ok(false),
                None => Err(codes::NOT_FOUND),
            }
        }
        (Some(b"rd"), _, None) => Err(codes::METHOD_NOT_ALLOWED),
        (Some(b"dp"), None, None) if msg.code == codes::POST && registered => Ok(false),
        (Some(b"dp"), None, None) if msg.code != codes::POST => Err(codes::METHOD_NOT_ALLOWED),
        _ => Err(codes::NOT_FOUND),
    }
}

impl BlockServer {
    /// The shard's block-wise gauges: bytes held (both directions), partial bodies.
    pub(super) fn gauge(&self, stats: &mut CoreStats) {
        stats.block_bytes_held = self.held.get();
        stats.block_partials = self.len() as u64;
    }

    /// The cap `add` more bytes would exceed for the device at `peer`, whose commands'
    /// transfers hold `client_held` bytes.
    fn cap_exceeded(
        &self,
        s: &CoreSettings,
        client_held: u64,
        peer: SocketAddr,
        add: u64,
    ) -> Option<BlockLimit> {
        if client_held + self.peer_held(peer) + add > s.block_device_cap {
            return Some(BlockLimit::DeviceCap);
        }
        if self.held.get() + add > s.block_shard_cap {
            return Some(BlockLimit::ShardCap);
        }
        None
    }

    /// The Block1 option a reply to (`peer`, `mid`) carries: the final block of a
    /// body completed from blocks, when that is the request answered (`at_ms`:
    /// when the reply was made).
    pub(super) fn final_block1(
        &self,
        s: &CoreSettings,
        peer: SocketAddr,
        mid: u16,
        at_ms: u64,
    ) -> Option<BlockOpt> {
        let f = self.finals.get(&(peer, mid))?;
        (at_ms < f.at_ms + s.exchange_lifetime_ms).then_some(f.block)
    }

    /// The completed body whose final block had message ID `mid` from `peer`,
    /// within the exchange lifetime of the request being answered at `now`.
    fn final_of(
        &mut self,
        now: u64,
        lifetime: u64,
        peer: SocketAddr,
        mid: u16,
    ) -> Option<&mut Final> {
        self.finals
            .get_mut(&(peer, mid))
            .filter(|f| now < f.at_ms + lifetime)
    }

    /// The Block1 option of a device's request (RFC 7959 §2.3). `wire_len` is the
    /// datagram's length; `client_held` the bytes the device's commands' transfers hold
    /// (None: no registration at `peer` on this shard);
    /// a new Register body takes a token of `admission`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block1_request(
        &mut self,
        cx: &mut Cx<'_>,
        admission: &mut TokenBucket,
        dir: &Directory,
        client_held: Option<u64>,
        peer: SocketAddr,
        msg: &Message<'_>,
        wire_len: usize,
    ) -> Block1In {
        let now = cx.now;
        let Some(raw) = msg.option(opt::BLOCK1) else {
            return Block1In::Whole;
        };
        let Some(b) = BlockOpt::decode(raw) else {
            cx.stats.bad_requests += 1;
            Self::block_reply(cx, peer, msg, codes::BAD_REQUEST, None, None, None);
            return Block1In::Answered;
        };
        if b.num == 0 && !b.more {
            return Block1In::Whole;
        }
        let max_body = cx.settings.max_body_size;
        if !cx.settings.block_enable {
            cx.stats.bad_requests += 1;
            Self::block_reply(
                cx,
                peer,
                msg,
                codes::REQUEST_ENTITY_TOO_LARGE,
                None,
                None,
                None,
            );
            return Block1In::Answered;
        }
        let key = (peer, request_key(msg));
        let announced = msg.option_uint(opt::SIZE1).map_or(0, u64::from);
        if announced > max_body {
            count_limit(cx.stats, BlockLimit::MaxBodySize);
            self.refuse_body(cx, peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        let size = b.size();
        let offset = b.num as usize * size;
        let add = msg.payload.len();
        let existing = self.partial.get(&key).map(|p| p.first_mid);
        if b.num == 0 && existing != Some(msg.mid) {
            // A new body (a restarted one replaces the old).
            let route = body_route(dir, client_held.is_some(), msg);
            if !self.new_body(cx, admission, route, peer, msg, &key) {
                return Block1In::Answered;
            }
        }
        let Some(have) = self.partial.get(&key).map(|p| p.body.len()) else {
            let lifetime = cx.settings.exchange_lifetime_ms;
            if let Some(f) = self.final_of(now, lifetime, peer, msg.mid).copied() {
                // The final block again, its reply not cached: an error reply is
                // repeated; one still being decided (authentication) is awaited.
                cx.stats.duplicates += 1;
                if let Some(code) = f.error {
                    self.repeat_final_error(cx, peer, msg, code);
                }
                return Block1In::Answered;
            }
            cx.stats.bad_requests += 1;
            Self::block_reply(
                cx,
                peer,
                msg,
                codes::REQUEST_ENTITY_INCOMPLETE,
                None,
                None,
                None,
            );
            return Block1In::Answered;
        };
        let reply_szx = b.szx.min(cx.settings.block_szx);
        if b.more && offset + add <= have {
            // A retransmitted block: acknowledge it again.
            cx.stats.duplicates += 1;
            let ack = BlockOpt {
                num: b.num,
                more: true,
                szx: reply_szx,
            };
            Self::block_reply(cx, peer, msg, codes::CONTINUE, Some(ack), None, None);
            return Block1In::Answered;
        }
        if offset != have {
            self.refuse_body(cx, peer, msg, &key, codes::REQUEST_ENTITY_INCOMPLETE);
            return Block1In::Answered;
        }
        if (have + add) as u64 > max_body {
            count_limit(cx.stats, BlockLimit::MaxBodySize);
            self.refuse_body(cx, peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        match self.cap_exceeded(cx.settings, client_held.unwrap_or(0), peer, add as u64) {
            Some(BlockLimit::DeviceCap) => {
                count_limit(cx.stats, BlockLimit::DeviceCap);
                self.refuse_body(cx, peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
                return Block1In::Answered;
            }
            Some(l) => {
                count_limit(cx.stats, l);
                self.refuse_body(cx, peer, msg, &key, codes::SERVICE_UNAVAILABLE);
                return Block1In::Answered;
            }
            None => {}
        }
        if b.more && add != size {
            self.refuse_body(cx, peer, msg, &key, codes::BAD_REQUEST);
            return Block1In::Answered;
        }
        cx.stats.blocks_received += 1;
        self.append(&key, msg.payload, now);
        self.gauge(cx.stats);
        if b.more {
            let ack = BlockOpt {
                num: b.num,
                more: true,
                szx: reply_szx,
            };
            Self::block_reply(cx, peer, msg, codes::CONTINUE, Some(ack), None, None);
            return Block1In::Answered;
        }
        self.complete(cx, admission, key, msg, b, wire_len)
    }

    /// The last block of the body of `key` arrived: the whole request, remembered by
    /// its final block (for the Block1 option of its reply, and the size bound of an
    /// error reply to it).
    fn complete(
        &mut self,
        cx: &mut Cx<'_>,
        admission: &mut TokenBucket,
        key: Key,
        msg: &Message<'_>,
        b: BlockOpt,
        wire_len: usize,
    ) -> Block1In {
        let Some(p) = self.remove(&key) else {
            return Block1In::Answered;
        };
        if p.took_token {
            // The Register itself takes the token again.
            admission.give_back();
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
        cx.stats.block_transfers += 1;
        self.gauge(cx.stats);
        let lifetime = cx.settings.exchange_lifetime_ms;
        let f = Final {
            block: b,
            wire_len,
            at_ms: cx.now,
            error: None,
        };
        self.record_final(key.0, msg.mid, f, lifetime);
        Block1In::Complete(whole)
    }

    /// Admits the first block of a new body: its route (`body_route`), `max_conn_rate` for a
    /// Register, the bound on partial bodies. False if it was refused (answered).
    fn new_body(
        &mut self,
        cx: &mut Cx<'_>,
        admission: &mut TokenBucket,
        route: Result<bool, u8>,
        peer: SocketAddr,
        msg: &Message<'_>,
        key: &Key,
    ) -> bool {
        let now = cx.now;
        self.remove(key);
        let register = match route {
            Ok(r) => r,
            Err(code) => {
                cx.stats.not_found += 1;
                Self::block_reply(cx, peer, msg, code, None, None, None);
                self.gauge(cx.stats);
                return false;
            }
        };
        if register {
            if let Err(max_age) = admission.take(now) {
                cx.stats.rate_limited += 1;
                count_limit(cx.stats, BlockLimit::Rate);
                Self::block_reply(
                    cx,
                    peer,
                    msg,
                    codes::SERVICE_UNAVAILABLE,
                    None,
                    None,
                    Some(max_age),
                );
                self.gauge(cx.stats);
                return false;
            }
        }
        if self.len() >= MAX_PARTIALS {
            count_limit(cx.stats, BlockLimit::Partials);
            cx.stats.block_aborts += 1;
            if !self.evict_one() {
                if register {
                    admission.give_back();
                }
                cx.stats.bad_requests += 1;
                Self::block_reply(
                    cx,
                    peer,
                    msg,
                    codes::SERVICE_UNAVAILABLE,
                    None,
                    None,
                    Some(RETRY_AFTER_S),
                );
                self.gauge(cx.stats);
                return false;
            }
        }
        let id = self.insert_partial(key.clone(), msg.mid, now, register);
        let at = now + cx.settings.block_lifetime_ms;
        cx.out.timers.push((at, Timer::BlockExpire { id }));
        true
    }

    /// Drops a partial body and answers `code` (4.13 with Size1 = `max_body_size`).
    fn refuse_body(
        &mut self,
        cx: &mut Cx<'_>,
        peer: SocketAddr,
        msg: &Message<'_>,
        key: &Key,
        code: u8,
    ) {
        self.remove(key);
        cx.stats.block_aborts += 1;
        cx.stats.bad_requests += 1;
        self.gauge(cx.stats);
        let size1 = (code == codes::REQUEST_ENTITY_TOO_LARGE)
            .then(|| cx.settings.max_body_size.min(u32::MAX as u64) as u32);
        let max_age = (code == codes::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_S);
        Self::block_reply(cx, peer, msg, code, None, size1, max_age);
    }

    /// An empty reply with the options block-wise answers carry.
    fn block_reply(
        cx: &mut Cx<'_>,
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
            (MsgType::Non, cx.ids.mid())
        };
        cx.stats.datagrams_out += 1;
        cx.out.datagram(peer, |buf| {
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
    fn repeat_final_error(
        &mut self,
        cx: &mut Cx<'_>,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
    ) {
        let key = request_key(msg);
        let stored = self
            .replies
            .get(&peer)
            .is_some_and(|s| s.key == key && s.code == code);
        if stored {
            let szx = self.replies.get(&peer).map_or(0, |s| s.szx);
            self.serve_block(
                cx,
                peer,
                msg,
                BlockOpt {
                    num: 0,
                    more: false,
                    szx,
                },
            );
        } else {
            Self::block_reply(cx, peer, msg, code, None, None, None);
        }
    }

    /// A request for a later block of a response of ours (Block2 with a block
    /// number above 0): served from the stored response, never executed again.
    /// True if the request was one (and is answered).
    pub(super) fn block2_request(
        &mut self,
        cx: &mut Cx<'_>,
        peer: SocketAddr,
        msg: &Message<'_>,
        wire_len: usize,
    ) -> bool {
        if !cx.settings.block_enable {
            return false;
        }
        let Some(raw) = msg.option(opt::BLOCK2) else {
            return false;
        };
        let Some(b) = BlockOpt::decode(raw) else {
            cx.stats.bad_options += 1;
            Self::block_reply(cx, peer, msg, codes::BAD_OPTION, None, None, None);
            return true;
        };
        if b.num == 0 {
            // The client's preferred block size (early negotiation).
            return false;
        }
        let key = request_key(msg);
        let found = self.replies.get_mut(&peer).filter(|s| s.key == key);
        let Some(s) = found else {
            cx.stats.bad_requests += 1;
            no_stored_response(cx, peer, msg, b, wire_len);
            return true;
        };
        s.last_ms = cx.now;
        self.serve_block(cx, peer, msg, b);
        true
    }

    /// Block `b` (as the client numbered it) of the stored response to `peer`.
    fn serve_block(&mut self, cx: &mut Cx<'_>, peer: SocketAddr, msg: &Message<'_>, b: BlockOpt) {
        let Some(s) = self.replies.get(&peer) else {
            return;
        };
        let szx = b.szx.min(s.szx);
        let size = size_of(szx);
        let offset = b.num as usize * b.size();
        let total = s.payload.len();
        if offset >= total {
            cx.stats.bad_options += 1;
            Self::block_reply(cx, peer, msg, codes::BAD_OPTION, None, None, None);
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
        let mid = if con { msg.mid } else { cx.ids.mid() };
        let mtype = if con { MsgType::Ack } else { MsgType::Non };
        let payload = &s.payload.bytes()[offset..end];
        cx.stats.datagrams_out += 1;
        cx.stats.blocks_sent += 1;
        cx.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, code, mid, msg.token);
            w.option_uint(opt::BLOCK2, block.encode());
            if block.num == 0 {
                w.option_uint(opt::SIZE2, total as u32);
            }
            w.payload(payload);
        });
    }

    /// Bytes the reply to a request may have at most when its sender has not
    /// proven its address: the request's own length, and for a body completed
    /// from blocks, the final block's.
    pub(super) fn reply_bound(
        &mut self,
        s: &CoreSettings,
        now: u64,
        peer: SocketAddr,
        mid: u16,
        req_len: usize,
    ) -> usize {
        match self.final_of(now, s.exchange_lifetime_ms, peer, mid) {
            Some(f) => req_len.min(f.wire_len),
            None => req_len,
        }
    }

    /// How an error reply carries `text`: `room` is what the anti-amplification
    /// bound leaves for the payload; `proven` whether the peer's address is
    /// proven (a registration or a DTLS session). A text longer than a block
    /// (`max_block_size`, or the request's Block2 size) goes to a proven peer as
    /// Block2 block 0 of a stored response; others get it clipped.
    /// `client_held`: the bytes the peer's commands' transfers hold.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn diagnostic(
        &mut self,
        cx: &mut Cx<'_>,
        client_held: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        text: &str,
        room: usize,
        proven: bool,
    ) -> Diagnostic {
        let lifetime = cx.settings.exchange_lifetime_ms;
        if let Some(f) = self.final_of(cx.now, lifetime, peer, msg.mid) {
            f.error = Some(code);
        }
        let s = cx.settings;
        if !s.block_enable {
            return Diagnostic::Plain(clip(text, room));
        }
        let early = msg.option(opt::BLOCK2).and_then(BlockOpt::decode);
        let szx = early.map_or(s.block_szx, |b| b.szx.min(s.block_szx));
        let size = size_of(szx);
        if !proven {
            return Diagnostic::Plain(clip(text, room.min(size)));
        }
        if text.len() <= size {
            return Diagnostic::Plain(text.len());
        }
        // A newer response to this peer replaces its stored one.
        self.remove_reply(peer);
        let key = request_key(msg);
        let need = (key.len() + text.len()) as u64;
        if let Some(l) = self.cap_exceeded(s, client_held, peer, need) {
            count_limit(cx.stats, l);
            self.gauge(cx.stats);
            return Diagnostic::Plain(clip(text, size));
        }
        let now = cx.now;
        let id = self.store_reply(peer, key, code, szx, text.as_bytes(), now);
        let at = now + s.block_lifetime_ms;
        cx.out.timers.push((at, Timer::BlockExpire { id }));
        cx.stats.blocks_sent += 1;
        self.gauge(cx.stats);
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
    pub(super) fn on_expire(&mut self, cx: &mut Cx<'_>, id: u32) {
        let (now, lifetime) = (cx.now, cx.settings.block_lifetime_ms);
        if let Some(key) = self.ids.get(&id).cloned() {
            let Some(last) = self.partial.get(&key).map(|p| p.last_ms) else {
                self.ids.remove(&id);
                return;
            };
            if now < last + lifetime {
                cx.out
                    .timers
                    .push((last + lifetime, Timer::BlockExpire { id }));
                return;
            }
            self.remove(&key);
            cx.stats.block_expired += 1;
            self.gauge(cx.stats);
            return;
        }
        let Some(&peer) = self.reply_ids.get(&id) else {
            return;
        };
        let last = self.replies.get(&peer).map_or(0, |s| s.last_ms);
        if now < last + lifetime {
            cx.out
                .timers
                .push((last + lifetime, Timer::BlockExpire { id }));
            return;
        }
        self.remove_reply(peer);
        self.gauge(cx.stats);
    }
}

/// A later block asked for with no stored response (expired, replaced, or
/// never made): 4.00, the request is not executed. Its diagnostic is never
/// longer than a block nor than the request.
fn no_stored_response(
    cx: &mut Cx<'_>,
    peer: SocketAddr,
    msg: &Message<'_>,
    b: BlockOpt,
    wire_len: usize,
) {
    const TEXT: &str = "no stored response to continue: repeat the request";
    let con = msg.mtype == MsgType::Con;
    let mid = if con { msg.mid } else { cx.ids.mid() };
    let mtype = if con { MsgType::Ack } else { MsgType::Non };
    let size = b.size().min(size_of(cx.settings.block_szx));
    let room = wire_len.saturating_sub(4 + msg.token.len() + 1);
    let n = clip(TEXT, size.min(room));
    cx.stats.datagrams_out += 1;
    cx.out.datagram(peer, |buf| {
        let w = MessageWriter::new(buf, mtype, codes::BAD_REQUEST, mid, msg.token);
        w.payload(&TEXT.as_bytes()[..n]);
    });
}
