//! Block-wise transfer (RFC 7959), transparent to MQTT: applications publish and
//! receive whole payloads; blocks exist only on the CoAP side.
//!
//! ```text
//! Block1 downlink (write/create/execute body larger than a block):
//!   CON PUT Block1 0/1/szx Size1=n ──▶ device   every block: fresh MID and token, and
//!   ◀── 2.31 Block1 0/1/szx'                    retransmitted like any CON
//!   CON PUT Block1 k/1/szx' ...                 szx' < szx: smaller blocks from here on
//!   CON PUT Block1 last/0   ──▶ ◀── 2.04         one MQTT response, the final code
//!   ◀── 4.13 Block1 szx'                         the refused block again, smaller
//! Block2 uplink (a response or notification with Block2 M=1):
//!   ◀── 2.05 Block2 0/1/szx ──▶ GET, the first request's options without Observe,
//!                               Block2 1/0/szx ... until M=0
//!   reassembled, decoded, one MQTT message (a notification: one notify message)
//! Server side (Register/Update bodies a device sends in Block1 blocks):
//!   POST /rd Block1 k/1 ──▶ ◀── 2.31 Block1 k/1   partial body per (peer, method, URI)
//!   POST /rd Block1 n/0 ──▶ handled as the whole request (2.01, 2.04, ...)
//! ```
//! Each block of the gateway's requests travels with a fresh token (RFC 7959 §2.4
//! allows it): retransmission timers are keyed by token, so a timer armed for an
//! earlier block can never fire on a later one, and a late answer to an earlier
//! block matches nothing. The final answer is reported under the first token (an
//! observation keeps it).
//!
//! Limits: bodies beyond `max_body_size` are refused (4.13 with Size1) or aborted
//! with an error on MQTT; reassembly buffers count against a per-device and a
//! per-shard byte cap ([`HeldBytes`]); a device's partial body without progress
//! for `exchange_lifetime` is dropped by a timer. The gateway's own responses
//! (2.01 with Location-Path, empty 2.04/2.02, errors whose diagnostic never
//! exceeds the request) are far below the smallest block, so Block2 is never
//! needed on the server side.

use super::command::{Command, Op};
use super::dm::{write_request, Topic};
use super::dm_json;
use super::output::Timer;
use super::session::Exchange;
use super::settings::CoreSettings;
use super::ShardCore;
use crate::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The size exponent of a block size (16 → 0 … 1024 → 6), rounding down.
pub fn szx_of(size: usize) -> u8 {
    let mut szx = 0u8;
    while szx < 6 && (16usize << (szx + 1)) <= size {
        szx += 1;
    }
    szx
}

fn size_of(szx: u8) -> usize {
    16 << szx
}

/// Bytes held by a shard's partial transfers. Every reassembly buffer gives its
/// bytes back when it is dropped, whichever path drops it (completion, abort,
/// timeout, the endpoint leaving).
#[derive(Debug, Clone, Default)]
pub struct HeldBytes(Arc<AtomicU64>);

impl HeldBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A reassembly buffer counted in its shard's [`HeldBytes`].
#[derive(Debug)]
pub struct Body {
    buf: Vec<u8>,
    held: HeldBytes,
}

