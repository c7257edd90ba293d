//! MQTT payloads for registrations: `{"msgType":"register"|"update","data":{...}}`
//! and the end of one, `{"msgType":"deregister",...}`, exactly as the MQTT contract
//! gives them.

use super::endpoint::Endpoint;
use crate::json;

/// Writes the register/update message for `ep` into `out`.
pub fn registration_json(msg_type: &str, ep: &Endpoint, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"msgType\":");
    json::string(out, msg_type);
    out.extend_from_slice(b",\"data\":{\"ep\":");
    json::string(out, &ep.name);
    out.extend_from_slice(b",\"lt\":");
    json::uint(out, ep.lifetime_s as u64);
    for (k, v) in ep.params() {
        out.push(b',');
        json::key(out, k);
        json::string(out, v);
    }
    if let Some(alt) = ep.alternate_path() {
        out.extend_from_slice(b",\"alternatePath\":");
        json::string(out, alt);
    }
    if let Some(list) = ep.object_list() {
        out.extend_from_slice(b",\"objectList\":[");
        for (i, p) in list.split(',').filter(|s| !s.is_empty()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::string(out, p);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
}

/// Why a registration ended, as the `deregister` message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The device's De-register.
    Deregister,
    /// Its lifetime passed without an Update.
    Expired,
    /// Removed through the management API.
    Kicked,
    /// A new Register of the same name.
    Replaced,
}

impl End {
    pub fn reason(self) -> &'static str {
        match self {
            End::Deregister => "deregister",
            End::Expired => "expired",
            End::Kicked => "kicked",
            End::Replaced => "replaced",
        }
    }
}

/// Writes `{"msgType":"deregister","data":{"ep":name,"reason":reason}}` into `out`.
pub fn end_json(name: &str, reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"msgType\":\"deregister\",\"data\":{\"ep\":");
    json::string(out, name);
    out.extend_from_slice(b",\"reason\":");
    json::string(out, reason);
    out.extend_from_slice(b"}}");
}

/// A stable 32-bit hash of an endpoint name (FNV-1a), equal on every shard and in every
/// process: the lane of its MQTT messages, and the shard that answers a command for an
/// unregistered name.
pub fn name_hash(name: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
