//! The management API's view of the running gateway: registrations gathered from
//! the shards through their mailboxes (the API thread waits, never a shard),
//! kicks and commands routed by the directory, configuration changes applied at run
//! time by sending new settings to every shard, and the Prometheus metrics.

use super::mail::ShardMail;
use super::udp_shard::ShardCounters;
use crate::api::{Admin, ClientInfo, CommandSubscription, ListenerInfo, LookupAnswer};
use crate::auth::AuthService;
use crate::config::duration::{format_duration, parse_duration};
use crate::config::{AutoObserve, Config, UpdateCondition};
use crate::lwm2m::command::Op;
use crate::lwm2m::{CoreSettings, CoreStats, Directory};
use crate::metrics::Writer;
use crate::mqtt::MqttStats;
use parking_lot::Mutex;
use shard::MailboxSender;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long the API waits for a shard to answer.
const SHARD_ANSWER: Duration = Duration::from_secs(5);

pub(super) struct GatewayAdmin {
    pub dir: Arc<Directory>,
    pub shards: Arc<Vec<MailboxSender<ShardMail>>>,
    pub auth: AuthService,
    pub config: Mutex<Config>,
    pub settings: Mutex<Arc<CoreSettings>>,
    pub core_stats: Vec<Arc<Mutex<CoreStats>>>,
    pub shard_counters: Vec<Arc<ShardCounters>>,
    pub router: Arc<super::router::RouterCounters>,
    pub mqtt: Arc<MqttStats>,
    /// Unix time (ms) of the shards' clock zero: registration and last-seen times are on the
    /// shards' monotonic clock, the API shows wall-clock times.
    pub epoch_ms: u64,
    /// The Bootstrap-Server's configurations and outcomes (`[bootstrap] enable`).
    pub bootstrap: Option<Arc<crate::bootstrap::BootstrapStore>>,
    /// The store's counters and state (`[store] kind = "file"`).
    pub store: Option<Arc<crate::store::StoreStats>>,
    /// The cluster side's counters (`[store] kind = "redis"`).
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// The file the configuration came from (None: built-in defaults).
    pub config_path: Option<std::path::PathBuf>,
    /// What the last `set_enabled` asked of the shards.
    pub serving: std::sync::atomic::AtomicBool,
    /// The listeners' bound addresses (UDP, then DTLS when configured).
    pub bound: (std::net::SocketAddr, Option<std::net::SocketAddr>),
    /// The object definitions the shards use (swapped on reload).
    pub registry: Arc<crate::objects::SharedRegistry>,
    /// What the shards publish, for the API's listeners.
    pub events: Arc<crate::events::EventFeed>,
}

