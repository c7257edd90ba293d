//! `[authentication]`: EMQX's HTTP authentication of each Register.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// `[authentication]`. When the table is absent authentication is disabled
/// (`Authentication::default()` has `enable = false`); when it is present,
/// `enable` defaults to `true`, as in EMQX.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    #[serde(default = "yes")]
    pub enable: bool,
    /// Only `"http"`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Only `"password_based"`.
    #[serde(default = "default_mechanism")]
    pub mechanism: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// `http://` or `https://` URL; required when enabled.
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_headers")]
    pub headers: BTreeMap<String, String>,
    /// Request body (JSON object for POST, query string for GET); values may
    /// hold `${clientid}`, `${username}`, `${password}`, `${peerhost}`,
    /// `${endpoint_name}`.
    #[serde(default = "default_body")]
    pub body: BTreeMap<String, String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(
        default = "five_seconds",
        deserialize_with = "super::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    #[serde(
        default = "five_seconds",
        deserialize_with = "super::duration::deserialize"
    )]
    pub request_timeout: Duration,
    /// Accepted for EMQX compatibility.
    #[serde(default = "default_pipelining")]
    pub enable_pipelining: u32,
    #[serde(default)]
    pub ssl: AuthSsl,
}

fn yes() -> bool {
    true
}
fn default_backend() -> String {
    "http".to_string()
}
fn default_mechanism() -> String {
    "password_based".to_string()
}
fn default_headers() -> BTreeMap<String, String> {
    BTreeMap::from([("content-type".to_string(), "application/json".to_string())])
}
fn default_body() -> BTreeMap<String, String> {
    BTreeMap::from([("clientid".to_string(), "${clientid}".to_string())])
}
fn default_pool_size() -> usize {
    8
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn default_pipelining() -> u32 {
    100
}

impl Default for Authentication {
    fn default() -> Self {
        Authentication {
            enable: false,
            backend: default_backend(),
            mechanism: default_mechanism(),
            method: HttpMethod::default(),
            url: String::new(),
            headers: default_headers(),
            body: default_body(),
            pool_size: default_pool_size(),
            connect_timeout: five_seconds(),
            request_timeout: five_seconds(),
            enable_pipelining: default_pipelining(),
            ssl: AuthSsl::default(),
        }
    }
}

/// Whether a header or body entry looks like it carries a credential. Such
/// values are hidden from `Debug` unless they are a bare placeholder
/// (`"${password}"`), which is not itself secret.
pub fn looks_secret(key: &str, value: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let secret_key = [
        "pass",
        "secret",
        "token",
        "auth",
        "key",
        "cookie",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w));
    let placeholder =
        value.starts_with("${") && value.ends_with('}') && value.matches("${").count() == 1;
    secret_key && !placeholder
}

struct Masked<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn fmt::Debug = if looks_secret(k, v) { &"***" } else { v };
                (k, shown)
            }))
            .finish()
    }
}

impl fmt::Debug for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authentication")
            .field("enable", &self.enable)
            .field("backend", &self.backend)
            .field("mechanism", &self.mechanism)
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &Masked(&self.headers))
            .field("body", &Masked(&self.body))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("enable_pipelining", &self.enable_pipelining)
            .field("ssl", &self.ssl)
            .finish()
    }
}

/// `authentication.method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
}

/// `[authentication.ssl]`: TLS towards an `https://` authentication server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSsl {
    pub enable: bool,
    /// `"verify_none"` or `"verify_peer"`.
    pub verify: String,
}

impl Default for AuthSsl {
    fn default() -> Self {
        AuthSsl {
            enable: false,
            verify: "verify_none".to_string(),
        }
    }
}