impl Body {
    fn new(held: &HeldBytes) -> Self {
        Self {
            buf: Vec::new(),
            held: held.clone(),
        }
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn extend(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.held.0.fetch_add(b.len() as u64, Ordering::Relaxed);
    }

    fn take(mut self) -> Vec<u8> {
        let v = std::mem::take(&mut self.buf);
        self.held.0.fetch_sub(v.len() as u64, Ordering::Relaxed);
        v
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.held
            .0
            .fetch_sub(self.buf.len() as u64, Ordering::Relaxed);
    }
}

/// A block-wise transfer of one exchange (the gateway as CoAP client).
#[derive(Debug)]
pub struct Transfer {
    /// Token of the first request; the final answer is reported under it.
    orig_token: u32,
    /// The whole request: Block1 blocks are cut from its payload, Block2
    /// follow-ups repeat its options.
    request: Vec<u8>,
    send: Option<Send1>,
    fetch: Option<Fetch2>,
    /// Completes the notification with this sequence number (not a command).
    notify_seq: Option<u32>,
}

impl Transfer {
    /// Bytes of a response body reassembled so far.
    pub fn held(&self) -> usize {
        self.fetch.as_ref().map_or(0, |f| f.body.len())
    }
}

/// Sending the request body in Block1 blocks.
#[derive(Debug)]
struct Send1 {
    /// Start of the block in flight within the body.
    offset: usize,
    szx: u8,
}

/// Fetching a response body in Block2 blocks.
#[derive(Debug)]
struct Fetch2 {
    body: Body,
    /// The first block's options except Block2/Size2 (Observe, Content-Format...).
    head: Vec<(u16, Vec<u8>)>,
    szx: u8,
}

/// Partial request bodies devices are sending (the gateway as CoAP server).
#[derive(Debug, Default)]
pub struct ServerBlocks {
    partial: hashbrown::HashMap<(SocketAddr, Box<[u8]>), Partial>,
    ids: hashbrown::HashMap<u32, (SocketAddr, Box<[u8]>)>,
    next_id: u32,
    /// The last body completed: peer, message ID and Block1 of its final block.
    last_final: Option<(SocketAddr, u16, BlockOpt)>,
    /// Bytes held by every partial transfer of the shard, both directions.
    pub held: HeldBytes,
}

#[derive(Debug)]
struct Partial {
    id: u32,
    /// Message ID of block 0 (its retransmission does not restart the body).
    first_mid: u16,
    body: Body,
    last_ms: u64,
}

impl ServerBlocks {
    fn remove(&mut self, key: &(SocketAddr, Box<[u8]>)) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.ids.remove(&p.id);
        Some(p)
    }

    /// The Block1 option a reply to (`peer`, `mid`) carries: the final block of
    /// the body completed last, when that is the request answered.
    pub(super) fn final_block1(&self, peer: SocketAddr, mid: u16) -> Option<BlockOpt> {
        match self.last_final {
            Some((p, m, b)) if p == peer && m == mid => Some(b),
            _ => None,
        }
    }

    /// Partial bodies held now.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// What the server side made of a request's Block1 option.
pub(super) enum Block1In {
    /// No block-wise body: handle the request as it is.
    Whole,
    /// A block was answered (2.31 or an error); nothing more to do.
    Answered,
    /// The last block arrived: this datagram is the whole request.
    Complete(Vec<u8>),
}

/// `uint` option value, minimally encoded.
fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    b[(v.leading_zeros() / 8) as usize..].to_vec()
}

/// A message built from `template`'s options without `drop`, plus `add`.
#[allow(clippy::too_many_arguments)]
fn rebuild(
    template: &Message<'_>,
    mtype: MsgType,
    code: u8,
    mid: u16,
    token: &[u8],
    drop: &[u16],
    add: &[(u16, u32)],
    payload: &[u8],
) -> Vec<u8> {
    let mut opts: Vec<(u16, Vec<u8>)> = template
        .options()
        .filter(|(n, _)| !drop.contains(n))
        .map(|(n, v)| (n, v.to_vec()))
        .collect();
    opts.extend(add.iter().map(|&(n, v)| (n, uint_bytes(v))));
    // Stable: repeated options (Uri-Path) keep their order.
    opts.sort_by_key(|o| o.0);
    let mut buf = Vec::with_capacity(16 + token.len() + opts.len() * 8 + payload.len());
    let mut w = MessageWriter::new(&mut buf, mtype, code, mid, token);
    for (n, v) in &opts {
        w.option(*n, v);
    }
    w.payload(payload);
    buf
}

fn block1_datagram(t: &Transfer, s: &Send1, mid: u16, token: u32) -> Vec<u8> {
    let Ok(req) = Message::parse(&t.request) else {
        return Vec::new();
    };
    let total = req.payload.len();
    let size = size_of(s.szx);
    let start = s.offset.min(total);
    let end = (start + size).min(total);
    let num = (start / size) as u32;
    let b = BlockOpt {
        num,
        more: end < total,
        szx: s.szx,
    };
    let mut add = vec![(opt::BLOCK1, b.encode())];
    if num == 0 {
        add.push((opt::SIZE1, total as u32));
    }
    rebuild(
        &req,
        MsgType::Con,
        req.code,
        mid,
        &token.to_be_bytes(),
        &[opt::BLOCK1, opt::BLOCK2, opt::SIZE1, opt::SIZE2],
        &add,
        &req.payload[start..end],
    )
}

