//! The Bootstrap-Server's machine (LwM2M Bootstrap Interface): the bootstraps in progress
//! on this shard, each a sequence of CON requests the gateway sends to the device that
//! asked (`POST /bs?ep=NAME`), one at a time, on the shard's virtual clock:
//!
//! ```text
//! device                        gateway
//!   POST /bs?ep=dev1 ─────────▶ configuration found, admitted
//!   ◀───────────────── 2.04     "started"
//!   ◀── DELETE /0, DELETE /1    (the configuration's `delete`)     each: 2.02
//!   ◀── PUT /0/1, PUT /1/1, …   (Security and Server instances)   each: 2.04
//!   ◀── POST /bs                (Bootstrap-Finish)                 2.04: "finished"
//! ```
//!
//! Each request is retransmitted as RFC 7252 §4.2 says (ACK_TIMEOUT × random factor,
//! doubled, `max_retransmit` times); an empty ACK gives its separate response
//! EXCHANGE_LIFETIME. An error code, a Reset or silence ends the bootstrap `failed`,
//! naming the step and the code. A device has one bootstrap at a time (by address and
//! by name on a shard): a new Bootstrap-Request restarts it.
//!
//! The machine owns its runs and their timers (`Timer::Bootstrap`, stale ones ignored by
//! a sequence number); the core lends it the input's `Cx` and routes it the requests,
//! ACKs, Resets and responses of the devices it is bootstrapping.

use std::net::SocketAddr;
use std::sync::Arc;

use super::bs_config::{BootstrapConfig, SecurityMode};
use super::cx::Cx;
pub use super::output::{BootstrapEvent, BootstrapStatus, PskCredential};
use super::output::{MqttOut, Timer};
use super::publish::name_hash;
use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use crate::formats::{self, fmt_id, Value, WriteItem};
use crate::json;
use crate::model::LwPath;

/// Bootstraps in progress per shard, at most (beyond: 5.03).
pub const MAX_RUNS: usize = 4096;

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Delete,
    Write,
    Finish,
}

/// One request of a bootstrap.
#[derive(Debug)]
struct Step {
    kind: StepKind,
    path: LwPath,
    /// Write: the content format and the body.
    body: Option<(u16, Vec<u8>)>,
}

impl Step {
    /// The step as errors name it: `delete /0`, `write /1/1`, `finish`.
    fn label(&self) -> String {
        match self.kind {
            StepKind::Delete => format!("delete {}", self.path),
            StepKind::Write => format!("write {}", self.path),
            StepKind::Finish => "finish".into(),
        }
    }
}

/// The request in flight.
#[derive(Debug)]
struct InFlight {
    mid: u16,
    token: u32,
    datagram: Vec<u8>,
    retransmits: u32,
    timeout_ms: u64,
    /// An empty ACK came at `acked_ms`: the separate response is awaited.
    acked: Option<u64>,
}

/// One device's bootstrap.
#[derive(Debug)]
struct Run {
    name: Box<str>,
    peer: SocketAddr,
    /// It came over DTLS: its requests go out encrypted, only DTLS answers count.
    secure: bool,
    /// The Bootstrap-Request's message ID (its retransmissions get 2.04 again).
    request_mid: u16,
    topic: String,
    steps: Vec<Step>,
    step: usize,
    ex: InFlight,
    /// Bumped at every timer armed: older timers are stale.
    seq: u32,
    credentials: Vec<PskCredential>,
    /// When it started (ms on the shards' clock).
    started_ms: u64,
    /// The message ID of the last CON separate response acknowledged (a retransmission
    /// of it is acknowledged again, RFC 7252 §4.5).
    acked_con: Option<u16>,
}

/// The shard's bootstraps in progress.
#[derive(Debug, Default)]
pub(super) struct Bootstraps {
    runs: hashbrown::HashMap<u32, Run>,
    by_peer: hashbrown::HashMap<SocketAddr, u32>,
    by_name: hashbrown::HashMap<Box<str>, u32>,
    next_id: u32,
}

/// What a Bootstrap-Request is, relative to the runs.
pub(super) enum Known {
    /// A retransmission of the request of a run in progress.
    Retransmission,
    /// A new request from a device with a run in progress (it restarts).
    Restart,
    New,
}

