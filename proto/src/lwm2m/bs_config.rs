//! Bootstrap configurations (LwM2M Bootstrap Interface): what the gateway, as a
//! Bootstrap-Server, writes into a device. The gateway reads them from its configuration
//! file and its management API and hands the core a [`BootstrapSource`]; the core asks it
//! at each Bootstrap-Request and never reads a file.
//!
//! One configuration is what one TOML table of the configuration file holds:
//! the Bootstrap-Delete targets and the server accounts, each written as a Security
//! instance `/0/i` and a Server instance `/1/i`, i = 1, 2, … in order.

use std::sync::Arc;

use crate::formats::Value;
use crate::model::LwPath;

/// How the device secures its connection to an LwM2M Server (Security resource 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// Pre-shared key (mode 0): identity and key.
    Psk,
    /// No security (mode 3).
    NoSec,
}

impl SecurityMode {
    /// The value of Security resource 2 (`Security Mode`).
    pub fn resource_value(self) -> i64 {
        match self {
            Self::Psk => 0,
            Self::NoSec => 3,
        }
    }

    /// The name in the configuration (`"psk"`, `"nosec"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Psk => "psk",
            Self::NoSec => "nosec",
        }
    }

    /// The mode of a configuration's `security` value.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "psk" => Some(Self::Psk),
            "nosec" => Some(Self::NoSec),
            _ => None,
        }
    }
}

/// One LwM2M Server account: a Security instance and a Server instance.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAccount {
    /// LwM2M Server URI (`coap://host:port` or `coaps://host:port`).
    pub uri: String,
    pub security: SecurityMode,
    /// PSK identity (psk mode).
    pub identity: Option<String>,
    /// PSK key (psk mode).
    pub key: Option<Vec<u8>>,
    /// Short Server ID (1..=65534).
    pub short_id: u16,
    /// Registration lifetime, seconds.
    pub lifetime: u32,
    /// Binding (`"U"`, `"UQ"`, ...).
    pub binding: String,
}

impl std::fmt::Debug for ServerAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("ServerAccount")
            .field("uri", &self.uri)
            .field("security", &self.security)
            .field("identity", &self.identity)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("short_id", &self.short_id)
            .field("lifetime", &self.lifetime)
            .field("binding", &self.binding)
            .finish()
    }
}

/// Another object instance a configuration writes (after the accounts): its path
/// (`/3/0`) and its single-instance resources' typed values.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceWrite {
    pub path: LwPath,
    pub values: Vec<(u16, Value)>,
}

/// What a device with this configuration gets.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapConfig {
    /// Bootstrap-Delete targets, in order.
    pub delete: Vec<LwPath>,
    /// Server accounts, written as `/0/i` and `/1/i`, i = 1, 2, … in order.
    pub servers: Vec<ServerAccount>,
    /// Other object instances, written in order after the accounts.
    pub objects: Vec<InstanceWrite>,
}

/// The Bootstrap-Delete targets of a configuration that does not list its own.
pub fn default_delete() -> Vec<LwPath> {
    vec![
        LwPath::from_ids(&[0]).expect("one level"),
        LwPath::from_ids(&[1]).expect("one level"),
    ]
}

/// A field of a configuration that is not valid: its name (`servers[0].uri`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The values of one object instance a configuration writes, at most (bytes): each
/// write is one request, without block-wise transfer.
pub const MAX_INSTANCE_BYTES: usize = 768;

/// Longest server URI.
pub const MAX_URI: usize = 255;

fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) | Value::Corelnk(s) => s.len(),
        Value::Opaque(b) | Value::Untyped(b) => b.len(),
        _ => 8,
    }
}

/// Longest PSK identity and key a configuration may give (as the PSK file allows).
pub const MAX_PSK_IDENTITY: usize = 128;
pub const MAX_PSK_KEY: usize = 64;