fn block2_datagram(t: &Transfer, f: &Fetch2, mid: u16, token: u32) -> Vec<u8> {
    let Ok(req) = Message::parse(&t.request) else {
        return Vec::new();
    };
    let b = BlockOpt {
        num: (f.body.len() / size_of(f.szx)) as u32,
        more: false,
        szx: f.szx,
    };
    rebuild(
        &req,
        MsgType::Con,
        codes::GET,
        mid,
        &token.to_be_bytes(),
        &[
            opt::OBSERVE,
            opt::BLOCK1,
            opt::BLOCK2,
            opt::SIZE1,
            opt::SIZE2,
        ],
        &[(opt::BLOCK2, b.encode())],
        &[],
    )
}

/// Called with a request just written: when its body needs blocks, the transfer
/// keeps the whole request and `datagram` becomes block 0.
pub(super) fn first_block1(
    s: &CoreSettings,
    datagram: &mut Vec<u8>,
    token: u32,
) -> Option<Box<Transfer>> {
    if !s.block_enable {
        return None;
    }
    let (len, mid) = {
        let m = Message::parse(datagram).ok()?;
        (m.payload.len(), m.mid)
    };
    if len <= size_of(s.block_szx) {
        return None;
    }
    let t = Transfer {
        orig_token: token,
        request: std::mem::take(datagram),
        send: Some(Send1 {
            offset: 0,
            szx: s.block_szx,
        }),
        fetch: None,
        notify_seq: None,
    };
    *datagram = block1_datagram(&t, t.send.as_ref().expect("set"), mid, token);
    Some(Box::new(t))
}

/// Members added to a response's MQTT message: the device's Size1 with a 4.13,
/// and a flag when block-wise transfer is off and only a first block came.
pub(super) fn response_notes(s: &CoreSettings, msg: &Message<'_>) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if msg.code == codes::REQUEST_ENTITY_TOO_LARGE {
        if let Some(n) = msg.option_uint(opt::SIZE1) {
            v.push(("size1", n.to_string()));
        }
    }
    if !s.block_enable {
        if let Some(b) = msg.option(opt::BLOCK2).and_then(BlockOpt::decode) {
            if b.more {
                v.push((
                    "truncated",
                    format!(
                        "block {} of size {} only: block-wise transfer is off",
                        b.num,
                        b.size()
                    ),
                ));
            }
        }
    }
    v
}

/// A key identifying one block-wise request body of a peer (RFC 7959 §2.3: the
/// method and request URI).
fn request_key(msg: &Message<'_>) -> Box<[u8]> {
    let mut k = vec![msg.code];
    for (n, v) in msg.options() {
        if matches!(
            n,
            opt::URI_HOST | opt::URI_PORT | opt::URI_PATH | opt::URI_QUERY
        ) {
            k.push(n as u8);
            k.extend_from_slice(&(v.len() as u16).to_be_bytes());
            k.extend_from_slice(v);
        }
    }
    k.into_boxed_slice()
}

impl ShardCore {
    /// Bytes partial block-wise transfers of this shard hold now.
    pub fn blockwise_held_bytes(&self) -> u64 {
        self.blocks.held.get()
    }

    /// Partial request bodies devices are sending to this shard.
    pub fn blockwise_partials(&self) -> usize {
        self.blocks.len()
    }

    fn block_gauge(&mut self) {
        self.stats.block_bytes_held = self.blocks.held.get();
    }

    /// A command whose body exceeds `max_body_size` is refused before anything
    /// is sent (4.13 on MQTT). True if it was.
    pub(super) fn block1_oversize(&mut self, slot: u32, cmd: &Command) -> bool {
        if !self.settings.block_enable {
            return false;
        }
        let len = cmd.payload.as_ref().map_or(0, |p| p.1.len()) as u64;
        let max = self.settings.max_body_size;
        if len <= max {
            return false;
        }
        self.stats.block_aborts += 1;
        let text = format!("payload of {len} bytes exceeds blockwise.max_body_size ({max} bytes)");
        self.publish_error(slot, &cmd.echo, codes::REQUEST_ENTITY_TOO_LARGE, &text);
        true
    }