impl GatewayAdmin {
    fn ask<T: Send + 'static>(
        &self,
        shard: usize,
        make: impl FnOnce(crossbeam_channel::Sender<T>) -> ShardMail,
    ) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shards
            .get(shard)?
            .send_timeout(make(tx), SHARD_ANSWER)
            .ok()?;
        rx.recv_timeout(SHARD_ANSWER).ok()
    }

    /// The shard and endpoint name of the client `clientid` names: as the clients list
    /// shows it (the `device_id` parameter, else the endpoint name), or by its endpoint
    /// name (as EMQX uses it).
    fn resolve(&self, clientid: &str) -> Option<(usize, String)> {
        if let Some(e) = self.dir.by_name(clientid) {
            return Some((e.shard as usize, clientid.to_string()));
        }
        (0..self.shards.len()).find_map(|i| {
            let clientid = clientid.to_string();
            let name = self
                .ask(i, |reply| ShardMail::FindClientId { clientid, reply })
                .flatten()?;
            let shard = self.dir.by_name(&name)?.shard as usize;
            Some((shard, name))
        })
    }

    fn to_wall_clock(&self, c: &mut ClientInfo) {
        c.registered_at_ms += self.epoch_ms;
        c.last_seen_ms += self.epoch_ms;
    }

    fn broadcast_settings(&self, cfg: &Config) {
        let old = self.settings.lock().clone();
        let mut s = CoreSettings::from(cfg);
        // What the engine set up at start and the configuration does not hold.
        s.auth = old.auth.clone();
        s.dtls_psk = old.dtls_psk.clone();
        s.bootstrap_configs = old.bootstrap_configs.clone();
        s.location_key = old.location_key;
        s.clock_epoch_ms = old.clock_epoch_ms;
        let s = Arc::new(s);
        *self.settings.lock() = s.clone();
        // Sent to all, then waited for: the answer to the PUT means the shards apply
        // the new settings to whatever comes next.
        let (applied, done) = crossbeam_channel::bounded(self.shards.len());
        let sent = self
            .shards
            .iter()
            .filter(|tx| {
                let msg = ShardMail::Settings {
                    settings: s.clone(),
                    applied: applied.clone(),
                };
                tx.send_timeout(msg, SHARD_ANSWER).is_ok()
            })
            .count();
        for _ in 0..sent {
            if done.recv_timeout(SHARD_ANSWER).is_err() {
                tracing::warn!("a shard did not confirm the new settings in time");
                break;
            }
        }
    }
}

impl Admin for GatewayAdmin {
    fn bootstrap(&self) -> Option<Arc<crate::bootstrap::BootstrapStore>> {
        self.bootstrap.clone()
    }

    fn objects(&self) -> Option<Arc<crate::objects::ObjectRegistry>> {
        Some(self.registry.load())
    }

    fn events(&self) -> Option<Arc<crate::events::EventFeed>> {
        Some(self.events.clone())
    }

    fn clients(&self) -> Vec<ClientInfo> {
        let mut all = Vec::new();
        for i in 0..self.shards.len() {
            if let Some(mut v) = self.ask(i, |reply| ShardMail::Clients { name: None, reply }) {
                all.append(&mut v);
            }
        }
        if let Some(view) = &self.cluster {
            // Those of the other nodes sharing the store (the ones held here are listed
            // as this node sees them).
            let mut others = view.others();
            others.retain(|c| self.dir.by_name(&c.endpoint_name).is_none());
            all.append(&mut others);
        }
        all.iter_mut().for_each(|c| self.to_wall_clock(c));
        all
    }

    fn client(&self, clientid: &str) -> Option<ClientInfo> {
        let Some((shard, name)) = self.resolve(clientid) else {
            let mut c = self.cluster.as_ref()?.other(clientid)?;
            self.to_wall_clock(&mut c);
            return Some(c);
        };
        let name = Some(name);
        let mut c = self
            .ask(shard, |reply| ShardMail::Clients { name, reply })?
            .pop()?;
        self.to_wall_clock(&mut c);
        Some(c)
    }

    fn lookup(&self, clientid: &str, path: &str, action: &str) -> LookupAnswer {
        let op = match action {
            "read" => Op::Read,
            "discover" => Op::Discover,
            _ => return LookupAnswer::NotReceived,
        };
        let Some((shard, name)) = self.resolve(clientid) else {
            return LookupAnswer::NoClient;
        };
        let path = path.to_string();
        self.ask(shard, |reply| ShardMail::Lookup {
            name,
            path,
            op,
            reply,
        })
        .unwrap_or(LookupAnswer::NoClient)
    }

    fn kick(&self, clientid: &str) -> bool {
        let Some((shard, name)) = self.resolve(clientid) else {
            return false;
        };
        self.ask(shard, |reply| ShardMail::Kick { name, reply })
            .unwrap_or(false)
    }

