//! The registration interface's flows (LwM2M Register, Update, De-register), sequenced
//! over the machines: parsing and the identity's right to the name, admission, the
//! authentication server, the claim in the directory, the endpoint table, the command
//! subscription, the register/update message, the reply, and auto-observe.

use std::net::SocketAddr;
use std::sync::Arc;

use super::cluster::Elsewhere;
use super::core::{cx, dm_env, Removal, MAX_TOPIC_LEN};
use super::directory::ClaimError;
use super::endpoint::{merge_params, Endpoint, EndpointCounters, LastReply, Objects};
use super::output::{AuthRequest, MqttOut, Timer};
use super::publish::{end_json, name_hash, registration_json, End};
use super::registration::{
    check_endpoint_name, parse_object_list, parse_params, BadRequest, ObjectList, Params,
};
use super::registrations::{HeldRegister, NotHeld};
use super::shed::{Shed, SHED_MAX_AGE_S};
use super::template::{check_level_value, Placeholder, Vars};
use super::ShardCore;
use crate::coap::{codes, opt, Message};

impl ShardCore {
    /// A Register; `authorized` when the authentication server already allowed it.
    pub(super) fn register(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        authorized: bool,
    ) {
        let req_len = data.len();
        let parsed = parse_params(msg).and_then(|p| {
            check_endpoint_name(p.ep)?;
            let objects = if msg.payload.is_empty() {
                None
            } else {
                Some(parse_object_list(msg.payload)?)
            };
            Ok((p, objects))
        });
        let (params, objects) = match parsed {
            Ok(v) => v,
            Err(BadRequest(text)) => {
                self.stats.bad_requests += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        let name = params.ep.expect("checked");
        let secure = self.security.secure();
        let allowed = self.identity_may_act(name, false).and_then(|()| {
            if !secure && self.name_is_secure(name) {
                Err(format!(
                    "endpoint {name:?} is registered over DTLS; plain CoAP may not replace it"
                ))
            } else {
                Ok(())
            }
        });
        if let Err(e) = allowed {
            self.stats.forbidden += 1;
            self.reply_error(peer, msg, codes::FORBIDDEN, &e, req_len);
            return;
        }
        if self.out.shed_next() {
            self.stats.shed[Shed::Register.index()] += 1;
            self.reply_unavailable(peer, msg, SHED_MAX_AGE_S);
            return;
        }
        if !authorized {
            if let Err(max_age) = self.admit(now, name) {
                self.reply_unavailable(peer, msg, max_age);
                return;
            }
        }
        let mountpoint = match self.render_mountpoint(name, &params, peer) {
            Ok(m) => m,
            Err(text) => {
                self.stats.bad_requests += 1;
                self.stats.bad_topics += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        if !authorized && self.settings.auth_enabled() {
            self.ask_auth(peer, msg, data, name, &params);
            return;
        }
        if authorized {
            // Held while the authentication server was asked: registrations made
            // meanwhile count against max_connections too.
            if let Err(max_age) = self.admit_capacity(name) {
                self.reply_unavailable(peer, msg, max_age);
                return;
            }
        }

        // The same name registered again replaces the old registration, wherever it
        // is: here, on another shard (the directory's answer to the claim below), or
        // both (when an Evict is still on its way).
        let replaced_here = self.table.find_name(name);
        if let Some(slot) = replaced_here {
            let keep = self.table.get(slot).map(|e| *e.mountpoint == *mountpoint) == Some(true);
            self.stats.replaced += 1;
            self.remove_endpoint(
                slot,
                Removal::Replaced {
                    keep_subscription: keep,
                },
            );
        }

        let location = self.regs.new_location(self.shard, &self.cluster);
        // The claim is the one atomic step that decides: a plain Register racing a
        // DTLS one of the same name on another shard is refused here, before it
        // has any effect beyond the local copy it replaced (which the DTLS one
        // replaces too).
        let replaced_elsewhere =
            match self
                .cluster
                .claim(cx!(self), name, location, secure, &mountpoint)
            {
                Ok(r) => r,
                Err(ClaimError::Secure(_)) => {
                    self.stats.forbidden += 1;
                    let e = format!(
                        "endpoint {name:?} is registered over DTLS; plain CoAP may not replace it"
                    );
                    self.reply_error(peer, msg, codes::FORBIDDEN, &e, req_len);
                    return;
                }
            };
        if replaced_here.is_some() || replaced_elsewhere {
            // Published here, before the register message and on its lane, even
            // when another shard held the old registration.
            self.publish_end(name, &mountpoint, End::Replaced);
        }
        let lifetime_s = self.settings.clamp_lifetime(params.lt);
        let joined = self.table.share_params(&register_params(&params));
        let objects = objects.map(|l| self.table.share_objects(objects_of(l, None)));
        let queue_mode = params.queue || params.binding.is_some_and(|b| b.contains('Q'));
        let ep = new_endpoint(
            now, peer, location, lifetime_s, name, joined, objects, mountpoint, secure, queue_mode,
        );
        self.security.registration_here(secure);
        let slot = self.table.insert(ep);
        self.arm_expiry(slot);
        let ep = self.table.get(slot).expect("inserted");
        self.cluster.registered(cx!(self), ep);
        self.stats.registrations += 1;
        self.out.claimed(slot);
        self.publish_registration(slot, "register");
        self.reply_to_endpoint(now, slot, msg, codes::CREATED);
        self.dm.auto_observe(cx!(self), dm_env!(self), slot);
    }

    /// Holds a Register while the authentication server is asked (off this thread).
    pub(super) fn ask_auth(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        name: &str,
        params: &Params<'_>,
    ) {
        let find = |k: &str| {
            params
                .others
                .iter()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| *v)
        };
        let password = msg
            .option_values(opt::URI_QUERY)
            .filter_map(|q| std::str::from_utf8(q).ok())
            .find_map(|q| q.strip_prefix("password="))
            .unwrap_or("");
        let request = AuthRequest {
            endpoint_name: name.to_string(),
            clientid: find("device_id").unwrap_or(name).to_string(),
            username: find("imei").unwrap_or(name).to_string(),
            password: password.to_string(),
            peerhost: peer.ip().to_string(),
        };
        let held = HeldRegister {
            peer,
            mid: msg.mid,
            datagram: data.to_vec(),
            identity: self.security.identity().cloned(),
        };
        match self.regs.hold(cx!(self), held, request) {
            Ok(()) => self.stats.auth_requests += 1,
            // A retransmission while the first is being checked.
            Err(NotHeld::Duplicate) => self.stats.duplicates += 1,
            Err(NotHeld::Full) => {
                self.stats.auth_overflow += 1;
                self.reply_unavailable(peer, msg, 1);
            }
        }
    }

    /// The authentication server's answer (or its absence, `allowed = false`).
    pub(super) fn auth_result(&mut self, now: u64, ticket: u64, allowed: bool) {
        let Some(p) = self.regs.release(ticket) else {
            return;
        };
        let Ok(msg) = Message::parse(&p.datagram) else {
            return;
        };
        // The Register is handled as it arrived: over DTLS with its identity, or not.
        self.with_identity(p.identity.clone(), |c| {
            if allowed {
                c.register(now, p.peer, &msg, &p.datagram, true);
            } else {
                c.stats.auth_denied += 1;
                let len = p.datagram.len();
                c.reply_error(
                    p.peer,
                    &msg,
                    codes::UNAUTHORIZED,
                    "authentication failed",
                    len,
                );
            }
        });
    }

    /// Admission before allocation: the rate bucket for every Register, the
    /// capacity cap for names not registered yet. Err carries the Max-Age.
    pub(super) fn admit(&mut self, now: u64, name: &str) -> Result<(), u32> {
        if let Err(wait_s) = self.regs.take_token(now, self.security.secure()) {
            self.stats.rate_limited += 1;
            return Err(wait_s);
        }
        self.admit_capacity(name)
    }

    /// The `max_connections` cap of the listener the Register came through, for a
    /// name not registered yet. Err carries the Max-Age.
    pub(super) fn admit_capacity(&mut self, name: &str) -> Result<(), u32> {
        // A name registered already replaces itself; the lookups are needed only
        // at the cap.
        let secure = self.security.secure();
        let (max_connections, _) = self.settings.limits(secure);
        if self.cluster.registrations_over(secure) as u64 >= max_connections
            && self.table.find_name(name).is_none()
            && !self.cluster.is_registered(name)
        {
            self.stats.over_capacity += 1;
            return Err(60);
        }
        Ok(())
    }

    /// Update (`is_update`) or De-register of the registration at `loc`.
    pub(super) fn on_registration(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        loc: &[u8],
        is_update: bool,
    ) {
        let Some(location) = Endpoint::parse_location(loc) else {
            self.stats.not_found += 1;
            self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            return;
        };
        let slot = match self.table.find_location(location) {
            Some(s) => s,
            None => {
                self.takeover_or_not_found(peer, msg, data, location);
                return;
            }
        };
        let (name, secure) = {
            let ep = self.table.get(slot).expect("found");
            (ep.name.clone(), ep.secure)
        };
        if let Err(e) = self.identity_may_act(&name, secure) {
            self.stats.forbidden += 1;
            self.reply_error(peer, msg, codes::FORBIDDEN, &e, data.len());
            return;
        }
        if is_update && self.out.shed_next() {
            self.stats.shed[Shed::Update.index()] += 1;
            self.reply_unavailable(peer, msg, SHED_MAX_AGE_S);
        } else if is_update {
            self.update(now, peer, slot, msg, data.len());
        } else {
            let reply = LastReply {
                at_ms: now,
                ..self.reply_header(msg, codes::DELETED)
            };
            self.stats.deregistrations += 1;
            self.remove_endpoint(slot, Removal::Deregistered);
            let secure = self.security.secure();
            self.regs.remember(peer, reply, secure);
            self.write_reply(peer, &reply, None);
        }
    }

    /// A request for a registration this shard does not hold: its owner is asked for
    /// it (NAT rebinding), or it is refused.
    pub(super) fn takeover_or_not_found(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        data: &[u8],
        location: u64,
    ) {
        let identity = self.security.identity().cloned();
        let asked = self
            .cluster
            .request_for(cx!(self), location, peer, data, identity.as_ref());
        match asked {
            Elsewhere::Asked => {}
            Elsewhere::Forbidden => {
                self.stats.forbidden += 1;
                let e = "this registration was made over DTLS; plain CoAP may not change it";
                self.reply_error(peer, msg, codes::FORBIDDEN, e, data.len());
            }
            Elsewhere::NotFound => {
                self.stats.not_found += 1;
                self.reply_error(peer, msg, codes::NOT_FOUND, "", data.len());
            }
        }
    }

    pub(super) fn update(
        &mut self,
        now: u64,
        peer: SocketAddr,
        slot: u32,
        msg: &Message<'_>,
        req_len: usize,
    ) {
        let parsed = parse_params(msg).and_then(|p| {
            let objects = if msg.payload.is_empty() {
                None
            } else {
                Some(parse_object_list(msg.payload)?)
            };
            Ok((p, objects))
        });
        let (params, objects) = match parsed {
            Ok(v) => v,
            Err(BadRequest(text)) => {
                self.stats.bad_requests += 1;
                self.reply_error(peer, msg, codes::BAD_REQUEST, &text, req_len);
                return;
            }
        };
        if self.table.get(slot).map(|e| e.peer) != Some(peer) {
            self.stats.rebinds += 1;
            self.table.set_peer(slot, peer);
        }
        let lifetime_s = params.lt.map(|lt| self.settings.clamp_lifetime(Some(lt)));
        let has_objects = objects.is_some();
        {
            let ep = self.table.get_mut(slot).expect("found");
            if let Some(lt) = lifetime_s {
                ep.lifetime_s = lt;
            }
            ep.expires_ms = now + ep.lifetime_s as u64 * 1000;
            ep.last_seen_ms = now;
            let mut new: Vec<(&str, &str)> = Vec::with_capacity(params.others.len() + 1);
            if let Some(b) = params.binding {
                new.push(("b", b));
                // LwM2M 1.0 says queue mode in the binding (`UQ`), so an Update's binding
                // changes it; from 1.1 on it is the Register's `Q` parameter, which an Update
                // does not repeat: a binding without `Q` leaves it as it was.
                let v1_0 = ep.is_lwm2m_1_0();
                if b.contains('Q') || v1_0 {
                    ep.queue_mode = b.contains('Q') || params.queue;
                }
            }
            if params.queue {
                ep.queue_mode = true;
            }
            new.extend_from_slice(&params.others);
            let merged = (!new.is_empty()).then(|| merge_params(ep.params(), &new));
            // The object list's `rt="oma.lwm2m"` link sets alternatePath ("/" without one).
            let objects = objects.map(|l| objects_of(l, ep.objects.as_deref()));
            if let Some(merged) = merged {
                let shared = self.table.share_params(&merged);
                self.table.get_mut(slot).expect("found").params = shared;
            }
            if let Some(objects) = objects {
                let shared = self.table.share_objects(objects);
                self.table.get_mut(slot).expect("found").objects = Some(shared);
            }
        }
        self.arm_expiry(slot);
        self.out.stored(slot);
        self.stats.updates += 1;
        if has_objects || !self.settings.update_needs_object_list {
            self.publish_registration(slot, "update");
        }
        self.reply_to_endpoint(now, slot, msg, codes::CHANGED);
        // The device is awake: send what waited for it.
        self.dm.touch(cx!(self), dm_env!(self), slot);
    }

    pub(super) fn remove_endpoint(&mut self, slot: u32, why: Removal) {
        let Some(mut ep) = self.table.remove(slot) else {
            return;
        };
        let reason = match why {
            Removal::Deregistered => "endpoint de-registered",
            Removal::Expired => "endpoint registration expired",
            Removal::Kicked => "endpoint removed by the management API",
            Removal::Replaced { .. } => "endpoint registered again",
            Removal::Moved => "endpoint moved to another node",
        };
        self.dm.finish_session(cx!(self), &mut ep, reason);
        // Moved too: the record names the other node by now (its take or claim came
        // first), so the removal changes nothing there; but it follows, in this node's
        // writer queue, any change of the record this node made before it let the
        // registration go, and so cancels a change still waiting or removes a record
        // such a change wrote back once the name's other registration had ended.
        self.record_removed(&ep);
        // A replacement's end was published by the Register that replaced it.
        let end = match why {
            Removal::Deregistered => Some(End::Deregister),
            Removal::Expired => Some(End::Expired),
            Removal::Kicked => Some(End::Kicked),
            Removal::Replaced { .. } | Removal::Moved => None,
        };
        if let Some(end) = end {
            self.publish_end(&ep.name, &ep.mountpoint, end);
        }
        // Replaced by a registration with the same mountpoint: that one owns the
        // route and the subscription now.
        if why == Removal::Moved {
            // Its subscription stays until the new node's is in place.
            self.cluster.moved_away(cx!(self), &ep);
            self.stats.handovers_pending = self.cluster.kept_len() as u64;
            return;
        }
        let keep_sub = why
            == Removal::Replaced {
                keep_subscription: true,
            };
        self.cluster.released(cx!(self), &ep, keep_sub);
    }

    pub(super) fn publish_registration(&mut self, slot: u32, kind: &str) {
        let ep = self.table.get(slot).expect("slot");
        let t = if kind == "register" {
            &self.settings.register
        } else {
            &self.settings.update
        };
        let mut topic = String::with_capacity(ep.mountpoint.len() + t.topic.len());
        topic.push_str(&ep.mountpoint);
        topic.push_str(&t.topic);
        let mut payload = Vec::with_capacity(128);
        registration_json(kind, ep, &mut payload);
        self.stats.published += 1;
        self.out.mqtt.push(MqttOut::Publish {
            lane: ep.lane,
            topic,
            payload,
            qos: t.qos,
        });
    }

    /// `{"msgType":"deregister","data":{"ep":..,"reason":..}}` on the deregister
    /// translator under `mountpoint`, on the name's lane.
    pub(super) fn publish_end(&mut self, name: &str, mountpoint: &str, end: End) {
        let t = &self.settings.deregister;
        let mut topic = String::with_capacity(mountpoint.len() + t.topic.len());
        topic.push_str(mountpoint);
        topic.push_str(&t.topic);
        let mut payload = Vec::with_capacity(64 + name.len());
        end_json(name, end.reason(), &mut payload);
        self.stats.published += 1;
        self.out.mqtt.push(MqttOut::Publish {
            lane: name_hash(name),
            topic,
            payload,
            qos: t.qos,
        });
    }

    pub(super) fn arm_expiry(&mut self, slot: u32) {
        let gen = self.table.bump_generation(slot);
        let at = self.table.get(slot).expect("slot").expires_ms;
        self.out.timers.push((at, Timer::Expire { slot, gen }));
    }

    /// The registration's mountpoint. Err (a diagnostic for the 4.00) when a value
    /// the device sent would make an invalid MQTT topic or filter, or one that a
    /// command topic could not be matched back to: a subscription the broker refuses
    /// would cost the gateway its connection, after every reconnect.
    pub(super) fn render_mountpoint(
        &self,
        name: &str,
        p: &Params<'_>,
        peer: SocketAddr,
    ) -> Result<String, String> {
        let find = |k: &str| p.others.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        let host = peer.ip().to_string();
        let vars = Vars {
            endpoint_name: name,
            clientid: find("device_id").unwrap_or(name),
            username: find("imei").unwrap_or(name),
            peerhost: &host,
        };
        let t = &self.settings.mountpoint;
        for (placeholder, key, value) in [
            (Placeholder::ClientId, "device_id", vars.clientid),
            (Placeholder::Username, "imei", vars.username),
        ] {
            if t.uses(placeholder) {
                check_level_value(value).map_err(|why| {
                    format!("{key} {why}: it is a level of this device's MQTT topics")
                })?;
            }
        }
        let mut s = String::new();
        t.render(&vars, &mut s);
        if s.len() + self.settings.longest_topic() > MAX_TOPIC_LEN {
            return Err(format!(
                "this device's MQTT topics would be longer than {MAX_TOPIC_LEN} bytes"
            ));
        }
        Ok(s)
    }
}

/// A Register's parameters as the registration message shows them (`lwm2m` and `b`
/// first), joined as [`Endpoint::params`] holds them.
fn register_params(params: &Params<'_>) -> String {
    let mut others = Vec::with_capacity(params.others.len() + 2);
    if let Some(v) = params.lwm2m {
        others.push(("lwm2m", v));
    }
    if let Some(b) = params.binding {
        others.push(("b", b));
    }
    others.extend_from_slice(&params.others);
    merge_params(std::iter::empty(), &others)
}

/// What an object list of a Register or Update says, as endpoints hold it (`previous`:
/// what the endpoint held, whose formats stay when the new list's root link gives none).
pub(super) fn objects_of(list: ObjectList, previous: Option<&Objects>) -> Objects {
    let (content_format, composite_format) = match (list.content_format, previous) {
        (None, Some(p)) => (p.content_format, p.composite_format),
        _ => (list.content_format, list.composite_format),
    };
    Objects {
        alternate_path: list.alternate_path.into(),
        list: list.paths.into(),
        content_format,
        composite_format,
    }
}

/// The endpoint a Register admitted at `location` makes, with its shared parameters and
/// object list.
#[allow(clippy::too_many_arguments)]
fn new_endpoint(
    now: u64,
    peer: SocketAddr,
    location: u64,
    lifetime_s: u32,
    name: &str,
    params: Arc<str>,
    objects: Option<Arc<Objects>>,
    mountpoint: String,
    secure: bool,
    queue_mode: bool,
) -> Endpoint {
    Endpoint {
        name: name.into(),
        location,
        peer,
        lifetime_s,
        expires_ms: now + lifetime_s as u64 * 1000,
        lane: name_hash(name),
        mountpoint: mountpoint.into_boxed_str(),
        params,
        objects,
        queue_mode,
        secure,
        session_lost: false,
        last_reply: LastReply::default(),
        prev_reply: LastReply::default(),
        registered_ms: now,
        last_seen_ms: now,
        // The Register itself.
        counters: EndpointCounters {
            recv: 1,
            ..Default::default()
        },
        session: None,
    }
}
