//! One registered endpoint, as a shard holds it. Kept compact: ten million of these
//! must fit in 5 GB (docs/architecture.md, "Memory per endpoint"). What most devices
//! send alike (parameters, the object list) is one shared copy per shard
//! ([`super::intern`]).

use super::session::Session;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the object list of a Register (or the last Update that carried one) says,
/// shared by every endpoint of the shard that sent the same.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Objects {
    /// The `rt="oma.lwm2m"` link's path (alternatePath), "/" without one.
    pub alternate_path: Box<str>,
    /// The object paths joined by `,`.
    pub list: Box<str>,
    /// Preferred content format (`ct` of the root link).
    pub content_format: Option<u16>,
    /// The first of SenML JSON, SenML CBOR and LwM2M CBOR the root link's `ct` lists.
    pub composite_format: Option<u16>,
}

/// The reply to the last request an endpoint sent, enough to rebuild it byte for
/// byte when the request is retransmitted (deduplication without storing datagrams).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastReply {
    pub valid: bool,
    pub con: bool,
    pub mid: u16,
    /// Message ID of our reply (differs from `mid` only for NON requests).
    pub reply_mid: u16,
    pub code: u8,
    pub tkl: u8,
    pub token: [u8; 8],
    pub at_ms: u64,
}

impl LastReply {
    pub fn token(&self) -> &[u8] {
        &self.token[..self.tkl as usize]
    }
}

/// Messages to and from one endpoint.
#[derive(Debug, Default, Clone, Copy)]
pub struct EndpointCounters {
    pub recv: u32,
    pub sent: u32,
    pub notifications: u32,
    pub commands: u32,
}

/// A registration.
#[derive(Debug)]
pub struct Endpoint {
    pub name: Box<str>,
    pub location: u64,
    pub peer: SocketAddr,
    pub lifetime_s: u32,
    /// When the registration expires unless updated (shard clock, ms).
    pub expires_ms: u64,
    /// MQTT connection lane: a hash of the name, so one endpoint's messages keep their order.
    pub lane: u32,
    /// The mountpoint rendered for this endpoint at registration.
    pub mountpoint: Box<str>,
    /// Query parameters other than `ep` and `lt`, secrets removed: `k=v` joined by NUL
    /// (shared: see [`super::table::EndpointTable::share`]).
    pub params: Arc<str>,
    /// Set when a Register or Update carried an object list (shared like `params`).
    pub objects: Option<Arc<Objects>>,
    pub queue_mode: bool,
    /// Registered over DTLS: plain CoAP may not update or remove it.
    pub secure: bool,
    /// Registered over DTLS and its DTLS session ended: nothing is sent to it
    /// (commands wait in its queue) until a session of an identity allowed to
    /// act for it speaks for it again.
    pub session_lost: bool,
    pub last_reply: LastReply,
    /// The reply before it (a late duplicate of the previous request).
    pub prev_reply: LastReply,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// Per-endpoint counters (`enable_stats`).
    pub counters: EndpointCounters,
    /// Commands, exchanges and observations; None while there are none.
    pub session: Option<Box<Session>>,
}

impl Endpoint {
    /// alternatePath, once an object list was given.
    pub fn alternate_path(&self) -> Option<&str> {
        self.objects.as_deref().map(|o| &*o.alternate_path)
    }

    /// Object list paths joined by `,`, once an object list was given.
    pub fn object_list(&self) -> Option<&str> {
        self.objects.as_deref().map(|o| &*o.list)
    }

    /// Preferred content format announced at registration (`ct` of the root link).
    pub fn content_format(&self) -> Option<u16> {
        self.objects.as_deref().and_then(|o| o.content_format)
    }

    /// The format of composite operations the root link announced (SenML JSON when None).
    pub fn composite_format(&self) -> Option<u16> {
        self.objects.as_deref().and_then(|o| o.composite_format)
    }

    /// Query parameters as `(key, value)` pairs.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The registration is LwM2M 1.0: its Register said `lwm2m=1.0`, `1` or `1.0.x`, or gave
    /// no version (1.0 made the parameter optional; 1.1 requires it).
    pub fn is_lwm2m_1_0(&self) -> bool {
        match self.param("lwm2m") {
            None | Some("1") | Some("1.0") => true,
            Some(v) => v.starts_with("1.0."),
        }
    }

    /// The location path segment (`rd/<location>`), lowercase hex.
    pub fn location_str(location: u64) -> String {
        format!("{location:x}")
    }

    /// Parses a location segment back.
    pub fn parse_location(s: &[u8]) -> Option<u64> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        let s = std::str::from_utf8(s).ok()?;
        u64::from_str_radix(s, 16).ok()
    }
}

/// Joins parameters as stored in [`Endpoint::params`], overriding `base` with `new`.
pub fn merge_params<'a>(
    base: impl Iterator<Item = (&'a str, &'a str)>,
    new: &[(&str, &str)],
) -> String {
    let mut out = String::new();
    let mut push = |k: &str, v: &str| {
        if !out.is_empty() {
            out.push('\0');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    };
    for (k, v) in base {
        if !new.iter().any(|(nk, _)| *nk == k) {
            push(k, v);
        }
    }
    for (k, v) in new {
        push(k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_merge_and_locations() {
        let base = merge_params(std::iter::empty(), &[("lwm2m", "1.0"), ("b", "U")]);
        assert_eq!(&*base, "lwm2m=1.0\0b=U");
        let merged = merge_params(
            base.split('\0').map(|kv| kv.split_once('=').unwrap()),
            &[("b", "UQ"), ("sms", "123")],
        );
        assert_eq!(&*merged, "lwm2m=1.0\0b=UQ\0sms=123");
        let loc = 0xdead_beef_u64;
        assert_eq!(
            Endpoint::parse_location(Endpoint::location_str(loc).as_bytes()),
            Some(loc)
        );
        assert_eq!(Endpoint::parse_location(b"zz"), None);
        assert_eq!(Endpoint::parse_location(b"11112222333344445"), None);
    }
}