impl Bootstraps {
    pub(super) fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether a run is talking to `peer` (its answers go to this machine).
    pub(super) fn talks_to(&self, peer: &SocketAddr) -> bool {
        !self.by_peer.is_empty() && self.by_peer.contains_key(peer)
    }

    /// Classifies a Bootstrap-Request of `name` from `peer` with message ID `mid`.
    pub(super) fn known(&self, peer: SocketAddr, name: &str, mid: u16, secure: bool) -> Known {
        if let Some(run) = self.by_peer.get(&peer).and_then(|id| self.runs.get(id)) {
            if run.request_mid == mid && run.secure == secure && *run.name == *name {
                return Known::Retransmission;
            }
            return Known::Restart;
        }
        if self.by_name.contains_key(name) {
            Known::Restart
        } else {
            Known::New
        }
    }

    /// Ends the runs of `peer` and of `name` (a new Bootstrap-Request replaces them).
    pub(super) fn drop_runs(&mut self, peer: SocketAddr, name: &str) -> usize {
        let ids: Vec<u32> = [self.by_peer.get(&peer), self.by_name.get(name)]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut n = 0;
        for id in ids {
            n += self.remove(id).is_some() as usize;
        }
        n
    }

    /// Ends, without a message, the run of `name` if `older(its start)`: a newer run of
    /// the device started on another shard. Whether there was one.
    pub(super) fn drop_older(&mut self, name: &str, older: impl Fn(u64) -> bool) -> bool {
        let Some(&id) = self.by_name.get(name) else {
            return false;
        };
        let started = self.runs.get(&id).map_or(0, |r| r.started_ms);
        older(started) && self.remove(id).is_some()
    }

    fn remove(&mut self, id: u32) -> Option<Run> {
        let run = self.runs.remove(&id)?;
        if self.by_peer.get(&run.peer) == Some(&id) {
            self.by_peer.remove(&run.peer);
        }
        if self.by_name.get(&run.name) == Some(&id) {
            self.by_name.remove(&run.name);
        }
        Some(run)
    }

