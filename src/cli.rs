//! The command line: which configuration file to read, and flags that
//! override single keys of it.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::bind::parse_bind;
use crate::config::size::parse_size;
use crate::config::{
    Config, ConfigError, MqttProtocol, MqttServer, Secret, SubscribeMode, UdpListener,
};
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
    /// $RUST_LOG, else info (the embedded broker at warn)]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text, or json (one object per line) (log.format)
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,

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

    /// Where the embedded broker listens for MQTT 3.1.1 (mqtt.embedded_bind)
    #[arg(long, value_name = "ADDR")]
    pub embedded_bind: Option<String>,

    /// Where the embedded broker listens for MQTT 5 (mqtt.embedded_bind_v5)
    #[arg(long, value_name = "ADDR")]
    pub embedded_bind_v5: Option<String>,

    /// MQTT version spoken to the broker: 5 or 3.1.1 (mqtt.protocol)
    #[arg(long, value_name = "VERSION")]
    pub mqtt_protocol: Option<String>,

    /// MQTT connections, 1..=64 (mqtt.connections)
    #[arg(long, value_name = "N")]
    pub mqtt_connections: Option<usize>,

    /// Command subscriptions: auto, per_endpoint or wildcard (mqtt.subscribe)
    #[arg(long, value_name = "MODE")]
    pub subscribe: Option<String>,

    /// Management API address (api.bind)
    #[arg(long, value_name = "ADDR")]
    pub api_bind: Option<String>,

    /// Management API secret, the password of HTTP basic auth with
    /// api.api_key (api.api_secret); prefer the environment variable, which
    /// other users cannot read from the process list
    #[arg(
        long,
        value_name = "SECRET",
        env = "LWM2M_API_SECRET",
        hide_env_values = true
    )]
    pub api_secret: Option<Secret>,

    /// Where registrations are kept across restarts: file, redis or none (store.kind)
    #[arg(long, value_name = "KIND")]
    pub store: Option<crate::config::StoreKind>,

    /// The file store's directory (store.path)
    #[arg(long, value_name = "DIR")]
    pub store_path: Option<PathBuf>,

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

    /// The file [`Cli::load_config`] reads: `--config`, else `etc/lwm2m-gateway.toml` if it
    /// exists; None means the built-in defaults.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_file_with_default(Path::new(DEFAULT_PATH))
    }

    fn config_file_with_default(&self, default_path: &Path) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None if default_path.exists() => Some(default_path.to_path_buf()),
            None => None,
        }
    }

    /// As [`Cli::load_config`], with `default_path` read when `--config` is
    /// not given (and the built-in defaults if it does not exist).
    pub fn load_config_with_default(&self, default_path: &Path) -> Result<Config, ConfigError> {
        self.load_config_warned(default_path).map(|(c, _)| c)
    }

    /// As [`Cli::load_config_with_default`], with the warnings to log once logging
    /// runs (see [`Config::read_warned`]).
    pub fn load_config_warned(
        &self,
        default_path: &Path,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let (mut config, warnings) = match self.config_file_with_default(default_path) {
            Some(path) => Config::read_warned(&path)?,
            None => (Config::default(), Vec::new()),
        };
        let overrides = self.apply(&mut config)?;
        config.validate().map_err(|e| overrides.blame(e))?;
        Ok((config, warnings))
    }

    /// The log filter: `--log-level`, else `$RUST_LOG`, else `info` (the embedded broker at
    /// warn). A filter that does not parse is an error naming where it came from, and so is
    /// a bare word in `--log-level` that is not a level (a filter of one unknown target would
    /// silence every log line, "ready" included).
    pub fn log_filter(&self) -> Result<String, ConfigError> {
        if let Some(level) = &self.log_level {
            check_log_filter(level, true).map_err(|m| flag_err("--log-level", m))?;
            return Ok(level.clone());
        }
        match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                check_log_filter(&v, false).map_err(|m| ConfigError::invalid("RUST_LOG", m))?;
                Ok(v)
            }
            // The embedded broker logs every connection at info: keep it to warnings.
            _ => Ok("info,rumqttd=warn".to_string()),
        }
    }

    /// The text `--print-default-config` prints.
    pub fn default_config_text() -> &'static str {
        DEFAULT_TOML
    }

    fn apply(&self, c: &mut Config) -> Result<Overrides, ConfigError> {
        let mut o = Overrides(Vec::new());
        if let Some(f) = self.log_format {
            c.log.format = f;
        }
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
        if let Some(s) = &self.embedded_bind_v5 {
            c.mqtt.embedded_bind_v5 =
                parse_bind(s).map_err(|m| flag_err("--embedded-bind-v5", m))?;
            o.set("--embedded-bind-v5", "mqtt.embedded_bind_v5");
        }
        if let Some(s) = &self.mqtt_protocol {
            c.mqtt.protocol = s
                .parse::<MqttProtocol>()
                .map_err(|m| flag_err("--mqtt-protocol", m))?;
            o.set("--mqtt-protocol", "mqtt.protocol");
        }
        if let Some(n) = self.mqtt_connections {
            c.mqtt.connections = Some(n);
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
        // Empty counts as not given: an empty variable must not wipe the file's secret.
        if let Some(s) = self.api_secret.as_ref().filter(|s| !s.is_empty()) {
            c.api.api_secret = s.clone();
            o.set("--api-secret", "api.api_secret");
        }
        if let Some(dir) = &self.xml_dir {
            c.xml_dir = dir.clone();
            o.set("--xml-dir", "xml_dir");
        }
        if let Some(k) = self.store {
            c.store.kind = k;
            o.set("--store", "store.kind");
        }
        if let Some(dir) = &self.store_path {
            c.store.path = dir.clone();
            o.set("--store-path", "store.path");
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

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether `filter` parses as a tracing filter (comma-separated `level`, `target`,
/// `target=level` directives); with `levels_only`, a bare word must be a level.
fn check_log_filter(filter: &str, levels_only: bool) -> Result<(), String> {
    let explain = "expected a level (off, error, warn, info, debug, trace) or directives such \
                   as \"info,lwm2m_gateway=debug\"";
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log filter {filter:?}: {e}; {explain}"))?;
    if levels_only {
        for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
                return Err(format!("unknown log level {d:?}; {explain}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["lwm2m-gateway"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            Dir(tempfile::tempdir().unwrap())
        }
        fn file(&self, name: &str, text: &str) -> String {
            let p = self.0.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        }
        fn missing(&self) -> PathBuf {
            self.0.path().join("absent.toml")
        }
    }

    fn load(args: &[&str], dir: &Dir) -> Result<Config, ConfigError> {
        cli(args).load_config_with_default(&dir.missing())
    }

    #[test]
    fn no_file_means_built_in_defaults() {
        let dir = Dir::new();
        assert_eq!(load(&[], &dir).unwrap(), Config::default());
    }

    #[test]
    fn default_path_is_read_when_present() {
        let dir = Dir::new();
        let p = dir.file("default.toml", "[engine]\nshards = 5\n");
        let c = cli(&[]).load_config_with_default(Path::new(&p)).unwrap();
        assert_eq!(c.engine.shards, 5);
    }

    #[test]
    fn shipped_default_path_loads() {
        // Tests run in the package root, where etc/lwm2m-gateway.toml lives; its store
        // directory is relative to it.
        let mut want = Config::default();
        want.store.path = Path::new("etc").join(&want.store.path);
        assert_eq!(cli(&[]).load_config().unwrap(), want);
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = Dir::new();
        let missing = dir.missing();
        let e = load(&["--config", missing.to_str().unwrap()], &dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e}");
        assert!(e.to_string().contains("absent.toml"), "{e}");
    }

    #[test]
    fn file_errors_pass_through() {
        let dir = Dir::new();
        let p = dir.file("bad.toml", "[engine]\nthreads = 2\n");
        let e = load(&["-c", &p], &dir).unwrap_err();
        assert_eq!(e.key(), Some("engine.threads"), "{e}");
        let p = dir.file("bad2.toml", "[blockwise]\nmax_block_size = 100\n");
        let e = load(&["-c", &p], &dir).unwrap_err();
        assert_eq!(e.key(), Some("blockwise.max_block_size"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = Dir::new();
        let p = dir.file(
            "gw.toml",
            "xml_dir = \"/opt/xml\"\n[engine]\nshards = 2\nrecv_batch = 16\n\
             [listeners.udp.a]\nbind = 6000\n",
        );
        let c = load(
            &[
                "--config",
                &p,
                "--shards",
                "4",
                "--pin-cores",
                "--recv-batch",
                "64",
                "--udp-bind",
                "[::]:5683",
                "--mqtt",
                "mqtts://broker.example.com:8884",
                "--embedded-bind",
                "1884",
                "--embedded-bind-v5",
                "127.0.0.1:1885",
                "--mqtt-connections",
                "8",
                "--mqtt-protocol",
                "3.1.1",
                "--subscribe",
                "wildcard",
                "--api-bind",
                "0.0.0.0:9000",
                "--xml-dir",
                "/srv/xml",
                "--socket-rcvbuf",
                "16MB",
                "--socket-sndbuf",
                "512KB",
                "--api-secret",
                "flag-secret",
            ],
            &dir,
        )
        .unwrap();
        assert_eq!(c.engine.shards, 4);
        assert!(c.engine.pin_cores);
        assert_eq!(c.engine.recv_batch, 64);
        assert_eq!(c.listeners.udp["a"].bind, addr("[::]:5683"));
        assert_eq!(c.udp_listener().bind, addr("[::]:5683"));
        assert_eq!(
            c.mqtt.server,
            MqttServer::Tls {
                host: "broker.example.com".into(),
                port: 8884
            }
        );
        assert_eq!(c.mqtt.embedded_bind, addr("0.0.0.0:1884"));
        assert_eq!(c.mqtt.embedded_bind_v5, addr("127.0.0.1:1885"));
        assert_eq!(c.mqtt.connections, Some(8));
        assert_eq!(c.mqtt.protocol, MqttProtocol::V311);
        assert_eq!(c.mqtt.subscribe, SubscribeMode::Wildcard);
        assert_eq!(c.api.bind, addr("0.0.0.0:9000"));
        assert_eq!(c.xml_dir, PathBuf::from("/srv/xml"));
        assert_eq!(c.engine.socket_rcvbuf, 16 << 20);
        assert_eq!(c.engine.socket_sndbuf, 512 << 10);
        assert_eq!(c.api.api_secret.expose(), "flag-secret");
    }

    #[test]
    fn an_empty_api_secret_leaves_the_file_alone() {
        let dir = Dir::new();
        let p = dir.file("gw.toml", "[api]\napi_secret = \"from-file\"\n");
        let c = load(&["-c", &p, "--api-secret", ""], &dir).unwrap();
        assert_eq!(c.api.api_secret.expose(), "from-file");
        let c = load(&["-c", &p, "--api-secret", "from-flag"], &dir).unwrap();
        assert_eq!(c.api.api_secret.expose(), "from-flag");
        assert!(!format!("{:?}", cli(&["--api-secret", "from-flag"])).contains("from-flag"));
    }

    #[test]
    fn flags_apply_to_defaults_too() {
        let dir = Dir::new();
        let c = load(&["--udp-bind", "5690", "--mqtt", "embedded"], &dir).unwrap();
        assert_eq!(c.listeners.udp["default"].bind, addr("0.0.0.0:5690"));
        assert_eq!(c.mqtt.server, MqttServer::Embedded);
    }

    #[test]
    fn a_flag_can_repair_the_file() {
        let dir = Dir::new();
        let p = dir.file("gw.toml", "[engine]\nrecv_batch = 0\n");
        assert_eq!(
            load(&["-c", &p], &dir).unwrap_err().key(),
            Some("engine.recv_batch")
        );
        let c = load(&["-c", &p, "--recv-batch", "8"], &dir).unwrap();
        assert_eq!(c.engine.recv_batch, 8);
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let dir = Dir::new();
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--recv-batch", "0"], "--recv-batch", "engine.recv_batch"),
            (&["--shards", "5000"], "--shards", "engine.shards"),
            (
                &["--mqtt-connections", "0"],
                "--mqtt-connections",
                "mqtt.connections",
            ),
            (
                &["--socket-rcvbuf", "0"],
                "--socket-rcvbuf",
                "engine.socket_rcvbuf",
            ),
            (
                &["--socket-rcvbuf", "16XB"],
                "--socket-rcvbuf",
                "invalid size",
            ),
            (
                &["--socket-sndbuf", "lots"],
                "--socket-sndbuf",
                "invalid size",
            ),
            (&["--udp-bind", "host:1"], "--udp-bind", "invalid address"),
            (&["--api-bind", "99999"], "--api-bind", "invalid port"),
            (
                &["--embedded-bind", "x"],
                "--embedded-bind",
                "invalid address",
            ),
            (
                &["--embedded-bind-v5", "1883"],
                "--embedded-bind-v5",
                "already used by mqtt.embedded_bind",
            ),
            (&["--mqtt", "tcp://b"], "--mqtt", "invalid MQTT server"),
            (&["--subscribe", "all"], "--subscribe", "per_endpoint"),
            (&["--mqtt-protocol", "4"], "--mqtt-protocol", "\"3.1.1\""),
            (
                &["--api-bind", "1884"],
                "--api-bind",
                "already used by mqtt.embedded_bind_v5",
            ),
            (&["--dtls-bind", "5784"], "--dtls-bind", "no DTLS listener"),
            (
                &["--api-bind", "1883"],
                "--api-bind",
                "already used by mqtt.embedded_bind",
            ),
        ];
        for (args, flag, needle) in cases {
            let e = load(args, &dir).unwrap_err();
            assert_eq!(e.key(), Some(*flag), "{args:?}: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("{flag}: ")), "{args:?}: {shown}");
            assert!(shown.contains(needle), "{args:?}: {shown} lacks {needle:?}");
        }
    }

    #[test]
    fn dtls_bind_moves_the_first_dtls_listener() {
        let dir = Dir::new();
        let p = dir.file(
            "gw.toml",
            "[listeners.dtls.default]\npsk_file = \"etc/psk.txt\"\n",
        );
        let c = load(&["-c", &p, "--dtls-bind", "[::]:5685"], &dir).unwrap();
        assert_eq!(c.listeners.dtls["default"].bind, addr("[::]:5685"));
        let e = load(&["-c", &p, "--dtls-bind", "5783"], &dir).unwrap_err();
        assert_eq!(e.key(), Some("--dtls-bind"), "{e}");
        assert!(e.to_string().contains("already used"), "{e}");
    }

    #[test]
    fn clap_rejects_malformed_numbers() {
        assert!(Cli::try_parse_from(["lwm2m-gateway", "--shards", "many"]).is_err());
        assert!(Cli::try_parse_from(["lwm2m-gateway", "--recv-batch", "-1"]).is_err());
        assert!(Cli::try_parse_from(["lwm2m-gateway", "--no-such-flag"]).is_err());
    }

    #[test]
    fn print_default_config_and_log_level() {
        let c = cli(&["--print-default-config"]);
        assert!(c.print_default_config);
        assert!(Cli::default_config_text().contains("[listeners.udp.default]"));
        assert_eq!(
            cli(&["--log-level", "debug"]).log_filter().unwrap(),
            "debug"
        );
        let from_env = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "info,rumqttd=warn".to_string());
        assert_eq!(cli(&[]).log_filter().unwrap(), from_env);
    }

    #[test]
    fn log_levels_are_checked() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,lwm2m_gateway=trace",
            "rumqttd=warn",
        ] {
            assert!(cli(&["--log-level", ok]).log_filter().is_ok(), "{ok}");
        }
        for bad in ["nonsense[", "nonsense", "info,chatty", "lwm2m_gateway=loud"] {
            let e = cli(&["--log-level", bad]).log_filter().unwrap_err();
            assert_eq!(e.key(), Some("--log-level"), "{bad}: {e}");
            assert!(
                e.to_string().contains("log level") || e.to_string().contains("log filter"),
                "{e}"
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
