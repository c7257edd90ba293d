//! The gateway's own tables: `[engine]`, `[api]`, `[coap]` and `[queue]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;

/// `[engine]`: bare-metal tuning; each key is also a command-line flag.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Engine {
    /// Worker shards; 0 = one per core.
    pub shards: usize,
    /// Pin each shard to a core.
    pub pin_cores: bool,
    /// Datagrams per recvmmsg call (1..=1024).
    pub recv_batch: usize,
    /// SO_RCVBUF of each UDP socket, bytes.
    #[serde(deserialize_with = "super::size::deserialize")]
    pub socket_rcvbuf: u64,
    /// SO_SNDBUF of each UDP socket, bytes.
    #[serde(deserialize_with = "super::size::deserialize")]
    pub socket_sndbuf: u64,
    /// Messages a shard's mailbox holds.
    pub mailbox_capacity: usize,
    /// Largest datagram received or sent, bytes (512..=65535).
    pub max_datagram: usize,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            shards: 0,
            pin_cores: false,
            recv_batch: 32,
            socket_rcvbuf: 8 << 20,
            socket_sndbuf: 8 << 20,
            mailbox_capacity: 65536,
            max_datagram: 4096,
        }
    }
}

/// `[api]`: the management HTTP API, `/metrics` and `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    #[serde(deserialize_with = "super::bind::deserialize")]
    pub bind: SocketAddr,
    /// HTTP basic-auth user of the management endpoints.
    pub api_key: String,
    /// HTTP basic-auth password; empty = management endpoints answer 401.
    pub api_secret: Secret,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 18083)),
            api_key: "admin".to_string(),
            api_secret: Secret::default(),
        }
    }
}

/// `[coap]`: CoAP transmission parameters (RFC 7252 section 4.8).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Coap {
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub ack_timeout: Duration,
    /// At least 1.0.
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// Outstanding confirmable requests per device (at least 1).
    pub nstart: usize,
    /// How long a message id is remembered for deduplication.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub exchange_lifetime: Duration,
}

impl Default for Coap {
    fn default() -> Self {
        Coap {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            exchange_lifetime: Duration::from_secs(247),
        }
    }
}

/// `[queue]`: commands held for devices in queue mode while they sleep.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueMode {
    /// Commands held per sleeping device.
    pub max_queued: usize,
    /// How long a held command stays valid; 0 = no expiry.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub default_ttl: Duration,
}

impl Default for QueueMode {
    fn default() -> Self {
        QueueMode {
            max_queued: 100,
            default_ttl: Duration::ZERO,
        }
    }
}

/// `[log]`: how the gateway writes its log (to standard error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

/// `log.format` (`--log-format`): human-readable lines, or one JSON object per line
/// for log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[bootstrap]`: the gateway as an LwM2M Bootstrap-Server (`POST /bs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bootstrap {
    pub enable: bool,
    /// The configurations (TOML, one table per endpoint name; a missing file is an
    /// empty configuration), reloaded on change or SIGHUP.
    pub config_file: std::path::PathBuf,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            enable: false,
            config_file: std::path::PathBuf::from("etc/bootstrap.toml"),
        }
    }
}

/// `[store]`: where registrations and observations outlive the process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub kind: StoreKind,
    /// The file store's directory (created when missing); relative to the
    /// configuration file.
    pub path: std::path::PathBuf,
    /// The Redis store's address (`kind = "redis"`): `redis://[user:password@]host:port[/db]`.
    pub url: String,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            kind: StoreKind::File,
            path: std::path::PathBuf::from("data"),
            url: "redis://127.0.0.1:6379".to_string(),
        }
    }
}

/// `store.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// An embedded store under `store.path`.
    #[default]
    File,
    /// Memory only: a restart forgets every registration.
    None,
    /// A Redis server at `store.url`, shared by every node of a cluster.
    Redis,
}

/// `[cluster]`: this node among several sharing one Redis store (`store.kind = "redis"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This node's name, unique among the nodes (the operator's job); empty: the host
    /// name and the process id.
    pub node: String,
}

impl Cluster {
    /// The node's name: `node`, or the host name and process id.
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_string());
        format!("{host}-{}", std::process::id())
    }
}