    /// A response to an exchange, before it is completed: a step of a transfer
    /// sends the next block and returns None; otherwise the exchange (under its
    /// first token) and, after Block2 reassembly, the whole response to report.
    pub(super) fn block_response(
        &mut self,
        now: u64,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
    ) -> Option<(Exchange, Option<Vec<u8>>)> {
        if !self.settings.block_enable {
            return Some((ex, None));
        }
        let rb1 = msg.option(opt::BLOCK1).and_then(BlockOpt::decode);
        let sending = ex.block.as_ref().is_some_and(|t| t.send.is_some());
        if sending || (msg.code == codes::REQUEST_ENTITY_TOO_LARGE && rb1.is_some()) {
            ex = self.block1_step(now, slot, ex, msg, rb1)?;
        }
        let fetching = ex.block.as_ref().is_some_and(|t| t.fetch.is_some());
        if let Some(b) = msg.option(opt::BLOCK2).and_then(BlockOpt::decode) {
            let ok = codes::class(msg.code) == 2 && ex.cmd.code == codes::GET;
            if ok && (fetching || (b.num == 0 && b.more)) {
                return self.block2_step(now, slot, ex, msg, b);
            }
        }
        if let Some(t) = ex.block.take() {
            // The final answer of a transfer (a fetch ended by an error response
            // drops its partial body and reports the error).
            ex.token = t.orig_token;
            self.stats.block_transfers += 1;
            if t.notify_seq.is_some() {
                self.stats.block_aborts += 1;
                drop(t);
                self.block_gauge();
                self.pump_queue(now, slot);
                return None;
            }
            drop(t);
            self.block_gauge();
        }
        Some((ex, None))
    }

    /// Block1: the device answered a block of our request (or refused a whole
    /// request 4.13 asking for smaller blocks).
    fn block1_step(
        &mut self,
        now: u64,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
        rb1: Option<BlockOpt>,
    ) -> Option<Exchange> {
        let max_szx = self.settings.block_szx;
        let Some(t) = ex.block.as_mut() else {
            let Some(b) = rb1 else { return Some(ex) };
            let len = Message::parse(&ex.datagram).map_or(0, |m| m.payload.len());
            if len <= b.size() {
                return Some(ex);
            }
            ex.block = Some(Box::new(Transfer {
                orig_token: ex.token,
                request: ex.datagram.clone(),
                send: Some(Send1 {
                    offset: 0,
                    szx: b.szx.min(max_szx),
                }),
                fetch: None,
                notify_seq: None,
            }));
            self.send_step(now, slot, ex);
            return None;
        };
        let total = Message::parse(&t.request).map_or(0, |m| m.payload.len());
        let s = t.send.as_mut().expect("sending");
        match msg.code {
            codes::CONTINUE => {
                let end = (s.offset + size_of(s.szx)).min(total);
                if end >= total {
                    // 2.31 to the last block: nothing more to send, take it as final.
                    return Some(ex);
                }
                if let Some(b) = rb1 {
                    if b.szx < s.szx {
                        s.szx = b.szx;
                    }
                }
                // Block sizes are powers of two: the acknowledged bytes are a
                // whole number of smaller blocks.
                s.offset = end;
            }
            codes::REQUEST_ENTITY_TOO_LARGE => match rb1 {
                Some(b) if b.szx < s.szx => s.szx = b.szx,
                _ => return Some(ex),
            },
            _ => return Some(ex),
        }
        self.send_step(now, slot, ex);
        None
    }

