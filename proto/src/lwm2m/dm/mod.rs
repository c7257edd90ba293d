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

use super::block_server::BlockServer;
use super::blockwise::HeldBytes;
use super::cluster::Cluster;
use super::command::{self, Arrival, Command, Echo, Encoding, Op};
use super::cx::Cx;
use super::dm_json;
use super::endpoint::Endpoint;
use super::output::{MqttOut, ShardMsg, Timer};
use super::publish::name_hash;
use super::routing::{Resolved, RoutedCommand};
use super::security::InputSecurity;
use super::session::{
    is_fresh, Deadline, Exchange, LastResult, Observation, Queued, Session, RESULT_CONTENT_MAX,
};
use super::settings::CoreSettings;
use super::settings::{AutoObserveSet, MANAGEMENT_OBJECTS};
use super::stats::Outcome;
use super::table::EndpointTable;
use crate::objects::ObjectRegistry;
use std::sync::Arc;

mod block_client;
pub(super) use block_client::client_held;
mod commands;
mod exchanges;
mod notify;
mod queue;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::{self, fmt_id};
use crate::model::{LwPath, ObjectModel, ResourceType};
use std::net::SocketAddr;

/// Forwarding hops a command may take between shards (an endpoint moving twice).
pub(super) const MAX_HOPS: u8 = 2;

/// Device management: the gateway as CoAP client of its devices. Its state is the
/// object definitions that type values and the block-wise bytes its transfers hold; the
/// sessions (exchanges, queue, observations) live on their endpoints, which the core lends
/// with the rest of the machine's environment ([`Env`]) for each input.
pub(super) struct DeviceManagement {
    /// Object definitions that type values (a new snapshot after a reload).
    registry: Arc<ObjectRegistry>,
    /// Bytes held by block-wise state (one count with the block-wise server).
    held: HeldBytes,
}

/// What device management works on besides its own state, lent for one input: the
/// endpoints, and what the other machines say (which shard holds a name, what the
/// block-wise server holds for an address, what the input's identity may do).
pub(super) struct Env<'a> {
    pub table: &'a mut EndpointTable,
    pub cluster: &'a Cluster,
    pub blocks: &'a BlockServer,
    pub security: &'a InputSecurity,
}

impl Env<'_> {
    /// True when the current input may speak for `ep` as far as its transport goes:
    /// plain CoAP for plain registrations, a DTLS identity allowed to act for the name
    /// for DTLS ones.
    pub(super) fn speaks_for(&self, s: &CoreSettings, ep: &Endpoint) -> bool {
        !ep.secure || self.security.may_act(s, &ep.name, true).is_ok()
    }
}

impl DeviceManagement {
    pub(super) fn new(held: HeldBytes) -> Self {
        DeviceManagement {
            registry: Arc::new(ObjectRegistry::empty()),
            held,
        }
    }

    /// Uses these object definitions to type values from now on.
    pub(super) fn set_registry(&mut self, registry: Arc<ObjectRegistry>) {
        self.registry = registry;
    }

    /// The object definitions in use.
    pub(super) fn registry(&self) -> &ObjectRegistry {
        &self.registry
    }

    /// Bytes block-wise state of the shard holds now (both directions).
    pub(super) fn held_bytes(&self) -> u64 {
        self.held.get()
    }

    /// A token for a new request to the endpoint at `slot`: the shard's next one,
    /// skipping any its session uses already. A registration that moved here from
    /// another shard or node carries requests, queued commands and observations with
    /// tokens of that shard's sequence, which this shard's may meet.
    pub(super) fn fresh_token(cx: &mut Cx<'_>, table: &EndpointTable, slot: u32) -> u32 {
        let session = table.get(slot).and_then(|e| e.session.as_ref());
        loop {
            let token = cx.ids.token();
            if !session.is_some_and(|s| s.uses_token(token)) {
                return token;
            }
        }
    }

    pub(super) fn session_mut(table: &mut EndpointTable, slot: u32) -> &mut Session {
        table
            .get_mut(slot)
            .expect("live slot")
            .session
            .get_or_insert_with(Default::default)
    }