    /// Starts the bootstrap of `name` at `peer` with `config`: publishes `started` and
    /// sends the first request. `format`: the content format of the writes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        &mut self,
        cx: &mut Cx<'_>,
        name: &str,
        peer: SocketAddr,
        secure: bool,
        request_mid: u16,
        mountpoint: String,
        config: &Arc<BootstrapConfig>,
        format: u16,
    ) {
        let steps = match build_steps(config, format) {
            Ok(s) => s,
            Err(e) => {
                // Unreachable for a checked configuration; reported rather than hidden.
                let topic = mountpoint + &cx.settings.bootstrap.topic;
                publish(cx, &topic, name, BootstrapStatus::Failed, Some(&e));
                cx.stats.bootstraps_failed += 1;
                return;
            }
        };
        let credentials = config
            .servers
            .iter()
            .filter(|s| s.security == SecurityMode::Psk)
            .filter_map(|s| {
                Some(PskCredential {
                    uri: s.uri.clone(),
                    identity: s.identity.clone()?,
                    key: s.key.clone()?,
                })
            })
            .collect();
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut topic = mountpoint;
        topic.push_str(&cx.settings.bootstrap.topic);
        let run = Run {
            name: name.into(),
            peer,
            secure,
            request_mid,
            topic,
            steps,
            step: 0,
            ex: InFlight {
                mid: 0,
                token: 0,
                datagram: Vec::new(),
                retransmits: 0,
                timeout_ms: 0,
                acked: None,
            },
            seq: 0,
            credentials,
            started_ms: cx.now,
            acked_con: None,
        };
        cx.stats.bootstraps_started += 1;
        publish(cx, &run.topic, name, BootstrapStatus::Started, None);
        event(cx, name, BootstrapStatus::Started, None, Vec::new());
        self.by_peer.insert(peer, id);
        self.by_name.insert(name.into(), id);
        self.runs.insert(id, run);
        self.send_step(cx, id);
    }

    /// Writes and sends the current step's request and arms its retransmission timer.
    fn send_step(&mut self, cx: &mut Cx<'_>, id: u32) {
        let timeout = initial_timeout(cx);
        let (mid, token) = (cx.ids.mid(), cx.ids.token());
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let step = &run.steps[run.step];
        let mut datagram = Vec::with_capacity(32 + step.body.as_ref().map_or(0, |b| b.1.len()));
        write_request(&mut datagram, step, mid, token);
        run.ex = InFlight {
            mid,
            token,
            datagram,
            retransmits: 0,
            timeout_ms: timeout,
            acked: None,
        };
        cx.stats.bootstrap_requests += 1;
        cx.stats.datagrams_out += 1;
        let bytes = &run.ex.datagram;
        cx.out
            .datagram_tagged(run.peer, run.secure, |b| b.extend_from_slice(bytes));
        run.seq = run.seq.wrapping_add(1);
        let seq = run.seq;
        cx.out
            .timers
            .push((cx.now + timeout, Timer::Bootstrap { id, seq }));
    }

    /// A `Timer::Bootstrap` came due: retransmit, keep waiting, or time the step out.
    pub(super) fn on_timer(&mut self, cx: &mut Cx<'_>, id: u32, seq: u32) {
        let now = cx.now;
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        if run.seq != seq {
            return;
        }
        let lifetime = cx.settings.exchange_lifetime_ms;
        match run.ex.acked {
            Some(at) if now < at + lifetime => {
                run.seq = run.seq.wrapping_add(1);
                let seq = run.seq;
                cx.out
                    .timers
                    .push((at + lifetime, Timer::Bootstrap { id, seq }));
                return;
            }
            None if run.ex.retransmits < cx.settings.max_retransmit => {
                run.ex.retransmits += 1;
                run.ex.timeout_ms *= 2;
                cx.stats.bootstrap_retransmissions += 1;
                cx.stats.datagrams_out += 1;
                let bytes = &run.ex.datagram;
                cx.out
                    .datagram_tagged(run.peer, run.secure, |b| b.extend_from_slice(bytes));
                run.seq = run.seq.wrapping_add(1);
                let seq = run.seq;
                let at = now + run.ex.timeout_ms;
                cx.out.timers.push((at, Timer::Bootstrap { id, seq }));
                return;
            }
            _ => {}
        }
        cx.stats.bootstrap_timeouts += 1;
        self.fail(cx, id, "timeout");
    }

    /// An ACK or Reset from `peer` (a run talks to it): true when it was one of ours.
    pub(super) fn on_ack_or_reset(
        &mut self,
        cx: &mut Cx<'_>,
        peer: SocketAddr,
        secure: bool,
        msg: &Message<'_>,
    ) -> bool {
        let Some(&id) = self.by_peer.get(&peer) else {
            return false;
        };
        let run = self.runs.get_mut(&id).expect("indexed");
        if run.secure != secure || run.ex.mid != msg.mid || run.ex.datagram.is_empty() {
            return false;
        }
        if msg.mtype == MsgType::Rst {
            cx.stats.bootstrap_resets += 1;
            self.fail(cx, id, "reset");
            return true;
        }
        if msg.is_empty() {
            if run.ex.acked.is_none() {
                // The separate response has EXCHANGE_LIFETIME from now.
                run.ex.acked = Some(cx.now);
                run.seq = run.seq.wrapping_add(1);
                let seq = run.seq;
                let at = cx.now + cx.settings.exchange_lifetime_ms;
                cx.out.timers.push((at, Timer::Bootstrap { id, seq }));
            }
            return true;
        }
        if msg.token != run.ex.token.to_be_bytes() {
            return false;
        }
        self.answered(cx, id, msg.code);
        true
    }

    /// A CON or NON response from `peer`: true when it answered the request in flight
    /// (a separate response; a CON one is acknowledged).
    pub(super) fn on_response(
        &mut self,
        cx: &mut Cx<'_>,
        peer: SocketAddr,
        secure: bool,
        msg: &Message<'_>,
    ) -> bool {
        let Some(&id) = self.by_peer.get(&peer) else {
            return false;
        };
        let run = self.runs.get_mut(&id).expect("indexed");
        if run.secure != secure {
            return false;
        }
        let con = msg.mtype == MsgType::Con;
        let again = con && run.acked_con == Some(msg.mid);
        if msg.token != run.ex.token.to_be_bytes() && !again {
            return false;
        }
        if con {
            run.acked_con = Some(msg.mid);
            cx.stats.datagrams_out += 1;
            cx.out.datagram_tagged(peer, secure, |b| {
                MessageWriter::new(b, MsgType::Ack, codes::EMPTY, msg.mid, &[]).finish()
            });
        }
        if again {
            // A retransmission of a response already taken: acknowledged, nothing more.
            cx.stats.duplicates += 1;
            return true;
        }
        self.answered(cx, id, msg.code);
        true
    }

    /// The DTLS session of `peer` ended: its bootstrap over DTLS cannot go on (its
    /// requests would go nowhere) and ends `failed` now rather than at its timeout.
    pub(super) fn session_closed(&mut self, cx: &mut Cx<'_>, peer: SocketAddr) {
        let Some(&id) = self.by_peer.get(&peer) else {
            return;
        };
        if self.runs.get(&id).is_some_and(|r| r.secure) {
            self.fail(cx, id, "DTLS session closed");
        }
    }

    /// The device answered the step in flight with `code`.
    fn answered(&mut self, cx: &mut Cx<'_>, id: u32, code: u8) {
        let run = self.runs.get_mut(&id).expect("known");
        if codes::class(code) != 2 {
            let mut c = Vec::with_capacity(4);
            codes::write_dotted(code, &mut c);
            let text = format!("{} {}", String::from_utf8_lossy(&c), codes::code_name(code));
            cx.stats.bootstrap_errors += 1;
            self.fail(cx, id, &text);
            return;
        }
        run.step += 1;
        if run.step < run.steps.len() {
            self.send_step(cx, id);
            return;
        }
        let run = self.remove(id).expect("known");
        cx.stats.bootstraps_finished += 1;
        publish(cx, &run.topic, &run.name, BootstrapStatus::Finished, None);
        event(
            cx,
            &run.name,
            BootstrapStatus::Finished,
            None,
            run.credentials,
        );
    }

    /// Ends run `id` `failed`: its step and `why`.
    fn fail(&mut self, cx: &mut Cx<'_>, id: u32, why: &str) {
        let Some(run) = self.remove(id) else {
            return;
        };
        let error = format!("{}: {why}", run.steps[run.step].label());
        cx.stats.bootstraps_failed += 1;
        publish(
            cx,
            &run.topic,
            &run.name,
            BootstrapStatus::Failed,
            Some(&error),
        );
        event(
            cx,
            &run.name,
            BootstrapStatus::Failed,
            Some(error),
            Vec::new(),
        );
    }
}

