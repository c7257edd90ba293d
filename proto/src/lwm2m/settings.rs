//! What the protocol core needs from the configuration, resolved once.

use super::template::Template;
use crate::model::LwPath;

/// A translator: topic suffix (after the mountpoint) and QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translator {
    pub topic: String,
    pub qos: u8,
}

#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub lifetime_min_s: u32,
    pub lifetime_max_s: u32,
    pub mountpoint: Template,
    pub command: Translator,
    pub response: Translator,
    pub notify: Translator,
    pub register: Translator,
    pub update: Translator,
    /// LwM2M 1.1 Send (`POST /dp`).
    pub send: Translator,
    /// The end of a registration (`{"msgType":"deregister",...}`).
    pub deregister: Translator,
    /// Bootstrap progress (`{"msgType":"bootstrap",...}`).
    pub bootstrap: Translator,
    /// The Bootstrap-Server's configurations (None: `POST /bs` is not served).
    pub bootstrap_configs: Option<std::sync::Arc<dyn super::bs_config::BootstrapSource>>,
    /// Publish updates only when they carry an object list.
    pub update_needs_object_list: bool,
    /// Subscribe each endpoint's command topic (else one wildcard filter elsewhere).
    pub per_endpoint_subscriptions: bool,
    pub exchange_lifetime_ms: u64,
    /// CoAP client side (RFC 7252 §4.8).
    pub ack_timeout_ms: u64,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// Confirmable requests outstanding per device.
    pub nstart: usize,
    /// Queue mode: a device is reachable this long after it last spoke.
    pub qmode_window_ms: u64,
    /// Commands held per sleeping device.
    pub max_queued: usize,
    /// A held command older than this is answered with an expiry error (0: never).
    pub queue_ttl_ms: u64,
    pub auto_observe: AutoObserveSet,
    /// Registered endpoints the UDP listener admits (all shards together).
    pub max_connections: u64,
    /// New registrations per second the UDP listener admits (split over the shards).
    pub max_conn_rate: u64,
    /// The same for registrations made over the DTLS listener.
    pub dtls_max_connections: u64,
    pub dtls_max_conn_rate: u64,
    /// Block-wise transfer (RFC 7959): on, block size exponent (size = 16 << szx),
    /// largest reassembled body, lifetime of a partial body without progress, and
    /// bytes partial transfers may hold per device and per shard.
    pub block_enable: bool,
    pub block_szx: u8,
    pub max_body_size: u64,
    pub block_lifetime_ms: u64,
    pub block_device_cap: u64,
    pub block_shard_cap: u64,
    /// Whether Registers are checked with the authentication server; shared so the
    /// management API can switch it at run time.
    pub auth: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How long a Register waits for the authentication server at most.
    pub auth_timeout_ms: u64,
    /// Per-endpoint counters for the management API.
    pub enable_stats: bool,
    /// Which endpoint names each PSK identity may register (DTLS).
    pub dtls_psk: Option<std::sync::Arc<dyn super::identity::PskPolicy>>,
    /// A verified client certificate's CN must equal the endpoint name.
    pub dtls_require_cn: bool,
    /// The secret key of the registration location permutation (see
    /// `location::LocationCipher`). The engine draws it from the OS at start; tests pass a
    /// fixed one, so the core stays deterministic.
    pub location_key: [u64; 2],
    /// Unix time (ms) of the shard clock's zero: turns `now` into wall-clock time (the
    /// arrival of a Send, for its relative SenML times). Set by the engine at start;
    /// tests pass a fixed one.
    pub clock_epoch_ms: u64,
    /// Registrations are kept in a store (`[store] kind` other than `none`): the core
    /// emits `Output::Store` for every change of what a record holds.
    pub store_records: bool,
    /// The store is shared by several nodes (`[store] kind = "redis"`): a request for a
    /// location no shard here holds asks the I/O side to take the registration over
    /// from the store (`Output::Cluster`) instead of answering 4.04.
    pub shared_store: bool,
}

/// What `auto_observe` observes after a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoObserveSet {
    Off,
    /// Every registered object instance except the management objects.
    All,
    /// Exactly these paths, when the device registered them.
    Paths(Vec<LwPath>),
}

