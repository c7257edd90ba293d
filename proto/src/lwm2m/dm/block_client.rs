//! Block-wise transfer (RFC 7959), transparent to MQTT: applications publish and
//! receive whole payloads; blocks exist only on the CoAP side. This file is the
//! gateway as CoAP client (its requests to devices); `blockwise.rs` holds what both
//! sides share, `block_server.rs` is the gateway as CoAP server.
//!
//! ```text
//! Block1 downlink (write/create/execute body larger than a block):
//!   CON PUT Block1 0/1/szx Size1=n ──▶ device   every block: fresh MID and token, and
//!   ◀── 2.31 Block1 0/1/szx'                    retransmitted like any CON
//!   CON PUT Block1 k/1/szx' ...                 szx' < szx: smaller blocks from here on
//!   CON PUT Block1 last/0   ──▶ ◀── 2.04         one MQTT response, the final code
//!   ◀── 4.13 Block1 szx'                         the refused block again, smaller
//!   ◀── 4.13 Size1=n (no Block1)                 restart from block 0 with the largest
//!                                                block size <= n and smaller than the
//!                                                one sent; none: the write ends 4.13
//! Block2 uplink (a response or notification with Block2 M=1):
//!   ◀── 2.05 Block2 0/1/szx ──▶ GET, the first request's options without Observe,
//!                               Block2 1/0/szx ... until M=0
//!   reassembled, decoded, one MQTT message (a notification: one notify message)
//!   an ETag differing from block 0's restarts the fetch (twice at most, then an error)
//! ```
//! Each block of the gateway's requests travels with a fresh token (RFC 7959 §2.4
//! allows it): retransmission timers are keyed by token, so a timer armed for an
//! earlier block can never fire on a later one, and a late answer to an earlier
//! block matches nothing. The final answer is reported under the first token (an
//! observation keeps it).

use super::{write_request, Topic};
use super::{DeviceManagement, Env};
use crate::coap::{codes, opt, BlockOpt, Message, MessageWriter, MsgType};
use crate::lwm2m::blockwise::{count_limit, rebuild, size_of, szx_of, BlockLimit, Body, HeldBytes};
use crate::lwm2m::command::{Command, Op};
use crate::lwm2m::cx::Cx;
use crate::lwm2m::dm_json;
use crate::lwm2m::output::Timer;
use crate::lwm2m::session::Exchange;
use crate::lwm2m::settings::CoreSettings;
use crate::lwm2m::table::EndpointTable;
use crate::lwm2m::transfer::{Fetch2, Notify, Send1, Transfer};
use std::net::SocketAddr;

/// Times a Block2 fetch starts over because the representation changed (ETag).
const MAX_ETAG_RESTARTS: u8 = 2;

