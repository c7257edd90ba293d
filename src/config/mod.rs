//! The configuration file (`etc/lwm2m-gateway.toml`): EMQX's `gateway.lwm2m`
//! keys plus the gateway's own `[mqtt]`, `[engine]`, `[api]`, `[coap]` and
//! `[queue]` tables.
//!
//! Every key has a default, so a file holding only the keys a user changes is
//! valid (an empty file gives [`Config::default`]). Unknown keys are errors.
//! Every error names the key path it is about.
//!
//! Value forms:
//! - durations: a string with a unit, `"100ms"`, `"22s"`, `"5m"`, `"2h"`,
//!   `"1d"` (or combined, `"1h30m"`); a bare integer (`30` or `"30"`) means
//!   seconds ([`duration`]);
//! - sizes: `"4MB"`, `"512KB"`, `"1GB"`, or a number of bytes; KB = 1024
//!   bytes ([`size`]);
//! - listen addresses: `"0.0.0.0:5783"`, `"[::]:5783"`, or a bare port
//!   `"5783"` meaning `0.0.0.0:5783` ([`bind`]);
//! - relative paths in a file are relative to the file's directory (those given by
//!   command-line flags, to the working directory).

pub mod auth;
pub mod bind;
mod core_settings;
pub mod duration;
mod emqx_conf;
pub mod error;
pub mod listeners;
pub mod mqtt;
pub mod persist;
pub mod secret;
pub mod size;
pub mod tuning;
pub mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use auth::{AuthSsl, Authentication, HttpMethod};
pub use error::ConfigError;
pub use listeners::{DtlsListener, Listeners, UdpListener};
pub use mqtt::{Mqtt, MqttProtocol, MqttServer, SubscribeMode};
pub use secret::Secret;
pub use tuning::{
    Api, Bootstrap, Cluster, Coap, Engine, Log, LogFormat, QueueMode, Store, StoreKind,
};
pub use types::{AutoObserve, Blockwise, Translator, Translators, UpdateCondition};

/// The shipped configuration file, every key at its default.
pub const DEFAULT_TOML: &str = include_str!("../../etc/lwm2m-gateway.toml");

/// The default configuration file path, relative to the working directory.
pub const DEFAULT_PATH: &str = "etc/lwm2m-gateway.toml";

/// The most registrations the directory's tables are sized for at start (about
/// 600 MB of tables); beyond it they grow as registrations come.
pub const DIRECTORY_PRESIZE_MAX: u64 = 16_777_216;