impl ServerAccount {
    /// Checks the account; `at` names it in errors (`servers[0]`).
    pub fn check(&self, at: &str) -> Result<(), FieldError> {
        let err = |field: &str, reason: String| FieldError {
            field: format!("{at}.{field}"),
            reason,
        };
        check_uri(&self.uri, self.security).map_err(|r| err("uri", r))?;
        if self.short_id == 0 || self.short_id == u16::MAX {
            return Err(err("short_id", "must be 1 to 65534".into()));
        }
        if self.lifetime == 0 {
            return Err(err("lifetime", "at least 1 second".into()));
        }
        if self.binding.is_empty()
            || self.binding.len() > 8
            || !self.binding.bytes().all(|b| b"UTSNQ".contains(&b))
        {
            return Err(err(
                "binding",
                format!(
                    "{:?} is not a binding (letters of U, T, S, N, Q)",
                    self.binding
                ),
            ));
        }
        match self.security {
            SecurityMode::NoSec => {
                if self.identity.is_some() || self.key.is_some() {
                    let f = if self.identity.is_some() {
                        "identity"
                    } else {
                        "key"
                    };
                    return Err(err(f, "only a psk account has an identity and key".into()));
                }
            }
            SecurityMode::Psk => {
                match self.identity.as_deref() {
                    None | Some("") => {
                        return Err(err("identity", "a psk account needs an identity".into()))
                    }
                    Some(i) if i.len() > MAX_PSK_IDENTITY => {
                        return Err(err(
                            "identity",
                            format!("longer than {MAX_PSK_IDENTITY} bytes"),
                        ))
                    }
                    Some(_) => {}
                }
                match self.key.as_deref() {
                    None | Some([]) => {
                        return Err(err("key", "a psk account needs a key (hex)".into()))
                    }
                    Some(k) if k.len() > MAX_PSK_KEY => {
                        return Err(err("key", format!("longer than {MAX_PSK_KEY} bytes")))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// A server URI: `coap://` for nosec, `coaps://` for psk, a host, an optional port.
fn check_uri(uri: &str, mode: SecurityMode) -> Result<(), String> {
    if uri.len() > MAX_URI {
        return Err(format!("longer than {MAX_URI} bytes"));
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} is not a URI (coap://host:port or coaps://host:port)"))?;
    let want = match mode {
        SecurityMode::NoSec => "coap",
        SecurityMode::Psk => "coaps",
    };
    if scheme != "coap" && scheme != "coaps" {
        return Err(format!(
            "{uri:?}: the scheme must be coap or coaps, not {scheme:?}"
        ));
    }
    if scheme != want {
        return Err(format!(
            "{uri:?}: a {} account's URI is {want}://",
            mode.name()
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(format!("{uri:?} has no host"));
    }
    // [v6]:port, host:port or host.
    let port = if let Some(r) = authority.strip_prefix('[') {
        let (_, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{uri:?}: unclosed IPv6 address"))?;
        after.strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{uri:?}: {p:?} is not a port")),
        }
    }
    Ok(())
}

impl BootstrapConfig {
    /// Checks every field; the error names the first bad one.
    pub fn check(&self) -> Result<(), FieldError> {
        for (i, s) in self.servers.iter().enumerate() {
            s.check(&format!("servers[{i}]"))?;
        }
        for (i, p) in self.delete.iter().enumerate() {
            if p.len() > 2 {
                return Err(FieldError {
                    field: format!("delete[{i}]"),
                    reason: format!("{p}: Bootstrap-Delete targets an object or an instance"),
                });
            }
        }
        for (i, o) in self.objects.iter().enumerate() {
            let err = |reason: String| FieldError {
                field: format!("objects[{i}].path"),
                reason,
            };
            if o.path.len() != 2 {
                return Err(err(format!(
                    "{}: an object instance (/object/instance)",
                    o.path
                )));
            }
            if matches!(o.path.object(), Some(0 | 1)) {
                return Err(err(format!(
                    "{}: Security and Server instances come from `servers`",
                    o.path
                )));
            }
            let size: usize = o.values.iter().map(|(_, v)| value_size(v)).sum();
            if size > MAX_INSTANCE_BYTES {
                return Err(FieldError {
                    field: format!("objects[{i}].values"),
                    reason: format!(
                        "{size} bytes of values; at most {MAX_INSTANCE_BYTES} (one request, no blocks)"
                    ),
                });
            }
            let mut ids: Vec<u16> = o.values.iter().map(|v| v.0).collect();
            ids.sort_unstable();
            if ids.is_empty() || ids.windows(2).any(|w| w[0] == w[1]) {
                return Err(FieldError {
                    field: format!("objects[{i}].values"),
                    reason: "one value per resource, at least one".into(),
                });
            }
        }
        let mut ids: Vec<u16> = self.servers.iter().map(|s| s.short_id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(FieldError {
                field: "servers".into(),
                reason: format!("short_id {} appears twice", w[0]),
            });
        }
        if self.servers.len() > 64 {
            return Err(FieldError {
                field: "servers".into(),
                reason: "at most 64 accounts".into(),
            });
        }
        Ok(())
    }
}

/// The configurations, by endpoint name: exact names, then patterns (`*` any run of
/// characters) in order, then `default`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootstrapConfigs {
    entries: Vec<(String, Arc<BootstrapConfig>)>,
}

impl BootstrapConfigs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the configuration of `name` (an endpoint name, a pattern or
    /// `default`); a new name goes last.
    pub fn insert(&mut self, name: &str, config: BootstrapConfig) {
        let c = Arc::new(config);
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = c,
            None => self.entries.push((name.to_string(), c)),
        }
    }

    /// Removes the configuration of `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let n = self.entries.len();
        self.entries.retain(|(k, _)| k != name);
        n != self.entries.len()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<BootstrapConfig>> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<BootstrapConfig>)> {
        self.entries.iter().map(|(n, c)| (n.as_str(), c))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configuration of endpoint `ep`: its own, else the first pattern matching
    /// it, else `default`.
    pub fn find(&self, ep: &str) -> Option<&Arc<BootstrapConfig>> {
        self.get(ep)
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|(n, _)| n.contains('*') && wildcard_match(n, ep))
                    .map(|(_, c)| c)
            })
            .or_else(|| self.get("default"))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Where the core finds a device's bootstrap configuration (the gateway's reloadable
/// store implements it; the core asks at each Bootstrap-Request).
pub trait BootstrapSource: Send + Sync + std::fmt::Debug {
    fn config_for(&self, endpoint: &str) -> Option<Arc<BootstrapConfig>>;
}

impl BootstrapSource for BootstrapConfigs {
    fn config_for(&self, endpoint: &str) -> Option<Arc<BootstrapConfig>> {
        self.find(endpoint).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk() -> ServerAccount {
        ServerAccount {
            uri: "coaps://127.0.0.1:5784".into(),
            security: SecurityMode::Psk,
            identity: Some("dev1".into()),
            key: Some(vec![1, 2, 3]),
            short_id: 101,
            lifetime: 300,
            binding: "U".into(),
        }
    }

    #[test]
    fn accounts_are_checked_field_by_field() {
        assert!(psk().check("servers[0]").is_ok());
        let bad = |f: fn(&mut ServerAccount)| {
            let mut a = psk();
            f(&mut a);
            a.check("servers[0]").unwrap_err().field
        };
        assert_eq!(bad(|a| a.uri = "http://x".into()), "servers[0].uri");
        assert_eq!(bad(|a| a.uri = "coap://x".into()), "servers[0].uri");
        assert_eq!(bad(|a| a.uri = "coaps://x:99999".into()), "servers[0].uri");
        assert_eq!(bad(|a| a.uri = "coaps://".into()), "servers[0].uri");
        assert_eq!(
            bad(|a| a.uri = format!("coaps://{}", "h".repeat(300))),
            "servers[0].uri"
        );
        assert_eq!(bad(|a| a.identity = None), "servers[0].identity");
        assert_eq!(bad(|a| a.key = None), "servers[0].key");
        assert_eq!(bad(|a| a.short_id = 0), "servers[0].short_id");
        assert_eq!(bad(|a| a.lifetime = 0), "servers[0].lifetime");
        assert_eq!(bad(|a| a.binding = "X".into()), "servers[0].binding");
        let mut n = psk();
        n.security = SecurityMode::NoSec;
        n.uri = "coap://[::1]:5783".into();
        assert_eq!(n.check("s").unwrap_err().field, "s.identity");
        n.identity = None;
        n.key = None;
        assert!(n.check("s").is_ok());
    }

    #[test]
    fn lookup_exact_then_pattern_then_default() {
        let cfg = |id: u16| BootstrapConfig {
            delete: default_delete(),
            servers: vec![ServerAccount {
                short_id: id,
                ..psk()
            }],
            objects: vec![],
        };
        let mut c = BootstrapConfigs::new();
        c.insert("default", cfg(1));
        c.insert("sensor-*", cfg(2));
        c.insert("sensor-7", cfg(3));
        assert_eq!(c.find("sensor-7").unwrap().servers[0].short_id, 3);
        assert_eq!(c.find("sensor-8").unwrap().servers[0].short_id, 2);
        assert_eq!(c.find("other").unwrap().servers[0].short_id, 1);
        assert!(c.remove("default"));
        assert!(c.find("other").is_none());
        let dup = BootstrapConfig {
            delete: vec![],
            servers: vec![psk(), psk()],
            objects: vec![],
        };
        assert_eq!(dup.check().unwrap_err().field, "servers");
        let big = BootstrapConfig {
            delete: vec![],
            servers: vec![],
            objects: vec![InstanceWrite {
                path: LwPath::parse("/3/0").unwrap(),
                values: vec![(14, Value::String("x".repeat(MAX_INSTANCE_BYTES + 1)))],
            }],
        };
        assert_eq!(big.check().unwrap_err().field, "objects[0].values");
    }
}
