//! Device Management and Information Reporting: the CoAP client side of the core.
//!
//! Flow for one command (RFC 7252 §4 reliability, RFC 7641 observe):
//! ```text
//! MQTT command ──▶ parse ──▶ queue (NSTART, queue mode) ──▶ CON request, fresh token
//!                   │ bad: 4.00 + error                      │ retransmit: ACK_TIMEOUT·rand(1..factor)·2^n
//!                   ▼                                         ▼
//!              response topic  ◀── piggybacked ACK / separate response (matched by token)
//!                              ◀── empty ACK: "ack" event, then the separate response
//!                              ◀── RST: "coap_reset";  no answer: "coap_timeout"
//! notify topic ◀── notifications on an observation's token (fresh per RFC 7641 §3.4)
//! ```
//! A sleeping queue-mode device gets its commands when it next speaks; every
//! command ends in exactly one final message on MQTT.

use super::command::{self, Arrival, Command, Echo, Encoding, Op};
use super::dm_json;
use super::endpoint::Endpoint;
use super::output::{MqttOut, ShardMsg, Timer};
use super::publish::name_hash;
use super::routing::{Resolved, RoutedCommand};
use super::session::{
    is_fresh, Deadline, Exchange, LastResult, Observation, Queued, Session, RESULT_CONTENT_MAX,
};
use super::settings::{AutoObserveSet, MANAGEMENT_OBJECTS};
use super::stats::Outcome;
use super::ShardCore;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::{self, fmt_id};
use crate::model::{LwPath, ObjectModel, ResourceType};
use std::net::SocketAddr;

/// Forwarding hops a command may take between shards (an endpoint moving twice).
const MAX_HOPS: u8 = 2;

impl ShardCore {
    /// A command an MQTT application published, its endpoint resolved by the router.
    /// `arrival` carries its MQTT 5 message expiry and, when another shard forwarded it,
    /// when the gateway first took it.
    pub(super) fn handle_routed(&mut self, now: u64, c: RoutedCommand) {
        let RoutedCommand {
            to,
            payload,
            hops,
            arrival,
        } = c;
        let arrival = Arrival {
            at_ms: Some(arrival.at_ms.unwrap_or(now)),
            ..arrival
        };
        let Some(slot) = self.table.find_name(&to.endpoint) else {
            if let Some(shard) = self.cluster.holder_elsewhere(&to.endpoint) {
                if hops < MAX_HOPS {
                    let forward = RoutedCommand {
                        to,
                        payload,
                        hops: hops + 1,
                        arrival,
                    };
                    self.out.to_shards.push((shard, ShardMsg::Command(forward)));
                    return;
                }
            }
            let error = format!("unknown endpoint {:?}: not registered", to.endpoint);
            self.stats.commands_rejected += 1;
            let echo = self.answer_unrouted(&to, payload, codes::BAD_REQUEST, &error);
            self.stats.ended(msg_type_op(&echo), Outcome::Rejected);
            return;
        };
        self.command_at(now, slot, payload, arrival);
    }

    /// A message this shard sent that no mailbox would take: a command it was forwarding
    /// to the shard holding its endpoint (too many cross-shard messages waiting, or that
    /// shard is gone) is answered at once with a 5.03 error, like one the router cannot
    /// deliver; anything else is dropped (its sender recovers: a takeover is asked again).
    pub(super) fn undelivered(&mut self, m: ShardMsg) {
        let ShardMsg::Command(c) = m else {
            return;
        };
        self.stats.commands_shed += 1;
        let echo = self.answer_unrouted(
            &c.to,
            c.payload,
            codes::SERVICE_UNAVAILABLE,
            "gateway overloaded: the command was not processed (too many messages waiting \
             between the gateway's shards); retry later",
        );
        self.stats.ended(msg_type_op(&echo), Outcome::Shed);
    }

    /// Answers a command that reaches no endpoint here with `code` and `error`, on the
    /// response topic of its mountpoint (lane of its endpoint name, as the router picks
    /// it); returns the command's echo.
    fn answer_unrouted(
        &mut self,
        to: &Resolved,
        mut payload: Vec<u8>,
        code: u8,
        error: &str,
    ) -> Echo {
        let enc = Encoding {
            format: fmt_id::TLV,
        };
        let echo = match command::parse(&mut payload, &(), enc) {
            Ok(c) => c.echo,
            Err(e) => e.echo,
        };
        let mut body = Vec::with_capacity(160);
        dm_json::error(&mut body, &echo, code, error);
        let topic = format!("{}{}", to.mountpoint, self.settings.response.topic);
        self.publish(
            name_hash(&to.endpoint),
            topic,
            body,
            self.settings.response.qos,
        );
        echo
    }

