//! The options of a load run (also the CLI flags of `lwm2m-loadgen run`).

use clap::Args;
use std::net::SocketAddr;

#[derive(Debug, Clone, Args)]
pub struct RunOpts {
    /// The gateway's CoAP/UDP address (or the echo server's with --echo).
    #[arg(long, default_value = "127.0.0.1:5783")]
    pub gateway: SocketAddr,
    /// The MQTT broker the gateway publishes to, `host:port` or `mqtt://host:port` (as
    /// the gateway's `mqtt.server`): enables the MQTT-side checks, notification
    /// latency and the command driver.
    #[arg(long, value_parser = parse_mqtt)]
    pub mqtt: Option<SocketAddr>,
    /// Devices to register (the registration storm); also the fleet of the other scenarios.
    #[arg(long, default_value_t = 0)]
    pub register: usize,
    /// Target registration rate per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of steady state after the registrations.
    #[arg(long, default_value_t = 0.0)]
    pub steady: f64,
    /// Updates every `lifetime × fraction` seconds per device during steady state (0: none).
    #[arg(long, default_value_t = 0.5)]
    pub update_fraction: f64,
    /// Notifications per second, all devices together, for the observations the gateway set up.
    #[arg(long, default_value_t = 0.0)]
    pub notify_rate: f64,
    /// Confirmable notifications (default: non-confirmable).
    #[arg(long)]
    pub notify_con: bool,
    /// Read commands per second published on MQTT during steady state.
    #[arg(long, default_value_t = 0.0)]
    pub commands: f64,
    /// The path the read commands ask for.
    #[arg(long, default_value = "/3/0/0")]
    pub command_path: String,
    /// The kinds of commands and their weights, e.g. `read=8,write=1,execute=1,observe=1`:
    /// reads ask for `--command-path`, writes set /3/0/14 (String), executes /3/0/4, observes
    /// /3/0/9. Every response is matched by its reqID and must carry its kind's success code.
    #[arg(long, default_value = "read", value_parser = crate::driver::parse_mix)]
    pub command_mix: crate::driver::CommandMix,
    /// Seconds a command may take before it counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    pub command_timeout: f64,
    /// Address index of the first device (so several loadgens use distinct addresses).
    #[arg(long, default_value_t = 0)]
    pub devices_offset: u32,
    /// Endpoint names are this prefix followed by the device's address index.
    #[arg(long, default_value = "lg")]
    pub prefix: String,
    /// Registration lifetime, seconds.
    #[arg(long, default_value_t = 300)]
    pub lifetime: u32,
    /// LwM2M version the devices register with.
    #[arg(long, default_value = "1.1")]
    pub lwm2m: String,
    /// Device threads, each with its own socket and its share of the devices.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds the registration phase may take at most.
    #[arg(long, default_value_t = 120.0)]
    pub register_timeout: f64,
    /// Times a device registers again after a 5.03 Service Unavailable, as a real
    /// client would: after the answer's Max-Age (60 s when absent), plus up to half
    /// of it at random so the retries of a storm spread out. 0: a 5.03 is final.
    /// 5 by default: LwM2M's default Communication Retry Count.
    #[arg(long, default_value_t = 5)]
    pub register_retries: u8,
    /// Seconds to wait for the gateway's observe requests after registering,
    /// before steady state starts (ends earlier once they stop coming).
    #[arg(long, default_value_t = 5.0)]
    pub observe_wait: f64,
    /// Seconds to wait for late answers after steady state.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// De-register every device at the end.
    #[arg(long)]
    pub deregister: bool,
    /// Echo mode: send CoAP-sized datagrams to an echo server and count the echoes.
    #[arg(long)]
    pub echo: bool,
    /// Echo mode: devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Echo mode: seconds to send.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Echo mode with --rate 0: datagrams in flight per thread.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Echo mode: datagram size, bytes.
    #[arg(long, default_value_t = 48)]
    pub size: usize,
    /// Queue mode: devices register with `b=UQ` (LwM2M 1.0) or the `Q` parameter
    /// (1.1) and stay silent between their Updates (no notifications); commands
    /// wait in the gateway until the next Update. Updates go on while draining, so
    /// every queued command can still be delivered.
    #[arg(long)]
    pub queue_mode: bool,
    /// Queue mode: seconds a device counts as awake after it sent something (the
    /// gateway's `qmode_time_window`); requests arriving later count as "while asleep".
    #[arg(long, default_value_t = 22.0)]
    pub qmode_window: f64,
    /// DTLS devices: each device handshakes (PSK, identity = its endpoint name,
    /// key `--psk-key`) with the gateway's DTLS listener (`--gateway`) before it
    /// registers, and speaks CoAP over its session.
    #[arg(long)]
    pub dtls: bool,
    /// DTLS devices offer a Connection ID (RFC 9146, asking for none of their own):
    /// their records carry the gateway's CID.
    #[arg(long)]
    pub dtls_cid: bool,
    /// DTLS devices drop their session before each Update and handshake again
    /// offering it for resumption (RFC 5246 §7.3; a device waking after its session
    /// ended): the gateway answers with the abbreviated handshake when it still
    /// holds the session, a full one otherwise. The Update waits for the handshake.
    #[arg(long)]
    pub dtls_resume: bool,
    /// The pre-shared key of every device, hex.
    #[arg(long, default_value = "6c6f616467656e2d70736b2d6b657921")]
    pub psk_key: String,
    /// Writes the gateway's PSK file for the fleet (`name:hexkey` lines for the
    /// devices of `--register`, `--devices-offset`, `--prefix`) and exits.
    #[arg(long)]
    pub psk_file_out: Option<std::path::PathBuf>,
    /// DTLS: seconds a handshake may take before it counts as failed.
    #[arg(long, default_value_t = 20.0)]
    pub handshake_timeout: f64,
    /// Accept failed requests: the run fails only when nothing got through (no
    /// device registered, no command answered, no echo came back). Without it, any
    /// registration, update, command, notification or echo that failed fails the run.
    #[arg(long, overrides_with = "expect_all")]
    pub allow_failures: bool,
    /// The default, accepted for older command lines: cancels an earlier
    /// `--allow-failures`.
    #[arg(long, hide = true, overrides_with = "allow_failures")]
    pub expect_all: bool,
    /// Measure this process's CPU time and RSS around the phases (the gateway's or
    /// the echo server's pid).
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Print the report as JSON (on stdout).
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// An MQTT broker address: `host:port`, or the URL form `mqtt://host:port` of the
/// gateway's `mqtt.server` (no TLS: `mqtts://` is refused).
pub fn parse_mqtt(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let hostport = match s.split_once("://") {
        None => s,
        Some(("mqtt" | "tcp", rest)) => rest.trim_end_matches('/'),
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not supported: give host:port or mqtt://host:port"
            ))
        }
    };
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e} (want host:port or mqtt://host:port)"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

impl Default for RunOpts {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            o: RunOpts,
        }
        P::parse_from(["x"]).o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_takes_host_port_and_the_gateways_url_form() {
        let want: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        for s in [
            "127.0.0.1:1883",
            "mqtt://127.0.0.1:1883",
            "mqtt://127.0.0.1:1883/",
            "tcp://127.0.0.1:1883",
        ] {
            assert_eq!(parse_mqtt(s), Ok(want), "{s}");
        }
        let e = parse_mqtt("mqtts://127.0.0.1:8883").unwrap_err();
        assert!(e.contains("mqtts:// is not supported"), "{e}");
        let e = parse_mqtt("mqtt://127.0.0.1").unwrap_err();
        assert!(e.contains("mqtt://host:port"), "{e}");
    }

    #[test]
    fn allow_failures_is_opt_in_and_expect_all_cancels_it() {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            o: RunOpts,
        }
        let parse = |args: &[&str]| P::parse_from(["x"].iter().chain(args)).o;
        assert!(!RunOpts::default().allow_failures);
        assert!(parse(&["--allow-failures"]).allow_failures);
        assert!(!parse(&["--allow-failures", "--expect-all"]).allow_failures);
        assert!(parse(&["--expect-all", "--allow-failures"]).allow_failures);
        let o = parse(&["--mqtt", "mqtt://127.0.0.1:1883"]);
        assert_eq!(o.mqtt, Some("127.0.0.1:1883".parse().unwrap()));
    }
}
