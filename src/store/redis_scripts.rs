//! The Redis store's keys and the Lua scripts every node writes with, each one atomic
//! in Redis, so that two nodes racing for a registration end with one owner.
//!
//! Keys, under one prefix (`lwm2m:`):
//! - `reg:{name}`: a hash: `rec` (the record, `lwm2m::record`), `loc` (its location,
//!   decimal), `owner` (the node holding it), `peer` (its device's address, `ip:port`,
//!   empty for a DTLS registration);
//! - `loc:{location}`: the name registered at that location;
//! - `peer:{ip:port}`: the location of the plain CoAP registration whose device speaks
//!   from that address (a take by address: a device a balancer moved to another node
//!   whose first datagram there is a notification);
//! - `meta:format`: the record format every node writes.
//!
//! The scripts build the `loc:` keys themselves from the prefix they are given: they
//! run on one Redis (or a Sentinel-managed primary), not on a Redis Cluster, whose
//! scripts may only touch the keys they declare.

use redis::Script;

/// Every key of the store begins with this.
pub const PREFIX: &str = "lwm2m:";

/// The record hash of `name`.
pub fn reg_key(name: &str) -> String {
    format!("{PREFIX}reg:{name}")
}

/// The key naming the registration at `location`.
pub fn loc_key(location: u64) -> String {
    format!("{PREFIX}loc:{location}")
}

/// The key naming the location of the plain registration at address `peer`.
pub fn peer_key(peer: &std::net::SocketAddr) -> String {
    format!("{PREFIX}peer:{peer}")
}

/// The key of the record format.
pub fn format_key() -> String {
    format!("{PREFIX}meta:format")
}

/// The pub/sub channel on which node `node` hears of the registrations other nodes
/// took over from it.
pub fn node_channel(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

/// The notice that the registration `name` at `location` was taken over.
pub fn release_notice(location: u64, name: &str) -> String {
    format!("release {location} {name}")
}

/// A notice read back: (location, name).
pub fn parse_release_notice(notice: &str) -> Option<(u64, &str)> {
    let rest = notice.strip_prefix("release ")?;
    let (location, name) = rest.split_once(' ')?;
    Some((location.parse().ok()?, name))
}

/// The notice that the node which took the registration `name` at `location` over has
/// its command subscription in place: the one kept for the handover may go.
pub fn unsubscribe_notice(location: u64, name: &str) -> String {
    format!("unsubscribe {location} {name}")
}

/// An unsubscribe notice read back: (location, name).
pub fn parse_unsubscribe_notice(notice: &str) -> Option<(u64, &str)> {
    let rest = notice.strip_prefix("unsubscribe ")?;
    let (location, name) = rest.split_once(' ')?;
    Some((location.parse().ok()?, name))
}

/// The notice forwarding a command (published on `topic`, with its MQTT 5 expiry) to
/// the node holding its endpoint: `command {expiry|-} {topic length}\n{topic}{payload}`.
pub fn command_notice(topic: &str, payload: &[u8], expiry_s: Option<u32>) -> Vec<u8> {
    let expiry = expiry_s.map_or("-".to_string(), |e| e.to_string());
    let mut out = format!("command {expiry} {}\n{topic}", topic.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A command notice read back: (topic, payload, expiry).
pub fn parse_command_notice(notice: &[u8]) -> Option<(String, Vec<u8>, Option<u32>)> {
    let rest = notice.strip_prefix(b"command ")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&rest[..nl]).ok()?;
    let (expiry, len) = head.split_once(' ')?;
    let expiry = match expiry {
        "-" => None,
        e => Some(e.parse().ok()?),
    };
    let len: usize = len.parse().ok()?;
    let body = &rest[nl + 1..];
    let topic = std::str::from_utf8(body.get(..len)?).ok()?.to_string();
    Some((topic, body[len..].to_vec(), expiry))
}

/// What [`put`] answered for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written.
    Written,
    /// Not written: another node holds the name now (it took the registration over).
    NotOwner,
    /// Not written: another name holds the location (a collision of two nodes' random
    /// locations, or a stale `loc:` key).
    LocationTaken,
}

impl PutOutcome {
    pub fn from_code(code: i64) -> PutOutcome {
        match code {
            1 => PutOutcome::Written,
            2 => PutOutcome::LocationTaken,
            _ => PutOutcome::NotOwner,
        }
    }
}

/// PUT: KEYS[1] the record hash; ARGV: record, location, node, claim ("1"/"0"), prefix,
/// name, the device's address (`ip:port`; empty for a DTLS registration, which is not
/// indexed by address). A claim (a new registration) takes the name whoever held it; anything else
/// applies only while this node holds the name at that location, or while nobody
/// does (a Redis restarted empty gets each registration again at its next change). A location another
/// name holds is refused. Returns {code, previous owner, previous location}: code 1
/// written, 0 not the owner, 2 the location is taken.
pub fn put() -> Script {
    Script::new(
        r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local oldloc = redis.call('HGET', KEYS[1], 'loc')
if ARGV[4] ~= '1' and owner and (owner ~= ARGV[3] or oldloc ~= ARGV[2]) then
  return {0, '', ''}
end
local lockey = ARGV[5] .. 'loc:' .. ARGV[2]
local holder = redis.call('GET', lockey)
if holder and holder ~= ARGV[6] then
  return {2, '', ''}
end
if oldloc and oldloc ~= ARGV[2] then
  redis.call('DEL', ARGV[5] .. 'loc:' .. oldloc)
end
local oldpeer = redis.call('HGET', KEYS[1], 'peer')
if oldpeer and oldpeer ~= '' and oldpeer ~= ARGV[7] then
  local pk = ARGV[5] .. 'peer:' .. oldpeer
  local at = redis.call('GET', pk)
  if at == ARGV[2] or at == oldloc then
    redis.call('DEL', pk)
  end
end
if ARGV[7] ~= '' then
  redis.call('SET', ARGV[5] .. 'peer:' .. ARGV[7], ARGV[2])
end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'loc', ARGV[2], 'owner', ARGV[3], 'peer', ARGV[7])
redis.call('SET', lockey, ARGV[6])
return {1, owner or '', oldloc or ''}
",
    )
}