    /// A command for the endpoint in `slot` (parsed here), from the management API.
    pub(super) fn command_for(&mut self, now: u64, slot: u32, payload: Vec<u8>) {
        self.command_at(now, slot, payload, Arrival::default());
    }

    fn command_at(&mut self, now: u64, slot: u32, payload: Vec<u8>, arrival: Arrival) {
        let registry = self.registry.clone();
        let Some(ep) = self.table.get(slot) else {
            return;
        };
        let enc = Encoding {
            format: write_format(ep),
        };
        let mut buf = payload;
        match command::parse(&mut buf, &*registry, enc) {
            Ok(cmd) => self.submit(now, slot, cmd, false, arrival),
            Err(e) => {
                self.stats.commands_rejected += 1;
                self.stats.ended(msg_type_op(&e.echo), Outcome::Rejected);
                self.publish_error(slot, &e.echo, codes::BAD_REQUEST, &e.error);
            }
        }
    }

    /// Sends a parsed command, or queues it (NSTART, queue mode) until its deadline: the
    /// earlier of its MQTT message expiry and, for a queue-mode device, `queue.default_ttl`.
    fn submit(&mut self, now: u64, slot: u32, mut cmd: Command, auto: bool, arrival: Arrival) {
        cmd.received_ms = now;
        self.stats.commands += 1;
        self.stats.commands_by_op[cmd.op.index()] += 1;
        let token = self.fresh_token();
        let awake = self.is_awake(slot, now);
        let nstart = self.settings.nstart;
        let max_queued = self.settings.max_queued;
        let ttl = self.settings.queue_ttl_ms;
        let Some(ep) = self.table.get_mut(slot) else {
            return;
        };
        ep.counters.commands = ep.counters.commands.wrapping_add(1);
        if ep.session_lost && cmd.bypass_queue {
            // Nothing goes to a DTLS registration in plain text, and there is no
            // session to encrypt with: a command that may not wait fails now.
            self.stats.commands_rejected += 1;
            self.stats.ended(Some(cmd.op), Outcome::Rejected);
            let msg =
                "the device's DTLS session ended; a command with mheaders.ttl = 0 is not queued";
            self.publish_error(slot, &cmd.echo, codes::SERVICE_UNAVAILABLE, msg);
            return;
        }
        // The default time to live is for commands held for a sleeping device, or
        // for a DTLS registration whose session ended.
        let ttl = if ep.queue_mode || ep.session_lost {
            ttl
        } else {
            0
        };
        let deadline = Deadline::earliest(arrival.at_ms.unwrap_or(now), arrival.expiry_s, ttl);
        let session = ep.session.get_or_insert_with(Default::default);
        let q = Queued {
            cmd,
            token,
            deadline,
            auto,
        };
        let can_send = session.inflight.len() < nstart;
        if can_send && (q.cmd.bypass_queue || (awake && session.queue.is_empty())) {
            self.dispatch(now, slot, q);
            return;
        }
        if deadline.is_some_and(|d| now >= d.at_ms) {
            self.expire_queued(now, slot, q);
            return;
        }
        if session.queue.len() >= max_queued {
            self.stats.queue_overflows += 1;
            self.stats.ended(Some(q.cmd.op), Outcome::QueueFull);
            let echo = q.cmd.echo;
            let msg = format!("command queue of this device is full ({max_queued} commands)");
            self.publish_error(slot, &echo, codes::SERVICE_UNAVAILABLE, &msg);
            return;
        }
        if q.cmd.bypass_queue {
            // Ahead of the commands waiting for the device to wake, behind earlier ones
            // that bypass the queue too (they keep their order).
            let at = session
                .queue
                .iter()
                .take_while(|w| w.cmd.bypass_queue)
                .count();
            session.queue.insert(at, q);
        } else {
            session.queue.push_back(q);
        }
        self.stats.commands_waiting += 1;
        if let Some(d) = deadline {
            self.out
                .timers
                .push((d.at_ms, Timer::QueueTtl { slot, token }));
        }
    }

