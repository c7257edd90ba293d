//! The registration interface's replies: piggybacked or NON, each cached on its endpoint
//! for retransmissions (the last two) or, for a de-registration, by the registrations
//! machine; diagnostics never larger than the request to an address that has not proven
//! itself, and longer than a block in Block2 blocks to one that has (`block_server.rs`).

use std::net::SocketAddr;

use super::core::{cx, route_of, Route};
use super::dm::client_held;
use super::endpoint::{Endpoint, LastReply};
use super::ShardCore;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};

impl ShardCore {
    /// Answers a retransmitted request from the reply cache. True if it was one.
    pub(super) fn answer_duplicate(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) -> bool {
        let Some((r, location)) = self.cached_reply(now, peer, msg) else {
            return false;
        };
        self.stats.duplicates += 1;
        self.write_reply(peer, &r, location);
        true
    }

    /// The cached reply to `msg` if it is a retransmission: (reply, location).
    pub(super) fn cached_reply(
        &self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) -> Option<(LastReply, Option<u64>)> {
        let lifetime = self.settings.exchange_lifetime_ms;
        let fresh = |r: &LastReply| {
            r.valid
                && r.mid == msg.mid
                && r.con == (msg.mtype == MsgType::Con)
                && now.saturating_sub(r.at_ms) < lifetime
        };
        // Plain CoAP is never answered from a DTLS registration's cache.
        let plain = !self.security.secure();
        let cached = match self.table.find_peer(&peer) {
            Some(slot) if !(plain && self.table.get(slot).is_some_and(|e| e.secure)) => {
                let ep = self.table.get(slot).expect("indexed");
                // The last two replies: a delayed duplicate of the previous request
                // may arrive after the next one was answered.
                [ep.last_reply, ep.prev_reply]
                    .into_iter()
                    .find(|r| fresh(r))
                    .map(|r| (r, Some(ep.location)))
            }
            _ => None,
        };
        // From another address (a NAT binding the device has left): the same
        // message ID and token for the registration the request names.
        let cached = cached.or_else(|| {
            let Route::Registration(loc) = route_of(msg) else {
                return None;
            };
            let slot = self.table.find_location(Endpoint::parse_location(loc)?)?;
            let ep = self.table.get(slot)?;
            if plain && ep.secure {
                return None;
            }
            [ep.last_reply, ep.prev_reply]
                .into_iter()
                .find(|r| fresh(r) && r.token() == msg.token)
                .map(|r| (r, Some(ep.location)))
        });
        cached.or_else(|| Some((self.regs.recent_reply(peer, !plain, fresh)?, None)))
    }

    /// 5.03 Service Unavailable with Max-Age (RFC 7252 §5.9.3.4).
    pub(super) fn reply_unavailable(&mut self, peer: SocketAddr, msg: &Message<'_>, max_age: u32) {
        let r = self.reply_header(msg, codes::SERVICE_UNAVAILABLE);
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(
                buf,
                mtype,
                codes::SERVICE_UNAVAILABLE,
                r.reply_mid,
                r.token(),
            );
            w.option_uint(opt::MAX_AGE, max_age);
            w.finish();
        });
    }

    pub(super) fn reply_header(&mut self, msg: &Message<'_>, code: u8) -> LastReply {
        let con = msg.mtype == MsgType::Con;
        let mut token = [0u8; 8];
        token[..msg.token.len()].copy_from_slice(msg.token);
        LastReply {
            valid: true,
            con,
            mid: msg.mid,
            reply_mid: if con { msg.mid } else { self.fresh_mid() },
            code,
            tkl: msg.token.len() as u8,
            token,
            at_ms: 0,
        }
    }

    /// Replies to a request tied to an endpoint and caches the reply for duplicates.
    pub(super) fn reply_to_endpoint(&mut self, now: u64, slot: u32, msg: &Message<'_>, code: u8) {
        let r = LastReply {
            at_ms: now,
            ..self.reply_header(msg, code)
        };
        let ep = self.table.get_mut(slot).expect("slot");
        ep.prev_reply = ep.last_reply;
        ep.last_reply = r;
        ep.counters.sent = ep.counters.sent.wrapping_add(1);
        let (peer, location) = (ep.peer, ep.location);
        self.write_reply(peer, &r, Some(location));
    }

    pub(super) fn write_reply(&mut self, peer: SocketAddr, r: &LastReply, location: Option<u64>) {
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        // The answer to the last block of a block-wise body names it (RFC 7959 §2.3).
        let block1 = self
            .blocks
            .final_block1(&self.settings, peer, r.mid, r.at_ms);
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, r.code, r.reply_mid, r.token());
            if r.code == codes::CREATED {
                if let Some(loc) = location {
                    w.option(opt::LOCATION_PATH, b"rd");
                    w.option(opt::LOCATION_PATH, Endpoint::location_str(loc).as_bytes());
                }
            }
            if let Some(b) = block1 {
                w.option_uint(opt::BLOCK1, b.encode());
            }
            w.finish();
        });
    }

    /// An error reply with a diagnostic payload. To an address that has not
    /// proven itself (no registration from it, no DTLS session) it is never larger
    /// than the request (so a spoofed source cannot use us as an amplifier) nor
    /// than a block; a proven device gets a text longer than a block in Block2
    /// blocks (RFC 7959 §2.4, `block_server.rs`).
    pub(super) fn reply_error(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        code: u8,
        text: &str,
        req_len: usize,
    ) {
        use super::block_server::Diagnostic;
        let r = self.reply_header(msg, code);
        let mtype = if r.con { MsgType::Ack } else { MsgType::Non };
        let bound = (self.blocks).reply_bound(&self.settings, self.now, peer, msg.mid, req_len);
        let room = bound.saturating_sub(4 + r.tkl as usize + 1);
        let slot = self.table.find_peer(&peer);
        let proven = slot.is_some() || self.security.secure();
        let client_held = client_held(&self.table, slot);
        let d = self
            .blocks
            .diagnostic(cx!(self), client_held, peer, msg, code, text, room, proven);
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            let mut w = MessageWriter::new(buf, mtype, code, r.reply_mid, r.token());
            match d {
                Diagnostic::Plain(n) => w.payload(&text.as_bytes()[..n]),
                Diagnostic::Block { block, size2 } => {
                    w.option_uint(opt::BLOCK2, block.encode())
                        .option_uint(opt::SIZE2, size2);
                    w.payload(&text.as_bytes()[..block.size()]);
                }
            }
        });
    }

    pub(super) fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        self.stats.resets_sent += 1;
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |buf| {
            MessageWriter::new(buf, MsgType::Rst, codes::EMPTY, mid, &[]).finish()
        });
    }

    pub(super) fn fresh_mid(&mut self) -> u16 {
        self.ids.mid()
    }
}
