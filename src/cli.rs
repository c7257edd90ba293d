//! The command line: which configuration file to read, and flags that
//! override single keys of it.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::bind::parse_bind;
use crate::config::size::parse_size;
use crate::config::{Config, ConfigError, MqttServer, SubscribeMode, UdpListener};
use crate::config::{DEFAULT_PATH, DEFAULT_TOML};

/// A high-throughput LwM2M-to-MQTT gateway.
///
/// Flags override the configuration file's keys and are validated the same
/// way; errors name the flag.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "lwm2m-gateway", version, about)]
pub struct Cli {
    /// Configuration file [default: etc/lwm2m-gateway.toml, or the built-in
    /// defaults if that file does not exist]
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the default configuration file and exit
    #[arg(long)]
    pub print_default_config: bool,

    /// Log filter (e.g. "info", "debug", "lwm2m_gateway=trace") [default:
    /// $RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Worker shards; 0 = one per core (engine.shards)
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// Pin each shard to a core (engine.pin_cores)
    #[arg(long)]
    pub pin_cores: bool,

    /// Datagrams per recvmmsg call, 1..=1024 (engine.recv_batch)
    #[arg(long, value_name = "N")]
    pub recv_batch: Option<usize>,

    /// Address of the first UDP listener: "ip:port" or a bare port
    /// (listeners.udp.<first>.bind)
    #[arg(long, value_name = "ADDR")]
    pub udp_bind: Option<String>,

    /// Address of the first DTLS listener (listeners.dtls.<first>.bind); the
    /// file must configure one
    #[arg(long, value_name = "ADDR")]
    pub dtls_bind: Option<String>,

    /// MQTT broker: "embedded", "mqtt://host:port" or "mqtts://host:port"
    /// (mqtt.server)
    #[arg(long, value_name = "URL_OR_embedded")]
    pub mqtt: Option<String>,

    /// Where the embedded broker listens (mqtt.embedded_bind)
    #[arg(long, value_name = "ADDR")]
    pub embedded_bind: Option<String>,

    /// MQTT connections, 1..=64 (mqtt.connections)
    #[arg(long, value_name = "N")]
    pub mqtt_connections: Option<usize>,

    /// Command subscriptions: auto, per_endpoint or wildcard (mqtt.subscribe)
    #[arg(long, value_name = "MODE")]
    pub subscribe: Option<String>,

    /// Management API address (api.bind)
    #[arg(long, value_name = "ADDR")]
    pub api_bind: Option<String>,

    /// Directory of OMA object definitions (xml_dir)
    #[arg(long, value_name = "DIR")]
    pub xml_dir: Option<PathBuf>,

    /// SO_RCVBUF of each UDP socket, e.g. "8MB" (engine.socket_rcvbuf)
    #[arg(long, value_name = "SIZE")]
    pub socket_rcvbuf: Option<String>,

    /// SO_SNDBUF of each UDP socket, e.g. "8MB" (engine.socket_sndbuf)
    #[arg(long, value_name = "SIZE")]
    pub socket_sndbuf: Option<String>,
}