    pub(super) fn publish_error(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        echo: &Echo,
        code: u8,
        error: &str,
    ) {
        let mut body = Vec::with_capacity(96);
        dm_json::error(&mut body, echo, code, error);
        self.publish_to(cx, env, slot, Topic::Response, body);
    }

    pub(super) fn publish_event(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        echo: &Echo,
        kind: &str,
    ) {
        let mut body = Vec::with_capacity(96);
        dm_json::event(&mut body, echo, kind);
        self.publish_to(cx, env, slot, Topic::Response, body);
    }

    pub(super) fn publish_to(
        &mut self,
        cx: &mut Cx<'_>,
        env: &mut Env<'_>,
        slot: u32,
        t: Topic,
        body: Vec<u8>,
    ) {
        let Some(ep) = env.table.get(slot) else {
            return;
        };
        let tr = match t {
            Topic::Response => &cx.settings.response,
            Topic::Notify => &cx.settings.notify,
        };
        let mut topic = String::with_capacity(ep.mountpoint.len() + tr.topic.len());
        topic.push_str(&ep.mountpoint);
        topic.push_str(&tr.topic);
        let (lane, qos) = (ep.lane, tr.qos);
        self.publish(cx, lane, topic, body, qos);
    }

    pub(super) fn publish(
        &mut self,
        cx: &mut Cx<'_>,
        lane: u32,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    ) {
        cx.stats.published += 1;
        cx.out.mqtt.push(MqttOut::Publish {
            lane,
            topic,
            payload,
            qos,
        });
    }

    pub(super) fn send_empty(&mut self, cx: &mut Cx<'_>, peer: SocketAddr, t: MsgType, mid: u16) {
        cx.stats.datagrams_out += 1;
        cx.out.datagram(peer, |b| {
            MessageWriter::new(b, t, codes::EMPTY, mid, &[]).finish()
        });
    }
}

pub(super) enum Topic {
    Response,
    Notify,
}

/// The operation a command's `msgType` names (None: missing or unknown).
pub(super) fn msg_type_op(echo: &Echo) -> Option<Op> {
    echo.msg_type.as_deref().and_then(Op::from_name)
}

/// Commands waiting in an endpoint's queue.
pub(super) fn queued_len(ep: &Endpoint) -> u64 {
    ep.session.as_ref().map_or(0, |s| s.queue.len() as u64)
}

pub(super) fn token_of(msg: &Message<'_>) -> Option<u32> {
    <[u8; 4]>::try_from(msg.token).ok().map(u32::from_be_bytes)
}

/// `/a/b` from a 2.01's Location-Path options.
pub(super) fn location_of(msg: &Message<'_>) -> Option<String> {
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
pub(super) fn write_format(ep: &Endpoint) -> u16 {
    match ep.content_format() {
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

/// The format of the device's composite operations: the one of SenML JSON, SenML CBOR and
/// LwM2M CBOR it announced first (`ct` of its root link), else SenML JSON.
pub(super) fn composite_format(ep: &Endpoint) -> u16 {
    ep.composite_format().unwrap_or(fmt_id::SENML_JSON)
}

/// When the registration is LwM2M 1.0 (its Register's `lwm2m` parameter; 1.0 when it gave
/// none), what to call it in an error: `"1.0 (lwm2m=1.0.2)"`, `"1.0 (no lwm2m parameter)"`.
pub(super) fn lwm2m_1_0(ep: &Endpoint) -> Option<String> {
    if !ep.is_lwm2m_1_0() {
        return None;
    }
    Some(match ep.param("lwm2m") {
        Some(v) => format!("1.0 (lwm2m={v})"),
        None => "1.0 (its Register gave no lwm2m parameter, which means 1.0)".into(),
    })
}

/// The Accept option of a read/observe: text/plain or opaque for a single-instance
/// resource whose type is known, else the device's multi-value format.
pub(super) fn accept_for(ep: &Endpoint, path: &LwPath, model: &dyn ObjectModel) -> Option<u16> {
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
    if cmd.op.observes() {
        w.option_uint(opt::OBSERVE, 0);
    } else if cmd.op.cancels() {
        w.option_uint(opt::OBSERVE, 1);
    }
    if let Some(alt) = ep.alternate_path() {
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
        _ if cmd.accept.is_some() => cmd.accept,
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
