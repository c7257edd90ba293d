//! What the management API sees of a shard's registrations.

use super::ShardCore;
use crate::api::{ClientInfo, ClientStats};

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
                .object_list
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            registered_at_ms: ep.registered_ms,
            last_seen_ms: ep.last_seen_ms,
            queue_mode: ep.queue_mode,
            shard: self.shard,
            stats: self.settings.enable_stats.then_some(ClientStats {
                recv_msg: ep.counters.recv as u64,
                send_msg: ep.counters.sent as u64,
                notifications: ep.counters.notifications as u64,
                commands: ep.counters.commands as u64,
            }),
        }
    }
}
