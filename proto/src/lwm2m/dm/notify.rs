//! Notifications of an observation (RFC 7641): acknowledged when CON, delivered only
//! when fresher than the last, and every response's content rendered as typed JSON
//! from the object definitions.

use super::*;

impl DeviceManagement {
    pub(in crate::lwm2m) fn notification(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        i: usize,
        msg: &Message<'_>,
    ) {
        let now = cx.now;
        let seq = msg.option_uint(opt::OBSERVE);
        let session = Self::session_mut(env.table, slot);
        let obs = &mut session.observations[i];
        if let Some(s) = seq {
            if !is_fresh(obs.last_seq, obs.last_ms, s, now) {
                cx.stats.stale_notifications += 1;
                return;
            }
            obs.last_seq = Some(s);
            obs.last_ms = now;
        }
        let ended = seq.is_none() || codes::class(msg.code) != 2;
        let cmd = if ended {
            cx.out.stored(slot);
            session.observations.swap_remove(i).cmd
        } else {
            session.observations[i].cmd.clone()
        };
        if self.block_notification(cx, env, slot, &cmd, seq, msg) {
            // Published once the remaining blocks are fetched.
            return;
        }
        cx.stats.notifications += 1;
        if let Some(ep) = env.table.get_mut(slot) {
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
            &block_client::response_notes(cx.settings, msg)
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        self.publish_to(cx, env, slot, Topic::Notify, body);
    }

    /// The `content` array of a response, or None when it has none.
    pub(in crate::lwm2m) fn render_content(
        &self,
        _slot: u32,
        cmd: &Command,
        msg: &Message<'_>,
    ) -> Option<Vec<u8>> {
        if codes::class(msg.code) != 2 || !cmd.op.reads() {
            return None;
        }
        let mut out = Vec::with_capacity(64 + msg.payload.len() * 2);
        let cf = msg.option_uint(opt::CONTENT_FORMAT).map(|c| c as u16);
        // Links as strings: a discover's answer, or a read answered in link-format (a
        // composite answer is values under paths, whatever its format says).
        let links = cf == Some(fmt_id::LINK) && !cmd.op.is_composite();
        if cmd.op == Op::Discover || links {
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
        let decoded = if cmd.op.is_composite() {
            // Every record names its absolute path; no Content-Format: the one asked for.
            let asked = cmd.accept.unwrap_or(fmt_id::SENML_JSON);
            formats::decode_composite(cf, asked, msg.payload, &*registry)
        } else {
            formats::decode(cf, msg.payload, &cmd.path, &*registry)
        };
        match decoded {
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
}
