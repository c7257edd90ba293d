//! `[listeners.udp.<name>]` and `[listeners.dtls.<name>]`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[listeners]`. Writing a `[listeners.udp.<name>]` table replaces the
/// built-in `default` UDP listener; with no `[listeners.dtls.<name>]` table
/// there is no DTLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub udp: BTreeMap<String, UdpListener>,
    pub dtls: BTreeMap<String, DtlsListener>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            udp: BTreeMap::from([("default".to_string(), UdpListener::default())]),
            dtls: BTreeMap::new(),
        }
    }
}

/// A plain CoAP/UDP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpListener {
    /// `"0.0.0.0:5783"`, `"[::]:5783"`, or `"5783"` (all IPv4 interfaces).
    #[serde(deserialize_with = "super::bind::deserialize")]
    pub bind: SocketAddr,
    /// Registered endpoints this listener accepts (`"infinity"` = no limit).
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub max_connections: u64,
    /// New registrations per second (`"infinity"` = no limit).
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub max_conn_rate: u64,
}

impl Default for UdpListener {
    fn default() -> Self {
        UdpListener {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5783)),
            max_connections: 1_024_000,
            max_conn_rate: 1000,
        }
    }
}

/// A CoAP/DTLS listener: pre-shared keys (`psk_file`) and/or an ECDSA
/// certificate (`certfile` + `keyfile`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtlsListener {
    #[serde(deserialize_with = "super::bind::deserialize")]
    pub bind: SocketAddr,
    /// Lines `identity:hexkey`.
    pub psk_file: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// CA for client certificates (optional).
    pub cafile: Option<PathBuf>,
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub max_connections: u64,
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub max_conn_rate: u64,
    /// An established session that received nothing this long is closed (the device
    /// handshakes again when it next speaks).
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Established sessions the listener holds (`"infinity"` = no limit), split evenly over
    /// the shards; a shard whose share is full refuses new handshakes (counted).
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub max_sessions: u64,
    /// DTLS 1.2 Connection ID (RFC 9146) for clients that offer it: their records
    /// reach their session whatever address they come from.
    pub connection_id: bool,
    /// Length in bytes of the connection IDs the gateway issues (6 to 32: 2 name
    /// the shard holding the session).
    pub connection_id_length: u8,
    /// Session resumption (RFC 5246 §7.3): how long after its full handshake a
    /// session may be resumed by a device that comes back (`"0s"`: never; every
    /// handshake is a full one).
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub session_lifetime: Duration,
    /// Resumable sessions the listener keeps (about 350 bytes each); when full, the
    /// oldest makes room.
    #[serde(deserialize_with = "super::bind::deserialize_limit")]
    pub session_cache_size: u64,
}

impl Default for DtlsListener {
    fn default() -> Self {
        DtlsListener {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5784)),
            psk_file: None,
            certfile: None,
            keyfile: None,
            cafile: None,
            max_connections: 1_024_000,
            max_conn_rate: 1000,
            idle_timeout: Duration::from_secs(3600),
            max_sessions: 1_024_000,
            connection_id: true,
            connection_id_length: 8,
            session_lifetime: Duration::from_secs(24 * 3600),
            session_cache_size: 1_024_000,
        }
    }
}