    /// Sends queued commands while the device is reachable and NSTART allows.
    pub(super) fn pump_queue(&mut self, now: u64, slot: u32) {
        let awake = self.is_awake(slot, now);
        loop {
            let Some(ep) = self.table.get_mut(slot) else {
                return;
            };
            let Some(session) = ep.session.as_mut() else {
                return;
            };
            if session.inflight.len() >= self.settings.nstart {
                return;
            }
            let bypass = session.queue.front().is_some_and(|q| q.cmd.bypass_queue);
            if !awake && (!bypass || ep.session_lost) {
                return;
            }
            let Some(q) = session.queue.pop_front() else {
                return;
            };
            self.stats.unqueued(1);
            if q.deadline.is_some_and(|d| now >= d.at_ms) {
                self.expire_queued(now, slot, q);
                continue;
            }
            self.dispatch(now, slot, q);
        }
    }

    /// A waiting command's deadline came: answered with an error saying which limit ran
    /// out and what the command was waiting for.
    fn expire_queued(&mut self, now: u64, slot: u32, q: Queued) {
        self.stats.commands_expired += 1;
        self.stats.ended(Some(q.cmd.op), Outcome::Expired);
        let waiting = if self.is_awake(slot, now) {
            "while earlier commands to the device were in progress"
        } else {
            "while the device was sleeping"
        };
        let why = q.deadline.map(|d| d.describe()).unwrap_or_default();
        let msg = format!("command expired {waiting}: {why} before it could be sent");
        self.publish_error(slot, &q.cmd.echo, codes::SERVICE_UNAVAILABLE, &msg);
    }

    /// A queued command's deadline timer came due.
    pub(super) fn on_queue_ttl(&mut self, slot: u32, token: u32) {
        let Some(ep) = self.table.get_mut(slot) else {
            return;
        };
        let Some(session) = ep.session.as_mut() else {
            return;
        };
        let Some(i) = session.queue.iter().position(|q| q.token == token) else {
            return;
        };
        let q = session.queue.remove(i).expect("position");
        self.stats.unqueued(1);
        // The timer fires at the deadline: the device's state then picks the message.
        let at = q.deadline.map_or(0, |d| d.at_ms);
        self.expire_queued(at, slot, q);
    }

    /// Builds and sends the CoAP request of a command.
    fn dispatch(&mut self, now: u64, slot: u32, q: Queued) {
        let inc = self.table.incarnation(slot);
        if self.block1_oversize(slot, &q.cmd) {
            return;
        }
        let mid = self.fresh_mid();
        let timeout = self.initial_timeout();
        let registry = self.registry.clone();
        let Some(ep) = self.table.get_mut(slot) else {
            return;
        };
        let mut token = q.token;
        if q.cmd.op == Op::CancelObserve {
            // RFC 7641 §3.6: the deregistering GET carries the observation's token.
            if let Some(s) = ep.session.as_ref() {
                if let Some(i) = s.observation_by_path(&q.cmd.path) {
                    token = s.observations[i].token;
                }
            }
        }
        let mut datagram = Vec::with_capacity(64 + q.cmd.payload.as_ref().map_or(0, |p| p.1.len()));
        write_request(&mut datagram, ep, &q.cmd, mid, token, &*registry);
        // A body larger than a block goes out as Block1 blocks (block 0 now).
        let block = super::block_client::first_block1(
            &self.settings,
            &self.block_held,
            &mut datagram,
            token,
        );
        self.stats.blocks_sent += block.is_some() as u64;
        let peer = ep.peer;
        ep.counters.sent = ep.counters.sent.wrapping_add(1);
        let session = ep.session.get_or_insert_with(Default::default);
        session.inflight.push(Exchange {
            token,
            mid,
            datagram,
            retransmits: 0,
            timeout_ms: timeout,
            acked: false,
            acked_ms: 0,
            cmd: q.cmd,
            auto: q.auto,
            block,
        });
        let ex = session.inflight.last().expect("pushed");
        self.stats.datagrams_out += 1;
        self.stats.requests_sent += 1;
        let bytes = &ex.datagram;
        self.out.datagram(peer, |b| b.extend_from_slice(bytes));
        self.out
            .timers
            .push((now + timeout, Timer::Retransmit { slot, token, inc }));
    }

