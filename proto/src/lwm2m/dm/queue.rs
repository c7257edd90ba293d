//! A device's queue of commands: sent as NSTART and queue mode allow (a queue-mode
//! device is reachable for `qmode_time_window` after it spoke), answered with an expiry
//! error past their deadline, ended with an error when the registration ends, and
//! re-armed on the shard a registration moved to.

use super::*;

impl DeviceManagement {
    /// Sends queued commands while the device is reachable and NSTART allows.
    pub(in crate::lwm2m) fn pump_queue(&mut self, cx: &mut Cx<'_>, env: &mut Env<'_>, slot: u32) {
        let now = cx.now;
        let awake = self.is_awake(cx, env, slot, now);
        loop {
            let Some(ep) = env.table.get_mut(slot) else {
                return;
            };
            let Some(session) = ep.session.as_mut() else {
                return;
            };
            if session.inflight.len() >= cx.settings.nstart {
                return;
            }
            let bypass = session.queue.front().is_some_and(|q| q.cmd.bypass_queue);
            if !awake && (!bypass || ep.session_lost) {
                return;
            }
            let Some(q) = session.queue.pop_front() else {
                return;
            };
            cx.stats.unqueued(1);
            if q.deadline.is_some_and(|d| now >= d.at_ms) {
                self.expire_queued(cx, env, now, slot, q);
                continue;
            }
            self.dispatch(cx, env, slot, q);
        }
    }

    /// A waiting command's deadline came: answered with an error saying which limit ran
    /// out and what the command was waiting for.
    pub(in crate::lwm2m) fn expire_queued(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        now: u64,
        slot: u32,
        q: Queued,
    ) {
        cx.stats.commands_expired += 1;
        cx.stats.ended(Some(q.cmd.op), Outcome::Expired);
        let waiting = if self.is_awake(cx, env, slot, now) {
            "while earlier commands to the device were in progress"
        } else {
            "while the device was sleeping"
        };
        let why = q.deadline.map(|d| d.describe()).unwrap_or_default();
        let msg = format!("command expired {waiting}: {why} before it could be sent");
        self.publish_error(cx, env, slot, &q.cmd.echo, codes::SERVICE_UNAVAILABLE, &msg);
    }

    /// A queued command's deadline timer came due.
    pub(in crate::lwm2m) fn on_queue_ttl(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        token: u32,
    ) {
        let Some(ep) = env.table.get_mut(slot) else {
            return;
        };
        let Some(session) = ep.session.as_mut() else {
            return;
        };
        let Some(i) = session.queue.iter().position(|q| q.token == token) else {
            return;
        };
        let q = session.queue.remove(i).expect("position");
        cx.stats.unqueued(1);
        // The timer fires at the deadline: the device's state then picks the message.
        let at = q.deadline.map_or(0, |d| d.at_ms);
        self.expire_queued(cx, env, at, slot, q);
    }

    /// The device spoke: it is reachable now (queue mode), send what waits.
    pub(in crate::lwm2m) fn touch(&mut self, cx: &mut Cx<'_>, env: &mut Env<'_>, slot: u32) {
        let now = cx.now;
        // A DTLS registration whose session ended is reachable again once a
        // session of an identity allowed to act for it speaks for it.
        let revive = env
            .table
            .get(slot)
            .is_some_and(|ep| ep.session_lost && env.speaks_for(cx.settings, ep));
        if let Some(ep) = env.table.get_mut(slot) {
            if revive {
                ep.session_lost = false;
            }
            ep.last_seen_ms = now;
            ep.counters.recv = ep.counters.recv.wrapping_add(1);
            if ep.session.as_ref().is_some_and(|s| !s.queue.is_empty()) {
                self.pump_queue(cx, env, slot);
            }
        }
    }

    /// Whether the device in `slot` is reachable at `now`.
    pub(in crate::lwm2m) fn is_awake(
        &self,
        cx: &Cx<'_>,
        env: &Env<'_>,
        slot: u32,
        now: u64,
    ) -> bool {
        match env.table.get(slot) {
            Some(ep) => {
                !ep.session_lost
                    && (!ep.queue_mode || now < ep.last_seen_ms + cx.settings.qmode_window_ms)
            }
            None => false,
        }
    }

    /// Every command of a leaving endpoint gets its final message.
    pub(in crate::lwm2m) fn finish_session(
        &mut self,
        cx: &mut Cx<'_>,
        ep: &mut Endpoint,
        why: &str,
    ) {
        let Some(session) = ep.session.take() else {
            return;
        };
        let Session {
            queue, inflight, ..
        } = *session;
        let topic = format!("{}{}", ep.mountpoint, cx.settings.response.topic);
        cx.stats.unqueued(queue.len() as u64);
        // Exchanges completing a notification are no commands: nothing to answer.
        let commands = inflight
            .into_iter()
            .filter(|e| !e.completes_notification())
            .map(|e| e.cmd);
        for cmd in queue.into_iter().map(|q| q.cmd).chain(commands) {
            let echo = cmd.echo;
            let mut body = Vec::new();
            dm_json::error(&mut body, &echo, codes::NOT_FOUND, why);
            cx.stats.commands_dropped += 1;
            cx.stats.ended(Some(cmd.op), Outcome::Dropped);
            self.publish(cx, ep.lane, topic.clone(), body, cx.settings.response.qos);
        }
    }

    /// After an endpoint moved here from another shard: re-arm its exchange timers.
    pub(in crate::lwm2m) fn rearm_session(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
    ) {
        let now = cx.now;
        let inc = env.table.incarnation(slot);
        let Some(session) = env.table.get(slot).and_then(|e| e.session.as_ref()) else {
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
        cx.out.timers.extend(timers);
    }
}
