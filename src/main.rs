//! The `lwm2m-gateway` binary: configuration, logging, start, and shutdown on
//! SIGINT/SIGTERM.

#![forbid(unsafe_code)]

use clap::Parser;
use lwm2m_gateway::cli::Cli;
use lwm2m_gateway::config::LogFormat;
use lwm2m_gateway::engine::{Gateway, GatewayError};
use std::process::ExitCode;
use std::time::Duration;

/// How long the start waits for the broker before saying "ready" without it.
const BROKER_WAIT: Duration = Duration::from_secs(5);
/// The exit code of a start refused because the store is damaged, of another format,
/// or in use (configuration errors exit with 2, other start failures with 1).
const STORE_EXIT: u8 = 3;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Cli::default_config_text());
        return ExitCode::SUCCESS;
    }
    let filter = match cli.log_filter() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lwm2m-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let default = std::path::Path::new(lwm2m_gateway::config::DEFAULT_PATH);
    let (cfg, warnings) = match cli.load_config_warned(default) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lwm2m-gateway: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
    for w in &warnings {
        tracing::warn!("configuration: {w}");
    }
    match cli.config_file() {
        Some(path) => {
            let path = std::path::absolute(&path).unwrap_or(path);
            tracing::info!(file = %path.display(), "configuration loaded");
        }
        None => tracing::info!(
            "no configuration file (--config not given, no etc/lwm2m-gateway.toml in the working \
             directory): built-in defaults"
        ),
    }
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lwm2m-gateway: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = cli
        .config_file()
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    let gw = match Gateway::start_from(&cfg, file) {
        Ok(g) => g,
        Err(e @ GatewayError::Store(_)) => {
            // Starting empty would forget every device the store holds.
            eprintln!("lwm2m-gateway: {e}; the start is refused");
            return ExitCode::from(STORE_EXIT);
        }
        Err(e) => {
            eprintln!("lwm2m-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !gw.wait_for_broker(BROKER_WAIT) {
        tracing::warn!(
            waited = ?BROKER_WAIT,
            "the MQTT broker is not reachable yet: devices are served, their messages held, \
             and commands reach the gateway once it connects"
        );
    }
    tracing::info!(udp = %gw.udp_addr(), "lwm2m-gateway ready");
    let mut signals = signals;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    gw.stop();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