    /// ACK_TIMEOUT scaled by a random factor in [1, ACK_RANDOM_FACTOR).
    pub(super) fn initial_timeout(&mut self) -> u64 {
        let r = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        let f = 1.0 + r * (self.settings.ack_random_factor - 1.0).max(0.0);
        (self.settings.ack_timeout_ms as f64 * f) as u64
    }

    /// A retransmission (or separate-response) timer of an exchange came due.
    pub(super) fn on_retransmit(&mut self, now: u64, slot: u32, token: u32) {
        let inc = self.table.incarnation(slot);
        let max = self.settings.max_retransmit;
        let lifetime = self.settings.exchange_lifetime_ms;
        let Some(ep) = self.table.get_mut(slot) else {
            return;
        };
        let peer = ep.peer;
        let Some(session) = ep.session.as_mut() else {
            return;
        };
        let Some(i) = session.exchange_by_token(token) else {
            return;
        };
        let ex = &mut session.inflight[i];
        if ex.acked && now < ex.acked_ms + lifetime {
            // A retransmission timer armed before the empty ACK: the separate
            // response has until the ACK's time plus EXCHANGE_LIFETIME.
            let at = ex.acked_ms + lifetime;
            self.out
                .timers
                .push((at, Timer::Retransmit { slot, token, inc }));
            return;
        }
        if !ex.acked && ex.retransmits < max {
            ex.retransmits += 1;
            ex.timeout_ms *= 2;
            let at = now + ex.timeout_ms;
            let bytes = &ex.datagram;
            self.stats.retransmissions += 1;
            self.stats.datagrams_out += 1;
            self.out.datagram(peer, |b| b.extend_from_slice(bytes));
            self.out
                .timers
                .push((at, Timer::Retransmit { slot, token, inc }));
            return;
        }
        let _ = lifetime;
        let ex = session.inflight.swap_remove(i);
        self.stats.timeouts += 1;
        self.stats.ended(Some(ex.cmd.op), Outcome::Timeout);
        self.publish_event(slot, &ex.cmd.echo, "coap_timeout");
        self.pump_queue(now, slot);
    }

    /// An ACK or RST from `peer`: matches an exchange by message ID.
    pub(super) fn on_ack_or_reset(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>) {
        let lifetime = self.settings.exchange_lifetime_ms;
        let Some(slot) = self.table.find_peer(&peer) else {
            self.stats.unmatched += 1;
            return;
        };
        let found = self
            .table
            .get(slot)
            .and_then(|e| e.session.as_ref())
            .and_then(|s| s.exchange_by_mid(msg.mid));
        let Some(i) = found else {
            self.stats.unmatched += 1;
            return;
        };
        self.touch(now, slot);
        let inc = self.table.incarnation(slot);
        let session = self.session_mut(slot);
        let ex = &mut session.inflight[i];
        if msg.mtype == MsgType::Rst {
            let ex = session.inflight.swap_remove(i);
            self.stats.resets_received += 1;
            self.stats.ended(Some(ex.cmd.op), Outcome::Reset);
            self.publish_event(slot, &ex.cmd.echo, "coap_reset");
            self.pump_queue(now, slot);
            return;
        }
        if msg.is_empty() {
            if !ex.acked {
                ex.acked = true;
                ex.acked_ms = now;
                let token = ex.token;
                let echo = ex.cmd.echo.clone();
                self.out
                    .timers
                    .push((now + lifetime, Timer::Retransmit { slot, token, inc }));
                self.publish_event(slot, &echo, "ack");
            }
            return;
        }
        if token_of(msg) != Some(ex.token) {
            self.stats.unmatched += 1;
            return;
        }
        let ex = session.inflight.swap_remove(i);
        self.complete(now, slot, ex, msg);
    }