/// The options of `msg` a reassembled response keeps (all but Block2/Size2).
fn head_of(msg: &Message<'_>) -> Vec<(u16, Vec<u8>)> {
    msg.options()
        .filter(|(n, _)| *n != opt::BLOCK2 && *n != opt::SIZE2)
        .map(|(n, v)| (n, v.to_vec()))
        .collect()
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

/// The request for the next Block2 block: a GET with the first request's options but
/// Observe; a FETCH (composite read or observe) stays a FETCH and repeats its body (RFC 7959
/// §2.4: the further requests are the first one with a Block2 option, and a FETCH's body is
/// part of what it asks for).
fn block2_datagram(t: &Transfer, f: &Fetch2, mid: u16, token: u32) -> Vec<u8> {
    let Ok(req) = Message::parse(&t.request) else {
        return Vec::new();
    };
    let b = BlockOpt {
        num: (f.body.len() / size_of(f.szx)) as u32,
        more: false,
        szx: f.szx,
    };
    let (code, body): (u8, &[u8]) = if req.code == codes::FETCH {
        (codes::FETCH, req.payload)
    } else {
        (codes::GET, &[])
    };
    rebuild(
        &req,
        MsgType::Con,
        code,
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
        body,
    )
}

/// Called with a request just written: when its body needs blocks, the transfer
/// keeps the whole request (its body counted in `held`) and `datagram` becomes
/// block 0. [`ShardCore::block1_oversize`] checked the caps before.
pub(in crate::lwm2m) fn first_block1(
    s: &CoreSettings,
    held: &HeldBytes,
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
    let mut t = Transfer::new(held, token, std::mem::take(datagram));
    t.send = Some(Send1 {
        offset: 0,
        szx: s.block_szx,
    });
    *datagram = block1_datagram(&t, t.send.as_ref().expect("set"), mid, token);
    Some(Box::new(t))
}

/// The smaller block size a 4.13 asks for, and whether the transfer starts over:
/// the Block1 option's size (the refused block again, smaller), else the largest
/// valid size that is ≤ Size1 and smaller than `sent` (the block, or the whole
/// body, that was refused), from block 0. None: no smaller size is possible.
fn lowered_szx(
    rb1: Option<BlockOpt>,
    size1: Option<u32>,
    max_szx: u8,
    sent: usize,
) -> Option<(u8, bool)> {
    if let Some(b) = rb1 {
        let z = b.szx.min(max_szx);
        if size_of(z) < sent {
            return Some((z, false));
        }
    }
    let n = (size1? as usize).min(sent.saturating_sub(1));
    (n >= 16).then(|| (szx_of(n).min(max_szx), true))
}

/// Members added to a response's MQTT message: the device's Size1 with a 4.13,
/// and a flag when block-wise transfer is off and only a first block came.
pub(in crate::lwm2m) fn response_notes(
    s: &CoreSettings,
    msg: &Message<'_>,
) -> Vec<(&'static str, String)> {
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

/// Bytes the transfers of the commands of the endpoint in `slot` hold.
pub(in crate::lwm2m) fn client_held(table: &EndpointTable, slot: Option<u32>) -> u64 {
    let held: usize = slot
        .and_then(|s| table.get(s))
        .and_then(|e| e.session.as_ref())
        .map_or(0, |s| {
            s.inflight
                .iter()
                .filter_map(|x| x.block.as_ref())
                .map(|t| t.held())
                .sum()
        });
    held as u64
}

impl DeviceManagement {
    /// Bytes the device at `peer` (registered in `slot`) holds in block-wise
    /// state: its exchanges' transfers, and what the server side holds for its
    /// address (partial bodies with their keys, a stored response).
    pub(in crate::lwm2m) fn device_held(
        &self,
        env: &Env<'_>,
        slot: Option<u32>,
        peer: SocketAddr,
    ) -> u64 {
        client_held(env.table, slot) + env.blocks.peer_held(peer)
    }

    /// The cap `add` more bytes would exceed for the device in `slot` at `peer`
    /// (`own`: bytes of the transfer in question, outside the tables now).
    pub(in crate::lwm2m) fn cap_exceeded(
        &self,
        cx: &Cx<'_>,
        env: &Env<'_>,
        slot: Option<u32>,
        peer: SocketAddr,
        own: u64,
        add: u64,
    ) -> Option<BlockLimit> {
        if self.device_held(env, slot, peer) + own + add > cx.settings.block_device_cap {
            return Some(BlockLimit::DeviceCap);
        }
        if self.held.get() + add > cx.settings.block_shard_cap {
            return Some(BlockLimit::ShardCap);
        }
        None
    }

    /// A command whose body exceeds `max_body_size`, or would take a block-wise
    /// write over a memory cap, is refused before anything is sent (4.13 on
    /// MQTT). True if it was.
    pub(in crate::lwm2m) fn block1_oversize(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        cmd: &Command,
    ) -> bool {
        if !cx.settings.block_enable {
            return false;
        }
        let len = cmd.payload.as_ref().map_or(0, |p| p.1.len()) as u64;
        let max = cx.settings.max_body_size;
        let text = if len > max {
            count_limit(cx.stats, BlockLimit::MaxBodySize);
            format!("payload of {len} bytes exceeds blockwise.max_body_size ({max} bytes)")
        } else if len > size_of(cx.settings.block_szx) as u64 {
            let Some(peer) = env.table.get(slot).map(|e| e.peer) else {
                return false;
            };
            match self.cap_exceeded(cx, env, Some(slot), peer, 0, len) {
                None => return false,
                Some(l) => {
                    count_limit(cx.stats, l);
                    let whose = if l == BlockLimit::DeviceCap {
                        "this device"
                    } else {
                        "this shard"
                    };
                    format!(
                        "a block-wise write of {len} bytes would exceed the block-wise memory cap of {whose}"
                    )
                }
            }
        } else {
            return false;
        };
        cx.stats.block_aborts += 1;
        cx.stats
            .ended(Some(cmd.op), crate::lwm2m::stats::Outcome::BlockAborted);
        self.publish_error(
            cx,
            env,
            slot,
            &cmd.echo,
            codes::REQUEST_ENTITY_TOO_LARGE,
            &text,
        );
        true
    }

    /// A response to an exchange, before it is completed: a step of a transfer
    /// sends the next block and returns None; otherwise the exchange (under its
    /// first token) and, after Block2 reassembly, the whole response to report.
    pub(in crate::lwm2m) fn block_response(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
    ) -> Option<(Exchange, Option<Vec<u8>>)> {
        if !cx.settings.block_enable {
            return Some((ex, None));
        }
        let rb1 = msg.option(opt::BLOCK1).and_then(BlockOpt::decode);
        let sending = ex.block.as_ref().is_some_and(|t| t.send.is_some());
        let too_large = msg.code == codes::REQUEST_ENTITY_TOO_LARGE
            && (rb1.is_some() || msg.option(opt::SIZE1).is_some());
        if sending || too_large {
            ex = self.block1_step(cx, env, slot, ex, msg, rb1)?;
        }
        let fetching = ex.block.as_ref().is_some_and(|t| t.fetch.is_some());
        if let Some(b) = msg.option(opt::BLOCK2).and_then(BlockOpt::decode) {
            let fetches = ex.cmd.code == codes::GET || ex.cmd.code == codes::FETCH;
            let ok = codes::class(msg.code) == 2 && fetches;
            if ok && (fetching || (b.num == 0 && b.more)) {
                return self.block2_step(cx, env, slot, ex, msg, b);
            }
        }
        if let Some(t) = ex.block.take() {
            // The final answer of a transfer (a fetch ended by an error response
            // drops its partial body and reports the error).
            ex.token = t.orig_token;
            cx.stats.block_transfers += 1;
            if t.notify.is_some() {
                cx.stats.block_aborts += 1;
                drop(t);
                env.blocks.gauge(cx.stats);
                self.pump_queue(cx, env, slot);
                return None;
            }
            drop(t);
            env.blocks.gauge(cx.stats);
        }
        Some((ex, None))
    }

    /// Block1: the device answered a block of our request (or refused a whole
    /// request 4.13 asking for smaller blocks).
    fn block1_step(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
        rb1: Option<BlockOpt>,
    ) -> Option<Exchange> {
        let max_szx = cx.settings.block_szx;
        let size1 = msg.option_uint(opt::SIZE1);
        let Some(t) = ex.block.as_mut() else {
            // A whole request refused 4.13: block-wise with a smaller size.
            let len = Message::parse(&ex.datagram).map_or(0, |m| m.payload.len());
            let Some((szx, _)) = lowered_szx(rb1, size1, max_szx, len) else {
                return Some(ex);
            };
            let Some(peer) = env.table.get(slot).map(|e| e.peer) else {
                return Some(ex);
            };
            if let Some(l) = self.cap_exceeded(cx, env, Some(slot), peer, 0, len as u64) {
                // The device's 4.13 is the answer.
                count_limit(cx.stats, l);
                return Some(ex);
            }
            let mut t = Transfer::new(&self.held, ex.token, ex.datagram.clone());
            t.send = Some(Send1 { offset: 0, szx });
            ex.block = Some(Box::new(t));
            env.blocks.gauge(cx.stats);
            self.send_step(cx, env, slot, ex);
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
            codes::REQUEST_ENTITY_TOO_LARGE => {
                match lowered_szx(rb1, size1, max_szx, size_of(s.szx)) {
                    Some((z, restart)) => {
                        s.szx = z;
                        if restart {
                            s.offset = 0;
                        }
                    }
                    None => return Some(ex),
                }
            }
            _ => return Some(ex),
        }
        self.send_step(cx, env, slot, ex);
        None
    }

    /// Block2: one block of a response body.
    fn block2_step(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        ex: Exchange,
        msg: &Message<'_>,
        b: BlockOpt,
    ) -> Option<(Exchange, Option<Vec<u8>>)> {
        let ex = self.block2_representation(cx, env, slot, ex, msg, b)?;
        let ex = self.block2_append(cx, env, slot, ex, msg, b)?;
        self.block2_whole(cx, env, slot, ex, msg)
    }

    /// The representation a Block2 block belongs to: the first block starts the
    /// fetch, a changed ETag restarts it from block 0 (None: restarted, or aborted
    /// after too many changes, or the announced size is too large).
    fn block2_representation(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
        b: BlockOpt,
    ) -> Option<Exchange> {
        let max_body = cx.settings.max_body_size;
        let first = ex.block.as_ref().is_none_or(|t| t.fetch.is_none());
        let restarting = ex
            .block
            .as_ref()
            .and_then(|t| t.fetch.as_ref())
            .is_some_and(|f| f.restarting);
        let announced = msg.option_uint(opt::SIZE2).map_or(0, u64::from);
        if (first || restarting) && announced > max_body {
            count_limit(cx.stats, BlockLimit::MaxBodySize);
            self.block_abort(
                cx,
                env,
                slot,
                ex,
                "announced body (Size2) exceeds blockwise.max_body_size",
            );
            return None;
        }
        if first {
            let szx = b.szx.min(cx.settings.block_szx);
            let held = self.held.clone();
            let t = ex.block.get_or_insert_with(|| {
                Box::new(Transfer::new(&held, ex.token, ex.datagram.clone()))
            });
            t.fetch = Some(Fetch2 {
                body: Body::new(&held),
                head: head_of(msg),
                szx,
                restarts: 0,
                restarting: false,
            });
        } else if restarting {
            let f = ex
                .block
                .as_mut()
                .and_then(|t| t.fetch.as_mut())
                .expect("fetch");
            f.head = head_of(msg);
            f.restarting = false;
        } else {
            // RFC 7959 §2.4: every block of one representation carries its ETag.
            let f = ex
                .block
                .as_mut()
                .and_then(|t| t.fetch.as_mut())
                .expect("fetch");
            let changed = matches!((f.etag(), msg.option(opt::ETAG)), (Some(a), Some(b)) if a != b);
            if changed {
                if f.restarts >= MAX_ETAG_RESTARTS {
                    self.block_abort_with(
                        cx,
                        env,
                        slot,
                        ex,
                        codes::REQUEST_ENTITY_INCOMPLETE,
                        "the resource changed during the block-wise transfer (ETag changed) \
                         every time it was fetched",
                    );
                    return None;
                }
                // The representation changed: fetch it again from block 0.
                f.restarts += 1;
                f.restarting = true;
                f.body = Body::new(&self.held);
                env.blocks.gauge(cx.stats);
                self.send_step(cx, env, slot, ex);
                return None;
            }
        }
        Some(ex)
    }

    /// Appends a block to the fetched body, within the size and memory caps (None:
    /// aborted, or the next block was asked for).
    fn block2_append(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
        b: BlockOpt,
    ) -> Option<Exchange> {
        let max_body = cx.settings.max_body_size;
        let (have, offset, own) = {
            let t = ex.block.as_ref().expect("transfer");
            let f = t.fetch.as_ref().expect("fetch");
            (f.body.len(), b.num as usize * b.size(), t.held() as u64)
        };
        let add = msg.payload.len();
        if offset != have {
            self.block_abort(cx, env, slot, ex, "block-wise response out of order");
            return None;
        }
        if (have + add) as u64 > max_body {
            count_limit(cx.stats, BlockLimit::MaxBodySize);
            self.block_abort(
                cx,
                env,
                slot,
                ex,
                "response body exceeds blockwise.max_body_size",
            );
            return None;
        }
        let peer = env.table.get(slot).map(|e| e.peer);
        if let Some(l) =
            peer.and_then(|p| self.cap_exceeded(cx, env, Some(slot), p, own, add as u64))
        {
            count_limit(cx.stats, l);
            let why = if l == BlockLimit::DeviceCap {
                "block-wise memory cap of this device reached"
            } else {
                "block-wise memory cap of this shard reached"
            };
            self.block_abort(cx, env, slot, ex, why);
            return None;
        }
        if b.more && add != b.size() {
            self.block_abort(
                cx,
                env,
                slot,
                ex,
                "a block before the last is not a whole block",
            );
            return None;
        }
        cx.stats.blocks_received += 1;
        let t = ex.block.as_mut().expect("transfer");
        let f = t.fetch.as_mut().expect("fetch");
        f.body.extend(msg.payload);
        // The device may answer with smaller blocks than asked for.
        f.szx = f.szx.min(b.szx);
        env.blocks.gauge(cx.stats);
        if b.more {
            self.send_step(cx, env, slot, ex);
            return None;
        }
        Some(ex)
    }

    /// The last block arrived: the whole response, as if it had come in one message
    /// (a notification's is published here; None then).
    fn block2_whole(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut ex: Exchange,
        msg: &Message<'_>,
    ) -> Option<(Exchange, Option<Vec<u8>>)> {
        let t = ex.block.take().expect("transfer");
        let Transfer {
            orig_token,
            fetch,
            notify,
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
        cx.stats.block_transfers += 1;
        env.blocks.gauge(cx.stats);
        if let Some(n) = notify {
            self.publish_whole_notification(cx, env, slot, &ex.cmd, n.seq, &whole);
            self.pump_queue(cx, env, slot);
            return None;
        }
        Some((ex, Some(whole)))
    }

    /// Sends the next step of `ex`'s transfer as a new confirmable request.
    fn send_step(&mut self, cx: &mut Cx<'_>, env: &mut Env<'_>, slot: u32, mut ex: Exchange) {
        let now = cx.now;
        let inc = env.table.incarnation(slot);
        let mid = cx.ids.mid();
        let token = Self::fresh_token(cx, env.table, slot);
        let timeout = self.initial_timeout(cx);
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
        let Some(ep) = env.table.get_mut(slot) else {
            return;
        };
        let peer = ep.peer;
        let session = ep.session.get_or_insert_with(Default::default);
        session.inflight.push(ex);
        let bytes = &session.inflight.last().expect("pushed").datagram;
        cx.stats.datagrams_out += 1;
        cx.stats.requests_sent += 1;
        cx.stats.blocks_sent += 1;
        cx.out.datagram(peer, |b| b.extend_from_slice(bytes));
        cx.out
            .timers
            .push((now + timeout, Timer::Retransmit { slot, token, inc }));
    }

    /// Ends a transfer the gateway cannot finish: a 4.13 error on MQTT for a
    /// command (a notification's remaining blocks are simply not fetched).
    fn block_abort(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        ex: Exchange,
        why: &str,
    ) {
        self.block_abort_with(cx, env, slot, ex, codes::REQUEST_ENTITY_TOO_LARGE, why);
    }

    fn block_abort_with(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        ex: Exchange,
        code: u8,
        why: &str,
    ) {
        cx.stats.block_aborts += 1;
        let notify = ex.block.as_ref().is_some_and(|t| t.notify.is_some());
        let Exchange { cmd, block, .. } = ex;
        drop(block);
        env.blocks.gauge(cx.stats);
        if !notify {
            cx.stats
                .ended(Some(cmd.op), crate::lwm2m::stats::Outcome::BlockAborted);
            self.publish_error(cx, env, slot, &cmd.echo, code, why);
        }
        self.pump_queue(cx, env, slot);
    }

    /// A notification carrying Block2 (more to come): fetches the rest with GETs (FETCHes
    /// with the observation's body for a composite one), without Observe, and publishes it
    /// once complete. True if it did.
    pub(in crate::lwm2m) fn block_notification(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        cmd: &Command,
        seq: Option<u32>,
        msg: &Message<'_>,
    ) -> bool {
        if !cx.settings.block_enable {
            return false;
        }
        let Some(b) = msg.option(opt::BLOCK2).and_then(BlockOpt::decode) else {
            return false;
        };
        if b.num != 0 || !b.more || codes::class(msg.code) != 2 {
            return false;
        }
        let registry = self.registry.clone();
        let Some(ep) = env.table.get(slot) else {
            return false;
        };
        let mut read = cmd.clone();
        if cmd.op.is_composite() {
            read.op = Op::ReadComposite;
            read.code = codes::FETCH;
        } else {
            read.op = Op::Read;
            read.code = codes::GET;
            read.payload = None;
        }
        let mut request = Vec::with_capacity(64);
        write_request(&mut request, ep, &read, 0, 0, &*registry);
        let token = Self::fresh_token(cx, env.table, slot);
        let mut t = Transfer::new(&self.held, token, request);
        t.notify = Some(Notify { seq });
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
            block: Some(Box::new(t)),
        };
        let _ = self.block2_step(cx, env, slot, ex, msg, b);
        true
    }

    fn publish_whole_notification(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        cmd: &Command,
        seq: Option<u32>,
        whole: &[u8],
    ) {
        let Ok(m) = Message::parse(whole) else {
            return;
        };
        cx.stats.notifications += 1;
        if let Some(ep) = env.table.get_mut(slot) {
            ep.counters.notifications = ep.counters.notifications.wrapping_add(1);
        }
        let content = self.render_content(slot, cmd, &m);
        let mut body = Vec::with_capacity(128 + content.as_ref().map_or(0, |c| c.len()));
        dm_json::result(
            &mut body,
            &cmd.echo,
            "notify",
            // The last notification of an observation may carry no Observe
            // option: no seqNum, as for a notification in one block.
            seq,
            m.code,
            content.as_deref(),
            &[],
        );
        self.publish_to(cx, env, slot, Topic::Notify, body);
    }
}
