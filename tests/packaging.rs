//! What ships for running the gateway as a service: the systemd unit
//! (`etc/systemd/lwm2m-gateway.service`) passes `systemd-analyze verify` with no
//! complaint (run when the tool exists; Debian's `systemd` package has it); the binary
//! alone, as `cargo install` places it, runs from an empty directory with no
//! configuration file and types values from its built-in object definitions; and the
//! Dockerfile's structure (what it copies exists, a non-root user, the health check, the
//! flags it passes are the binary's). No Docker daemon is needed (the image is not built
//! here).

mod common;

use common::coap::{self, socket, Req, Request};
use common::http::request;
use common::mosquitto::free_port;
use common::mqtt_client::MqttClient;
use lwm2m_gateway::coap::{codes, opt, Message};
use simd_json::prelude::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/systemd/lwm2m-gateway.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/lwm2m-gateway "));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit was not verified");
        return;
    }
    // Verified with ExecStart pointing at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lwm2m-gateway.service");
    let unit = unit.replace(
        "/usr/local/bin/lwm2m-gateway",
        env!("CARGO_BIN_EXE_lwm2m-gateway"),
    );
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lwm2m-gateway.service"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{stderr}");
}

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_installed_binary_runs_from_an_empty_directory_without_configuration() {
    // The binary alone, as `cargo install --path .` puts it in ~/.cargo/bin.
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("lwm2m-gateway");
    std::fs::copy(env!("CARGO_BIN_EXE_lwm2m-gateway"), &exe).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let log_path = root.path().join("log");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(&exe)
        .current_dir(cwd.path())
        .args(["--udp-bind", "127.0.0.1:0", "--api-secret", "s"])
        .args(["--embedded-bind", &mqtt.to_string()])
        .args(["--embedded-bind-v5", &format!("127.0.0.1:{}", free_port())])
        .args(["--api-bind", &api.to_string()])
        .env_remove("LWM2M_API_SECRET")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let udp = loop {
        let text = log();
        let ready = BufReader::new(text.as_bytes())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                Some(
                    l.split_once("lwm2m-gateway ready udp=")?
                        .1
                        .trim()
                        .to_string(),
                )
            });
        if let Some(a) = ready {
            break a.parse::<std::net::SocketAddr>().unwrap();
        }
        assert!(Instant::now() < deadline, "not ready in 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = log();
    assert!(text.contains("no configuration file"), "{text}");
    assert!(text.contains("built-in object definitions"), "{text}");
    assert_eq!(request(api, "GET", "/health", None, b"").0, 200);
    // No file to persist a change to: refused, nothing applied.
    let (st, body) = request(
        api,
        "PUT",
        "/api/v5/gateways/lwm2m?persist=true",
        Some(("admin", "s")),
        br#"{"qmode_time_window":"30s"}"#,
    );
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("without a configuration file"), "{body}");
    let (_, body) = request(
        api,
        "GET",
        "/api/v5/gateways/lwm2m",
        Some(("admin", "s")),
        b"",
    );
    assert!(body.contains("\"qmode_time_window\":\"22s\""), "{body}");
    // Nothing written but the default store (`[store] kind = "file"` under `data`).
    let written: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, ["data"], "nothing written but the store");
    assert!(cwd.path().join("data/registrations.redb").is_file());

    // It serves: a device registers, and a read's value is typed by the built-in
    // definition of /3/0/9 (Battery Level, an Integer).
    let mut app = MqttClient::subscriber(mqtt, "inst-app", "lwm2m/+/up/resp", 0);
    let dev = socket([127, 0, 0, 1], Duration::from_secs(10));
    let reg = Req::con(codes::POST, 1, &[1])
        .path(&["rd"])
        .query(&["ep=inst1", "lt=600", "lwm2m=1.1", "b=U"])
        .body(b"</3/0>");
    let reply = coap::exchange(&dev, udp, &reg.bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
    let (st, body) = request(
        api,
        "POST",
        "/api/v5/gateways/lwm2m/clients/inst1/read?path=/3/0/9",
        Some(("admin", "s")),
        b"",
    );
    assert_eq!(st, 204, "{body}");
    let r = Request::parse(&coap::recv(&dev));
    assert_eq!(r.path, "/3/0/9");
    dev.send_to(
        &r.ack(codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"87"),
        udp,
    )
    .unwrap();
    let (_, v) = app
        .next_json(Duration::from_secs(10), |_, v| {
            v["msgType"].as_str() == Some("read")
        })
        .expect("the read's answer on MQTT");
    assert_eq!(v["data"]["content"][0]["value"].as_u64(), Some(87), "{v}");
}

#[test]
fn the_dockerfile_is_well_formed() {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    // Instructions, continuation lines joined, comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .as_slice()
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].contains("bookworm"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("FROM debian:bookworm-slim"),
        "{froms:?}"
    );
    // What it copies from the build context exists.
    for l in lines
        .as_slice()
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(
                std::path::Path::new(&format!("{ROOT}/{src}")).exists(),
                "{l}: {src} does not exist"
            );
        }
    }
    assert!(
        lines.as_slice().iter().any(|l| l.starts_with("COPY etc/ ")),
        "etc/ is in the image"
    );
    // The last USER is not root.
    let user = lines
        .as_slice()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(!matches!(user.trim(), "root" | "0" | "0:0"), "USER {user}");
    let after_user = lines
        .as_slice()
        .iter()
        .rposition(|l| l.starts_with("USER "))
        .unwrap();
    assert!(
        lines[after_user..].iter().all(|l| !l.starts_with("RUN ")),
        "nothing runs as root after USER"
    );
    // Ports, health check and the command line agree.
    let expose = lines
        .as_slice()
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    for p in ["5783/udp", "1883", "18083"] {
        assert!(
            expose.split_whitespace().any(|x| x == p),
            "EXPOSE {expose} lacks {p}"
        );
    }
    let health = lines
        .as_slice()
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(health.contains("http://127.0.0.1:18083/health"), "{health}");
    let cmd = lines
        .as_slice()
        .iter()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let args = common::json(cmd.as_bytes());
    let mut args: Vec<String> = args
        .as_array()
        .expect("CMD in exec form")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--api-bind", "0.0.0.0:18083"]),
        "{args:?}"
    );
    // The binary takes these flags (its configuration path made this checkout's).
    let i = args.iter().position(|a| a == "--config").unwrap();
    assert_eq!(args[i + 1], "/etc/lwm2m-gateway/lwm2m-gateway.toml");
    args[i + 1] = format!("{ROOT}/etc/lwm2m-gateway.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-gateway"))
        .args(&args)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Secrets and build output stay out of the build context.
    let ignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    for p in ["target/", ".git/", "etc/certs/", "etc/psk.txt"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}