    /// A CON or NON response from `peer`: a separate response or a notification.
    pub(super) fn on_response(&mut self, now: u64, peer: SocketAddr, msg: &Message<'_>) {
        let lifetime = self.settings.exchange_lifetime_ms;
        let Some(slot) = self.table.find_peer(&peer) else {
            self.stats.unmatched += 1;
            if msg.mtype == MsgType::Con {
                self.send_empty(peer, MsgType::Rst, msg.mid);
            }
            return;
        };
        let token = token_of(msg);
        let (exchange, observation, acked_before) =
            match self.table.get(slot).and_then(|e| e.session.as_ref()) {
                Some(s) => {
                    let observation = token.and_then(|t| s.observation_by_token(t));
                    // A cancel-observe carries its observation's token. RFC 7641 §3.6: its
                    // response has no Observe option, so a message with one is a
                    // notification of the observation still running.
                    let notifies = observation.is_some() && msg.option(opt::OBSERVE).is_some();
                    let exchange = token
                        .and_then(|t| s.exchange_by_token(t))
                        .filter(|&i| !(notifies && s.inflight[i].cmd.op == Op::CancelObserve));
                    (
                        exchange,
                        observation,
                        msg.mtype == MsgType::Con && s.was_seen(msg.mid, now, lifetime),
                    )
                }
                None => (None, None, false),
            };
        if acked_before && exchange.is_none() {
            // A retransmission of a CON response or notification we acknowledged (its
            // exchange or observation may be over by now): RFC 7252 §4.5, acknowledge again.
            self.touch(now, slot);
            self.send_empty(peer, MsgType::Ack, msg.mid);
            self.stats.duplicates += 1;
            return;
        }
        if exchange.is_none() && observation.is_none() {
            // RFC 7641 §3.6: reject a notification nobody is interested in.
            self.stats.unmatched += 1;
            self.send_empty(peer, MsgType::Rst, msg.mid);
            return;
        }
        self.touch(now, slot);
        if msg.mtype == MsgType::Con {
            let dup = self.session_mut(slot).seen_mid(msg.mid, now, lifetime);
            self.send_empty(peer, MsgType::Ack, msg.mid);
            if dup {
                self.stats.duplicates += 1;
                return;
            }
        }
        if let Some(i) = exchange {
            let ex = self.session_mut(slot).inflight.swap_remove(i);
            self.complete(now, slot, ex, msg);
        } else if let Some(i) = observation {
            self.notification(now, slot, i, msg);
        }
    }

    /// The final response of an exchange.
    fn complete(&mut self, now: u64, slot: u32, ex: Exchange, msg: &Message<'_>) {
        // A step of a block-wise transfer, or its reassembled final response.
        let Some((ex, whole)) = self.block_response(now, slot, ex, msg) else {
            return;
        };
        let parsed;
        let msg = match whole.as_deref().map(Message::parse) {
            Some(Ok(m)) => {
                parsed = m;
                &parsed
            }
            _ => msg,
        };
        self.stats.responses += 1;
        let content = self.render_content(slot, &ex.cmd, msg);
        let op = ex.cmd.op;
        self.stats.ended(Some(op), Outcome::Response);
        let mut body = Vec::with_capacity(128);
        let location = location_of(msg);
        let mut extra: Vec<(&str, &str)> =
            location.iter().map(|l| ("location", l.as_str())).collect();
        let notes = super::block_client::response_notes(&self.settings, msg);
        extra.extend(notes.iter().map(|(k, v)| (*k, v.as_str())));
        dm_json::result(
            &mut body,
            &ex.cmd.echo,
            op.name(),
            None,
            msg.code,
            content.as_deref(),
            &extra,
        );
        self.publish_to(slot, Topic::Response, body);
        self.stats
            .command_rtt
            .observe(now.saturating_sub(ex.cmd.received_ms));
        let session = self.session_mut(slot);
        if let (Op::Read | Op::Discover, Some(path)) = (op, ex.cmd.echo.req_path.as_deref()) {
            session.remember(LastResult {
                op,
                path: path.into(),
                code: msg.code,
                content: content
                    .as_deref()
                    .filter(|c| c.len() <= RESULT_CONTENT_MAX)
                    .map(Into::into),
            });
        }
        match op {
            Op::Observe => {
                if let Some(i) = session.observation_by_path(&ex.cmd.path) {
                    session.observations.swap_remove(i);
                }
                if codes::class(msg.code) == 2 && msg.option(opt::OBSERVE).is_some() {
                    session.observations.push(Observation {
                        token: ex.token,
                        path: ex.cmd.path,
                        last_seq: msg.option_uint(opt::OBSERVE),
                        last_ms: now,
                        cmd: ex.cmd,
                    });
                }
            }
            Op::CancelObserve => {
                if let Some(i) = session.observation_by_path(&ex.cmd.path) {
                    session.observations.swap_remove(i);
                }
            }
            _ => {}
        }
        self.pump_queue(now, slot);
    }