    fn command(&self, clientid: &str, command_json: Vec<u8>) -> Result<(), String> {
        let Some((shard, name)) = self.resolve(clientid) else {
            // Held by another node of the cluster: it runs the command.
            let Some(view) = &self.cluster else {
                return Err(format!("client {clientid:?} is not registered"));
            };
            let topic = self.config.lock().translators.command.topic.clone();
            return view.forward_command(clientid, &topic, command_json);
        };
        self.shards[shard]
            .send_timeout(
                ShardMail::ApiCommand {
                    name,
                    payload: command_json,
                },
                SHARD_ANSWER,
            )
            .map_err(|_| "the gateway is overloaded".to_string())
    }

    fn gateway_config(&self) -> String {
        config_json(&self.config.lock(), self.enabled()).encode()
    }

    /// EMQX's `"enable": false` in the document disables the gateway (as `PUT
    /// .../enable/false`), `true` enables it, once the other keys applied.
    fn update_gateway_config(&self, json: &[u8]) -> Result<String, String> {
        let v = simd_json::to_owned_value(&mut json.to_vec()).map_err(|e| e.to_string())?;
        let mut cfg = self.config.lock().clone();
        apply_runtime_keys(&mut cfg, &v)?;
        let enable = match v.get("enable") {
            None => None,
            Some(e) => Some(e.as_bool().ok_or("enable: expected true or false")?),
        };
        cfg.validate().map_err(|e| e.to_string())?;
        self.broadcast_settings(&cfg);
        *self.config.lock() = cfg;
        if let Some(on) = enable.filter(|&on| on != self.enabled()) {
            self.set_enabled(on)?;
        }
        Ok(self.gateway_config())
    }

    fn authentication(&self) -> String {
        auth_json(&self.auth.config()).encode()
    }

    fn update_authentication(&self, json: &[u8]) -> Result<String, String> {
        let mut bytes = json.to_vec();
        let a: crate::config::Authentication =
            simd_json::serde::from_slice(&mut bytes).map_err(|e| e.to_string())?;
        // Checked as the configuration file is, each error naming its key.
        let mut cfg = self.config.lock().clone();
        cfg.authentication = a.clone();
        cfg.validate().map_err(|e| e.to_string())?;
        AuthService::validate(&a)?;
        self.auth.reconfigure(&a);
        self.settings.lock().auth.store(a.enable, Ordering::SeqCst);
        *self.config.lock() = cfg.clone();
        // The shards time a held Register out after the new connect + request timeouts.
        self.broadcast_settings(&cfg);
        Ok(self.authentication())
    }

    fn metrics(&self, out: &mut String) {
        let mut w = Writer::new(out);
        super::metrics::write(self, &mut w);
        self.auth.write_metrics(&mut w);
        crate::metrics::process::write(&mut w);
    }

    fn healthy(&self) -> bool {
        MqttStats::get(&self.mqtt.connected) > 0
    }

    fn node(&self) -> String {
        match &self.cluster {
            Some(view) => view.node.clone(),
            None => crate::api::default_node(),
        }
    }

