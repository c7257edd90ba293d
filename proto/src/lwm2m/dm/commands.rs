//! Commands reaching a device: from MQTT (resolved by the router; forwarded when the
//! endpoint lives on another shard; answered 4.00 when it is not registered) or from the
//! management API, parsed against the object definitions, refused when too large for
//! block-wise transfer, and submitted: sent, or queued behind NSTART and queue mode
//! until their deadline. Auto-observe submits the observations a registration asks for.

use super::*;

impl DeviceManagement {
    /// A command an MQTT application published, its endpoint resolved by the router.
    /// `arrival` carries its MQTT 5 message expiry and, when another shard forwarded it,
    /// when the gateway first took it.
    pub(in crate::lwm2m) fn handle_routed(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        c: RoutedCommand,
    ) {
        let now = cx.now;
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
        let Some(slot) = env.table.find_name(&to.endpoint) else {
            if let Some(shard) = env.cluster.holder_elsewhere(&to.endpoint) {
                if hops < MAX_HOPS {
                    let forward = RoutedCommand {
                        to,
                        payload,
                        hops: hops + 1,
                        arrival,
                    };
                    cx.out.to_shards.push((shard, ShardMsg::Command(forward)));
                    return;
                }
            }
            let error = format!("unknown endpoint {:?}: not registered", to.endpoint);
            cx.stats.commands_rejected += 1;
            let echo = self.answer_unrouted(cx, &to, payload, codes::BAD_REQUEST, &error);
            cx.stats.ended(msg_type_op(&echo), Outcome::Rejected);
            return;
        };
        self.command_at(cx, env, slot, payload, arrival);
    }

    /// A message this shard sent that no mailbox would take: a command it was forwarding
    /// to the shard holding its endpoint (too many cross-shard messages waiting, or that
    /// shard is gone) is answered at once with a 5.03 error, like one the router cannot
    /// deliver; anything else is dropped (its sender recovers: a takeover is asked again).
    pub(in crate::lwm2m) fn undelivered(&mut self, cx: &mut Cx<'_>, m: ShardMsg) {
        let ShardMsg::Command(c) = m else {
            return;
        };
        cx.stats.commands_shed += 1;
        let echo = self.answer_unrouted(
            cx,
            &c.to,
            c.payload,
            codes::SERVICE_UNAVAILABLE,
            "gateway overloaded: the command was not processed (too many messages waiting \
             between the gateway's shards); retry later",
        );
        cx.stats.ended(msg_type_op(&echo), Outcome::Shed);
    }

    /// Answers a command that reaches no endpoint here with `code` and `error`, on the
    /// response topic of its mountpoint (lane of its endpoint name, as the router picks
    /// it); returns the command's echo.
    pub(in crate::lwm2m) fn answer_unrouted(
        &mut self,
        cx: &mut Cx<'_>,
        to: &Resolved,
        mut payload: Vec<u8>,
        code: u8,
        error: &str,
    ) -> Echo {
        let enc = Encoding::writes(fmt_id::TLV);
        let echo = match command::parse(&mut payload, &(), enc) {
            Ok(c) => c.echo,
            Err(e) => e.echo,
        };
        let mut body = Vec::with_capacity(160);
        dm_json::error(&mut body, &echo, code, error);
        let topic = format!("{}{}", to.mountpoint, cx.settings.response.topic);
        self.publish(
            cx,
            name_hash(&to.endpoint),
            topic,
            body,
            cx.settings.response.qos,
        );
        echo
    }

    /// A command for the endpoint in `slot` (parsed here), from the management API.
    pub(in crate::lwm2m) fn command_for(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        payload: Vec<u8>,
    ) {
        self.command_at(cx, env, slot, payload, Arrival::default());
    }