/// Objects `auto_observe = true` leaves alone (security, server, access control,
/// connectivity monitoring, firmware, location, connectivity statistics, software
/// management, bootstrap).
pub const MANAGEMENT_OBJECTS: &[u16] = &[0, 1, 2, 4, 5, 6, 7, 9, 15];

/// The lifetime a Register without `lt` gets, before clamping.
pub const DEFAULT_LIFETIME_S: u32 = 86_400;

impl CoreSettings {
    /// The settings of the default configuration (what `From<&Config>` gives for
    /// `Config::default()`), for tests, fuzzing and benchmarks to override field by
    /// field. The location key is zero, as before the engine draws one.
    pub fn defaults() -> Self {
        let t = |topic: &str| Translator {
            topic: topic.into(),
            qos: 0,
        };
        let max_body_size = 4 << 20;
        Self {
            lifetime_min_s: 1,
            lifetime_max_s: 86_400,
            mountpoint: Template::parse("lwm2m/${endpoint_name}/").with_suffix("dn/#"),
            command: t("dn/#"),
            response: t("up/resp"),
            notify: t("up/notify"),
            register: t("up/resp"),
            update: t("up/update"),
            send: t("up/send"),
            deregister: t("up/resp"),
            bootstrap: t("up/bootstrap"),
            bootstrap_configs: None,
            update_needs_object_list: false,
            per_endpoint_subscriptions: false,
            exchange_lifetime_ms: 247_000,
            ack_timeout_ms: 2_000,
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            qmode_window_ms: 22_000,
            max_queued: 100,
            queue_ttl_ms: 0,
            auto_observe: AutoObserveSet::Off,
            max_connections: 1_024_000,
            max_conn_rate: 1000,
            dtls_max_connections: 1_024_000,
            dtls_max_conn_rate: 1000,
            block_enable: true,
            block_szx: 6,
            max_body_size,
            block_lifetime_ms: 247_000,
            block_device_cap: max_body_size + 2048,
            block_shard_cap: max_body_size * 16,
            auth: Default::default(),
            auth_timeout_ms: 11_000,
            enable_stats: true,
            dtls_psk: None,
            dtls_require_cn: false,
            location_key: [0; 2],
            clock_epoch_ms: 0,
            store_records: true,
            shared_store: false,
        }
    }

    /// The listener's (`max_connections`, `max_conn_rate`): DTLS's for a registration
    /// made over DTLS (`secure`), else UDP's.
    pub fn limits(&self, secure: bool) -> (u64, u64) {
        if secure {
            (self.dtls_max_connections, self.dtls_max_conn_rate)
        } else {
            (self.max_connections, self.max_conn_rate)
        }
    }

    pub fn auth_enabled(&self) -> bool {
        self.auth.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clamps a requested lifetime to `[lifetime_min, lifetime_max]`.
    pub fn clamp_lifetime(&self, lt: Option<u32>) -> u32 {
        lt.unwrap_or(DEFAULT_LIFETIME_S).clamp(
            self.lifetime_min_s,
            self.lifetime_max_s.max(self.lifetime_min_s),
        )
    }

    /// The MQTT filter for one endpoint's commands.
    pub fn command_filter(&self, mountpoint: &str) -> String {
        let mut s = String::with_capacity(mountpoint.len() + self.command.topic.len());
        s.push_str(mountpoint);
        s.push_str(&self.command.topic);
        s
    }

    /// The single filter covering every endpoint's commands (wildcard mode).
    pub fn wildcard_command_filter(&self) -> String {
        self.mountpoint.wildcard_filter(&self.command.topic)
    }

    /// The longest translator topic (what follows a mountpoint in any topic or filter).
    pub fn longest_topic(&self) -> usize {
        [
            &self.command,
            &self.response,
            &self.notify,
            &self.register,
            &self.update,
            &self.send,
            &self.deregister,
            &self.bootstrap,
        ]
        .iter()
        .map(|t| t.topic.len())
        .max()
        .unwrap_or(0)
    }
}