    fn store_state(&self) -> Option<&'static str> {
        if self.cluster.as_ref().is_some_and(|c| !c.stats.reachable()) {
            return Some("unreachable");
        }
        self.store.as_ref().map(|s| s.state().name())
    }

    fn enabled(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    fn set_enabled(&self, on: bool) -> Result<(), String> {
        self.serving.store(on, Ordering::SeqCst);
        let mut ended = 0;
        for i in 0..self.shards.len() {
            ended += self
                .ask(i, |ended| ShardMail::Serve { on, ended })
                .ok_or_else(|| format!("shard {i} did not answer in time"))?;
        }
        if on {
            tracing::info!("gateway enabled: serving devices");
        } else {
            tracing::info!(
                ended,
                "gateway disabled: registrations ended, datagrams dropped"
            );
        }
        Ok(())
    }

    fn started_at_ms(&self) -> Option<u64> {
        Some(self.epoch_ms)
    }

    fn listeners(&self) -> Vec<ListenerInfo> {
        let cfg = self.config.lock();
        let on = self.enabled();
        let secure = self.dir.secure_len() as u64;
        let all = self.dir.len() as u64;
        let udp = cfg.listeners.udp.iter().enumerate().map(|(i, (name, l))| {
            let bound = (i == 0).then_some(self.bound.0);
            ListenerInfo {
                kind: "udp",
                name: name.clone(),
                bind: bound.unwrap_or(l.bind).to_string(),
                running: on && bound.is_some(),
                current_connections: if i == 0 {
                    all.saturating_sub(secure)
                } else {
                    0
                },
                max_connections: l.max_connections,
                max_conn_rate: l.max_conn_rate,
            }
        });
        let dtls = cfg.listeners.dtls.iter().enumerate().map(|(i, (name, l))| {
            let bound = if i == 0 { self.bound.1 } else { None };
            ListenerInfo {
                kind: "dtls",
                name: name.clone(),
                bind: bound.unwrap_or(l.bind).to_string(),
                running: on && bound.is_some(),
                current_connections: if i == 0 { secure } else { 0 },
                max_connections: l.max_connections,
                max_conn_rate: l.max_conn_rate,
            }
        });
        udp.chain(dtls).collect()
    }

    fn command_subscription(&self, clientid: &str) -> Option<CommandSubscription> {
        let c = self.client(clientid)?;
        let s = self.settings.lock().clone();
        let mut mountpoint = String::new();
        let vars = crate::lwm2m::template::Vars {
            endpoint_name: &c.endpoint_name,
            clientid: &c.clientid,
            username: &c.username,
            peerhost: &c.peerhost,
        };
        s.mountpoint.render(&vars, &mut mountpoint);
        let topic = s.command_filter(&mountpoint);
        let filter = if s.per_endpoint_subscriptions {
            topic.clone()
        } else {
            s.wildcard_command_filter()
        };
        Some(CommandSubscription {
            topic,
            filter,
            qos: s.command.qos,
            per_endpoint: s.per_endpoint_subscriptions,
        })
    }

    fn config_file(&self) -> Result<std::path::PathBuf, String> {
        let path = crate::config::persist::target(self.config_path.as_deref())?;
        crate::config::persist::writable(path)?;
        Ok(path.to_path_buf())
    }

    fn persist_gateway_config(&self, json: &[u8]) -> Result<(), String> {
        let path = crate::config::persist::target(self.config_path.as_deref())?;
        let v = simd_json::to_owned_value(&mut json.to_vec()).map_err(|e| e.to_string())?;
        let cfg = self.config.lock().clone();
        crate::config::persist::write(path, &v, &cfg)
    }
}