/// REMOVE: KEYS[1] the record hash; ARGV: location, node, prefix. Removes the record
/// only when it is of that location and this node holds it (a registration taken over
/// by another node lives on there). Returns 1 removed, 0 not.
pub fn remove() -> Script {
    Script::new(
        r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local loc = redis.call('HGET', KEYS[1], 'loc')
if owner ~= ARGV[2] or loc ~= ARGV[1] then
  return 0
end
local peer = redis.call('HGET', KEYS[1], 'peer')
if peer and peer ~= '' then
  local pk = ARGV[3] .. 'peer:' .. peer
  if redis.call('GET', pk) == ARGV[1] then
    redis.call('DEL', pk)
  end
end
redis.call('DEL', KEYS[1])
redis.call('DEL', ARGV[3] .. 'loc:' .. ARGV[1])
return 1
",
    )
}

/// TAKE: KEYS[1] the `loc:` key; ARGV: location, node, prefix. The registration at the
/// location becomes this node's. Returns {name, record, previous owner}, or nil when no
/// registration is at the location.
pub fn take() -> Script {
    Script::new(
        r"
local name = redis.call('GET', KEYS[1])
if not name then
  return nil
end
local reg = ARGV[3] .. 'reg:' .. name
local rec = redis.call('HMGET', reg, 'rec', 'loc', 'owner')
if not rec[1] or rec[2] ~= ARGV[1] then
  return nil
end
redis.call('HSET', reg, 'owner', ARGV[2])
return {name, rec[1], rec[3] or ''}
",
    )
}

/// TAKE_PEER: KEYS[1] the `peer:` key; ARGV: node, prefix, the address (`ip:port`). The
/// plain registration whose device speaks from that address becomes this node's.
/// Returns {name, record, previous owner}; nil when none is there, when the index is
/// stale (the record has moved on to another address or location), or when this node
/// holds it already (its shards' business).
pub fn take_peer() -> Script {
    Script::new(
        r"
local loc = redis.call('GET', KEYS[1])
if not loc then
  return nil
end
local name = redis.call('GET', ARGV[2] .. 'loc:' .. loc)
if not name then
  return nil
end
local reg = ARGV[2] .. 'reg:' .. name
local rec = redis.call('HMGET', reg, 'rec', 'loc', 'owner', 'peer')
if not rec[1] or rec[2] ~= loc or rec[4] ~= ARGV[3] or rec[3] == ARGV[1] then
  return nil
end
redis.call('HSET', reg, 'owner', ARGV[1])
return {name, rec[1], rec[3] or ''}
",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notices read back as written; one kind is never taken for the other, and
    /// malformed ones are refused (names may hold spaces: the name is the rest).
    #[test]
    fn notices_read_back_as_written() {
        let r = release_notice(42, "dev 1");
        let u = unsubscribe_notice(42, "dev 1");
        assert_eq!(parse_release_notice(&r), Some((42, "dev 1")));
        assert_eq!(parse_unsubscribe_notice(&u), Some((42, "dev 1")));
        assert_eq!(parse_unsubscribe_notice(&r), None);
        assert_eq!(parse_release_notice(&u), None);
        for bad in [
            "unsubscribe",
            "unsubscribe x dev",
            "unsubscribe 42",
            "unsubscribe -1 a",
        ] {
            assert_eq!(parse_unsubscribe_notice(bad), None, "{bad}");
        }
    }
}