/// The whole configuration. Field names are the file's keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of OMA object definitions (every `*.xml` file in it).
    pub xml_dir: PathBuf,
    /// A registration's lifetime is clamped to `[lifetime_min, lifetime_max]`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lifetime_min: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub lifetime_max: Duration,
    /// Queue mode: how long a device stays reachable after it spoke.
    #[serde(deserialize_with = "duration::deserialize")]
    pub qmode_time_window: Duration,
    /// A peer that sent nothing valid is forgotten after this.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    pub auto_observe: AutoObserve,
    pub enable_stats: bool,
    pub update_msg_publish_condition: UpdateCondition,
    /// Prefix of every topic; `${endpoint_name}` is replaced per device.
    pub mountpoint: String,
    pub translators: Translators,
    pub listeners: Listeners,
    pub blockwise: Blockwise,
    pub authentication: Authentication,
    pub mqtt: Mqtt,
    pub engine: Engine,
    pub api: Api,
    pub coap: Coap,
    pub queue: QueueMode,
    pub log: Log,
    /// `[bootstrap]`: the Bootstrap-Server.
    pub bootstrap: Bootstrap,
    /// `[store]`: registrations kept across restarts.
    pub store: Store,
    /// `[cluster]`: this node among several sharing a Redis store.
    pub cluster: Cluster,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            xml_dir: PathBuf::from("etc/lwm2m_xml"),
            lifetime_min: Duration::from_secs(1),
            lifetime_max: Duration::from_secs(86400),
            qmode_time_window: Duration::from_secs(22),
            idle_timeout: Duration::from_secs(30),
            auto_observe: AutoObserve::Off,
            enable_stats: true,
            update_msg_publish_condition: UpdateCondition::Always,
            mountpoint: "lwm2m/${endpoint_name}/".to_string(),
            translators: Translators::default(),
            listeners: Listeners::default(),
            blockwise: Blockwise::default(),
            authentication: Authentication::default(),
            mqtt: Mqtt::default(),
            engine: Engine::default(),
            api: Api::default(),
            coap: Coap::default(),
            queue: QueueMode::default(),
            log: Log::default(),
            bootstrap: Bootstrap::default(),
            store: Store::default(),
            cluster: Cluster::default(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses the file at `path`, its relative paths made relative to the
    /// file's directory. Does not validate.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        Config::read_warned(path).map(|(c, _)| c)
    }

    /// As [`Config::read`], with warnings to log once logging runs: a file whose name
    /// ends in `.conf` or `.hocon` is EMQX's HOCON (`gateway.lwm2m { ... }`), and the
    /// EMQX keys the gateway does not use are named; any file's mountpoint placeholders
    /// the gateway does not know are named too.
    pub fn read_warned(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hocon = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conf" | "hocon")
        );
        let (mut config, mut warnings) = if hocon {
            let (c, unused) = Config::from_hocon_str(&text)?;
            let unused = unused
                .into_iter()
                .map(|k| format!("{k}: an EMQX key this gateway does not use (ignored)"));
            (c, unused.collect())
        } else {
            (Config::from_toml_str(&text)?, Vec::new())
        };
        warnings.extend(config.placeholder_warnings());
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok((config, warnings))
    }

    /// EMQX's HOCON configuration (see `emqx_conf.rs`): the configuration and the EMQX
    /// keys it holds that the gateway does not use.
    pub fn from_hocon_str(s: &str) -> Result<(Config, Vec<String>), ConfigError> {
        emqx_conf::from_hocon_str(s)
    }

    /// Placeholders of the mountpoint the gateway does not know: they stay literal, which
    /// is seldom what was meant (`${endpoint_namea}`).
    pub fn placeholder_warnings(&self) -> Vec<String> {
        const KNOWN: &[&str] = &["endpoint_name", "clientid", "username", "peerhost"];
        let mut out = Vec::new();
        let mut rest = self.mountpoint.as_str();
        while let Some(i) = rest.find("${") {
            let Some(j) = rest[i..].find('}') else { break };
            let name = &rest[i + 2..i + j];
            if !KNOWN.contains(&name) {
                out.push(format!(
                    "mountpoint: unknown placeholder ${{{name}}} stays literal (known: \
                     ${{endpoint_name}}, ${{clientid}}, ${{username}}, ${{peerhost}})"
                ));
            }
            rest = &rest[i + j + 1..];
        }
        out
    }

    /// Makes every relative path of the configuration relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.xml_dir);
        fix(&mut self.bootstrap.config_file);
        fix(&mut self.store.path);
        let listeners = self.listeners.dtls.values_mut();
        let files = listeners.flat_map(|l| {
            [
                &mut l.psk_file,
                &mut l.certfile,
                &mut l.keyfile,
                &mut l.cafile,
            ]
        });
        for p in files.chain([&mut self.mqtt.ca_file]).flatten() {
            fix(p);
        }
    }

    /// Parses TOML text (missing keys take their defaults). Does not
    /// validate; see [`Config::validate`].
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(s);
        serde_path_to_error::deserialize(de).map_err(|e| parse_error(s, e))
    }

    /// Checks ranges and consistency; every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// Broker connections over all shards: `mqtt.connections`, or when unset as many as
    /// the subscription mode and the devices the listeners admit call for
    /// ([`mqtt::default_connections`]).
    pub fn mqtt_connections(&self) -> usize {
        if let Some(n) = self.mqtt.connections {
            return n;
        }
        mqtt::default_connections(self.per_endpoint(), self.admitted_devices())
    }

    /// Publishes held over all shards: `mqtt.buffer_messages`, or when unset one per
    /// device the listeners admit ([`mqtt::default_buffer_messages`]).
    pub fn mqtt_buffer_messages(&self) -> usize {
        self.mqtt.buffer_messages.unwrap_or_else(|| {
            mqtt::default_buffer_messages(self.admitted_devices(), DIRECTORY_PRESIZE_MAX)
        })
    }

    /// Whether each endpoint has a command subscription of its own.
    pub fn per_endpoint(&self) -> bool {
        self.mqtt.subscribe.resolve(&self.mqtt.server) == SubscribeMode::PerEndpoint
    }

    /// The registrations the listeners admit at most: the sum of their
    /// `max_connections` (`u64::MAX` when one is unlimited).
    pub fn admitted_devices(&self) -> u64 {
        self.listeners
            .udp
            .values()
            .map(|l| l.max_connections)
            .chain(self.listeners.dtls.values().map(|l| l.max_connections))
            .fold(0u64, u64::saturating_add)
    }

    /// The registrations the registration directory is sized for at start: what the
    /// listeners admit, at most [`DIRECTORY_PRESIZE_MAX`]; with an unlimited listener,
    /// a default listener's 1,024,000 (the directory grows beyond it as needed).
    pub fn directory_capacity(&self) -> usize {
        let n = match self.admitted_devices() {
            u64::MAX => 1_024_000,
            n => n.min(DIRECTORY_PRESIZE_MAX),
        };
        n as usize
    }

    /// The first UDP listener (by name order). Validation guarantees one.
    ///
    /// # Panics
    /// If there is no UDP listener (only possible without validation).
    pub fn udp_listener(&self) -> &UdpListener {
        self.listeners
            .udp
            .values()
            .next()
            .expect("configuration has no UDP listener (validate() rejects this)")
    }
}

fn parse_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let inner = e.into_inner();
    let mut message = inner.message().trim().replace('\n', "; ");
    // Make sure an unknown key's path ends with the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, _)) = rest.split_once('`') {
            if path.is_empty() {
                path = key.to_string();
            } else if path.rsplit('.').next() != Some(key) {
                path = format!("{path}.{key}");
            }
            message = format!("unknown key{}", &rest[key.len() + 1..]);
        }
    }
    if path.is_empty() {
        message = format!("invalid TOML: {message}");
    }
    if let Some(span) = inner.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        message = format!("{message} (line {line}, column {col})");
    }
    ConfigError::Parse {
        path_in_file: path,
        message,
    }
}