/// Which configuration key a flag set, to name the flag in validation errors.
struct Overrides(Vec<(&'static str, String)>);

impl Overrides {
    fn set(&mut self, flag: &'static str, key: impl Into<String>) {
        self.0.push((flag, key.into()));
    }

    /// Renames a validation error about an overridden key after its flag.
    fn blame(&self, e: ConfigError) -> ConfigError {
        if let ConfigError::Invalid { key, message } = &e {
            for (flag, k) in &self.0 {
                if key == k || key.starts_with(&format!("{k}.")) {
                    return ConfigError::invalid(*flag, format!("{message} ({key})"));
                }
            }
        }
        e
    }
}

fn flag_err(flag: &str, message: String) -> ConfigError {
    ConfigError::invalid(flag, message)
}

impl Cli {
    /// The configuration: the file (`--config`, else `etc/lwm2m-gateway.toml`
    /// if it exists, else the built-in defaults), then the flag overrides,
    /// then validation.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.load_config_with_default(Path::new(DEFAULT_PATH))
    }

    /// As [`Cli::load_config`], with `default_path` read when `--config` is
    /// not given (and the built-in defaults if it does not exist).
    pub fn load_config_with_default(&self, default_path: &Path) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => read(path)?,
            None if default_path.exists() => read(default_path)?,
            None => Config::default(),
        };
        let overrides = self.apply(&mut config)?;
        config.validate().map_err(|e| overrides.blame(e))?;
        Ok(config)
    }

    /// The log filter: `--log-level`, else `$RUST_LOG`, else `info`.
    pub fn log_filter(&self) -> String {
        if let Some(level) = &self.log_level {
            return level.clone();
        }
        match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => v,
            _ => "info".to_string(),
        }
    }

    /// The text `--print-default-config` prints.
    pub fn default_config_text() -> &'static str {
        DEFAULT_TOML
    }

    fn apply(&self, c: &mut Config) -> Result<Overrides, ConfigError> {
        let mut o = Overrides(Vec::new());
        if let Some(n) = self.shards {
            c.engine.shards = n;
            o.set("--shards", "engine.shards");
        }
        if self.pin_cores {
            c.engine.pin_cores = true;
        }
        if let Some(n) = self.recv_batch {
            c.engine.recv_batch = n;
            o.set("--recv-batch", "engine.recv_batch");
        }
        if let Some(s) = &self.udp_bind {
            let addr = parse_bind(s).map_err(|m| flag_err("--udp-bind", m))?;
            if c.listeners.udp.is_empty() {
                c.listeners
                    .udp
                    .insert("default".to_string(), UdpListener::default());
            }
            let (name, l) = c.listeners.udp.iter_mut().next().expect("one listener");
            l.bind = addr;
            o.set("--udp-bind", format!("listeners.udp.{name}.bind"));
        }
        if let Some(s) = &self.dtls_bind {
            let addr = parse_bind(s).map_err(|m| flag_err("--dtls-bind", m))?;
            let Some((name, l)) = c.listeners.dtls.iter_mut().next() else {
                return Err(flag_err(
                    "--dtls-bind",
                    "no DTLS listener is configured; add a [listeners.dtls.default] table \
                     with psk_file or certfile + keyfile to the configuration file"
                        .to_string(),
                ));
            };
            l.bind = addr;
            o.set("--dtls-bind", format!("listeners.dtls.{name}.bind"));
        }
        if let Some(s) = &self.mqtt {
            c.mqtt.server = s.parse::<MqttServer>().map_err(|m| flag_err("--mqtt", m))?;
            o.set("--mqtt", "mqtt.server");
        }
        if let Some(s) = &self.embedded_bind {
            c.mqtt.embedded_bind = parse_bind(s).map_err(|m| flag_err("--embedded-bind", m))?;
            o.set("--embedded-bind", "mqtt.embedded_bind");
        }
        if let Some(n) = self.mqtt_connections {
            c.mqtt.connections = n;
            o.set("--mqtt-connections", "mqtt.connections");
        }
        if let Some(s) = &self.subscribe {
            c.mqtt.subscribe = s
                .parse::<SubscribeMode>()
                .map_err(|m| flag_err("--subscribe", m))?;
            o.set("--subscribe", "mqtt.subscribe");
        }
        if let Some(s) = &self.api_bind {
            c.api.bind = parse_bind(s).map_err(|m| flag_err("--api-bind", m))?;
            o.set("--api-bind", "api.bind");
        }
        if let Some(dir) = &self.xml_dir {
            c.xml_dir = dir.clone();
            o.set("--xml-dir", "xml_dir");
        }
        if let Some(s) = &self.socket_rcvbuf {
            c.engine.socket_rcvbuf = parse_size(s).map_err(|m| flag_err("--socket-rcvbuf", m))?;
            o.set("--socket-rcvbuf", "engine.socket_rcvbuf");
        }
        if let Some(s) = &self.socket_sndbuf {
            c.engine.socket_sndbuf = parse_size(s).map_err(|m| flag_err("--socket-sndbuf", m))?;
            o.set("--socket-sndbuf", "engine.socket_sndbuf");
        }
        Ok(o)
    }
}

fn read(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Config::from_toml_str(&text)
}