    fn notification(&mut self, now: u64, slot: u32, i: usize, msg: &Message<'_>) {
        let seq = msg.option_uint(opt::OBSERVE);
        let session = self.session_mut(slot);
        let obs = &mut session.observations[i];
        if let Some(s) = seq {
            if !is_fresh(obs.last_seq, obs.last_ms, s, now) {
                self.stats.stale_notifications += 1;
                return;
            }
            obs.last_seq = Some(s);
            obs.last_ms = now;
        }
        let ended = seq.is_none() || codes::class(msg.code) != 2;
        let cmd = if ended {
            session.observations.swap_remove(i).cmd
        } else {
            session.observations[i].cmd.clone()
        };
        if self.block_notification(now, slot, &cmd, seq, msg) {
            // Published once the remaining blocks are fetched.
            return;
        }
        self.stats.notifications += 1;
        if let Some(ep) = self.table.get_mut(slot) {
            ep.counters.notifications = ep.counters.notifications.wrapping_add(1);
        }
        let content = self.render_content(slot, &cmd, msg);
        let mut body = Vec::with_capacity(128);
        dm_json::result(
            &mut body,
            &cmd.echo,
            "notify",
            // The last notification of an observation may carry no Observe option: no seqNum.
            seq,
            msg.code,
            content.as_deref(),
            &super::block_client::response_notes(&self.settings, msg)
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        self.publish_to(slot, Topic::Notify, body);
    }

    /// The `content` array of a response, or None when it has none.
    pub(super) fn render_content(
        &self,
        _slot: u32,
        cmd: &Command,
        msg: &Message<'_>,
    ) -> Option<Vec<u8>> {
        if codes::class(msg.code) != 2 {
            return None;
        }
        let reads = matches!(
            cmd.op,
            Op::Read | Op::Observe | Op::CancelObserve | Op::Discover
        );
        if !reads {
            return None;
        }
        let mut out = Vec::with_capacity(64 + msg.payload.len() * 2);
        let cf = msg.option_uint(opt::CONTENT_FORMAT).map(|c| c as u16);
        if cmd.op == Op::Discover || cf == Some(fmt_id::LINK) {
            let text = String::from_utf8_lossy(msg.payload);
            out.push(b'[');
            for (i, l) in formats::split_links(&text).iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                formats::write_json_string(l, &mut out);
            }
            out.push(b']');
            return Some(out);
        }
        if msg.payload.is_empty() {
            return Some(b"[]".to_vec());
        }
        let registry = self.registry.clone();
        match formats::decode(cf, msg.payload, &cmd.path, &*registry) {
            Ok(items) => formats::write_content_json(&items, &mut out),
            Err(e) => {
                // Deliver what the device sent, untyped, with the reason.
                let raw = [formats::ContentItem {
                    path: cmd.path,
                    value: formats::Value::Untyped(msg.payload.to_vec()),
                }];
                formats::write_content_json(&raw, &mut out);
                tracing::debug!(error = %e, "undecodable payload delivered raw");
            }
        }
        Some(out)
    }

    /// The device spoke: it is reachable now (queue mode), send what waits.
    pub(super) fn touch(&mut self, now: u64, slot: u32) {
        // A DTLS registration whose session ended is reachable again once a
        // session of an identity allowed to act for it speaks for it.
        let revive = self
            .table
            .get(slot)
            .is_some_and(|ep| ep.session_lost && self.input_speaks_for(ep));
        if let Some(ep) = self.table.get_mut(slot) {
            if revive {
                ep.session_lost = false;
            }
            ep.last_seen_ms = now;
            ep.counters.recv = ep.counters.recv.wrapping_add(1);
            if ep.session.as_ref().is_some_and(|s| !s.queue.is_empty()) {
                self.pump_queue(now, slot);
            }
        }
    }

    fn is_awake(&self, slot: u32, now: u64) -> bool {
        match self.table.get(slot) {
            Some(ep) => {
                !ep.session_lost
                    && (!ep.queue_mode || now < ep.last_seen_ms + self.settings.qmode_window_ms)
            }
            None => false,
        }
    }