/// Publishes `{"msgType":"bootstrap","data":{"ep":..,"status":..[,"error":..]}}` on `topic`.
pub(super) fn publish(
    cx: &mut Cx<'_>,
    topic: &str,
    name: &str,
    status: BootstrapStatus,
    error: Option<&str>,
) {
    let mut payload = Vec::with_capacity(96);
    payload.extend_from_slice(b"{\"msgType\":\"bootstrap\",\"data\":{\"ep\":");
    json::string(&mut payload, name);
    payload.extend_from_slice(b",\"status\":");
    json::string(&mut payload, status.name());
    if let Some(e) = error {
        payload.extend_from_slice(b",\"error\":");
        json::string(&mut payload, e);
    }
    payload.extend_from_slice(b"}}");
    cx.stats.published += 1;
    cx.out.mqtt.push(MqttOut::Publish {
        lane: name_hash(name),
        topic: topic.to_string(),
        payload,
        qos: cx.settings.bootstrap.qos,
    });
}

/// Tells the driver (`Output::Bootstrap`).
pub(super) fn event(
    cx: &mut Cx<'_>,
    name: &str,
    status: BootstrapStatus,
    error: Option<String>,
    credentials: Vec<PskCredential>,
) {
    cx.out.bootstrap.push(BootstrapEvent {
        endpoint: name.to_string(),
        status,
        error,
        credentials,
    });
}

/// ACK_TIMEOUT scaled by a random factor in [1, ACK_RANDOM_FACTOR).
fn initial_timeout(cx: &mut Cx<'_>) -> u64 {
    let r = (cx.ids.random() >> 11) as f64 / (1u64 << 53) as f64;
    let f = 1.0 + r * (cx.settings.ack_random_factor - 1.0).max(0.0);
    (cx.settings.ack_timeout_ms as f64 * f) as u64
}