    pub(in crate::lwm2m) fn command_at(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        payload: Vec<u8>,
        arrival: Arrival,
    ) {
        let registry = self.registry.clone();
        let Some(ep) = env.table.get(slot) else {
            return;
        };
        let enc = Encoding {
            format: write_format(ep),
            composite: composite_format(ep),
        };
        let v1_0 = ep.is_lwm2m_1_0();
        let mut buf = payload;
        match command::parse(&mut buf, &*registry, enc) {
            Ok(cmd) if cmd.op.is_composite() && v1_0 => {
                // A composite operation to a 1.0 device: refused here, nothing is sent.
                let version = env.table.get(slot).and_then(lwm2m_1_0);
                let why = format!(
                    "{} is a LwM2M 1.1 operation and this device registered as LwM2M {}",
                    cmd.op.name(),
                    version.unwrap_or_default()
                );
                cx.stats.commands_rejected += 1;
                cx.stats.ended(Some(cmd.op), Outcome::Rejected);
                self.publish_error(cx, env, slot, &cmd.echo, codes::BAD_REQUEST, &why);
            }
            Ok(cmd) => self.submit(cx, env, slot, cmd, false, arrival),
            Err(e) => {
                cx.stats.commands_rejected += 1;
                cx.stats.ended(msg_type_op(&e.echo), Outcome::Rejected);
                self.publish_error(cx, env, slot, &e.echo, codes::BAD_REQUEST, &e.error);
            }
        }
    }

    /// Sends a parsed command, or queues it (NSTART, queue mode) until its deadline: the
    /// earlier of its MQTT message expiry and, for a queue-mode device, `queue.default_ttl`.
    pub(in crate::lwm2m) fn submit(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        mut cmd: Command,
        auto: bool,
        arrival: Arrival,
    ) {
        let now = cx.now;
        cmd.received_ms = now;
        cx.stats.commands += 1;
        cx.stats.commands_by_op[cmd.op.index()] += 1;
        let token = Self::fresh_token(cx, env.table, slot);
        let awake = self.is_awake(cx, env, slot, now);
        let nstart = cx.settings.nstart;
        let max_queued = cx.settings.max_queued;
        let ttl = cx.settings.queue_ttl_ms;
        let Some(ep) = env.table.get_mut(slot) else {
            return;
        };
        ep.counters.commands = ep.counters.commands.wrapping_add(1);
        if ep.session_lost && cmd.bypass_queue {
            // Nothing goes to a DTLS registration in plain text, and there is no
            // session to encrypt with: a command that may not wait fails now.
            cx.stats.commands_rejected += 1;
            cx.stats.ended(Some(cmd.op), Outcome::Rejected);
            let msg =
                "the device's DTLS session ended; a command with mheaders.ttl = 0 is not queued";
            self.publish_error(cx, env, slot, &cmd.echo, codes::SERVICE_UNAVAILABLE, msg);
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
            self.dispatch(cx, env, slot, q);
            return;
        }
        if deadline.is_some_and(|d| now >= d.at_ms) {
            self.expire_queued(cx, env, now, slot, q);
            return;
        }
        if session.queue.len() >= max_queued {
            cx.stats.queue_overflows += 1;
            cx.stats.ended(Some(q.cmd.op), Outcome::QueueFull);
            let echo = q.cmd.echo;
            let msg = format!("command queue of this device is full ({max_queued} commands)");
            self.publish_error(cx, env, slot, &echo, codes::SERVICE_UNAVAILABLE, &msg);
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
        cx.stats.commands_waiting += 1;
        if let Some(d) = deadline {
            cx.out
                .timers
                .push((d.at_ms, Timer::QueueTtl { slot, token }));
        }
    }

    /// Observations `auto_observe` asks for after a registration.
    pub(in crate::lwm2m) fn auto_observe(&mut self, cx: &mut Cx<'_>, env: &mut Env<'_>, slot: u32) {
        let now = cx.now;
        let paths: Vec<LwPath> = {
            let Some(ep) = env.table.get(slot) else {
                return;
            };
            let registered: Vec<LwPath> = ep
                .object_list()
                .unwrap_or("")
                .split(',')
                .filter_map(|p| LwPath::parse(p).ok())
                .collect();
            match &cx.settings.auto_observe {
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
                    req_paths: Box::default(),
                },
                path,
                paths: Vec::new(),
                accept: None,
                query: Vec::new(),
                code: codes::GET,
                payload: None,
                bypass_queue: false,
                received_ms: now,
            };
            self.submit(cx, env, slot, cmd, true, Arrival::default());
        }
    }
}