    /// Block2: one block of a response body.
    fn block2_step(
        &mut self,
        now: u64,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
        b: BlockOpt,
    ) -> Option<(Exchange, Option<Vec<u8>>)> {
        let max_body = self.settings.max_body_size;
        let first = ex.block.as_ref().is_none_or(|t| t.fetch.is_none());
        if first {
            if msg
                .option_uint(opt::SIZE2)
                .is_some_and(|n| n as u64 > max_body)
            {
                self.block_abort(
                    now,
                    slot,
                    ex,
                    "announced body (Size2) exceeds blockwise.max_body_size",
                );
                return None;
            }
            let head = msg
                .options()
                .filter(|(n, _)| *n != opt::BLOCK2 && *n != opt::SIZE2)
                .map(|(n, v)| (n, v.to_vec()))
                .collect();
            let szx = b.szx.min(self.settings.block_szx);
            let held = self.blocks.held.clone();
            let t = ex.block.get_or_insert_with(|| {
                Box::new(Transfer {
                    orig_token: ex.token,
                    request: ex.datagram.clone(),
                    send: None,
                    fetch: None,
                    notify_seq: None,
                })
            });
            t.fetch = Some(Fetch2 {
                body: Body::new(&held),
                head,
                szx,
            });
        }
        let (have, offset) = {
            let f = ex
                .block
                .as_ref()
                .and_then(|t| t.fetch.as_ref())
                .expect("fetch");
            (f.body.len(), b.num as usize * b.size())
        };
        let add = msg.payload.len();
        if offset != have {
            self.block_abort(now, slot, ex, "block-wise response out of order");
            return None;
        }
        if (have + add) as u64 > max_body {
            self.block_abort(
                now,
                slot,
                ex,
                "response body exceeds blockwise.max_body_size",
            );
            return None;
        }
        let device: usize = self
            .table
            .get(slot)
            .and_then(|e| e.session.as_ref())
            .map_or(0, |s| {
                s.inflight
                    .iter()
                    .filter_map(|x| x.block.as_ref())
                    .map(|t| t.held())
                    .sum()
            });
        if (device + have + add) as u64 > self.settings.block_device_cap {
            self.block_abort(
                now,
                slot,
                ex,
                "block-wise memory cap of this device reached",
            );
            return None;
        }
        if self.blocks.held.get() + add as u64 > self.settings.block_shard_cap {
            self.block_abort(now, slot, ex, "block-wise memory cap of this shard reached");
            return None;
        }
        if b.more && add != b.size() {
            self.block_abort(
                now,
                slot,
                ex,
                "a block before the last is not a whole block",
            );
            return None;
        }
        self.stats.blocks_received += 1;
        let t = ex.block.as_mut().expect("transfer");
        let f = t.fetch.as_mut().expect("fetch");
        f.body.extend(msg.payload);
        // The device may answer with smaller blocks than asked for.
        f.szx = f.szx.min(b.szx);
        self.block_gauge();
        if b.more {
            self.send_step(now, slot, ex);
            return None;
        }
        let t = ex.block.take().expect("transfer");
        let Transfer {
            orig_token,
            fetch,
            notify_seq,
            ..
        } = *t;
        let f = fetch.expect("fetch");
        let head = f.head;
        let body = f.body.take();
        let mut whole = Vec::with_capacity(32 + body.len());
        let mut w = MessageWriter::new(
            &mut whole,
            MsgType::Ack,
            msg.code,
            msg.mid,
            &orig_token.to_be_bytes(),
        );
        for (n, v) in &head {
            w.option(*n, v);
        }
        w.payload(&body);
        drop(body);
        ex.token = orig_token;
        self.stats.block_transfers += 1;
        self.block_gauge();
        if let Some(seq) = notify_seq {
            self.publish_whole_notification(slot, &ex.cmd, seq, &whole);
            self.pump_queue(now, slot);
            return None;
        }
        Some((ex, Some(whole)))
    }

    /// Sends the next step of `ex`'s transfer as a new confirmable request.
    fn send_step(&mut self, now: u64, slot: u32, mut ex: Exchange) {
        let inc = self.table.incarnation(slot);
        let mid = self.fresh_mid();
        let token = self.fresh_token();
        let timeout = self.initial_timeout();
        let Some(t) = ex.block.as_ref() else {
            return;
        };
        ex.datagram = match (&t.fetch, &t.send) {
            (Some(f), _) => block2_datagram(t, f, mid, token),
            (None, Some(s)) => block1_datagram(t, s, mid, token),
            (None, None) => return,
        };
        ex.mid = mid;
        ex.token = token;
        ex.retransmits = 0;
        ex.timeout_ms = timeout;
        ex.acked = false;
        ex.acked_ms = 0;
        let Some(ep) = self.table.get_mut(slot) else {
            return;
        };
        let peer = ep.peer;
        let session = ep.session.get_or_insert_with(Default::default);
        session.inflight.push(ex);
        let bytes = &session.inflight.last().expect("pushed").datagram;
        self.stats.datagrams_out += 1;
        self.stats.requests_sent += 1;
        self.stats.blocks_sent += 1;
        self.out.datagram(peer, |b| b.extend_from_slice(bytes));
        self.out
            .timers
            .push((now + timeout, Timer::Retransmit { slot, token, inc }));
    }