/// Applies the keys of an EMQX-style gateway document that can change while
/// running. Keys that cannot change must equal the current value.
fn apply_runtime_keys(cfg: &mut Config, v: &OwnedValue) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or("the configuration must be a JSON object")?;
    let dur = |k: &str, x: &OwnedValue| -> Result<Duration, String> {
        let s = x
            .as_str()
            .ok_or_else(|| format!("{k}: expected a duration string like \"30s\""))?;
        parse_duration(s).map_err(|e| format!("{k}: {e}"))
    };
    for (k, x) in obj.iter() {
        match k.as_str() {
            "name" | "enable" => {}
            "listeners" => apply_listeners(cfg, x)?,
            "lifetime_min" => cfg.lifetime_min = dur(k, x)?,
            "lifetime_max" => cfg.lifetime_max = dur(k, x)?,
            "qmode_time_window" => cfg.qmode_time_window = dur(k, x)?,
            "idle_timeout" => cfg.idle_timeout = dur(k, x)?,
            "enable_stats" => {
                cfg.enable_stats = x.as_bool().ok_or("enable_stats: expected true or false")?
            }
            "auto_observe" => {
                cfg.auto_observe = match (x.as_bool(), x.as_array()) {
                    (Some(true), _) => AutoObserve::All,
                    (Some(false), _) => AutoObserve::Off,
                    (_, Some(a)) => AutoObserve::Paths(
                        a.iter()
                            .map(|p| {
                                p.as_str()
                                    .map(String::from)
                                    .ok_or("auto_observe: paths are strings")
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => return Err("auto_observe: expected a boolean or a list of paths".into()),
                }
            }
            "update_msg_publish_condition" => {
                cfg.update_msg_publish_condition =
                    match x.as_str() {
                        Some("always") => UpdateCondition::Always,
                        Some("contains_object_list") => UpdateCondition::ContainsObjectList,
                        _ => return Err(
                            "update_msg_publish_condition: \"always\" or \"contains_object_list\""
                                .into(),
                        ),
                    }
            }
            "mountpoint" | "xml_dir" => {
                let new = x.as_str().unwrap_or("");
                let same = if k == "mountpoint" {
                    new.trim_end_matches('/') == cfg.mountpoint.trim_end_matches('/')
                } else {
                    // The same directory, however it is spelled ("etc/lwm2m_xml/" or absolute).
                    let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                    let new_path = std::path::Path::new(new);
                    new_path == cfg.xml_dir
                        || canon(new_path).is_some_and(|n| Some(n) == canon(&cfg.xml_dir))
                };
                if !same {
                    return Err(format!(
                        "{k} cannot change at run time (restart the gateway)"
                    ));
                }
            }
            "translators" => {
                let t = x.as_object().ok_or("translators: expected an object")?;
                for (name, tv) in t.iter() {
                    let tr = match name.as_str() {
                        "command" => &mut cfg.translators.command,
                        "response" => &mut cfg.translators.response,
                        "notify" => &mut cfg.translators.notify,
                        "register" => &mut cfg.translators.register,
                        "update" => &mut cfg.translators.update,
                        "send" => &mut cfg.translators.send,
                        "deregister" => &mut cfg.translators.deregister,
                        "bootstrap" => &mut cfg.translators.bootstrap,
                        _ => return Err(format!("translators.{name}: unknown translator")),
                    };
                    if let Some(q) = tv.get("qos").and_then(|q| q.as_u64()) {
                        tr.qos = q.min(255) as u8;
                    }
                    if let Some(topic) = tv.get("topic").and_then(|t| t.as_str()) {
                        if name == "command" && topic != tr.topic {
                            return Err(
                                "translators.command.topic cannot change at run time".into()
                            );
                        }
                        tr.topic = topic.to_string();
                    }
                }
            }
            "blockwise" => {
                let b = x.as_object().ok_or("blockwise: expected an object")?;
                for (bk, bv) in b.iter() {
                    match bk.as_str() {
                        "enable" => {
                            cfg.blockwise.enable =
                                bv.as_bool().ok_or("blockwise.enable: boolean")?
                        }
                        "max_block_size" => {
                            cfg.blockwise.max_block_size =
                                bv.as_u64()
                                    .ok_or("blockwise.max_block_size: number")?
                                    .min(65535) as u16
                        }
                        "max_body_size" => {
                            let s = bv
                                .as_str()
                                .map(String::from)
                                .or_else(|| bv.as_u64().map(|n| n.to_string()));
                            cfg.blockwise.max_body_size = crate::config::size::parse_size(
                                &s.ok_or("blockwise.max_body_size: size")?,
                            )
                            .map_err(|e| format!("blockwise.max_body_size: {e}"))?
                        }
                        "exchange_lifetime" => cfg.blockwise.exchange_lifetime = dur(bk, bv)?,
                        _ => return Err(format!("blockwise.{bk}: unknown key")),
                    }
                }
            }
            other => {
                return Err(format!(
                    "{other}: unknown key or not changeable at run time"
                ))
            }
        }
    }
    Ok(())
}

/// EMQX's `listeners` array: `max_conn_rate` and `max_connections` change at run time; the
/// listener is named by `type` and `name`, and `bind` must stay what it is.
fn apply_listeners(cfg: &mut Config, x: &OwnedValue) -> Result<(), String> {
    let list = x.as_array().ok_or("listeners: expected an array")?;
    for (i, l) in list.iter().enumerate() {
        let at = |k: &str| format!("listeners[{i}].{k}");
        let obj = l
            .as_object()
            .ok_or_else(|| format!("listeners[{i}]: expected an object"))?;
        let ty = obj.get("type").and_then(|t| t.as_str()).unwrap_or("udp");
        let name = obj
            .get("name")
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let (bind, max_connections, max_conn_rate) = match ty {
            "udp" => cfg
                .listeners
                .udp
                .get_mut(name)
                .map(|l| (l.bind, &mut l.max_connections, &mut l.max_conn_rate)),
            "dtls" => cfg
                .listeners
                .dtls
                .get_mut(name)
                .map(|l| (l.bind, &mut l.max_connections, &mut l.max_conn_rate)),
            other => return Err(format!("{}: unknown listener type {other:?}", at("type"))),
        }
        .ok_or_else(|| {
            format!("listeners[{i}]: no {ty} listener named {name:?} (listeners cannot be added at run time)")
        })?;
        for (k, v) in obj.iter() {
            match k.as_str() {
                "type" | "name" => {}
                "enable" if v.as_bool() == Some(true) => {}
                "bind" => {
                    let text = v
                        .as_str()
                        .map(String::from)
                        .or_else(|| v.as_u64().map(|n| n.to_string()))
                        .ok_or_else(|| format!("{}: expected \"host:port\" or a port", at(k)))?;
                    let new = crate::config::bind::parse_bind(&text)
                        .map_err(|e| format!("{}: {e}", at(k)))?;
                    if new != bind {
                        return Err(format!(
                            "{} cannot change at run time (restart the gateway)",
                            at(k)
                        ));
                    }
                }
                "max_connections" | "max_conn_rate" => {
                    let n = match (v.as_u64(), v.as_str()) {
                        (Some(n), _) => n,
                        (None, Some("infinity")) => u64::MAX,
                        _ => {
                            return Err(format!(
                                "{}: expected a non-negative integer or \"infinity\"",
                                at(k)
                            ))
                        }
                    };
                    if k == "max_connections" {
                        *max_connections = n;
                    } else {
                        *max_conn_rate = n;
                    }
                }
                _ => {
                    return Err(format!(
                        "{}: unknown key or not changeable at run time",
                        at(k)
                    ))
                }
            }
        }
    }
    Ok(())
}

fn s(v: &str) -> OwnedValue {
    OwnedValue::from(v.to_string())
}

fn config_json(c: &Config, enabled: bool) -> OwnedValue {
    let mut o = simd_json::owned::Object::new();
    o.insert("name".into(), s("lwm2m"));
    o.insert("enable".into(), OwnedValue::from(enabled));
    o.insert("xml_dir".into(), s(&c.xml_dir.display().to_string()));
    o.insert("lifetime_min".into(), s(&format_duration(c.lifetime_min)));
    o.insert("lifetime_max".into(), s(&format_duration(c.lifetime_max)));
    o.insert(
        "qmode_time_window".into(),
        s(&format_duration(c.qmode_time_window)),
    );
    o.insert("idle_timeout".into(), s(&format_duration(c.idle_timeout)));
    o.insert(
        "auto_observe".into(),
        match &c.auto_observe {
            AutoObserve::Off => OwnedValue::from(false),
            AutoObserve::All => OwnedValue::from(true),
            AutoObserve::Paths(p) => OwnedValue::Array(Box::new(p.iter().map(|x| s(x)).collect())),
        },
    );
    o.insert("enable_stats".into(), OwnedValue::from(c.enable_stats));
    o.insert(
        "update_msg_publish_condition".into(),
        s(match c.update_msg_publish_condition {
            UpdateCondition::Always => "always",
            UpdateCondition::ContainsObjectList => "contains_object_list",
        }),
    );
    o.insert("mountpoint".into(), s(&c.mountpoint));
    let mut t = simd_json::owned::Object::new();
    for (name, tr) in c.translators.iter() {
        let mut x = simd_json::owned::Object::new();
        x.insert("topic".into(), s(&tr.topic));
        x.insert("qos".into(), OwnedValue::from(tr.qos as u64));
        t.insert(name.into(), OwnedValue::Object(Box::new(x)));
    }
    o.insert("translators".into(), OwnedValue::Object(Box::new(t)));
    let mut listeners = Vec::new();
    for (name, l) in &c.listeners.udp {
        let mut x = simd_json::owned::Object::new();
        x.insert("type".into(), s("udp"));
        x.insert("name".into(), s(name));
        x.insert("bind".into(), s(&l.bind.to_string()));
        x.insert(
            "max_connections".into(),
            OwnedValue::from(l.max_connections),
        );
        x.insert("max_conn_rate".into(), OwnedValue::from(l.max_conn_rate));
        listeners.push(OwnedValue::Object(Box::new(x)));
    }
    for (name, l) in &c.listeners.dtls {
        let mut x = simd_json::owned::Object::new();
        x.insert("type".into(), s("dtls"));
        x.insert("name".into(), s(name));
        x.insert("bind".into(), s(&l.bind.to_string()));
        x.insert(
            "max_connections".into(),
            OwnedValue::from(l.max_connections),
        );
        x.insert("max_conn_rate".into(), OwnedValue::from(l.max_conn_rate));
        listeners.push(OwnedValue::Object(Box::new(x)));
    }
    o.insert("listeners".into(), OwnedValue::Array(Box::new(listeners)));
    let mut b = simd_json::owned::Object::new();
    b.insert("enable".into(), OwnedValue::from(c.blockwise.enable));
    b.insert(
        "max_block_size".into(),
        OwnedValue::from(c.blockwise.max_block_size as u64),
    );
    b.insert(
        "max_body_size".into(),
        OwnedValue::from(c.blockwise.max_body_size),
    );
    b.insert(
        "exchange_lifetime".into(),
        s(&format_duration(c.blockwise.exchange_lifetime)),
    );
    o.insert("blockwise".into(), OwnedValue::Object(Box::new(b)));
    OwnedValue::Object(Box::new(o))
}

fn auth_json(a: &crate::config::Authentication) -> OwnedValue {
    let mut o = simd_json::owned::Object::new();
    o.insert("enable".into(), OwnedValue::from(a.enable));
    o.insert("backend".into(), s(&a.backend));
    o.insert("mechanism".into(), s(&a.mechanism));
    o.insert(
        "method".into(),
        s(match a.method {
            crate::config::HttpMethod::Get => "get",
            crate::config::HttpMethod::Post => "post",
        }),
    );
    o.insert("url".into(), s(&a.url));
    let map = |m: &std::collections::BTreeMap<String, String>| {
        let mut x = simd_json::owned::Object::new();
        for (k, v) in m {
            let shown = if crate::config::auth::looks_secret(k, v) {
                "******"
            } else {
                v
            };
            x.insert(k.clone(), s(shown));
        }
        OwnedValue::Object(Box::new(x))
    };
    o.insert("headers".into(), map(&a.headers));
    o.insert("body".into(), map(&a.body));
    o.insert("pool_size".into(), OwnedValue::from(a.pool_size as u64));
    o.insert(
        "connect_timeout".into(),
        s(&format_duration(a.connect_timeout)),
    );
    o.insert(
        "request_timeout".into(),
        s(&format_duration(a.request_timeout)),
    );
    o.insert(
        "enable_pipelining".into(),
        OwnedValue::from(a.enable_pipelining as u64),
    );
    OwnedValue::Object(Box::new(o))
}