    /// Observations `auto_observe` asks for after a registration.
    pub(super) fn auto_observe(&mut self, now: u64, slot: u32) {
        let paths: Vec<LwPath> = {
            let Some(ep) = self.table.get(slot) else {
                return;
            };
            let registered: Vec<LwPath> = ep
                .object_list
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter_map(|p| LwPath::parse(p).ok())
                .collect();
            match &self.settings.auto_observe {
                AutoObserveSet::Off => return,
                AutoObserveSet::All => registered
                    .into_iter()
                    .filter(|p| p.len() == 2)
                    .filter(|p| !MANAGEMENT_OBJECTS.contains(&p.object().unwrap_or(0)))
                    .collect(),
                AutoObserveSet::Paths(want) => want
                    .iter()
                    .filter(|w| {
                        registered
                            .iter()
                            .any(|r| w.starts_with(r) || r.starts_with(w))
                    })
                    .copied()
                    .collect(),
            }
        };
        for path in paths {
            let data = format!("{{\"path\":\"{path}\"}}");
            let cmd = Command {
                op: Op::Observe,
                echo: Echo {
                    members: "".into(),
                    msg_type: Some("observe".into()),
                    data: data.into(),
                    req_path: Some(path.to_string().into()),
                },
                path,
                query: Vec::new(),
                code: codes::GET,
                payload: None,
                bypass_queue: false,
                received_ms: now,
            };
            self.submit(now, slot, cmd, true, Arrival::default());
        }
    }

    /// Every command of a leaving endpoint gets its final message.
    pub(super) fn finish_session(&mut self, ep: &mut Endpoint, why: &str) {
        let Some(session) = ep.session.take() else {
            return;
        };
        let Session {
            queue, inflight, ..
        } = *session;
        let topic = format!("{}{}", ep.mountpoint, self.settings.response.topic);
        self.stats.unqueued(queue.len() as u64);
        for cmd in queue
            .into_iter()
            .map(|q| q.cmd)
            .chain(inflight.into_iter().map(|e| e.cmd))
        {
            let echo = cmd.echo;
            let mut body = Vec::new();
            dm_json::error(&mut body, &echo, codes::NOT_FOUND, why);
            self.stats.commands_dropped += 1;
            self.stats.ended(Some(cmd.op), Outcome::Dropped);
            self.publish(ep.lane, topic.clone(), body, self.settings.response.qos);
        }
    }

    /// After an endpoint moved here from another shard: re-arm its exchange timers.
    pub(super) fn rearm_session(&mut self, now: u64, slot: u32) {
        let inc = self.table.incarnation(slot);
        let Some(session) = self.table.get(slot).and_then(|e| e.session.as_ref()) else {
            return;
        };
        let timers: Vec<(u64, Timer)> = session
            .inflight
            .iter()
            .map(|e| {
                (
                    now + e.timeout_ms,
                    Timer::Retransmit {
                        slot,
                        token: e.token,
                        inc,
                    },
                )
            })
            .chain(session.queue.iter().filter_map(|q| {
                let d = q.deadline?;
                Some((
                    d.at_ms,
                    Timer::QueueTtl {
                        slot,
                        token: q.token,
                    },
                ))
            }))
            .collect();
        self.out.timers.extend(timers);
    }

    pub(super) fn session_mut(&mut self, slot: u32) -> &mut Session {
        self.table
            .get_mut(slot)
            .expect("live slot")
            .session
            .get_or_insert_with(Default::default)
    }

    pub(super) fn publish_error(&mut self, slot: u32, echo: &Echo, code: u8, error: &str) {
        let mut body = Vec::with_capacity(96);
        dm_json::error(&mut body, echo, code, error);
        self.publish_to(slot, Topic::Response, body);
    }

    fn publish_event(&mut self, slot: u32, echo: &Echo, kind: &str) {
        let mut body = Vec::with_capacity(96);
        dm_json::event(&mut body, echo, kind);
        self.publish_to(slot, Topic::Response, body);
    }

    pub(super) fn publish_to(&mut self, slot: u32, t: Topic, body: Vec<u8>) {
        let Some(ep) = self.table.get(slot) else {
            return;
        };
        let tr = match t {
            Topic::Response => &self.settings.response,
            Topic::Notify => &self.settings.notify,
        };
        let mut topic = String::with_capacity(ep.mountpoint.len() + tr.topic.len());
        topic.push_str(&ep.mountpoint);
        topic.push_str(&tr.topic);
        let (lane, qos) = (ep.lane, tr.qos);
        self.publish(lane, topic, body, qos);
    }

    pub(super) fn publish(&mut self, lane: u32, topic: String, payload: Vec<u8>, qos: u8) {
        self.stats.published += 1;
        self.out.mqtt.push(MqttOut::Publish {
            lane,
            topic,
            payload,
            qos,
        });
    }