    /// Ends a transfer the gateway cannot finish: an error on MQTT for a command
    /// (a notification's remaining blocks are simply not fetched).
    fn block_abort(&mut self, now: u64, slot: u32, ex: Exchange, why: &str) {
        self.stats.block_aborts += 1;
        let notify = ex.block.as_ref().is_some_and(|t| t.notify_seq.is_some());
        let Exchange { cmd, block, .. } = ex;
        drop(block);
        self.block_gauge();
        if !notify {
            self.publish_error(slot, &cmd.echo, codes::REQUEST_ENTITY_TOO_LARGE, why);
        }
        self.pump_queue(now, slot);
    }

    /// A notification carrying Block2 (more to come): fetches the rest with GETs
    /// (no Observe) and publishes it once complete. True if it did.
    pub(super) fn block_notification(
        &mut self,
        now: u64,
        slot: u32,
        cmd: &Command,
        seq: Option<u32>,
        msg: &Message<'_>,
    ) -> bool {
        if !self.settings.block_enable {
            return false;
        }
        let Some(b) = msg.option(opt::BLOCK2).and_then(BlockOpt::decode) else {
            return false;
        };
        if b.num != 0 || !b.more || codes::class(msg.code) != 2 {
            return false;
        }
        let registry = self.registry.load();
        let Some(ep) = self.table.get(slot) else {
            return false;
        };
        let mut read = cmd.clone();
        read.op = Op::Read;
        read.code = codes::GET;
        read.payload = None;
        let mut request = Vec::with_capacity(64);
        write_request(&mut request, ep, &read, 0, 0, &*registry);
        let token = self.fresh_token();
        let ex = Exchange {
            token,
            mid: 0,
            datagram: Vec::new(),
            retransmits: 0,
            timeout_ms: 0,
            acked: false,
            acked_ms: 0,
            cmd: cmd.clone(),
            auto: true,
            block: Some(Box::new(Transfer {
                orig_token: token,
                request,
                send: None,
                fetch: None,
                notify_seq: Some(seq.unwrap_or(0)),
            })),
        };
        let _ = self.block2_step(now, slot, ex, msg, b);
        true
    }

    fn publish_whole_notification(&mut self, slot: u32, cmd: &Command, seq: u32, whole: &[u8]) {
        let Ok(m) = Message::parse(whole) else {
            return;
        };
        self.stats.notifications += 1;
        let content = self.render_content(slot, cmd, &m);
        let mut body = Vec::with_capacity(128 + content.as_ref().map_or(0, |c| c.len()));
        dm_json::result(
            &mut body,
            &cmd.echo,
            "notify",
            Some(seq),
            m.code,
            content.as_deref(),
            &[],
        );
        self.publish_to(slot, Topic::Notify, body);
    }

