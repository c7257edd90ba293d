//! `lwm2m-loadgen`: load runs against the gateway, and the baselines.
//!
//! ```sh
//! lwm2m-loadgen run --register 100000 --rate 50000 --gateway 127.0.0.1:5783 --mqtt 127.0.0.1:1883
//! lwm2m-loadgen run --register 3000 --rate 1000 --mqtt mqtt://127.0.0.1:1883 --allow-failures
//! lwm2m-loadgen run --register 1000 --steady 10 --notify-rate 5000 --commands 500 --mqtt 127.0.0.1:1883
//! lwm2m-loadgen echo-server --bind 127.0.0.1:6000
//! lwm2m-loadgen run --echo --gateway 127.0.0.1:6000 --devices 1000 --rate 0 --duration 5
//! lwm2m-loadgen run --register 1000 --queue-mode --steady 20 --update-fraction 0.02 --commands 50 --mqtt 127.0.0.1:1883
//! lwm2m-loadgen run --register 1000 --dtls --psk-key 0011… --psk-file-out psk.txt   # writes the gateway's PSK file
//! lwm2m-loadgen run --register 1000 --dtls --psk-key 0011… --gateway 127.0.0.1:5784 --mqtt 127.0.0.1:1883
//! lwm2m-loadgen mqtt-publish --mqtt 127.0.0.1:1883 --qos 0 --count 200000
//! lwm2m-loadgen mqtt-relay --mqtt 127.0.0.1:1883 --rate 15000 --seconds 10
//! ```
//! Flags given without a subcommand mean `run`. A run exits 1 when anything failed
//! (a registration, update, command, notification or echo), unless `--allow-failures`.

use clap::{Parser, Subcommand};
use lwm2m_loadgen::publish::PublishOpts;
use lwm2m_loadgen::relay::RelayOpts;
use lwm2m_loadgen::RunOpts;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lwm2m-loadgen",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunOpts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulated devices (and the MQTT driver) against a gateway, or --echo against an echo server.
    Run(Box<RunOpts>),
    /// The UDP baseline: a recvmmsg/sendmmsg echo server, one SO_REUSEPORT socket per thread.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:6000")]
        bind: SocketAddr,
        /// Threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Datagrams per recvmmsg/sendmmsg.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// The broker baseline: a plain publisher and subscriber.
    MqttPublish(PublishOpts),
    /// The command round trip's floor: commands through the broker to a trivial relay
    /// and back, paced at a rate.
    MqttRelay(RelayOpts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::EchoServer {
            bind,
            threads,
            batch,
        }) => match lwm2m_loadgen::echo::serve(bind, threads, batch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo-server: {e}");
                ExitCode::from(2)
            }
        },
        Some(Cmd::MqttPublish(o)) => baseline(
            "mqtt-publish",
            lwm2m_loadgen::publish::run(&o).map(|r| (r.passed, r.table(), to_json(&r))),
            o.json,
        ),
        Some(Cmd::MqttRelay(o)) => baseline(
            "mqtt-relay",
            lwm2m_loadgen::relay::run(&o).map(|r| (r.passed, r.table(), to_json(&r))),
            o.json,
        ),
        Some(Cmd::Run(o)) => run(*o),
        None => run(cli.run),
    }
}

fn to_json<T: serde::Serialize>(r: &T) -> String {
    serde_json::to_string_pretty(r).expect("serializes")
}

/// Prints a baseline's report (table or JSON); fails when its checks did.
fn baseline(name: &str, r: std::io::Result<(bool, String, String)>, json: bool) -> ExitCode {
    match r {
        Ok((passed, table, js)) => {
            if json {
                println!("{js}");
            } else {
                print!("{table}");
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(o: RunOpts) -> ExitCode {
    if let Some(path) = &o.psk_file_out {
        return match lwm2m_loadgen::dtls::write_psk_file(&o, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lwm2m-loadgen: {}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }
    let json = o.json;
    match lwm2m_loadgen::run(o) {
        Ok(r) => {
            if json {
                println!("{}", r.json());
            } else {
                print!("{}", r.table());
            }
            if r.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lwm2m-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
