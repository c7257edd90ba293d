//! One request of the gateway to a device: a fresh token, retransmission of a CON
//! (RFC 7252 §4.2), the device's ACK, RST or response (piggybacked or separate, matched
//! by token), and the one final MQTT message of the command.

use super::*;

impl DeviceManagement {
    /// Builds and sends the CoAP request of a command.
    pub(in crate::lwm2m) fn dispatch(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        q: Queued,
    ) {
        let now = cx.now;
        let inc = env.table.incarnation(slot);
        if self.block1_oversize(cx, env, slot, &q.cmd) {
            return;
        }
        let mid = cx.ids.mid();
        let timeout = self.initial_timeout(cx);
        let registry = self.registry.clone();
        let Some(ep) = env.table.get_mut(slot) else {
            return;
        };
        let mut token = q.token;
        let mut q = q;
        if q.cmd.op.cancels() {
            // RFC 7641 §3.6: the deregistering GET (or FETCH) carries the observation's
            // token; a composite one also its body and Accept, so that it names the same
            // observation.
            if let Some(s) = ep.session.as_ref() {
                if let Some(i) = s.observation_of(&q.cmd) {
                    let o = &s.observations[i];
                    token = o.token;
                    if q.cmd.op.is_composite() {
                        q.cmd.payload.clone_from(&o.cmd.payload);
                        q.cmd.accept = o.cmd.accept;
                    }
                }
            }
        }
        let mut datagram = Vec::with_capacity(64 + q.cmd.payload.as_ref().map_or(0, |p| p.1.len()));
        write_request(&mut datagram, ep, &q.cmd, mid, token, &*registry);
        // A body larger than a block goes out as Block1 blocks (block 0 now).
        let block = block_client::first_block1(cx.settings, &self.held, &mut datagram, token);
        cx.stats.blocks_sent += block.is_some() as u64;
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
        cx.stats.datagrams_out += 1;
        cx.stats.requests_sent += 1;
        let bytes = &ex.datagram;
        cx.out.datagram(peer, |b| b.extend_from_slice(bytes));
        cx.out
            .timers
            .push((now + timeout, Timer::Retransmit { slot, token, inc }));
    }

    /// ACK_TIMEOUT scaled by a random factor in [1, ACK_RANDOM_FACTOR).
    pub(in crate::lwm2m) fn initial_timeout(&mut self, cx: &mut Cx<'_>) -> u64 {
        let r = (cx.ids.random() >> 11) as f64 / (1u64 << 53) as f64;
        let f = 1.0 + r * (cx.settings.ack_random_factor - 1.0).max(0.0);
        (cx.settings.ack_timeout_ms as f64 * f) as u64
    }

    /// A retransmission (or separate-response) timer of an exchange came due.
    pub(in crate::lwm2m) fn on_retransmit(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        token: u32,
    ) {
        let now = cx.now;
        let inc = env.table.incarnation(slot);
        let max = cx.settings.max_retransmit;
        let lifetime = cx.settings.exchange_lifetime_ms;
        let Some(ep) = env.table.get_mut(slot) else {
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
            cx.out
                .timers
                .push((at, Timer::Retransmit { slot, token, inc }));
            return;
        }
        if !ex.acked && ex.retransmits < max {
            ex.retransmits += 1;
            ex.timeout_ms *= 2;
            let at = now + ex.timeout_ms;
            let bytes = &ex.datagram;
            cx.stats.retransmissions += 1;
            cx.stats.datagrams_out += 1;
            cx.out.datagram(peer, |b| b.extend_from_slice(bytes));
            cx.out
                .timers
                .push((at, Timer::Retransmit { slot, token, inc }));
            return;
        }
        let _ = lifetime;
        let ex = session.inflight.swap_remove(i);
        cx.stats.timeouts += 1;
        self.end_unanswered(cx, env, slot, ex, Outcome::Timeout, "coap_timeout");
        self.pump_queue(cx, env, slot);
    }

    /// An exchange that ended without an answer: its command's final message (`event`,
    /// counted as `outcome`), except for the fetch of a notification's remaining blocks,
    /// which is no command: the notification is not published, counted as a block abort.
    fn end_unanswered(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        ex: Exchange,
        outcome: Outcome,
        event: &str,
    ) {
        if ex.completes_notification() {
            cx.stats.block_aborts += 1;
            drop(ex);
            env.blocks.gauge(cx.stats);
        } else {
            cx.stats.ended(Some(ex.cmd.op), outcome);
            self.publish_event(cx, env, slot, &ex.cmd.echo, event);
        }
    }

