//! The management API as the real binary starts it: its secret from
//! `--api-secret` or `LWM2M_API_SECRET` (the flag wins; neither logged), 401
//! saying how to set it when there is none, and a taken port named as the API's
//! at start.

mod common;

use common::gateway::GatewayProc;
use common::http::request;
use std::net::TcpListener;

const GW: &str = "/api/v5/gateways/lwm2m";

#[test]
fn api_secret_from_the_flag_wins_over_the_environment() {
    let mut gw = GatewayProc::start_cli(
        &["--api-secret", "flag-secret-123"],
        &[("LWM2M_API_SECRET", "env-secret-456")],
    );
    let (status, body) = request(gw.api, "GET", GW, Some(("admin", "flag-secret-123")), b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"lwm2m\""), "{body}");
    let (status, body) = request(gw.api, "GET", GW, Some(("admin", "env-secret-456")), b"");
    assert_eq!(status, 401, "{body}");
    assert!(gw.stop().success());
    let log = gw.log();
    assert!(
        !log.contains("flag-secret-123") && !log.contains("env-secret-456"),
        "{log}"
    );
}

#[test]
fn api_secret_from_the_environment() {
    let mut gw = GatewayProc::start_cli(&[], &[("LWM2M_API_SECRET", "env-secret-789")]);
    let (status, body) = request(
        gw.api,
        "GET",
        &format!("{GW}/clients"),
        Some(("admin", "env-secret-789")),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = request(gw.api, "GET", GW, Some(("admin", "other")), b"");
    assert_eq!(status, 401);
    assert!(gw.stop().success());
    assert!(!gw.log().contains("env-secret-789"), "{}", gw.log());
}

#[test]
fn without_a_secret_the_api_says_how_to_set_one() {
    let gw = GatewayProc::start_cli(&[], &[]);
    let (status, body) = request(gw.api, "GET", GW, Some(("admin", "")), b"");
    assert_eq!(status, 401, "{body}");
    for needle in ["api.api_secret", "--api-secret", "LWM2M_API_SECRET"] {
        assert!(body.contains(needle), "{body} lacks {needle}");
    }
    let (status, _) = request(gw.api, "GET", "/health", None, b"");
    assert_eq!(status, 200);
}

#[test]
fn a_taken_api_port_is_named_at_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut gw = GatewayProc::spawn_cli(&["--api-bind", &addr], &[]);
    let status = gw.wait_exit();
    assert!(!status.success(), "{status}");
    let log = gw.log();
    assert!(
        log.contains(&format!("management API listener (api.bind) on {addr}: ")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
    assert!(!log.contains("UDP listener on"), "{log}");
    drop(taken);
}