/// The content format of the writes: the one the device announced (`pct`) when the
/// gateway writes it, else TLV.
pub(super) fn write_format(announced: Option<u16>) -> u16 {
    match announced {
        Some(
            f @ (fmt_id::TLV
            | fmt_id::SENML_JSON
            | fmt_id::SENML_CBOR
            | fmt_id::LWM2M_CBOR
            | fmt_id::OLD_TLV),
        ) => f,
        _ => fmt_id::TLV,
    }
}

/// The requests of a configuration: its deletes, each account's Security and Server
/// instances (`/0/i`, `/1/i`, i = 1, 2, …), Bootstrap-Finish.
fn build_steps(config: &BootstrapConfig, format: u16) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = config
        .delete
        .iter()
        .map(|p| Step {
            kind: StepKind::Delete,
            path: *p,
            body: None,
        })
        .collect();
    let path = |ids: &[u16]| LwPath::from_ids(ids).expect("at most four levels");
    let item = |p: LwPath, r: u16, value: Value| WriteItem {
        path: p.child(r).expect("a resource below an instance"),
        value,
    };
    for (n, s) in config.servers.iter().enumerate() {
        let i = n as u16 + 1;
        let sec = path(&[0, i]);
        let mode = s.security.resource_value();
        let identity = s.identity.as_deref().unwrap_or("").as_bytes().to_vec();
        let key = s.key.clone().unwrap_or_default();
        let items = [
            item(sec, 0, Value::String(s.uri.clone())),
            item(sec, 1, Value::Boolean(false)),
            item(sec, 2, Value::Integer(mode)),
            item(sec, 3, Value::Opaque(identity)),
            item(sec, 4, Value::Opaque(Vec::new())),
            item(sec, 5, Value::Opaque(key)),
            item(sec, 10, Value::Integer(s.short_id as i64)),
        ];
        let body = formats::encode(format, &sec, &items).map_err(|e| e.to_string())?;
        steps.push(Step {
            kind: StepKind::Write,
            path: sec,
            body: Some((format, body)),
        });
        let srv = path(&[1, i]);
        let items = [
            item(srv, 0, Value::Integer(s.short_id as i64)),
            item(srv, 1, Value::Integer(s.lifetime as i64)),
            item(srv, 6, Value::Boolean(false)),
            item(srv, 7, Value::String(s.binding.clone())),
        ];
        let body = formats::encode(format, &srv, &items).map_err(|e| e.to_string())?;
        steps.push(Step {
            kind: StepKind::Write,
            path: srv,
            body: Some((format, body)),
        });
    }
    for o in &config.objects {
        let items: Vec<WriteItem> = o
            .values
            .iter()
            .map(|(r, v)| item(o.path, *r, v.clone()))
            .collect();
        let body = formats::encode(format, &o.path, &items).map_err(|e| e.to_string())?;
        steps.push(Step {
            kind: StepKind::Write,
            path: o.path,
            body: Some((format, body)),
        });
    }
    steps.push(Step {
        kind: StepKind::Finish,
        path: LwPath::ROOT,
        body: None,
    });
    Ok(steps)
}

/// The CoAP request of a step (CON).
fn write_request(buf: &mut Vec<u8>, step: &Step, mid: u16, token: u32) {
    let code = match step.kind {
        StepKind::Delete => codes::DELETE,
        StepKind::Write => codes::PUT,
        StepKind::Finish => codes::POST,
    };
    let mut w = MessageWriter::new(buf, MsgType::Con, code, mid, &token.to_be_bytes());
    if step.kind == StepKind::Finish {
        w.option(opt::URI_PATH, b"bs");
    }
    let mut num = itoa::Buffer::new();
    for id in step.path.ids() {
        w.option(opt::URI_PATH, num.format(*id).as_bytes());
    }
    match &step.body {
        Some((cf, body)) => {
            w.option_uint(opt::CONTENT_FORMAT, *cf as u32);
            w.payload(body);
        }
        None => w.finish(),
    }
}
