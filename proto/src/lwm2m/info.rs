//! What the management API sees of a shard's registrations, answered by return value.

use super::command::Op;
use super::ShardCore;
use crate::json;
use crate::model::{LwPath, ObjectModel};

/// A registered device as the management API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub clientid: String,
    pub endpoint_name: String,
    pub username: String,
    pub peerhost: String,
    pub port: u16,
    pub lifetime: u32,
    pub lwm2m_version: String,
    pub binding: String,
    pub object_list: Vec<String>,
    /// Unix time in milliseconds.
    pub registered_at_ms: u64,
    pub last_seen_ms: u64,
    pub queue_mode: bool,
    /// Registered over DTLS.
    pub secure: bool,
    pub shard: u16,
    /// Present with `enable_stats`.
    pub stats: Option<ClientStats>,
    /// The node holding it, when another node of a cluster sharing the store does.
    pub node: Option<String>,
}

/// Per-endpoint counters (with `enable_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub recv_msg: u64,
    pub send_msg: u64,
    pub notifications: u64,
    pub commands: u64,
}

/// The last result of a read or discover of a path (the clients API's `lookup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// No such registration.
    NoClient,
    /// The device has not answered such a command yet.
    NotReceived,
    /// The CoAP response code and the `content` JSON (for a discover: EMQX's resource objects).
    Found { code: u8, content: Option<Vec<u8>> },
}

impl ShardCore {
    /// Registrations of this shard: all, or the one named.
    pub fn client_infos(&self, name: Option<&str>) -> Vec<ClientInfo> {
        let one = |slot| self.table.get(slot).map(|ep| self.info(ep));
        match name {
            Some(n) => self.table.find_name(n).and_then(one).into_iter().collect(),
            None => self.table.slots().map(|(_, ep)| self.info(ep)).collect(),
        }
    }

    fn info(&self, ep: &super::endpoint::Endpoint) -> ClientInfo {
        client_info(ep, self.shard, self.settings.enable_stats)
    }
}

/// What the management API shows of a registration held on `shard` (its counters when
/// `with_stats`).
pub fn client_info(ep: &super::endpoint::Endpoint, shard: u16, with_stats: bool) -> ClientInfo {
    ClientInfo {
        clientid: ep.param("device_id").unwrap_or(&ep.name).to_string(),
        endpoint_name: ep.name.to_string(),
        username: ep.param("imei").unwrap_or(&ep.name).to_string(),
        peerhost: ep.peer.ip().to_string(),
        port: ep.peer.port(),
        lifetime: ep.lifetime_s,
        lwm2m_version: ep.param("lwm2m").unwrap_or("").to_string(),
        binding: ep.param("b").unwrap_or("U").to_string(),
        object_list: ep
            .object_list()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        registered_at_ms: ep.registered_ms,
        last_seen_ms: ep.last_seen_ms,
        queue_mode: ep.queue_mode,
        secure: ep.secure,
        shard,
        stats: with_stats.then_some(ClientStats {
            recv_msg: ep.counters.recv as u64,
            send_msg: ep.counters.sent as u64,
            notifications: ep.counters.notifications as u64,
            commands: ep.counters.commands as u64,
        }),
        node: None,
    }
}

impl ShardCore {
    /// The last read or discover result for `path` (with a leading `/`, no query). A discover's
    /// links become EMQX's resource objects: `{"path","name","operations","dataType"}` for the
    /// resources the object definitions know, `{"path"}` for the rest.
    pub fn lookup(&self, name: &str, path: &str, op: Op) -> LookupAnswer {
        let Some(ep) = self.table.find_name(name).and_then(|s| self.table.get(s)) else {
            return LookupAnswer::NoClient;
        };
        let Some(r) = ep.session.as_ref().and_then(|s| s.result(op, path)) else {
            return LookupAnswer::NotReceived;
        };
        let content = match (op, r.content.as_deref()) {
            (Op::Discover, Some(c)) => Some(self.discover_resources(c)),
            (_, c) => c.map(<[u8]>::to_vec),
        };
        LookupAnswer::Found {
            code: r.code,
            content,
        }
    }

    fn discover_resources(&self, links_json: &[u8]) -> Vec<u8> {
        let mut copy = links_json.to_vec();
        let links: Vec<String> = simd_json::from_slice(&mut copy).unwrap_or_default();
        let registry = self.dm.registry();
        let mut out = Vec::with_capacity(links_json.len() * 2);
        out.push(b'[');
        let mut first = true;
        for link in &links {
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map_or(link.as_str(), |(t, _)| t);
            let Ok(p) = LwPath::parse(target) else {
                continue;
            };
            if p.len() < 3 {
                continue; // the object or instance itself
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'{');
            json::key(&mut out, "path");
            json::string(&mut out, target);
            let def = p
                .object()
                .zip(p.resource())
                .and_then(|(o, r)| registry.resource(o, r));
            if let Some(d) = def {
                let ops = &d.operations;
                let mut o = String::new();
                for (on, c) in [(ops.read, 'R'), (ops.write, 'W'), (ops.execute, 'E')] {
                    if on {
                        o.push(c);
                    }
                }
                out.push(b',');
                json::key(&mut out, "name");
                json::string(&mut out, &d.name);
                out.push(b',');
                json::key(&mut out, "operations");
                json::string(&mut out, &o);
                if o != "E" {
                    out.push(b',');
                    json::key(&mut out, "dataType");
                    json::string(&mut out, d.kind.name());
                }
            }
            out.push(b'}');
        }
        out.push(b']');
        out
    }
}