    /// Server side: the Block1 option of a device's request (RFC 7959 §2.3).
    pub(super) fn block1_request(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) -> Block1In {
        let Some(raw) = msg.option(opt::BLOCK1) else {
            return Block1In::Whole;
        };
        let Some(b) = BlockOpt::decode(raw) else {
            self.stats.bad_requests += 1;
            self.block_reply(peer, msg, codes::BAD_REQUEST, None, None);
            return Block1In::Answered;
        };
        if b.num == 0 && !b.more {
            return Block1In::Whole;
        }
        let max_body = self.settings.max_body_size;
        if !self.settings.block_enable {
            self.stats.bad_requests += 1;
            self.block_reply(peer, msg, codes::REQUEST_ENTITY_TOO_LARGE, None, None);
            return Block1In::Answered;
        }
        let key = (peer, request_key(msg));
        let announced = msg.option_uint(opt::SIZE1).map_or(0, u64::from);
        if announced > max_body {
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        let size = b.size();
        let offset = b.num as usize * size;
        let add = msg.payload.len();
        if b.num == 0
            && self
                .blocks
                .partial
                .get(&key)
                .is_none_or(|p| p.first_mid != msg.mid)
        {
            // A new body (a restarted one replaces the old).
            self.blocks.remove(&key);
            self.blocks.next_id = self.blocks.next_id.wrapping_add(1);
            let id = self.blocks.next_id;
            let held = self.blocks.held.clone();
            self.blocks.partial.insert(
                key.clone(),
                Partial {
                    id,
                    first_mid: msg.mid,
                    body: Body::new(&held),
                    last_ms: now,
                },
            );
            self.blocks.ids.insert(id, key.clone());
            let at = now + self.settings.block_lifetime_ms;
            self.out.timers.push((at, Timer::BlockExpire { id }));
        }
        let Some(have) = self.blocks.partial.get(&key).map(|p| p.body.len()) else {
            self.stats.bad_requests += 1;
            self.block_reply(peer, msg, codes::REQUEST_ENTITY_INCOMPLETE, None, None);
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
            self.block_reply(peer, msg, codes::CONTINUE, Some(ack), None);
            return Block1In::Answered;
        }
        if offset != have {
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_INCOMPLETE);
            return Block1In::Answered;
        }
        if (have + add) as u64 > max_body {
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        let device: usize = self
            .blocks
            .partial
            .iter()
            .filter(|(k, _)| k.0 == peer)
            .map(|(_, p)| p.body.len())
            .sum();
        if (device + add) as u64 > self.settings.block_device_cap {
            self.refuse_body(peer, msg, &key, codes::REQUEST_ENTITY_TOO_LARGE);
            return Block1In::Answered;
        }
        if self.blocks.held.get() + add as u64 > self.settings.block_shard_cap {
            self.refuse_body(peer, msg, &key, codes::SERVICE_UNAVAILABLE);
            return Block1In::Answered;
        }
        if b.more && add != size {
            self.refuse_body(peer, msg, &key, codes::BAD_REQUEST);
            return Block1In::Answered;
        }
        self.stats.blocks_received += 1;
        if let Some(p) = self.blocks.partial.get_mut(&key) {
            p.body.extend(msg.payload);
            p.last_ms = now;
        }
        self.block_gauge();
        if b.more {
            let ack = BlockOpt {
                num: b.num,
                more: true,
                szx: reply_szx,
            };
            self.block_reply(peer, msg, codes::CONTINUE, Some(ack), None);
            return Block1In::Answered;
        }
        let Some(p) = self.blocks.remove(&key) else {
            return Block1In::Answered;
        };
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
        self.blocks.last_final = Some((peer, msg.mid, b));
        Block1In::Complete(whole)
    }

    /// Drops a partial body and answers `code` (4.13 with Size1 = `max_body_size`).
    fn refuse_body(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        key: &(SocketAddr, Box<[u8]>),
        code: u8,
    ) {
        self.blocks.remove(key);
        self.stats.block_aborts += 1;
        self.stats.bad_requests += 1;
        self.block_gauge();
        let size1 = (code == codes::REQUEST_ENTITY_TOO_LARGE)
            .then(|| self.settings.max_body_size.min(u32::MAX as u64) as u32);
        self.block_reply(peer, msg, code, None, size1);
    }

    fn block_reply(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        block1: Option<BlockOpt>,
        size1: Option<u32>,
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
            if let Some(b) = block1 {
                w.option_uint(opt::BLOCK1, b.encode());
            }
            if let Some(s) = size1 {
                w.option_uint(opt::SIZE1, s);
            }
            w.finish();
        });
    }

    /// A partial request body's lifetime timer: dropped after `exchange_lifetime`
    /// without a new block.
    pub(super) fn on_block_expire(&mut self, now: u64, id: u32) {
        let Some(key) = self.blocks.ids.get(&id).cloned() else {
            return;
        };
        let Some(last) = self.blocks.partial.get(&key).map(|p| p.last_ms) else {
            self.blocks.ids.remove(&id);
            return;
        };
        let due = last + self.settings.block_lifetime_ms;
        if now < due {
            self.out.timers.push((due, Timer::BlockExpire { id }));
            return;
        }
        self.blocks.remove(&key);
        self.stats.block_expired += 1;
        self.block_gauge();
    }
}
