//! The LwM2M 1.1 Send operation (`POST /dp`): a registered device reports values on its
//! own. The Send is matched to the registration at its address (and, over DTLS, to an
//! identity that may act for it), decoded (SenML JSON, SenML CBOR, LwM2M CBOR), published
//! on the `send` translator as `{"msgType":"send","data":{"content":[...]}}` and answered
//! 2.04; the device counts as awake (queue mode). A retransmitted Send is answered from
//! the reply cache before it gets here, so it is published once.
//!
//! Refusals: no registration at the address 4.04, an identity that may not act for it
//! 4.03, another content format 4.15, a body that does not decode 4.00 with the reason.
//! A Send from an address whose registration is being taken over from another shard
//! (NAT rebinding, the device's Update on its way) is not answered: the device
//! retransmits it and finds the registration here.

use std::net::SocketAddr;

use super::core::{cx, dm_env};
use super::output::MqttOut;
use super::shed::{Shed, SHED_MAX_AGE_S};
use super::ShardCore;
use crate::coap::{codes, opt, Message};
use crate::formats::{self, DecodeError};

/// Why a Send was refused (an index into `CoreStats::sends_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// No registration at the sender's address (4.04).
    NotRegistered,
    /// The DTLS identity may not act for the registration (4.03).
    Forbidden,
    /// Not SenML JSON, SenML CBOR or LwM2M CBOR (4.15).
    UnsupportedFormat,
    /// The body does not decode (4.00).
    Malformed,
}

impl SendRefusal {
    pub const ALL: [SendRefusal; 4] = [
        Self::NotRegistered,
        Self::Forbidden,
        Self::UnsupportedFormat,
        Self::Malformed,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotRegistered => "not_registered",
            Self::Forbidden => "forbidden",
            Self::UnsupportedFormat => "unsupported_format",
            Self::Malformed => "malformed",
        }
    }
}

impl ShardCore {
    /// A `POST /dp` from `peer` (the whole body: block-wise bodies arrive reassembled).
    pub(super) fn on_send(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>, len: usize) {
        let Some(slot) = self.table.find_peer(&peer) else {
            if self.cluster.awaits_takeover(peer) {
                self.stats.sends_deferred += 1;
                return;
            }
            let text = "no registration at this address";
            self.refuse_send(peer, msg, SendRefusal::NotRegistered, text, len);
            return;
        };
        let (name, secure) = {
            let ep = self.table.get(slot).expect("found");
            (ep.name.clone(), ep.secure)
        };
        if let Err(e) = self.identity_may_act(&name, secure) {
            self.refuse_send(peer, msg, SendRefusal::Forbidden, &e, len);
            return;
        }
        if self.out.shed_next() {
            self.stats.shed[Shed::Send.index()] += 1;
            self.reply_unavailable(peer, msg, SHED_MAX_AGE_S);
            return;
        }
        let format = msg.option_uint(opt::CONTENT_FORMAT).map(|f| f as u16);
        let arrival_s = (self.settings.clock_epoch_ms + now) as f64 / 1000.0;
        let decoded = formats::decode_send(format, msg.payload, self.dm.registry(), arrival_s);
        let items = match decoded {
            Ok(items) => items,
            Err(DecodeError::UnsupportedFormat(_)) => {
                let text = "a Send is SenML JSON (110), SenML CBOR (112) or LwM2M CBOR (11544)";
                self.refuse_send(peer, msg, SendRefusal::UnsupportedFormat, text, len);
                return;
            }
            Err(e) => {
                let text = e.to_string();
                self.refuse_send(peer, msg, SendRefusal::Malformed, &text, len);
                return;
            }
        };
        self.stats.sends += 1;
        self.stats.sent_values += items.len() as u64;
        let ep = self.table.get(slot).expect("found");
        let t = &self.settings.send;
        let mut topic = String::with_capacity(ep.mountpoint.len() + t.topic.len());
        topic.push_str(&ep.mountpoint);
        topic.push_str(&t.topic);
        let mut payload = Vec::with_capacity(64 + 48 * items.len());
        payload.extend_from_slice(b"{\"msgType\":\"send\",\"data\":{\"content\":");
        formats::write_sent_json(&items, &mut payload);
        payload.extend_from_slice(b"}}");
        self.stats.published += 1;
        self.out.mqtt.push(MqttOut::Publish {
            lane: ep.lane,
            topic,
            payload,
            qos: t.qos,
        });
        self.reply_to_endpoint(now, slot, msg, codes::CHANGED);
        // The device is awake: send what waited for it.
        self.dm.touch(cx!(self), dm_env!(self), slot);
    }

    fn refuse_send(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        why: SendRefusal,
        text: &str,
        len: usize,
    ) {
        self.stats.sends_refused[why.index()] += 1;
        let code = match why {
            SendRefusal::NotRegistered => codes::NOT_FOUND,
            SendRefusal::Forbidden => codes::FORBIDDEN,
            SendRefusal::UnsupportedFormat => codes::UNSUPPORTED_CONTENT_FORMAT,
            SendRefusal::Malformed => codes::BAD_REQUEST,
        };
        self.reply_error(peer, msg, code, text, len);
    }
}