    pub(super) fn send_empty(&mut self, peer: SocketAddr, t: MsgType, mid: u16) {
        self.stats.datagrams_out += 1;
        self.out.datagram(peer, |b| {
            MessageWriter::new(b, t, codes::EMPTY, mid, &[]).finish()
        });
    }

    pub(super) fn fresh_token(&mut self) -> u32 {
        self.ids.token()
    }

    fn next_random(&mut self) -> u64 {
        self.ids.random()
    }
}

pub(super) enum Topic {
    Response,
    Notify,
}

/// The operation a command's `msgType` names (None: missing or unknown).
fn msg_type_op(echo: &Echo) -> Option<Op> {
    echo.msg_type.as_deref().and_then(Op::from_name)
}

/// Commands waiting in an endpoint's queue.
pub(super) fn queued_len(ep: &Endpoint) -> u64 {
    ep.session.as_ref().map_or(0, |s| s.queue.len() as u64)
}

fn token_of(msg: &Message<'_>) -> Option<u32> {
    <[u8; 4]>::try_from(msg.token).ok().map(u32::from_be_bytes)
}

/// `/a/b` from a 2.01's Location-Path options.
fn location_of(msg: &Message<'_>) -> Option<String> {
    let mut s = String::new();
    for seg in msg.option_values(opt::LOCATION_PATH) {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(seg));
    }
    (!s.is_empty()).then_some(s)
}

/// The format writes are encoded in for this device: the one it announced at
/// registration when the gateway encodes it, else TLV (which every LwM2M 1.0
/// device supports, and 1.1/1.2 devices in practice).
fn write_format(ep: &Endpoint) -> u16 {
    match ep.content_format {
        Some(
            f @ (fmt_id::TLV
            | fmt_id::SENML_JSON
            | fmt_id::SENML_CBOR
            | fmt_id::LWM2M_CBOR
            | fmt_id::OMA_JSON),
        ) => f,
        _ => fmt_id::TLV,
    }
}

/// The Accept option of a read/observe: text/plain or opaque for a single-instance
/// resource whose type is known, else the device's multi-value format.
fn accept_for(ep: &Endpoint, path: &LwPath, model: &dyn ObjectModel) -> Option<u16> {
    if path.len() >= 3 {
        let def = model.resource(path.object()?, path.resource()?)?;
        if def.multiple && path.len() == 3 {
            return Some(write_format(ep));
        }
        return Some(match def.kind {
            ResourceType::Opaque => fmt_id::OPAQUE,
            ResourceType::None => return None,
            _ => fmt_id::TEXT,
        });
    }
    Some(write_format(ep))
}

pub(super) fn write_request(
    buf: &mut Vec<u8>,
    ep: &Endpoint,
    cmd: &Command,
    mid: u16,
    token: u32,
    model: &dyn ObjectModel,
) {
    let mut w = MessageWriter::new(buf, MsgType::Con, cmd.code, mid, &token.to_be_bytes());
    match cmd.op {
        Op::Observe => {
            w.option_uint(opt::OBSERVE, 0);
        }
        Op::CancelObserve => {
            w.option_uint(opt::OBSERVE, 1);
        }
        _ => {}
    }
    if let Some(alt) = ep.alternate_path.as_deref() {
        for seg in alt.split('/').filter(|s| !s.is_empty()) {
            w.option(opt::URI_PATH, seg.as_bytes());
        }
    }
    let mut num = itoa::Buffer::new();
    for id in cmd.path.ids() {
        w.option(opt::URI_PATH, num.format(*id).as_bytes());
    }
    if let Some((cf, _)) = &cmd.payload {
        w.option_uint(opt::CONTENT_FORMAT, *cf as u32);
    }
    for q in &cmd.query {
        w.option(opt::URI_QUERY, q.as_bytes());
    }
    let accept = match cmd.op {
        Op::Discover => Some(fmt_id::LINK),
        Op::Read | Op::Observe | Op::CancelObserve => accept_for(ep, &cmd.path, model),
        _ => None,
    };
    if let Some(a) = accept {
        w.option_uint(opt::ACCEPT, a as u32);
    }
    match &cmd.payload {
        Some((_, body)) => w.payload(body),
        None => w.finish(),
    }
}