    /// An ACK or RST from `peer`: matches an exchange by message ID.
    pub(in crate::lwm2m) fn on_ack_or_reset(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) {
        let now = cx.now;
        let lifetime = cx.settings.exchange_lifetime_ms;
        let Some(slot) = env.table.find_peer(&peer) else {
            cx.stats.unmatched += 1;
            return;
        };
        let found = env
            .table
            .get(slot)
            .and_then(|e| e.session.as_ref())
            .and_then(|s| s.exchange_by_mid(msg.mid));
        let Some(i) = found else {
            cx.stats.unmatched += 1;
            return;
        };
        self.touch(cx, env, slot);
        let inc = env.table.incarnation(slot);
        let session = Self::session_mut(env.table, slot);
        let ex = &mut session.inflight[i];
        if msg.mtype == MsgType::Rst {
            let ex = session.inflight.swap_remove(i);
            cx.stats.resets_received += 1;
            self.end_unanswered(cx, env, slot, ex, Outcome::Reset, "coap_reset");
            self.pump_queue(cx, env, slot);
            return;
        }
        if msg.is_empty() {
            if !ex.acked {
                ex.acked = true;
                ex.acked_ms = now;
                let token = ex.token;
                // The fetch of a notification's remaining blocks is no command.
                let echo = (!ex.completes_notification()).then(|| ex.cmd.echo.clone());
                cx.out
                    .timers
                    .push((now + lifetime, Timer::Retransmit { slot, token, inc }));
                if let Some(echo) = echo {
                    self.publish_event(cx, env, slot, &echo, "ack");
                }
            }
            return;
        }
        if token_of(msg) != Some(ex.token) {
            cx.stats.unmatched += 1;
            return;
        }
        let ex = session.inflight.swap_remove(i);
        self.complete(cx, env, slot, ex, msg);
    }

    /// A CON or NON response from `peer`: a separate response or a notification.
    pub(in crate::lwm2m) fn on_response(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        peer: SocketAddr,
        msg: &Message<'_>,
    ) {
        let now = cx.now;
        let lifetime = cx.settings.exchange_lifetime_ms;
        let Some(slot) = env.table.find_peer(&peer) else {
            cx.stats.unmatched += 1;
            if msg.mtype == MsgType::Con {
                self.send_empty(cx, peer, MsgType::Rst, msg.mid);
            }
            return;
        };
        let token = token_of(msg);
        let (exchange, observation, acked_before) =
            match env.table.get(slot).and_then(|e| e.session.as_ref()) {
                Some(s) => {
                    let observation = token.and_then(|t| s.observation_by_token(t));
                    // A cancel-observe carries its observation's token. RFC 7641 §3.6: its
                    // response has no Observe option, so a message with one is a
                    // notification of the observation still running.
                    let notifies = observation.is_some() && msg.option(opt::OBSERVE).is_some();
                    let exchange = token
                        .and_then(|t| s.exchange_by_token(t))
                        .filter(|&i| !(notifies && s.inflight[i].cmd.op.cancels()));
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
            self.touch(cx, env, slot);
            self.send_empty(cx, peer, MsgType::Ack, msg.mid);
            cx.stats.duplicates += 1;
            return;
        }
        if exchange.is_none() && observation.is_none() {
            // RFC 7641 §3.6: reject a notification nobody is interested in.
            cx.stats.unmatched += 1;
            self.send_empty(cx, peer, MsgType::Rst, msg.mid);
            return;
        }
        if exchange.is_none() && cx.out.shed_next() {
            // A notification while the broker connections are congested: not
            // acknowledged (a CON one comes again), not published.
            cx.stats.shed[crate::lwm2m::shed::Shed::Notification.index()] += 1;
            return;
        }
        self.touch(cx, env, slot);
        if msg.mtype == MsgType::Con {
            let dup = Self::session_mut(env.table, slot).seen_mid(msg.mid, now, lifetime);
            self.send_empty(cx, peer, MsgType::Ack, msg.mid);
            if dup {
                cx.stats.duplicates += 1;
                return;
            }
        }
        if let Some(i) = exchange {
            let ex = Self::session_mut(env.table, slot).inflight.swap_remove(i);
            self.complete(cx, env, slot, ex, msg);
        } else if let Some(i) = observation {
            self.notification(cx, env, slot, i, msg);
        }
    }

    /// The final response of an exchange.
    pub(in crate::lwm2m) fn complete(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        ex: Exchange,
        msg: &Message<'_>,
    ) {
        let now = cx.now;
        // A step of a block-wise transfer, or its reassembled final response.
        let Some((ex, whole)) = self.block_response(cx, env, slot, ex, msg) else {
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
        cx.stats.responses += 1;
        let content = self.render_content(slot, &ex.cmd, msg);
        let op = ex.cmd.op;
        cx.stats.ended(Some(op), Outcome::Response);
        let mut body = Vec::with_capacity(128);
        let location = location_of(msg);
        let mut extra: Vec<(&str, &str)> =
            location.iter().map(|l| ("location", l.as_str())).collect();
        let notes = block_client::response_notes(cx.settings, msg);
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
        self.publish_to(cx, env, slot, Topic::Response, body);
        cx.stats
            .command_rtt
            .observe(now.saturating_sub(ex.cmd.received_ms));
        let session = Self::session_mut(env.table, slot);
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
        if op.observes() || op.cancels() {
            // A new observation of the same path(s) replaces the old one; a cancel ends it.
            if let Some(i) = session.observation_of(&ex.cmd) {
                session.observations.swap_remove(i);
                cx.out.stored(slot);
            }
        }
        if op.observes() && codes::class(msg.code) == 2 && msg.option(opt::OBSERVE).is_some() {
            cx.out.stored(slot);
            session.observations.push(Observation {
                token: ex.token,
                path: ex.cmd.path,
                last_seq: msg.option_uint(opt::OBSERVE),
                last_ms: now,
                cmd: ex.cmd,
            });
        }
        self.pump_queue(cx, env, slot);
    }
}
